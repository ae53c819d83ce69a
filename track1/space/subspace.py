"""A part of the tied sub-space: the depths, output codes and mid codes each stage may take (and
optionally which depth patterns), with its largest and smallest subnet and uniform draws from it.

The official list's own distribution is `Subspace.official()`: each stage's depth and output code
uniform over the stage's choices, the stem tied to stage 1's output, each mid code uniform. A
progressive-shrinking phase or a few-shot group is a narrower Subspace; `Subspace.every_ratio()` (the
RD-NAS authors' draw) a wider one, every ratio code in every tied position.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from track1.space.code import DEPTH_CHOICES, OFFICIAL_CHOICES, RATIOS, Arch, tied

Choices = tuple[tuple[int, ...], ...]  # per stage, the allowed values in ascending order
DRAWS = ("official", "every_ratio")     # train.draw: Subspace.official() | Subspace.every_ratio()


@dataclasses.dataclass(frozen=True)
class Subspace:
    depths: Choices = DEPTH_CHOICES
    outs: Choices = OFFICIAL_CHOICES   # each stage's output ratio code (the stem takes stage 1's)
    mids: Choices = OFFICIAL_CHOICES   # each block's first-conv ratio code
    patterns: frozenset[tuple[int, ...]] | None = None  # allowed depth patterns (None: every combination)

    @classmethod
    def official(cls) -> "Subspace":
        return cls()

    @classmethod
    def every_ratio(cls) -> "Subspace":
        """The RD-NAS authors' draw (their resofa.py): every tied ratio code 1..7 for the stem with
        stage 1's output, each stage's output and each mid; depths as the official list's."""
        every = (tuple(RATIOS),) * 4
        return cls(outs=every, mids=every)

    @classmethod
    def named(cls, draw: str) -> "Subspace":
        """train.draw: the part of the space a run's subnets are drawn from."""
        if draw not in DRAWS:
            raise ValueError(f"unknown draw {draw!r}: expected one of {', '.join(DRAWS)}")
        return cls.official() if draw == "official" else cls.every_ratio()

    def __post_init__(self):
        for name in ("depths", "outs", "mids"):
            for stage, allowed in enumerate(getattr(self, name)):
                if not allowed:
                    raise ValueError(f"subspace: stage {stage + 1} allows no {name[:-1]}")
        if self.patterns is not None and not self.patterns:
            raise ValueError("subspace: no depth pattern allowed")

    def depth_patterns(self) -> list[tuple[int, ...]]:
        """Every allowed depth pattern, in ascending order."""
        every = itertools.product(*self.depths)
        return [p for p in every if self.patterns is None or p in self.patterns]

    def largest(self) -> Arch:
        """The deepest allowed pattern (most blocks; then the deepest last stages), widest codes."""
        depths = max(self.depth_patterns(), key=lambda p: (sum(p), p))
        return tied(depths, tuple(c[0] for c in self.outs), tuple((m[0],) * d for m, d in zip(self.mids, depths)))

    def smallest(self) -> Arch:
        """The shallowest allowed pattern, narrowest codes."""
        depths = min(self.depth_patterns(), key=lambda p: (sum(p), p))
        return tied(depths, tuple(c[-1] for c in self.outs), tuple((m[-1],) * d for m, d in zip(self.mids, depths)))

    def sample(self, rng: np.random.Generator) -> Arch:
        """Uniform within the subspace: each stage's depth and output code uniform over its choices
        (a depth pattern outside `patterns` is drawn again), each mid code uniform."""
        while True:
            depths = tuple(int(rng.choice(c)) for c in self.depths)
            outs = tuple(int(rng.choice(c)) for c in self.outs)
            mids = tuple(tuple(int(rng.choice(self.mids[s])) for _ in range(d)) for s, d in enumerate(depths))
            if self.patterns is None or depths in self.patterns:
                return tied(depths, outs, mids)

    def sample_many(self, rng: np.random.Generator, n: int) -> list[Arch]:
        """n uniform draws at once (the same distribution as `sample`, other draws: vectorised, for
        the large pools of biased sampling)."""
        out: list[Arch] = []
        while len(out) < n:
            depths = np.stack([rng.choice(c, size=n) for c in self.depths], axis=1)
            outs = np.stack([rng.choice(c, size=n) for c in self.outs], axis=1)
            mids = [rng.choice(self.mids[s], size=(n, max(c))) for s, c in enumerate(self.depths)]
            for i in range(n):
                d = tuple(int(v) for v in depths[i])
                if self.patterns is None or d in self.patterns:
                    out.append(tied(d, tuple(int(v) for v in outs[i]),
                                    tuple(tuple(int(v) for v in mids[s][i, :k]) for s, k in enumerate(d))))
        return out[:n]

    def contains(self, arch: Arch) -> bool:
        """Whether arch is tied (one output code a stage, the stem's that of stage 1) and each of
        its depths and codes is allowed here."""
        if arch.depths not in self.depth_patterns() or arch.stem_ratio != arch.blocks[0][0][1]:
            return False
        for stage, pairs in enumerate(arch.blocks):
            out = pairs[0][1]
            if out not in self.outs[stage] or any(o != out or m not in self.mids[stage] for m, o in pairs):
                return False
        return True

    def restrict(self, min_depths: tuple[int, ...] | None = None,
                 max_codes: tuple[int, ...] | None = None) -> "Subspace":
        """Depths of at least min_depths and ratio codes up to max_codes (outputs and mids), per stage."""
        depths, outs, mids = self.depths, self.outs, self.mids
        if min_depths is not None:
            depths = tuple(tuple(d for d in c if d >= m) for c, m in zip(depths, min_depths))
        if max_codes is not None:
            outs = tuple(tuple(v for v in c if v <= m) for c, m in zip(outs, max_codes))
            mids = tuple(tuple(v for v in c if v <= m) for c, m in zip(mids, max_codes))
        return dataclasses.replace(self, depths=depths, outs=outs, mids=mids)

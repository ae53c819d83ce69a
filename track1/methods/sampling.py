"""Which subnets a training step uses: sandwich / SPOS / random roles, ranking pairs, the margin sampler,
draws tilted toward large subnets, and progressive-shrinking phases.

Every subnet is drawn from a part of the tied sub-space (track1.space.Subspace): the official one as
the official list is distributed (train.draw every_ratio: the RD-NAS authors' wider one), unless a
progressive-shrinking phase or a few-shot group narrows it. Every draw is a pure function of (seed,
step), so a resumed run and every rank of a distributed run sample exactly the same subnets without
saving or broadcasting any RNG state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from track1.space import MAX_DEPTHS, RATIOS, Arch, Subspace, hamming, tied


_SUBNETS, _PARTNERS, _EXTRA = 1, 2, 3  # stream ids, so pair draws never shift the sandwich draws
SAMPLERS = ("sandwich", "spos", "random", "largest")
PAIR_MODES = ("partners", "extra", "free")
DISTANCES = ("hamming", "group")
BIAS_RULES = ("none", "tilt", "top_of")
# How a few-shot split step draws (fewshot.step): one group a step in turn | the sandwich over the whole
# space, each subnet routed to its group (the 4th place) | one group after another (the 2nd place).
FEWSHOT_STEPS = ("rotate", "global_sandwich", "sequence")


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, stream])


@dataclasses.dataclass(frozen=True)
class Bias:
    """How the random subnets of a step are drawn (train.bias):
    none    uniform within the subspace (the official list's distribution);
    tilt    each stage's depth and every ratio code with probability proportional to exp(-k / T), k
            counting from the large end (k = 0: the deepest, ratio code 1), T = `temperature`;
    top_of  the 1st place's rule (FuxiAutoML hnas/utils/hapi_wrapper.py): `pool` uniform draws, the
            largest by their size measure (fuxi_size) kept, and every third step one uniform draw more.
    """

    rule: str = "none"
    temperature: float = 1.0
    pool: int = 400

    def draw(self, within: Subspace, rng: np.random.Generator, n: int, step: int) -> list[Arch]:
        if self.rule == "tilt":
            return [tilted_sample(within, rng, self.temperature) for _ in range(n)]
        if self.rule == "top_of":
            pool = within.sample_many(rng, self.pool)
            kept = sorted(dict.fromkeys(pool), key=lambda a: (-fuxi_size(a), a.code))[:n]
            return kept + ([within.sample(rng)] if step % 3 == 0 else [])
        return [within.sample(rng) for _ in range(n)]


def tilted_sample(within: Subspace, rng: np.random.Generator, temperature: float) -> Arch:
    """Bias "tilt": a draw from the subspace with large choices favoured (see Bias)."""
    def pick(choices: Sequence[int], large_first: bool) -> int:
        ranks = np.arange(len(choices)) if large_first else np.arange(len(choices))[::-1]
        weights = np.exp(-ranks / temperature)
        return int(rng.choice(choices, p=weights / weights.sum()))
    while True:
        depths = tuple(pick(c, large_first=False) for c in within.depths)
        outs = tuple(pick(c, large_first=True) for c in within.outs)
        mids = tuple(tuple(pick(within.mids[s], large_first=True) for _ in range(d)) for s, d in enumerate(depths))
        if within.patterns is None or depths in within.patterns:
            return tied(depths, outs, mids)


# The 1st place's stage bases for its size measure (arch2size in hnas/utils/hapi_wrapper.py), not the
# real widths 64/128/256/512: a choice of theirs, which makes its ranking mostly one of depth.
FUXI_BASES = (64, 64 * 1.1, 64 * 1.7, 64 * 1.9)


def fuxi_size(arch: Arch) -> int:
    """The 1st place's size of a subnet: the stem and every used mid and output width, each
    ratio x stage base rounded up to a multiple of 8, summed."""
    def up8(v: float) -> int:
        return int(math.ceil(v / 8) * 8)
    total = up8(RATIOS[arch.stem_ratio] * FUXI_BASES[0])
    for base, pairs in zip(FUXI_BASES, arch.blocks):
        total += sum(up8(RATIOS[m] * base) + up8(RATIOS[o] * base) for m, o in pairs)
    return total


def step_subnets(within: Subspace, rule: str, num_random: int, seed: int, step: int,
                 bias: Bias = Bias()) -> list[tuple[str, Arch]]:
    """(role, arch) pairs of one step within a subspace. sandwich: its largest, smallest and
    num_random random; spos: one random; random: num_random random (the official baseline's two
    paths a step); largest: the largest alone (the full network, the pretrain stage's)."""
    rng = step_rng(seed, step, _SUBNETS)
    if rule == "sandwich":
        return ([("largest", within.largest()), ("smallest", within.smallest())]
                + [("random", a) for a in bias.draw(within, rng, num_random, step)])
    if rule == "spos":
        return [("random", a) for a in bias.draw(within, rng, 1, step)]
    if rule == "random":
        return [("random", a) for a in bias.draw(within, rng, num_random, step)]
    if rule == "largest":
        return [("largest", within.largest())]
    raise ValueError(f"unknown sampler {rule!r}: expected one of {', '.join(SAMPLERS)}")


@dataclasses.dataclass(frozen=True)
class Phase:
    """A progressive-shrinking phase: until this fraction of the run, depths of at least
    `min_depths` and ratio codes up to `max_codes` per stage (None: the whole official range); with
    `lr`, the phase restarts the cosine from lr x train.lr (the 2nd place's six optimizers)."""

    until: float
    min_depths: tuple[int, ...] | None = None
    max_codes: tuple[int, ...] | None = None
    lr: float | None = None


def parse_phases(phases: list) -> list[Phase]:
    """train.progressive.phases: a list of {until, depth, width[, lr]}, depth "largest" | "elastic" |
    a minimum per stage, width "largest" | "elastic" | a maximum ratio code per stage, lr a factor on
    train.lr that restarts the cosine (every phase or none); the last phase ends the run (until 1.0)."""
    from track1.errors import ConfigError
    out = []
    for i, p in enumerate(phases):
        if not isinstance(p, dict) or set(p) - {"until", "depth", "width", "lr"} or "until" not in p:
            raise ConfigError(f"train.progressive.phases[{i}]: expected {{until, depth, width[, lr]}}, got {p!r}")
        lr = p.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise ConfigError(f"train.progressive.phases[{i}].lr: a factor above 0 on train.lr, got {lr!r}")
        depth, width = p.get("depth", "elastic"), p.get("width", "elastic")
        min_depths = (tuple(MAX_DEPTHS) if depth == "largest" else None if depth == "elastic" else tuple(depth))
        max_codes = ((1,) * 4 if width == "largest" else None if width == "elastic" else tuple(width))
        for name, value in (("depth", min_depths), ("width", max_codes)):
            if value is not None and (len(value) != 4 or not all(isinstance(v, int) for v in value)):
                raise ConfigError(f"train.progressive.phases[{i}].{name}: \"largest\", \"elastic\" or 4 "
                                  f"integers, one a stage, got {p.get(name)!r}")
        out.append(Phase(float(p["until"]), min_depths, max_codes, lr))
    if not out or out[-1].until != 1.0 or any(a.until >= b.until for a, b in zip(out, out[1:])):
        raise ConfigError("train.progressive.phases: increasing `until` fractions, the last 1.0")
    if len({p.lr is None for p in out}) > 1:
        raise ConfigError("train.progressive.phases: an lr for every phase (each restarts the cosine) or for none")
    return out


def phase_starts(phases: list[Phase], total_steps: int) -> list[int]:
    """The first step of each phase in a run of total_steps (and total_steps after the last)."""
    at = [phase_at(phases, s, total_steps) for s in range(total_steps)]
    return [next((s for s, i in enumerate(at) if i >= k), total_steps) for k in range(len(phases))] + [total_steps]


def phase_at(phases: list[Phase], step: int, total_steps: int) -> int:
    """The index of the phase a step belongs to (a function of the step: a resume keeps it)."""
    fraction = step / max(1, total_steps)
    return next(i for i, p in enumerate(phases) if fraction < p.until or i == len(phases) - 1)


def steps_for_every_phase(phases: list[Phase]) -> int:
    """The fewest steps a run needs for every phase to get at least one."""
    n = len(phases)
    while len({phase_at(phases, s, n) for s in range(n)}) < len(phases):
        n += 1
    return n


def uses_every_parameter(rule: str) -> bool:
    """Whether every step's subnets use every supernet parameter: a sandwich step trains the largest
    subnet, which does; a SPOS path does not. paddle.DataParallel then needs no search for unused
    parameters (find_unused_parameters), which costs a graph walk and a device sync per backward."""
    return rule in ("sandwich", "largest")


def group_distance(a: Arch, b: Arch, depth_weight: float = 2.0, width_weight: float = 0.5) -> float:
    """Depth differences and width-ratio-code differences, weighted separately.

    A block missing on one side counts as a depth difference only; its widths are not compared.
    """
    depth = sum(abs(x - y) for x, y in zip(a.depths, b.depths))
    width = abs(a.stem_ratio - b.stem_ratio)
    for pa, pb in zip(a.blocks, b.blocks):
        width += sum(abs(x - y) for qa, qb in zip(pa, pb) for x, y in zip(qa, qb))
    return depth_weight * depth + width_weight * width


def distance(a: Arch, b: Arch, kind: str, depth_weight: float = 2.0, width_weight: float = 0.5) -> float:
    if kind == "hamming":
        return float(hamming(a, b))
    if kind == "group":
        return group_distance(a, b, depth_weight, width_weight)
    raise ValueError(f"unknown distance {kind!r}: expected hamming or group")


@dataclasses.dataclass
class MarginSampler:
    """Draws a partner for a subnet, redrawing until their distance reaches a threshold.

    The teacher's order is only trusted between networks that differ enough; `accepted / tries`
    is the acceptance rate reported to VisualDL.
    """

    space: Subspace  # where partners are drawn from (the official sub-space, or a narrower part)
    kind: str = "hamming"
    threshold: float = 33.0
    depth_weight: float = 2.0
    width_weight: float = 0.5
    max_tries: int = 100
    tries: int = 0
    accepted: int = 0

    def partner(self, first: Arch, rng: np.random.Generator,
                within: Subspace | None = None) -> tuple[Arch, float]:
        best, best_d = None, -1.0
        for _ in range(self.max_tries):
            self.tries += 1
            cand = (within or self.space).sample(rng)
            d = self.distance(first, cand)
            if d >= self.threshold:
                self.accepted += 1
                return cand, d
            if d > best_d:
                best, best_d = cand, d
        return best, best_d  # threshold unreachable in max_tries: the farthest candidate seen

    def partners(self, firsts: list[Arch], seed: int, step: int,
                 within: Subspace | None = None) -> list[tuple[Arch, float]]:
        rng = step_rng(seed, step, _PARTNERS)
        return [self.partner(a, rng, within) for a in firsts]

    def among(self, archs: list[Arch], n: int) -> list[tuple[Arch, Arch, float]]:
        """Up to n disjoint pairs of archs at least threshold apart, the farthest first."""
        candidates = sorted(((self.distance(a, b), i, j) for i, a in enumerate(archs)
                             for j, b in enumerate(archs) if i < j), key=lambda c: (-c[0], c[1], c[2]))
        self.tries += len(candidates)
        pairs, used = [], set()
        for d, i, j in candidates:
            if len(pairs) == n or d < self.threshold:
                break
            if i not in used and j not in used:
                pairs.append((archs[i], archs[j], d))
                used |= {i, j}
        self.accepted += len(pairs)
        return pairs

    def distance(self, a: Arch, b: Arch) -> float:
        return distance(a, b, self.kind, self.depth_weight, self.width_weight)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.tries if self.tries else float("nan")


def step_pairs(within: Subspace, mode: str, subnets: list[tuple[str, Arch]], sampler: MarginSampler,
               n_pairs: int, seed: int, step: int) -> tuple[list[tuple[str, Arch]], list[tuple[Arch, Arch, float]]]:
    """(subnets the pairs add, pairs (a, b, distance)) of one step's ranking distillation.

    partners  each of the first n_pairs sandwich random subnets gets a margin-sampled partner
              (role "partner"), which distils from the largest like a random subnet;
    extra     n_pairs pairs of two extra random subnets, the second margin-sampled against the
              first (role "pair": they learn only through the rank term; the RD-NAS authors' step);
    free      pairs among the step's own random subnets, those at least the threshold apart:
              nothing extra to forward.
    """
    randoms = [a for role, a in subnets if role == "random"]
    if mode == "partners":
        firsts = randoms[:n_pairs]
        pairs = [(a, b, d) for a, (b, d) in zip(firsts, sampler.partners(firsts, seed, step, within))]
        return [("partner", b) for _, b, _ in pairs], pairs
    if mode == "extra":
        rng = step_rng(seed, step, _EXTRA)
        firsts = [within.sample(rng) for _ in range(n_pairs)]
        pairs = [(a, *sampler.partner(a, rng, within)) for a in firsts]
        return [("pair", x) for a, b, _ in pairs for x in (a, b)], pairs
    if mode == "free":
        return [], sampler.among(randoms, n_pairs)
    raise ValueError(f"unknown ranking pair mode {mode!r}: expected {', '.join(PAIR_MODES)}")


def max_hamming() -> int:
    """Length of code[5:], the largest possible Hamming distance."""
    return 1 + 2 * sum(MAX_DEPTHS)

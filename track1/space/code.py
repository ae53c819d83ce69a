"""The 52-character architecture code: Arch, parse, and the official tied sub-space the list lies in."""
from __future__ import annotations

import dataclasses

from track1.errors import UserError


CODE_LENGTH = 52
MAX_DEPTHS = (5, 5, 8, 5)
DEPTH_CHOICES = ((2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5, 6, 7, 8), (2, 3, 4, 5))
RATIOS = {1: 1.0, 2: 0.95, 3: 0.9, 4: 0.85, 5: 0.8, 6: 0.75, 7: 0.7}
RESOLUTIONS = {1: 224}
# The official list is a tied sub-space of the code (all 45,000 codes obey it): each stage has ONE
# output ratio code shared by all its blocks, the stem's code equals stage 1's, and each block's
# first-conv (mid) code is free. The ratio codes a stage's output and mids take there:
OFFICIAL_CHOICES = ((1, 2, 3), (1, 2, 3), (1, 2, 3, 4, 5), (1, 2, 3, 4, 5, 6, 7))
# Offsets of each stage's segment inside the code: two digits per block, max blocks per stage.
STAGE_OFFSETS = tuple(6 + 2 * sum(MAX_DEPTHS[:i]) for i in range(4))


class CodeError(UserError, ValueError):
    """A malformed architecture code."""


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture as the official code describes it (ratio codes, not widths)."""

    resolution_code: int
    depths: tuple[int, int, int, int]
    stem_ratio: int
    # Per stage, one (first conv, second conv) ratio-code pair for every used block.
    blocks: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def code(self) -> str:
        digits = [str(self.resolution_code), *map(str, self.depths), str(self.stem_ratio)]
        for stage, pairs in enumerate(self.blocks):
            for a, b in pairs:
                digits += [str(a), str(b)]
            digits += ["00"] * (MAX_DEPTHS[stage] - len(pairs))
        return "".join(digits)


def parse(code: str) -> Arch:
    """Parse and validate an official code; raises CodeError naming the problem."""
    if not isinstance(code, str):
        raise CodeError(f"code must be a string, got {type(code).__name__}")
    if len(code) != CODE_LENGTH:
        raise CodeError(f"code {code!r} has {len(code)} characters, expected {CODE_LENGTH}")
    if not code.isdigit():
        raise CodeError(f"code {code!r} contains a non-digit character")
    res = int(code[0])
    if res not in RESOLUTIONS:
        raise CodeError(f"code {code!r}: resolution code {res} is not one of {sorted(RESOLUTIONS)}")
    depths = tuple(int(c) for c in code[1:5])
    for stage, d in enumerate(depths):
        if d not in DEPTH_CHOICES[stage]:
            raise CodeError(f"code {code!r}: stage {stage + 1} depth {d} is not in "
                            f"{DEPTH_CHOICES[stage][0]}..{DEPTH_CHOICES[stage][-1]}")
    stem = int(code[5])
    if stem not in RATIOS:
        raise CodeError(f"code {code!r}: stem ratio code {stem} is not in 1..7")
    blocks = []
    for stage, depth in enumerate(depths):
        start = STAGE_OFFSETS[stage]
        pairs = []
        for b in range(MAX_DEPTHS[stage]):
            pos = start + 2 * b
            a, c = int(code[pos]), int(code[pos + 1])
            if b < depth:
                if a not in RATIOS or c not in RATIOS:
                    raise CodeError(f"code {code!r}: stage {stage + 1} block {b + 1} ratio codes "
                                    f"'{code[pos:pos + 2]}' at position {pos} are not in 1..7")
                pairs.append((a, c))
            elif a or c:
                raise CodeError(f"code {code!r}: stage {stage + 1} has depth {depth} but block {b + 1} "
                                f"at position {pos} is '{code[pos:pos + 2]}', expected padding '00'")
        blocks.append(tuple(pairs))
    return Arch(res, depths, stem, tuple(blocks))  # type: ignore[arg-type]


def official_problem(arch: Arch) -> str | None:
    """Why arch lies outside the official tied sub-space (which tie or choice it breaks), else None."""
    for stage, pairs in enumerate(arch.blocks):
        choices, out = OFFICIAL_CHOICES[stage], pairs[0][1]
        for block, (mid, c_out) in enumerate(pairs):
            if c_out != out:
                return (f"stage {stage + 1} block {block + 1} has output ratio code {c_out}, block 1 "
                        f"has {out} (a stage's blocks share one output width)")
            if mid not in choices:
                return (f"stage {stage + 1} block {block + 1} has mid ratio code {mid}, not one of "
                        f"the stage's official {_choice_text(choices)}")
        if out not in choices:
            return (f"stage {stage + 1} has output ratio code {out}, not one of the stage's official "
                    f"{_choice_text(choices)}")
    if arch.stem_ratio != arch.blocks[0][0][1]:
        return (f"stem ratio code {arch.stem_ratio} differs from stage 1's output code "
                f"{arch.blocks[0][0][1]} (the stem feeds stage 1 without a projection)")
    return None


def parse_official(code: str) -> Arch:
    """parse, then refuse a code outside the official sub-space (the supernet holds only it)."""
    arch = parse(code)
    problem = official_problem(arch)
    if problem is not None:
        raise CodeError(f"code {code!r} is outside the official sub-space: {problem}")
    return arch


def _choice_text(choices: tuple[int, ...]) -> str:
    return f"codes {choices[0]}..{choices[-1]}"


def tied(depths: tuple[int, ...], outs: tuple[int, ...],
          mids: tuple[tuple[int, ...], ...] | None = None) -> Arch:
    """The official-sub-space arch of these depths and per-stage output codes (mids default to
    the outputs); the stem takes stage 1's output code."""
    mids = mids or tuple((o,) * d for o, d in zip(outs, depths))
    blocks = tuple(tuple((m, o) for m in ms) for ms, o in zip(mids, outs))
    return Arch(1, depths, outs[0], blocks)  # type: ignore[arg-type]


def hamming(a: Arch | str, b: Arch | str) -> int:
    """Positions of code[5:] (stem and block ratio codes, padding included) where two codes differ."""
    ca = a.code if isinstance(a, Arch) else a
    cb = b.code if isinstance(b, Arch) else b
    return sum(x != y for x, y in zip(ca[5:], cb[5:]))

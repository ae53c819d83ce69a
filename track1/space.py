"""Search space of Track 1: the 52-character code, the official tied sub-space, widths, sampling, FLOPs."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

CODE_LENGTH = 52
BASE_WIDTHS = (64, 128, 256, 512)
STEM_BASE = 64
STAGE_STRIDES = (1, 2, 2, 2)
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


class CodeError(ValueError):
    """A malformed architecture code."""


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Nearest multiple of divisor, at least min_value, bumped up if rounding lost more than 10%."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def needs_projection(c_in: int, c_out: int, stride: int) -> bool:
    """The one shortcut rule: a 1x1 conv + BN when the stride or the width changes, else identity.
    In the official sub-space this holds exactly on the first block of stages 2-4."""
    return stride != 1 or c_in != c_out


class Block(NamedTuple):
    """One residual block of a concrete network, as block_plan lists them."""

    stage: int
    index: int  # in its stage
    c_in: int
    mid: int
    c_out: int
    stride: int
    projection: bool


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


@dataclasses.dataclass(frozen=True)
class Widths:
    """Channel counts of a concrete network; two codes with equal Widths are the same network."""

    stem: int
    # Per stage, one (first conv, second conv) width pair for every used block.
    blocks: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.blocks)

    @property
    def out_channels(self) -> int:
        return self.blocks[-1][-1][1]


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


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The ResNet48 space at a given width multiplier, input resolution and class count.

    width_mult scales every official width (64..512 after make_divisible) and rounds to an integer,
    so two codes map to the same network at any multiplier exactly when they do at 1.0.
    """

    width_mult: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    in_channels: int = 3

    def width(self, base: int, ratio_code: int) -> int:
        return max(1, int(round(make_divisible(base * RATIOS[ratio_code]) * self.width_mult)))

    @property
    def max_widths(self) -> Widths:
        return self.widths(self.largest())

    def widths(self, arch: Arch | str) -> Widths:
        arch = parse(arch) if isinstance(arch, str) else arch
        blocks = tuple(
            tuple((self.width(BASE_WIDTHS[s], a), self.width(BASE_WIDTHS[s], b)) for a, b in pairs)
            for s, pairs in enumerate(arch.blocks))
        return Widths(self.width(STEM_BASE, arch.stem_ratio), blocks)

    # -- sampling (the official sub-space and its distribution) -----------------------------------
    def largest(self) -> Arch:
        return _tied(tuple(MAX_DEPTHS), tuple(c[0] for c in OFFICIAL_CHOICES))

    def smallest(self) -> Arch:
        return _tied(tuple(c[0] for c in DEPTH_CHOICES), tuple(c[-1] for c in OFFICIAL_CHOICES))

    def sample(self, rng: np.random.Generator) -> Arch:
        """As the official list is distributed: each stage's depth and output code uniform, the
        stem tied to stage 1's output, every block's mid code uniform over its stage's choices."""
        depths = tuple(int(rng.choice(c)) for c in DEPTH_CHOICES)
        outs = tuple(int(rng.choice(c)) for c in OFFICIAL_CHOICES)
        mids = tuple(tuple(int(rng.choice(OFFICIAL_CHOICES[s])) for _ in range(d))
                     for s, d in enumerate(depths))
        return _tied(depths, outs, mids)

    # -- analytic cost (the counting convention of paddle.flops) ---------------------------------
    def flops(self, arch: Arch | str | Widths) -> int:
        """Multiply-adds as paddle.flops counts them: convs (no bias), BN 2/elem, avg pool, linear."""
        w = arch if isinstance(arch, Widths) else self.widths(arch)
        h = _conv_out(self.resolution, 7, 2, 3)
        total = w.stem * h * h * self.in_channels * 49 + 2 * w.stem * h * h
        h = _conv_out(h, 3, 2, 1)  # max pool: zero FLOPs in paddle.flops
        for b in block_plan(w):
            ho = _conv_out(h, 3, b.stride, 1)
            area = ho * ho
            total += b.mid * area * b.c_in * 9 + 2 * b.mid * area
            total += b.c_out * area * b.mid * 9 + 2 * b.c_out * area
            if b.projection:
                total += b.c_out * area * b.c_in + 2 * b.c_out * area
            h = ho
        total += (h * h + 1) * w.out_channels  # adaptive average pool
        total += w.out_channels * self.num_classes
        return int(total)

    def params(self, arch: Arch | str | Widths) -> int:
        """Trainable parameters (conv weights without bias, BN scale+shift, linear weight+bias)."""
        w = arch if isinstance(arch, Widths) else self.widths(arch)
        total = self.in_channels * w.stem * 49 + 2 * w.stem
        for b in block_plan(w):
            total += b.c_in * b.mid * 9 + 2 * b.mid + b.mid * b.c_out * 9 + 2 * b.c_out
            if b.projection:
                total += b.c_in * b.c_out + 2 * b.c_out
        total += w.out_channels * self.num_classes + self.num_classes
        return int(total)


def _tied(depths: tuple[int, ...], outs: tuple[int, ...],
          mids: tuple[tuple[int, ...], ...] | None = None) -> Arch:
    """The official-sub-space arch of these depths and per-stage output codes (mids default to
    the outputs); the stem takes stage 1's output code."""
    mids = mids or tuple((o,) * d for o, d in zip(outs, depths))
    blocks = tuple(tuple((m, o) for m in ms) for ms, o in zip(mids, outs))
    return Arch(1, depths, outs[0], blocks)  # type: ignore[arg-type]


def block_plan(w: Widths) -> list[Block]:
    """Every block of the network, in order, with its input width, stride and shortcut."""
    plan, c_in = [], w.stem
    for stage, pairs in enumerate(w.blocks):
        for i, (mid, c_out) in enumerate(pairs):
            stride = STAGE_STRIDES[stage] if i == 0 else 1
            plan.append(Block(stage, i, c_in, mid, c_out, stride, needs_projection(c_in, c_out, stride)))
            c_in = c_out
    return plan


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def hamming(a: Arch | str, b: Arch | str) -> int:
    """Positions of code[5:] (stem and block ratio codes, padding included) where two codes differ."""
    ca = a.code if isinstance(a, Arch) else a
    cb = b.code if isinstance(b, Arch) else b
    return sum(x != y for x, y in zip(ca[5:], cb[5:]))


def unique_widths(space: SearchSpace, codes: Sequence[str]) -> dict[Widths, list[str]]:
    """Group codes by the network they build (equal widths)."""
    groups: dict[Widths, list[str]] = {}
    for c in codes:
        groups.setdefault(space.widths(c), []).append(c)
    return groups

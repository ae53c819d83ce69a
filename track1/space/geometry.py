"""The concrete network of a code: widths (make_divisible), strides, the stem, the block plan and its shortcut rule."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple


BASE_WIDTHS = (64, 128, 256, 512)
STEM_BASE = 64
STAGE_STRIDES = (1, 2, 2, 2)
STEM_CONV = (7, 2, 3)  # the stem's conv: kernel, stride, padding
STEM_POOL = (3, 2, 1)  # the stem's max pool: kernel, stride, padding


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Nearest multiple of divisor, at least min_value, bumped up if rounding lost more than 10%."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """The output size of a convolution or pooling window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


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


def block_plan(w: Widths) -> list[Block]:
    """Every block of the network, in order, with its input width, stride and shortcut."""
    plan, c_in = [], w.stem
    for stage, pairs in enumerate(w.blocks):
        for i, (mid, c_out) in enumerate(pairs):
            stride = STAGE_STRIDES[stage] if i == 0 else 1
            plan.append(Block(stage, i, c_in, mid, c_out, stride, needs_projection(c_in, c_out, stride)))
            c_in = c_out
    return plan


def layer_sequence(w: Widths) -> tuple[tuple, ...]:
    """The network as the layers it runs, in order: ("stem", width), then (stage, index in stage,
    mid, out) per block; a layer's input width and stride follow from the ones before it."""
    seq: list[tuple] = [("stem", w.stem)]
    for stage, pairs in enumerate(w.blocks):
        for i, (mid, out) in enumerate(pairs):
            seq.append((stage, i, mid, out))
    return tuple(seq)

"""Multiply-adds and parameters in paddle.flops' convention (convs without bias, BN 2 per element,
the average pool, the linear head; max pooling free), per layer and per network."""
from __future__ import annotations

from track1.space.geometry import STEM_CONV, STEM_POOL, Block, Widths, block_plan, conv_out


def stem_macs(stem: int, in_channels: int, size: int) -> tuple[int, int]:
    """(multiply-adds, output size after the max pool) of the stem's conv + BN on a size x size input."""
    k, s, p = STEM_CONV
    h = conv_out(size, k, s, p)
    return stem * h * h * in_channels * k * k + 2 * stem * h * h, conv_out(h, *STEM_POOL)


def block_macs(b: Block, size: int) -> tuple[int, int]:
    """(multiply-adds, output size) of one BasicBlock (3x3 convs + BN, the projection if any)."""
    h = conv_out(size, 3, b.stride, 1)
    area = h * h
    macs = b.mid * area * b.c_in * 9 + 2 * b.mid * area + b.c_out * area * b.mid * 9 + 2 * b.c_out * area
    if b.projection:
        macs += b.c_out * area * b.c_in + 2 * b.c_out * area
    return macs, h


def head_macs(channels: int, size: int, num_classes: int) -> int:
    """The global average pool and the linear classifier (its bias is not counted)."""
    return (size * size + 1) * channels + channels * num_classes


def network_macs(w: Widths, in_channels: int, resolution: int, num_classes: int) -> int:
    macs, h = stem_macs(w.stem, in_channels, resolution)
    for b in block_plan(w):
        m, h = block_macs(b, h)
        macs += m
    return int(macs + head_macs(w.out_channels, h, num_classes))


def network_params(w: Widths, in_channels: int, num_classes: int) -> int:
    """Trainable parameters (conv weights without bias, BN scale+shift, linear weight+bias)."""
    k = STEM_CONV[0]
    total = in_channels * w.stem * k * k + 2 * w.stem
    for b in block_plan(w):
        total += b.c_in * b.mid * 9 + 2 * b.mid + b.mid * b.c_out * 9 + 2 * b.c_out
        if b.projection:
            total += b.c_in * b.c_out + 2 * b.c_out
    return int(total + w.out_channels * num_classes + num_classes)

"""The trie of a list of subnets over their layer sequences, and the multiply-adds it saves.

Subnets that share their leading layers (same stem width, same first blocks) share those layers'
activations and BN statistics when scored (track1.ranking.tree), so a list is scored as a trie
over space.layer_sequence: each distinct prefix once.
"""
from __future__ import annotations

from typing import Sequence

from track1.space import STAGE_STRIDES, Block, SearchSpace, Widths, layer_sequence, needs_projection
from track1.space.cost import block_macs, head_macs, stem_macs


class Node:
    __slots__ = ("children", "ends")

    def __init__(self) -> None:
        self.children: dict[tuple, Node] = {}
        self.ends: list[Widths] = []  # the subnets whose last layer this node is


def build_trie(widths_list: Sequence[Widths]) -> Node:
    """The trie of the distinct Widths' layer sequences (duplicates end at the same node once)."""
    root, seen = Node(), set()
    for w in widths_list:
        if w in seen:
            continue
        seen.add(w)
        node = root
        for key in layer_sequence(w):
            node = node.children.setdefault(key, Node())
        node.ends.append(w)
    return root


def part_of(layer: tuple) -> str:
    """The part of the network a layer belongs to: stem or stage1..stage4."""
    return "stem" if layer[0] == "stem" else f"stage{layer[0] + 1}"


def layer_macs(space: SearchSpace, layer: tuple, c_in: int, h: int) -> tuple[int, int, int]:
    """(multiply-adds, out channels, out size) of one layer of a layer sequence (space.cost)."""
    if layer[0] == "stem":
        macs, size = stem_macs(layer[1], space.in_channels, h)
        return macs, layer[1], size
    stage, i, mid, out = layer
    stride = STAGE_STRIDES[stage] if i == 0 else 1
    macs, size = block_macs(Block(stage, i, c_in, mid, out, stride, needs_projection(c_in, out, stride)), h)
    return macs, out, size


def shared_macs_by_part(space: SearchSpace, widths_list: Sequence[Widths]) -> dict[str, int]:
    """Prefix-shared multiply-adds of one image split into stem, stage1..stage4 and head."""
    parts = {"stem": 0, **{f"stage{s + 1}": 0 for s in range(len(STAGE_STRIDES))}, "head": 0}
    stack = [(build_trie(widths_list), space.in_channels, space.resolution)]
    while stack:
        node, c, h = stack.pop()
        parts["head"] += len(node.ends) * head_macs(c, h, space.num_classes)
        for key, child in node.children.items():
            macs, c2, h2 = layer_macs(space, key, c, h)
            parts[part_of(key)] += macs
            stack.append((child, c2, h2))
    return parts


def count_macs(space: SearchSpace, widths_list: Sequence[Widths]) -> tuple[int, int]:
    """(per-code, prefix-shared) multiply-adds of one image's forward pass through every subnet.

    Both count each distinct Widths once (scoring evaluates equal networks once too): per-code
    sums SearchSpace.flops over them; prefix-shared counts every trie node's layer once plus one
    head (pool + fc) per subnet. Calibration and evaluation run the same forward passes, so the
    ratio holds for the whole of scoring; multiply by the number of images for totals.
    """
    per_code = sum(space.flops(w) for w in dict.fromkeys(widths_list))
    return int(per_code), int(sum(shared_macs_by_part(space, widths_list).values()))

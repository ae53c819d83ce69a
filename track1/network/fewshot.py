"""A few-shot supernet: one sub-supernet per group of a split of the space (track1.space.split), each a
SuperNet; a network runs on its group's.

Its forward routes each subnet by its widths, so the training step, Cream's teachers and
paddle.DataParallel (which searches for the unused sub-supernets) treat it as one supernet; scoring
engines that share layers between subnets ask for `parts` and score each group on its own.
"""
from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn as nn

from track1.network.layers import DynamicBatchNorm2D
from track1.network.supernet import SuperNet
from track1.space import SearchSpace, Widths
from track1.space.split import Split


class FewShotSupernet(nn.Layer):
    """`parts[g]` is group g's sub-supernet (state dict names `parts.<g>.<SuperNet name>`)."""

    def __init__(self, space: SearchSpace, split: Split, act: str = "relu", conv: str = "stock",
                 fuse_bn: bool = False):
        super().__init__()
        self.space, self.split = space, split
        self.max_widths = space.max_widths
        self.parts = nn.LayerList([SuperNet(space, act, conv, fuse_bn) for _ in split.groups])

    def group_of(self, widths: Widths) -> int:
        return self.split.group_of_widths(widths, self.space)

    def forward(self, x: paddle.Tensor, widths: Widths | Sequence[Widths]):
        if not isinstance(widths, Widths):
            return [self.forward(x, w) for w in widths]
        return self.parts[self.group_of(widths)](x, widths)

    def parts_of(self, widths_list: Sequence[Widths]) -> list[tuple[SuperNet, list[Widths]]]:
        """(sub-supernet, its subnets) for every group that has any of the subnets."""
        by_group: dict[int, list[Widths]] = {}
        for w in widths_list:
            by_group.setdefault(self.group_of(w), []).append(w)
        return [(self.parts[g], ws) for g, ws in sorted(by_group.items())]

    def bn_layers(self) -> list[DynamicBatchNorm2D]:
        return [bn for part in self.parts for bn in part.bn_layers()]

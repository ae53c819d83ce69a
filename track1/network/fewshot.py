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


GROUP_LRS = ("equal", "difflr")  # fewshot.group_lr

# The 4th place's build_optimizer_difflr (solver/build.py) at n groups: {group: {stage: lr factor}}
# (group -1: the widest), on blocks 0..DIFFLR_BLOCKS[stage]-1 of that stage (their range(4) leaves
# the 5th block of stages 1, 2 and 4 at the base lr); 7 groups: their plain optimizer, no factor.
DIFFLR = {2: {-1: {0: 2.0, 1: 5.0, 2: 6.0, 3: 6.0}},
          3: {0: {1: 1 / 4, 2: 1 / 5, 3: 1 / 5}},
          4: {0: {1: 1 / 3, 2: 1 / 4, 3: 1 / 4}},
          5: {0: {1: 1 / 2, 2: 1 / 3, 3: 1 / 3}},
          6: {0: {2: 1 / 2, 3: 1 / 2}}}
DIFFLR_BLOCKS = (4, 4, 8, 4)


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

    def difflr_scales(self) -> dict[str, float]:
        """Parameter name -> lr factor of the 4th place's table (DIFFLR) for this split's group count:
        their group g of each stage is sub-supernet g here (the same codes at the routing stage 4)."""
        n = len(self.parts)
        out = {}
        for g, stages in DIFFLR.get(n, {}).items():
            part = self.parts[g % n]
            for s, factor in stages.items():
                for b in range(min(DIFFLR_BLOCKS[s], len(part.stages[s]))):
                    out.update({p.name: factor for p in part.stages[s][b].parameters()})
        return out

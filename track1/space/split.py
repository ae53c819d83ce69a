"""Partitions of the official sub-space into groups, one sub-supernet each (few-shot supernets): by one
stage's output ratio code (the 4th place) or by the depths of stages 3 and 4 (the 2nd place).

A split's groups cover every official code exactly once, so a code routes to one sub-supernet. A
width split is grown in steps (2, 3, ... groups), each group of a step lying inside one group of the
step before, which its sub-supernet inherits from.
"""
from __future__ import annotations

import dataclasses
import itertools

from track1.errors import ConfigError
from track1.space.code import DEPTH_CHOICES, OFFICIAL_CHOICES, Arch, CodeError
from track1.space.geometry import BASE_WIDTHS, Widths
from track1.space.subspace import Subspace

SPLITS = ("width", "depth")
# The 2nd place's five groups of (stage-3 depth, stage-4 depth) (QUARKAutoML few_shot_depth_model.py).
DEPTH_GROUPS = (
    frozenset((2, d4) for d4 in (2, 3, 4)),                                      # shallow stage 3
    frozenset((d3, 2) for d3 in range(3, 9)),                                    # shallow stage 4
    frozenset((8, d4) for d4 in (3, 4, 5)),                                      # deepest stage 3
    frozenset((d3, 5) for d3 in range(2, 8)),                                    # deepest stage 4
    frozenset((d3, d4) for d3 in range(3, 8) for d4 in (3, 4)),                  # the rest
)


@dataclasses.dataclass(frozen=True)
class Split:
    """Groups of the official sub-space; `name` identifies it (in checkpoints and score-log keys)."""

    name: str
    groups: tuple[Subspace, ...]
    kind: str          # width | depth
    stage: int = 0     # width: the stage (0-based) whose output code routes

    def group_of(self, arch: Arch) -> int:
        found = next((g for g, sub in enumerate(self.groups) if sub.contains(arch)), None)
        if found is None:
            raise CodeError(f"code {arch.code} fits no group of the few-shot split {self.name}")
        return found

    def group_of_widths(self, widths: Widths, space) -> int:
        """The group of a network given by its widths (SearchSpace `space`): a width split by the
        routing stage's output width, a depth split by the depths of stages 3 and 4."""
        if self.kind == "depth":
            pair = (widths.depths[2], widths.depths[3])
            found = next((g for g, group in enumerate(DEPTH_GROUPS) if pair in group), None)
        else:
            out = widths.blocks[self.stage][0][1]
            found = next((g for g, sub in enumerate(self.groups)
                          if any(space.width(BASE_WIDTHS[self.stage], c) == out for c in sub.outs[self.stage])),
                         None)
        if found is None:
            raise CodeError(f"a network of depths {widths.depths} fits no group of the few-shot split {self.name}")
        return found


def width_split(stage: int, n: int) -> Split:
    """The 4th place's channel groups of one stage (1-based `stage`) in n groups: each split peels the
    widest remaining output code off group 0, so codes 1 .. n-1 get a group each (group n-1 is code
    1) and the rest share group 0 (their get_max_channel_per_stage)."""
    if stage not in (2, 3, 4):
        raise ConfigError(f"fewshot.stage: {stage}: a width split routes by stage 2, 3 or 4 (stage 1's ratio "
                          f"codes 1 and 2 build the same network)")
    choices = OFFICIAL_CHOICES[stage - 1]
    if not 2 <= n <= len(choices):
        raise ConfigError(f"fewshot.groups: stage {stage} has {len(choices)} output codes: 2 to {len(choices)} "
                          f"groups, not {n}")
    codes = [tuple(c for c in choices if c >= n)] + [(n - g,) for g in range(1, n)]
    groups = tuple(_with_outs(stage - 1, c) for c in codes)
    return Split(f"width{stage}x{n}", groups, "width", stage - 1)


def depth_split() -> Split:
    """The 2nd place's five groups by (stage-3 depth, stage-4 depth)."""
    groups = tuple(dataclasses.replace(Subspace.official(), patterns=frozenset(
        p for p in itertools.product(*DEPTH_CHOICES) if (p[2], p[3]) in pairs)) for pairs in DEPTH_GROUPS)
    return Split("depth34x5", groups, "depth")


def _with_outs(stage: int, codes: tuple[int, ...]) -> Subspace:
    """The official sub-space with one stage's output codes limited to `codes`."""
    outs = tuple(codes if s == stage else c for s, c in enumerate(OFFICIAL_CHOICES))
    return dataclasses.replace(Subspace.official(), outs=outs)


def parents(child: Split, parent: Split | None) -> list[int]:
    """For each group of `child`, the group of `parent` it lies in (all 0 without a parent: every
    group starts from the one-shot supernet)."""
    if parent is None:
        return [0] * len(child.groups)
    return [parent.group_of(group.largest()) for group in child.groups]


def split_steps(kind: str, stage: int, group_counts: list[int]) -> list[Split]:
    """The splits a few-shot run goes through: a width split grown group count by group count,
    or the one depth split."""
    if kind == "depth":
        return [depth_split()]
    if not group_counts or any(b <= a for a, b in zip(group_counts, group_counts[1:])):
        raise ConfigError(f"fewshot.groups {group_counts}: increasing group counts, one split step each")
    return [width_split(stage, n) for n in group_counts]

"""The search space at a width multiplier, resolution and class count: widths of a code, the official
distribution's largest, smallest and random subnets, and their analytic cost."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from track1.space.code import RATIOS, Arch, parse
from track1.space.cost import network_macs, network_params
from track1.space.geometry import BASE_WIDTHS, STEM_BASE, Widths, make_divisible
from track1.space.subspace import Subspace


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

    @classmethod
    def from_config(cls, cfg: dict) -> "SearchSpace":
        s = cfg["space"]
        return cls(width_mult=s["width_mult"], resolution=s["resolution"], num_classes=s["num_classes"])

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

    # -- sampling (the official sub-space and its distribution: track1.space.subspace) ------------
    def largest(self) -> Arch:
        return Subspace.official().largest()

    def smallest(self) -> Arch:
        return Subspace.official().smallest()

    def sample(self, rng: np.random.Generator) -> Arch:
        """As the official list is distributed: each stage's depth and output code uniform, the
        stem tied to stage 1's output, every block's mid code uniform over its stage's choices."""
        return Subspace.official().sample(rng)

    # -- analytic cost (track1.space.cost: the counting convention of paddle.flops) ----------------
    def flops(self, arch: Arch | str | Widths) -> int:
        """Multiply-adds as paddle.flops counts them: convs (no bias), BN 2/elem, avg pool, linear."""
        w = arch if isinstance(arch, Widths) else self.widths(arch)
        return network_macs(w, self.in_channels, self.resolution, self.num_classes)

    def params(self, arch: Arch | str | Widths) -> int:
        """Trainable parameters (conv weights without bias, BN scale+shift, linear weight+bias)."""
        w = arch if isinstance(arch, Widths) else self.widths(arch)
        return network_params(w, self.in_channels, self.num_classes)


def unique_widths(space: SearchSpace, codes: Sequence[str]) -> dict[Widths, list[str]]:
    """Group codes by the network they build (equal widths)."""
    groups: dict[Widths, list[str]] = {}
    for c in codes:
        groups.setdefault(space.widths(c), []).append(c)
    return groups

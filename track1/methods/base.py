"""The seam between a training method and the step: the hooks a method implements, each of which may do nothing.

A step (track1.methods.step) draws its subnets with the sampler, lets every method add to them,
forwards them all in one call, gives each its loss (a method's, or else: labels for the first,
in-place distillation from it for the others), adds the methods' extra terms, and runs one backward
and optimizer step. A new method is a subclass in a file of its own, a config section under
`train:` with an `enabled` key, and a line in track1.methods.registry.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import paddle

from track1.space import Arch, SearchSpace, Subspace


# subnet_loss's answer for a subnet that has no loss of its own (it learns only through a term).
NO_LOSS = "no loss"


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a method may need to know of the run it is part of."""

    space: SearchSpace
    steps_per_epoch: int
    total_steps: int
    run_dir: Path | None = None  # None: keep nothing on disk


class Method:
    """A training method's part in each step; the hooks run in this order."""

    name = "method"  # its config section under train:, and its key in a checkpoint's state

    @classmethod
    def from_config(cls, cfg: dict, context: RunContext) -> "Method":
        return cls(cfg, context)

    def start(self) -> list[str]:
        """A fresh run begins (not a resumed one, whose state comes from its checkpoint); lines that
        say what the method loaded, if anything."""
        return []

    def extend(self, subnets: list[tuple[str, Arch]], step: int, within: Subspace) -> list[tuple[str, Arch]]:
        """(role, arch) subnets this method adds to the step's forward (a function of the step), drawn
        from the subspace the step draws from."""
        return []

    def before_forward(self, model: paddle.nn.Layer, subnets: list[tuple[str, Arch]], x: paddle.Tensor,
                       y: paddle.Tensor, step: int, lr: float, optimizer) -> dict:
        """No-grad work on the bare supernet before the step's forward (teachers' outputs); scalars."""
        return {}

    def subnet_loss(self, index: int, role: str, arch: Arch, logits: paddle.Tensor, y: paddle.Tensor):
        """The loss of subnet `index` if this method sets it, NO_LOSS if it has none, else None."""
        return None

    def extra_loss(self, subnets: list[tuple[str, Arch]], logits: list[paddle.Tensor], x: paddle.Tensor,
                   y: paddle.Tensor) -> tuple[paddle.Tensor | None, dict]:
        """A term added to the step's total loss (or None), and scalars to log."""
        return None, {}

    def after_step(self, model: paddle.nn.Layer, subnets: list[tuple[str, Arch]], x: paddle.Tensor,
                   y: paddle.Tensor, step: int, lr: float, optimizer) -> dict:
        """Work after the optimizer step (before the LR schedule moves on); scalars."""
        return {}

    def notes(self) -> list[str]:
        """Lines worth printing when training starts."""
        return []

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps of this method (None: nothing)."""
        return None

    def set_state_dict(self, state: dict) -> None:
        pass

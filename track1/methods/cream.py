"""Cream of the Crop in the training loop: its settings, teachers' soft labels, board updates and the matcher's schedule.

Cream (Peng et al., NeurIPS 2020) keeps a board of the K best paths seen (track1/board.py) and,
after a warm-up, distils each sampled path from one of them with losses.cream_loss; the teacher is
the best board path ("top1") or the one a matching network picks ("meta", track1/matcher.py).
The README's Cream section lists where `configs/cream_authors.yaml` and the project variant differ.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.methods.board import BOARD_RULES, PathBoard
from track1.errors import ConfigError
from track1.methods.matcher import (FEATURES, INITS, LOOKAHEADS, OPTIMIZERS, PICK_MODES, MetaMatcher,
                      all_reduce_mean, choose_teacher, matcher_optimizer, meta_step, student_step,
                      student_logits_on_board, teacher_probs)
from track1.space import Arch, SearchSpace

_CHOICES = {"board_rule": BOARD_RULES, "pick": PICK_MODES, "store_outputs": ("own", "teacher"),
            "meta_order": ("after", "before"), "meta_lookahead": LOOKAHEADS,
            "meta_features": FEATURES, "meta_init": INITS, "meta_optimizer": OPTIMIZERS,
            "meta_decay": ("constant", "linear")}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The train.cream section (configs/default.yaml documents each key); defaults: project variant."""

    roles: tuple[str, ...] = ("random",)
    board_size: int = 10
    board_rule: str = "project"
    gap: float = 0.0
    warmup: float = 0.17
    store_images: int = 8
    store_outputs: str = "own"
    pick: str = "top1"
    top1_rho: float = 1.0
    meta_interval: float = 0.05
    meta_order: str = "after"
    meta_lookahead: str = "full"
    meta_batch: int = 0
    meta_features: str = "pairs"
    meta_hidden: int = 0
    meta_init: str = "normal"
    meta_optimizer: str = "adam"
    meta_lr: float = 1e-3
    meta_momentum: float = 0.9
    meta_decay: str = "constant"
    meta_clip: float = 0.0
    meta_student_step: bool = False
    meta_seed: int = 0

    def __post_init__(self):
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"train.cream.{key}: {getattr(self, key)!r} is not one of "
                                  f"{', '.join(allowed)}")
        if not 0.0 <= self.warmup <= 1.0:
            raise ConfigError(f"train.cream.warmup: {self.warmup} is not a fraction of the run in [0, 1]")
        if not 0.0 < self.meta_interval <= 1.0:
            raise ConfigError(f"train.cream.meta_interval: {self.meta_interval} is not a fraction "
                              f"of the run in (0, 1]")
        for key in ("board_size", "store_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.cream.{key}: must be at least 1, got {getattr(self, key)}")
        if self.meta_batch < 0 or self.meta_hidden < 0 or self.meta_clip < 0:
            raise ConfigError("train.cream.meta_batch, meta_hidden and meta_clip must not be negative")

    @classmethod
    def from_config(cls, section: dict) -> "Settings":
        values = {k: v for k, v in section.items() if k != "enabled"}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"train.cream: unknown keys {sorted(unknown)}")
        values["roles"] = tuple(values.get("roles", cls.roles))
        return cls(**values)


@dataclasses.dataclass
class Plan:
    """What one student learns from this step."""

    teacher_code: str
    teacher_probs: paddle.Tensor
    rho: float
    score: float | None
    rank: int  # the teacher's place on the board, 0 = best batch accuracy


class Cream:
    """Board + teacher choice + matcher over a run of `total_steps` optimizer steps.

    The loop calls `plan` before the step's forward (teachers' soft labels), `observe` with each
    student's training logits (board update), `meta_step` when `meta_due` (before or after the
    optimizer step: `settings.meta_order`), and `state_dict`/`set_state_dict` with the checkpoints.
    Warm-up and matcher interval are fractions of the run, so they mean the same on any run length.
    """

    def __init__(self, space: SearchSpace, total_steps: int, settings: Settings = Settings(),
                 smoothing: float = 0.0):
        s = self.settings = settings
        self.space, self.total_steps, self.smoothing = space, int(total_steps), float(smoothing)
        self.roles = tuple(s.roles)
        self.warmup_steps = int(round(s.warmup * self.total_steps))
        self.meta_every = max(1, int(round(s.meta_interval * self.total_steps)))
        self.board = PathBoard(s.board_size, s.gap, s.board_rule)
        self.matcher, self.matcher_opt = None, None
        if s.pick == "meta":
            self.matcher = MetaMatcher(space.num_classes, s.store_images, s.meta_features,
                                       s.meta_hidden, s.meta_init, np.random.default_rng(s.meta_seed))
            self.matcher_opt = matcher_optimizer(self.matcher, s.meta_optimizer, s.meta_lr,
                                                 s.meta_momentum, s.meta_clip)

    @classmethod
    def from_config(cls, cfg: dict, space: SearchSpace, total_steps: int) -> "Cream":
        return cls(space, total_steps, Settings.from_config(cfg["train"]["cream"]),
                   float(cfg["train"]["label_smoothing"]))

    @property
    def meta_before(self) -> bool:
        return self.settings.meta_order == "before"

    def active(self, step: int) -> bool:
        """Board recording and distillation start after the warm-up."""
        return step >= self.warmup_steps

    def plan(self, model: nn.Layer, students: Sequence[Arch], x: paddle.Tensor) -> list[Plan | None]:
        """Each student's teacher and its soft labels on x (None: no teacher, plain CE).

        Teacher forwards are no-grad and shared between students with the same teacher.
        """
        plans: list[Plan | None] = []
        cache: dict[str, paddle.Tensor] = {}
        for arch in students:
            logits = (student_logits_on_board(model, self.space.widths(arch), self.board)
                      if self.settings.pick == "meta" and len(self.board) else None)
            choice = choose_teacher(self.board, logits, self.settings.pick, self.matcher,
                                    exclude=arch.code, top1_rho=self.settings.top1_rho)
            if choice is None:
                plans.append(None)
                continue
            code = choice.entry.code
            if code not in cache:
                cache[code] = teacher_probs(model, self.space.widths(code), x)
            plans.append(Plan(code, cache[code], choice.rho, choice.score, choice.index))
        return plans

    def observe(self, arch: Arch, logits: paddle.Tensor, x: paddle.Tensor, y: paddle.Tensor,
                plan: Plan | None = None) -> bool:
        """Offer a student to the board with its training-batch accuracy (averaged over ranks).

        The entry keeps the first store_images images with the path's own softmax on them, or
        (store_outputs: teacher, Cream's code) the softmax of the teacher it learnt from this step.
        """
        out = logits.detach()
        acc = (out.argmax(axis=-1) == y.reshape([-1]).astype("int64")).astype("float32").mean().item()
        acc = float(all_reduce_mean(np.array([acc], "float32"))[0])
        m = min(self.settings.store_images, x.shape[0])
        if m < self.settings.store_images and self.settings.meta_features == "flat":
            raise ConfigError(f"train.cream.store_images: {self.settings.store_images} images do "
                              f"not fit a batch of {x.shape[0]} (meta_features flat needs them all)")
        if self.settings.store_outputs == "teacher" and plan is not None:
            soft = plan.teacher_probs[:m]
        else:
            soft = F.softmax(out[:m], axis=-1)
        return self.board.consider(acc, self.space.flops(arch), arch.code, x[:m].numpy(),
                                   soft.numpy())

    def meta_due(self, step: int) -> bool:
        return (self.matcher is not None and self.active(step) and step > 0
                and step % self.meta_every == 0 and len(self.board) > 0)

    def meta_lr(self, step: int) -> float:
        """The matcher's lr at this step: constant, or linear decay to 0 over the run (Cream's)."""
        if self.settings.meta_decay == "linear":
            return self.settings.meta_lr * max(0.0, 1.0 - step / self.total_steps)
        return self.settings.meta_lr

    def meta_step(self, model: nn.Layer, student: Arch | Sequence[tuple[str, Arch]],
                  x: paddle.Tensor, y: paddle.Tensor, step: int, student_lr: float,
                  optimizer=None) -> dict:
        """The matcher's update on this batch for `student` (or the first of the step's
        (role, arch) subnets whose role learns from the board; none: no update, {}).
        The look-ahead runs on the batch's first meta_batch images
        (0 = half the batch), the held-out CE on the next as many (as Cream slices its batch).

        Look-ahead "full" steps at the student's lr with the full loss; "kd" (Cream's) steps
        on rho * KD at the matcher's own lr, whose held-out CE uses the label smoothing.
        meta_student_step (Cream's code) also applies that step's gradient to the student with
        `optimizer` (the supernet's), clipped to meta_clip, before the held-out gradient.
        """
        if not isinstance(student, Arch):
            student = next((a for role, a in student if role in self.roles), None)
            if student is None:
                return {}
        s = self.settings
        n = s.meta_batch or x.shape[0] // 2
        if 2 * n > x.shape[0]:
            raise ConfigError(f"train.cream.meta_batch: {n} + {n} images do not fit a batch of {x.shape[0]}")
        lr = self.meta_lr(step)
        self.matcher_opt.set_lr(lr)
        kd = s.meta_lookahead == "kd"
        real_step = None
        if s.meta_student_step:
            if optimizer is None:
                raise ValueError("meta_student_step needs the supernet's optimizer")
            real_step = lambda pairs: student_step(optimizer, pairs, s.meta_clip)  # noqa: E731
        scalars = meta_step(model, self.matcher, self.matcher_opt, self.board, self.space, student,
                            x[:n], y[:n], x[n:2 * n], y[n:2 * n], lr if kd else student_lr,
                            s.meta_lookahead, self.smoothing, self.smoothing if kd else 0.0,
                            real_step)
        if scalars:
            scalars["cream/meta_lr"] = lr
        return scalars

    def scalars(self) -> dict:
        out = {"cream/board_size": float(len(self.board))}
        if len(self.board):
            out.update({"cream/board_acc": self.board.mean_acc,
                        "cream/board_mflops": self.board.mean_flops / 1e6})
        return out

    def state_dict(self) -> dict:
        matcher = None
        if self.matcher is not None:
            matcher = {"weights": self.matcher.weights(), "optimizer": self.matcher_opt.state_dict()}
        return {"board": self.board.state_dict(), "matcher": matcher}

    def set_state_dict(self, state: dict) -> None:
        self.board.set_state_dict(state["board"])
        if self.matcher is not None:
            if state.get("matcher") is None:
                raise ValueError("checkpoint has no matcher state but teacher pick is 'meta'")
            self.matcher.set_weights(state["matcher"]["weights"])
            self.matcher_opt.set_state_dict(state["matcher"]["optimizer"])

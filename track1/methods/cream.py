"""Cream of the Crop in the training loop: its settings, teachers' soft labels, board updates and the matcher's schedule.

Cream (Peng et al., NeurIPS 2020) keeps a board of the K best paths seen (track1/board.py) and,
after a warm-up, distils each sampled path from one of them with losses.cream_loss; the teacher is
the best board path ("top1") or the one a matching network picks ("meta", track1/matcher.py).
docs/METHODS.md (Cream section) lists where `configs/cream_authors.yaml` and the project variant differ.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.errors import ConfigError
from track1.methods.base import Method, RunContext
from track1.methods.board import PathBoard
from track1.methods.losses import cream_loss
from track1.methods.matcher import (MetaMatcher, all_reduce_mean, apply_gradients, board_rho, choose_teacher,
                                    matcher_optimizer, meta_step, student_logits_on_board, teacher_probs)
from track1.space import Arch, SearchSpace


@dataclasses.dataclass(frozen=True)
class Settings:
    """The train.cream section (configs/default.yaml documents each key and holds the defaults: the
    project variant; the config schema checks every value)."""

    roles: tuple[str, ...]
    board_size: int
    board_rule: str
    gap: float
    warmup: float
    store_images: int
    store_outputs: str
    pick: str
    top1_rho: float
    meta_interval: float
    meta_every_steps: int
    meta_order: str
    meta_lookahead: str
    meta_batch: int
    meta_features: str
    meta_hidden: int
    meta_init: str
    meta_optimizer: str
    meta_lr: float
    meta_momentum: float
    meta_decay: str
    meta_clip: float
    meta_student_step: bool
    rho_grad: bool
    meta_seed: int

    @classmethod
    def from_config(cls, section: dict) -> "Settings":
        values = {k: v for k, v in section.items() if k != "enabled"}
        values["roles"] = tuple(values["roles"])
        return cls(**values)


@dataclasses.dataclass
class Plan:
    """What one student learns from this step."""

    teacher_code: str
    teacher_probs: paddle.Tensor
    rho: float
    score: float | None
    rank: int  # the teacher's place on the board, 0 = best batch accuracy
    rho_tensor: paddle.Tensor | None = None  # rho_grad: rho with its gradient to the matcher and student


class Cream(Method):
    """Board + teacher choice + matcher over a run of `total_steps` optimizer steps.

    As a training method (track1.methods.base): before the step's forward it picks each student's
    teacher and computes the teacher's soft labels (`plan`), it sets the students' losses, offers
    each student to the board with its training logits (`observe`), and runs the matcher's update
    (`meta_step`) when due, before the forward or after the optimizer step (`settings.meta_order`).
    With rho_grad (Cream's code) each student's rho keeps its graph, so the step's backward also
    gives the matcher a gradient, which its optimizer takes after the step (`matcher_main_step`).
    The warm-up is a fraction of the run; the matcher's interval a fraction or a step count.
    """

    name = "cream"

    def __init__(self, space: SearchSpace, total_steps: int, settings: Settings, smoothing: float = 0.0):
        s = self.settings = settings
        self.space, self.total_steps, self.smoothing = space, int(total_steps), smoothing
        self.roles = tuple(s.roles)
        self.warmup_steps = int(round(s.warmup * self.total_steps))
        self.meta_every = s.meta_every_steps or max(1, int(round(s.meta_interval * self.total_steps)))
        self.board = PathBoard(s.board_size, s.gap, s.board_rule)
        self.matcher, self.matcher_opt = None, None
        if s.pick == "meta":
            self.matcher = MetaMatcher(space.num_classes, s.store_images, s.meta_features,
                                       s.meta_hidden, s.meta_init, np.random.default_rng(s.meta_seed))
            self.matcher_opt = matcher_optimizer(self.matcher, s.meta_optimizer, s.meta_lr, s.meta_momentum)
        self._plans: dict[int, Plan | None] = {}  # this step's students (subnet index) and teachers

    @classmethod
    def from_config(cls, cfg: dict, context: RunContext) -> "Cream":
        if cfg["train"]["cream"]["rho_grad"] and cfg["train"]["amp"] == "fp16":
            raise ConfigError("train.cream.rho_grad: not with train.amp fp16 (the matcher's gradient "
                              "would keep the loss scale)")
        return cls(context.space, context.total_steps, Settings.from_config(cfg["train"]["cream"]),
                   cfg["train"]["label_smoothing"])

    # -- the method's hooks ------------------------------------------------------------------------
    def before_forward(self, model, subnets, x, y, step, lr, optimizer) -> dict:
        """The matcher's look-ahead when it runs first (Cream's order), then each student's teacher
        and soft labels (no-grad forwards on the bare supernet)."""
        scalars = {}
        if self.meta_before and self.meta_due(step):
            scalars = self.meta_step(model, subnets, x, y, step, lr, optimizer)
        students = [i for i, (role, _) in enumerate(subnets) if role in self.roles] if self.active(step) else []
        self._plans = dict(zip(students, self.plan(model, [subnets[i][1] for i in students], x))) if students else {}
        return scalars

    def subnet_loss(self, index, role, arch, logits, y):
        plan = self._plans.get(index)
        if plan is None:
            return None
        rho = plan.rho_tensor if plan.rho_tensor is not None else plan.rho
        return cream_loss(logits, plan.teacher_probs, y, rho, self.smoothing)

    def extra_loss(self, subnets, logits, x, y):
        """No term: the students are offered to the board, in order, and the board is reported."""
        if not self._plans:
            return None, {}
        for i, plan in self._plans.items():
            self.observe(subnets[i][1], logits[i], x, y, plan)
        used = [p for p in self._plans.values() if p is not None]
        scalars = {"cream/taught": len(used) / len(self._plans)}
        if used:
            scalars["cream/rho"] = float(np.mean([p.rho for p in used]))
            scalars["cream/teacher_rank"] = float(np.mean([p.rank for p in used]))
        scalars.update(self.scalars())
        return None, scalars

    def after_step(self, model, subnets, x, y, step, lr, optimizer) -> dict:
        """The matcher's step on the main loss's gradient (rho_grad), then its look-ahead update
        when it runs last."""
        self.matcher_main_step(step)
        if not self.meta_before and self.meta_due(step):
            return self.meta_step(model, subnets, x, y, step, lr, optimizer)
        return {}

    def matcher_main_step(self, step: int) -> None:
        """rho_grad (Cream's code, where the matcher sits in the student's optimizer at its own lr):
        the step's backward left a gradient on the matcher; its optimizer takes it, unclipped."""
        if not any(p is not None and p.rho_tensor is not None for p in self._plans.values()):
            return
        params = self.matcher.parameters()
        grads = [p.grad.numpy() if p.grad is not None else np.zeros(p.shape, "float32") for p in params]
        self.matcher_opt.clear_grad(set_to_zero=False)
        self.matcher_opt.set_lr(self.meta_lr(step))
        apply_gradients(self.matcher_opt, list(zip(params, grads)))
        for plan in self._plans.values():  # their graphs are spent
            if plan is not None:
                plan.rho_tensor = None

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
            rho = (board_rho(model, self.matcher, self.space.widths(arch), choice.entry)
                   if self.settings.pick == "meta" and self.settings.rho_grad else None)
            plans.append(Plan(code, cache[code], choice.rho, choice.score, choice.index, rho))
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
            real_step = lambda pairs: apply_gradients(optimizer, pairs, s.meta_clip)  # noqa: E731
        scalars = meta_step(model, self.matcher, self.matcher_opt, self.board, self.space, student,
                            x[:n], y[:n], x[n:2 * n], y[n:2 * n], lr if kd else student_lr,
                            s.meta_lookahead, self.smoothing, self.smoothing if kd else 0.0,
                            real_step, s.rho_grad, s.meta_clip)
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

"""What a training step needs, built from a config (the supernet, its optimizer and LR schedule, mixed
precision, the methods), and the step itself: what the training loop, the pre-flight and the
benchmarks all run."""
from __future__ import annotations

from pathlib import Path

import paddle

from track1.methods.base import RunContext
from track1.methods.registry import build_methods
from track1.methods.sampling import parse_phases, phase_at, phase_starts, uses_every_parameter
from track1.methods.step import plan_subnets, train_step
from track1.network.build import build_fewshot, build_supernet
from track1.network.layers import set_bn_stats
from track1.network.pretrained import init_path, load_full_network
from track1.network.precision import Precision
from track1.pipeline.caps import capped_steps
from track1.pipeline.optim import build_optimizer
from track1.space import Subspace
from track1.space.split import Split


class Trainer:
    """The supernet and everything one optimizer step of cfg changes.

    With world > 1 the forward runs through paddle.DataParallel, searching for unused parameters
    only where a step can leave some unused (uses_every_parameter).
    """

    def __init__(self, cfg: dict, steps_per_epoch: int, world: int = 1, run_dir: Path | None = None,
                 split: Split | None = None, initial_state: dict | None = None):
        """split: train a few-shot supernet of it (track1.pipeline.fewshot; how: train.split);
        initial_state: its weights at the start of a new run."""
        t = self.t = cfg["train"]
        self.cfg, self.run_dir, self.split, self.initial_state = cfg, run_dir, split, initial_state
        self.space, self.model = build_supernet(cfg) if split is None else build_fewshot(cfg, split)
        set_bn_stats(self.model, t["bn_stats"])  # frozen: the statistics start() loads, never updated
        self.total_steps = int(round(steps_per_epoch * t["epochs"]))  # a split step may be part of an epoch
        cap = capped_steps(cfg)
        self.run_steps = min(self.total_steps, cap) if cap else self.total_steps  # where this run stops
        # a split step's own settings (track1.pipeline.fewshot.split_config)
        self.split_step = t.get("split", {"step": "rotate", "group_lr": "equal", "group": None})
        self.phases = parse_phases(t["progressive"]["phases"]) if t["progressive"]["enabled"] else []
        scales = self.model.difflr_scales() if self.split_step["group_lr"] == "difflr" else None
        restarts = None  # phases with an lr each restart the cosine, over where the run stops
        if self.phases and self.phases[0].lr is not None:
            restarts = (phase_starts(self.phases, self.run_steps), [p.lr for p in self.phases])
        self.optimizer, self.scheduler = build_optimizer(t, self.model, self.total_steps, steps_per_epoch, scales,
                                                         restarts)
        self.precision = Precision(t["amp"])
        self.methods = build_methods(cfg, RunContext(self.space, steps_per_epoch, self.total_steps, run_dir))
        unused = split is not None or not uses_every_parameter(t["sampler"])  # other groups' weights too
        self.net = paddle.DataParallel(self.model, find_unused_parameters=unused) if world > 1 else self.model

    def start(self) -> list[str]:
        """A fresh run begins: the supernet from train.init_from (or the pretrain stage's file), its
        mid channels reordered if asked, and each method's own start (a frozen teacher's weights);
        the lines that say what was loaded."""
        path = init_path(self.cfg, self.run_dir) if self.run_dir is not None else self.cfg["train"]["init_from"]
        if self.initial_state is not None:
            self.model.set_state_dict(self.initial_state)
            lines = ["init: the supernet starts from the weights it was split from"]
        elif path:
            source = "train.init_from" if self.t["init_from"] else "the pretrain stage's file"
            lines = [f"init: the supernet starts from {source} "
                     f"{load_full_network(self.model, path, self.t['init_reorder'])}"]
        else:
            lines = ["init: the supernet starts from scratch (no train.init_from, no pretrain stage before it)"]
        if self.t["bn_stats"] == "frozen":
            lines.append("bn: every training step normalises with these running statistics, never updated "
                         "(train.bn_stats: frozen); scoring re-calibrates them")
        for m in self.methods:
            lines += m.start()
        return lines

    def within(self, step: int) -> tuple[Subspace, int | None]:
        """The part of the space this step draws from, and its progressive-shrinking phase (None:
        off; the phases are fractions of where the run stops). A few-shot split step draws from its
        groups in turn (rotate), from the whole official sub-space (global_sandwich: the model
        routes each subnet to its group) or from its one group (sequence)."""
        if self.split is None:
            base = Subspace.named(self.t["draw"])
        elif self.split_step["step"] == "global_sandwich":
            base = Subspace.official()
        elif self.split_step["step"] == "sequence":
            base = self.split.groups[self.split_step["group"]]
        else:
            base = self.split.groups[step % len(self.split.groups)]
        if not self.phases:
            return base, None
        i = phase_at(self.phases, step, self.run_steps)
        return base.restrict(self.phases[i].min_depths, self.phases[i].max_codes), i

    def subnets(self, step: int):
        within, phase = self.within(step)
        subnets = plan_subnets(self.cfg, self.methods, step, within)
        if phase is not None:  # a narrow phase draws the same network more than once: train it once
            seen: set = set()
            subnets = [s for s in subnets if not (s[1] in seen or seen.add(s[1]))]
        return subnets

    def step(self, x: paddle.Tensor, y: paddle.Tensor, step: int, read: bool = True) -> dict:
        """One optimizer step on (x, y): scalars to log (tensors on the device unless read)."""
        self.model.train()
        subnets, lr = self.subnets(step), self.optimizer.get_lr()
        scalars = {} if not self.phases else {"progressive/phase": self.within(step)[1]}
        for m in self.methods:
            scalars.update(m.before_forward(self.model, subnets, x, y, step, lr, self.optimizer))
        scalars.update(train_step(self.net, self.space, subnets, x, y, self.methods, self.t["label_smoothing"],
                                  self.precision, read))
        self.precision.step(self.optimizer)
        # None, not zero: a parameter this step's subnets did not use must not be updated by
        # momentum or weight decay, and a resumed run (fresh None grads) must do the same.
        self.optimizer.clear_grad(set_to_zero=False)
        for m in self.methods:
            scalars.update(m.after_step(self.model, subnets, x, y, step, lr, self.optimizer))
        self.scheduler.step()
        return scalars

    def notes(self) -> list[str]:
        return [line for m in self.methods for line in m.notes()]

    def state_dict(self) -> dict:
        """What a checkpoint's train.pdopt holds besides the weights."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "precision": self.precision.state_dict()}
        for m in self.methods:
            if m.state_dict() is not None:
                state[m.name] = m.state_dict()
        return state

    def set_state_dict(self, state: dict) -> None:
        self.optimizer.set_state_dict(state["optimizer"])
        self.scheduler.set_state_dict(state["scheduler"])
        self.precision.set_state_dict(state.get("precision", {}))
        for m in self.methods:
            if m.name in state:
                m.set_state_dict(state[m.name])

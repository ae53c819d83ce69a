"""Distillation from a frozen full network (the official baseline's, and the 1st and 2nd places'): every
subnet of a step, the largest included, also learns the teacher's softmax (train.distill)."""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

from track1.errors import ConfigError
from track1.methods.base import Method, RunContext
from track1.methods.losses import soft_cross_entropy
from track1.network.pretrained import init_path, load_full_network
from track1.network.resnet import ResNet


class FrozenTeacher(Method):
    """The baseline's loss (PaddleSlim OFA's DistillConfig(teacher_model=...) as its train_supernet.py
    uses it): soft cross-entropy to the teacher's softmax at temperature 1, weight
    train.distill.weight, added to each subnet's own loss (labels, or in-place distillation in the
    sandwich rule). The teacher is the plain ResNet of the largest code, loaded once, in eval mode
    and under no_grad: it gets no gradient and its BN statistics never move. Its weights go into
    every checkpoint, so a resumed run needs the file no more."""

    name = "distill"

    def __init__(self, cfg: dict, context: RunContext):
        d, space = cfg["train"]["distill"], context.space
        self.path = d["teacher"] or (init_path(cfg, context.run_dir) if context.run_dir is not None
                                     else cfg["train"]["init_from"] or None)
        if not self.path:
            raise ConfigError("train.distill needs a teacher: train.distill.teacher, train.init_from or "
                              "pretrain.enabled")
        self.weight = d["weight"]
        with paddle.utils.unique_name.guard("distill_teacher_"):
            self.teacher = ResNet(space.max_widths, space, cfg["space"]["act"], cfg["train"]["conv"])
        for p in self.teacher.parameters():
            p.stop_gradient = True
        self.teacher.eval()
        self.probs = None

    def start(self) -> list[str]:
        loaded = load_full_network(self.teacher, self.path)  # a fresh run: from the file (a resume: the checkpoint)
        return [f"distill: every subnet also learns from a frozen teacher, {loaded}, weight {self.weight}; "
                f"in eval mode, its BN statistics never move"]

    def before_forward(self, model, subnets, x, y, step, lr, optimizer) -> dict:
        self.teacher.eval()
        with paddle.no_grad():
            self.probs = F.softmax(self.teacher(x), axis=-1)
        return {}

    def extra_loss(self, subnets, logits, x, y):
        # pairs learn only through the rank term, NSAS's set only from the labels (the 2nd place's)
        terms = [soft_cross_entropy(out, self.probs) for (role, _), out in zip(subnets, logits)
                 if role not in ("pair", "nsas")]
        kd = paddle.add_n(terms)
        return self.weight * kd, {"distill/loss": kd.detach() / len(terms)}

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def set_state_dict(self, state: dict) -> None:
        self.teacher.set_state_dict(state["teacher"])

"""NSAS regularisation as the 2nd place ran it (QUARKAutoML arch_nsas.py, after Zhang et al., CVPR 2020):
a small set of architectures kept diverse learns from the labels beside each step's path, so that
training one path does not make the supernet forget the others (train.nsas)."""
from __future__ import annotations

import numpy as np

from track1.methods.base import Method, RunContext
from track1.methods.losses import label_loss
from track1.methods.sampling import step_rng
from track1.space import Arch, Subspace, parse

_NSAS = 4  # step_rng stream of the set's fresh draws


def nsas_distance(a: Arch, b: Arch) -> float:
    """Their cal_arch_distance: the L1 distance of the code's digits from the stem ratio to the one
    before last (a missing block's 0 counted as 9), over 47."""
    da, db = (np.array([int(c) or 9 for c in arch.code[5:-1]]) for arch in (a, b))
    return float(np.abs(da - db).sum()) / 47.0


def diversity(arch: Arch, others: list[Arch], knn: int) -> float:
    """Their cal_arch_score_knn: the mean distance to its knn nearest among others."""
    return float(np.mean(np.sort([nsas_distance(arch, o) for o in others])[:knn]))


def updated(select: list[Arch], recent: list[Arch], path: Arch, knn: int) -> list[Arch]:
    """Their update_select_arch: the member nearest the path (the first of equals) is replaced by the
    recent path most diverse against the other members, if any is strictly more diverse than it."""
    i = int(np.argmin([nsas_distance(path, a) for a in select]))
    rest = select[:i] + select[i + 1:]
    best, score = select[i], diversity(select[i], rest, knn)
    for arch in recent:
        d = diversity(arch, rest, knn)
        if d > score:
            best, score = arch, d
    return select[:i] + [best] + select[i + 1:]


class NSAS(Method):
    """Each step, after the path: the set is drawn afresh every `refresh_every` steps of an epoch
    (from the part of the space the step draws from), the path joins the recent ones, the set is
    updated, and each member learns the labels at weight / select (role "nsas", no distillation);
    the path's own label loss has label_weight. Set and recent paths are saved with the run."""

    name = "nsas"

    def __init__(self, cfg: dict, context: RunContext):
        n = cfg["train"]["nsas"]
        self.select_num, self.knn, self.recent_num = n["select"], n["knn"], n["recent"]
        self.refresh_every, self.weight, self.label_weight = n["refresh_every"], n["weight"], n["label_weight"]
        self.smoothing, self.seed = cfg["train"]["label_smoothing"], cfg["run"]["seed"]
        self.steps_per_epoch = context.steps_per_epoch
        self.select: list[Arch] = []
        self.recent: list[Arch] = []

    def _next(self, path: Arch, step: int, within: Subspace) -> tuple[list[Arch], list[Arch]]:
        """(the set, the recent paths) after this step's path: a function of the state and the step."""
        select = self.select
        if (step % self.steps_per_epoch) % self.refresh_every == 0 or not select:
            rng = step_rng(self.seed, step, _NSAS)
            select = [within.sample(rng) for _ in range(self.select_num)]
        recent = (self.recent + [path])[-self.recent_num:]
        return updated(select, recent, path, self.knn), recent

    def extend(self, subnets, step, within):
        (path,) = [a for role, a in subnets if role == "random"]
        select, _ = self._next(path, step, within)
        return [("nsas", a) for a in select]

    def subnet_loss(self, index, role, arch, logits, y):
        weight = self.weight / self.select_num if role == "nsas" else self.label_weight
        return weight * label_loss(logits, y, self.smoothing)

    def after_step(self, model, subnets, x, y, step, lr, optimizer) -> dict:
        (path,) = [a for role, a in subnets if role == "random"]
        self.select = [a for role, a in subnets if role == "nsas"]
        self.recent = (self.recent + [path])[-self.recent_num:]
        return {}

    def state_dict(self) -> dict:
        return {"select": [a.code for a in self.select], "recent": [a.code for a in self.recent]}

    def set_state_dict(self, state: dict) -> None:
        self.select = [parse(c) for c in state["select"]]
        self.recent = [parse(c) for c in state["recent"]]

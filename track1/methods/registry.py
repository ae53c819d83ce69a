"""The training methods a config can turn on, each by its section under `train:` (`enabled: true`)."""
from __future__ import annotations

from track1.methods.base import Method, RunContext
from track1.methods.cream import Cream
from track1.methods.distill import FrozenTeacher
from track1.methods.nsas import NSAS
from track1.methods.ranking import RankingDistillation


# In the order their hooks run within a step.
METHODS: tuple[type[Method], ...] = (Cream, RankingDistillation, NSAS, FrozenTeacher)


def build_methods(cfg: dict, context: RunContext) -> list[Method]:
    return [m.from_config(cfg, context) for m in METHODS if cfg["train"][m.name]["enabled"]]

"""The few-shot stage: after the one-shot supernet, sub-supernets, one per group of a split of the space,
each starting from its parent's weights and trained on its group's codes (the 4th and 2nd places).

Each split step is a training run of its own in output/<run>/fewshot/<split>/ (checkpoints, resume,
VisualDL): a few-shot supernet (track1.network.fewshot) whose steps train the groups in turn, each
step's subnets drawn inside its group ("largest" and "smallest" mean the group's). A width split
grows in steps (2, 3, ... groups), each group inheriting from the group of the step before that held
its codes; the first inherits from the one-shot run. All are one training run's weights: the
submitted accuracies still come from the supernet.
"""
from __future__ import annotations

import copy
from pathlib import Path

import paddle

from track1.errors import UserError
from track1.network.build import build_fewshot
from track1.network.pretrained import init_path
from track1.pipeline import checkpoint
from track1.pipeline.config import run_dir
from track1.pipeline.train import max_steps, train
from track1.space.split import Split, parents, split_steps


def steps_of(cfg: dict) -> list[Split]:
    f = cfg["fewshot"]
    return split_steps(f["split"], f["stage"], f["groups"])


def split_config(cfg: dict, split: Split) -> dict:
    """The config of one split step's run: fewshot.epochs at fewshot.lr (cosine, no warm-up), its
    share of train.max_steps, no initial file (the frozen teacher, if any, stays), no rank check."""
    out = copy.deepcopy(cfg)
    out["run"]["output_dir"], out["run"]["name"] = str(run_dir(cfg) / "fewshot"), split.name
    f, t = cfg["fewshot"], out["train"]
    t.update({"epochs": f["epochs"], "lr": f["lr"], "warmup_epochs": 0.0, "init_from": "",
              "max_steps": max_steps(cfg) if cfg["train"]["max_steps"] else 0})
    if t["distill"]["enabled"] and not t["distill"]["teacher"]:  # the one-shot run's teacher, named
        t["distill"]["teacher"] = str(init_path(cfg, run_dir(cfg)))
    out["pretrain"]["enabled"] = False
    out["fewshot"]["enabled"] = False  # the step itself is a plain run of a few-shot supernet
    out["monitor"]["every_epochs"] = 0
    return out


def inherit(state: dict, parent: Split | None, child: Split) -> dict:
    """The child's initial weights: each group's sub-supernet a copy of the parent group that held
    its codes (of the one-shot supernet, without a parent)."""
    out = {}
    for g, p in enumerate(parents(child, parent)):
        prefix = "" if parent is None else f"parts.{p}."
        names = [k[len(prefix):] for k in state if k.startswith(prefix)] if prefix else list(state)
        out.update({f"parts.{g}.{name}": state[prefix + name] for name in names})
    return out


def final_checkpoint(cfg: dict) -> tuple[Path, Split, dict]:
    """The last split step's latest checkpoint, its split and config: what `score` uses."""
    last = steps_of(cfg)[-1]
    sc = split_config(cfg, last)
    found = checkpoint.latest(run_dir(sc))
    if found is None:
        raise checkpoint.CheckpointError(f"{run_dir(sc)}: no few-shot checkpoint; run `fewshot` first")
    return found, last, sc


def fewshot(cfg: dict, progress: bool = True) -> tuple[Path | None, str]:
    """Run (or resume) every split step; (the last one's final checkpoint, what was done)."""
    if not cfg["fewshot"]["enabled"]:
        return None, "skipped: fewshot.enabled is false"
    one_shot = checkpoint.latest(run_dir(cfg))
    if one_shot is None or not checkpoint.read_meta(one_shot).get("finished"):
        raise UserError(f"{run_dir(cfg)}: the one-shot supernet is not trained to its end; run `train` first")
    state = paddle.load(str(one_shot / "model.pdparams"))
    parent, final = None, None
    for split in steps_of(cfg):
        sc = split_config(cfg, split)
        train(sc, resume=True, progress=progress, split=split, initial_state=inherit(state, parent, split))
        if paddle.distributed.get_world_size() > 1:
            paddle.distributed.barrier()  # every rank starts the next step from what rank 0 saved
        final = checkpoint.latest(run_dir(sc))
        _, model = build_fewshot(sc, split)
        checkpoint.load_weights(final, model, sc)
        state, parent = model.state_dict(), split
    return final, f"{len(steps_of(cfg))} split step(s), the last {parent.name} with {len(parent.groups)} groups"

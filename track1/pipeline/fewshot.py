"""The few-shot stage: after the one-shot supernet, sub-supernets, one per group of a split of the space,
each starting from its parent's weights and trained on its group's codes (the 4th and 2nd places).

Each split step is a training run of its own in output/<run>/fewshot/<split>/ (checkpoints, resume,
VisualDL) of a few-shot supernet (track1.network.fewshot); fewshot.step says how it trains its
groups: in turn (rotate), by the sandwich over the whole space (global_sandwich), or one after
another, each group a run of its own, fewshot/<split>_g<group>/ (sequence). A width split grows in
steps (2, 3, ... groups), each group inheriting from the group of the step before that held its
codes; the first inherits from the one-shot run. All are one training run's weights: the submitted
accuracies still come from the supernet.
"""
from __future__ import annotations

import copy
from pathlib import Path

import paddle

from track1.errors import UserError
from track1.network.build import build_fewshot
from track1.network.pretrained import init_path
from track1.pipeline import checkpoint
from track1.pipeline.caps import capped_steps, group_epochs, part_name
from track1.pipeline.config import run_dir, split_train
from track1.pipeline.train import train
from track1.space.split import Split, parents, split_steps


def steps_of(cfg: dict) -> list[Split]:
    f = cfg["fewshot"]
    return split_steps(f["split"], f["stage"], f["groups"])


def groups_trained(cfg: dict, split: Split) -> list[int | None]:
    """The runs of a split step: [None] (one run of every group), or each group a sequence step trains."""
    if cfg["fewshot"]["step"] != "sequence":
        return [None]
    return [g for g, e in enumerate(group_epochs(cfg, split)) if e > 0]


def split_config(cfg: dict, split: Split, group: int | None = None) -> dict:
    """The config of one split step's run (of one group of it, sequence): train.* with fewshot.train
    over it, fewshot.epochs (the group's) at fewshot.lr (its lrs entry; cosine, no warm-up), its
    share of train.max_steps, no initial file, no progressive shrinking, no rank check. A frozen
    teacher is the one-shot run's full network unless named. `train.split` records how the step
    trains its groups (in the fingerprint: a resume with another way is refused)."""
    out = copy.deepcopy(cfg)
    f, t = cfg["fewshot"], split_train(cfg)
    out["run"]["output_dir"], out["run"]["name"] = str(run_dir(cfg) / "fewshot"), part_name(split, group)
    k = steps_of(cfg).index(split)
    t.update({"epochs": f["epochs"] if group is None else group_epochs(cfg, split)[group],
              "lr": f["lrs"][k] if f["lrs"] else f["lr"], "warmup_epochs": 0.0, "init_from": "",
              "max_steps": capped_steps(cfg, part_name(split, group)),
              "split": {"step": f["step"], "group_lr": f["group_lr"], "group": group}})
    if f["group_lr"] == "difflr":  # their difflr decays every parameter; at 7 groups their plain optimizer
        t["no_decay_bn_bias"] = len(split.groups) == 7
    if t["distill"]["enabled"] and not t["distill"]["teacher"]:
        t["distill"]["teacher"] = str(init_path(cfg, run_dir(cfg)))
    out["train"] = t
    out["pretrain"]["enabled"] = False
    out["fewshot"]["enabled"] = False  # the step itself is a plain run of a few-shot supernet
    out["monitor"]["every_epochs"] = 0
    return out


def inherit(state: dict, parent: Split | None, child: Split) -> dict:
    """The child's initial weights: each group's sub-supernet a copy of the parent group that held
    its codes (of the one-shot supernet, without a parent; itself, parent == child)."""
    out = {}
    for g, p in enumerate(parents(child, parent)):
        prefix = "" if parent is None else f"parts.{p}."
        names = [k[len(prefix):] for k in state if k.startswith(prefix)] if prefix else list(state)
        out.update({f"parts.{g}.{name}": state[prefix + name] for name in names})
    return out


def step_checkpoint(cfg: dict, name: str = "") -> tuple[Path, Split, dict]:
    """A split step's latest checkpoint (its last run's), its split and config: what `score` uses;
    name '' = score.fewshot_step, else the last step."""
    steps = steps_of(cfg)
    name = name or cfg["score"]["fewshot_step"]
    split = next((s for s in steps if s.name == name), steps[-1])
    sc = split_config(cfg, split, groups_trained(cfg, split)[-1])
    found = checkpoint.latest(run_dir(sc))
    if found is None:
        raise checkpoint.CheckpointError(f"{run_dir(sc)}: no few-shot checkpoint; run `fewshot` first")
    return found, split, sc


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
        state = inherit(state, parent, split)
        for group in groups_trained(cfg, split):
            sc = split_config(cfg, split, group)
            train(sc, resume=True, progress=progress, split=split, initial_state=state)
            if paddle.distributed.get_world_size() > 1:
                paddle.distributed.barrier()  # every rank starts the next run from what rank 0 saved
            final = checkpoint.latest(run_dir(sc))
            _, model = build_fewshot(sc, split)
            checkpoint.load_weights(final, model, sc)
            state = model.state_dict()
        parent = split
    return final, f"{len(steps_of(cfg))} split step(s), the last {parent.name} with {len(parent.groups)} groups"

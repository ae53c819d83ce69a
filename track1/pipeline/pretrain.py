"""The pretrain stage: the full network trained alone on the configured data and written as
`resnet48.pdparams` in the organizers' names, the file the competition gave every team, for a run
that does not have it.

It is a training run of its own (output/<run>/pretrained/: checkpoints, resume, VisualDL) whose only
subnet is the largest (train.sampler=largest) with the `pretrain:` section's recipe; its final
weights are the full network. `train` then starts from that file (track1.network.pretrained.init_path).
"""
from __future__ import annotations

import copy
from pathlib import Path

from track1.network.build import build_supernet
from track1.network.pretrained import pretrained_file, write_organizer_file
from track1.pipeline import checkpoint
from track1.pipeline.config import run_dir
from track1.pipeline.train import train

# The pretrain section's keys that replace the train section's in the pretrain run.
RECIPE_KEYS = ("epochs", "max_steps", "optimizer", "lr", "min_lr", "momentum", "nesterov", "weight_decay",
               "no_decay_bn_bias", "warmup_epochs", "label_smoothing", "grad_clip")


def pretrain_config(cfg: dict) -> dict:
    """The config of the pretrain run: the largest subnet alone, on labels, with the pretrain recipe,
    in <run>/pretrained/; no method, no initialisation, no rank check."""
    out = copy.deepcopy(cfg)
    out["run"]["output_dir"], out["run"]["name"] = str(run_dir(cfg)), "pretrained"
    t = out["train"]
    t.update({k: cfg["pretrain"][k] for k in RECIPE_KEYS})
    t.update({"sampler": "largest", "num_random": 0, "init_from": "", "init_reorder": False, "bn_stats": "batch",
              "lr_schedule": "cosine"})  # the pretrain section's schedule; statistics to freeze come from here
    for method in ("ranking", "cream", "distill"):
        t[method]["enabled"] = False
    out["pretrain"]["enabled"] = False  # the pretrain run itself starts from scratch
    out["monitor"]["every_epochs"] = 0
    return out


def pretrain(cfg: dict, resume: bool = True, progress: bool = True) -> tuple[Path | None, str]:
    """Run (or resume) the stage; (the file written, what was done). Nothing to do when the run
    starts from a given file (train.init_from) or from scratch (pretrain.enabled false)."""
    if cfg["train"]["init_from"]:
        return None, f"skipped: train.init_from is {cfg['train']['init_from']}"
    if not cfg["pretrain"]["enabled"]:
        return None, "skipped: pretrain.enabled is false (train starts from scratch)"
    pc = pretrain_config(cfg)
    final = train(pc, resume=resume, progress=progress)
    if final is None:  # a rank other than 0 of a distributed run
        return None, "trained"
    _, model = build_supernet(pc)
    checkpoint.load_weights(final, model, pc)
    return write_organizer_file(model, pretrained_file(run_dir(cfg))), f"trained the full network: {final}"

"""Training checkpoints: atomic save, verified load, and the `latest` pointer of a run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import paddle
import yaml

from track1.errors import UserError
from track1.files import write_json
from track1.pipeline.config import config_hash, differences, dump, training_keys


# A checkpoint is a directory <run>/checkpoints/<tag>/ holding model.pdparams (the supernet
# weights, loadable on their own), train.pdopt (optimizer, LR scheduler, training extras),
# meta.json and config.yaml (the resolved config). It is written under a temporary name and renamed, and only then does `latest.json`
# point at it, so a crash at any moment leaves the previous checkpoint intact and in use.


# 2: the supernet of the official tied sub-space (a projection only on the first block of stages
# 2-4); format 1 (no field) held one in every block and trained on untied subnets.
FORMAT = 2


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: missing, corrupted, or from another config."""


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(run_dir: Path, tag: str, model: paddle.nn.Layer, state: dict, meta: dict, cfg: dict) -> Path:
    """The checkpoint `tag` of a run: weights, training state, meta (with the config's hash) and the
    resolved config it was trained with (config.yaml)."""
    root = checkpoint_root(run_dir)
    final = root / tag
    tmp = root / f".{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paddle.save(model.state_dict(), str(tmp / "model.pdparams"))
    paddle.save(state, str(tmp / "train.pdopt"))
    (tmp / "config.yaml").write_text(dump(cfg), encoding="utf-8")
    meta = {"format": FORMAT, "config_hash": config_hash(cfg), **meta}
    write_json(tmp / "meta.json", meta, indent=1)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json(root / "latest.json", {"tag": tag, **meta}, indent=1)
    return final


def latest(run_dir: Path) -> Path | None:
    pointer = checkpoint_root(run_dir) / "latest.json"
    if not pointer.exists():
        return None
    try:
        tag = json.loads(pointer.read_text())["tag"]
    except (json.JSONDecodeError, KeyError):
        raise CheckpointError(f"{pointer}: corrupted checkpoint pointer") from None
    return checkpoint_root(run_dir) / tag


def without_pointer(run_dir: Path) -> str:
    """Why a run has no latest checkpoint: '' when it has none at all, else a line naming the
    missing pointer, the checkpoints it holds and how to use one (a pointer lost, or a folder
    copied without it)."""
    root = checkpoint_root(run_dir)
    found = sorted((d for d in root.glob("*/model.pdparams") if not d.parent.name.startswith(".")),
                   key=lambda f: f.stat().st_mtime) if root.is_dir() else []
    if not found:
        return ""
    newest, names = found[-1].parent, ", ".join(f.parent.name for f in found)
    return (f"{root / 'latest.json'} is missing (it names the latest checkpoint), but {root} holds "
            f"{names}: pass --checkpoint {newest}, or write {{\"tag\": \"{newest.name}\"}} into it")


def read_meta(path: Path) -> dict:
    meta_file = Path(path) / "meta.json"
    try:
        return json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_file}: checkpoint metadata missing") from None
    except json.JSONDecodeError:
        raise CheckpointError(f"{meta_file}: corrupted checkpoint metadata") from None


def _load(file: Path) -> dict:
    if not file.exists():
        raise CheckpointError(f"{file}: checkpoint file missing")
    try:
        data = paddle.load(str(file))
    except Exception as e:  # paddle raises several types for a truncated or garbled file
        raise CheckpointError(f"{file}: corrupted checkpoint ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: corrupted checkpoint (not a state dict)")
    return data


def load_weights(path: Path, model: paddle.nn.Layer, cfg: dict | None = None) -> dict:
    """Load model.pdparams into model; returns the meta. With cfg, a checkpoint trained with another
    config (what changes the weights: config.training_keys) is refused, naming the keys that differ."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("format", 1) != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format', 1)}, this version reads {FORMAT} (the "
            f"supernet of the official tied sub-space); train it again")
    if cfg is not None and meta.get("config_hash") != config_hash(cfg):
        raise CheckpointError(f"{path}: written by another config ({_config_change(path, meta, cfg)}); "
                              f"use the config it was trained with, or another run.name")
    weights = _load(path / "model.pdparams")
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    bad = [k for k in own if k in weights and list(weights[k].shape) != list(own[k].shape)]
    if missing or extra or bad:
        raise CheckpointError(f"{path / 'model.pdparams'}: does not fit this supernet "
                              f"({len(missing)} tensors missing, {len(extra)} unknown, "
                              f"{len(bad)} of another shape)")
    model.set_state_dict(weights)
    return meta


def _config_change(path: Path, meta: dict, cfg: dict) -> str:
    """What differs between the checkpoint's config.yaml and cfg, as 'key: saved -> current'."""
    saved = path / "config.yaml"
    if not saved.exists():  # written before checkpoints kept their config
        return f"hash {meta.get('config_hash')}, this config {config_hash(cfg)}"
    changes = differences(training_keys(yaml.safe_load(saved.read_text(encoding="utf-8"))), training_keys(cfg))
    return "; ".join(changes) if changes else f"hash {meta.get('config_hash')}, this config {config_hash(cfg)}"


def load_state(path: Path) -> dict:
    return _load(Path(path) / "train.pdopt")


def prune(run_dir: Path, keep: set[str]) -> None:
    """Delete step checkpoints not in keep (epoch checkpoints stay)."""
    root = checkpoint_root(run_dir)
    if not root.exists():
        return
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step_") and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)

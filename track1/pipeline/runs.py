"""A run's inputs and outputs on disk: its architecture list (or demo list), its checkpoint, its score logs
(named by the settings that change a score, sharded across processes), and the scoring and
submission that fill and read them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from track1.data import calibration_batches, validation_batches
from track1.errors import ConfigError
from track1.files import digest, write_json
from track1.network.build import build_fewshot, build_supernet
from track1.pipeline import checkpoint
from track1.pipeline.config import run_dir, section_keys
from track1.pipeline.fewshot import groups_trained, split_config, step_checkpoint, steps_of
from track1.ranking.scoring import score_list, shard_keys
from track1.ranking.submission import (SubmissionError, break_ties, demo_arch_list, load_arch_list,
                                       merge_shards, write_arch_list, write_submission)


SCORE_KEYS = ("mode", "calib_images", "calib_batch", "val_images", "eval_batch")


def arch_list(cfg: dict, given: str | None, official: bool = False) -> tuple[dict[str, str], str]:
    """(key -> code, list name). Without a list, a demo list sampled like the official one.
    official=True refuses codes outside the official sub-space (for what uses the supernet)."""
    path = given or cfg["score"]["arch_list"]
    if path:
        return load_arch_list(path, official), Path(path).stem
    demo = run_dir(cfg) / "demo_arch_list.json"
    n, seed = cfg["score"]["demo_size"], cfg["score"]["demo_seed"]
    if not demo.exists():
        write_arch_list(demo, demo_arch_list(n, seed))
    print(f"no architecture list given (score.arch_list / ARCH_LIST): using a demo list of {n} codes "
          f"sampled like the official one, {demo}", file=sys.stderr)
    return load_arch_list(demo, official), demo.stem


def find_checkpoint(cfg: dict, given: str | None) -> Path:
    """--checkpoint, else score.checkpoint, else the run's latest (with fewshot.enabled, that of the
    split step score.fewshot_step names, else of the last)."""
    path = given or cfg["score"]["checkpoint"]
    if path:
        return Path(path)
    if cfg["fewshot"]["enabled"]:
        return step_checkpoint(cfg)[0]
    last = checkpoint.latest(run_dir(cfg))
    if last is None:
        raise checkpoint.CheckpointError(checkpoint.without_pointer(run_dir(cfg))
                                         or f"{run_dir(cfg)}: no checkpoint; run `train` first")
    return last


def score_settings(cfg: dict, ckpt: Path) -> dict:
    """Everything that changes a score: the checkpoint, how codes are scored, and the images."""
    meta = checkpoint.read_meta(ckpt)
    settings = {"checkpoint": str(Path(ckpt).resolve()), "config_hash": meta.get("config_hash"),
                "step": meta.get("step"), "space": cfg["space"], "data": section_keys(cfg, "data"),
                "score": {k: cfg["score"][k] for k in SCORE_KEYS}}
    if meta.get("split"):  # a few-shot supernet: each code on its group's weights
        settings["split"] = meta["split"]
    return settings


def scores_path(cfg: dict, list_name: str, ckpt: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """<run>/scores/<list>@[<split>.]<checkpoint>.<settings key>[.shardIofN].jsonl: other scoring
    settings (e.g. -o score.val_images=2000) write a new log instead of resuming the old one; a
    few-shot checkpoint's name starts with its split step's."""
    suffix = f".shard{shard[0]}of{shard[1]}" if shard[1] > 1 else ""
    settings = score_settings(cfg, ckpt)
    name = f"{settings['split']}.{ckpt.name}" if settings.get("split") else ckpt.name
    return run_dir(cfg) / "scores" / f"{list_name}@{name}.{digest(settings, 8)}{suffix}.jsonl"


def parse_shard(given: str | None) -> tuple[int, int]:
    """(index, count) from --shard I/N, else from the launcher's rank and world size."""
    if given:
        try:
            i, n = (int(v) for v in given.split("/"))
        except ValueError:
            raise ConfigError(f"--shard {given!r}: expected I/N, e.g. 0/4") from None
        if not 0 <= i < n:
            raise ConfigError(f"--shard {given!r}: I must be in 0..N-1")
        return i, n
    return int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1))


def score(cfg: dict, given_list: str | None, given_checkpoint: str | None,
          shard: tuple[int, int]) -> tuple[Path, Path, dict[str, dict]]:
    """Score this shard of the list with the checkpoint: (checkpoint, score log, key -> record)."""
    codes, name = arch_list(cfg, given_list, official=True)
    ckpt = find_checkpoint(cfg, given_checkpoint)
    space, model = load_supernet(cfg, ckpt)
    codes = {k: codes[k] for k in shard_keys(list(codes), *shard)}
    out = scores_path(cfg, name, ckpt, shard)
    if not out.with_suffix(".settings.json").exists():  # beside the log, to tell logs apart
        write_json(out.with_suffix(".settings.json"), score_settings(cfg, ckpt), indent=1)
    records = score_list(model, space, codes, calibration_batches(cfg), validation_batches(cfg), out,
                         cfg["score"]["mode"], cfg["score"]["chunk_images"])
    return ckpt, out, records


def load_supernet(cfg: dict, ckpt: Path):
    """(space, the checkpoint's supernet): a few-shot one (of the split its meta names) or not; a
    checkpoint of another split or config is refused in one line."""
    split = checkpoint.read_meta(ckpt).get("split")
    if not cfg["fewshot"]["enabled"]:
        if split:
            raise checkpoint.CheckpointError(f"{ckpt}: a few-shot checkpoint (split {split}), but fewshot.enabled "
                                             f"is false in this config")
        space, model = build_supernet(cfg)
        checkpoint.load_weights(ckpt, model, cfg)
        return space, model
    steps = steps_of(cfg)
    wanted = next((s for s in steps if s.name == split), None)
    if wanted is None:
        raise checkpoint.CheckpointError(f"{ckpt}: a checkpoint of split {split or 'none (one-shot)'}, this "
                                         f"config's split steps are {', '.join(s.name for s in steps)}")
    sc = split_config(cfg, wanted, groups_trained(cfg, wanted)[-1])
    space, model = build_fewshot(sc, wanted)
    checkpoint.load_weights(ckpt, model, sc)
    return space, model


def submit(cfg: dict, given_list: str | None, given_checkpoint: str | None, out: str | None) -> tuple[Path, int]:
    """Write the submission of every shard's scores: (its path, its number of architectures)."""
    codes, name = arch_list(cfg, given_list, official=True)
    ckpt = find_checkpoint(cfg, given_checkpoint)
    unsharded = scores_path(cfg, name, ckpt)
    files = [unsharded] + sorted(unsharded.parent.glob(f"{unsharded.stem}.shard*of*.jsonl"))
    files = [f for f in files if f.exists()]
    if not files:
        raise SubmissionError(f"{unsharded}: no scores for this list, checkpoint and "
                              f"score settings; run `score` first")
    records = merge_shards(files)
    accs = {k: r["acc"] for k, r in records.items()}
    if cfg["submit"]["tie_break"] == "loss":
        accs = break_ties(accs, {k: r.get("loss") for k, r in records.items()})
    path = Path(out) if out else Path(cfg["submit"]["dir"]) / f"{cfg['run']['name']}.json"
    write_submission(path, codes, accs)
    return path, len(codes)

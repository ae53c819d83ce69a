"""Scoring an architecture list with the supernet, per code or prefix-shared, resumable; the list's spread."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import numpy as np
import paddle
from tqdm import tqdm

from track1.files import append_jsonl, resume_log
from track1.network.supernet import SuperNet
from track1.ranking.evaluate import score_widths
from track1.ranking.halves import Tallies, accuracy_se, describe_agreement, self_agreement
from track1.ranking.submission import check_official
from track1.ranking.tree import score_tree, tree_sums
from track1.space import SearchSpace, Widths


def score_shared(model: SuperNet, widths_list: list[Widths], calib: Iterable, val: Iterable,
                 chunk_images: int, world: int = 1) -> dict[Widths, tuple[float, float]]:
    """(top-1, mean CE) of every distinct subnet, as score_widths gives them, computed prefix-shared
    (tree.score_tree, which leaves the model's BN statistics alone). In a distributed run `val` is
    this rank's share of the validation images (EvalSet's shard; possibly none) and every rank
    calibrates on all of calib; the counts are summed over ranks."""
    widths_list = list(dict.fromkeys(widths_list))
    found = {}
    if len(val):
        found = {w: (c, s, n) for part, ws in model.parts_of(widths_list)
                 for w, c, s, n in tree_sums(part, ws, calib, val, chunk_images)}
    # correct images (exact integers), loss sum, images per subnet
    sums = np.array([found.get(w, (0, 0.0, 0)) for w in widths_list], dtype="float64")
    if world > 1:
        t = paddle.to_tensor(sums)
        paddle.distributed.all_reduce(t)
        sums = t.numpy()
    return {w: (s[0] / s[2], s[1] / s[2]) for w, s in zip(widths_list, sums)}


def score_list(model: SuperNet, space: SearchSpace, codes: dict[str, str], calib: Iterable, val: Iterable,
               results_path: Path, mode: str, chunk_images: int, progress: bool = True) -> dict[str, dict]:
    """Score every key of an architecture list, appending results to results_path as they come.

    mode "tree" shares the work of common leading layers between subnets (track1.ranking.tree,
    chunk_images images at a time); "per_code" calibrates and evaluates each network on its own
    (the reference it must equal), a batch at a time.
    A killed run resumes where it stopped: keys already in the file are not scored again, and
    codes that build the same network (equal widths) are evaluated once. "seconds" is the time a
    network took, on the first of its keys (0 on the others). Each record also carries the
    accuracy's standard error "acc_se" over its "images" and the per-half sums of the split-halves
    (track1.ranking.halves) that the self-agreement is computed from.
    """
    check_official(results_path, codes)  # before anything is written
    done = resume_log(results_path, codes)
    known = {space.widths(r["code"]): _result_fields(r) for r in done.values()}
    todo: dict[Widths, list[str]] = {}
    for key, code in codes.items():
        if key not in done:
            todo.setdefault(space.widths(code), []).append(key)
    pending = []  # keys whose network an earlier run already scored under another key
    for w in [w for w in todo if w in known]:
        pending += [_record(k, codes[k], known[w], 0.0) for k in todo.pop(w)]
    parts = model.parts_of(list(todo))  # one set of weights each (a few-shot supernet's groups)
    tallies = Tallies()
    if mode == "tree":
        results = (r for part, ws in parts for r in score_tree(part, ws, calib, val, chunk_images,
                                                               tallies=tallies))
    elif mode == "per_code":
        results = ((w, *score_widths(part, w, calib, val, tallies[w])) for part, ws in parts for w in ws)
    else:
        raise ValueError(f"unknown scoring mode {mode!r}: expected tree or per_code")
    bar = tqdm(total=len(codes), initial=len(codes) - sum(map(len, todo.values())), desc="score",
               unit="arch", disable=not progress, mininterval=1.0)
    last_flush = tick = time.monotonic()
    for widths, acc, loss in results:
        now = time.monotonic()
        keys = todo[widths]
        tally = tallies.pop(widths)
        fields = {"acc": acc, "loss": loss, "acc_se": accuracy_se(acc, tally.images), "images": tally.images,
                  **tally.fields()}
        pending += [_record(k, codes[k], fields, now - tick if i == 0 else 0.0) for i, k in enumerate(keys)]
        tick = now
        bar.update(len(keys))
        # Flush about once a second: nothing older than that is lost when the process is killed.
        if now - last_flush > 1.0:
            append_jsonl(results_path, pending)
            done.update((r["key"], r) for r in pending)
            pending, last_flush = [], now
    append_jsonl(results_path, pending)
    done.update((r["key"], r) for r in pending)
    bar.close()
    return {k: done[k] for k in codes}


def shard_keys(keys: list[str], index: int, count: int) -> list[str]:
    """Contiguous parts, so that each shard keeps what prefix sharing it can."""
    n = len(keys)
    return keys[index * n // count:(index + 1) * n // count]


# A record's result fields: what a network's scoring gives (the rest names the key and its time).
RESULT_FIELDS = ("acc", "loss", "acc_se", "images", "half_correct", "half_loss")


def _result_fields(record: dict) -> dict:
    return {f: record[f] for f in RESULT_FIELDS if f in record}  # older logs hold acc and loss only


def _record(key: str, code: str, fields: dict, seconds: float) -> dict:
    return {"key": key, "code": code, **fields, "seconds": round(seconds, 4)}


def summarize(records: dict[str, dict], tie_break: str = "loss") -> str:
    """The spread of a list's top-1: what a user checks first (a collapsed supernet scores every code
    alike; a broken one scores them at chance); the accuracies' typical standard error; and the
    ranking's self-agreement (track1.ranking.halves), the ceiling its scoring noise sets."""
    accs = np.array([r["acc"] for r in records.values()])
    q10, q50, q90 = np.percentile(accs, [10, 50, 90])
    ses = [r["acc_se"] for r in records.values() if "acc_se" in r]
    se = f", standard error of one code's top-1 {np.median(ses):.4f} (median)" if ses else ""
    distinct = len(set(accs.tolist()))
    return (f"top-1 mean {accs.mean():.4f}, std {accs.std():.4f}, min {accs.min():.4f}, "
            f"10% {q10:.4f}, median {q50:.4f}, 90% {q90:.4f}, max {accs.max():.4f} "
            f"over {len(accs)} codes ({distinct} distinct values){se}\n"
            + describe_agreement(self_agreement(records.values(), tie_break)))

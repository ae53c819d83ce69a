"""Scoring architectures with the supernet: BN re-calibration, fixed-set evaluation, resumable runs."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from track1.files import append_jsonl, resume_log
from track1.space import SearchSpace, Widths
from track1.ranking.submission import check_official
from track1.network.supernet import SuperNet


@paddle.no_grad()
def calibrate_bn(model: SuperNet, widths: Widths, batches: Iterable[paddle.Tensor]) -> None:
    """Re-estimate the subnet's BN statistics as the exact average over the calibration batches.

    Batch k is blended in with momentum (k-1)/k, so batch 1 overwrites whatever the running
    statistics held and after K batches they are the plain mean of the K batch statistics.
    """
    bns = model.bn_layers()
    saved = [bn.momentum for bn in bns]
    model.train()
    try:
        for k, x in enumerate(batches, start=1):
            for bn in bns:
                bn.momentum = (k - 1) / k
            model(x, widths)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
        model.eval()


@paddle.no_grad()
def evaluate(model: SuperNet, widths: Widths,
             batches: Iterable[tuple[paddle.Tensor, paddle.Tensor]]) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of the subnet over the batches, BN in eval mode."""
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches:
        logits = model(x, widths)
        correct += int((logits.argmax(axis=1) == y).astype("int64").sum().item())
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        n += int(y.shape[0])
    return correct / n, loss_sum / n


@contextlib.contextmanager
def kept_bn_statistics(model: SuperNet) -> Iterator[None]:
    """Every BN running mean and variance is put back as it was on leaving, so that scoring
    between training epochs never leaves recalibrated statistics in the supernet (or a checkpoint)."""
    buffers = [b for bn in model.bn_layers() for b in (bn._mean, bn._variance)]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        for b, value in zip(buffers, saved):
            b.set_value(value)


class Share:
    """This rank's share of an iterable of batches: every world-th batch, from the rank-th.
    Iterable again and again, and lazy, so batches converted on the fly stay that way."""

    def __init__(self, batches: Iterable, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator:
        return (b for i, b in enumerate(self.batches) if i % self.world == self.rank)


def score_shared(model: SuperNet, widths_list: list[Widths], calib: Iterable, val: Iterable,
                 rank: int = 0, world: int = 1) -> dict[Widths, tuple[float, float]]:
    """(top-1, mean CE) of every distinct subnet, as score_widths gives them, computed prefix-shared
    (prefix.score_tree, which leaves the model's BN statistics alone): each rank calibrates on all
    of calib and evaluates its share of val; the counts are summed over ranks."""
    from track1.ranking.tree import score_tree
    widths_list = list(dict.fromkeys(widths_list))
    shard = list(Share(val, rank, world))
    n = sum(int(y.shape[0]) for _, y in shard)
    found = {w: (acc, loss) for w, acc, loss in score_tree(model, widths_list, list(calib), shard)} \
        if shard else {}
    # correct images (exact integers), loss sum, images per subnet
    sums = np.array([[round(found[w][0] * n), found[w][1] * n, n] if shard else [0.0, 0.0, 0.0]
                     for w in widths_list], dtype="float64")
    if world > 1:
        t = paddle.to_tensor(sums)
        paddle.distributed.all_reduce(t)
        sums = t.numpy()
    return {w: (s[0] / s[2], s[1] / s[2]) for w, s in zip(widths_list, sums)}


def score_widths(model: SuperNet, widths: Widths, calib: list, val: list) -> tuple[float, float]:
    calibrate_bn(model, widths, calib)
    return evaluate(model, widths, val)


def score_list(model: SuperNet, space: SearchSpace, codes: dict[str, str], calib: list, val: list,
               results_path: Path, progress: bool = True, mode: str = "tree") -> dict[str, dict]:
    """Score every key of an architecture list, appending results to results_path as they come.

    mode "tree" shares the work of common leading layers between subnets (track1.ranking.tree);
    "per_code" calibrates and evaluates each network on its own (the reference it must equal).
    A killed run resumes where it stopped: keys already in the file are not scored again, and
    codes that build the same network (equal widths) are evaluated once. "seconds" is the time a
    network took, on the first of its keys (0 on the others).
    """
    check_official(results_path, codes)  # before anything is written
    done = resume_log(results_path, codes)
    known = {space.widths(r["code"]): (r["acc"], r["loss"]) for r in done.values()}
    todo: dict[Widths, list[str]] = {}
    for key, code in codes.items():
        if key not in done:
            todo.setdefault(space.widths(code), []).append(key)
    pending = []  # keys whose network an earlier run already scored under another key
    for w in [w for w in todo if w in known]:
        pending += [_record(k, codes[k], *known[w], 0.0) for k in todo.pop(w)]
    if mode == "tree":
        from track1.ranking.tree import score_tree
        results = score_tree(model, list(todo), calib, val)
    elif mode == "per_code":
        results = ((w, *score_widths(model, w, calib, val)) for w in todo)
    else:
        raise ValueError(f"unknown scoring mode {mode!r}: expected tree or per_code")
    bar = tqdm(total=len(codes), initial=len(codes) - sum(map(len, todo.values())), desc="score",
               unit="arch", disable=not progress, mininterval=1.0)
    last_flush = tick = time.monotonic()
    for widths, acc, loss in results:
        now = time.monotonic()
        keys = todo[widths]
        pending += [_record(k, codes[k], acc, loss, now - tick if i == 0 else 0.0) for i, k in enumerate(keys)]
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


def _record(key: str, code: str, acc: float, loss: float, seconds: float) -> dict:
    return {"key": key, "code": code, "acc": acc, "loss": loss, "seconds": round(seconds, 4)}


def summarize(records: dict[str, dict]) -> str:
    """The spread of a list's top-1: what a user checks first (a collapsed supernet scores every code
    alike; a broken one scores them at chance)."""
    accs = np.array([r["acc"] for r in records.values()])
    q10, q50, q90 = np.percentile(accs, [10, 50, 90])
    return (f"top-1 mean {accs.mean():.4f}, std {accs.std():.4f}, min {accs.min():.4f}, "
            f"10% {q10:.4f}, median {q50:.4f}, 90% {q90:.4f}, max {accs.max():.4f} "
            f"over {len(accs)} codes")

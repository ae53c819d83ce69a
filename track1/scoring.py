"""Scoring architectures with the supernet: BN re-calibration, fixed-set evaluation, resumable runs."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from .files import append_jsonl, read_jsonl, repair_jsonl
from .space import SearchSpace, Widths
from .supernet import SuperNet


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


def score_widths(model: SuperNet, widths: Widths, calib: list, val: list) -> tuple[float, float]:
    calibrate_bn(model, widths, calib)
    return evaluate(model, widths, val)


def score_list(model: SuperNet, space: SearchSpace, codes: dict[str, str], calib: list, val: list,
               results_path: Path, progress: bool = True) -> dict[str, dict]:
    """Score every key of an architecture list, appending results to results_path as they come.

    A killed run resumes where it stopped: keys already in the file are not scored again, and
    codes that build the same network (equal widths) are evaluated once.
    """
    repair_jsonl(results_path)
    done = {r["key"]: r for r in read_jsonl(results_path)}
    by_widths: dict[Widths, dict] = {space.widths(r["code"]): r for r in done.values()}
    todo = [k for k in codes if k not in done]
    pending: list[dict] = []
    last_flush = time.monotonic()
    bar = tqdm(todo, desc="score", unit="arch", disable=not progress, mininterval=1.0,
               initial=len(done), total=len(codes))
    for key in bar:
        code = codes[key]
        widths = space.widths(code)
        start = time.perf_counter()
        if widths in by_widths:
            acc, loss = by_widths[widths]["acc"], by_widths[widths]["loss"]
        else:
            acc, loss = score_widths(model, widths, calib, val)
        record = {"key": key, "code": code, "acc": acc, "loss": loss,
                  "seconds": round(time.perf_counter() - start, 4)}
        by_widths[widths] = record
        done[key] = record
        pending.append(record)
        # Flush about once a second: nothing older than that is lost when the process is killed.
        if time.monotonic() - last_flush > 1.0:
            append_jsonl(results_path, pending)
            pending, last_flush = [], time.monotonic()
    append_jsonl(results_path, pending)
    return {k: done[k] for k in codes}


def summarize(records: dict[str, dict]) -> dict:
    accs = np.array([r["acc"] for r in records.values()])
    return {"codes": len(accs), "acc_mean": float(accs.mean()), "acc_min": float(accs.min()),
            "acc_max": float(accs.max())}

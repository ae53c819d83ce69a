"""Scoring noise: random split-halves of the validation images, each code's per-half sums kept while it is scored, and from them the list's self-agreement and each accuracy's standard error.

The estimator is described where users read it: README, "How sure is a ranking".
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
from scipy import stats

SPLITS = 16  # split-halves kept per code (16 ints and 16 floats in each score record)
BLOCK = 256  # each block of this many images is halved exactly, so membership needs no image count
SEED = 2022  # fixed: a resumed score must use the same halves


class SplitHalves:
    """Which validation images (by position in the scoring stream) fall in half A of each split."""

    def __init__(self, splits: int = SPLITS, seed: int = SEED):
        self.splits, self.seed = splits, seed
        self._rows = np.zeros((0, splits), np.float64)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, splits) 0/1 membership of images start..stop-1 in half A."""
        while len(self._rows) < stop:
            block = len(self._rows) // BLOCK
            rng = np.random.default_rng([self.seed, block])
            half = np.zeros((BLOCK, self.splits), np.float64)
            for s in range(self.splits):
                half[rng.permutation(BLOCK)[:BLOCK // 2], s] = 1.0
            self._rows = np.concatenate([self._rows, half])
        return self._rows[start:stop]

    def sizes(self, n: int) -> np.ndarray:
        """Images in half A of each split among the first n."""
        return self.rows(0, n).sum(axis=0).astype(np.int64)


class HalfTally:
    """One code's correct images and summed loss in half A of every split, over the images so far."""

    def __init__(self, halves: SplitHalves):
        self.halves = halves
        self.correct = np.zeros(halves.splits, np.int64)
        self.loss = np.zeros(halves.splits, np.float64)
        self.images = 0

    def add(self, correct: np.ndarray, losses: np.ndarray) -> None:
        """The next images of the stream: their 0/1 top-1 outcomes and cross-entropies."""
        rows = self.halves.rows(self.images, self.images + len(correct))
        self.correct += (correct.astype(np.float64) @ rows).round().astype(np.int64)
        self.loss += losses.astype(np.float64) @ rows
        self.images += len(correct)

    def fields(self) -> dict:
        """The score record's fields: half A's sums (half B's are the total's rest)."""
        return {"half_correct": self.correct.tolist(), "half_loss": [round(v, 6) for v in self.loss.tolist()]}


def accuracy_se(acc: float, images: int) -> float:
    """Standard error of a top-1 accuracy over `images` images: the sample standard deviation of
    the per-image 0/1 outcomes over sqrt(images)."""
    if images < 2:
        return float("nan")
    return math.sqrt(acc * (1.0 - acc) / (images - 1))


def _ranks(acc: np.ndarray, loss: np.ndarray | None) -> np.ndarray:
    """Dense ranks of codes by accuracy, ties broken by lower loss when loss is given."""
    if loss is None:
        return stats.rankdata(acc, method="dense")
    order = np.lexsort((-loss, acc))  # accuracy first; within it, the higher loss ranks lower
    a, l = acc[order], loss[order]
    ranks = np.empty(len(acc), np.int64)
    ranks[order] = np.cumsum(np.r_[True, (a[1:] != a[:-1]) | (l[1:] != l[:-1])])
    return ranks


def spearman_brown_kendall(tau_half: float, factor: float = 2.0) -> float:
    """The Kendall tau expected from `factor` times the images, from one at the halves' size:
    tau -> Pearson by Greiner's relation r = sin(pi tau / 2) (exact for Gaussian scores),
    Spearman-Brown r_k = k r / (1 + (k - 1) r), and back."""
    if not math.isfinite(tau_half) or tau_half <= 0:
        return tau_half
    r = math.sin(math.pi * tau_half / 2)
    r_k = factor * r / (1 + (factor - 1) * r)
    return 2 / math.pi * math.asin(min(r_k, 1.0))


def self_agreement(records: Iterable[Mapping], tie_break: str = "loss",
                   halves: SplitHalves | None = None) -> dict:
    """{"half": mean split-half Kendall tau-b, "half_min", "half_max", "full": projected to all
    images (spearman_brown_kendall), "codes", "images", "splits", "missing"} over the distinct
    networks of records (codes with equal results are counted once); "missing" counts records
    without per-half sums (scored before they were kept)."""
    halves = halves or SplitHalves()
    seen, rows, missing = set(), [], 0
    for r in records:
        if "half_correct" not in r:
            missing += 1
            continue
        key = (r["acc"], r["loss"], tuple(r["half_correct"]), tuple(r["half_loss"]))
        if key not in seen:  # equal networks (one record each key) would add perfect pairs
            seen.add(key)
            rows.append((r["acc"], r["loss"], r["images"], r["half_correct"], r["half_loss"]))
    out = {"half": float("nan"), "half_min": float("nan"), "half_max": float("nan"), "full": float("nan"),
           "codes": len(rows), "images": 0, "splits": halves.splits, "missing": missing}
    if len(rows) < 2:
        return out
    images = {row[2] for row in rows}
    if len(images) != 1:
        raise ValueError(f"records scored on different image counts: {sorted(images)}")
    n = images.pop()
    acc = np.array([row[0] for row in rows])
    loss_sum = np.array([row[1] for row in rows]) * n
    correct_a = np.array([row[3] for row in rows], np.float64)
    loss_a = np.array([row[4] for row in rows], np.float64)
    correct_b, loss_b = np.round(acc * n)[:, None] - correct_a, loss_sum[:, None] - loss_a
    size_a = halves.sizes(n).astype(np.float64)
    size_b = n - size_a
    taus = []
    for s in range(halves.splits):
        ranked = []
        for c, l, size in ((correct_a[:, s], loss_a[:, s], size_a[s]), (correct_b[:, s], loss_b[:, s], size_b[s])):
            ranked.append(_ranks(c / size, l / size if tie_break == "loss" else None))
        with np.errstate(all="ignore"):
            taus.append(stats.kendalltau(*ranked, variant="b")[0])
    taus = np.array(taus, np.float64)
    half = float(np.nanmean(taus)) if np.isfinite(taus).any() else float("nan")
    out.update(half=half, half_min=float(np.nanmin(taus)) if np.isfinite(taus).any() else half,
               half_max=float(np.nanmax(taus)) if np.isfinite(taus).any() else half,
               full=spearman_brown_kendall(half), images=n)
    return out


def describe_agreement(a: Mapping) -> str:
    """The summary line of self_agreement."""
    if a["codes"] < 2:
        why = f"; {a['missing']} records predate per-half sums" if a["missing"] else ""
        return f"self-agreement: not available (fewer than 2 distinct networks with per-half sums{why})"
    text = (f"self-agreement (scoring noise ceiling): Kendall {a['half']:.3f} between rankings from two "
            f"random halves of the {a['images']} validation images (mean of {a['splits']} split-halves, "
            f"range {a['half_min']:.3f}..{a['half_max']:.3f}, {a['codes']} distinct networks); "
            f"about {a['full']:.3f} for two independent sets of {a['images']} images (Spearman-Brown)")
    if a["missing"]:
        text += f"; {a['missing']} records predate per-half sums and are left out"
    return text


class Tallies(dict):
    """widths -> HalfTally, made on first use: what a scorer fills when per-half sums are kept
    (the caller pops each one once its code's result is out, so memory stays O(codes in flight))."""

    def __init__(self, halves: SplitHalves | None = None):
        super().__init__()
        self.halves = halves or SplitHalves()

    def __missing__(self, key) -> HalfTally:
        tally = self[key] = HalfTally(self.halves)
        return tally

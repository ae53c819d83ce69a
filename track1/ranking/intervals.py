"""Bootstrap confidence intervals over architectures for the rank metrics, and the paired bootstrap of two predictions' difference.

A resample is held as each code's draw count, so a block of resamples is one numpy array and every
metric a weighted one; the same seed gives two predictions the same resamples (a paired difference).
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import numpy as np
from scipy import stats

from track1.ranking.metrics import match, rank_metrics

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
PAIRWISE_MAX = 400  # up to this many codes Kendall is a quadratic form per resample (vectorised)
BLOCK_CELLS = 2_000_000  # resamples x codes held at once


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of (resamples in the block, n) counts: how often each code is drawn in a resample."""
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, BLOCK_CELLS // max(n, 1)))
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        idx = rng.integers(0, n, (b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _weighted_pearson(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson of each row's resample (w: counts), x and y (b, n) or (n,)."""
    total = w.sum(axis=1)
    mx, my = (w * x).sum(axis=1) / total, (w * y).sum(axis=1) / total
    dx, dy = x - mx[:, None], y - my[:, None]
    cov, vx, vy = (w * dx * dy).sum(axis=1), (w * dx * dx).sum(axis=1), (w * dy * dy).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vx * vy)
    r[(vx <= 0) | (vy <= 0)] = np.nan  # a constant side, as scipy gives nan
    return np.clip(r, -1.0, 1.0)


class _Order:
    """One side's sort order and tie groups, reused by every resample."""

    def __init__(self, v: np.ndarray):
        self.order = np.argsort(v, kind="stable")
        s = v[self.order]
        new = np.r_[True, s[1:] != s[:-1]]
        self.starts = np.flatnonzero(new)
        self.group = np.cumsum(new) - 1  # tie group of each sorted position

    def group_counts(self, w: np.ndarray) -> np.ndarray:
        """(rows, tie groups): each row's draws in each tie group."""
        return np.add.reduceat(w[:, self.order], self.starts, axis=1)

    def mid_ranks(self, w: np.ndarray) -> np.ndarray:
        """Each code's average rank (1-based) within each row's resample."""
        g = self.group_counts(w)
        mid = (np.cumsum(g, axis=1) - g) + (g + 1) / 2
        out = np.empty_like(w)
        out[:, self.order] = mid[:, self.group]
        return out


def _top_counts(w: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """How many draws of each code fall in each row's top k (order: best first), as (rows, codes)
    over the codes order[:L]: the shortest doubling of k whose draws reach k in every row."""
    length = min(max(k, 1), len(order))
    while length < len(order) and w[:, order[:length]].sum(axis=1).min() < k:
        length = min(2 * length, len(order))
    c = w[:, order[:length]]
    before = np.cumsum(c, axis=1) - c
    return np.clip(k - before, 0, c)


def _kendall_pairwise(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """tau-b of each row's resample as quadratic forms in the counts (small n)."""
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    ex, ey = (sx == 0).astype(np.float64), (sy == 0).astype(np.float64)

    def form(m: np.ndarray) -> np.ndarray:
        return ((w @ m) * w).sum(axis=1)

    n = w.sum(axis=1)
    total = n * (n - 1) / 2
    con_minus_dis = form(sx * sy) / 2
    tied_x, tied_y = (form(ex) - n) / 2, (form(ey) - n) / 2  # ordered pairs with themselves removed
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = con_minus_dis / np.sqrt((total - tied_x) * (total - tied_y))
    tau[(total - tied_x <= 0) | (total - tied_y <= 0)] = np.nan
    return np.clip(tau, -1.0, 1.0)


try:  # scipy's O(n log n) count of discordant pairs (what stats.kendalltau calls), 4x faster than
    # calling kendalltau, which re-sorts both sides of every resample
    from scipy.stats._stats import _kendall_dis
except ImportError:  # pragma: no cover - a scipy that moved it: kendalltau itself, slower
    _kendall_dis = None


class _KendallLarge:
    """tau-b of each row's resample for large n: the resample is laid out in (x, y) order by
    repeating the codes of a fixed order (no sort per resample), its discordant pairs counted by
    scipy, its ties from the counts of the tie groups."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.xd = stats.rankdata(x, method="dense").astype(np.intp)  # 1-based, as _kendall_dis needs
        self.yd = stats.rankdata(y, method="dense").astype(np.intp)
        self.lex = np.lexsort((self.yd, self.xd))
        self.ox, self.oy = _Order(self.xd), _Order(self.yd)
        self.oxy = _Order(self.xd.astype(np.int64) * (int(self.yd.max()) + 1) + self.yd)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        n = w.sum(axis=1)
        total = n * (n - 1) / 2

        def tied(order: _Order) -> np.ndarray:
            g = order.group_counts(w)
            return (g * (g - 1) / 2).sum(axis=1)

        tied_x, tied_y, tied_xy = tied(self.ox), tied(self.oy), tied(self.oxy)
        if _kendall_dis is None:
            return np.array([stats.kendalltau(*self._drawn(row), variant="b")[0] for row in w])
        dis = np.empty(len(w))
        for i, row in enumerate(w.astype(np.int64)):
            drawn = np.repeat(self.lex, row[self.lex])  # already in (x, y) order
            dis[i] = _kendall_dis(self.xd[drawn], self.yd[drawn])
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = (total - tied_x - tied_y + tied_xy - 2 * dis) / np.sqrt((total - tied_x) * (total - tied_y))
        tau[(total - tied_x <= 0) | (total - tied_y <= 0)] = np.nan
        return np.clip(tau, -1.0, 1.0)

    def _drawn(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        drawn = np.repeat(np.arange(len(row)), row.astype(np.int64))
        return self.x[drawn], self.y[drawn]


def metric_draws(pred: Sequence[float], truth: Sequence[float], codes: Sequence[str], ks: Sequence[int] = (5, 10),
                 resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, np.ndarray]:
    """Each rank metric (rank_metrics' names) on `resamples` bootstrap resamples of the codes;
    pred and truth are aligned with codes. The same (n, resamples, seed) draws the same resamples."""
    x, y = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    n = len(x)
    ox, oy = _Order(x), _Order(y)
    # top-k orders: best first, ties by the code string (as metrics.top_k_overlap)
    best_pred = np.array(sorted(range(n), key=lambda i: (-x[i], codes[i])))
    best_truth = np.array(sorted(range(n), key=lambda i: (-y[i], codes[i])))
    rank_in_pred = np.empty(n, np.int64)
    rank_in_pred[best_pred] = np.arange(n)
    names = ["kendall", "spearman", "pearson"] + [f"top{k}" for k in ks]
    parts: dict[str, list[np.ndarray]] = {m: [] for m in names}
    kendall = (lambda w: _kendall_pairwise(w, x, y)) if n <= PAIRWISE_MAX else _KendallLarge(x, y)
    for w in resample_counts(n, resamples, seed):
        parts["kendall"].append(kendall(w))
        parts["spearman"].append(_weighted_pearson(w, ox.mid_ranks(w), oy.mid_ranks(w)))
        parts["pearson"].append(_weighted_pearson(w, np.broadcast_to(x, w.shape), np.broadcast_to(y, w.shape)))
        for k in ks:
            kk = min(int(k), n)
            if kk <= 0:
                parts[f"top{k}"].append(np.full(len(w), np.nan))
                continue
            top_p, top_t = _top_counts(w, best_pred, kk), _top_counts(w, best_truth, kk)
            # each truth top code's draws in the predicted top (0 beyond its prefix)
            at = rank_in_pred[best_truth[:top_t.shape[1]]]
            in_pred = np.where(at < top_p.shape[1], top_p[:, np.minimum(at, top_p.shape[1] - 1)], 0.0)
            parts[f"top{k}"].append(np.minimum(in_pred, top_t).sum(axis=1) / kk)
    return {m: np.concatenate(v) for m, v in parts.items()}


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> list[float]:
    """[lo, hi]: the central `level` of the finite draws (nan when none is finite)."""
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return [math.nan, math.nan]
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def _aligned(preds: Sequence[Mapping[str, float]], truth: Mapping[str, float],
             allow_extra: bool) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    codes = match(preds[0], truth, allow_extra)
    for p in preds[1:]:
        match(p, truth, allow_extra)
    return (codes, [np.array([float(p[c]) for c in codes]) for p in preds],
            np.array([float(truth[c]) for c in codes]))


def rank_intervals(pred: Mapping[str, float], truth: Mapping[str, float], ks: Sequence[int] = (5, 10),
                   resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
                   allow_extra: bool = True) -> dict[str, list[float]]:
    """metric -> [lo, hi], the bootstrap interval over the architectures of each rank metric."""
    codes, (p,), t = _aligned([pred], truth, allow_extra)
    draws = metric_draws(p, t, codes, ks, resamples, seed)
    return {m: percentile_interval(d, level) for m, d in draws.items()}


def paired_difference(pred_a: Mapping[str, float], pred_b: Mapping[str, float], truth: Mapping[str, float],
                      ks: Sequence[int] = (5, 10), resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = LEVEL, allow_extra: bool = True) -> dict[str, dict]:
    """metric -> {"d": A's metric minus B's, "interval": [lo, hi]}: both on the same resamples, so
    A beats B on that metric when the interval lies above 0."""
    codes, (a, b), t = _aligned([pred_a, pred_b], truth, allow_extra)
    ma, mb = rank_metrics(pred_a, truth, ks, allow_extra), rank_metrics(pred_b, truth, ks, allow_extra)
    da, db = metric_draws(a, t, codes, ks, resamples, seed), metric_draws(b, t, codes, ks, resamples, seed)
    return {m: {"d": ma[m] - mb[m], "interval": percentile_interval(da[m] - db[m], level)} for m in da}


def format_difference(name_a: str, name_b: str, diff: Mapping[str, Mapping]) -> list[str]:
    """'kendall: A - B = 0.0412 [-0.0310, 0.1150]' per metric, with the verdict."""
    lines = []
    for m, v in diff.items():
        lo, hi = v["interval"]
        verdict = (f"{name_a} better" if lo > 0 else f"{name_b} better" if hi < 0 else "no difference shown")
        lines.append(f"{m}: {name_a} - {name_b} = {v['d']:.4f} [{lo:.4f}, {hi:.4f}] ({verdict})")
    return lines


def mean_draws(preds: Sequence[Mapping[str, float]], truth: Mapping[str, float], ks: Sequence[int] = (5, 10),
               resamples: int = RESAMPLES, seed: int = SEED, allow_extra: bool = True) -> dict[str, np.ndarray]:
    """metric_draws of each prediction (e.g. one per training seed), averaged: the draws of a mean
    metric. Two calls with the same seed are paired, so their difference draws compare two rows."""
    codes, values, t = _aligned(list(preds), truth, allow_extra)
    each = [metric_draws(p, t, codes, ks, resamples, seed) for p in values]
    return {m: np.mean([d[m] for d in each], axis=0) for m in each[0]}

"""Ranking quality: Kendall tau, Spearman, Pearson and top-k overlap between predicted and true accuracies, and the plot.

Predictions and ground truth are matched by architecture CODE, not by their "archN" keys: a
ground-truth file usually lists a few dozen codes of the scored list, under its own keys and in its
own order. Every code of the ground truth must have a prediction; predicted codes that the ground
truth does not list are left out (the leaderboard, too, scores a hidden subset), unless
`allow_extra=False` asks for the exact same codes on both sides.

The organisers' final metric is Kendall tau (tau-b, which handles ties); leaderboard A used
|Pearson|.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from track1.errors import UserError
from track1.files import atomic_write
from track1.ranking.submission import SubmissionError, check_codes, count_phrase, read_json_object, some_keys


MIN_CODES = 2  # fewest common codes a correlation is defined on


class CoverageError(UserError, ValueError):
    """Predictions and ground truth that do not cover the same codes (one-line message)."""


def _nan_safe(fn, a: np.ndarray, b: np.ndarray) -> float:
    """A scipy correlation's statistic; nan (no warning) when one side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning / RuntimeWarning on constant input
        value = float(fn(a, b)[0])
    return value


def top_k_overlap(pred: Mapping[str, float], truth: Mapping[str, float], k: int) -> float:
    """Fraction of the true top-k codes that are also in the predicted top-k (k capped at n).

    Ties are broken by the code string, so the result is deterministic.
    """
    k = min(k, len(truth))
    if k <= 0:
        return float("nan")

    def top(scores: Mapping[str, float]) -> set[str]:
        return set(sorted(scores, key=lambda c: (-scores[c], c))[:k])

    return len(top(pred) & top(truth)) / k


def match(pred: Mapping[str, float], truth: Mapping[str, float],
          allow_extra: bool = True) -> list[str]:
    """The codes both sides are compared on (truth's order); CoverageError if coverage is wrong."""
    only_truth = [c for c in truth if c not in pred]
    only_pred = [c for c in pred if c not in truth]
    if only_truth or (only_pred and not allow_extra):
        parts = []
        if only_truth:
            parts.append(f"{count_phrase(len(only_truth), 'code')} only in the ground truth "
                         f"({some_keys(only_truth)})")
        if only_pred:
            parts.append(f"{count_phrase(len(only_pred), 'code')} only in the predictions "
                         f"({some_keys(only_pred)})")
        raise CoverageError("predictions and ground truth do not cover the same codes: "
                            + "; ".join(parts))
    common = list(truth)
    if len(common) < MIN_CODES:
        raise CoverageError(f"only {count_phrase(len(common), 'code')} in common; a correlation needs at "
                            f"least {MIN_CODES}")
    return common


def rank_metrics(pred: Mapping[str, float], truth: Mapping[str, float], ks: Iterable[int] = (5, 10),
                 allow_extra: bool = True) -> dict:
    """{"kendall", "spearman", "pearson", "top5", "top10", "n"} over the codes of truth.

    pred and truth map code -> accuracy. kendall is tau-b; a correlation is nan when one side is
    constant. topK is top_k_overlap with k capped at n.
    """
    codes = match(pred, truth, allow_extra)
    p = np.array([float(pred[c]) for c in codes], np.float64)
    t = np.array([float(truth[c]) for c in codes], np.float64)
    bad = [c for c, a, b in zip(codes, p, t) if not (math.isfinite(a) and math.isfinite(b))]
    if bad:
        raise CoverageError(f"{count_phrase(len(bad), 'code')} with a non-finite accuracy: {some_keys(bad)}")
    out = {
        "kendall": _nan_safe(lambda a, b: stats.kendalltau(a, b, variant="b"), p, t),
        "spearman": _nan_safe(stats.spearmanr, p, t),
        "pearson": _nan_safe(stats.pearsonr, p, t),
    }
    common_pred = {c: pred[c] for c in codes}
    common_truth = {c: truth[c] for c in codes}
    for k in ks:
        out[f"top{k}"] = top_k_overlap(common_pred, common_truth, int(k))
    out["n"] = len(codes)
    return out


def format_metrics(m: Mapping, intervals: Mapping[str, Sequence[float]] | None = None) -> str:
    """'kendall 0.8123  spearman 0.9401  pearson 0.9312  top5 0.60  top10 0.70  n 30'; with
    intervals (track1.ranking.intervals), each value followed by its own: 'kendall 0.8123 [0.70, 0.90]'."""
    parts = []
    for k, v in m.items():
        if k == "n":
            parts.append(f"n {v}")
            continue
        text = f"{k} {v:.{2 if k.startswith('top') else 4}f}"
        if intervals is not None:
            lo, hi = intervals.get(k, (math.nan, math.nan))
            text += f" [{lo:.2f}, {hi:.2f}]"
        parts.append(text)
    return "  ".join(parts)


def load_scores(path: str | os.PathLike) -> dict[str, float]:
    """code -> acc of a file in the official shape {"archN": {"acc": float, "arch": code, ...}}.

    Extra fields in an entry (e.g. "accs", "seconds") are allowed. A code listed twice must carry
    the same acc both times. Problems raise SubmissionError with a one-line message naming the
    file and the first offending keys.
    """
    data = read_json_object(path)
    if not data:
        raise SubmissionError(f"{path}: no entries")
    bad_shape = [k for k, e in data.items()
                 if not (isinstance(e, dict) and isinstance(e.get("arch"), str) and "acc" in e)]
    if bad_shape:
        raise SubmissionError(f"{path}: {count_phrase(len(bad_shape), 'entry', 'entries')} not an object "
                              f"with \"acc\" and a string \"arch\": {some_keys(bad_shape)}")
    not_number = [k for k, e in data.items()
                  if isinstance(e["acc"], bool) or not isinstance(e["acc"], (int, float))
                  or (isinstance(e["acc"], float) and not math.isfinite(e["acc"]))]
    if not_number:
        raise SubmissionError(f"{path}: {count_phrase(len(not_number), 'acc')} not a finite number: "
                              f"{some_keys(not_number)}")
    check_codes(path, {k: e["arch"] for k, e in data.items()})
    scores: dict[str, float] = {}
    conflicts = []
    for k, e in data.items():
        code, acc = e["arch"], float(e["acc"])
        if code in scores and scores[code] != acc:
            conflicts.append(k)
        scores.setdefault(code, acc)
    if conflicts:
        raise SubmissionError(f"{path}: {count_phrase(len(conflicts), 'key')} repeat an earlier code with "
                              f"a different acc: {some_keys(conflicts)}")
    return scores


def plot(pred: Mapping[str, float], truth: Mapping[str, float], path: str | os.PathLike,
         title: str = "", allow_extra: bool = True, intervals: Mapping[str, list[float]] | None = None) -> dict:
    """Scatter of predicted (y) against true (x) accuracy over truth's codes, the three
    correlations with their bootstrap 95% intervals in the title (intervals.rank_intervals' default
    resamples and seed unless given); written atomically (format from the suffix, default PNG).
    Returns the metrics it shows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from track1.ranking.intervals import rank_intervals  # it builds on this module

    m = rank_metrics(pred, truth, allow_extra=allow_extra)
    if intervals is None:
        intervals = rank_intervals(pred, truth, allow_extra=allow_extra)
    codes = match(pred, truth, allow_extra)
    t = np.array([truth[c] for c in codes], np.float64)
    p = np.array([pred[c] for c in codes], np.float64)

    fig = Figure(figsize=(5.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)  # no pyplot, no display, no global backend switch
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(t, p, s=18, alpha=0.8, edgecolors="none")
    ax.set_xlabel("true (stand-alone) accuracy")
    ax.set_ylabel("predicted accuracy (or score)")
    ax.grid(True, alpha=0.3)
    cell = {k: f"{m[k]:.3f} [{intervals[k][0]:.2f}, {intervals[k][1]:.2f}]" for k in ("kendall", "spearman", "pearson")}
    stats_line = (f"Kendall {cell['kendall']}  Spearman {cell['spearman']}\n"
                  f"Pearson {cell['pearson']}  (n={m['n']}; 95% bootstrap intervals over the codes)")
    ax.set_title(f"{title}\n{stats_line}" if title else stats_line, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt))
    return m

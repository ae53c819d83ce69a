"""An ensemble of zero-cost proxies, the RD-NAS teacher's and the `proxies` command's: its spec (names and
weights), the members' z-scores over a fixed reference sample of codes, and the combined score.

`train.ranking.teacher` (and the `proxies` command's --proxy) is one proxy name, comma-separated
names or a list (equal weights), or a mapping name -> positive weight.

An ensemble scores a network by the weighted mean of its members' z-scores,
    z_m = (t_m(score_m) - mean_m) / std_m,   t_m = log for proxies on a multiplicative scale,
with mean_m and std_m taken over a fixed reference sample: `proxies.reference_size` codes drawn
with `space.sample` from `proxies.reference_seed` (the official list's distribution). Why so:
  * a fixed reference, not the codes at hand, makes a single pair comparison well defined and
    deterministic: the teacher's order of two networks never depends on which others it has seen;
  * a z-score, not the rank within the reference, is strictly increasing in every member, so two
    different networks do not tie just because they fall between the same reference codes (a
    rank in a small sample is a step function, flattest at the extremes, where the sandwich's
    largest and smallest subnets sit);
  * the log puts flops, params, synflow, snip, grad_norm and fisher (positive, spanning orders of
    magnitude, so their raw std is set by a few large networks) on the same footing as the
    proxies that are already logs or signed (zen, naswot, jacob_cov, grasp).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from track1.errors import ConfigError
from track1.ranking import proxies
from track1.ranking.submission import demo_arch_list
from track1.space import SearchSpace


LOG_SCALE = frozenset({"flops", "params", "grad_norm", "snip", "fisher", "synflow"})


def parse_teacher(spec: Any) -> dict[str, float]:
    """name -> weight from a proxy name, "a,b", [a, b] or {a: wa, b: wb}; ConfigError if unusable."""
    if isinstance(spec, str):
        pairs = [(n.strip(), 1.0) for n in spec.split(",")]
    elif isinstance(spec, (list, tuple)):
        pairs = [(n, 1.0) for n in spec]
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        raise ConfigError(f"teacher {spec!r}: expected a proxy name, a list of names or a mapping "
                          "name -> weight")
    weights = {}
    for name, w in pairs:
        if not isinstance(name, str) or name not in proxies.PROXIES:
            raise ConfigError(f"teacher {spec!r}: unknown proxy {name!r}; expected one of "
                              f"{', '.join(proxies.PROXIES)}")
        if name in weights:
            raise ConfigError(f"teacher {spec!r}: proxy {name!r} named twice")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w > 0):
            raise ConfigError(f"teacher {spec!r}: weight of {name!r} must be a positive number, got {w!r}")
        weights[name] = float(w)
    if not weights:
        raise ConfigError("teacher: no proxy named")
    return weights


def teacher_label(weights: Mapping[str, float]) -> str:
    """A file-name-safe name: "snip", "snip+synflow", or "snip2+synflow1" for unequal weights."""
    if len(set(weights.values())) <= 1:
        return "+".join(weights)
    return "+".join(f"{n}{w:g}" for n, w in weights.items())


def transform(name: str, values) -> np.ndarray:
    """The scale members are z-scored on: log for LOG_SCALE proxies (-inf for a score <= 0)."""
    v = np.asarray(values, dtype=np.float64)
    if name not in LOG_SCALE:
        return v
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), -np.inf)


def reference_stats(weights: Mapping[str, float], reference: Mapping[str, Sequence[float]]
                    ) -> dict[str, tuple[float, float]]:
    """name -> (mean, std) of each member's transformed scores over the reference sample (finite
    values only); ValueError if a member is constant there, since it could not be z-scored."""
    stats = {}
    for name in weights:
        t = transform(name, reference[name])
        t = t[np.isfinite(t)]
        std = float(t.std()) if len(t) >= 2 else 0.0
        if not std > 0:
            raise ConfigError(f"teacher member {name!r} is constant (or not finite) on the reference "
                             f"sample of {len(reference[name])} codes: it cannot be z-scored")
        stats[name] = (float(t.mean()), std)
    return stats


def combine(weights: Mapping[str, float], stats: Mapping[str, tuple[float, float]],
            scores: Mapping[str, float]) -> float:
    """The ensemble's value of one network from its members' raw scores."""
    total = sum(w * (float(transform(n, [scores[n]])[0]) - stats[n][0]) / stats[n][1]
                for n, w in weights.items())
    return float(total / sum(weights.values()))


def zscore_ensemble(weights: Mapping[str, float], scores: Mapping[str, Sequence[float]],
                    reference: Mapping[str, Sequence[float]] | None = None) -> list[float]:
    """combine() for every index of the member score lists; reference defaults to the scores."""
    stats = reference_stats(weights, scores if reference is None else reference)
    n = len(next(iter(scores.values())))
    return [combine(weights, stats, {m: scores[m][i] for m in weights}) for i in range(n)]


def reference_codes(cfg: Mapping, space: SearchSpace) -> dict[str, str]:
    """The ensemble's reference sample: key -> code, drawn as the official list is distributed."""
    p = cfg["proxies"]
    return demo_arch_list(p["reference_size"], p["reference_seed"], space)


def ensemble_scores(weights: Mapping[str, float], members: Mapping[str, Mapping[str, float]],
                    reference: Mapping[str, Sequence[float]]) -> tuple[dict[str, float], dict]:
    """(key -> the ensemble's score, member -> (mean, std)) from each member's key -> score and its
    scores on the reference sample."""
    stats = reference_stats(weights, reference)
    keys = next(iter(members.values()))
    return {k: combine(weights, stats, {m: members[m][k] for m in weights}) for k in keys}, stats

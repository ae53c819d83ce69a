"""The RD-NAS teacher: a zero-cost proxy or a weighted ensemble of proxies, once per network, cached on disk.

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

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import paddle

from track1.ranking import proxies
from track1.errors import ConfigError, UserError
from track1.files import append_jsonl, read_jsonl, repair_jsonl, write_text
from track1.ranking.proxy_runs import input_batch, input_kind, proxy_settings
from track1.space import SearchSpace, Widths

LOG_SCALE = frozenset({"flops", "params", "grad_norm", "snip", "fisher", "synflow"})
# Free to compute: never written to the cache file.
CHEAP = frozenset({"flops", "params"})
CACHE_FORMAT = 1


class TeacherCacheError(UserError):
    """A teacher cache file written for other settings."""


# -- what a teacher is -----------------------------------------------------------------------------
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
            raise ValueError(f"teacher member {name!r} is constant (or not finite) on the reference "
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
    from track1.ranking.submission import demo_arch_list
    p = cfg["proxies"]
    size, seed = int(p["reference_size"]), int(p["reference_seed"])
    if size < 2:
        raise ConfigError("proxies.reference_size must be >= 2 (an ensemble z-scores over it)")
    return demo_arch_list(size, seed, space)


def teacher_settings(cfg: Mapping, weights: Mapping[str, float]) -> dict:
    """Everything a teacher's values depend on: the key of its cache file."""
    s = cfg["space"]
    settings = {"format": CACHE_FORMAT, "teacher": dict(weights), "proxies": proxy_settings(cfg),
                "act": s["act"], "space": {k: s[k] for k in ("width_mult", "resolution", "num_classes")}}
    if any(input_kind(cfg, n) == "data" for n in weights):
        settings["data"] = {k: cfg["data"][k] for k in ("name", "root")}
    if len(weights) > 1:
        settings["reference"] = {k: int(cfg["proxies"][k]) for k in ("reference_size", "reference_seed")}
    return settings


def widths_key(w: Widths) -> str:
    return f"{w.stem}|" + "|".join(",".join(f"{a}-{b}" for a, b in stage) for stage in w.blocks)


# -- the teacher of a training run ---------------------------------------------------------------
class Teacher:
    """teacher(widths) -> float, higher = predicted better; each network is scored once.

    Costly members' scores go to <run>/teacher/<label>@<settings hash>.jsonl as they are computed
    (rank 0 only; the first line holds the settings, written atomically; a record is one fsync'd
    line, a torn last line is dropped), and a resumed run reads them back instead of recomputing.
    Another teacher's settings hash to another file, which is never read; a file whose first line
    names other settings is refused.
    """

    def __init__(self, cfg: dict, space: SearchSpace, cache_dir: str | Path | None = None):
        """cache_dir: where costly scores are kept across resumes (the run's teacher/; None: not kept)."""
        self.cfg, self.space = cfg, space
        self.weights = parse_teacher(cfg["train"]["ranking"]["teacher"])
        self.settings = teacher_settings(cfg, self.weights)
        self.cache: dict[Widths, float] = {}               # the teacher's value per network
        self.scores: dict[str, dict[str, float]] = {n: {} for n in self.weights}  # member -> key -> score
        self.computed = 0                                   # member scores computed by this process
        self._batch, self._stats = None, None
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        costly = [n for n in self.weights if n not in CHEAP]
        self.path: Path | None = (Path(cache_dir) / f"{teacher_label(self.weights)}@{digest}.jsonl"
                                  if costly and cache_dir is not None else None)
        self._load()

    def __call__(self, widths: Widths) -> float:
        if widths not in self.cache:
            if len(self.weights) == 1:
                value = self.member(next(iter(self.weights)), widths)
            else:
                value = combine(self.weights, self.stats(), {n: self.member(n, widths) for n in self.weights})
            self.cache[widths] = value
        return self.cache[widths]

    def stats(self) -> dict[str, tuple[float, float]]:
        """The members' (mean, std) over the reference sample, computed on first use."""
        if self._stats is None:
            ref = [self.space.widths(c) for c in reference_codes(self.cfg, self.space).values()]
            self._stats = reference_stats(self.weights, {n: [self.member(n, w) for w in ref]
                                                         for n in self.weights})
        return self._stats

    def member(self, name: str, widths: Widths) -> float:
        key = widths_key(widths)
        if key not in self.scores[name]:
            if self._batch is None and name not in CHEAP:
                self._batch = input_batch(self.cfg, [n for n in self.weights if n not in CHEAP])
            p = proxy_settings(self.cfg)
            score = proxies.compute(name, widths, self.space, self._batch, seed=p["seed"],
                                    act=self.cfg["space"]["act"], repeats=p["repeats"])
            self.scores[name][key] = score
            if name not in CHEAP:
                self.computed += 1
                self._save(name, key, score)
        return self.scores[name][key]

    def _writes(self) -> bool:
        return self.path is not None and paddle.distributed.get_rank() == 0

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        repair_jsonl(self.path)
        records = iter(read_jsonl(self.path))
        header = next(records, None)
        if header is None:
            return
        if header.get("settings") != self.settings:
            raise TeacherCacheError(f"{self.path}: a teacher cache for {header.get('settings')}, not for "
                                  f"{self.settings}; remove it or use another run")
        for rec in records:
            if rec["proxy"] in self.scores:
                self.scores[rec["proxy"]][rec["widths"]] = rec["score"]

    def _save(self, name: str, key: str, score: float) -> None:
        if not self._writes():
            return
        if not self.path.exists() or self.path.stat().st_size == 0:
            write_text(self.path, json.dumps({"settings": self.settings}) + "\n")
        append_jsonl(self.path, [{"proxy": name, "widths": key, "score": score}])

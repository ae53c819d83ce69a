"""The RD-NAS teacher of a training run: a zero-cost proxy or an ensemble of them (track1.ranking.ensemble),
scored once per network and kept on disk across resumes."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Mapping

import paddle

from track1.errors import UserError
from track1.files import append_jsonl, digest, read_jsonl, repair_jsonl, write_text
from track1.ranking import proxies
from track1.ranking.ensemble import combine, parse_teacher, reference_codes, reference_stats, teacher_label
from track1.ranking.proxy_runs import input_batch, input_kind, proxy_notes, proxy_repeats, proxy_settings
from track1.space import SearchSpace, Widths


# Free to compute: never written to the cache file.
CHEAP = frozenset({"flops", "params"})
CACHE_FORMAT = 1


class TeacherCacheError(UserError):
    """A teacher cache file written for other settings."""


def teacher_settings(cfg: Mapping, weights: Mapping[str, float]) -> dict:
    """Everything a teacher's values depend on: the key of its cache file."""
    s = cfg["space"]
    # The seeds each member averages; one number when they agree (the key of every teacher before
    # per-proxy defaults, so their caches are still found).
    repeats = {n: proxy_repeats(cfg, n) for n in weights}
    common = set(repeats.values())
    p = {**proxy_settings(cfg), "repeats": common.pop() if len(common) == 1 else repeats}
    settings = {"format": CACHE_FORMAT, "teacher": dict(weights), "proxies": p,
                "act": s["act"], "space": {k: s[k] for k in ("width_mult", "resolution", "num_classes")}}
    if any(input_kind(cfg, n) == "data" for n in weights):
        settings["data"] = {k: cfg["data"][k] for k in ("name", "root")}
    if len(weights) > 1:
        settings["reference"] = {k: cfg["proxies"][k] for k in ("reference_size", "reference_seed")}
    return settings


def widths_key(w: Widths) -> str:
    return f"{w.stem}|" + "|".join(",".join(f"{a}-{b}" for a, b in stage) for stage in w.blocks)


# -- the teacher of a training run ---------------------------------------------------------------
class Teacher:
    """teacher(widths) -> float, higher = predicted better; each network is scored once.

    Costly members' scores go to <run>/teacher/<label>@<settings hash>.jsonl as they are computed
    (rank 0 only; the first line holds the settings, written atomically; a record is one fsync'd
    line with the seconds it took, a torn last line is dropped), and a resumed run reads them back
    instead of recomputing.
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
        self.seconds = 0.0                                  # ... and their time; cached: cache_seconds
        self.cache_seconds = 0.0                            # the time of the scores read from the cache
        self._batch, self._stats = None, None
        costly = [n for n in self.weights if n not in CHEAP]
        self.path: Path | None = (Path(cache_dir) / f"{teacher_label(self.weights)}@{digest(self.settings, 12)}.jsonl"
                                  if costly and cache_dir is not None else None)
        self._load()
        if paddle.distributed.get_rank() == 0:
            for note in proxy_notes(cfg, costly):
                print(note, file=sys.stderr)

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
            start = time.perf_counter()
            score = proxies.compute(name, widths, self.space, self._batch, seed=self.cfg["proxies"]["seed"],
                                    act=self.cfg["space"]["act"], repeats=proxy_repeats(self.cfg, name))
            seconds = time.perf_counter() - start
            self.scores[name][key] = score
            if name not in CHEAP:
                self.computed += 1
                self.seconds += seconds
                self._save(name, key, score, seconds)
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
                self.cache_seconds += rec.get("seconds", 0.0)  # older records have none

    def _save(self, name: str, key: str, score: float, seconds: float) -> None:
        if not self._writes():
            return
        if not self.path.exists() or self.path.stat().st_size == 0:
            write_text(self.path, json.dumps({"settings": self.settings}) + "\n")
        append_jsonl(self.path, [{"proxy": name, "widths": key, "score": score, "seconds": round(seconds, 4)}])

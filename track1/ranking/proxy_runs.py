"""Running zero-cost proxies: their settings and input batch, a whole list cached and resumable, the output."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from track1.files import append_jsonl, digest, resume_log, write_json
from track1.ranking import meco
from track1.ranking.ensemble import ensemble_scores, parse_teacher, reference_codes, teacher_label
from track1.ranking.proxies import NEEDS_DATA, PROXIES, SEED_FREE, Batch, compute, default_repeats
from track1.space import SearchSpace, Widths


INPUTS = ("data", "gaussian")
# Proxies that read nothing of the batch, not even its shape (synflow and zen read the shape).
SHAPE_FREE = frozenset({"flops", "params"})


def proxy_settings(cfg: Mapping) -> dict:
    """cfg["proxies"] resolved: resolution 0 -> space.resolution (repeats as given: proxy_repeats)."""
    p = cfg["proxies"]
    return {"batch_size": p["batch_size"], "resolution": p["resolution"] or cfg["space"]["resolution"],
            "seed": p["seed"], "repeats": p["repeats"], "input": p["input"]}


def proxy_repeats(cfg: Mapping, name: str) -> int:
    """The seeds a proxy's score averages: proxies.repeats, 0 -> the proxy's own default."""
    return cfg["proxies"]["repeats"] or default_repeats(name)


def proxy_seeds(cfg: Mapping, name: str) -> list[int]:
    """The seeds a proxy's score is the mean over ([] for flops and params, which have none)."""
    seed = cfg["proxies"]["seed"]
    return [] if name in SEED_FREE else list(range(seed, seed + proxy_repeats(cfg, name)))


def seeds_tag(cfg: Mapping, names: Iterable[str]) -> str:
    """The seeds in an output's file name: "" at the default seed 0 alone, "@seeds0-9" when every
    seeded member has the same, else each member's that is not seed 0 alone, "@meco_opt-seeds0-9"."""
    def label(seeds):
        return f"seed{seeds[0]}" if len(seeds) == 1 else f"seeds{seeds[0]}-{seeds[-1]}"
    seeded = {n: proxy_seeds(cfg, n) for n in names if n not in SEED_FREE}
    kinds = {tuple(v) for v in seeded.values()}
    if not kinds or kinds == {(0,)}:
        return ""
    if len(kinds) == 1:
        return "@" + label(next(iter(kinds)))
    return "@" + "+".join(f"{n}-{label(v)}" for n, v in seeded.items() if v != [0])


def proxy_notes(cfg: Mapping, names: Iterable[str]) -> list[str]:
    """One-line warnings for proxies that cannot work at the configured resolution (MeCo's)."""
    space = SearchSpace.from_config(cfg)
    notes = (meco.degenerate_note(n, space, proxy_settings(cfg)["resolution"])
             for n in names if n in ("meco", "meco_opt"))
    return [n for n in notes if n]


def input_kind(cfg: Mapping, name: str) -> str:
    """What a proxy's batch is made of: "data", "gaussian", or "none" for the data-free ones, whose
    batch (Gaussian) only gives synflow and zen its shape."""
    return proxy_settings(cfg)["input"] if name in NEEDS_DATA else "none"


def gaussian_batch(n: int, resolution: int, num_classes: int, seed: int, channels: int = 3) -> Batch:
    """n standard-normal images and labels uniform over the classes, from numpy's seeded generator
    (the same on every machine and thread count)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, channels, resolution, resolution), dtype=np.float32)
    y = rng.integers(0, num_classes, n).astype("int64")
    return paddle.to_tensor(x), paddle.to_tensor(y)


def proxy_batch(cfg: Mapping) -> Batch:
    """The first proxies.batch_size training images (unaugmented) with their labels, resized to
    proxies.resolution when it differs."""
    from track1.data import EvalSet  # data loading only for callers that score with real data
    s = proxy_settings(cfg)
    x, y = next(iter(EvalSet(dict(cfg), "train", s["batch_size"], s["batch_size"])))
    if x.shape[-1] != s["resolution"]:
        x = F.interpolate(x, size=[s["resolution"]] * 2, mode="bilinear", align_corners=False)
    return x, y


def input_batch(cfg: Mapping, names: Iterable[str]) -> Optional[Batch]:
    """The one batch the proxies `names` see: the configured data only when one of them needs data
    and proxies.input is "data"; otherwise a seeded Gaussian batch of the configured shape (no
    dataset is opened); None when none of them reads a batch."""
    names = list(names)
    s = proxy_settings(cfg)
    if all(n in SHAPE_FREE for n in names):
        return None
    if s["input"] == "data" and any(n in NEEDS_DATA for n in names):
        return proxy_batch(cfg)
    return gaussian_batch(s["batch_size"], s["resolution"], int(cfg["space"]["num_classes"]), s["seed"])


def run_setting(cfg: Mapping, name: str) -> dict:
    """What a proxy's scores depend on besides the code: recorded with every score of a list."""
    s = proxy_settings(cfg)
    return {"proxy": name, "seed": s["seed"], "repeats": proxy_repeats(cfg, name), "act": cfg["space"]["act"],
            "input": input_kind(cfg, name), "resolution": s["resolution"], "batch_size": s["batch_size"]}


def keyed_log(cfg: Mapping, folder: Path, list_name: str, name: str) -> Path:
    """<folder>/<list>@<proxy>.<settings key>.jsonl, the key a digest of log_settings: other settings
    start a log of their own, as score logs do."""
    return folder / f"{list_name}@{name}.{digest(log_settings(cfg, name), 8)}.jsonl"


def log_path(cfg: Mapping, folder: Path, list_name: str, name: str) -> Path:
    """The keyed log, or a log of the old name <list>@<proxy>[@<res>px].jsonl where that one holds
    this setting's scores (it is read on and appended to)."""
    keyed, setting = keyed_log(cfg, folder, list_name, name), run_setting(cfg, name)
    res = setting["resolution"]
    old = folder / f"{list_name}@{name}{'' if res == cfg['space']['resolution'] else f'@{res}px'}.jsonl"
    if keyed.exists() or not old.exists():
        return keyed
    with open(old) as f:
        try:
            first = json.loads(f.readline())
        except ValueError:  # empty or torn
            return keyed
    return old if {k: first.get(k) for k in setting} == setting else keyed


def log_settings(cfg: Mapping, name: str) -> dict:
    """What a proxy log's key is the digest of: run_setting and the space (widths and class count)."""
    return {**run_setting(cfg, name), "space": {k: cfg["space"][k] for k in ("width_mult", "resolution", "num_classes")}}


def score_list(name: str, codes: Mapping[str, str], space: SearchSpace, batch: Optional[Batch],
               out_path, seed: int = 0, repeats: int = 1, progress: bool = True,
               act: str = "relu", setting: Optional[Mapping] = None) -> dict[str, dict]:
    """Score every key -> code of a list; returns key -> record, in list order.

    Each distinct network (equal `space.widths(code)`) is computed once; its records go to the
    JSONL log at out_path as soon as it is done, so a killed run resumes where it stopped.
    Records: {"key", "code", "score", "seconds", "proxy", "seed", "repeats", "act"} plus the
    fields of `setting` (e.g. run_setting's input, resolution and batch size); a log written with
    other values is refused. "seconds" is the computation time for the key that paid for it and
    0.0 for keys that reused it.
    """
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}: expected one of {', '.join(PROXIES)}")
    setting = {**(setting or {}), "proxy": name, "seed": seed, "repeats": repeats, "act": act}
    done = resume_log(out_path, codes, setting)
    by_widths: dict[Widths, dict] = {}
    for rec in done.values():
        by_widths.setdefault(space.widths(rec["code"]), rec)

    groups: dict[Widths, list[str]] = {}
    for key, code in codes.items():
        if key not in done:
            groups.setdefault(space.widths(code), []).append(key)

    with tqdm(total=len(codes), initial=len(codes) - sum(map(len, groups.values())),
              desc=f"proxy {name}", unit="arch", disable=not progress) as bar:
        for widths, keys in groups.items():
            seconds = [0.0] * len(keys)
            if widths in by_widths:
                score = by_widths[widths]["score"]
            else:
                start = time.perf_counter()
                score = compute(name, widths, space, batch, seed, act, repeats)
                seconds[0] = time.perf_counter() - start
            records = [{"key": k, "code": codes[k], "score": score, "seconds": s, **setting}
                       for k, s in zip(keys, seconds)]
            append_jsonl(out_path, records)
            for rec in records:
                done[rec["key"]] = rec
            by_widths.setdefault(widths, records[0])
            bar.update(len(keys))
    return {key: done[key] for key in codes}


def to_official_json(records: Mapping[str, dict], codes: Mapping[str, str]) -> dict[str, dict]:
    """{"arch1": {"acc": score, "arch": code, "seconds": t}, ...} in the list's order."""
    out = {}
    for key, code in codes.items():
        rec = records[key]
        if rec["code"] != code:
            raise ValueError(f"key {key!r}: record is for code {rec['code']}, list gives {code}")
        out[key] = {"acc": rec["score"], "arch": code, "seconds": rec["seconds"]}
    return out


def output_name(cfg: Mapping, list_name: str, spec) -> str:
    """<list>@<label>[@<res>px][@<seeds>].json: a cheaper proxy resolution and other seeds get files
    of their own, so both can be kept and compared."""
    weights = parse_teacher(spec)
    res = proxy_settings(cfg)["resolution"]
    tag = ("" if res == cfg["space"]["resolution"] else f"@{res}px") + seeds_tag(cfg, weights)
    return f"{list_name}@{teacher_label(weights)}{tag}.json"


def score_proxies(cfg: dict, codes: Mapping[str, str], list_name: str, spec, folder: Path) -> Path:
    """The `proxies` command: a proxy's (or an ensemble's, track1.ranking.ensemble) scores of every
    code, in the official shape, at <folder>/<list>@<label>[@<res>px][@<seeds>].json with a .meta.json
    beside it; each member's log (log_path) resumes, and an ensemble's members are z-scored over the
    reference sample."""
    space = SearchSpace.from_config(cfg)
    weights = parse_teacher(spec)
    s = proxy_settings(cfg)
    for note in proxy_notes(cfg, weights):
        print(note, file=sys.stderr)
    batch = input_batch(cfg, weights)

    def run(member: str, keyed: Mapping[str, str], name: str) -> dict[str, dict]:
        path = log_path(cfg, folder, name, member)
        info = path.with_suffix(".settings.json")  # beside a keyed log, to tell logs apart
        if path == keyed_log(cfg, folder, name, member) and not info.exists():
            write_json(info, log_settings(cfg, member), indent=1)
        return score_list(member, keyed, space, batch, path, seed=s["seed"],
                          repeats=proxy_repeats(cfg, member), act=cfg["space"]["act"],
                          setting=run_setting(cfg, member))

    members = {m: run(m, codes, list_name) for m in weights}
    label = teacher_label(weights)
    meta = {"list": list_name, "codes": len(codes), "teacher": weights, "proxies": s,
            "seeds": {m: proxy_seeds(cfg, m) for m in weights},
            "input": {m: input_kind(cfg, m) for m in weights}, "act": cfg["space"]["act"],
            "space": {k: cfg["space"][k] for k in ("width_mult", "resolution", "num_classes")}}
    if len(weights) == 1:
        records = members[label]
    else:  # members z-scored over the fixed reference sample
        ref = reference_codes(cfg, space)
        ref_name = f"reference{len(ref)}s{cfg['proxies']['reference_seed']}"
        scores, stats = ensemble_scores(
            weights, {m: {k: r["score"] for k, r in members[m].items()} for m in weights},
            {m: [r["score"] for r in run(m, ref, ref_name).values()] for m in weights})
        records = {k: {"code": c, "score": scores[k], "seconds": sum(members[m][k]["seconds"] for m in weights)}
                   for k, c in codes.items()}
        meta["reference"] = {"size": len(ref), "seed": cfg["proxies"]["reference_seed"],
                             "mean_std": {m: list(v) for m, v in stats.items()}}
    final = folder / output_name(cfg, list_name, spec)
    write_json(final, to_official_json(records, codes))
    write_json(final.with_name(final.stem + ".meta.json"), meta, indent=1)
    return final

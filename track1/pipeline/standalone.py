"""Stand-alone ground truth: train listed architectures from scratch as plain networks with one fixed recipe.

Each (code, seed) pair trains `ResNet(space.widths(code))` from its own initialisation with the
recipe of the config's `standalone:` section (with standalone.init_from=export, from the code's exported
network instead: track1.pipeline.export), then reports top-1 and mean cross-entropy on the
first `standalone.val_images` validation images. Initialisation is `paddle.seed(seed)`; the data
order and augmentation are those of `TrainData` for run.seed = seed, so a pair's result is a pure
function of (config, code, seed) at a fixed thread count.

`run_standalone` trains every pair of a list, appending each result to a JSONL log as soon as it
is done (a killed run resumes at the first unfinished pair), and writes the per-code mean over
seeds in the official JSON shape next to it. Codes that build the same network (equal widths) are
trained once per seed.

Competition rule: stand-alone ground truth never enters supernet training. This module is not
imported by track1/train.py (a test checks this), no config key names its output files, and
nothing on the training path reads them. Its results may only be used to *measure* ranking quality
(track1/metrics.py) and to choose hyperparameters or checkpoints.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats
from tqdm import tqdm

from track1.data import TrainData, validation_set
from track1.errors import UserError
from track1.files import append_jsonl, digest, read_jsonl, repair_jsonl, write_json
from track1.methods.losses import label_loss
from track1.network.build import build_resnet
from track1.network.resnet import ResNet
from track1.pipeline.config import section_keys
from track1.pipeline.optim import build_optimizer
from track1.ranking.evaluate import evaluate_batches
from track1.space import SearchSpace, Widths


# Keys of the standalone section that choose which networks are trained, not a result; and the data
# keys the stand-alone recipe replaces (batch size, training images) or that do not change a
# result (where the files are). config.NOT_RESULT_KEYS are left out too.
_NOT_RECIPE = {"standalone.seeds", "standalone.num_codes"}
_NOT_RECIPE_DATA = {"data.root", "data.batch_size", "data.train_size"}
EVAL_BATCH = 500  # evaluation batch size (BN is in eval mode: it does not change the result)
MAX_SPLITS = 64   # ceiling(): half-splits enumerated exactly up to this many, sampled beyond


class StandaloneError(UserError, ValueError):
    """A results log that this list or recipe cannot resume, or a diverged training (one line)."""


# -- configuration --------------------------------------------------------------------------------
def data_config(cfg: dict, seed: int) -> dict:
    """A copy of cfg whose data.batch_size / data.train_size / run.seed are the stand-alone ones."""
    st = cfg["standalone"]
    out = copy.deepcopy(cfg)
    out["data"]["batch_size"] = st["batch_size"]
    out["data"]["train_size"] = st["train_size"]
    out["run"]["seed"] = seed
    return out


def recipe_hash(cfg: dict, init: dict | None = None) -> str:
    """Fingerprint of everything that determines a stand-alone result except (code, seed); `init`:
    the exports inherited networks start from (track1.pipeline.export.inherited_source)."""
    recipe = {"standalone": section_keys(cfg, "standalone", _NOT_RECIPE), "space": cfg["space"],
              "data": section_keys(cfg, "data", _NOT_RECIPE_DATA)}
    if init:
        recipe["init"] = init
    if cfg["train"]["conv"] != "stock":
        # Float rounding differs; stock stays out so results logged before the key existed resume.
        recipe["conv"] = cfg["train"]["conv"]
    return digest(recipe, 8)


# -- one network ----------------------------------------------------------------------------------
def build_network(cfg: dict, code: str, seed: int) -> tuple[SearchSpace, ResNet]:
    """The plain network of code, initialised from seed (fresh parameter names every call), or with
    standalone.init_from=export from the code's exported network (the seed then sets the data order)."""
    space = SearchSpace.from_config(cfg)
    net = build_resnet(cfg, space.widths(code), seed, cfg["standalone"]["zero_init_residual"])
    if cfg["standalone"]["init_from"] == "export":
        from track1.pipeline.export import STATE_FILE, export_dir, load_exported
        load_exported(net, export_dir(cfg, code) / STATE_FILE)
    return space, net


def fit(cfg: dict, net: ResNet, seed: int, log_dir: str | os.PathLike | None = None,
        progress: bool = False) -> dict:
    """Train net in place with the stand-alone recipe and data order of seed; then evaluate.

    Returns {"acc", "loss", "seconds", "epochs", "train_loss"} (train_loss: mean of the last
    epoch's batch losses, as a divergence check).
    """
    st = cfg["standalone"]
    start = time.perf_counter()
    dcfg = data_config(cfg, seed)
    data = TrainData(dcfg)
    spe = data.steps_per_epoch
    total = max(1, int(round(st["epochs"] * spe)))
    opt, scheduler = build_optimizer(st, net, total, spe)
    smoothing, log_every = st["label_smoothing"], st["log_every"]
    writer = None
    if log_dir is not None and st["visualdl"]:
        from visualdl import LogWriter
        writer = LogWriter(logdir=str(log_dir))
    bar = tqdm(total=total, desc="  steps", unit="step", leave=False, disable=not progress,
               mininterval=1.0, dynamic_ncols=True)
    step, recent = 0, []
    try:
        for epoch in itertools.count():
            for x, y in data.batches(epoch):
                net.train()
                loss = label_loss(net(x), y, smoothing)
                loss.backward()
                opt.step()
                opt.clear_grad()
                scheduler.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise StandaloneError(f"training loss became {value} at step {step} (seed "
                                          f"{seed}); lower standalone.lr or set standalone.grad_clip")
                recent = (recent + [value])[-spe:]
                step += 1
                bar.update(1)
                if writer is not None and step % log_every == 0:
                    writer.add_scalar("train/loss", value, step)
                    writer.add_scalar("lr", opt.get_lr(), step)
                if step >= total:
                    break
            if step >= total:
                break
        net.eval()
        acc, val_loss = evaluate_batches(net, validation_set(dcfg, st["val_images"], EVAL_BATCH))
        if writer is not None:
            writer.add_scalar("val/top1", acc, step)
            writer.add_scalar("val/loss", val_loss, step)
    finally:
        data.close()  # a run that ends mid-epoch leaves its loader workers otherwise
        bar.close()
        if writer is not None:
            writer.close()
    return {"acc": acc, "loss": val_loss, "seconds": round(time.perf_counter() - start, 3),
            "epochs": step / spe, "train_loss": float(np.mean(recent))}


def train_standalone(cfg: dict, code: str, seed: int, out_dir: str | os.PathLike,
                     progress: bool = False) -> dict:
    """Train code from scratch with seed; {"acc", "loss", "seconds", "epochs", "train_loss"}.

    The VisualDL curve goes to out_dir/vdl/<code>_s<seed>.
    """
    start = time.perf_counter()
    _, net = build_network(cfg, code, seed)
    try:
        result = fit(cfg, net, seed, Path(out_dir) / "vdl" / f"{code}_s{seed}", progress)
    except StandaloneError as e:
        raise StandaloneError(f"{code}: {e}") from None
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


# -- a list of networks ---------------------------------------------------------------------------
def spread_codes(codes: Mapping[str, str], space: SearchSpace, n: int) -> dict[str, str]:
    """n keys of codes spread evenly over their FLOPs range (distinct networks only), in list order.

    n <= 0 or n >= the number of distinct networks: every distinct network. Deterministic.
    """
    distinct: dict[Widths, str] = {}
    for key, code in codes.items():
        distinct.setdefault(space.widths(code), key)
    keys = list(distinct.values())
    if n <= 0 or n >= len(keys):
        chosen = set(keys)
    else:
        by_flops = sorted(keys, key=lambda k: (space.flops(codes[k]), codes[k]))
        picks = np.unique(np.round(np.linspace(0, len(by_flops) - 1, n)).astype(int))
        chosen = {by_flops[i] for i in picks}
    return {k: c for k, c in codes.items() if k in chosen}


def results_json_path(out_path: str | os.PathLike) -> Path:
    out_path = Path(out_path)
    if out_path.suffix == ".json":
        raise StandaloneError(f"{out_path}: the results log must not end in .json (the summary goes there)")
    return out_path.with_suffix(".json")


def summarize(codes: Mapping[str, str], seeds: Sequence[int],
              records: Iterable[Mapping]) -> dict[str, dict]:
    """Official shape {"archN": {"acc": mean over seeds, "arch": code, "accs": [per seed]}} for
    the keys whose every seed is done, in list order."""
    by_pair = {(r["key"], int(r["seed"])): r for r in records}
    out = {}
    for key, code in codes.items():
        if all((key, s) in by_pair for s in seeds):
            accs = [float(by_pair[key, s]["acc"]) for s in seeds]
            out[key] = {"acc": float(np.mean(accs)), "arch": code, "accs": accs}
    return out


def run_standalone(cfg: dict, codes: Mapping[str, str], seeds: Sequence[int],
                   out_path: str | os.PathLike, progress: bool = True, init: dict | None = None) -> dict[str, dict]:
    """Train every (key, seed) pair; returns the official-shape summary also written as JSON.

    Each finished pair is appended to the JSONL log at out_path as
    {"key", "code", "seed", "acc", "loss", "seconds", "epochs", "recipe"} (and "init"); pairs already in the log
    are not trained again, and a torn last line (a kill mid-write) is cut first. VisualDL curves go
    to <out_path without suffix>/vdl/<code>_s<seed>. `init`: as recipe_hash's. A log written with
    another recipe, or giving a key another code, is refused (StandaloneError). The summary
    (results_json_path(out_path)) is written atomically once every pair is done.
    """
    out_path = Path(out_path)
    summary_path = results_json_path(out_path)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise StandaloneError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise StandaloneError(f"seeds {seeds} repeat a seed")
    space = SearchSpace.from_config(cfg)
    recipe = recipe_hash(cfg, init)
    repair_jsonl(out_path)
    done: dict[tuple[str, int], dict] = {}
    by_network: dict[tuple[Widths, int], dict] = {}
    for rec in read_jsonl(out_path):
        if rec.get("recipe") != recipe:
            raise StandaloneError(f"{out_path}: holds results of recipe {rec.get('recipe')}, not "
                                  f"{recipe} (the standalone/space/data settings changed); "
                                  f"use another output file")
        key = rec["key"]
        if key in codes and codes[key] != rec["code"]:
            raise StandaloneError(f"{out_path}: key {key!r} was trained as {rec['code']}, but the "
                                  f"list gives {codes[key]}")
        done[key, int(rec["seed"])] = rec
        by_network.setdefault((space.widths(rec["code"]), int(rec["seed"])), rec)

    todo = [(k, s) for k in codes for s in seeds if (k, s) not in done]
    total = len(codes) * len(seeds)
    with tqdm(total=total, initial=total - len(todo), desc="standalone", unit="run",
              disable=not progress, dynamic_ncols=True) as bar:
        for key, seed in todo:
            code = codes[key]
            net_key = (space.widths(code), seed)
            if net_key in by_network:  # the same network was already trained with this seed
                prev = by_network[net_key]
                result = {"acc": prev["acc"], "loss": prev["loss"], "seconds": 0.0,
                          "epochs": prev["epochs"]}
            else:
                bar.set_postfix_str(f"{key} seed {seed}")
                result = train_standalone(cfg, code, seed, out_path.with_suffix(""), progress)
            rec = {"key": key, "code": code, "seed": seed, "acc": float(result["acc"]),
                   "loss": float(result["loss"]), "seconds": float(result["seconds"]),
                   "epochs": float(result["epochs"]), "recipe": recipe}
            if init:  # what the network was fine-tuned from
                rec["init"] = init
            append_jsonl(out_path, [rec])
            done[key, seed] = rec
            by_network.setdefault(net_key, rec)
            bar.update(1)
    summary = summarize(codes, seeds, done.values())
    write_json(summary_path, summary, indent=1)
    return summary


# -- the noise ceiling ----------------------------------------------------------------------------
def _per_seed(results) -> dict[str, dict[int, float]]:
    """code -> {seed: acc} from JSONL records or from an official-shape summary with "accs"."""
    table: dict[str, dict[int, float]] = {}
    if isinstance(results, Mapping):
        for entry in results.values():
            accs = entry.get("accs")
            if accs is None:
                raise ValueError("ceiling needs per-seed results: records with a seed, or a "
                                 "summary whose entries carry \"accs\"")
            table[entry["arch"]] = {i: float(a) for i, a in enumerate(accs)}
    else:
        for r in results:
            table.setdefault(r["code"], {})[int(r["seed"])] = float(r["acc"])
    return table


def _half_splits(seeds: list[int], rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    """Splits of seeds into two disjoint halves (sizes floor and ceil of n/2), each split once."""
    n = len(seeds)
    half = n // 2
    if n % 2:
        combos = [list(c) for c in itertools.combinations(seeds, half)]
    else:  # a split and its mirror are the same split: keep those whose first half has seeds[0]
        combos = [[seeds[0], *c] for c in itertools.combinations(seeds[1:], half - 1)]
    if len(combos) > MAX_SPLITS:
        combos = [combos[i] for i in sorted(rng.choice(len(combos), MAX_SPLITS, replace=False))]
    return [(a, [s for s in seeds if s not in a]) for a in combos]


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.kendalltau(a, b, variant="b")[0])


def ceiling(results, rng_seed: int = 0) -> dict:
    """How well the ground truth agrees with itself across seeds: a ceiling for any predictor.

    results: per-seed records ({"code", "seed", "acc"}, e.g. read from the JSONL log) or an
    official-shape summary with "accs". Only seeds that every code has are used (at least 2).
    Returns
      half_kendall   mean Kendall tau between the per-code means of two disjoint halves of the
                     seeds, over the splits (3 seeds: {one} vs {the other two}, 3 splits);
      pair_kendall   mean Kendall tau between two single seeds, over all seed pairs;
      seeds, codes, splits, pairs.
    """
    table = _per_seed(results)
    if len(table) < 2:
        raise ValueError(f"ceiling needs at least 2 codes, got {len(table)}")
    common = sorted(set.intersection(*(set(s) for s in table.values())))
    if len(common) < 2:
        raise ValueError(f"ceiling needs at least 2 seeds that every code has, got {common}")
    codes = sorted(table)
    acc = np.array([[table[c][s] for s in common] for c in codes], np.float64)  # (codes, seeds)
    col = {s: i for i, s in enumerate(common)}
    rng = np.random.default_rng(rng_seed)
    splits = _half_splits(common, rng)
    half = [_kendall(acc[:, [col[s] for s in a]].mean(1), acc[:, [col[s] for s in b]].mean(1))
            for a, b in splits]
    pairs = [_kendall(acc[:, col[a]], acc[:, col[b]]) for a, b in itertools.combinations(common, 2)]
    # Signal and noise: seed_std is the spread of one code over seeds (pooled), signal_std the
    # spread of the codes' true means (the spread of the seed means, less the noise it contains).
    n = len(common)
    seed_var = float(acc.var(axis=1, ddof=1).mean())
    signal_var = max(0.0, float(acc.mean(axis=1).var(ddof=1)) - seed_var / n)
    return {"half_kendall": float(np.mean(half)), "pair_kendall": float(np.mean(pairs)),
            "seeds": n, "codes": len(codes), "splits": len(splits), "pairs": len(pairs),
            "seed_std": math.sqrt(seed_var), "signal_std": math.sqrt(signal_var),
            "seeds_for_0.8": seeds_for_kendall(0.8, seed_var, signal_var)}


def seeds_for_kendall(tau: float, seed_var: float, signal_var: float) -> float:
    """Seeds per half for which two independent seed-mean rankings agree at Kendall tau, expected.

    Gaussian model: a code's n-seed mean is its true mean plus noise of variance seed_var / n, so
    two halves correlate at r = signal / (signal + seed_var / n), and Kendall = (2/pi) asin(r).
    inf when no signal is left above the noise.
    """
    r = math.sin(tau * math.pi / 2)
    if signal_var <= 0:
        return math.inf
    return seed_var / signal_var * r / (1 - r)

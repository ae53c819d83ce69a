"""Cost and agreement of every zero-cost proxy at the competition's scale: 224 px, width 1.0, 1000 classes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_proxies.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_proxies.py --proxies snip,meco_opt --codes 20 \
        --out output/bench_proxies/meco.jsonl         # the cost rows of MeCo_opt beside snip's

Each proxy averages its own default number of seeds (proxies.repeats 0: 10 for meco_opt, so its
seconds are those of 10 one-image forwards).
Two processes may share the work (--proxies), each with its own --out; their seconds then come from
a shared machine, so time on a quiet one separately (--per-proxy NAME=3 ... --out timing.jsonl) and
merge: --report-only --out values.jsonl --more-logs other.jsonl --times-from timing.jsonl.

On a seeded subset of official codes (read from the official list, not sampled) and a seeded
Gaussian batch (proxies.input: gaussian), each proxy scores its first N codes of the subset at 224 px
and at a cheaper resolution (--cheap), batch 16; the first --timing-codes codes are also timed at
batch 64. Measurements go to a resumable JSONL log (--out); the report prints, per proxy: seconds
per code, what that makes over the distinct networks of the 45k list and as the teacher of an RD-NAS
run (--teacher-*: each step scores 2 x pairs new networks), Kendall tau between the 224 px and the cheap ranking, and Kendall tau with FLOPs;
the same for the ensembles (--ensemble), z-scored over the measured codes (track1/ranking/ensemble.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--arch-list", default=str(ROOT.parent / "shared/data/CVPR_2022_NAS_Track1_test.json"))
parser.add_argument("--codes", type=int, default=300, help="size of the seeded subset of official codes")
parser.add_argument("--proxies", default="", help="comma list: measure only these (default: all)")
parser.add_argument("--per-proxy", default="grasp=100",
                    help="NAME=N: measure this proxy on the first N codes of the subset only (cost)")
parser.add_argument("--cheap", type=int, default=64, help="the cheaper proxies.resolution")
parser.add_argument("--batch", type=int, default=16, help="batch of the ranking measurement")
parser.add_argument("--timing-batch", type=int, default=64)
parser.add_argument("--timing-codes", type=int, default=1, help="codes timed at --timing-batch")
parser.add_argument("--ensemble", action="append", default=None,
                    help="teacher spec (comma-separated names); default snip,synflow and "
                         "snip,grad_norm,synflow,zen")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--width-mult", type=float, default=1.0, help="below 1 only to check the script quickly")
parser.add_argument("--teacher-epochs", type=float, default=100, help="the RD-NAS run the teacher cost is for")
parser.add_argument("--teacher-images", type=int, default=1281167, help="training images an epoch (ImageNet)")
parser.add_argument("--teacher-batch", type=int, default=1024, help="global batch (configs/imagenet.yaml: 8 x 128)")
parser.add_argument("--teacher-pairs", type=int, default=2, help="train.ranking.pairs: 2 new networks each")
parser.add_argument("--out", default=str(ROOT / "output/bench_proxies/measurements.jsonl"))
parser.add_argument("--report-only", action="store_true", help="print the report of what is measured")
parser.add_argument("--more-logs", nargs="*", default=[], help="other measurement logs to report with --out")
parser.add_argument("--times-from", default=None, help="take the seconds from this log (a quiet machine)")
args = parser.parse_args()
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from track1.ranking import proxies  # noqa: E402
from track1.files import append_jsonl, read_jsonl, repair_jsonl  # noqa: E402
from track1.ranking.proxy_runs import gaussian_batch  # noqa: E402
from track1.space import SearchSpace, unique_widths  # noqa: E402
from track1.ranking.submission import load_arch_list  # noqa: E402

space = SearchSpace(width_mult=args.width_mult, resolution=224, num_classes=1000)
official = list(load_arch_list(args.arch_list).values())
subset = [official[i] for i in np.random.default_rng(args.seed).choice(len(official), args.codes, replace=False)]
chosen = [n for n in args.proxies.split(",") if n] or list(proxies.PROXIES)
counts = {name: args.codes if name in chosen else 0 for name in proxies.PROXIES}
for item in filter(None, args.per_proxy.split(",")):
    name, n = item.split("=")
    if name in chosen:
        counts[name] = min(int(n), args.codes)
resolutions = (space.resolution, args.cheap)
out = Path(args.out)
repair_jsonl(out)


def by_key(path: Path) -> dict:
    """A measurement log's records at this width by (proxy, resolution, batch, code)."""
    return {(r["proxy"], r["resolution"], r["batch"], r["code"]): r for r in read_jsonl(path)
            if r.get("width_mult", 1.0) == args.width_mult}


done = by_key(out)
if args.report_only:
    for extra in args.more_logs:
        done.update(by_key(Path(extra)))
timed_records = done if args.times_from is None else by_key(Path(args.times_from))
batches: dict = {}


def measure(name: str, code: str, res: int, batch: int) -> None:
    key = (name, res, batch, code)
    if key in done:
        return
    if (res, batch) not in batches:
        batches[res, batch] = gaussian_batch(batch, res, space.num_classes, args.seed)
    start, cpu = time.perf_counter(), time.process_time()
    score = proxies.compute(name, code, space, batches[res, batch], seed=args.seed)
    # CPU time as well as wall time: on a shared machine the wall time also counts waiting.
    rec = {"proxy": name, "resolution": res, "batch": batch, "code": code, "score": score,
           "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
           "threads": os.environ["OMP_NUM_THREADS"], "repeats": proxies.default_repeats(name),
           "width_mult": args.width_mult,
           "conv": "stock" if name in proxies.STOCK_CONV else "fast"}
    append_jsonl(out, [rec])
    done[key] = rec
    print(json.dumps(rec), flush=True)


if not args.report_only:
    start = time.perf_counter()
    for code in official:
        widths = space.widths(code)
        space.flops(widths), space.params(widths)
    print(f"flops+params for all {len(official)} codes (parsing included): {time.perf_counter() - start:.2f} s")
    for name in chosen:  # one untimed warm-up per proxy (first-call set-up costs)
        proxies.compute(name, subset[0], space, gaussian_batch(2, args.cheap, space.num_classes, 0))
    # Code by code, so that a stopped run has every proxy; the larger batch after the first few.
    for i, code in enumerate(subset):
        for name in proxies.PROXIES:
            if i < counts[name]:
                for res in resolutions:
                    measure(name, code, res, args.batch)
        if i == 3 or i == len(subset) - 1:
            for timed in subset[:args.timing_codes]:
                for name in chosen:
                    for res in resolutions:
                        measure(name, timed, res, args.timing_batch)


# -- report ----------------------------------------------------------------------------------------
from track1.ranking.ensemble import parse_teacher, zscore_ensemble  # noqa: E402


def scores(name: str, res: int) -> dict[str, float]:
    if name in proxies.SEED_FREE:  # flops and params do not read the batch: one ranking
        res = space.resolution
    return {c: r["score"] for (p, rs, b, c), r in done.items() if p == name and rs == res and b == args.batch}


def seconds(name: str, res: int, batch: int, field: str = "cpu_seconds") -> float:
    """Median over the measured codes; CPU time by default (the machine may be shared)."""
    t = [r.get(field, float("nan")) for (p, rs, b, _), r in timed_records.items()
         if p == name and rs == res and b == batch]
    return float(np.median(t)) if t else float("nan")


def kendall(a: dict, b: dict) -> tuple[float, int]:
    common = [c for c in a if c in b and np.isfinite(a[c]) and np.isfinite(b[c])]
    if len(common) < 3:
        return float("nan"), len(common)
    return float(stats.kendalltau([a[c] for c in common], [b[c] for c in common])[0]), len(common)


networks = len(unique_widths(space, official))
flops = {c: float(space.flops(c)) for c in subset}
cheap, B, TB = args.cheap, args.batch, args.timing_batch
steps = args.teacher_epochs * args.teacher_images / args.teacher_batch
teacher_nets = steps * 2 * args.teacher_pairs
print(f"\n{len(official)} official codes = {networks} distinct networks at width {args.width_mult}; subset of "
      f"{args.codes} (seed {args.seed}); Gaussian batch; {os.environ['OMP_NUM_THREADS']} thread(s). Seconds: median "
      f"CPU time per code (wall time in brackets), with the proxy's default seeds (x N); 45k list = distinct networks "
      f"x CPU s at batch {B}; RD-NAS teacher = {args.teacher_epochs:g} epochs x {args.teacher_images} images / batch "
      f"{args.teacher_batch} = {steps:.0f} steps x {2 * args.teacher_pairs} new networks x CPU s at batch {B}.")
print(f"| proxy | codes | s/code 224 b{B} | 224 b{TB} | {cheap} b{B} | {cheap} b{TB} | 45k list CPU-h 224 / {cheap} "
      f"| RD-NAS teacher CPU-h 224 / {cheap} | Kendall 224 vs {cheap} | Kendall with FLOPs 224 / {cheap} |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in proxies.PROXIES:
    full, low = scores(name, space.resolution), scores(name, cheap)
    if not full and name not in chosen:
        continue
    k_res, n_res = kendall(full, low)
    k_f, n_f = kendall(full, flops)
    k_fc, _ = kendall(low, flops)
    t = {(res, b): seconds(name, res, b) for res in resolutions for b in (B, TB)}
    hours = [t[res, B] * networks / 3600 for res in resolutions]
    teacher = [t[res, B] * teacher_nets / 3600 for res in resolutions]
    seeds = proxies.default_repeats(name)
    print(f"| {name}{f' (x{seeds})' if seeds > 1 else ''} | {len(full)} | {t[224, B]:.2f} "
          f"({seconds(name, 224, B, 'seconds'):.2f}) | {t[224, TB]:.2f} | {t[cheap, B]:.2f} | {t[cheap, TB]:.2f} "
          f"| {hours[0]:.1f} / {hours[1]:.1f} | {teacher[0]:.0f} / {teacher[1]:.0f} "
          f"| {k_res:.3f} (n={n_res}) | {k_f:.3f} / {k_fc:.3f} (n={n_f}) |")

defaults = [e for e in ("snip,synflow", "snip,grad_norm,synflow,zen") if set(e.split(",")) <= set(chosen)]
for spec in args.ensemble or defaults:
    weights = parse_teacher(spec)
    member = {(n, res): scores(n, res) for n in weights for res in resolutions}
    common = [c for c in subset if all(c in m for m in member.values())]
    if len(common) < 3:
        print(f"ensemble {spec}: fewer than 3 codes with every member at both resolutions")
        continue
    ens = {res: dict(zip(common, zscore_ensemble(weights, {n: [member[n, res][c] for c in common] for n in weights})))
           for res in resolutions}
    k_res, n = kendall(ens[224], ens[cheap])
    print(f"ensemble {spec} (z-scored over these {n} codes): Kendall with FLOPs {kendall(ens[224], flops)[0]:.3f} "
          f"/ {kendall(ens[cheap], flops)[0]:.3f} (224 / {cheap} px), 224 vs {cheap} {k_res:.3f}, "
          f"with snip at 224 {kendall(ens[224], scores('snip', 224))[0]:.3f}")
print(f"\ncommand: {' '.join(sys.argv)}  (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})")

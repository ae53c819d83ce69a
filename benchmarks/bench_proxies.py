"""Cost of each zero-cost proxy per code, and of flops+params over a whole architecture list.

    .venv/bin/python benchmarks/bench_proxies.py --arch-list ../shared/data/CVPR_2022_NAS_Track1_test.json

Prints the median wall time per code of every proxy on N codes sampled from the list, at the
embedded default (width 0.25, 32 px, batch 64 of Fashion-MNIST), and the total time of flops and
params for every code of the list (parsing included).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--arch-list", default=str(Path(__file__).resolve().parents[2] / "shared/data/CVPR_2022_NAS_Track1_test.json"))
parser.add_argument("--codes", type=int, default=10, help="codes timed per proxy")
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("-o", "--override", action="append", default=[], help="config override")
args = parser.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from track1 import proxies  # noqa: E402
from track1.config import load_config  # noqa: E402
from track1.submission import load_arch_list  # noqa: E402
from track1.train import build_space  # noqa: E402

cfg = load_config(None, args.override)
space = build_space(cfg)
codes = list(load_arch_list(args.arch_list).values())

start = time.perf_counter()
for code in codes:
    widths = space.widths(code)
    space.flops(widths), space.params(widths)
total = time.perf_counter() - start
print(f"flops+params for all {len(codes)} codes of {Path(args.arch_list).name}: {total:.2f} s")

batch = proxies.proxy_batch(cfg)
sample = [codes[i] for i in np.random.default_rng(0).choice(len(codes), args.codes, replace=False)]
print(f"\nper-code cost on {args.codes} codes, width {space.width_mult}, {space.resolution} px, "
      f"batch {batch[0].shape[0]}, {args.threads} threads")
print(f"| proxy | median ms/code | min | max | 45k codes (h) |\n|---|---|---|---|---|")
for name in proxies.PROXIES:
    proxies.compute(name, sample[0], space, batch)  # warm-up
    times = []
    for code in sample:
        t = time.perf_counter()
        proxies.compute(name, code, space, batch)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(f"| {name} | {med * 1e3:.1f} | {min(times) * 1e3:.1f} | {max(times) * 1e3:.1f} | {med * 45000 / 3600:.2f} |")
print(f"\ncommand: {' '.join(sys.argv)}")

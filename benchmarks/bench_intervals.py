"""Time evaluate's bootstrap (track1.ranking.intervals) on a list the size of the official one.

    .venv/bin/python benchmarks/bench_intervals.py [--codes 45000] [--resamples 1000] [--levels 15] [--threads 1]

Synthetic codes: a Gaussian truth and a prediction correlated with it at Pearson 0.5, rounded to
--levels distinct values as the supernet's top-1 on the 45k list is (15 at 500 images: ties
everywhere). Times rank_intervals (every metric) and paired_difference (two predictions), once each.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codes", type=int, default=45000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--levels", type=int, default=15, help="distinct predicted values")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy loads its BLAS
    sys.path.insert(0, str(REPO))
    import numpy as np

    from track1.ranking.intervals import paired_difference, rank_intervals

    rng = np.random.default_rng(0)
    truth = rng.standard_normal(args.codes)
    pred = 0.5 * truth + np.sqrt(0.75) * rng.standard_normal(args.codes)
    edges = np.quantile(pred, np.linspace(0, 1, args.levels + 1)[1:-1])
    pred = np.digitize(pred, edges).astype(float)  # args.levels distinct values
    other = pred + rng.standard_normal(args.codes) * 0.1
    keys = [f"c{i}" for i in range(args.codes)]
    t, a, b = (dict(zip(keys, v.tolist())) for v in (truth, pred, other))

    print(f"command: {' '.join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv])}")
    print(f"{args.codes} codes, {len(set(pred.tolist()))} distinct predicted values, {args.resamples} resamples, "
          f"{args.threads} thread(s), load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    start = time.perf_counter()
    ci = rank_intervals(a, t, resamples=args.resamples)
    one = time.perf_counter() - start
    start = time.perf_counter()
    diff = paired_difference(a, b, t, resamples=args.resamples)
    two = time.perf_counter() - start
    print(f"rank_intervals: {one:.1f} s (kendall {ci['kendall'][0]:.3f}..{ci['kendall'][1]:.3f})")
    print(f"paired_difference: {two:.1f} s (kendall A - B {diff['kendall']['d']:+.4f} "
          f"[{diff['kendall']['interval'][0]:+.4f}, {diff['kendall']['interval'][1]:+.4f}])")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The self-agreement of score logs against their validation-image count: the table of docs/RESULTS.md (issue 23).

    .venv/bin/python benchmarks/self_agreement_table.py LOG.jsonl [LOG.jsonl ...] \
        [--list-minutes 13.85 --list-images 500 --calib-images 256]

Each LOG is a `score` log (with the per-half sums of track1.ranking.halves); logs are grouped by
their directory (one run) and list size, and ordered by image count. Per log: the split-half self-agreement (mean
and range over the 16 split-halves) and its projection to two sets of all the images, the top-1
spread over the codes, its distinct values, the median standard error of one code's top-1, the
Kendall between this ranking and the same run's smallest-count one (they share images, so it
overstates agreement), and the 45k list's scoring time estimated as linear in the images every
network sees (calibration + validation) from --list-minutes at --list-images. Then, for every
image count scored by several runs on the same codes, the Kendall between the runs' rankings.
Rankings are `submit`'s: ties in top-1 broken by loss.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from track1.files import read_jsonl  # noqa: E402
from track1.ranking.halves import self_agreement  # noqa: E402
from track1.ranking.submission import break_ties  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--list-minutes", type=float, default=13 + 51 / 60, help="45k list at --list-images (13:51)")
    p.add_argument("--list-images", type=int, default=500)
    p.add_argument("--calib-images", type=int, default=256)
    args = p.parse_args(argv)

    runs: dict[tuple, list] = defaultdict(list)
    for path in map(Path, args.logs):
        records = {r["key"]: r for r in read_jsonl(path)}
        images = next(iter(records.values())).get("images")
        runs[(path.parent.parent.name, len(records))].append((images, path, records))
    print(f"command: {' '.join(sys.argv)}")
    print("| run | codes | val_images | split-half [range] | N vs N | top-1 std | distinct top-1 "
          "| median acc_se | Kendall with the smallest count | 45k list (estimated) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for (run, _), logs in runs.items():
        logs.sort(key=lambda item: item[0])
        first = None
        for images, path, records in logs:
            a = self_agreement(records.values())
            accs = np.array([r["acc"] for r in records.values()])
            ranking = break_ties({k: r["acc"] for k, r in records.items()}, {k: r["loss"] for k, r in records.items()})
            keys = sorted(ranking)
            with_first = (stats.kendalltau([ranking[k] for k in keys], [first[k] for k in keys])[0]
                          if first is not None else float("nan"))
            first = ranking if first is None else first
            minutes = args.list_minutes * (args.calib_images + images) / (args.calib_images + args.list_images)
            print(f"| {run} | {len(records)} | {images} | {a['half']:.3f} [{a['half_min']:.3f}, "
                  f"{a['half_max']:.3f}] | {a['full']:.3f} | {accs.std():.4f} "
                  f"| {len(set(accs.tolist()))} | {np.median([r['acc_se'] for r in records.values()]):.4f} "
                  f"| {with_first:.3f} | {minutes:.0f} min |")
    by_count: dict[tuple, list] = defaultdict(list)  # (codes, images) -> (run, ranking)
    for (run, _), logs in runs.items():
        for images, _, records in logs:
            ranking = break_ties({k: r["acc"] for k, r in records.items()}, {k: r["loss"] for k, r in records.items()})
            by_count[(tuple(sorted(records)), images)].append((run, ranking))
    for (keys, images), rankings in by_count.items():
        for i, (run_a, a) in enumerate(rankings):
            for run_b, b in rankings[i + 1:]:
                tau = stats.kendalltau([a[k] for k in keys], [b[k] for k in keys])[0]
                print(f"{len(keys)} codes, {images} images: {run_a} vs {run_b} ranking Kendall {tau:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

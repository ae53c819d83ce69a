"""Peak memory of a training run whose epoch ends with the health check, against the image counts.

    .venv/bin/python benchmarks/bench_eval_memory.py [--counts 64:32,320:160] [--ref REV]

Writes a synthetic 2-class image folder (PNG, 64 px, decoded and resized to 224 like ImageNet),
then runs `python -m track1 train -c configs/imagenet.yaml` (width 1.0, 224 px) for one epoch of
--train-images images at batch 32, AMP off, `train.eval_subnets=0`, once per (calibration,
validation) image count, each in a fresh process, and prints the process's peak RSS. A check whose
memory is bounded by a batch gives the same peak for every count. `--ref REV` runs the same at a
git revision (e.g. the commit before the bound) in the same invocation.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, train: int, val: int, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            cls = f"c{i % 2}"
            path = root / split / cls / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def peak_rss_gb(tree: Path, data: Path, out: Path, calib: int, val: int, args) -> tuple[float, float]:
    """(peak RSS in GB, wall seconds) of one training run in a child process."""
    cmd = [sys.executable, "-m", "track1", "train", "-c", str(tree / "configs" / "imagenet.yaml"),
           "-o", f"data.root={data}", "-o", "space.num_classes=2", "-o", "data.batch_size=32",
           "-o", "data.num_workers=0", "-o", f"data.train_size={args.train_images}",
           "-o", "train.epochs=1", "-o", "train.eval_subnets=0", "-o", "train.amp=off",
           "-o", "train.visualdl=false", "-o", f"score.calib_images={calib}",
           "-o", f"train.eval_images={val}", "-o", f"run.output_dir={out}",
           "-o", f"run.name=c{calib}v{val}", *sum((["-o", o] for o in args.override), [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    # A wrapper process per run: RUSAGE_CHILDREN is the largest child's peak over a process's life.
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, cwd=tree, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return int(done.stdout.split()[-1]) / 1024 ** 2, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="64:32,320:160", help="calibration:validation image counts")
    p.add_argument("--train-images", type=int, default=320,
                   help="training images (an epoch; calibration images come from these)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ref", default=None, help="also run at this git revision")
    p.add_argument("-o", "--override", action="append", default=[], help="more config overrides")
    args = p.parse_args()
    counts = [tuple(int(v) for v in c.split(":")) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_folder(tmp / "data", args.train_images, max(v for _, v in counts))
        trees = {"current": ROOT}
        if args.ref:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref], check=True,
                                     capture_output=True).stdout
            (tmp / "ref").mkdir()
            subprocess.run(["tar", "-x", "-C", str(tmp / "ref")], input=archive, check=True)
            trees[args.ref] = tmp / "ref"
        print(f"configs/imagenet.yaml (width 1.0, 224 px), 2-class synthetic folder, "
              f"{args.train_images} training images, batch 32, 1 epoch, {args.threads} threads")
        for name, tree in trees.items():
            for calib, val in counts:
                gb, seconds = peak_rss_gb(tree, tmp / "data", tmp / "out" / name, calib, val, args)
                print(f"{name:>10}: {calib:5d} calibration + {val:5d} validation images: "
                      f"peak RSS {gb:5.2f} GB ({seconds:.0f} s)", flush=True)
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()

"""Input pipeline: memory of the scoring sets, their per-pass conversion cost, and the start of an
epoch with persistent DataLoader workers against a fresh loader per epoch.

    .venv/bin/python benchmarks/bench_data.py [--threads 1] [--rounds 3] [--workers 2]

1. Scoring sets (calibration_batches + validation_batches) of the default config on Fashion-MNIST:
   bytes held as uint8 on the host now, against the float32 tensors a list of them held before;
   and the same for configs/imagenet.yaml, computed from its sizes (no ImageNet here).
2. One pass over those sets (the per-batch uint8 -> float conversion) against one forward pass of
   the largest subnet over the same images, so the conversion is seen relative to the scoring work.
3. Folder data (generated JPEGs) with data.num_workers workers: seconds to the first batch of each
   epoch and TrainData.wait_seconds per epoch for three ways of feeding consecutive epochs:
   TrainData's one stream of batches over all epochs (its workers and prefetch queue carry over),
   Paddle's persistent_workers (workers kept, queue drained and refilled each epoch) and a new
   DataLoader per epoch (what the code did before); interleaved rounds, medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--images", type=int, default=256, help="generated folder images")
args = parser.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from PIL import Image  # noqa: E402

from track1.pipeline.config import load_config  # noqa: E402
from track1.data import EpochBatchSampler, TrainData, calibration_batches, validation_batches  # noqa: E402
from track1.data.images import ImageDataset, collate, image_samples  # noqa: E402
from track1.network.build import build_supernet  # noqa: E402

# 1. memory
cfg = load_config(None, [f"data.root={REPO / 'data' / 'fashion-mnist'}"])
calib, val = calibration_batches(cfg), validation_batches(cfg)
held_uint8 = calib._set._images.nbytes + val._images.nbytes + val._labels.nbytes
as_list = sum(x.numel().item() * 4 for x in calib) + sum(x.numel().item() * 4 + y.numel().item() * 8 for x, y in val)
print(f"default scoring sets ({cfg['score']['calib_images']} + {cfg['score']['val_images']} images): "
      f"uint8 on host {held_uint8 / 2**20:.1f} MiB (Fashion-MNIST: 1 channel) vs float32 list "
      f"{as_list / 2**20:.1f} MiB")
im = load_config(REPO / "configs" / "imagenet.yaml")
n = im["score"]["calib_images"] + im["score"]["val_images"]
px = 3 * im["space"]["resolution"] ** 2
peak_batch = max(im["score"]["calib_batch"], im["score"]["eval_batch"]) * px * 4
print(f"imagenet.yaml scoring sets ({n} images at {im['space']['resolution']} px): float32 list "
      f"{n * px * 4 / 1e9:.2f} GB on the device -> uint8 {n * px / 1e9:.2f} GB on the host, "
      f"{peak_batch / 1e6:.0f} MB of floats per batch on the device")

# 2. conversion per pass vs one forward pass
paddle.seed(0)
space, model = build_supernet(cfg)
model.eval()
conv, fwd = [], []
for _ in range(args.rounds):
    start = time.perf_counter()
    xs = list(calib) + [x for x, _ in val]
    conv.append(time.perf_counter() - start)
    start = time.perf_counter()
    with paddle.no_grad():
        for x in xs:
            model(x, space.max_widths)
    fwd.append(time.perf_counter() - start)
print(f"one pass over the sets: conversion {statistics.median(conv) * 1e3:.1f} ms, largest-subnet "
      f"forward {statistics.median(fwd) * 1e3:.1f} ms (median of {args.rounds}, {args.threads} thread(s))")

# 3. persistent workers
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    rng = np.random.default_rng(0)
    for split, count in (("train", args.images), ("val", 8)):
        for i in range(count):
            path = root / split / f"c{i % 4}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(path, quality=90)
    fcfg = load_config(None, [f"data.root={root}", "data.name=folder", "space.num_classes=4",
                              "space.resolution=64", "data.batch_size=32", "data.augment=true",
                              f"data.num_workers={args.workers}"])
    workers = args.workers
    ds = ImageDataset(image_samples(fcfg, "train"), 64, augment=True, seed=0)
    persistent_sampler = EpochBatchSampler(args.images, 32, 0, 1, 0, 0)
    persistent = paddle.io.DataLoader(ds, batch_sampler=persistent_sampler, collate_fn=collate,
                                      num_workers=workers, persistent_workers=True)

    def paddle_persistent(epoch):
        persistent_sampler.epoch = epoch
        yield from persistent

    def fresh(epoch):
        yield from paddle.io.DataLoader(ds, batch_sampler=EpochBatchSampler(args.images, 32, 0, 1, 0, epoch),
                                        collate_fn=collate, num_workers=workers)

    stream = TrainData(fcfg)
    ways = {"one stream (TrainData)": stream.batches, "persistent_workers": paddle_persistent,
            "new loader per epoch": fresh}
    first = {how: [] for how in ways}
    total = {how: [] for how in ways}
    for epoch in range(args.rounds + 1):
        for how, batches_of in ways.items():
            start = time.perf_counter()
            batches = batches_of(epoch)
            next(batches)
            t_first = time.perf_counter() - start
            for _ in batches:
                time.sleep(0.01)  # a training step, during which workers can prefetch
            if epoch > 0:  # epoch 0 starts workers in every way
                first[how].append(t_first)
                total[how].append(time.perf_counter() - start)
    for how in ways:
        print(f"folder data, {workers} workers, {args.images} images at 64 px, {how:23s}: first batch "
              f"of an epoch {statistics.median(first[how]) * 1e3:4.0f} ms, epoch "
              f"{statistics.median(total[how]):.2f} s (median of {args.rounds} epochs after the first)")

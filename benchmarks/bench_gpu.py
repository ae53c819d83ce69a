"""What a GPU user runs first: training throughput, data wait, peak memory and the wall time of imagenet.yaml.

    .venv/bin/python benchmarks/bench_gpu.py                      # on one GPU, random data
    .venv/bin/python benchmarks/bench_gpu.py --data-root /data/ILSVRC2012   # the real input pipeline
    .venv/bin/python benchmarks/bench_gpu.py --tiny --threads 1   # CPU smoke run (what the tests run)

For each preset at the ImageNet config (configs/imagenet.yaml with the preset's sampler, ranking
and Cream settings) and each AMP mode, runs the real train_step + optimizer step in one process and
reports images/s per GPU, the fraction of the time spent waiting for the next batch and the peak
device memory (the memory one rank of an NPROC run needs; the all-reduce of a multi-GPU run is not
included). Then it extrapolates the wall time of `NPROC=N bash run.sh --config configs/imagenet.yaml`:
training, epoch-end evaluations, and scoring the 45,000 official codes in per_code mode.

This script has NOT run on a GPU: the development machines have none. On CPU, Paddle ignores
autocast, so the AMP rows equal the fp32 ones there; --tiny exists so that the script is tested.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGENET_TRAIN_IMAGES = 1_281_167
OFFICIAL_CODES = 45_000

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--presets", default="imagenet,sandwich,spos,rdnas,cream",
                    help="imagenet = configs/imagenet.yaml as it is; others take their training settings "
                         "from configs/<name>.yaml")
parser.add_argument("--amp", default="off,fp16", help="modes to compare: off, bf16, fp16")
parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotune, allocator)")
parser.add_argument("--nproc", type=int, default=8, help="GPUs of the run whose wall time is estimated")
parser.add_argument("--data-root", default="", help="ImageNet folder: time the real loader instead of random data")
parser.add_argument("--tiny", action="store_true", help="width 0.125, 32 px, batch 4: a CPU smoke run")
parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
parser.add_argument("--json", default="", help="also write the results here")
parser.add_argument("-o", "--override", action="append", default=[], help="config override for every row")
args = parser.parse_args()
if args.threads:
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from track1.methods.sampling import step_subnets  # noqa: E402
from track1.network.build import build_supernet  # noqa: E402
from track1.pipeline.config import load_config, set_value  # noqa: E402
from track1.pipeline.trainer import Trainer  # noqa: E402
from track1.ranking.evaluate import calibrate_bn, evaluate  # noqa: E402

CUDA = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
TINY = ["space.width_mult=0.125", "space.resolution=32", "data.batch_size=4", "score.eval_batch=4"]


def preset_config(name: str) -> dict:
    overrides = (TINY if args.tiny else []) + args.override
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    cfg = load_config(REPO / "configs" / "imagenet.yaml", overrides)
    if name != "imagenet":
        preset = load_config(REPO / "configs" / f"{name}.yaml")["train"]
        for key in ("sampler", "num_random", "ranking", "cream"):
            cfg["train"][key] = preset[key]
    return cfg


def batches(cfg: dict):
    """Training batches: the real loader with --data-root, else one random uint8 batch that is
    uploaded and normalised every step (the host-to-device part of the real pipeline)."""
    if args.data_root:
        from track1.data import TrainData
        data = TrainData(cfg)
        epoch = 0
        while True:
            yield from data.batches(epoch)
            epoch += 1
    b, res = cfg["data"]["batch_size"], cfg["space"]["resolution"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, 3, res, res), dtype=np.uint8)
    labels = rng.integers(0, cfg["space"]["num_classes"], b).astype("int64")
    mean = paddle.to_tensor(np.array([123.7, 116.3, 103.5], "float32").reshape(1, 3, 1, 1))
    std = paddle.to_tensor(np.array([58.4, 57.1, 57.4], "float32").reshape(1, 3, 1, 1))
    while True:
        yield (paddle.to_tensor(images).astype("float32") - mean) / std, paddle.to_tensor(labels)


def synchronize() -> None:
    if CUDA:
        paddle.device.synchronize()


def peak_memory_mb() -> float:
    if CUDA:
        return paddle.device.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: the process's peak RSS


def train_row(cfg: dict) -> dict:
    """Time the training step of cfg as the training loop runs it (one process, no DataParallel)."""
    total = args.warmup + args.steps
    # One epoch of `total` steps: fractions of the run (Cream's warm-up) fall inside the timed steps.
    trainer = Trainer(set_value(cfg, "train.epochs", 1), steps_per_epoch=total)
    source = batches(cfg)
    if CUDA:
        paddle.device.cuda.reset_max_memory_allocated()
    for step in range(total):
        if step == args.warmup:
            synchronize()
            started, waited = time.perf_counter(), 0.0
        tic = time.perf_counter()
        x, y = next(source)
        if step >= args.warmup:
            waited += time.perf_counter() - tic
        scalars = trainer.step(x, y, step, read=step == total - 1)
    synchronize()
    seconds = time.perf_counter() - started
    batch = x.shape[0]
    return {"images_per_s": args.steps * batch / seconds, "step_s": seconds / args.steps,
            "data_wait": waited / seconds, "peak_mem_mb": peak_memory_mb(),
            "loss": scalars["loss/total"]}


@paddle.no_grad()
def forward_rate(cfg: dict, rounds: int = 3) -> float:
    """Images/s of scoring (BN calibration + evaluation forwards, fp32) on random subnets."""
    space, model = build_supernet(cfg)
    b, res = cfg["score"]["eval_batch"], cfg["space"]["resolution"]
    x = paddle.randn([b, 3, res, res])
    y = paddle.randint(0, cfg["space"]["num_classes"], [b], dtype="int64")
    widths = [space.widths(step_subnets(space, "spos", 0, 0, i)[0][1]) for i in range(rounds + 1)]
    calibrate_bn(model, widths[0], [x])  # warm-up
    synchronize()
    started = time.perf_counter()
    for w in widths[1:]:
        calibrate_bn(model, w, [x])
        evaluate(model, w, [(x, y)])
    synchronize()
    return 2 * rounds * b / (time.perf_counter() - started)


def wall_time(cfg: dict, step_s: float, fwd_rate: float) -> dict:
    """Hours of `NPROC=N bash run.sh --config configs/imagenet.yaml` from the measured rates."""
    t, s, n = cfg["train"], cfg["score"], args.nproc
    steps = t["epochs"] * (IMAGENET_TRAIN_IMAGES // (cfg["data"]["batch_size"] * n))
    evals = t["epochs"] * 2 * (s["calib_images"] + t["eval_images"] / n) / fwd_rate
    score = OFFICIAL_CODES / n * (s["calib_images"] + s["val_images"]) / fwd_rate
    return {"nproc": n, "train_steps": steps, "train_h": steps * step_s / 3600,
            "epoch_eval_h": evals / 3600, "score_h": score / 3600,
            "total_h": (steps * step_s + evals + score) / 3600}


def main() -> None:
    build = f"CUDA {paddle.version.cuda()}" if paddle.is_compiled_with_cuda() else "CPU"
    print(f"# Paddle {paddle.__version__} ({build} build), device {paddle.device.get_device()}, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'all')}, data {'real: ' + args.data_root if args.data_root else 'random'}"
          f"{', TINY sizes' if args.tiny else ''}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    rows = []
    for name in args.presets.split(","):
        for amp in args.amp.split(","):
            cfg = preset_config(name)
            cfg["train"]["amp"] = amp
            try:
                row = {"preset": name, "amp": amp, **train_row(cfg)}
            except Exception as e:  # one preset's failure must not hide the others' numbers
                row = {"preset": name, "amp": amp, "error": f"{type(e).__name__}: {e}"}
            rows.append(row)
            if "error" in row:
                print(f"{name:9s} amp {amp:4s}  FAILED {row['error']}")
            else:
                print(f"{name:9s} amp {amp:4s}  {row['images_per_s']:8.1f} images/s per "
                      f"{'GPU' if CUDA else 'process'}  step {row['step_s'] * 1000:8.1f} ms  "
                      f"data wait {row['data_wait']:5.1%}  peak memory {row['peak_mem_mb']:8.0f} MiB"
                      f"{'' if CUDA else ' (process RSS)'}")
    cfg = preset_config("imagenet")
    # The estimate uses imagenet.yaml's own AMP mode when it was measured, else another row's.
    own = sorted((r for r in rows if r["preset"] == "imagenet" and "error" not in r),
                 key=lambda r: r["amp"] != cfg["train"]["amp"])
    estimate = None
    if own:
        rate = forward_rate(cfg)
        estimate = {"amp": own[0]["amp"], "scoring_images_per_s": rate,
                    **wall_time(cfg, own[0]["step_s"], rate)}
        print(f"imagenet.yaml on {estimate['nproc']} {'GPUs' if CUDA else 'processes'} "
              f"(amp {own[0]['amp']}, data wait excluded unless --data-root): "
              f"train {estimate['train_h']:.1f} h ({estimate['train_steps']} steps) + epoch-end "
              f"evaluation {estimate['epoch_eval_h']:.1f} h + scoring 45,000 codes "
              f"{estimate['score_h']:.1f} h = {estimate['total_h']:.1f} h"
              f"{'  (tiny CPU sizes: not a real estimate)' if args.tiny or not CUDA else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cuda": CUDA, "tiny": args.tiny, "rows": rows,
                                               "estimate": estimate}, indent=1))


if __name__ == "__main__":
    main()

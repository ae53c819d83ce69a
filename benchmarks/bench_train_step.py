"""Training step cost by method: SPOS, sandwich, and sandwich + ranking distillation (RD-NAS).

    .venv/bin/python benchmarks/bench_train_step.py [--batch 128] [--steps 10] [--threads 2]

Runs the real train_step + optimizer step of each method side by side (interleaved rounds after
a warm-up) on the embedded default supernet and prints the median ms per step and the ratio to
the sandwich step. The issue's target: the ranking-distillation step at most 1.5x a sandwich step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--steps", type=int, default=8, help="steps per method per round")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("-o", "--override", action="append", default=[], help="config override")
args = parser.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from track1.config import load_config, set_value  # noqa: E402
from track1.data import TrainData  # noqa: E402
from track1.sampling import MarginSampler, step_subnets  # noqa: E402
from track1.train import Teacher, build_optimizer, build_supernet, train_step  # noqa: E402

base = load_config(None, [f"data.batch_size={args.batch}", "train.num_random=2", *args.override])
methods = {
    "spos": set_value(base, "train.sampler", "spos"),
    "sandwich": base,
    "rdnas (flops teacher, 2 pairs)": set_value(base, "train.ranking.enabled", True),
}
space, model = build_supernet(base)
opt, _ = build_optimizer(base, model, 1000, 100)
x, y = next(iter(TrainData(base).batches(0)))
sampler = MarginSampler(space)
teacher = Teacher(methods["rdnas (flops teacher, 2 pairs)"], space)


def one_step(cfg: dict, step: int) -> None:
    t = cfg["train"]
    subnets = step_subnets(space, t["sampler"], int(t["num_random"]), 0, step)
    pairs = []
    if t["ranking"]["enabled"]:
        firsts = [a for role, a in subnets if role == "random"][:2]
        pairs = [(a, b, d) for a, (b, d) in zip(firsts, sampler.partners(firsts, 0, step))]
    train_step(model, space, subnets, x, y, cfg, pairs, teacher, 1.0)
    opt.step()
    opt.clear_grad(set_to_zero=False)


times = {name: [] for name in methods}
for name, cfg in methods.items():
    one_step(cfg, 0)  # warm-up
for r in range(args.rounds):
    for name, cfg in methods.items():
        start = time.perf_counter()
        for s in range(args.steps):
            one_step(cfg, 1 + r * args.steps + s)  # same subnets for every method
        times[name].append((time.perf_counter() - start) / args.steps)

print(f"train step, width {space.width_mult}, {space.resolution} px, batch {args.batch}, "
      f"{args.threads} threads, median of {args.rounds} rounds x {args.steps} steps")
print("| method | ms/step | images/s | vs sandwich |\n|---|---|---|---|")
ref = float(np.median(times["sandwich"]))
for name, ts in times.items():
    med = float(np.median(ts))
    print(f"| {name} | {med * 1e3:.0f} | {args.batch / med:.0f} | {med / ref:.2f}x |")
print(f"margin sampler acceptance rate: {sampler.acceptance_rate:.2f}")
print(f"\ncommand: {' '.join(sys.argv)}")

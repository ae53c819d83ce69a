"""Training step cost by method, optionally against another revision of the code, side by side.

    .venv/bin/python benchmarks/bench_train_step.py [--batch N] [--threads 1[,2]] [--ref e48d1bf] [--methods "default (,cream_authors"]

Each (code tree, method) runs in a worker process of its own (the tree's track1 imported, the
thread count set before paddle is imported) holding its supernet and optimizer; the workers take
turns, `--steps` real train_step + optimizer steps each per round, after a warm-up, so that all of
them see the same machine conditions. Every worker uses the same subnets for the same step number
(sampling is a function of seed and step) and random input of the default's shape. Prints the median
ms per step, images/s and the ratio to the current tree's default step. `--ref REV` adds the
methods that REV's code supports, from `git archive REV` (for example the commit before the
official sub-space, whose sampler drew every conv's width independently). `--threads 1,2` runs
every worker once per thread count, all interleaved, and adds the 2-over-1 speed-up: on a shared
VM the second core comes and goes, and interleaving exposes both counts to the same conditions.
Between two workers' turns the script pauses (`--pause`): a multi-threaded worker's idle OpenMP
threads keep spinning for a while after its turn (Paddle's wheel brings Intel's OpenMP, whose
default KMP_BLOCKTIME is 200 ms) and would take a core from the next worker.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = "_config="  # an override list may start with _config=<preset file>: that preset, not the default
# name -> overrides of the default config (or of a preset)
METHODS = {
    "default (sandwich, 1 random)": [],
    "default, stock conv": ["train.conv=stock"],
    "sandwich, 2 random": ["train.num_random=2"],
    "spos": ["train.sampler=spos"],
    "rdnas partners (2 random + 2 partners)": ["train.num_random=2", "train.ranking.enabled=true"],
    "rdnas extra (authors: 2 random + 2 pairs of extra)": [
        "train.num_random=2", "train.ranking.enabled=true", "train.ranking.pair_mode=extra",
        "train.ranking.loss=second_only", "train.ranking.reduce=sum", "train.ranking.threshold=0"],
    "rdnas free (2 random, pairs among them)": [
        "train.num_random=2", "train.ranking.enabled=true", "train.ranking.pair_mode=free"],
    # The teacher's weights are random here (the file is only read when a run starts): the cost is the same.
    "frozen-teacher distillation": ["train.distill.enabled=true", "train.distill.teacher=unused.pdparams"],
    "largest alone (the pretrain stage)": ["train.sampler=largest"],
    "biased: the 1st place's top_of 400": ["train.bias.rule=top_of"],
    "biased: tilt, temperature 1": ["train.bias.rule=tilt"],
    # The authors' presets. Cream's warm-up is cut to 0 so that the steps timed are Cream's own (its
    # board fills in the first 10 steps); its matcher update runs on 0.5% of the steps, so its
    # amortised cost is (the second row - the first) / 200.
    "rdnas_authors preset": [PRESET + "configs/rdnas_authors.yaml"],
    "cream_authors preset (warm-up 0)": [PRESET + "configs/cream_authors.yaml", "train.cream.warmup=0.0"],
    "cream_authors, matcher update every step": [PRESET + "configs/cream_authors.yaml", "train.cream.warmup=0.0",
                                                 "train.cream.meta_every_steps=1"],
}


def worker(root: str, overrides: list[str]) -> None:
    """Runs in a subprocess: reads 'N' lines, runs N steps, answers the seconds they took."""
    sys.path.insert(0, root)
    import numpy as np
    import paddle

    try:  # a tree with track1.pipeline.trainer: the step the training loop runs
        from track1.pipeline.config import load_config
        from track1.pipeline.trainer import Trainer
    except ImportError:
        Trainer = None
        from track1.config import load_config

    preset = next((o[len(PRESET):] for o in overrides if o.startswith(PRESET)), None)
    cfg = load_config(Path(root) / preset if preset else None, [o for o in overrides if not o.startswith(PRESET)])
    batch, res = cfg["data"]["batch_size"], cfg["space"]["resolution"]
    x = paddle.randn([batch, 3, res, res])
    y = paddle.to_tensor(np.random.default_rng(0).integers(0, 10, batch), dtype="int64")
    step = 0
    if Trainer is not None:
        trainer = Trainer(cfg, steps_per_epoch=100)
        ranking = next((m for m in trainer.methods if m.name == "ranking"), None)
        sampler = ranking.sampler if ranking is not None else None

        def one_step() -> None:
            trainer.step(x, y, step, read=False)
    else:  # a tree from before it (flat track1/ modules)
        from track1 import sampling
        from track1 import train as train_mod
        from track1.train import Teacher, build_optimizer, build_supernet, train_step
        r = cfg["train"]["ranking"]
        space, model = build_supernet(cfg)
        opt, _ = build_optimizer(cfg, model, 1000, 100)
        sampler = sampling.MarginSampler(space, r["distance"], float(r["threshold"])) if r["enabled"] else None
        teacher = Teacher(cfg, space)

        def one_step() -> None:
            subnets, pairs = train_mod.plan_step(space, cfg, sampler, step)
            model.train()
            train_step(model, space, subnets, x, y, cfg, pairs, teacher, 1.0)
            opt.step()
            opt.clear_grad(set_to_zero=False)

    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        start = time.perf_counter()
        for _ in range(n):
            one_step()
            step += 1
        print(json.dumps({"seconds": time.perf_counter() - start,
                          "acceptance": sampler.acceptance_rate if sampler is not None else None}), flush=True)


def supports(root: Path, overrides: list[str]) -> bool:
    """Whether a tree's default config has every key the method sets, and its ranking pair modes
    (with a preset: whether the tree has it and every key it and the method set)."""
    import yaml
    cfg = yaml.safe_load((root / "configs" / "default.yaml").read_text())
    if overrides and overrides[0].startswith(PRESET):
        preset = root / overrides[0][len(PRESET):]
        if not preset.exists():
            return False
        keys, node = [], yaml.safe_load(preset.read_text())
        stack = [("", node)]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                if k == "_base_":
                    continue
                if isinstance(v, dict):
                    stack.append((f"{prefix}{k}.", v))
                else:
                    keys.append(f"{prefix}{k}=")
        overrides = keys + overrides[1:]
    for override in overrides:
        node = cfg
        for key in override.split("=")[0].split("."):
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
    return not any("pair_mode" in o for o in overrides) or "pair_mode" in cfg["train"]["ranking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default: the default config's data.batch_size)")
    parser.add_argument("--steps", type=int, default=5, help="steps per worker per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", default="1", help="thread count, or a comma list of them")
    parser.add_argument("--ref", default=None, help="also run the methods of this git revision")
    parser.add_argument("--pause", type=float, default=None,
                        help="seconds between workers' turns (default: 0.3 with several threads, else 0)")
    parser.add_argument("--methods", default=None, help="comma-separated substrings of method names")
    parser.add_argument("-o", "--override", action="append", default=[], help="config override")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1:])
    if args.batch is None:
        import yaml
        args.batch = int(yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["data"]["batch_size"])

    trees = {"current": ROOT}
    tmp = None
    if args.ref:
        tmp = tempfile.TemporaryDirectory()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp.name)
        trees[args.ref] = Path(tmp.name)
    thread_counts = [int(t) for t in str(args.threads).split(",")]
    workers = {}
    for tree, root in trees.items():
        for name, overrides in METHODS.items():
            if args.methods and not any(m in name for m in args.methods.split(",")):
                continue
            if not supports(root, overrides):
                continue
            for threads in thread_counts:
                cmd = [sys.executable, __file__, "--worker", str(root),
                       f"data.batch_size={args.batch}", *overrides, *args.override]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=root)
                assert proc.stdout.readline().strip() == "ready", f"worker {tree}/{name} failed"
                workers[(tree, name, threads)] = proc

    def run(proc, n: int) -> dict | None:
        proc.stdin.write(f"{n}\n")
        proc.stdin.flush()
        reply = proc.stdout.readline()
        return json.loads(reply) if reply else None  # None: the worker died (a method its tree lacks)

    for key, proc in list(workers.items()):
        if run(proc, 1) is None:  # warm-up
            print(f"skipped {key[0]} / {key[1]}: its worker failed (a setting that code does not have?)")
            del workers[key]
    times = {key: [] for key in workers}
    last = {}
    pause = args.pause if args.pause is not None else (0.3 if max(thread_counts) > 1 else 0.0)
    for _ in range(args.rounds):
        for key, proc in workers.items():
            time.sleep(pause)
            last[key] = run(proc, args.steps)
            times[key].append(last[key]["seconds"] / args.steps)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()

    import numpy as np
    print(f"train step, default config (width 0.25, 32 px) at batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.rounds} rounds x {args.steps} steps per "
          f"worker, workers interleaved; random input")
    print("| code | method | threads | ms/step | images/s | vs current default | margin acceptance |")
    print("|---|---|---|---|---|---|---|")
    med = {key: float(np.median(ts)) for key, ts in times.items()}
    for (tree, name, threads), m in med.items():
        ref = med.get(("current", "default (sandwich, 1 random)", threads))
        ratio = f"{m / ref:.2f}x" if ref else "-"
        acc = last[(tree, name, threads)]["acceptance"]
        print(f"| {tree} | {name} | {threads} | {m * 1e3:.0f} | {args.batch / m:.0f} | {ratio} | "
              f"{'-' if acc is None else f'{acc:.2f}'} |")
    if len(thread_counts) > 1:
        one, many = thread_counts[0], thread_counts[-1]
        print(f"\n{many} threads over {one} (median over rounds of the per-round ratio):")
        for (tree, name, threads) in med:
            if threads == one and (tree, name, many) in times:
                ratios = [a / b for a, b in zip(times[(tree, name, one)], times[(tree, name, many)])]
                print(f"  {tree} | {name}: {float(np.median(ratios)):.2f}x "
                      f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"\ncommand: {' '.join(sys.argv)}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

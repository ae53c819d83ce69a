"""Time track1.network.conv against Paddle's stock conv2d: per conv shape, and whole training steps.

Per shape (the convs of the width-0.25 32 px network): forward, and forward + backward (input and
weight gradients), for stock F.conv2d and the fast mode (oneDNN), interleaved round by round,
medians reported, with the oneDNN kernels chosen.
Steps: a sandwich step of the supernet (largest + smallest + one random subnet, forward +
cross-entropy + backward + momentum update) at batch 64 and 256, and the static ResNet of one
official code at batch 256, with train.conv stock and fast, interleaved; built as train and
standalone build them (fuse_bn: with fast, each conv + BN (+ ReLU) is one oneDNN node; `--no-fuse`
times the oneDNN conv alone). Each thread count runs in
its own subprocess with OMP_NUM_THREADS set before paddle is imported.

    .venv/bin/python benchmarks/bench_conv.py [--threads 1,2] [--rounds N] [--part shapes,steps]

Targets (issue 11): the step at 1 thread >= 3x faster with fast than with stock; 2 threads >= 1.5x
faster than 1 thread. Time it on a quiet machine: other processes make absolute ms meaningless
(the interleaved ratios less so).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_ARCH1 = "1252233313000000223212122253130000000000006515000000"  # the official list's arch1
# (name, in, out, map, kernel, stride, padding) at width 0.25, 32 px.
SHAPES = [
    ("stem 7x7/2", 3, 16, 32, 7, 2, 3),
    ("s1 3x3 8x8", 16, 16, 8, 3, 1, 1),
    ("s2 3x3/2 8x8", 16, 32, 8, 3, 2, 1),
    ("s2 1x1/2 8x8", 16, 32, 8, 1, 2, 0),
    ("s2 3x3 4x4", 32, 32, 4, 3, 1, 1),
    ("s3 3x3/2 4x4", 32, 64, 4, 3, 2, 1),
    ("s3 1x1/2 4x4", 32, 64, 4, 1, 2, 0),
    ("s3 3x3 2x2", 64, 64, 2, 3, 1, 1),
    ("s4 3x3/2 2x2", 64, 128, 2, 3, 2, 1),
    ("s4 1x1/2 2x2", 64, 128, 2, 1, 2, 0),
    ("s4 3x3 1x1", 128, 128, 1, 3, 1, 1),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma list of thread counts, one subprocess each")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds (median reported)")
    p.add_argument("--part", default="shapes,steps", help="comma list: shapes, steps")
    p.add_argument("--batches", default="64,256", help="batch sizes of the per-shape and supernet parts")
    p.add_argument("--no-fuse", action="store_true",
                   help="steps: the oneDNN conv without the fused conv + BN node")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _median_rounds(funcs: dict, rounds: int, reps: int) -> dict:
    """Interleaved rounds: each function runs `reps` times per round; median ms per call."""
    times = {name: [] for name in funcs}
    for f in funcs.values():
        f()  # warm-up
    for _ in range(rounds):
        for name, f in funcs.items():
            start = time.perf_counter()
            for _ in range(reps):
                f()
            times[name].append((time.perf_counter() - start) / reps * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_shapes(args, paddle, F, conv) -> None:
    import numpy as np

    from track1.network import onednn
    from track1.space import conv_out
    rng = np.random.default_rng(0)
    print(f"{'shape':<14} {'N':>4} | stock: fwd   f+b | fast: fwd   f+b | f+b x | oneDNN kernels")
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, c, o, h, k, s, p in SHAPES:
            x = paddle.to_tensor(rng.standard_normal((batch, c, h, h)).astype("float32"))
            w = paddle.to_tensor(rng.standard_normal((o, c, k, k)).astype("float32") * 0.1)
            x.stop_gradient = w.stop_gradient = False
            ho = conv_out(h, k, s, p)
            dy = paddle.to_tensor(rng.standard_normal((batch, o, ho, ho)).astype("float32"))
            funcs = {}
            for mode in conv.MODES:
                f = (lambda x, w, mode=mode: conv.conv2d(x, w, s, p, mode))
                funcs[mode + " fwd"] = lambda f=f: f(x, w)
                funcs[mode + " f+b"] = lambda f=f: paddle.grad([f(x, w)], [x, w], [dy])
            t = _median_rounds(funcs, args.rounds, 3)
            kernels = ",".join(sorted(set(onednn.plan(x.shape, w.shape, s, p).impl_names())))
            print(f"{name:<14} {batch:>4} | {t['stock fwd']:6.2f} {t['stock f+b']:6.2f} | "
                  f"{t['fast fwd']:6.2f} {t['fast f+b']:6.2f} | "
                  f"{t['stock f+b'] / t['fast f+b']:5.1f} | {kernels}", flush=True)


def bench_steps(args, paddle, F) -> dict:
    import numpy as np

    from track1.space import SearchSpace
    from track1.network.resnet import ResNet
    from track1.network.supernet import SuperNet

    space = SearchSpace(width_mult=0.25, resolution=32, num_classes=10)
    code = OFFICIAL_ARCH1
    rng = np.random.default_rng(0)
    widths = [space.widths(a) for a in
              (space.largest(), space.smallest(), space.sample(np.random.default_rng(1)))]
    funcs = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        x = paddle.to_tensor(rng.standard_normal((batch, 3, 32, 32)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, 10, size=(batch,)).astype("int64"))
        for mode in ("stock", "fast"):
            paddle.seed(0)
            net = SuperNet(space, conv=mode, fuse_bn=not args.no_fuse)
            opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=net.parameters())

            def step(net=net, opt=opt, x=x, y=y):
                for logits in net(x, widths):
                    F.cross_entropy(logits, y).backward()
                opt.step()
                opt.clear_grad(set_to_zero=False)
            funcs[f"supernet sandwich b{batch} {mode}"] = step
    batch = 256
    x = paddle.to_tensor(rng.standard_normal((batch, 3, 32, 32)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 10, size=(batch,)).astype("int64"))
    for mode in ("stock", "fast"):
        paddle.seed(0)
        net = ResNet(space.widths(code), space, conv=mode, fuse_bn=not args.no_fuse)
        opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=net.parameters())

        def step(net=net, opt=opt):
            F.cross_entropy(net(x), y).backward()
            opt.step()
            opt.clear_grad()
        funcs[f"static ResNet {code} b{batch} {mode}"] = step
    t = _median_rounds(funcs, args.rounds, 1)
    names = list(dict.fromkeys(name.rsplit(" ", 1)[0] for name in t))
    for name in names:
        stock, fast = t[name + " stock"], t[name + " fast"]
        print(f"{name:<60} stock {stock:7.1f} ms  fast {fast:7.1f} ms  x{stock / fast:4.2f}",
              flush=True)
    return t


def worker(args) -> int:
    threads = args.worker
    sys.path.insert(0, ROOT)
    import warnings
    warnings.filterwarnings("ignore")
    import paddle
    import paddle.nn.functional as F

    from track1.network import conv
    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(threads)
    print(f"\n== {threads} thread(s), Paddle {paddle.__version__}, median of {args.rounds} "
          f"interleaved rounds, ms", flush=True)
    parts = args.part.split(",")
    if "shapes" in parts:
        bench_shapes(args, paddle, F, conv)
    if "steps" in parts:
        times = bench_steps(args, paddle, F)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(times, fh)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    print("what: track1.network.conv (fast) vs stock F.conv2d, per conv shape and per training step")
    print(f"on: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print("command: " + " ".join([os.path.relpath(sys.executable, ROOT), *sys.argv]))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in [int(t) for t in args.threads.split(",")]:
            env = dict(os.environ)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FLAGS_paddle_num_threads"):
                env[var] = str(threads)
            out = os.path.join(tmp, f"{threads}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(threads), "--out", out,
                   "--rounds", str(args.rounds), "--part", args.part, "--batches", args.batches,
                   *(["--no-fuse"] if args.no_fuse else [])]
            rc = subprocess.call(cmd, env=env)
            if rc:
                return rc
            if os.path.exists(out):
                with open(out) as fh:
                    results[threads] = json.load(fh)
    if len(results) > 1:
        base = min(results)
        print(f"\n== speed-up over {base} thread(s), same path (medians; separate processes)")
        for threads in sorted(results):
            if threads != base:
                for name, ms in results[threads].items():
                    print(f"{name:<66} {threads} threads x{results[base][name] / ms:4.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

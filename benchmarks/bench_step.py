"""Time one supernet training step against the same subnet built statically.

A step is forward + cross-entropy + backward + SGD-momentum update + clear_grad, batch of random
32x32 images, SearchSpace(width_mult=0.25, resolution=32, num_classes=10). The static network is
SuperNet.export(widths) (plain paddle.nn layers, same weights). Both sides are warmed up, then timed
in interleaved rounds (static round, dynamic round, ...) and the median round is reported; the
ratio is the median over rounds of dynamic/static within a round, which stays meaningful when other
processes share the cores (absolute ms then do not). The dynamic side's optimiser holds all
supernet parameters, as in supernet training; clear_grad(set_to_zero=False) leaves the unused ones
without a gradient, so the optimiser skips them; the used ones are updated at their max shape.

    .venv/bin/python benchmarks/bench_step.py [--threads N] [--steps N] [--batch N] [--repeats N]
        [--conv fast|stock]

Threads (checked on Paddle 3.3.1 by querying omp_get_max_threads / MKL_Get_Max_Threads of the
loaded runtimes): importing paddle sets OMP_NUM_THREADS=1 in the environment when it is unset, so
Paddle on CPU is single-threaded by default. Paddle's own OpenMP loops (libgomp) read
OMP_NUM_THREADS only at start-up, so it must be set before `import paddle`; MKL (matmul/conv GEMMs,
Intel OpenMP) follows paddle.base.core.set_num_threads(n) at any time. This script sets
OMP_NUM_THREADS, MKL_NUM_THREADS and FLAGS_paddle_num_threads before the import and calls
set_num_threads(n) after it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads for paddle/OpenMP/MKL (default: all cores)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per side (median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--conv", default="fast", help="train.conv of both sides: fast | stock")
    p.add_argument("--subnets", default="largest,smallest",
                   help="comma list of largest, smallest, random (seed 0)")
    p.add_argument("--verbose", action="store_true", help="print every round's time")
    p.add_argument("--breakdown", action="store_true",
                   help="also time forward / backward / optimiser step separately")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = max(1, args.threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FLAGS_paddle_num_threads"):
        os.environ[var] = str(threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import warnings
    warnings.filterwarnings("ignore")
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from track1.space import SearchSpace
    from track1.network.supernet import SuperNet

    paddle.set_device("cpu")
    if hasattr(paddle.base.core, "set_num_threads"):
        paddle.base.core.set_num_threads(threads)
    paddle.seed(0)
    space = SearchSpace(width_mult=0.25, resolution=32, num_classes=10)
    # As train builds it; exported networks keep the conv mode and the fused conv + BN.
    supernet = SuperNet(space, conv=args.conv, fuse_bn=True)
    supernet.train()

    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((args.batch, 3, 32, 32)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 10, size=(args.batch,)).astype("int64"))

    archs = {"largest": space.largest(), "smallest": space.smallest(),
             "random": space.sample(np.random.default_rng(0))}

    def make_step(net, params, call):
        opt = paddle.optimizer.Momentum(learning_rate=1e-3, momentum=0.9, parameters=params)
        times = {"fwd": 0.0, "bwd": 0.0, "opt": 0.0}

        def step(breakdown=False):
            t0 = time.perf_counter()
            loss = F.cross_entropy(call(x), y)
            if breakdown:
                float(loss)  # eager CPU ops are synchronous; this only pins the boundary
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            opt.clear_grad(set_to_zero=False)
            t3 = time.perf_counter()
            times["fwd"] += t1 - t0
            times["bwd"] += t2 - t1
            times["opt"] += t3 - t2

        return step, times

    def timed_round(step, n):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) / n

    cmd = " ".join([os.path.relpath(sys.executable), *sys.argv])
    print(f"command: {cmd}")
    print(f"threads: {threads} (OMP_NUM_THREADS=MKL_NUM_THREADS=FLAGS_paddle_num_threads), "
          f"paddle {paddle.__version__}, FLAGS_use_stride_kernel="
          f"{paddle.get_flags(['FLAGS_use_stride_kernel'])['FLAGS_use_stride_kernel']}, "
          f"batch {args.batch}, {args.steps} steps x {args.repeats} interleaved rounds; ms = median "
          f"round, ratio = median of per-round dynamic/static, min-ratio = best/best")
    header = (f"{'subnet':<9} {'static ms':>10} {'dynamic ms':>11} {'ratio':>6} {'min-ratio':>9} "
              f"{'static img/s':>13} {'dyn img/s':>10}")
    rows = []
    for name in args.subnets.split(","):
        widths = space.widths(archs[name])
        static = supernet.export(widths)
        static.train()
        s_step, s_times = make_step(static, static.parameters(), static)
        d_step, d_times = make_step(supernet, supernet.parameters(),
                                    lambda inp, w=widths: supernet(inp, w))
        for _ in range(args.warmup):
            s_step()
            d_step()
        s_runs, d_runs = [], []
        for _ in range(args.repeats):
            s_runs.append(timed_round(s_step, args.steps))
            d_runs.append(timed_round(d_step, args.steps))
        if args.verbose:
            print(name, "static", [round(1e3 * t, 1) for t in s_runs], "dynamic",
                  [round(1e3 * t, 1) for t in d_runs])
        s_ms, d_ms = 1e3 * statistics.median(s_runs), 1e3 * statistics.median(d_runs)
        # Paired ratio per round: robust when other processes share the cores.
        ratio = statistics.median(d / s for s, d in zip(s_runs, d_runs))
        best = min(d_runs) / min(s_runs)
        rows.append(f"{name:<9} {s_ms:>10.1f} {d_ms:>11.1f} {ratio:>6.2f} {best:>9.2f} "
                    f"{args.batch / s_ms * 1e3:>13.0f} {args.batch / d_ms * 1e3:>10.0f}")
        if args.breakdown:
            for t in (s_times, d_times):
                for k in t:
                    t[k] = 0.0
            n = args.steps * args.repeats
            for _ in range(n):
                s_step(True)
                d_step(True)
            parts = " ".join(f"{k} {1e3 * s_times[k] / n:.1f}/{1e3 * d_times[k] / n:.1f}"
                             for k in s_times)
            rows.append(f"  {name} breakdown ms static/dynamic: {parts}")
    print(header)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())

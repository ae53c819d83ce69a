"""Time `export` of one code: score's BN re-calibration, the evaluation on the scoring images, and writing the
three files (model.pdparams, paddle.jit.save's inference model, export.json).

Settings, each from its config file: `default` (configs/default.yaml: the embedded Fashion-MNIST space, 32 px)
and `imagenet` (configs/imagenet.yaml: width 1.0, 224 px, 1000 classes, score.calib_images 4096 in batches
of 256, score.val_images 10000 in batches of 500). The images are FAKE: seeded normal tensors of the
config's sizes, made one batch at a time (the cost of a forward does not depend on the pixel values; reading
and decoding real images is not timed). The supernet is random-init (export's cost does not depend on the
weights). The code is the largest of the official sub-space (the most expensive to export) unless --code.

    .venv/bin/python benchmarks/bench_export.py [--settings default,imagenet] [--threads N] [--code CODE]
        [--calib-images N] [--val-images N] [--no-evaluate] [--repeats 1]

--calib-images / --val-images replace the config's counts (batches shrink to fit), for a quick check.
The thread count must be known before paddle is imported, so this script sets OMP_NUM_THREADS first.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"default": REPO / "configs" / "default.yaml", "imagenet": REPO / "configs" / "imagenet.yaml"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="default,imagenet", help="comma list of default, imagenet")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    p.add_argument("--code", default="", help="the code to export (default: the largest)")
    p.add_argument("--calib-images", type=int, default=0, help="replace score.calib_images (0 = the config's)")
    p.add_argument("--val-images", type=int, default=0, help="replace score.val_images (0 = the config's)")
    p.add_argument("--no-evaluate", action="store_true", help="as export.evaluate=false")
    p.add_argument("--repeats", type=int, default=1, help="timed exports per setting; the fastest is reported")
    return p.parse_args(argv)


class FakeImages:
    """Re-iterable seeded normal batches of images (labels too when `labels`), one batch made at a time."""

    def __init__(self, n: int, batch: int, size: int, classes: int, labels: bool, seed: int):
        self.n, self.batch, self.size, self.classes, self.labels, self.seed = n, batch, size, classes, labels, seed

    def __iter__(self):
        import numpy as np
        import paddle
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.n, self.batch):
            b = min(self.batch, self.n - start)
            x = paddle.to_tensor(rng.standard_normal((b, 3, self.size, self.size), dtype="float32"))
            yield (x, paddle.to_tensor(rng.integers(0, self.classes, b))) if self.labels else x


def bench(name: str, args) -> dict:
    import paddle
    from track1.network.build import build_supernet
    from track1.pipeline import export as ex
    from track1.pipeline.config import load_config
    from track1.ranking.evaluate import evaluate_batches
    cfg = load_config(CONFIGS[name], ["run.device=cpu"])
    s = cfg["score"]
    calib_n, val_n = args.calib_images or s["calib_images"], args.val_images or s["val_images"]
    space, model = build_supernet(cfg)
    code = args.code or space.largest().code
    widths, res = space.widths(code), space.resolution
    calib = FakeImages(calib_n, min(s["calib_batch"], calib_n), res, space.num_classes, False, 0)
    val = FakeImages(val_n, min(s["eval_batch"], val_n), res, space.num_classes, True, 1)
    best = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        net = ex.exported_network(model, widths, calib)
        t1 = time.perf_counter()
        if not args.no_evaluate:
            evaluate_batches(net, val)
        t2 = time.perf_counter()
        state, _ = ex.named_state(net, cfg["space"]["act"])
        info = {"resolution": res, "files": {"input_spec": [None, 3, res, res]}}
        with tempfile.TemporaryDirectory() as d:
            ex._write(Path(d) / code, state, ex.inference_network(net, space, cfg["space"]["act"]), info)
        t3 = time.perf_counter()
        times = {"calibrate": t1 - t0, "evaluate": t2 - t1, "write": t3 - t2, "total": t3 - t0}
        best = times if best is None or times["total"] < best["total"] else best
    return {"setting": name, "code": code, "width_mult": space.width_mult, "resolution": res,
            "params": space.params(widths), "macs": space.flops(widths), "calib": calib_n,
            "val": 0 if args.no_evaluate else val_n, **best}


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FLAGS_paddle_num_threads"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(REPO))
    from track1.pipeline import runtime
    runtime.import_paddle()
    import paddle
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"bench_export: unknown setting {unknown[0]!r}: expected {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    print(f"bench_export: Paddle {paddle.__version__}, {args.threads} threads, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; FAKE images (seeded normal tensors), random-init "
          f"supernet, conv as each config's train.conv; fastest of {args.repeats}")
    print("| setting | code | width, px | params | MACs | calib images | val images | calibrate s | evaluate s "
          "| write s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = bench(name, args)
        print(f"| {r['setting']} | {r['code']} | {r['width_mult']}, {r['resolution']} | {r['params'] / 1e6:.2f} M "
              f"| {r['macs'] / 1e9:.3f} G | {r['calib']} | {r['val']} | {r['calibrate']:.2f} | {r['evaluate']:.2f} "
              f"| {r['write']:.2f} | {r['total']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The method table: how well each zero-cost proxy and each supernet method ranks the benchmark codes.

    .venv/bin/python benchmarks/method_table.py --truth benchmarks/ground_truth/fmnist_w0125@3e4fe936.json \
        [--seeds 0 1] [--methods spos sandwich rdnas] [-o train.epochs=2 ...]

Every supernet is trained and scored by the pipeline's own commands (`train`, `score`), with the
same data, epochs and seed set for every method; the truth file is read only here, after training,
to compute the metrics (`evaluate`), never by `train`. `rdnas` runs with the FLOPs teacher and with
the proxy that agrees best with the truth (choosing a teacher by looking at the truth is
hyperparameter selection, which the competition rules allow). Writes the table into --results (docs/RESULTS.md) and the plots into plots/ beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from track1.pipeline import checkpoint  # noqa: E402
from track1.pipeline.config import load_config  # noqa: E402
from track1.ranking.intervals import mean_draws, percentile_interval  # noqa: E402
from track1.ranking.metrics import load_scores, plot, rank_metrics  # noqa: E402
from track1.ranking.proxy_runs import output_name  # noqa: E402
from track1.pipeline.standalone import ceiling  # noqa: E402
from track1.space import SearchSpace  # noqa: E402

PROXIES = ["flops", "params", "grad_norm", "snip", "grasp", "fisher", "synflow", "jacob_cov", "naswot", "zen"]


def run(*args: str, threads: int) -> None:
    cmd = [sys.executable, "-m", "track1", *args]
    print(f"$ OMP_NUM_THREADS={threads}", " ".join(cmd), flush=True)
    # The environment variable wins over run.threads (track1.pipeline.cli), so it is set here, per run.
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def interval_cell(draws: np.ndarray) -> str:
    """'[lo, hi]' of a metric's bootstrap draws."""
    lo, hi = percentile_interval(draws)
    return f"[{lo:.2f}, {hi:.2f}]"


def versus_best(ms: list[dict], best_ms: list[dict], draws: dict, best_draws: dict) -> str:
    """'-0.120 [-0.31, +0.05] tied': a row's seed-mean Kendall minus the best row's, with the paired
    bootstrap interval (same resamples); "worse" only when the whole interval is below 0."""
    d = np.mean([m["kendall"] for m in ms]) - np.mean([m["kendall"] for m in best_ms])
    lo, hi = percentile_interval(draws["kendall"] - best_draws["kendall"])
    return f"{d:+.3f} [{lo:+.2f}, {hi:+.2f}]" + (" worse" if hi < 0 else " tied")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--truth", required=True, help="official-shape JSON of stand-alone accuracies")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=["spos", "sandwich", "rdnas", "rdnas_authors", "cream",
                                                   "cream_authors", "cream_rd"])
    p.add_argument("--proxies", nargs="+", default=PROXIES)
    p.add_argument("--out-dir", default="output/method_table")
    p.add_argument("--results", default="docs/RESULTS.md")
    p.add_argument("--jobs", type=int, default=1, help="supernet runs at a time (each gets cores/jobs threads)")
    p.add_argument("--threads", type=int, default=0, help="threads per run (0 = cores / jobs)")
    p.add_argument("-o", "--override", action="append", default=[], help="override for every run")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the codes for the intervals")
    args = p.parse_args()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    truth = load_scores(args.truth)
    out = REPO / args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    arch_file = out / "benchmark_codes.json"  # the truth's codes, with no accuracies in it
    arch_file.write_text(json.dumps({f"arch{i + 1}": {"acc": 0.0, "arch": c} for i, c in enumerate(truth)}))
    common = ["-o", f"run.output_dir={out}", *[a for o in args.override for a in ("-o", o)]]
    rows, plots = [], []

    # Zero-cost proxies: one score per code at initialisation.
    proxy_tau = {}
    for name in args.proxies:
        start = time.time()
        run("proxies", "--proxy", name, "--arch-list", str(arch_file), *common, "-o", "run.name=proxies",
            threads=threads)
        pred_file = out / "proxies" / "proxies" / output_name(load_config(None, args.override), "benchmark_codes", name)
        m = rank_metrics(load_scores(pred_file), truth)
        proxy_tau[name] = m["kendall"]
        rows.append((f"proxy: {name}", [m], time.time() - start, [load_scores(pred_file)]))

    best_proxy = max((n for n in proxy_tau if n != "flops"), key=lambda n: proxy_tau[n])
    methods = []
    for method in args.methods:
        if method == "rdnas":
            methods += [("rdnas (flops teacher)", "rdnas", []),
                        (f"rdnas ({best_proxy} teacher)", "rdnas", ["-o", f"train.ranking.teacher={best_proxy}"])]
        else:
            methods.append((method, method, []))

    def supernet(label: str, preset: str, extra: list[str], seed: int, threads: int):
        """Train, score and submit one (method, seed); its metrics, training seconds and plot."""
        name = f"{label.split()[0]}_{extra[-1].split('=')[-1] if extra else 'base'}_s{seed}"
        cfg = ["-c", f"configs/{preset}.yaml", *common, "-o", f"run.name={name}", "-o", f"run.seed={seed}",
               "-o", f"run.threads={threads}", *extra]
        run("pretrain", *cfg, "--resume", threads=threads)  # a no-op unless the preset pretrains (rdnas_authors)
        run("train", *cfg, "--resume", threads=threads)
        # Training wall time as the checkpoints record it (added up over resumes), the pretrain stage's too.
        stages = [out / name / "pretrained", out / name]
        seconds = sum(float(checkpoint.read_meta(checkpoint.latest(d))["train_seconds"])
                      for d in stages if checkpoint.latest(d) is not None)
        run("score", *cfg, "--arch-list", str(arch_file), threads=threads)
        run("submit", *cfg, "--arch-list", str(arch_file), "--out", str(out / f"{name}.json"), threads=threads)
        pred = load_scores(out / f"{name}.json")
        png = (REPO / args.results).parent / "plots" / f"{name}.png"  # beside the results file
        plot(pred, truth, png, title=f"{label}, seed {seed}")
        return rank_metrics(pred, truth), seconds, png, pred

    # Independent runs in parallel, each on its share of the cores (results do not depend on it
    # beyond the thread count, which is recorded in the table's heading).
    jobs = [(label, preset, extra, seed) for label, preset, extra in methods for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: supernet(*j, threads), jobs))
    for label, _, _ in methods:
        runs = [r for j, r in zip(jobs, done) if j[0] == label]
        rows.append((label, [r[0] for r in runs], float(np.mean([r[1] for r in runs])), [r[3] for r in runs]))
        plots += [r[2] for r in runs]

    c = ceiling(json.loads(Path(args.truth).read_text()))
    n = len(truth)
    null_sd = float(np.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))))  # Kendall's tau under independence
    lines = [f"Truth: `{args.truth}` ({len(truth)} codes, {c['seeds']} seeds). Its ceiling: Kendall "
             f"{c['half_kendall']:.3f} between the means of two disjoint seed halves, {c['pair_kendall']:.3f} "
             f"seed vs seed; spread of the codes' accuracies {c['signal_std']:.4f} against seed noise "
             f"{c['seed_std']:.4f} (std). An unrelated predictor scores Kendall 0 ± {null_sd:.3f} (std) "
             f"on {len(truth)} codes. Supernet seeds: {args.seeds}, {args.jobs} run(s) at a time with "
             f"{threads} thread(s) each. Overrides: {' '.join(args.override) or 'none'}. Produced by:", "",
             f"    .venv/bin/python benchmarks/method_table.py {' '.join(sys.argv[1:])}", "",
             "| method | Kendall [95%] | Spearman [95%] | Pearson [95%] | top-5 overlap [95%] | Kendall - best "
             "row [95%] | Kendall with FLOPs | seed vs seed | time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    space = SearchSpace.from_config(load_config(None, args.override))
    flops = {code: float(space.flops(code)) for code in truth}
    # Bootstrap over the codes, the same resamples for every row (seed 0): a row's interval is its
    # seed-mean metric's; its difference with the best row is paired.
    draws = [mean_draws(preds, truth, resamples=args.resamples) for _, _, _, preds in rows]
    best = max(range(len(rows)), key=lambda i: np.mean([m["kendall"] for m in rows[i][1]]))
    for i, (label, ms, secs, preds) in enumerate(rows):
        cell = lambda vals: f"{np.mean(vals):.3f}" + (f" ± {np.std(vals):.3f}" if len(vals) > 1 else "")
        metric = lambda k: f"{cell([m[k] for m in ms])} {interval_cell(draws[i][k])}"
        with_flops = cell([rank_metrics(p, flops)["kendall"] for p in preds])
        pairs = [rank_metrics(a, b)["kendall"] for j, a in enumerate(preds) for b in preds[j + 1:]]
        versus = "best" if i == best else versus_best(ms, rows[best][1], draws[i], draws[best])
        lines.append(f"| {label} | {metric('kendall')} | {metric('spearman')} | {metric('pearson')} | "
                     f"{metric('top5')} | {versus} | {with_flops} | {cell(pairs) if pairs else '-'} | {secs:.0f} |")
    lines += ["", "Kendall, Spearman, Pearson and top-5 overlap are against the truth; ± is the standard "
              "deviation over the seeds; [95%] is a percentile bootstrap interval over the truth's codes "
              f"({args.resamples} resamples, seed 0) of the seed-mean metric. Kendall - best row: the paired "
              "bootstrap of this row's seed-mean Kendall minus the best row's, on the same resamples; a row "
              "is worse than the best only when the whole interval is below 0 (\"worse\"), otherwise the "
              "table cannot tell them apart (\"tied\"). Kendall with FLOPs: how much of a ranking is model "
              "size. Seed vs seed: Kendall between the rankings of two training seeds of the same method. "
              "Time: a proxy's is for all codes; a supernet's is its training (from the checkpoint).", "",
              "Plots: " + ", ".join(f"[{p.stem}](plots/{p.name})" for p in plots)]
    table = "\n".join(lines)
    results = REPO / args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    # Only the part between the markers is generated; the text around it is kept.
    begin, end = "<!-- method_table.py: begin -->", "<!-- method_table.py: end -->"
    text = results.read_text() if results.exists() else f"# Ranking quality on the embedded default\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    results.write_text(f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}")
    print(table)


if __name__ == "__main__":
    main()

"""The command line: `python -m track1 COMMAND -c CONFIG -o key=value ...`, a thin layer over the library."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from track1.errors import ConfigError, UserError
from track1.pipeline import runtime
from track1.pipeline.config import check, load_config, run_dir


# Commands that run networks: they take run.device (the others only read and write files).
COMPUTES = {"pretrain", "train", "fewshot", "score", "proxies", "standalone", "preflight", "export"}



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m track1", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("-c", "--config", default=None, help="YAML config (default: configs/default.yaml)")
        c.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. -o train.epochs=2 (repeatable)")
        return c

    command("prepare", "find, download or check the training data")
    command("preflight", "check device, ranks, memory, data loading and /dev/shm at the config's sizes "
                         "before a long run (exits 2 naming the first check that would fail)")
    c = command("pretrain", "train the full network alone and write output/<run>/pretrained/resnet48.pdparams "
                            "(when pretrain.enabled and no train.init_from)")
    c.add_argument("--resume", action="store_true", help="continue from the stage's latest checkpoint")
    c = command("train", "train the supernet (no ground truth is read: it takes none)")
    c.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    command("fewshot", "split the trained supernet into few-shot sub-supernets and train them (fewshot.enabled)")
    c = command("score", "score every code of an architecture list with the trained supernet")
    c.add_argument("--arch-list", default=None, help="official-format JSON (default: score.arch_list)")
    c.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the run's latest)")
    c.add_argument("--shard", default=None, metavar="I/N",
                   help="score only part I of N of the list (0-based); under paddle.distributed.launch "
                        "each rank takes its own part by default")
    c = command("submit", "write submit/<run>.json from the scores (all shards merged)")
    c.add_argument("--arch-list", default=None)
    c.add_argument("--checkpoint", default=None)
    c.add_argument("--out", default=None, help="output path (default: <submit.dir>/<run.name>.json)")
    c = command("validate", "check a submission against an architecture list")
    c.add_argument("submission")
    c.add_argument("--arch-list", default=None)
    c = command("proxies", "zero-cost proxy scores of every code of a list")
    c.add_argument("--proxy", required=True,
                   help="proxy name (flops, params, snip, synflow, zen, ...) or an ensemble, e.g. snip,synflow "
                        "(mean of z-scores over proxies.reference_size codes, as train.ranking.teacher)")
    c.add_argument("--arch-list", default=None)
    c = command("standalone", "ground truth: train codes of a list from scratch as plain networks "
                              "(its results never reach `train`)")
    c.add_argument("--arch-list", default=None,
                   help="official-format JSON (default: score.arch_list, else the demo list); "
                        "standalone.num_codes of its codes are taken, spread over the FLOPs range")
    c.add_argument("--out", default=None,
                   help="results log, .jsonl (default: <run.output_dir>/standalone/<list>@<recipe>.jsonl); "
                        "the per-code mean over seeds goes next to it as .json")
    c = command("export", "write codes as plain Paddle networks with score's BN re-calibration: "
                          "output/<run>/export/<code>/ (model.pdparams in the organizers' names, inference.json "
                          "+ inference.pdiparams, export.json)")
    which = c.add_mutually_exclusive_group()
    which.add_argument("--code", default=None, help="one 52-character code of the official sub-space")
    which.add_argument("--arch-list", default=None, help="official-format JSON: its first --top codes (default all)")
    which.add_argument("--submission", default=None, help="a submission: its --top best codes")
    c.add_argument("--top", type=_positive, default=None,
                   help="how many codes (default: export.top_k; without a file, the run's submission's best)")
    c.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the run's latest)")
    c.add_argument("--force", action="store_true", help="replace existing export directories")
    c = command("evaluate", "ranking quality of predicted accuracies against ground truth, with bootstrap "
                            "intervals over the architectures")
    c.add_argument("--pred", required=True, action="append",
                   help="official-shape JSON: a submission, proxy scores, ...; give it twice (--pred A --pred B) "
                        "for the paired bootstrap of A - B")
    c.add_argument("--truth", required=True, help="official-shape JSON of true accuracies (standalone .json)")
    c.add_argument("--out", default=None, help="metrics JSON (default: <pred>_vs_<truth>.json beside --pred)")
    c.add_argument("--plot", default=None, help="also draw predicted vs true accuracy into this PNG")
    c.add_argument("--subset", action="store_true",
                   help="compare on the truth's codes when the predictions cover more (default: the two "
                        "files must hold the same codes)")
    c.add_argument("--resamples", type=_positive, default=1000, help="bootstrap resamples (default 1000)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def cmd_prepare(cfg: dict, args) -> None:
    from track1.data import prepare
    prepare(cfg)


def cmd_pretrain(cfg: dict, args) -> None:
    from track1.pipeline.pretrain import pretrain
    written, what = pretrain(cfg, resume=args.resume)
    print(f"pretrain: {what}" + (f" -> {written}" if written else ""))


def _health_of(final) -> str:
    """': val top-1 largest ...' of a final checkpoint's epoch-end check, or '' where it ran none."""
    from track1.pipeline.checkpoint import read_meta
    from track1.ranking.health import describe_health
    top1 = read_meta(final).get("val_top1")
    return f": {describe_health(top1)}" if top1 else ""


def cmd_train(cfg: dict, args) -> None:
    from track1.pipeline.train import train
    final = train(cfg, resume=args.resume, progress=True)
    if final is not None:  # None on the ranks other than 0 of a distributed run
        print(f"trained: {final}{_health_of(final)}")


def cmd_fewshot(cfg: dict, args) -> None:
    from track1.pipeline.fewshot import fewshot
    final, what = fewshot(cfg)
    print(f"fewshot: {what}" + (f" -> {final}{_health_of(final)}" if final else ""))


def cmd_score(cfg: dict, args) -> None:
    from track1.pipeline import runs
    from track1.ranking.scoring import summarize
    ckpt, out, records = runs.score(cfg, args.arch_list, args.checkpoint, runs.parse_shard(args.shard))
    print(f"scored with {ckpt} -> {out}: {summarize(records, cfg['submit']['tie_break'])}")


def cmd_submit(cfg: dict, args) -> None:
    from track1.pipeline import runs
    path, n = runs.submit(cfg, args.arch_list, args.checkpoint, args.out)
    print(f"wrote {path} ({n} architectures)")


def cmd_preflight(cfg: dict, args) -> None:
    from track1.pipeline.preflight import PreflightError, first_failure, preflight, report
    checks = preflight(cfg)
    rank, world = paddle_rank_world()
    failure = first_failure(checks)
    if world > 1:  # every rank ran the checks; any rank's failure stops them all
        failures: list = []
        import paddle
        paddle.distributed.all_gather_object(failures, failure)
        failure = next((f"{f} (rank {r})" for r, f in enumerate(failures) if f), None)
    if rank == 0:
        print(report(checks))
    if failure:
        raise PreflightError(failure)


def paddle_rank_world() -> tuple[int, int]:
    import paddle
    return paddle.distributed.get_rank(), paddle.distributed.get_world_size()


def cmd_validate(cfg: dict, args) -> None:
    from track1.ranking.submission import validate_submission
    path = args.arch_list or cfg["score"]["arch_list"]
    if not path:
        raise ConfigError("validate needs the architecture list: --arch-list FILE or -o score.arch_list=FILE")
    n = validate_submission(args.submission, path)
    print(f"{args.submission}: valid ({n} architectures)")


def cmd_proxies(cfg: dict, args) -> None:
    from track1.pipeline.runs import arch_list
    from track1.ranking.proxy_runs import proxy_settings, score_proxies
    codes, name = arch_list(cfg, args.arch_list)
    final = score_proxies(cfg, codes, name, args.proxy, run_dir(cfg) / "proxies")
    print(f"{final.stem} scores of {len(codes)} codes ({proxy_settings(cfg)['input']} input where the proxy "
          f"reads one, {proxy_settings(cfg)['resolution']} px) -> {final}")


def cmd_standalone(cfg: dict, args) -> None:
    from track1.pipeline.runs import arch_list
    from track1.pipeline.standalone import ceiling, recipe_hash, run_standalone, spread_codes
    from track1.space import SearchSpace
    codes, name = arch_list(cfg, args.arch_list)
    st = cfg["standalone"]
    chosen = spread_codes(codes, SearchSpace.from_config(cfg), st["num_codes"])
    seeds = list(st["seeds"])
    init = None
    if st["init_from"] == "export":  # fine-tune the exported networks: the file name says so
        from track1.pipeline.export import inherited_source
        init = inherited_source(cfg, chosen.values())
    out = (Path(args.out) if args.out else Path(cfg["run"]["output_dir"]) / "standalone" /
           f"{name}@{recipe_hash(cfg, init)}{'.inherited' if init else ''}.jsonl")
    summary = run_standalone(cfg, chosen, seeds, out, init=init)
    print(f"stand-alone accuracy of {len(summary)} codes x {len(seeds)} seeds -> {out.with_suffix('.json')}")
    if len(seeds) >= 2:
        c = ceiling(summary)
        print(f"seed-to-seed Kendall tau (a ceiling for any predictor): mean of half the seeds vs "
              f"the other half {c['half_kendall']:.4f}, one seed vs another {c['pair_kendall']:.4f}")
        print(f"accuracy spread of the codes {c['signal_std']:.4f} vs seed noise {c['seed_std']:.4f} "
              f"(std): two halves of {c['seeds_for_0.8']:.0f} seeds each would agree at tau 0.8")


def cmd_export(cfg: dict, args) -> None:
    from track1.pipeline.export import export, select_codes
    if args.top is not None and args.code is not None:
        raise ConfigError("--top goes with --arch-list or --submission, not --code")
    codes = select_codes(cfg, args.code, args.arch_list, args.submission, args.top)
    if not codes:
        print("export: nothing to export (export.top_k is 0 and no --code, --arch-list or --submission)")
        return
    for out, info in export(cfg, codes, args.checkpoint, args.force):
        top1 = [f"{what} {d['acc']:.4f}" for what, d in (("top-1", info["exported"]), ("score logged", info["score"])) if d]
        print(f"exported {out.name} -> {out}" + (f" ({', '.join(top1)})" if top1 else ""))


def cmd_evaluate(cfg: dict, args) -> None:
    from track1.files import write_json
    from track1.ranking import intervals
    from track1.ranking.metrics import format_metrics, load_scores, plot, rank_metrics
    if len(args.pred) > 2:
        raise ConfigError(f"evaluate takes one or two --pred files, got {len(args.pred)}")
    pred_paths, truth_path = [Path(p) for p in args.pred], Path(args.truth)
    preds, truth = [load_scores(p) for p in pred_paths], load_scores(truth_path)
    boot = {"resamples": args.resamples, "seed": args.seed, "level": intervals.LEVEL}
    print(f"95% intervals: percentile bootstrap over the architectures, {args.resamples} resamples, seed {args.seed}")
    results = []
    for path, pred in zip(pred_paths, preds):
        m = rank_metrics(pred, truth, allow_extra=args.subset)
        ci = intervals.rank_intervals(pred, truth, resamples=args.resamples, seed=args.seed,
                                      allow_extra=args.subset)
        print(f"{path} vs {truth_path}: {format_metrics(m, ci)}")
        results.append({"pred": str(path), **m, "intervals": ci})
        if args.plot:
            png = Path(args.plot)
            if len(preds) > 1:
                png = png.with_name(f"{png.stem}_{path.stem}{png.suffix}")
            plot(pred, truth, png, title=path.stem, allow_extra=args.subset, intervals=ci)
            print(f"plot: {png}")
    first = pred_paths[0]
    if len(preds) == 1:
        default_out = first.with_name(f"{first.stem}_vs_{truth_path.stem}.json")
        report = {"truth": str(truth_path), **results[0], "bootstrap": boot}
    else:
        default_out = first.with_name(f"{first.stem}_minus_{pred_paths[1].stem}_vs_{truth_path.stem}.json")
        diff = intervals.paired_difference(*preds, truth, resamples=args.resamples, seed=args.seed,
                                           allow_extra=args.subset)
        print("paired bootstrap (same resamples for both):")
        for line in intervals.format_difference(first.stem, pred_paths[1].stem, diff):
            print(f"  {line}")
        report = {"truth": str(truth_path), "preds": results, "difference": diff, "bootstrap": boot}
    out = Path(args.out) if args.out else default_out
    write_json(out, report, indent=1)
    print(f"metrics: {out}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.override, checked=False)
        runtime.set_threads(cfg)  # before Paddle is imported, and checking the config imports it
        runtime.import_paddle()
        check(cfg)
        if args.command in COMPUTES:
            runtime.select_device(cfg)
        globals()[f"cmd_{args.command}"](cfg, args)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a user's error becomes one line; anything else is a bug
        if not isinstance(e, UserError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

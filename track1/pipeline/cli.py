"""The command line: `python -m track1 COMMAND -c CONFIG -o key=value ...`, a thin layer over the library."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from track1.errors import ConfigError, UserError
from track1.pipeline.config import load_config, run_dir



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
    c = command("train", "train the supernet (no ground truth is read: it takes none)")
    c.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
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
    c = command("evaluate", "ranking quality of predicted accuracies against ground truth")
    c.add_argument("--pred", required=True, help="official-shape JSON: a submission, proxy scores, ...")
    c.add_argument("--truth", required=True, help="official-shape JSON of true accuracies (standalone .json)")
    c.add_argument("--out", default=None, help="metrics JSON (default: <pred>_vs_<truth>.json beside --pred)")
    c.add_argument("--plot", default=None, help="also draw predicted vs true accuracy into this PNG")
    c.add_argument("--subset", action="store_true",
                   help="compare on the truth's codes when the predictions cover more (default: the two "
                        "files must hold the same codes)")
    return p


def _set_threads(cfg: dict) -> None:
    # Before paddle is imported: its CPU kernels read OMP_NUM_THREADS once. An explicit
    # environment variable wins, so tests can pin one thread for bit-identical results.
    threads = int(cfg["run"]["threads"]) or os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def arch_list(cfg: dict, given: str | None, official: bool = False) -> tuple[dict[str, str], str]:
    """(key -> code, list name). Without a list, a demo list sampled like the official one.
    official=True refuses codes outside the official sub-space (for what uses the supernet)."""
    from track1.ranking.submission import demo_arch_list, load_arch_list, write_arch_list
    path = given or cfg["score"]["arch_list"]
    if path:
        return load_arch_list(path, official), Path(path).stem
    demo = run_dir(cfg) / "demo_arch_list.json"
    n, seed = int(cfg["score"]["demo_size"]), int(cfg["score"]["demo_seed"])
    if not demo.exists():
        write_arch_list(demo, demo_arch_list(n, seed))
    print(f"no architecture list given (score.arch_list / ARCH_LIST): using a demo list of {n} codes "
          f"sampled like the official one, {demo}", file=sys.stderr)
    return load_arch_list(demo, official), demo.stem


def _checkpoint(cfg: dict, given: str | None) -> Path:
    from track1.pipeline import checkpoint
    path = given or cfg["score"]["checkpoint"]
    if path:
        return Path(path)
    last = checkpoint.latest(run_dir(cfg))
    if last is None:
        raise checkpoint.CheckpointError(f"{run_dir(cfg)}: no checkpoint; run `train` first")
    return last


def score_settings(cfg: dict, ckpt: Path) -> dict:
    """Everything that changes a score: the checkpoint, how codes are scored, and the images."""
    from track1.pipeline.checkpoint import read_meta
    meta = read_meta(ckpt)
    s = cfg["score"]
    return {"checkpoint": str(Path(ckpt).resolve()), "config_hash": meta.get("config_hash"),
            "step": meta.get("step"), "space": cfg["space"],
            "data": {k: v for k, v in cfg["data"].items() if k not in ("num_workers", "shared_memory")},
            "score": {k: s[k] for k in ("mode", "calib_images", "calib_batch", "val_images", "eval_batch")}}


def _scores_path(cfg: dict, list_name: str, ckpt: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """<run>/scores/<list>@<checkpoint>.<settings key>[.shardIofN].jsonl: other scoring settings
    (e.g. -o score.val_images=2000) write a new log instead of resuming the old one."""
    import hashlib
    import json
    key = hashlib.sha256(json.dumps(score_settings(cfg, ckpt), sort_keys=True).encode()).hexdigest()[:8]
    suffix = f".shard{shard[0]}of{shard[1]}" if shard[1] > 1 else ""
    return run_dir(cfg) / "scores" / f"{list_name}@{ckpt.name}.{key}{suffix}.jsonl"


def _shard(given: str | None) -> tuple[int, int]:
    """(index, count) from --shard I/N, else from the launcher's rank and world size."""
    if given:
        try:
            i, n = (int(v) for v in given.split("/"))
        except ValueError:
            raise ConfigError(f"--shard {given!r}: expected I/N, e.g. 0/4") from None
        if not 0 <= i < n:
            raise ConfigError(f"--shard {given!r}: I must be in 0..N-1")
        return i, n
    return int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1))


def cmd_prepare(cfg: dict, args) -> None:
    from track1.data import prepare
    prepare(cfg)


def cmd_train(cfg: dict, args) -> None:
    from track1.pipeline.checkpoint import read_meta
    from track1.pipeline.train import describe_health, train
    final = train(cfg, resume=args.resume, progress=True)
    if final is not None:  # None on the ranks other than 0 of a distributed run
        top1 = read_meta(final).get("val_top1")
        print(f"trained: {final}" + (f": {describe_health(top1)}" if top1 else ""))


def cmd_score(cfg: dict, args) -> None:
    from track1.pipeline.checkpoint import load_weights
    from track1.pipeline.config import config_hash
    from track1.data import calibration_batches, validation_batches
    from track1.files import write_json
    from track1.ranking.scoring import score_list, shard_keys, summarize
    from track1.pipeline.train import build_supernet
    codes, name = arch_list(cfg, args.arch_list, official=True)
    ckpt = _checkpoint(cfg, args.checkpoint)
    space, model = build_supernet(cfg)
    load_weights(ckpt, model, expect_hash=config_hash(cfg))
    shard = _shard(args.shard)
    codes = {k: codes[k] for k in shard_keys(list(codes), *shard)}
    out = _scores_path(cfg, name, ckpt, shard)
    if not out.with_suffix(".settings.json").exists():  # beside the log, to tell logs apart
        write_json(out.with_suffix(".settings.json"), score_settings(cfg, ckpt), indent=1)
    records = score_list(model, space, codes, calibration_batches(cfg), validation_batches(cfg), out,
                         cfg["score"]["mode"], cfg["score"]["chunk_images"])
    print(f"scored with {ckpt} -> {out}: {summarize(records)}")


def cmd_submit(cfg: dict, args) -> None:
    from track1.ranking.submission import SubmissionError, break_ties, merge_shards, write_submission
    codes, name = arch_list(cfg, args.arch_list, official=True)
    ckpt = _checkpoint(cfg, args.checkpoint)
    unsharded = _scores_path(cfg, name, ckpt)
    files = [unsharded] + sorted(unsharded.parent.glob(f"{unsharded.stem}.shard*of*.jsonl"))
    files = [f for f in files if f.exists()]
    if not files:
        raise SubmissionError(f"{unsharded}: no scores for this list, checkpoint and "
                              f"score settings; run `score` first")
    records = merge_shards(files)
    accs = {k: r["acc"] for k, r in records.items()}
    if cfg["submit"]["tie_break"] == "loss":
        accs = break_ties(accs, {k: r.get("loss") for k, r in records.items()})
    elif cfg["submit"]["tie_break"] != "none":
        raise ConfigError(f"submit.tie_break {cfg['submit']['tie_break']!r}: expected loss or none")
    out = Path(args.out) if args.out else Path(cfg["submit"]["dir"]) / f"{cfg['run']['name']}.json"
    write_submission(out, codes, accs)
    print(f"wrote {out} ({len(codes)} architectures)")


def cmd_validate(cfg: dict, args) -> None:
    from track1.ranking.submission import validate_submission
    path = args.arch_list or cfg["score"]["arch_list"]
    if not path:
        raise ConfigError("validate needs the architecture list: --arch-list FILE or -o score.arch_list=FILE")
    n = validate_submission(args.submission, path)
    print(f"{args.submission}: valid ({n} architectures)")


def cmd_proxies(cfg: dict, args) -> None:
    from track1.files import write_json
    from track1.ranking.proxy_runs import input_batch, input_kind, proxy_settings, run_setting, score_list, to_official_json
    from track1.methods.teacher import parse_teacher, reference_codes, reference_stats, combine, teacher_label
    from track1.pipeline.train import build_space
    codes, name = arch_list(cfg, args.arch_list)
    space = build_space(cfg)
    weights = parse_teacher(args.proxy)
    s = proxy_settings(cfg)
    # A cheaper proxy resolution gets files of its own, so both can be kept and compared.
    tag = "" if s["resolution"] == space.resolution else f"@{s['resolution']}px"
    folder = run_dir(cfg) / "proxies"
    batch = input_batch(cfg, weights)

    def run(member: str, keyed: dict[str, str], list_name: str) -> dict[str, dict]:
        return score_list(member, keyed, space, batch, folder / f"{list_name}@{member}{tag}.jsonl",
                          seed=s["seed"], repeats=s["repeats"], act=cfg["space"]["act"],
                          setting=run_setting(cfg, member))

    members = {m: run(m, codes, name) for m in weights}
    label = teacher_label(weights)
    meta = {"list": name, "codes": len(codes), "teacher": weights, "proxies": s,
            "input": {m: input_kind(cfg, m) for m in weights}, "act": cfg["space"]["act"],
            "space": {k: cfg["space"][k] for k in ("width_mult", "resolution", "num_classes")}}
    if len(weights) == 1:
        records = members[label]
    else:  # the teacher's ensemble: members z-scored over the fixed reference sample
        ref = reference_codes(cfg, space)
        ref_name = f"reference{len(ref)}s{cfg['proxies']['reference_seed']}"
        stats = reference_stats(weights, {m: [r["score"] for r in run(m, ref, ref_name).values()]
                                          for m in weights})
        records = {k: {"code": c, "score": combine(weights, stats, {m: members[m][k]["score"] for m in weights}),
                       "seconds": sum(members[m][k]["seconds"] for m in weights)} for k, c in codes.items()}
        meta["reference"] = {"size": len(ref), "seed": int(cfg["proxies"]["reference_seed"]),
                             "mean_std": {m: list(v) for m, v in stats.items()}}
    final = folder / f"{name}@{label}{tag}.json"
    write_json(final, to_official_json(records, codes))
    write_json(final.with_name(final.stem + ".meta.json"), meta, indent=1)
    print(f"{label} scores of {len(records)} codes ({', '.join(f'{m}: {i}' for m, i in meta['input'].items())} "
          f"input, {s['resolution']} px) -> {final}")


def cmd_standalone(cfg: dict, args) -> None:
    from track1.pipeline.standalone import ceiling, recipe_hash, run_standalone, spread_codes
    from track1.pipeline.train import build_space
    codes, name = arch_list(cfg, args.arch_list)
    st = cfg["standalone"]
    chosen = spread_codes(codes, build_space(cfg), int(st["num_codes"]))
    seeds = [int(s) for s in st["seeds"]]
    out = (Path(args.out) if args.out else
           Path(cfg["run"]["output_dir"]) / "standalone" / f"{name}@{recipe_hash(cfg)}.jsonl")
    summary = run_standalone(cfg, chosen, seeds, out)
    print(f"stand-alone accuracy of {len(summary)} codes x {len(seeds)} seeds -> {out.with_suffix('.json')}")
    if len(seeds) >= 2:
        c = ceiling(summary)
        print(f"seed-to-seed Kendall tau (a ceiling for any predictor): mean of half the seeds vs "
              f"the other half {c['half_kendall']:.4f}, one seed vs another {c['pair_kendall']:.4f}")
        print(f"accuracy spread of the codes {c['signal_std']:.4f} vs seed noise {c['seed_std']:.4f} "
              f"(std): two halves of {c['seeds_for_0.8']:.0f} seeds each would agree at tau 0.8")


def cmd_evaluate(cfg: dict, args) -> None:
    from track1.files import write_json
    from track1.ranking.metrics import format_metrics, load_scores, plot, rank_metrics
    pred_path, truth_path = Path(args.pred), Path(args.truth)
    pred, truth = load_scores(pred_path), load_scores(truth_path)
    m = rank_metrics(pred, truth, allow_extra=args.subset)
    print(f"{pred_path} vs {truth_path}: {format_metrics(m)}")
    out = Path(args.out) if args.out else pred_path.with_name(f"{pred_path.stem}_vs_{truth_path.stem}.json")
    write_json(out, {"pred": str(pred_path), "truth": str(truth_path), **m}, indent=1)
    print(f"metrics: {out}")
    if args.plot:
        plot(pred, truth, Path(args.plot), title=pred_path.stem, allow_extra=args.subset)
        print(f"plot: {args.plot}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.override)
        _set_threads(cfg)
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

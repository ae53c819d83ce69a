"""Export: a code's subnet as a plain Paddle network, its BN re-calibrated as `score` does, in the organizers'
names and as an inference model; and the exported weights that inherited stand-alone training starts from."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import paddle

from track1.data import calibration_batches, cifar, validation_batches
from track1.data.fmnist import FMNIST_MEAN, FMNIST_STD
from track1.data.images import IMAGENET_MEAN, IMAGENET_STD
from track1.errors import UserError
from track1.files import read_jsonl, write_json
from track1.network.pretrained import organizer_name, read_state_file
from track1.network.resnet import ResNet
from track1.network.supernet import SuperNet
from track1.pipeline import checkpoint, runs
from track1.pipeline.config import run_dir
from track1.ranking.evaluate import calibrate_bn, calibration_momentum, evaluate_batches
from track1.ranking.metrics import load_scores
from track1.ranking.submission import load_arch_list
from track1.space import SearchSpace, Widths, parse_official


STATE_FILE, INFO_FILE = "model.pdparams", "export.json"
INFERENCE = "inference"  # paddle.jit.save's prefix: inference.json (Paddle 3's program) + inference.pdiparams
BASELINE = "model.py Model(code) of xiteng01/CVPR_2022_Track1_demo"


class ExportError(UserError):
    """Codes that cannot be exported, an export directory in the way, or an exported file that does
    not fit its network (one line)."""


# -- which codes ----------------------------------------------------------------------------------
def select_codes(cfg: dict, code: str | None = None, arch_list: str | None = None,
                 submission: str | None = None, top: int | None = None) -> list[str]:
    """The codes to export, each once: --code; the first `top` (default all) of --arch-list; the `top`
    best of --submission (ties in list order). With none of them, the export.top_k best of the run's
    submission (none while export.top_k is 0). Codes outside the official sub-space are refused."""
    if code is not None:
        parse_official(code)
        return [code]
    if arch_list is None and submission is None:
        if not cfg["export"]["top_k"]:
            return []
        submission = str(Path(cfg["submit"]["dir"]) / f"{cfg['run']['name']}.json")
    source = arch_list or submission
    codes = list(dict.fromkeys(load_arch_list(source, official=True).values()))
    if submission is not None:
        top = top or cfg["export"]["top_k"]
        if not top:
            raise ExportError(f"--submission {submission}: say how many of its best codes with --top K "
                              f"(or export.top_k)")
        accs = load_scores(submission)
        codes = sorted(codes, key=lambda c: -accs[c])
    if top is not None and top > len(codes):
        raise ExportError(f"--top {top}: {source} holds only {len(codes)} distinct codes")
    return codes[:top] if top else codes


def export_dir(cfg: dict, code: str) -> Path:
    return run_dir(cfg) / "export" / code


# -- one code -------------------------------------------------------------------------------------
def exported_network(model: SuperNet, widths: Widths, calib: Iterable[paddle.Tensor]) -> ResNet:
    """The subnet as a plain network (SuperNet.export: sliced weights) after score's per-code BN
    re-calibration (evaluate.calibrate_bn: the same images, momentum (k-1)/k), in eval mode. The
    supernet's BN buffers keep that calibration until the next one overwrites them."""
    calibrate_bn(model, widths, calib)
    net = model.export(widths)
    net.eval()
    return net


def inference_network(net: ResNet, space: SearchSpace, act: str) -> ResNet:
    """A copy of net on Paddle's own conv kernels (train.conv=stock): paddle.jit traces Paddle
    operators, and the fast conv's oneDNN calls go through ctypes, outside the graph it records.
    Paddle Inference runs its own oneDNN kernels on the CPU anyway."""
    with paddle.utils.unique_name.guard():
        plain = ResNet(net.widths, space, act, conv="stock", fuse_bn=False)
    plain.set_state_dict(net.state_dict())
    plain.eval()
    return plain


def named_state(net: ResNet, act: str) -> tuple[dict[str, np.ndarray], str]:
    """(state dict, naming): the organizers' names of BASELINE (blocks.0.conv, blocks.i.conv1/bn1/
    conv2/bn2/downsample.0/.1 numbered consecutively, blocks.D+1.fc, fc weight [in, out]) for a
    ReLU network; the project's (ResNet) names for another activation, which their code lacks."""
    own = {k: v.numpy() for k, v in net.state_dict().items()}
    if act != "relu":
        return own, "project"
    return {organizer_name(k, net.widths.depths): v for k, v in own.items()}, "organizers"


def load_exported(net: ResNet, path: str | os.PathLike) -> None:
    """Set a plain network to an exported model.pdparams (either naming), checked: every tensor of
    the network present with its shape, nothing else; a problem is one ExportError."""
    path = Path(path)
    raw = read_state_file(path, "exported weights not found")
    own = net.state_dict()
    organizers = any(k.startswith("blocks.") for k in raw)
    names = {(organizer_name(k, net.widths.depths) if organizers else k): k for k in own}
    problems = ([f"{n} missing" for n in names if n not in raw] + [f"{n} unknown" for n in raw if n not in names]
                + [f"{n} has shape {list(np.shape(raw[n]))}, not {list(own[k].shape)}"
                   for n, k in names.items() if n in raw and list(np.shape(raw[n])) != list(own[k].shape)])
    if problems:
        raise ExportError(f"{path}: does not fit the network of these widths ({len(problems)} problems, "
                          f"first: tensor {problems[0]})")
    net.set_state_dict({k: paddle.to_tensor(np.asarray(raw[n], "float32")) for n, k in names.items()})


def logged_score(cfg: dict, ckpt: Path, code: str) -> dict | None:
    """What `score` logged for the code with this checkpoint and these score settings (any list's
    log, shards included), or None."""
    pattern = runs.scores_path(cfg, "*", ckpt)
    for log in sorted(pattern.parent.glob(pattern.name[:-len(".jsonl")] + "*.jsonl")):
        for rec in read_jsonl(log):
            if rec.get("code") == code:
                return {"log": str(log), "acc": rec["acc"], "loss": rec["loss"], "images": rec.get("images")}
    return None


def input_normalization(cfg: dict) -> dict:
    """How the evaluation feeds images to the network: x / 255, then (x - mean) / std per channel."""
    name = cfg["data"]["name"]
    if name == "fashion_mnist":
        mean, std = [FMNIST_MEAN] * 3, [FMNIST_STD] * 3
        note = "grey 28x28 images padded to 32x32, repeated to 3 channels"
    elif name in cifar.DATASETS:
        mean, std = cifar.stats(name)
        note = "unaugmented"
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        note = "shorter side resized (bilinear) to int(resolution / 0.875), centre crop of resolution"
    return {"scale": 1 / 255, "mean": [round(float(m), 6) for m in mean],
            "std": [round(float(s), 6) for s in std], "layout": "NCHW RGB float32", "note": note}


def export_code(cfg: dict, model: SuperNet, space: SearchSpace, code: str, ckpt: Path,
                calib: Iterable[paddle.Tensor], val: Iterable | None, out: Path) -> dict:
    """Export one code into the directory out (written under a temporary name and renamed over
    any old one); returns its export.json."""
    widths = space.widths(code)
    part = model.parts_of([widths])[0][0]  # a few-shot supernet: the code's group
    net = exported_network(part, widths, calib)
    act, res, meta, s = cfg["space"]["act"], space.resolution, checkpoint.read_meta(ckpt), cfg["score"]
    state, naming = named_state(net, act)
    info = {"code": code, "widths": {"stem": widths.stem, "blocks": [list(map(list, b)) for b in widths.blocks]},
            "depths": list(widths.depths), "params": space.params(widths), "macs": space.flops(widths),
            "resolution": res, "num_classes": space.num_classes, "width_mult": space.width_mult, "act": act,
            "checkpoint": str(Path(ckpt).resolve()), "config_hash": meta.get("config_hash"),
            "step": meta.get("step"), "split": meta.get("split"),
            "calibration": {"images": s["calib_images"], "batch": s["calib_batch"], "data": cfg["data"]["name"],
                            "from": "the first score.calib_images training images, unaugmented, in fixed order",
                            "momentum": "(k-1)/k on batch k: the running statistics are the mean of the "
                                        "batches' statistics", "first_momenta": [calibration_momentum(k)
                                                                                  for k in (1, 2, 3)]},
            "score": logged_score(cfg, ckpt, code), "exported": None,
            "files": {"state_dict": STATE_FILE, "names": naming,
                      "loads_into": BASELINE if naming == "organizers" else "track1.network.resnet.ResNet",
                      "inference": [f"{INFERENCE}.json", f"{INFERENCE}.pdiparams"],
                      "input_spec": [None, space.in_channels, res, res]},
            "input": input_normalization(cfg)}
    if val is not None:
        acc, loss = evaluate_batches(net, val)
        info["exported"] = {"acc": acc, "loss": loss, "images": val.n, "mode": "per_code"}
        logged = info["score"]
        if logged and logged["acc"] != acc:  # tree mode's statistics equal per_code's up to float rounding
            print(f"export {code}: top-1 {acc:.6f} on the scoring images, score logged {logged['acc']:.6f} "
                  f"(score.mode {s['mode']})", file=sys.stderr)
    _write(out, state, inference_network(net, space, act), info)
    return info


def _write(out: Path, state: dict, plain: ResNet, info: dict) -> None:
    """All three files into a temporary directory, then renamed to out (an old out is moved aside only
    then): a kill at any moment leaves the old export (at worst as .<code>.old) or the new one, whole."""
    tmp, old = out.parent / f".{out.name}.tmp", out.parent / f".{out.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paddle.save(state, str(tmp / STATE_FILE))
    res = info["resolution"]
    spec = paddle.static.InputSpec([None, info["files"]["input_spec"][1], res, res], "float32", "x")
    paddle.jit.save(plain, str(tmp / INFERENCE), input_spec=[spec])
    write_json(tmp / INFO_FILE, info, indent=1)
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# -- the command ----------------------------------------------------------------------------------
def export(cfg: dict, codes: list[str], given_checkpoint: str | None = None,
           force: bool = False) -> list[tuple[Path, dict]]:
    """Export every code with the run's checkpoint (or the given one) into output/<run>/export/<code>/:
    (directory, export.json) each. Everything that can be checked is, before any work: an existing
    directory (unless force), the checkpoint."""
    outs = [export_dir(cfg, c) for c in codes]
    taken = [o for o in outs if o.exists()]
    if taken and not force:
        raise ExportError(f"{taken[0]}: already exported{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}; "
                          f"pass --force to replace")
    if not codes:
        return []
    ckpt = runs.find_checkpoint(cfg, given_checkpoint)
    space, model = runs.load_supernet(cfg, ckpt)
    calib = calibration_batches(cfg)
    val = validation_batches(cfg) if cfg["export"]["evaluate"] else None
    return [(out, export_code(cfg, model, space, code, ckpt, calib, val, out)) for code, out in zip(codes, outs)]


# -- inherited stand-alone training ---------------------------------------------------------------
def inherited_source(cfg: dict, codes: Iterable[str]) -> dict:
    """What stand-alone networks with standalone.init_from=export start from: the run's exports of
    the codes, exported first where missing; all must share one checkpoint and calibration (that
    identity is returned, and keys the stand-alone recipe)."""
    codes = list(dict.fromkeys(codes))
    missing = [c for c in codes if not (export_dir(cfg, c) / INFO_FILE).is_file()]
    if missing:
        print(f"standalone.init_from=export: exporting {len(missing)} codes into {run_dir(cfg) / 'export'}",
              file=sys.stderr)
        export(cfg, missing)
    sources = {}
    for c in codes:
        info = json.loads((export_dir(cfg, c) / INFO_FILE).read_text())
        key = {k: info[k] for k in ("checkpoint", "config_hash", "step", "split", "calibration")}
        sources.setdefault(json.dumps(key, sort_keys=True), c)
    if len(sources) > 1:
        first, other = list(sources.values())[:2]
        raise ExportError(f"standalone.init_from=export: the exports of {first} and {other} come from different "
                          f"checkpoints or calibrations; export them again with --force")
    return json.loads(next(iter(sources)))

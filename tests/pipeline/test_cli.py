import hashlib
import json
import os
import subprocess

import pytest

from track1.pipeline.cli import main
from track1.pipeline.config import load_config, run_dir
from track1.ranking.submission import demo_arch_list, write_arch_list

from conftest import REPO


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_unknown_config_key_is_one_line_error(capsys):
    code, err = _run(capsys, "prepare", "-o", "train.epochz=3")
    assert code == 2 and err == "error: override 'train.epochz=3': unknown key 'train.epochz'"


def test_missing_config_file(capsys, tmp_path):
    code, err = _run(capsys, "prepare", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: config file not found" in err


def test_malformed_arch_list_names_file_and_key(capsys, tmp_path):
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps({"arch1": {"acc": 0.0, "arch": "1252"}}))
    code, err = _run(capsys, "score", "-o", f"run.output_dir={tmp_path}", "--arch-list", str(bad))
    assert code == 2 and "list.json" in err and "arch1" in err and "4 characters" in err


def test_missing_image_folder_is_one_line_error(capsys, tmp_path):
    code, err = _run(capsys, "prepare", "-o", "data.name=folder", "-o", f"data.root={tmp_path / 'imagenet'}")
    assert code == 2 and err.startswith("error: ") and "imagenet" in err


def test_score_without_checkpoint(capsys, tmp_path):
    codes = tmp_path / "list.json"
    write_arch_list(codes, demo_arch_list(3, 0))
    code, err = _run(capsys, "score", "-o", f"run.output_dir={tmp_path}", "--arch-list", str(codes))
    assert code == 2 and "no checkpoint" in err
    # checkpoints without the pointer to the latest (lost, or a folder copied without it): say so
    root = run_dir(load_config(None, [f"run.output_dir={tmp_path}"])) / "checkpoints"
    for tag in ("epoch_001", "epoch_002", ".epoch_003.tmp"):
        (root / tag).mkdir(parents=True)
        (root / tag / "model.pdparams").write_bytes(b"")
    os.utime(root / "epoch_001" / "model.pdparams", (1, 1))  # the oldest
    code, err = _run(capsys, "score", "-o", f"run.output_dir={tmp_path}", "--arch-list", str(codes))
    assert code == 2 and err == (f"error: {root / 'latest.json'} is missing (it names the latest checkpoint), but "
                                 f"{root} holds epoch_001, epoch_002: pass --checkpoint {root / 'epoch_002'}, "
                                 f'or write {{"tag": "epoch_002"}} into it')


def test_validate_reports_changed_code(capsys, tmp_path):
    arch = demo_arch_list(4, 0)
    listed = tmp_path / "list.json"
    write_arch_list(listed, arch)
    sub = json.loads(listed.read_text())
    sub["arch3"]["arch"] = arch["arch2"]
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    code, err = _run(capsys, "validate", str(tmp_path / "sub.json"), "--arch-list", str(listed))
    assert code == 2 and "sub.json" in err and "arch3" in err
    sub["arch3"]["arch"] = arch["arch3"]
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    assert main(["validate", str(tmp_path / "sub.json"), "--arch-list", str(listed)]) == 0


def _run_sh(tmp_path, *args, env_extra=None):
    """run.sh with no OMP_NUM_THREADS in the environment: the config's run.threads sets it."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.run(["bash", str(REPO / "run.sh"), *args], cwd=REPO, env={**env, **(env_extra or {})},
                          capture_output=True, text=True, timeout=170)


def test_run_sh_end_to_end_resumes_and_skips(tmp_path):
    """The whole pipeline on a tiny config: an interrupted train stage resumes, finished stages skip."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"_base_: {REPO / 'configs' / 'default.yaml'}\n"
                   f"run: {{name: e2e, output_dir: {tmp_path / 'out'}, threads: 1}}\n"
                   "space: {width_mult: 0.125}\n"
                   "data: {train_size: 320, batch_size: 32}\n"
                   "train: {epochs: 2, log_every: 5, save_every_steps: 4, eval_images: 200}\n"
                   "score: {calib_images: 64, calib_batch: 32, val_images: 200, eval_batch: 100}\n"
                   f"submit: {{dir: {tmp_path / 'submit'}}}\n"
                   "export: {top_k: 2}\n")
    arch = tmp_path / "list.json"
    write_arch_list(arch, demo_arch_list(20, 5))
    # An interrupted training run (stopped after 6 of 20 steps) that run.sh must resume.
    part = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "track1", "train", "-c", str(cfg),
                           "-o", "train.max_steps=6"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert part.returncode == 0, part.stderr[-2000:]
    first = _run_sh(tmp_path, "--config", str(cfg), env_extra={"ARCH_LIST": str(arch)})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "resumed from" in first.stdout and "step_0000006" in first.stdout
    assert "1 CPU threads a process" in first.stdout  # run.threads, not the machine's cores
    assert "No ccache found" not in first.stderr  # Paddle's notice, which says nothing true about a run
    sub = tmp_path / "submit" / "e2e.json"
    data = json.loads(sub.read_text())
    assert list(data) == [f"arch{i}" for i in range(1, 21)]
    assert all(0.0 <= v["acc"] <= 1.0 for v in data.values())
    assert len({v["acc"] for v in data.values()}) > 1  # the supernet tells architectures apart
    for stage in ("prepare", "train", "score", "submit", "export"):
        assert (tmp_path / "out" / "e2e" / "stages" / f"{stage}.done").exists()
    best = sorted(data.values(), key=lambda v: -v["acc"])[:2]  # the export stage: the submission's 2 best
    assert sorted(p.name for p in (tmp_path / "out" / "e2e" / "export").iterdir()) == sorted(v["arch"] for v in best)
    again = _run_sh(tmp_path, "--config", str(cfg), env_extra={"ARCH_LIST": str(arch)})
    assert again.returncode == 0
    assert all(f"{s}: done earlier" in again.stdout for s in ("prepare", "train", "score", "submit", "export"))
    check = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "track1", "validate", str(sub),
                            "--arch-list", str(arch)], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_run_sh_keeps_the_device_it_was_set_up_for(tmp_path):
    """A venv set up for the CPU stays so when nvidia-smi appears (or is missing); only DEVICE swaps."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(REPO / ".venv" / "bin" / "python")
    (venv / ".requirements").write_text(hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()[:16])
    (venv / ".device").write_text("cpu")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A100 (UUID: GPU-1)'\n")
    (tools / "nvidia-smi").chmod(0o755)
    env = {"VENV": str(venv), "PATH": f"{tools}:{os.environ['PATH']}"}
    done = _run_sh(tmp_path, "--setup", env_extra=env)
    assert done.returncode == 0 and "setting up" not in done.stdout, done.stdout + done.stderr
    assert (venv / ".device").read_text().strip() == "cpu"


def test_run_sh_rejects_bad_arguments(tmp_path):
    bad = _run_sh(tmp_path, "--from", "nowhere")
    assert bad.returncode == 2 and "--from must be one of" in bad.stderr
    missing = _run_sh(tmp_path, env_extra={"ARCH_LIST": str(tmp_path / "none.json")})
    assert missing.returncode == 2 and "none.json" in missing.stderr


def test_proxies_command_writes_official_shape_and_resumes(capsys, tmp_path):
    listed = tmp_path / "list.json"
    arch = demo_arch_list(5, 2)
    write_arch_list(listed, arch)
    args = ["proxies", "--proxy", "synflow", "--arch-list", str(listed), "-o", f"run.output_dir={tmp_path}",
            "-o", "run.name=px", "-o", "space.width_mult=0.125"]
    assert main(args) == 0
    out = tmp_path / "px" / "proxies" / "list@synflow.json"
    scores = json.loads(out.read_text())
    assert list(scores) == list(arch) and [v["arch"] for v in scores.values()] == list(arch.values())
    assert all(v["acc"] > 0 and v["seconds"] >= 0 for v in scores.values())
    (log,) = (tmp_path / "px" / "proxies").glob("list@synflow.*.jsonl")   # named by its settings
    lines = log.read_text().splitlines()
    assert main(args) == 0  # a second run finds everything done and appends nothing
    assert log.read_text().splitlines() == lines
    # Another activation starts a log of its own beside it (and rewrites the output).
    assert main([*args, "-o", "space.act=mish"]) == 0
    logs = list((tmp_path / "px" / "proxies").glob("list@synflow.*.jsonl"))
    assert len(logs) == 2 and log.read_text().splitlines() == lines


def test_evaluate_writes_metrics_and_refuses_other_codes(capsys, tmp_path):
    arch = demo_arch_list(6, 4)
    truth = {k: {"acc": 0.5 + 0.01 * i, "arch": c} for i, (k, c) in enumerate(arch.items())}
    pred = {k: {"acc": 0.1 * i, "arch": c} for i, (k, c) in enumerate(arch.items())}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    args = ["evaluate", "--pred", str(tmp_path / "pred.json"), "--truth", str(tmp_path / "truth.json"),
            "--plot", str(tmp_path / "p.png")]
    assert main(args) == 0
    m = json.loads((tmp_path / "pred_vs_truth.json").read_text())
    assert m["kendall"] == pytest.approx(1.0) and m["n"] == 6 and m["top5"] == 1.0
    assert m["intervals"]["kendall"] == pytest.approx([1.0, 1.0]) and m["bootstrap"]["resamples"] == 1000
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two predictions: the paired bootstrap of their difference, printed and in the JSON.
    worse = {k: {"acc": [0.3, 0.1, 0.2, 0.5, 0.4, 0.0][i], "arch": c} for i, (k, c) in enumerate(arch.items())}
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    capsys.readouterr()
    assert main([*args[:3], "--pred", str(tmp_path / "worse.json"), *args[3:5], "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    both = json.loads((tmp_path / "pred_minus_worse_vs_truth.json").read_text())
    d = both["difference"]["kendall"]
    assert d["d"] == pytest.approx(1.0 - both["preds"][1]["kendall"]) and both["bootstrap"]["resamples"] == 200
    assert f"kendall: pred - worse = {d['d']:.4f} [{d['interval'][0]:.4f}, {d['interval'][1]:.4f}]" in out
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--resamples", "0"])
    assert exit_.value.code == 2 and "--resamples: expected a whole number of at least 1" in capsys.readouterr().err
    del pred["arch2"]
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    code, err = _run(capsys, *args)
    assert code == 2 and err.startswith("error: ") and arch["arch2"] in err


def test_codes_outside_the_official_sub_space_and_old_checkpoints_are_refused(capsys, tmp_path):
    from track1.space import Arch, parse
    tiny = ["-o", f"run.output_dir={tmp_path}", "-o", "run.name=sub", "-o", "space.width_mult=0.125",
            "-o", "data.train_size=64", "-o", "data.batch_size=32", "-o", "train.max_steps=2",
            "-o", "train.visualdl=false", "-o", "score.calib_images=32", "-o", "score.val_images=32",
            "-o", f"submit.dir={tmp_path / 'submit'}"]
    assert main(["train", *tiny]) == 0
    arch = demo_arch_list(4, 3)
    a = parse(arch["arch3"])
    untied_stem = 1 if a.stem_ratio != 1 else 2
    arch["arch3"] = Arch(1, a.depths, untied_stem, a.blocks).code  # a list mixing both
    listed = tmp_path / "mixed.json"
    write_arch_list(listed, arch)
    for command in ("score", "submit"):
        code, err = _run(capsys, command, *tiny, "--arch-list", str(listed))
        assert code == 2 and err.startswith("error: ") and "\n" not in err
        assert ("1 code outside the official sub-space" in err and "arch3" in err and arch["arch3"] in err
                and f"stem ratio code {untied_stem} differs from stage 1's output code" in err)
    assert not (tmp_path / "sub" / "scores").exists() and not (tmp_path / "submit").exists()
    # A checkpoint written before the official sub-space (no format field) is refused, not resumed.
    from track1.pipeline.checkpoint import latest
    ckpt = latest(tmp_path / "sub")
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["format"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    official = tmp_path / "official.json"
    write_arch_list(official, demo_arch_list(3, 3))
    for argv in (["score", *tiny, "--arch-list", str(official)], ["train", *tiny, "--resume"]):
        code, err = _run(capsys, *argv)
        assert code == 2 and "checkpoint format 1, this version reads 2" in err, argv
def test_score_log_is_keyed_by_the_scoring_settings(capsys, tmp_path):
    from track1.files import read_jsonl
    from track1.pipeline.train import train
    from conftest import tiny_config
    keys = ["run.output_dir", "run.name", "space.width_mult", "data.train_size", "data.batch_size",
            "data.root", "train.epochs", "score.calib_images", "score.calib_batch", "score.eval_batch"]
    cfg = tiny_config(tmp_path, "train.max_steps=2")
    train(cfg, progress=False)
    args = [a for k in keys for a in ("-o", f"{k}={cfg[k.split('.')[0]][k.split('.')[1]]}")]
    listed = tmp_path / "list.json"
    write_arch_list(listed, demo_arch_list(4, 1))
    scores = tmp_path / "tiny" / "scores"

    def score(val_images):
        assert main(["score", *args, "-o", f"score.val_images={val_images}", "--arch-list", str(listed)]) == 0
        return {p.name: [r["loss"] for r in read_jsonl(p)] for p in scores.glob("*.jsonl")}

    first = score(64)
    again = score(64)
    assert again == first and len(first) == 1  # same settings: the log is resumed, not rewritten
    other = score(32)
    (new,) = other.keys() - first.keys()  # another val_images: a new log with new numbers
    assert other[new] != first[next(iter(first))]
    assert json.loads((scores / new).with_suffix(".settings.json").read_text())["score"]["val_images"] == 32


def test_gpu_requirements_swap_only_the_paddle_wheel():
    def packages(name):
        lines = (REPO / name).read_text().splitlines()
        return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip() and not l.startswith("-")]
    cpu, gpu = packages("requirements.txt"), packages("requirements-gpu.txt")
    assert cpu[0].startswith("paddlepaddle==") and gpu[0] == cpu[0].replace("paddlepaddle", "paddlepaddle-gpu")
    assert cpu[1:] == gpu[1:]


@pytest.mark.parametrize("nproc", ["abc", "0", "-1", "2x"])
def test_run_sh_rejects_a_bad_nproc_in_one_line(tmp_path, nproc):
    """Before anything runs (here: before the set-up), not as a launcher-less run that exits 0."""
    r = _run_sh(tmp_path, "--setup", env_extra={"NPROC": nproc})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"run.sh: NPROC must be a whole number of processes, at least 1, got '{nproc}'\n"


def test_run_sh_rejects_an_unknown_device(tmp_path):
    r = _run_sh(tmp_path, "--setup", env_extra={"DEVICE": "tpu"})
    assert r.returncode == 2 and "DEVICE must be cpu, gpu or auto" in r.stderr


def _run_preset_tiny(tmp_path, preset: str, name: str, *sections: str):
    """bash run.sh on a preset at tiny sizes (width 0.125, 128 images, 5 codes), sections added."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("\n".join([f"_base_: {REPO / 'configs' / (preset + '.yaml')}",
                              f"run: {{name: {name}, output_dir: {tmp_path / 'out'}, threads: 1}}",
                              "space: {width_mult: 0.125}", "data: {train_size: 128, batch_size: 32}",
                              "score: {calib_images: 32, calib_batch: 32, val_images: 100, eval_batch: 100}",
                              f"submit: {{dir: {tmp_path / 'submit'}}}", *sections]) + "\n")
    arch = tmp_path / "list.json"
    write_arch_list(arch, demo_arch_list(5, 3))
    return _run_sh(tmp_path, "--config", str(cfg), env_extra={"ARCH_LIST": str(arch)})


def test_run_sh_two_phase_recipe_pretrains_then_fine_tunes(tmp_path):
    """configs/finetune.yaml end to end at tiny sizes: prepare, pretrain, train, score, submit."""
    done = _run_preset_tiny(tmp_path, "finetune", "ft", "pretrain: {epochs: 1}", "train: {epochs: 1, eval_images: 100}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pretrain: trained the full network" in done.stdout
    assert (tmp_path / "out" / "ft" / "pretrained" / "resnet48.pdparams").exists()
    assert (tmp_path / "submit" / "ft.json").exists()
    for stage in ("prepare", "pretrain", "train", "score", "submit"):
        assert (tmp_path / "out" / "ft" / "stages" / f"{stage}.done").exists()


@pytest.mark.parametrize("preset", ["fewshot_width", "fewshot_depth", "progressive", "progressive_fewshot", "biased"])
def test_run_sh_runs_each_winning_teams_preset_capped_by_max_steps(tmp_path, preset):
    done = _run_preset_tiny(tmp_path, preset, "p", "train: {eval_images: 100, max_steps: 12}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "submit" / "p.json").exists()
    # train.max_steps caps the whole run, shared by epochs (track1/pipeline/caps.py): the one-shot run
    # (at least the steps progressive's phases need, within its own epochs) and each split run (4 steps
    # an epoch, so 0.4 epochs of a width step are 2 steps, a depth group's 0.2 or 0.3 one); the pretrain
    # run its epoch
    runs_done = {p.parent.parent.name: json.loads(p.read_text())["step"]
                 for p in (tmp_path / "out" / "p").rglob("latest.json")}
    expected = {"fewshot_width": {"p": 5, **{f"width4x{n}": 2 for n in range(2, 8)}},
                "fewshot_depth": {"pretrained": 4, "p": 9, **{f"depth34x5_g{g}": 1 for g in range(4)}},
                "progressive": {"p": 12}, "biased": {"p": 12},
                "progressive_fewshot": {"pretrained": 4, "p": 8, **{f"depth34x5_g{g}": 1 for g in range(4)}}}[preset]
    assert runs_done == expected
    if preset.startswith("fewshot"):
        assert "fewshot: " in done.stdout and "split step(s)" in done.stdout


@pytest.mark.parametrize("preset", ["cream_authors", "rdnas_authors"])
def test_run_sh_runs_the_authors_presets_end_to_end(tmp_path, preset):
    """The authors' presets through bash run.sh at tiny sizes: 12 steps, Cream past its warm-up with
    a matcher update (every 4 steps here), RD-NAS with its pairs from the every-ratio draw, after its
    pretrain stage."""
    cream = ", cream: {warmup: 0.1, meta_every_steps: 4}" if preset == "cream_authors" else ""
    # rdnas_authors trains on the frozen statistics of its pretrain stage's network: 40 steps, for running
    # statistics that no longer hold the initial 0 and 1 (0.9^8 = 43% of them after 8 steps: NaN here)
    pretrain = ["pretrain: {epochs: 10}"] if preset == "rdnas_authors" else []
    done = _run_preset_tiny(tmp_path, preset, "a", "train: {eval_images: 100, max_steps: 12, epochs: 3" + cream + "}",
                            *pretrain)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "a" / "checkpoints" / "latest.json").read_text())["step"] == 12
    sub = json.loads((tmp_path / "submit" / "a.json").read_text())
    assert len(sub) == 5 and all(0.0 <= v["acc"] <= 1.0 for v in sub.values())

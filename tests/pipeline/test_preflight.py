"""The pre-flight: its table and verdict on a synthetic image folder, and a failure as one line."""
import os
import subprocess
import sys


from conftest import REPO
from fakes import write_image_folders
from track1.pipeline import preflight, runtime
from track1.pipeline.cli import main

TINY = ["space.width_mult=0.125", "space.resolution=32", "space.num_classes=2", "data.name=folder",
        "data.batch_size=4", "data.num_workers=1", "score.calib_images=4", "score.calib_batch=4",
        "score.eval_batch=4", "score.chunk_images=8", "train.eval_images=0", "train.eval_subnets=2"]


def _args(tmp_path, *more):
    write_image_folders(tmp_path / "images")
    overrides = [*TINY, f"data.root={tmp_path / 'images'}", f"run.output_dir={tmp_path / 'out'}", *more]
    return ["preflight", *[a for o in overrides for a in ("-o", o)]]


def test_preflight_prints_every_check_and_a_verdict(tmp_path, capsys):
    assert main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    for row in ("device", "data", "/dev/shm", "training step", "epoch-end check", "data loader", "host RAM"):
        assert f"\n{row} " in f"\n{out}", row
    assert "10 training images, 2 steps an epoch of 4 x 1 images" in out
    assert "ms at batch 4 (amp off), peak memory" in out
    assert "8 images: peak memory" in out  # one walk: a calibration batch of 4 + 4 evaluation images
    assert out.strip().splitlines()[-1] == "verdict: ready (0 failed, 0 warnings)"
    assert not (tmp_path / "out").exists()  # a pre-flight writes nothing


def test_a_check_that_would_fail_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "_memory_capacity", lambda: (10 * 2 ** 20, "host, this rank's share"))
    assert main(_args(tmp_path)) == 2
    captured = capsys.readouterr()
    assert "training step    FAIL" in captured.out and "verdict: not ready" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: preflight: training step: one step needs ")
    assert err[0].endswith("lower data.batch_size or use train.amp")


def test_a_small_dev_shm_is_a_warning_with_the_fix(monkeypatch, tmp_path):
    from track1.pipeline.config import load_config
    cfg = load_config(None, [*TINY, "data.num_workers=8", "data.batch_size=128", "space.resolution=224"])
    small = os.statvfs_result((4096, 4096, 16384, 16384, 16384, 0, 0, 0, 0, 255))  # 64 MB, all free
    monkeypatch.setattr(os, "statvfs", lambda path: small)
    monkeypatch.setattr(os.path, "isdir", lambda path: True)
    notes = runtime.shared_memory_notes(cfg)
    assert len(notes) == 1 and notes[0].startswith("warning: /dev/shm has 64 MB free of 64 MB")
    assert "--shm-size=" in notes[0] and "--ipc=host" in notes[0] and "data.shared_memory=false" in notes[0]
    assert runtime.shared_memory_notes(load_config(None, [*TINY, "data.num_workers=8", "data.batch_size=128",
                                                          "data.shared_memory=false"])) == []


def test_preflight_under_the_launcher_checks_that_the_ranks_agree(tmp_path):
    args = _args(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                          "--log_dir", str(tmp_path / "log"), str(REPO / "tools" / "launch.py"), *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    log0 = (tmp_path / "log" / "workerlog.0").read_text()
    assert run.returncode == 0, log0[-2000:]
    assert "ranks            ok       2 ranks, all-reduce of 1..2: 3 (expected 3)" in log0
    assert "verdict: ready" in log0

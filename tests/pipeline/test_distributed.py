import json
import os
import subprocess
import sys

import numpy as np
import paddle

from track1.pipeline.cli import main
from track1.files import read_jsonl

from conftest import REPO, tiny_config

TINY_KEYS = ["run.output_dir", "run.name", "space.width_mult", "data.train_size", "data.batch_size",
             "data.root", "train.epochs", "score.calib_images", "score.calib_batch",
             "score.val_images", "score.eval_batch"]


def _get(cfg, dotted):
    for k in dotted.split("."):
        cfg = cfg[k]
    return cfg


def test_two_ranks_under_paddle_launch_train_identical_weights(tmp_path):
    overrides = [f"run.output_dir={tmp_path}", "run.name=dist", "space.width_mult=0.125",
                 "data.train_size=256", "data.batch_size=16", "train.epochs=1",
                 "train.eval_images=64", "score.calib_images=32", "score.calib_batch=32",
                 "score.eval_batch=16", "monitor.every_epochs=1", "monitor.num_codes=4",
                 "monitor.calib_images=32", "monitor.val_images=32",
                 "data.root=" + str(REPO / "data" / "fashion-mnist")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                          "--log_dir", str(tmp_path / "log"), str(REPO / "tests" / "pipeline" / "dist_worker.py"),
                          str(tmp_path), *overrides], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=240)
    logs = "".join((tmp_path / "log" / f"workerlog.{r}").read_text()[-1500:] for r in range(2)
                   if (tmp_path / "log" / f"workerlog.{r}").exists())
    assert run.returncode == 0, logs
    # Both ranks trained and passed the weight-agreement check at the checkpoint ...
    assert (tmp_path / "trained.0").exists() and (tmp_path / "trained.1").exists()
    # ... which does catch one rank whose weights moved.
    assert (tmp_path / "drift_caught.0").exists() and (tmp_path / "drift_caught.1").exists()
    # Only rank 0 wrote the checkpoint, at the end of the 8-step epoch.
    ckpts = sorted(p.name for p in (tmp_path / "dist" / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["epoch_001"]
    log0 = (tmp_path / "log" / "workerlog.0").read_text()
    assert "world size 2" in log0 and "gloo" in log0
    # The epoch-end evaluation, sharded over the two ranks (2 of the 4 batches each), equals the
    # unsharded one on the saved checkpoint, whose BN statistics it did not change.
    from track1.pipeline.checkpoint import load_weights
    from track1.pipeline.config import load_config
    from track1.network.build import build_supernet
    from track1.ranking.health import health, health_sets
    cfg = load_config(None, overrides)
    space, model = build_supernet(cfg)
    load_weights(tmp_path / "dist" / "checkpoints" / "epoch_001", model)
    top1 = health(model, space, health_sets(cfg))
    assert (f"val top-1 largest {top1['val/top1_largest']:.4f} smallest "
            f"{top1['val/top1_smallest']:.4f}") in log0
    # The rank check: each rank scored its half of the list, rank 0 wrote all of it.
    monitor = tmp_path / "dist" / "monitor"
    assert [len(list(read_jsonl(monitor / f"demo4@epoch_001.shard{r}of2.jsonl"))) for r in range(2)] == [2, 2]
    assert len(json.loads((monitor / "demo4@epoch_001.json").read_text())) == 4


def test_sharded_scoring_equals_unsharded(tmp_path, capsys):
    from track1.ranking.submission import demo_arch_list, write_arch_list
    from track1.pipeline.train import train
    cfg = tiny_config(tmp_path, "train.max_steps=3")
    train(cfg, progress=False)
    cfg_args = [a for key in TINY_KEYS for a in ("-o", f"{key}={_get(cfg, key)}")]
    listed = tmp_path / "list.json"
    write_arch_list(listed, demo_arch_list(9, 3))
    assert main(["score", *cfg_args, "--arch-list", str(listed)]) == 0
    for i in range(2):
        assert main(["score", *cfg_args, "--arch-list", str(listed), "--shard", f"{i}/2"]) == 0
    from track1.files import read_jsonl
    scores = tmp_path / "tiny" / "scores"
    (log,) = [p for p in scores.glob("list@step_0000003.*.jsonl") if ".shard" not in p.name]
    whole = {r["key"]: (r["acc"], r["loss"]) for r in read_jsonl(log)}
    parts = [{r["key"]: (r["acc"], r["loss"]) for r in read_jsonl(log.with_suffix(f".shard{i}of2.jsonl"))}
             for i in range(2)]
    assert len(parts[0]) == 4 and len(parts[1]) == 5 and not parts[0].keys() & parts[1].keys()
    assert {**parts[0], **parts[1]} == whole
    # submit merges the shards (and the unsharded file); a missing shard is refused by name.
    log.unlink()
    assert main(["submit", *cfg_args, "--arch-list", str(listed), "--out", str(tmp_path / "s.json")]) == 0
    log.with_suffix(".shard1of2.jsonl").unlink()
    assert main(["submit", *cfg_args, "--arch-list", str(listed), "--out", str(tmp_path / "s.json")]) == 2
    assert "5 keys missing" in capsys.readouterr().err


def test_two_rank_run_interrupted_and_resumed_under_the_launcher_ends_the_same(tmp_path):
    """The user's multi-GPU path (tools/launch.py under paddle.distributed.launch), on 2 CPU ranks:
    a run stopped at step 3 and resumed to step 6 ends with the weights of a run straight to 6."""
    base = [f"run.output_dir={tmp_path}", "space.width_mult=0.125", "data.train_size=256",
            "data.batch_size=16", "train.epochs=1", "train.save_every_steps=100", "train.eval_images=64",
            "score.calib_images=32", "score.calib_batch=32", "data.root=" + str(REPO / "data" / "fashion-mnist")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(name, steps, *flags):
        args = [a for o in [*base, f"run.name={name}", f"train.max_steps={steps}"] for a in ("-o", o)]
        log = tmp_path / f"log_{name}_{steps}"
        run = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                              "--log_dir", str(log), str(REPO / "tools" / "launch.py"), "train", *args,
                              *flags], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, "".join(p.read_text()[-1500:] for p in sorted(log.glob("workerlog.*")))
        return (log / "workerlog.0").read_text()

    launch("straight", 6)
    launch("resumed", 3)
    assert (tmp_path / "resumed" / "checkpoints" / "step_0000003").is_dir()
    assert f"resumed from {tmp_path / 'resumed' / 'checkpoints' / 'step_0000003'} at step 3/6" in \
        launch("resumed", 6, "--resume")
    a = paddle.load(str(tmp_path / "straight" / "checkpoints" / "step_0000006" / "model.pdparams"))
    b = paddle.load(str(tmp_path / "resumed" / "checkpoints" / "step_0000006" / "model.pdparams"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)

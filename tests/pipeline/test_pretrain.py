"""The two-phase recipe: the pretrain stage, a supernet started from a full network (reordered), and
distillation from it as a frozen teacher; resumes bit for bit."""
import re

import numpy as np
import paddle
import pytest

from conftest import REPO, tiny_config
from fakes import organizers_file
from track1.network.build import build_supernet
from track1.network.pretrained import pretrained_file, read_full_network, reorder_mid_channels
from track1.pipeline import checkpoint
from track1.pipeline.cli import main
from track1.pipeline.config import load_config, run_dir
from track1.pipeline.pretrain import pretrain
from track1.pipeline.train import train
from track1.pipeline.trainer import Trainer

PRETRAIN = ["pretrain.enabled=true", "pretrain.epochs=1", "pretrain.max_steps=3"]
FINETUNE = [*PRETRAIN, "train.init_reorder=true", "train.distill.enabled=true", "train.epochs=1"]


def _weights(path):
    return {k: np.asarray(v) for k, v in paddle.load(str(path / "model.pdparams")).items()}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny run's pretrain stage (3 steps of the largest subnet), done once."""
    tmp = tmp_path_factory.mktemp("pre")
    cfg = tiny_config(tmp, *FINETUNE)
    written, what = pretrain(cfg, progress=False)
    return cfg, written, what


def test_pretrain_writes_the_full_network_in_the_organizers_names(pretrained):
    cfg, written, what = pretrained
    assert written == pretrained_file(run_dir(cfg)) and "trained the full network" in what
    stage = run_dir(cfg) / "pretrained"
    last = checkpoint.latest(stage)
    assert checkpoint.read_meta(last)["step"] == 3  # pretrain.max_steps caps the stage
    saved = paddle.load(str(written))
    assert len(saved) == 252 and "blocks.0.conv.weight" in saved and "blocks.24.fc.bias" in saved
    # The file is the stage's final weights, tensor for tensor.
    _, model = build_supernet(cfg)
    state = read_full_network(written, model)
    final = _weights(last)
    assert all(np.array_equal(state[k], final[k]) for k in final)
    # The pretrain run trains the largest subnet alone: its checkpoint keeps that config.
    assert "sampler: largest" in (last / "config.yaml").read_text()
    assert pretrain(tiny_config(run_dir(cfg).parent, *FINETUNE, "train.init_from=x.pdparams"))[1].startswith(
        "skipped: train.init_from is x.pdparams")


def test_training_starts_from_the_reordered_file_and_distils_from_a_frozen_teacher(pretrained):
    cfg, written, _ = pretrained
    trainer = Trainer(cfg, steps_per_epoch=8, run_dir=run_dir(cfg))
    trainer.start()
    expected = reorder_mid_channels(read_full_network(written, trainer.model))
    assert all(np.array_equal(v.numpy(), expected[k]) for k, v in trainer.model.state_dict().items())
    (teacher_method,) = [m for m in trainer.methods if m.name == "distill"]
    teacher = teacher_method.teacher
    before = {k: v.numpy().copy() for k, v in teacher.state_dict().items()}
    x = paddle.randn([8, 3, 32, 32])
    y = paddle.to_tensor(np.arange(8) % 10, dtype="int64")
    for step in range(3):
        scalars = trainer.step(x, y, step)
    assert scalars["distill/loss"] > 0
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    after = teacher.state_dict()
    for k, v in before.items():  # weights and BN statistics alike, bit for bit
        np.testing.assert_array_equal(v, after[k].numpy(), err_msg=k)
    # The supernet did learn (from the distillation too: without it the same steps differ).
    moved = Trainer(tiny_config(run_dir(cfg).parent / "plain", *FINETUNE, "train.distill.enabled=false"),
                    steps_per_epoch=8, run_dir=run_dir(cfg))
    moved.start()
    for step in range(3):
        moved.step(x, y, step)
    a, b = trainer.model.stem_conv.weight.numpy(), moved.model.stem_conv.weight.numpy()
    assert not np.array_equal(a, expected["stem_conv.weight"]) and not np.array_equal(a, b)


def test_a_fine_tune_killed_and_resumed_ends_with_the_same_weights(pretrained, tmp_path):
    cfg, written, _ = pretrained
    given = [*FINETUNE, f"train.init_from={written}"]
    full = train(tiny_config(tmp_path / "a", *given, "train.max_steps=5"), progress=False)
    train(tiny_config(tmp_path / "b", *given, "train.max_steps=2"), progress=False)
    resumed = train(tiny_config(tmp_path / "b", *given, "train.max_steps=5"), resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The frozen teacher travels with the checkpoint: a resume needs the file no more.
    state = checkpoint.load_state(resumed)
    assert set(state["distill"]["teacher"]) == set(read_full_network(written, build_supernet(cfg)[1]))


def test_the_start_up_says_what_was_loaded_reordered_and_frozen(pretrained, tmp_path, capsys):
    """One line for the supernet's start (file, tensors, reordered or not), one for the frozen
    teacher; a resume loads neither (its checkpoint has both) and says so."""
    cfg, written, _ = pretrained
    given = [*FINETUNE, f"train.init_from={written}", "train.max_steps=1"]
    train(tiny_config(tmp_path, *given), progress=False)
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith(("init:", "distill:"))] == [
        f"init: the supernet starts from train.init_from {written} (252 tensors, mid channels reordered by importance)",
        f"distill: every subnet also learns from a frozen teacher, {written} (252 tensors, mid channels in their "
        f"saved order), weight 1.0; in eval mode, its BN statistics never move"]
    train(tiny_config(tmp_path, *given[:-1], "train.max_steps=2"), resume=True, progress=False)
    out = capsys.readouterr().out
    assert "resumed from" in out and "init:" not in out and "distill:" not in out
    # From the pretrain stage's file, not reordered, no teacher; from scratch.
    trainer = Trainer(tiny_config(run_dir(cfg).parent, *PRETRAIN), steps_per_epoch=8, run_dir=run_dir(cfg))
    assert trainer.start() == [f"init: the supernet starts from the pretrain stage's file {written} (252 tensors, "
                               f"mid channels in their saved order)"]
    assert Trainer(tiny_config(tmp_path), steps_per_epoch=8).start() == [
        "init: the supernet starts from scratch (no train.init_from, no pretrain stage before it)"]


def test_a_missing_or_misfit_init_file_is_one_line(tmp_path, capsys, pretrained):
    out = tmp_path / "out"
    args = ["train", "-o", f"run.output_dir={out}", "-o", "data.train_size=64", "-o", "data.batch_size=32"]
    assert main([*args, "-o", f"train.init_from={tmp_path / 'none.pdparams'}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'none.pdparams'}: full-network file not found (train.init_from)"]
    # A width-0.125 file for the width-0.25 default names the first tensor and both shapes.
    assert main([*args, "-o", f"train.init_from={pretrained[1]}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensor blocks.0.conv.weight has shape [8, 3, 7, 7]" in err[0] and "[16, 3, 7, 7]" in err[0]
    assert not (out / "fmnist_sandwich" / "checkpoints").exists()


def test_the_documented_command_takes_the_organizers_file_as_it_is(tmp_path):
    """configs/finetune_imagenet.yaml's command, with a stand-in of the organizers' resnet48.pdparams
    (its names and shapes: width 1.0, 1,000 classes): the config passes its checks, the supernet
    starts from the file reordered, the frozen teacher is the same file (configs/finetune.yaml's
    header documented the real file for a width-0.25, 10-class preset)."""
    preset = REPO / "configs" / "finetune_imagenet.yaml"
    header = " ".join(line.lstrip("# ").rstrip("\\ ") for line in preset.read_text().splitlines()
                      if line.startswith("#  "))
    overrides = re.findall(r"-o (\S+)", header.split("bash run.sh -c configs/finetune_imagenet.yaml", 1)[1])
    assert overrides == ["data.root=/data/ILSVRC2012", "train.init_from=/data/resnet48.pdparams"]
    path = tmp_path / "resnet48.pdparams"
    paddle.save(organizers_file(np.random.default_rng(0)), str(path))
    cfg = load_config(preset, [o.replace("/data/resnet48.pdparams", str(path)) for o in overrides] +
                      [f"run.output_dir={tmp_path}"])
    assert (cfg["space"]["width_mult"], cfg["space"]["num_classes"], cfg["data"]["name"]) == (1.0, 1000, "folder")
    trainer = Trainer(cfg, steps_per_epoch=10, run_dir=run_dir(cfg))
    assert trainer.start() == [
        f"init: the supernet starts from train.init_from {path} (252 tensors, mid channels reordered by importance)",
        f"distill: every subnet also learns from a frozen teacher, {path} (252 tensors, mid channels in their "
        f"saved order), weight 1.0; in eval mode, its BN statistics never move"]
    assert np.array_equal(trainer.model.fc.weight.numpy(), paddle.load(str(path))["blocks.24.fc.weight"])
    # One step at the preset's 224 px, batch 2: the loaded network trains and its teacher stays.
    x = paddle.to_tensor(np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype("float32"))
    scalars = trainer.step(x, paddle.to_tensor([3, 999], dtype="int64"), 0)
    assert np.isfinite(scalars["loss/largest"]) and scalars["distill/loss"] > 0

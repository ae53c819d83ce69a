"""Few-shot supernets: the splits, inheritance, routing in both scoring modes, resume, refusals."""
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import tiny_config
from track1.network.fewshot import FewShotSupernet
from track1.network.supernet import SuperNet
from track1.pipeline import checkpoint, runs
from track1.pipeline.fewshot import fewshot, inherit, split_config
from track1.pipeline.train import train
from track1.ranking.evaluate import score_widths
from track1.ranking.scoring import score_list
from track1.ranking.submission import demo_arch_list
from track1.space import Arch, CodeError, SearchSpace, parse
from track1.space.split import depth_split, parents, width_split

SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)


def test_width_split_groups_and_their_parents():
    """The 4th place's peel rule: n groups give codes 1 .. n-1 one each, the rest group 0."""
    assert [g.outs[3] for g in width_split(4, 3).groups] == [(3, 4, 5, 6, 7), (2,), (1,)]
    assert parents(width_split(4, 3), width_split(4, 2)) == [0, 0, 1]
    assert parents(width_split(4, 4), width_split(4, 3)) == [0, 0, 1, 2]
    codes = list(demo_arch_list(300, 1, SPACE).values())
    for split in (width_split(4, 6), width_split(2, 3), depth_split()):
        for code in codes:  # every code in exactly one group, found from its widths too
            arch = parse(code)
            assert sum(g.contains(arch) for g in split.groups) == 1
            assert split.group_of_widths(SPACE.widths(arch), SPACE) == split.group_of(arch)
    a = parse(next(c for c in codes if parse(c).depths[3] >= 2))
    out = a.blocks[3][0][1]
    untied = Arch(1, a.depths, a.stem_ratio, a.blocks[:3] + (a.blocks[3][:1] + ((1, 1 + out % 7),) + a.blocks[3][2:],))
    with pytest.raises(CodeError, match=f"code {untied.code} fits no group of the few-shot split width4x6"):
        width_split(4, 6).group_of(untied)


def test_a_split_copies_its_parents_weights_exactly():
    paddle.seed(0)
    one_shot = SuperNet(SPACE)
    first = FewShotSupernet(SPACE, width_split(4, 2))
    first.set_state_dict(inherit(one_shot.state_dict(), None, width_split(4, 2)))
    for part in first.parts:
        for k, v in one_shot.state_dict().items():
            np.testing.assert_array_equal(part.state_dict()[k].numpy(), v.numpy())
    # Make the two groups differ, then grow to 3 groups: each child is the parent group of its codes.
    for p in first.parts[1].parameters():
        p.set_value(p + 1.0)
    second = FewShotSupernet(SPACE, width_split(4, 3))
    second.set_state_dict(inherit(first.state_dict(), width_split(4, 2), width_split(4, 3)))
    for child, parent in zip(second.parts, (0, 0, 1)):
        for k, v in first.parts[parent].state_dict().items():
            np.testing.assert_array_equal(child.state_dict()[k].numpy(), v.numpy())


def test_each_code_is_scored_by_its_groups_weights_in_both_modes(tmp_path):
    paddle.seed(1)
    model = FewShotSupernet(SPACE, width_split(4, 3), conv="fast")
    for g, part in enumerate(model.parts):  # three different sub-supernets
        for p in part.parameters():
            p.set_value(p * (1.0 + 0.2 * g))
    codes = demo_arch_list(12, 4, SPACE)
    rng = np.random.default_rng(0)
    calib = [paddle.to_tensor(rng.normal(size=(8, 3, 32, 32)).astype("float32"))]
    x = paddle.to_tensor(rng.normal(size=(16, 3, 32, 32)).astype("float32"))
    val = [(x, paddle.to_tensor(rng.integers(0, 10, 16), dtype="int64"))]
    listed = {mode: score_list(model, SPACE, codes, calib, val, tmp_path / f"{mode}.jsonl", mode, 1024,
                               progress=False) for mode in ("tree", "per_code")}
    for key, code in codes.items():
        w = SPACE.widths(code)
        part = model.parts[model.group_of(w)]
        acc, loss = score_widths(part, w, calib, val)
        for mode in ("tree", "per_code"):
            assert listed[mode][key]["acc"] == acc
            assert listed[mode][key]["loss"] == pytest.approx(loss, rel=1e-5)
        alone = score_list(model, SPACE, {key: code}, calib, val, tmp_path / f"alone_{key}.jsonl", "tree", 1024,
                           progress=False)
        assert alone[key]["acc"] == acc and alone[key]["loss"] == pytest.approx(listed["tree"][key]["loss"], rel=1e-6)
    assert len({model.group_of(SPACE.widths(c)) for c in codes.values()}) == 3  # every group scored


FEW = ["fewshot.enabled=true", "fewshot.groups=[2, 3]", "fewshot.epochs=1", "train.epochs=1",
       "train.max_steps=12", "train.save_every_steps=3"]


def _weights(path):
    return {k: np.asarray(v) for k, v in paddle.load(str(path / "model.pdparams")).items()}


def test_a_few_shot_run_killed_mid_split_and_resumed_ends_with_the_same_weights(tmp_path, monkeypatch):
    # The reference: one-shot (4 steps: a third of max_steps), then two split steps of 4 steps each.
    ref = tiny_config(tmp_path / "a", *FEW)
    assert train(ref, progress=False) is not None
    full, what = fewshot(ref, progress=False)
    assert "2 split step(s), the last width4x3 with 3 groups" in what
    assert checkpoint.read_meta(full)["step"] == 4 and checkpoint.read_meta(full)["split"] == "width4x3"
    # The same run killed in its second split step, then run again.
    cfg = tiny_config(tmp_path / "b", *FEW)
    train(cfg, progress=False)
    from track1.pipeline import trainer as trainer_mod
    real, calls = trainer_mod.Trainer.step, []

    def dying(self, *a, **k):
        if self.split is not None and self.split.name == "width4x3" and len(calls) == 3:
            raise KeyboardInterrupt
        if self.split is not None and self.split.name == "width4x3":
            calls.append(1)
        return real(self, *a, **k)
    monkeypatch.setattr(trainer_mod.Trainer, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        fewshot(cfg, progress=False)
    monkeypatch.setattr(trainer_mod.Trainer, "step", real)
    resumed, _ = fewshot(cfg, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("parts.2.") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # Scoring takes the last split step's checkpoint and names the split in its settings.
    assert runs.find_checkpoint(cfg, None) == resumed
    assert runs.score_settings(cfg, resumed)["split"] == "width4x3"
    # A checkpoint of a split that is no step of the config is refused in one line.
    other = tiny_config(tmp_path / "b", *FEW[:1], "fewshot.groups=[2, 4]", *FEW[2:])
    with pytest.raises(checkpoint.CheckpointError, match="a checkpoint of split width4x3, this config's split "
                                                         "steps are width4x2, width4x4"):
        runs.load_supernet(other, resumed)
    with pytest.raises(checkpoint.CheckpointError, match="few-shot checkpoint .* fewshot.enabled is false"):
        runs.load_supernet(tiny_config(tmp_path / "b"), resumed)
    assert split_config(cfg, width_split(4, 3))["train"]["max_steps"] == 4


def test_fewshot_needs_a_finished_one_shot_supernet(tmp_path):
    from track1.errors import UserError
    with pytest.raises(UserError, match="one-shot supernet is not trained to its end; run `train` first"):
        fewshot(tiny_config(tmp_path, *FEW), progress=False)
    assert fewshot(tiny_config(tmp_path), progress=False) == (None, "skipped: fewshot.enabled is false")


@pytest.mark.parametrize("start", [["pretrain.enabled=true"], ["train.init_from=given/resnet48.pdparams"]])
def test_a_split_step_keeps_the_one_shot_runs_frozen_teacher(tmp_path, start):
    """With train.distill the split steps distil from the network the one-shot run did (they lost
    it with train.init_from, and failed only once the one-shot training was over)."""
    from track1.methods.base import RunContext
    from track1.methods.distill import FrozenTeacher
    from track1.network.pretrained import init_path
    from track1.pipeline.config import run_dir
    cfg = tiny_config(tmp_path, *FEW, "train.distill.enabled=true", *start)
    sc = split_config(cfg, width_split(4, 2))
    teacher = FrozenTeacher(sc, RunContext(SearchSpace(width_mult=0.125), 1, 1, run_dir(sc)))
    assert Path(teacher.path) == init_path(cfg, run_dir(cfg)) and sc["train"]["init_from"] == ""


@pytest.mark.parametrize("overrides, message", [
    (["fewshot.group_epochs=[1, 2]"], "fewshot.group_epochs: only with fewshot.step sequence"),
    (["fewshot.step=sequence", "fewshot.split=depth", "fewshot.group_epochs=[1, 2]"],
     "fewshot.group_epochs [1, 2]: epochs (>= 0) for each of the 5 groups"),
    (["fewshot.step=global_sandwich", "fewshot.train={sampler: spos}"], "global_sandwich: the 4th place's sandwich"),
    (["fewshot.group_lr=difflr", "fewshot.split=depth"], "difflr: the 4th place's lr table is for a width split"),
    (["fewshot.train={epochs: 3}"], "fewshot.train.epochs: a split step sets it"),
    (["fewshot.train={nsas: {enabled: true}}"], "fewshot.train.nsas: NSAS regularises one path a step"),
    (["fewshot.train={distill: {enabled: true}}"], "fewshot.train.distill needs a teacher"),
    (["fewshot.lrs=[0.1]"], "fewshot.lrs [0.1]: one lr (>= 0) a split step, 5 here"),
    (["score.fewshot_step=width4x9"], "score.fewshot_step: 'width4x9' is not a split step of this config"),
])
def test_few_shot_combinations_that_cannot_work_are_refused_at_load(capsys, overrides, message):
    from track1.pipeline.cli import main
    argv = ["prepare", "-o", "fewshot.enabled=true"] + [x for o in overrides for x in ("-o", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_progressive_then_few_shot_by_depth_in_sequence_runs_end_to_end(tmp_path):
    """The 2nd place's pipeline, capped: every progressive phase, then groups 0-3 one after another (the
    crash of issue 28: the split step narrowed every group by a progressive phase); group 4 untouched."""
    from conftest import REPO
    from track1.pipeline.config import load_config
    from track1.pipeline.pretrain import pretrain
    cfg = load_config(REPO / "configs" / "progressive_fewshot.yaml", [
        f"run.output_dir={tmp_path}", "space.width_mult=0.125", "data.train_size=256", "data.batch_size=32",
        "train.eval_images=64", "train.eval_subnets=1", "train.max_steps=14", "pretrain.max_steps=2",
        "fewshot.group_epochs=[1, 1.5, 1, 1.5, 0]"])
    pretrain(cfg, progress=False)
    one_shot = train(cfg, progress=False)
    assert checkpoint.read_meta(one_shot)["step"] == 9  # their 6 phases need 9 steps, more than 14 x 2/7
    final, what = fewshot(cfg, progress=False)
    assert "1 split step(s), the last depth34x5 with 5 groups" in what
    runs_made = sorted(p.name for p in (tmp_path / cfg["run"]["name"] / "fewshot").iterdir())
    assert runs_made == [f"depth34x5_g{g}" for g in range(4)]
    assert final.parent.parent.name == "depth34x5_g3" and checkpoint.read_meta(final)["finished"]
    before, after = paddle.load(str(one_shot / "model.pdparams")), _weights(final)
    for name, v in before.items():  # group 4 keeps the one-shot weights, group 0 (trained first) moved
        np.testing.assert_array_equal(after[f"parts.4.{name}"], v.numpy())
    assert any(not np.array_equal(after[f"parts.0.{n}"], v.numpy()) for n, v in before.items())


def test_score_takes_any_split_step_and_names_it_in_its_log(tmp_path):
    cfg = tiny_config(tmp_path, *FEW)
    train(cfg, progress=False)
    last, _ = fewshot(cfg, progress=False)
    first = runs.find_checkpoint(tiny_config(tmp_path, *FEW, "score.fewshot_step=width4x2"), None)
    assert checkpoint.read_meta(first)["split"] == "width4x2" and runs.find_checkpoint(cfg, None) == last
    names = [runs.scores_path(cfg, "list", c).name for c in (first, last)]
    assert names[0].startswith("list@width4x2.") and names[1].startswith("list@width4x3.")
    space, model = runs.load_supernet(cfg, first)  # an earlier step's checkpoint scores with its own split
    assert len(model.parts) == 2


def test_a_sequence_step_killed_in_a_group_and_resumed_ends_with_the_same_weights(tmp_path, monkeypatch):
    """fewshot_depth.yaml's groups in sequence, NSAS and the frozen teacher: the run killed in group 1
    and resumed (its NSAS set and recent paths from the checkpoint) ends as the uninterrupted one."""
    from conftest import REPO
    from track1.pipeline import trainer as trainer_mod
    from track1.pipeline.config import load_config
    from track1.pipeline.pretrain import pretrain

    def run(root):
        cfg = load_config(REPO / "configs" / "fewshot_depth.yaml", [
            f"run.output_dir={root}", "space.width_mult=0.125", "data.train_size=256", "data.batch_size=32",
            "train.eval_images=64", "train.eval_subnets=1", "train.max_steps=16", "train.save_every_steps=1",
            "pretrain.max_steps=2", "fewshot.group_epochs=[1, 1.5, 1, 1.5, 0]"])
        pretrain(cfg, progress=False)
        train(cfg, progress=False)
        return cfg
    full, _ = fewshot(run(tmp_path / "a"), progress=False)
    cfg = run(tmp_path / "b")
    real, calls = trainer_mod.Trainer.step, []

    def dying(self, x, y, step, *a, **k):
        if self.split_step["group"] == 1 and step == 2 and not calls:
            calls.append(step)
            raise KeyboardInterrupt
        return real(self, x, y, step, *a, **k)
    monkeypatch.setattr(trainer_mod.Trainer, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        fewshot(cfg, progress=False)
    resumed, _ = fewshot(cfg, progress=False)
    assert calls == [2] and checkpoint.read_meta(resumed)["step"] == 3
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_split_step_of_part_of_an_epoch_ends_with_its_health_check(tmp_path):
    cfg = tiny_config(tmp_path, "fewshot.enabled=true", "fewshot.groups=[2, 3]", "fewshot.epochs=0.5",
                      "train.epochs=1", "train.eval_subnets=1")
    train(cfg, progress=False)
    final, _ = fewshot(cfg, progress=False)
    meta = checkpoint.read_meta(final)
    assert final.name == "epoch_001" and meta["step"] == 4 and meta["finished"]  # 8 steps an epoch
    assert {"val/top1_largest", "val/top1_smallest"} <= set(meta["val_top1"])

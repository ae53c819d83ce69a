"""train.max_steps shared by the one-shot run and the few-shot runs, each long enough to pass every
progressive phase and train every group; the phases as fractions of the capped run."""
from conftest import REPO
from track1.methods.sampling import parse_phases, phase_at
from track1.pipeline.caps import capped_steps, parts
from track1.pipeline.config import load_config
from track1.pipeline.fewshot import split_config, steps_of
from track1.pipeline.trainer import Trainer


def _cfg(name, *overrides):
    return load_config(REPO / "configs" / f"{name}.yaml", ["space.width_mult=0.125", *overrides])


def test_the_cap_is_shared_by_epochs_with_enough_for_every_phase_and_group():
    cfg = _cfg("progressive", "fewshot.enabled=true", "fewshot.split=depth", "train.max_steps=30")
    # the one-shot run's 6 epochs against the split's 2: 22 and 7, the split at least one step a group
    assert parts(cfg) == [("train", 6, 8), ("depth34x5", 2, 5)]
    assert capped_steps(cfg) == 22 and split_config(cfg, steps_of(cfg)[0])["train"]["max_steps"] == 7
    # a cap too small for the 7 phases and 5 groups: each part still gets what it needs
    tiny = _cfg("progressive", "fewshot.enabled=true", "fewshot.split=depth", "train.max_steps=4")
    assert capped_steps(tiny) == 8 and capped_steps(tiny, "depth34x5") == 5
    # an n-group width step gets n steps at least; a sequence step's untrained group none
    width = _cfg("fewshot_width", "train.max_steps=20")
    assert [capped_steps(width, n) for n, _, _ in parts(width)] == [9, 2, 3, 4, 5, 6, 7]
    depth = _cfg("fewshot_depth", "train.max_steps=40")
    assert [n for n, _, _ in parts(depth)] == ["train"] + [f"depth34x5_g{g}" for g in range(4)]
    assert [capped_steps(depth, n) for n, _, _ in parts(depth)] == [30, 2, 3, 2, 3]
    assert capped_steps(_cfg("progressive")) == 0  # no cap


def test_a_capped_progressive_run_passes_through_every_phase():
    cfg = _cfg("progressive", "train.max_steps=12")
    tr = Trainer(cfg, steps_per_epoch=100)
    assert (tr.total_steps, tr.run_steps) == (600, 12)
    phases = parse_phases(cfg["train"]["progressive"]["phases"])
    assert sorted({tr.within(s)[1] for s in range(tr.run_steps)}) == list(range(len(phases)))
    # uncapped, the phases are fractions of the whole run as before
    full = Trainer(_cfg("progressive"), steps_per_epoch=100)
    assert [full.within(s)[1] for s in (0, 59, 60, 599)] == [phase_at(phases, s, 600) for s in (0, 59, 60, 599)]

import pytest

from track1.pipeline.config import ConfigError, config_hash, load_config, set_value

from conftest import REPO


def test_presets_inherit_the_default_and_change_only_their_keys():
    default, rdnas = load_config(None), load_config(REPO / "configs" / "rdnas.yaml")
    assert rdnas["train"]["ranking"]["enabled"] is True and default["train"]["ranking"]["enabled"] is False
    assert rdnas["space"] == default["space"] and rdnas["run"]["name"] == "fmnist_rdnas"
    imagenet = load_config(REPO / "configs" / "imagenet.yaml")
    assert imagenet["space"]["resolution"] == 224 and imagenet["data"]["name"] == "folder"


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.epochs=7", "train.lr=0.05", "train.ranking.enabled=true",
                             "score.arch_list=/x/y.json", "run.name="])
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["lr"] == 0.05
    assert cfg["train"]["ranking"]["enabled"] is True and cfg["score"]["arch_list"] == "/x/y.json"
    assert cfg["run"]["name"] == ""


@pytest.mark.parametrize("override, message", [
    ("train.epochz=1", "unknown key 'train.epochz'"),
    ("train=1", "'train' must be a mapping"),
    ("epochs", "not of the form key=value"),
    # of the wrong type
    ("train.lr=abc", "'train.lr' must be a number, got 'abc'"),
    ("train.epochs=1.5", "'train.epochs' must be an integer, got 1.5"),
    ("train.visualdl=3", "'train.visualdl' must be true or false, got 3"),
    ("train.epochs=true", "'train.epochs' must be an integer, got True"),
    ("train.cream.roles=random", "'train.cream.roles' must be a list"),
])
def test_bad_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {REPO / 'configs' / 'default.yaml'}\ntrain:\n  lr_max: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.lr_max'"):
        load_config(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_hash_follows_what_shapes_the_weights_only():
    cfg = load_config(None)
    assert config_hash(cfg) == config_hash(set_value(cfg, "train.log_every", 1))
    assert config_hash(cfg) == config_hash(set_value(cfg, "train.max_steps", 3))
    assert config_hash(cfg) == config_hash(set_value(cfg, "score.val_images", 3))
    assert config_hash(cfg) != config_hash(set_value(cfg, "train.lr", cfg["train"]["lr"] * 2))
    assert config_hash(cfg) != config_hash(set_value(cfg, "space.act", "mish"))


def test_typed_overrides_keep_ints_for_floats_and_text_for_strings():
    cfg = load_config(None, ["train.lr=1", "run.name=2024"])
    assert cfg["train"]["lr"] == 1 and cfg["run"]["name"] == "2024"
    # An int for a float keeps the hash an unconverted value had before types were checked.
    assert config_hash(cfg) == config_hash(set_value(load_config(None), "train.lr", 1))


def test_every_preset_loads_and_has_its_own_run_name():
    names = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        name = load_config(path)["run"]["name"]
        assert name not in names, f"{path.name} shares run.name {name!r} with {names.get(name)}"
        names[name] = path.name


def test_string_keys_take_the_override_text_and_refuse_an_unquoted_yaml_boolean(tmp_path):
    assert load_config(None, ["train.amp=off"])["train"]["amp"] == "off"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {REPO / 'configs' / 'default.yaml'}\ntrain:\n  amp: off\n")
    with pytest.raises(ConfigError, match="bad.yaml: 'train.amp' must be a string .*quote it"):
        load_config(bad)


def test_a_teacher_may_be_a_name_a_list_or_a_mapping_in_any_order_of_overrides(tmp_path):
    preset = tmp_path / "ens.yaml"
    preset.write_text("train:\n  ranking:\n    teacher: {snip: 2, zen: 1}\n")
    assert load_config(preset)["train"]["ranking"]["teacher"] == {"snip": 2, "zen": 1}
    assert load_config(preset, ["train.ranking.teacher=flops"])["train"]["ranking"]["teacher"] == "flops"
    assert load_config(None, ["train.ranking.teacher=[snip, zen]"])["train"]["ranking"]["teacher"] == ["snip", "zen"]


@pytest.mark.parametrize("override, message", [
    ("train.sampler=sandwhich", "train.sampler: 'sandwhich' is not one of sandwich, spos, random, largest"),
    ("data.batch_size=0", "data.batch_size: must be at least 1, got 0"),
    ("score.chunk_images=0", "score.chunk_images: must be at least 1, got 0"),
    ("space.width_mult=0", "space.width_mult: must be above 0, got 0"),
    ("train.momentum=1.5", r"train.momentum: must be in \[0, 1\], got 1.5"),
    ("run.device=tpu", "run.device: 'tpu' is not one of auto, gpu, cpu"),
    ("train.ranking.pair_mode=both", "train.ranking.pair_mode: 'both' is not one of partners, extra, free"),
    ("train.bn_stats=moving", "train.bn_stats: 'moving' is not one of batch, frozen"),
    ("train.lr_schedule=step", "train.lr_schedule: 'step' is not one of cosine, linear"),
    ("train.bn_stats=frozen", "train.bn_stats: frozen keeps the statistics of the network the run starts from: "
                              "set train.init_from or pretrain.enabled"),
])
def test_choices_and_ranges_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    assert load_config(None, [override], checked=False)  # the types alone are fine


def test_cli_turns_a_bad_value_into_one_line_and_exit_2(capsys, tmp_path):
    from track1.pipeline.cli import main
    assert main(["train", "-o", "train.sampler=sandwhich", "-o", f"run.output_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: train.sampler: 'sandwhich' is not one of sandwich, spos, random, largest"]
    assert not list(tmp_path.iterdir())


CREAM_META = ["train.cream.enabled=true", "train.cream.pick=meta", "data.batch_size=8"]


@pytest.mark.parametrize("overrides, message", [
    (["train.init_reorder=true"], "train.init_reorder=true reorders a loaded network, but none is loaded: set "
                                  "train.init_from=FILE (e.g. the organizers' resnet48.pdparams) or pretrain.enabled=true"),
    (["train.distill.enabled=true"], "train.distill needs a teacher: train.distill.teacher, train.init_from or "
                                     "pretrain.enabled"),
    ([*CREAM_META, "train.cream.meta_batch=5"], "train.cream.meta_batch: 5 + 5 images do not fit a batch of 8 "
                                                "(data.batch_size, a process's batch)"),
    (["train.cream.enabled=true", "train.cream.meta_features=flat", "train.cream.store_images=9", "data.batch_size=8"],
     "train.cream.store_images: 9 images do not fit a batch of 8 (data.batch_size; meta_features flat needs them all)"),
])
def test_a_combination_that_cannot_work_is_one_line_and_exit_2_at_load(capsys, tmp_path, overrides, message):
    """Each key valid alone, together refused before anything runs (they ran and did nothing, or
    failed before the first step, or at the step that needed them)."""
    from track1.pipeline.cli import main
    short = [f"run.output_dir={tmp_path}", "train.max_steps=1", "data.train_size=64"]  # if it ran after all
    args = [a for o in [*overrides, *short] for a in ("-o", o)]
    assert main(["train", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides", [
    ["train.init_reorder=true", "pretrain.enabled=true"],  # the pretrain stage's file is reordered
    ["train.init_reorder=true", "train.init_from=resnet48.pdparams"],
    ["train.distill.enabled=true", "pretrain.enabled=true"], ["train.distill.enabled=true", "train.distill.teacher=t"],
    [*CREAM_META, "train.cream.meta_batch=4"], [*CREAM_META, "train.cream.meta_batch=0"],  # 0: halves of the batch
    ["train.cream.enabled=true", "train.cream.meta_features=flat", "train.cream.store_images=8", "data.batch_size=8"],
])
def test_the_combinations_that_work_load(overrides):
    assert load_config(None, overrides)


def test_every_key_with_choices_is_in_the_schema():
    """A key whose default.yaml comment lists its choices ("a | b") is checked against them."""
    from track1.pipeline.config import DEFAULT_CONFIG, _schema
    schema, missing = _schema(), []
    prefix: list[str] = []
    for line in DEFAULT_CONFIG.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key = stripped.split(":")[0]
        prefix = prefix[:depth] + [key]
        value, _, comment = stripped.split(":", 1)[1].partition("#")
        if value.strip() and " | " in comment and ".".join(prefix) not in schema:
            missing.append(".".join(prefix))
    assert missing == []


def test_a_key_added_with_its_neutral_value_keeps_every_fingerprint(monkeypatch):
    """Adding a key whose default keeps the old behaviour invalidates no checkpoint: while it has
    that value the fingerprints leave it out (config.NEUTRAL)."""
    from track1.pipeline import config
    cfg = load_config(None)
    before = config_hash(cfg)
    grown = set_value(cfg, "train", {**cfg["train"], "new_knob": 0.5})
    assert config_hash(grown) != before  # an unknown key would count ...
    monkeypatch.setitem(config.NEUTRAL, "train.new_knob", 0.5)
    assert config_hash(grown) == before  # ... unless added at its neutral value
    assert config_hash(set_value(grown, "train", {**grown["train"], "new_knob": 0.7})) != before


def test_checkpoints_keep_their_config_and_a_refusal_names_what_differs(tmp_path):
    import yaml

    from track1.network.build import build_supernet
    from track1.pipeline import checkpoint
    from track1.pipeline.train import train
    from conftest import tiny_config
    cfg = tiny_config(tmp_path, "train.max_steps=2")
    last = train(cfg, progress=False)
    assert yaml.safe_load((last / "config.yaml").read_text()) == cfg
    _, model = build_supernet(cfg)
    other = tiny_config(tmp_path, "train.max_steps=2", "train.lr=0.3", "space.act=mish", "train.log_every=7")
    with pytest.raises(checkpoint.CheckpointError, match=r"written by another config \(space.act: 'relu' -> "
                                                         r"'mish'; train.lr: 0.2 -> 0.3\)"):
        checkpoint.load_weights(last, model, other)  # log_every changes no weight: not named
    checkpoint.load_weights(last, model, tiny_config(tmp_path, "train.log_every=7"))

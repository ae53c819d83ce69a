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

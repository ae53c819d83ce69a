import pytest

from track1.config import ConfigError, config_hash, load_config, set_value

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
])
def test_bad_overrides(override, message):
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
    assert config_hash(cfg) != config_hash(set_value(cfg, "train.lr", 0.2))
    assert config_hash(cfg) != config_hash(set_value(cfg, "space.act", "mish"))

"""YAML configs: `_base_` inheritance, dotted `-o key=value` overrides, unknown or mistyped keys rejected."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from track1.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
# Keys that change how a run is logged or stored but not the weights it produces.
_NOT_HASHED = {"run.name", "run.output_dir", "run.threads", "train.log_every",
               "train.save_every_steps", "train.max_steps", "train.visualdl", "score", "submit",
               "data.num_workers", "data.shared_memory", "train.eval_images", "train.eval_subnets", "standalone", "monitor"}


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


# Keys whose value may be a string, a list or a mapping (a teacher is a proxy name, names or weights).
_FREE_FORM = {"train.ranking.teacher"}


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown key '{name}'")
        if name in _FREE_FORM:
            base[key] = value
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' must be a mapping")
            _merge(base[key], value, source, name + ".")
        else:
            base[key] = _typed(base[key], value, name, source)


def _typed(default: Any, value: Any, name: str, source: str) -> Any:
    """value, checked against the type of the default it replaces (nanoGPT's configurator rule).

    An int is accepted where a float is expected and kept as it is (the config hash of existing
    runs stays the same); a number given for a string key becomes its text (`run.name=2024`).
    """
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{name}' must be {expected}, got {value!r}")

    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
    elif isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            raise wrong("a string (YAML reads off/on/no/yes as true or false: quote it)")
        if not isinstance(value, str):
            raise wrong("a string")
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise wrong("a list")
    return value


def _load_file(path: Path) -> dict:
    data = _read_yaml(path)
    base_name = data.pop("_base_", None)
    if base_name is None:
        if path.resolve() != DEFAULT_CONFIG:
            base_name = str(DEFAULT_CONFIG)
        else:
            return data
    base = _load_file((path.parent / base_name).resolve())
    _merge(base, data, str(path))
    return base


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """The default config, updated by the file at path (and its bases), then by the overrides."""
    cfg = _load_file(Path(path) if path else DEFAULT_CONFIG)
    for text in overrides or []:
        keys, value = parse_override(text)
        if isinstance(_lookup(cfg, keys), str) and ".".join(keys) not in _FREE_FORM:
            # a string key takes the text as typed (`amp=off`)
            value = text.split("=", 1)[1]
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, f"override '{text}'")
    return cfg


def _lookup(cfg: dict, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(cfg, dict) or k not in cfg:
            return None
        cfg = cfg[k]
    return cfg


def set_value(cfg: dict, dotted: str, value: Any) -> dict:
    """A copy of cfg with one dotted key set (used by tests and scripts)."""
    out = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = out
    for k in parents:
        node = node[k]
    if last not in node:
        raise ConfigError(f"unknown key '{dotted}'")
    node[last] = value
    return out


def _strip(cfg: dict, prefix: str = "") -> dict:
    return {k: (_strip(v, f"{prefix}{k}.") if isinstance(v, dict) else v)
            for k, v in cfg.items() if f"{prefix}{k}" not in _NOT_HASHED}


def config_hash(cfg: dict) -> str:
    """Fingerprint of what determines the trained weights; a checkpoint must match it to resume."""
    text = json.dumps(_strip(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_dir(cfg: dict) -> Path:
    return Path(cfg["run"]["output_dir"]) / cfg["run"]["name"]

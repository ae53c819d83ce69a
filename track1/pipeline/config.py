"""YAML configs: `_base_` inheritance, dotted `-o key=value` overrides, the schema every value is checked
against at load, and the fingerprints of what changes a result."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from track1.errors import ConfigError
from track1.files import digest


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"

# Keys that change how a run is logged, stored or scheduled, or how fast it goes, never its numbers.
# Every fingerprint (the training config's, the score settings', the stand-alone recipe's) leaves
# them out.
NOT_RESULT_KEYS = {"run.name", "run.output_dir", "run.threads", "run.device", "data.num_workers",
                   "data.shared_memory", "train.log_every", "train.save_every_steps", "train.max_steps",
                   "train.visualdl", "train.eval_images", "train.eval_subnets", "score.chunk_images",
                   "standalone.log_every", "standalone.visualdl"}
# Sections the training fingerprint leaves out: how a trained supernet is scored, submitted, checked
# and split afterwards (each split step is a run of its own), and the stand-alone ground truth.
NOT_TRAINING_SECTIONS = {"score", "submit", "standalone", "monitor", "fewshot", "export"}
# Keys added after runs existed, with the value that keeps the old behaviour: while a key has that
# value a fingerprint leaves it out, so adding it orphans no checkpoint, score log or ground truth.
NEUTRAL = {"standalone.optimizer": "momentum", "standalone.min_lr": 0.0, "train.init_from": "",
           "train.bn_stats": "batch", "train.lr_schedule": "cosine",
           "train.init_reorder": False, "train.draw": "official",
           "train.cream.rho_grad": False, "train.cream.meta_every_steps": 0, "train.lr_stairs": 0,
           "train.split": {"step": "rotate", "group_lr": "equal", "group": None}, "standalone.init_from": ""}
# Sections added after runs existed that a fingerprint leaves out whole while their switch has its
# neutral value.
NEUTRAL_SECTIONS = {"train.distill": ("enabled", False), "pretrain": ("enabled", False),
                    "train.bias": ("rule", "none"), "train.progressive": ("enabled", False),
                    "train.nsas": ("enabled", False)}


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
# Mappings of other keys, merged key by key and checked against them in check(): fewshot.train holds
# train.* keys a split step sets differently from the one-shot run.
_OVERLAYS = {"fewshot.train": "train"}
# Integer keys that also take a fraction (a split step may be part of an epoch).
_FRACTIONAL = {"fewshot.epochs", "train.lr_stairs"}


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown key '{name}'")
        if name in _FREE_FORM:
            base[key] = value
        elif name in _OVERLAYS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' must be a mapping")
            base[key] = _overlay(base[key], value)
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' must be a mapping")
            _merge(base[key], value, source, name + ".")
        else:
            base[key] = _typed(base[key], value, name, source)


def _overlay(base: dict, update: dict) -> dict:
    """base updated by update, mapping by mapping (no schema: check() checks the result)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = _overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
    elif isinstance(default, int) and name in _FRACTIONAL:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                checked: bool = True) -> dict:
    """The default config, updated by the file at path (and its bases), then by the overrides, and
    checked against the schema (checked=False: types only, for a quick look such as run.sh's)."""
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
    return check(cfg) if checked else cfg


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


def _result_keys(cfg: dict, prefix: str = "", skip: frozenset = frozenset()) -> dict:
    """cfg without the keys that change no result: NOT_RESULT_KEYS, `skip`, and NEUTRAL keys at
    their neutral value (prefix: the dotted name of cfg inside the whole config)."""
    out = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if name in NOT_RESULT_KEYS or name in skip or NEUTRAL.get(name, ...) == v:
            continue
        if name in NEUTRAL_SECTIONS and v[NEUTRAL_SECTIONS[name][0]] == NEUTRAL_SECTIONS[name][1]:
            continue
        out[k] = _result_keys(v, name + ".", skip) if isinstance(v, dict) else v
    return out


def training_keys(cfg: dict) -> dict:
    """What determines the trained weights: the config without the scoring, submission, checking
    and stand-alone sections and without the keys that change no result."""
    return _result_keys({k: v for k, v in cfg.items() if k not in NOT_TRAINING_SECTIONS})


def config_hash(cfg: dict) -> str:
    """Fingerprint of what determines the trained weights; a checkpoint must match it to resume."""
    return digest(training_keys(cfg), 16)


def section_keys(cfg: dict, section: str, skip: set[str] = frozenset()) -> dict:
    """One section's keys that change a result, less `skip` (dotted names)."""
    return _result_keys(cfg[section], section + ".", frozenset(skip))


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'key: saved -> current' for every leaf that differs between two key dicts (a key missing on
    one side compares as its NEUTRAL value, else as absent)."""
    out = []
    for k in sorted(set(saved) | set(current)):
        name = f"{prefix}{k}"
        a, b = saved.get(k, NEUTRAL.get(name, "(absent)")), current.get(k, NEUTRAL.get(name, "(absent)"))
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def run_dir(cfg: dict) -> Path:
    return Path(cfg["run"]["output_dir"]) / cfg["run"]["name"]


def dump(cfg: dict) -> str:
    """The resolved config as YAML (what a checkpoint keeps as config.yaml)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


# -- the schema: choices and ranges, checked when a config is loaded --------------------------------

def _schema() -> dict[str, tuple]:
    """key -> ("one of", choices) | (">=", bound) | (">", bound) | ("in", low, high), for every key
    with a fixed set of values or a range. The choices are the modules' own, imported here (not at
    module level) so that reading a config stays light where no check is wanted."""
    from track1.data.sources import ARRAY_DATA, IMAGE_DATA
    from track1.methods import board, matcher
    from track1.methods.losses import RANK_LOSSES, RANK_SCHEDULES
    from track1.methods.sampling import BIAS_RULES, DISTANCES, FEWSHOT_STEPS, PAIR_MODES, SAMPLERS
    from track1.network import precision
    from track1.network.conv import MODES as CONV_MODES
    from track1.network.layers import ACTIVATIONS, BN_STATS
    from track1.pipeline import runtime
    from track1.pipeline.optim import LR_SCHEDULES, OPTIMIZERS
    from track1.ranking.proxy_runs import INPUTS
    from track1.network.fewshot import GROUP_LRS
    from track1.space.split import SPLITS
    from track1.space.subspace import DRAWS
    one_of = lambda *c: ("one of", tuple(c[0]) if len(c) == 1 else c)  # noqa: E731
    at_least = lambda n: (">=", n)  # noqa: E731
    schema = {
        "run.device": one_of(runtime.DEVICES), "run.threads": at_least(0),
        "space.width_mult": (">", 0), "space.resolution": at_least(8), "space.num_classes": at_least(2),
        "space.act": one_of(ACTIVATIONS),
        "data.name": one_of(ARRAY_DATA + IMAGE_DATA), "data.train_size": at_least(0),
        "data.val_size": at_least(0), "data.batch_size": at_least(1), "data.num_workers": at_least(0),
        "train.epochs": at_least(1), "train.max_steps": at_least(0), "train.sampler": one_of(SAMPLERS),
        "train.num_random": at_least(0), "train.conv": one_of(CONV_MODES), "train.draw": one_of(DRAWS),
        "train.bias.rule": one_of(BIAS_RULES), "train.bias.temperature": (">", 0), "train.bias.pool": at_least(1),
        "train.bn_stats": one_of(BN_STATS), "train.lr_schedule": one_of(LR_SCHEDULES),
        "train.optimizer": one_of(OPTIMIZERS), "train.lr": at_least(0), "train.momentum": ("in", 0, 1),
        "train.weight_decay": at_least(0), "train.warmup_epochs": at_least(0), "train.min_lr": at_least(0),
        "train.lr_stairs": at_least(0),
        "train.label_smoothing": ("in", 0, 1), "train.grad_clip": at_least(0), "train.log_every": at_least(1),
        "train.save_every_steps": at_least(1), "train.eval_images": at_least(0),
        "train.eval_subnets": at_least(0), "train.amp": one_of(precision.MODES),
        "train.ranking.loss": one_of(RANK_LOSSES), "train.ranking.margin": at_least(0),
        "train.ranking.margin_per_distance": at_least(0), "train.ranking.pair_mode": one_of(PAIR_MODES),
        "train.ranking.pairs": at_least(1), "train.ranking.reduce": one_of("mean", "sum"),
        "train.ranking.distance": one_of(DISTANCES), "train.ranking.threshold": at_least(0),
        "train.ranking.max_tries": at_least(1), "train.ranking.schedule": one_of(RANK_SCHEDULES),
        "train.ranking.cap": at_least(0), "train.ranking.ramp": at_least(0),
        "train.cream.board_size": at_least(1), "train.cream.board_rule": one_of(board.BOARD_RULES),
        "train.cream.gap": at_least(0), "train.cream.warmup": ("in", 0, 1),
        "train.cream.store_images": at_least(1), "train.cream.store_outputs": one_of("own", "teacher"),
        "train.cream.pick": one_of(matcher.PICK_MODES), "train.cream.top1_rho": ("in", 0, 2),
        "train.cream.meta_interval": ("in", 1e-9, 1), "train.cream.meta_order": one_of("after", "before"),
        "train.cream.meta_every_steps": at_least(0),
        "train.cream.meta_lookahead": one_of(matcher.LOOKAHEADS), "train.cream.meta_batch": at_least(0),
        "train.cream.meta_features": one_of(matcher.FEATURES), "train.cream.meta_hidden": at_least(0),
        "train.cream.meta_init": one_of(matcher.INITS), "train.cream.meta_optimizer": one_of(matcher.OPTIMIZERS),
        "train.cream.meta_lr": at_least(0), "train.cream.meta_momentum": ("in", 0, 1),
        "train.cream.meta_decay": one_of("constant", "linear"), "train.cream.meta_clip": at_least(0),
        "score.demo_size": at_least(1), "score.mode": one_of("tree", "per_code"),
        "score.calib_images": at_least(1), "score.calib_batch": at_least(1), "score.val_images": at_least(0),
        "score.eval_batch": at_least(1), "score.chunk_images": at_least(1),
        "submit.tie_break": one_of("loss", "none"),
        "monitor.every_epochs": at_least(0), "monitor.num_codes": at_least(2),
        "monitor.calib_images": at_least(1), "monitor.val_images": at_least(0),
        "proxies.batch_size": at_least(2), "proxies.resolution": at_least(0), "proxies.repeats": at_least(0),
        "proxies.input": one_of(INPUTS), "proxies.reference_size": at_least(2),
        "standalone.epochs": (">", 0), "standalone.lr": at_least(0), "standalone.momentum": ("in", 0, 1),
        "standalone.weight_decay": at_least(0), "standalone.warmup_epochs": at_least(0),
        "standalone.label_smoothing": ("in", 0, 1), "standalone.grad_clip": at_least(0),
        "standalone.batch_size": at_least(1), "standalone.train_size": at_least(0),
        "standalone.val_images": at_least(0), "standalone.num_codes": at_least(0),
        "standalone.log_every": at_least(1), "standalone.optimizer": one_of(OPTIMIZERS),
        "standalone.min_lr": at_least(0), "train.distill.weight": at_least(0),
        "fewshot.split": one_of(SPLITS), "fewshot.stage": ("in", 2, 4), "fewshot.epochs": (">", 0),
        "fewshot.lr": at_least(0), "fewshot.step": one_of(FEWSHOT_STEPS), "fewshot.group_lr": one_of(GROUP_LRS),
        "train.nsas.select": at_least(1), "train.nsas.knn": at_least(1), "train.nsas.recent": at_least(1),
        "train.nsas.refresh_every": at_least(1), "train.nsas.weight": at_least(0),
        "train.nsas.label_weight": at_least(0),
        "pretrain.epochs": at_least(1), "pretrain.max_steps": at_least(0), "pretrain.optimizer": one_of(OPTIMIZERS),
        "pretrain.lr": at_least(0), "pretrain.min_lr": at_least(0), "pretrain.momentum": ("in", 0, 1),
        "pretrain.weight_decay": at_least(0), "pretrain.warmup_epochs": at_least(0),
        "pretrain.label_smoothing": ("in", 0, 1), "pretrain.grad_clip": at_least(0),
        "export.top_k": at_least(0), "standalone.init_from": one_of("", "export"),
    }
    return schema


def _combinations(cfg: dict) -> list[str]:
    """What cannot work in keys that are each valid alone, one line each: caught here, at load,
    instead of before the first step, at the step that needs it or after the one-shot run."""
    t, c, batch = cfg["train"], cfg["train"]["cream"], cfg["data"]["batch_size"]
    network = bool(t["init_from"]) or cfg["pretrain"]["enabled"]  # what train starts from (pretrained.init_path)
    problems = []
    if t["init_reorder"] and not network:
        problems.append("train.init_reorder=true reorders a loaded network, but none is loaded: set "
                        "train.init_from=FILE (e.g. the organizers' resnet48.pdparams) or pretrain.enabled=true")
    if t["bn_stats"] == "frozen" and not network:
        problems.append("train.bn_stats: frozen keeps the statistics of the network the run starts from: "
                        "set train.init_from or pretrain.enabled")
    problems += _method_problems(t, "train", network)
    if c["enabled"] and c["pick"] == "meta" and 2 * c["meta_batch"] > batch:  # at the first matcher update
        problems.append(f"train.cream.meta_batch: {c['meta_batch']} + {c['meta_batch']} images do not fit a "
                        f"batch of {batch} (data.batch_size, a process's batch)")
    if c["enabled"] and c["meta_features"] == "flat" and c["store_images"] > batch:  # at the first board entry
        problems.append(f"train.cream.store_images: {c['store_images']} images do not fit a batch of {batch} "
                        f"(data.batch_size; meta_features flat needs them all)")
    if cfg["fewshot"]["enabled"]:
        problems += _fewshot_problems(cfg, network)
    return problems


def _method_problems(t: dict, where: str, network: bool) -> list[str]:
    """Training methods that cannot work together in a train section (`where`: its name; network:
    whether the run starts from a full network, the frozen teacher's default)."""
    if t["progressive"]["enabled"]:
        from track1.methods.sampling import parse_phases
        parse_phases(t["progressive"]["phases"])  # a malformed phase: its own ConfigError
    problems, n = [], t["nsas"]
    if t["distill"]["enabled"] and not (t["distill"]["teacher"] or network):
        problems.append(f"{where}.distill needs a teacher: train.distill.teacher, train.init_from or pretrain.enabled")
    if n["enabled"] and t["sampler"] != "spos":
        problems.append(f"{where}.nsas: NSAS regularises one path a step (the 2nd place's): it needs "
                        f"{where}.sampler spos, not {t['sampler']}")
    if n["enabled"] and (t["cream"]["enabled"] or t["ranking"]["enabled"]):
        problems.append(f"{where}.nsas: sets each path's loss itself; not with {where}.cream or {where}.ranking")
    return problems


def check(cfg: dict) -> dict:
    """cfg, or a one-line ConfigError naming the first key whose value is not among its choices or
    outside its range (the schema above), or the first combination of keys that cannot work."""
    _check_values(cfg)
    problems = _combinations(cfg)
    if problems:
        raise ConfigError(problems[0])
    return cfg


def split_train(cfg: dict) -> dict:
    """The train section of a few-shot split step before its lengths are set: train.* with
    fewshot.train over it (keys and types checked), progressive shrinking off."""
    out = copy.deepcopy(cfg["train"])
    _merge(out, copy.deepcopy(cfg["fewshot"]["train"]), "fewshot.train", "train.")
    out["progressive"]["enabled"] = False  # a split step trains its groups whole (issue 28)
    return out


# train.* keys each split step sets from the fewshot section (track1.pipeline.fewshot.split_config).
SPLIT_SETS = ("epochs", "lr", "warmup_epochs", "init_from", "max_steps", "progressive")


def _fewshot_problems(cfg: dict, network: bool) -> list[str]:
    """Few-shot settings that cannot work together, refused at load rather than after the one-shot run."""
    from track1.space.split import split_steps
    f = cfg["fewshot"]
    steps = split_steps(f["split"], f["stage"], f["groups"])
    problems = []
    if f["lrs"] and (len(f["lrs"]) != len(steps) or not all(_number(v) and v >= 0 for v in f["lrs"])):
        problems.append(f"fewshot.lrs {f['lrs']}: one lr (>= 0) a split step, {len(steps)} here, or [] for fewshot.lr")
    e = f["group_epochs"]
    if e and f["step"] != "sequence":
        problems.append(f"fewshot.group_epochs: only with fewshot.step sequence (groups one after another), "
                        f"not {f['step']}")
    elif e and (any(len(s.groups) != len(e) for s in steps) or not all(_number(v) and v >= 0 for v in e)
                or not any(e)):
        problems.append(f"fewshot.group_epochs {e}: epochs (>= 0) for each of the {len(steps[0].groups)} groups "
                        f"of every split step, not all 0")
    problems += [f"fewshot.train.{key}: a split step sets it from the fewshot section (fewshot.epochs, "
                 f"fewshot.lr, fewshot.lrs); progressive shrinking is off in a split step"
                 for key in f["train"] if key in SPLIT_SETS]
    if problems:  # the split step's train section below is built from these
        return problems
    t = split_train(cfg)
    _check_values({**cfg, "train": t})
    problems += _method_problems(t, "fewshot.train", network)
    if f["step"] == "global_sandwich" and t["sampler"] != "sandwich":
        problems.append(f"fewshot.step global_sandwich: the 4th place's sandwich over the whole space; the split "
                        f"step's sampler is {t['sampler']}, not sandwich")
    if f["group_lr"] == "difflr" and (f["split"] != "width" or f["stage"] != 4):
        problems.append("fewshot.group_lr difflr: the 4th place's lr table is for a width split by stage 4")
    names = [s.name for s in steps]
    if cfg["score"]["fewshot_step"] not in ("", *names):
        problems.append(f"score.fewshot_step: {cfg['score']['fewshot_step']!r} is not a split step of this "
                        f"config ({', '.join(names)})")
    return problems


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_values(cfg: dict) -> None:
    for name, rule in _schema().items():
        value = _lookup(cfg, name.split("."))
        kind = rule[0]
        if kind == "one of" and value not in rule[1]:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, rule[1]))}")
        if kind == ">=" and value < rule[1]:
            raise ConfigError(f"{name}: must be at least {rule[1]}, got {value!r}")
        if kind == ">" and value <= rule[1]:
            raise ConfigError(f"{name}: must be above {rule[1]}, got {value!r}")
        if kind == "in" and not rule[1] <= value <= rule[2]:
            raise ConfigError(f"{name}: must be in [{rule[1]}, {rule[2]}], got {value!r}")

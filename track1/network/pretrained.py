"""A trained full ResNet48 for the supernet: the organizers' `resnet48.pdparams` names and the project's,
loading with exact checks, the official baseline's reorder of mid channels, and writing a file in
the organizers' names.

The organizers' file (the official baseline's hnas/models/resnet.py) is a plain ResNet48 whose
`blocks` list holds the stem (`blocks.0.conv`, `blocks.0.bn`), the 23 BasicBlocks (`blocks.1`-`5`
stage 1, `6`-`10` stage 2, `11`-`18` stage 3, `19`-`23` stage 4: `conv1`, `bn1`, `conv2`, `bn2`, and
`downsample.0` (1x1 conv) / `downsample.1` (BN) on blocks 6, 11 and 19 only) and the head
(`blocks.24.fc`, weight [in, out], bias). No conv has a bias; each BN has weight, bias, _mean and
_variance. 252 tensors: the supernet's own, one for one, under other names.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import paddle

from track1.errors import UserError
from track1.files import atomic_write
from track1.network.supernet import SuperNet
from track1.space import MAX_DEPTHS

STAGE_FIRST_BLOCK = tuple(1 + sum(MAX_DEPTHS[:s]) for s in range(len(MAX_DEPTHS)))  # 1, 6, 11, 19
HEAD_BLOCK = 1 + sum(MAX_DEPTHS)  # 24
_PROJECT = {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2",
            "shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}
_ORGANIZERS = {v: k for k, v in _PROJECT.items()}


class PretrainedError(UserError):
    """A full-network file that does not fit the configured supernet."""


def organizer_name(name: str, depths: tuple[int, ...] = MAX_DEPTHS) -> str:
    """The organizers' name of a supernet tensor (stem_conv.weight -> blocks.0.conv.weight, ...).
    `depths`: those of a plain network of one code, whose blocks the baseline's model.py `Model(code)`
    numbers consecutively (blocks.1 to blocks.D, the head blocks.D+1); at the maximum depths this is
    resnet48's numbering."""
    if name.startswith("stem_conv."):
        return "blocks.0.conv." + name.split(".", 1)[1]
    if name.startswith("stem_bn."):
        return "blocks.0.bn." + name.split(".", 1)[1]
    if name.startswith("fc."):
        return f"blocks.{1 + sum(depths)}.fc." + name.split(".", 1)[1]
    stage, block, layer, tensor = re.fullmatch(r"stages\.(\d)\.(\d)\.(\w+)\.(\w+)", name).groups()
    return f"blocks.{1 + sum(depths[:int(stage)]) + int(block)}.{_PROJECT[layer]}.{tensor}"


def project_name(name: str) -> str | None:
    """The supernet's name of an organizers' tensor, None for a name that has none."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(\w+)", name)
    if m is None:
        return None
    index, layer, tensor = int(m.group(1)), m.group(2), m.group(3)
    if index == 0 and layer in ("conv", "bn"):
        return f"stem_{layer}.{tensor}"
    if index == HEAD_BLOCK and layer == "fc":
        return f"fc.{tensor}"
    stage = max((s for s, first in enumerate(STAGE_FIRST_BLOCK) if index >= first), default=None)
    if stage is None or index >= HEAD_BLOCK or layer not in _ORGANIZERS:
        return None
    return f"stages.{stage}.{index - STAGE_FIRST_BLOCK[stage]}.{_ORGANIZERS[layer]}.{tensor}"


def read_full_network(path: str | Path, model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    """The tensors of a full-network file in the supernet's names, checked: every tensor of the
    supernet present with its shape, nothing else. The file may use the organizers' names
    (`blocks.*`) or the project's (a supernet or the plain ResNet of the largest code: the same
    names). A problem is one PretrainedError naming the tensors in the file's own names."""
    path = Path(path)
    raw = read_state_file(path)
    organizers = any(k.startswith("blocks.") for k in raw)
    to_own = project_name if organizers else (lambda k: k)
    to_file = organizer_name if organizers else (lambda k: k)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    unexpected = [k for k in raw if to_own(k) not in expected]
    if unexpected:
        raise PretrainedError(
            f"{path}: {len(unexpected)} of its {len(raw)} tensors are not the supernet's ({_some(unexpected)}); "
            f"it takes {len(expected)} tensors, in the organizers' names ({_some([organizer_name(k) for k in expected])}) "
            f"or the project's ({_some(list(expected))})")
    state = {}
    for name, value in raw.items():
        own = to_own(name)
        array = value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)
        if list(array.shape) != expected[own]:
            raise PretrainedError(f"{path}: tensor {name} has shape {list(array.shape)}, the configured supernet "
                                  f"(space.width_mult, space.num_classes) expects {expected[own]}")
        state[own] = array.astype("float32")
    missing = [k for k in expected if k not in state]
    if missing:
        raise PretrainedError(f"{path}: tensor {to_file(missing[0])} {expected[missing[0]]} is missing"
                              f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    return state


def _some(names: list[str], n: int = 3) -> str:
    """The first n names, and how many more."""
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")


# How a file that paddle.load cannot read begins: pickle (paddle.save's format) or zip (PyTorch's).
_PICKLE, _ZIP = b"\x80", b"PK\x03\x04"


def read_state_file(path: Path, missing: str = "full-network file not found (train.init_from)") -> dict:
    """The name -> tensor dict of a .pdparams file, or a PretrainedError saying what the file is
    instead: missing (`missing` says what), empty, text, a truncated or damaged Paddle file, another format."""
    if not path.is_file():
        raise PretrainedError(f"{path}: {missing}")
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        raw = paddle.load(str(path))
    except Exception as e:  # paddle raises ValueError for most unreadable files, whatever they hold
        size = path.stat().st_size
        if not head:
            raise PretrainedError(f"{path}: an empty file, not a Paddle state dict") from None
        if head[:1] == _PICKLE and 2 <= head[1] <= 5:
            raise PretrainedError(f"{path}: a Paddle file that does not load to its end ({size:,} bytes, "
                                  f"{type(e).__name__}): truncated or damaged, copy or download it again") from None
        if head[:4] == _ZIP:
            raise PretrainedError(f"{path}: a zip archive (PyTorch's format?), not a Paddle state dict") from None
        if b"\0" not in head and _is_text(head):
            first = head.decode("utf-8", "replace").strip().splitlines()[0][:60] if head.strip() else ""
            raise PretrainedError(f"{path}: a text file, not a Paddle state dict (it begins {first!r})") from None
        raise PretrainedError(f"{path}: not a Paddle state dict ({size:,} bytes, {type(e).__name__})") from None
    if not isinstance(raw, dict) or not raw:
        raise PretrainedError(f"{path}: not a Paddle state dict of a network (it holds "
                              f"{'an empty dict' if isinstance(raw, dict) else type(raw).__name__})")
    return raw


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # only a character cut at the end of the 512 bytes
    return True


def reorder_mid_channels(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The official baseline's reorder: in every block, the mid channels (conv1's outputs, bn1,
    conv2's inputs) sorted by the L1 norm of conv2's input slices, largest first, so that a narrower
    mid width keeps the most important channels; the network computes the same function. Only mid
    channels move: a stage's output channels are shared by all its blocks and the shortcuts (one
    output width per stage in the official sub-space), so no single block's order could be used."""
    out = dict(state)
    blocks = sorted({k.rsplit(".", 2)[0] for k in state if k.endswith(".conv2.weight")})
    for block in blocks:
        conv2 = state[f"{block}.conv2.weight"]
        importance = np.abs(conv2).sum(axis=(0, 2, 3))
        order = np.argsort(-importance, kind="stable")
        out[f"{block}.conv2.weight"] = conv2[:, order]
        out[f"{block}.conv1.weight"] = state[f"{block}.conv1.weight"][order]
        for tensor in ("weight", "bias", "_mean", "_variance"):
            out[f"{block}.bn1.{tensor}"] = state[f"{block}.bn1.{tensor}"][order]
    return out


def load_full_network(model: paddle.nn.Layer, path: str | Path, reorder: bool = False) -> str:
    """Set the supernet (or the plain ResNet of the largest code) to the full network of `path`
    (read_full_network), its mid channels reordered if asked; what was loaded, for the start-up line."""
    state = read_full_network(path, model)
    if reorder:
        state = reorder_mid_channels(state)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    return f"{path} ({len(state)} tensors, mid channels {'reordered by importance' if reorder else 'in their saved order'})"


def write_organizer_file(model: SuperNet, path: str | Path) -> Path:
    """The supernet's full network as a `resnet48.pdparams` in the organizers' names (atomically)."""
    state = {organizer_name(k): v.numpy() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: paddle.save(state, tmp))
    return Path(path)


def init_path(cfg: dict, run_dir: Path) -> Path | None:
    """The full network a run starts from: train.init_from, else the pretrain stage's file when
    pretrain.enabled, else none (from scratch)."""
    if cfg["train"]["init_from"]:
        return Path(cfg["train"]["init_from"])
    if cfg["pretrain"]["enabled"]:
        return pretrained_file(run_dir)
    return None


def pretrained_file(run_dir: Path) -> Path:
    """Where the pretrain stage writes the run's full network."""
    return Path(run_dir) / "pretrained" / "resnet48.pdparams"

"""CIFAR-10 and CIFAR-100 as users bring them: the python pickle batches, read and verified."""
from __future__ import annotations

import importlib
import pickle
import tarfile
from pathlib import Path

import numpy as np

from track1.data.datafiles import CACHE, DataError, stat_key
from track1.files import atomic_write


URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SIZE = 32
# Per-channel mean and std of the training images (the values the CIFAR literature uses).
DATASETS = {
    "cifar10": {"dir": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "label_key": "labels", "classes": 10,
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "cifar100": {"dir": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
                 "train": ["train"], "test": ["test"],
                 "label_key": "fine_labels", "classes": 100,
                 "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
}


def stats(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 per channel, for images / 255."""
    d = DATASETS[name]
    return np.array(d["mean"], np.float32), np.array(d["std"], np.float32)


# --------------------------------------------------------------------------------------------
# Reading one batch file

class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain Python values, nothing else: a pickle can run any code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("multiarray", "_reconstruct"),
                ("multiarray", "scalar"), ("numeric", "_frombuffer"),
                ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2

    def find_class(self, module: str, name: str):
        short = module.rsplit(".", 1)[-1] if module.startswith(("numpy.core.", "numpy._core.")) else module
        if (short, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        if short != module:  # numpy 1 wrote numpy.core, numpy 2 reads it from numpy._core
            for package in ("numpy._core", "numpy.core"):
                try:
                    return getattr(importlib.import_module(f"{package}.{short}"), name)
                except ImportError:
                    continue
        return getattr(importlib.import_module(module), name)


def read_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of one pickle batch file."""
    try:
        with open(path, "rb") as f:
            # The files were written by Python 2: bytes keys, and encoding="bytes" keeps them so.
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # any unpickling failure means the same to the user: not this format
        raise DataError(f"{path}: not a CIFAR python pickle batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: holds a {type(batch).__name__}, expected a dict with b'data'")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(f"{path}: no b'{key}' entry (keys: {sorted(batch)})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * SIZE * SIZE:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' is {type(data).__name__} {getattr(data, 'dtype', '')} "
                        f"{shape}, expected uint8 rows of {3 * SIZE * SIZE} (3x{SIZE}x{SIZE}, CHW)")
    try:
        labels = np.asarray(batch[label_key], np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: b'{label_key}' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.size} entries in b'{label_key}' for {len(data)} images")
    if len(labels) and not (0 <= labels.min() and labels.max() < classes):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise DataError(f"{path}: label {bad} outside 0..{classes - 1}")
    return data.reshape(-1, 3, SIZE, SIZE), labels


# --------------------------------------------------------------------------------------------
# A whole split, and where the files are

def batch_dir(root: Path, name: str) -> Path:
    """root/cifar-10-batches-py (as the archive unpacks), or root itself if it holds the files."""
    d = DATASETS[name]
    inner = root / d["dir"]
    if inner.is_dir() or not (root / d["test"][0]).is_file():
        return inner
    return root


def load_cifar(root: str | Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Verified split ('train' or 'test') in file order: uint8 (N, 3, 32, 32), int64 (N,); cached."""
    d = DATASETS[name]
    directory = batch_dir(Path(root), name)
    paths = [directory / f for f in d[split]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: file not found; {how_to_provide(Path(root), name)}")
    key = ("cifar", name, split, *(stat_key(p) for p in paths))
    if key not in CACHE:
        parts = [read_batch(p, d["label_key"], d["classes"]) for p in paths]
        CACHE[key] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return CACHE[key]


def how_to_provide(root: Path, name: str) -> str:
    d = DATASETS[name]
    files = ", ".join(d["train"] + d["test"])
    return (f"download {d['archive']} (the python version) from {URL} into {root} (data.root) and run "
            f"`prepare`, or unpack it there yourself (`tar xzf {d['archive']} -C {root}`) so that "
            f"{root / d['dir']} holds {files}")


def _unpack(archive: Path, root: Path, name: str) -> None:
    """Extract only the batch files of the official archive (never arbitrary member paths)."""
    d = DATASETS[name]
    wanted = {f"{d['dir']}/{f}" for f in d["train"] + d["test"]}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.name in wanted and m.isfile()}
            if len(members) != len(wanted):
                missing = sorted(wanted - set(members))
                raise DataError(f"{archive}: lacks {', '.join(missing)}; {how_to_provide(root, name)}")
            for member_name, member in members.items():
                blob = tar.extractfile(member).read()
                atomic_write(root / member_name, lambda tmp, blob=blob: Path(tmp).write_bytes(blob))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: not a readable .tar.gz ({e})") from None


def prepare_cifar(root: Path, name: str) -> str:
    """Verify the batch files (unpacking the official archive first if only it is there)."""
    d = DATASETS[name]
    how = "found"
    archive = root / d["archive"]
    if not (batch_dir(root, name) / d["test"][0]).is_file() and archive.is_file():
        _unpack(archive, root, name)
        how = f"unpacked {archive.name}"
    counts = {s: len(load_cifar(root, name, s)[1]) for s in ("train", "test")}
    return f"{how}: {counts['train']} train / {counts['test']} test images in {batch_dir(root, name)}"

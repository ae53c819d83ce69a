"""Fashion-MNIST: the four idx files, their verified loading, and fetching them with apt."""
from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import paddle

from track1.data.datafiles import CACHE, DataError, stat_key
from track1.files import atomic_write


FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Expected image counts; tests replace these to work with small fake files.
FMNIST_SIZES = {"train": 60000, "test": 10000}
FMNIST_PACKAGE = "dataset-fashion-mnist"
# Where the Debian package installs the files (and where they sit inside its .deb).
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# Mean and std of the unpadded 28x28 training images (the padded 32x32 ones: 0.219, 0.332).
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
FMNIST_PAD = 2          # 28x28 -> 32x32
FMNIST_SIZE = 28 + 2 * FMNIST_PAD
FMNIST_CLASSES = 10


# --------------------------------------------------------------------------------------------
# Reading

_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The uint8 array stored in a gzipped idx file; DataError naming the file if it is unusable."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an idx header")
    if data[0:2] != b"\0\0" or data[2] != _IDX_UBYTE or data[3] not in (1, 3):
        magic = struct.unpack(">I", data[:4])[0]
        raise DataError(f"{path}: bad idx magic number 0x{magic:08x} "
                        f"(expected 0x00000801 labels or 0x00000803 images)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataError(f"{path}: {len(data) - header} data bytes, but the header "
                        f"declares shape {dims} = {expected} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Verified split ('train' or 'test'): padded uint8 images (N, 32, 32) and int64 labels (N,).

    Cached per process (keyed by the files' path, size and mtime), so a second call is free.
    """
    root = Path(root)
    img_path, lbl_path = (root / name for name in FMNIST_FILES[split])
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise DataError(f"{p}: file not found (run `prepare` or see data.root)")
    key = ("fmnist", split, stat_key(img_path), stat_key(lbl_path))
    if key in CACHE:
        return CACHE[key]
    images, labels = read_idx(img_path), read_idx(lbl_path)
    n = FMNIST_SIZES[split]
    if images.ndim != 3 or images.shape != (n, 28, 28):
        raise DataError(f"{img_path}: images of shape {images.shape}, expected ({n}, 28, 28)")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{lbl_path}: labels of shape {labels.shape}, expected ({n},)")
    if labels.max(initial=0) > 9:
        raise DataError(f"{lbl_path}: label {labels.max()} outside 0..9")
    padded = np.pad(images, ((0, 0), (FMNIST_PAD, FMNIST_PAD), (FMNIST_PAD, FMNIST_PAD)))
    CACHE[key] = (padded, labels.astype(np.int64))
    return CACHE[key]


def fmnist_to_tensor(images: np.ndarray) -> paddle.Tensor:
    """uint8 (B, H, W) -> normalized float32 (B, 3, H, W) tensor (grey repeated to 3 channels)."""
    x = (images.astype(np.float32) * (1.0 / 255.0) - FMNIST_MEAN) / FMNIST_STD
    return paddle.to_tensor(np.repeat(x[:, None], 3, axis=1))


def has_fmnist(directory: Path) -> bool:
    return all((directory / name).is_file() for pair in FMNIST_FILES.values() for name in pair)


# --------------------------------------------------------------------------------------------
# Fetching: data.root, else the installed Debian package, else `apt-get download`

def _verify_fmnist(directory: Path) -> None:
    for split in FMNIST_FILES:
        load_fashion_mnist(directory, split)


def _download_fashion_mnist(workdir: Path) -> Path:
    """`apt-get download` the Debian package into workdir, unpack it; the directory of the files."""
    try:
        download = ["apt-get", "download", FMNIST_PACKAGE]
        if subprocess.run(download, cwd=workdir, capture_output=True).returncode != 0 and os.geteuid() == 0:
            # A fresh machine may have no package lists yet; as root, fetch them once and retry.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(download, cwd=workdir, check=True, capture_output=True, text=True)
        debs = sorted(workdir.glob(f"{FMNIST_PACKAGE}_*.deb"))
        if not debs:
            raise DataError(f"{workdir}: apt-get download produced no .deb")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(workdir / "deb")], check=True,
                       capture_output=True, text=True)
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: command not found") from None
    except subprocess.CalledProcessError as e:
        last = (e.stderr or "").strip().splitlines()[-1:] or [f"exit code {e.returncode}"]
        raise DataError(f"`{' '.join(e.cmd)}` failed: {last[0]}") from None
    return workdir / "deb" / SYSTEM_DIR.relative_to("/")


def _copy_fmnist(src: Path, dst: Path) -> None:
    for pair in FMNIST_FILES.values():
        for name in pair:
            # shutil.copy also copies the permission bits (the temp file would be 0600).
            atomic_write(dst / name, lambda tmp, name=name: shutil.copy(src / name, tmp))


def _how_to_provide(root: Path) -> str:
    names = ", ".join(name for pair in FMNIST_FILES.values() for name in pair)
    return (f"provide Fashion-MNIST in one of these ways: (1) `sudo apt-get install {FMNIST_PACKAGE}` "
            f"(installs {SYSTEM_DIR}); (2) `apt-get download {FMNIST_PACKAGE} && dpkg-deb -x "
            f"{FMNIST_PACKAGE}_*.deb data/deb` and copy data/deb{SYSTEM_DIR}/*.gz into {root}; "
            f"(3) put the four files ({names}) into {root} (data.root)")


def prepare_fmnist(root: Path) -> str:
    """Verified files in root, copied or downloaded there if absent; how they got there."""
    if has_fmnist(root):
        # Files the user placed are authoritative: a corrupt one is an error, not a reason to fall back.
        _verify_fmnist(root)
        return f"found in {root}"
    if has_fmnist(SYSTEM_DIR):
        _verify_fmnist(SYSTEM_DIR)
        _copy_fmnist(SYSTEM_DIR, root)
        _verify_fmnist(root)
        return f"copied from {SYSTEM_DIR} to {root}"
    try:
        with tempfile.TemporaryDirectory(prefix="fmnist-") as tmp:
            src = _download_fashion_mnist(Path(tmp))
            if not has_fmnist(src):
                raise DataError(f"{src}: the downloaded package lacks the idx files")
            _verify_fmnist(src)
            _copy_fmnist(src, root)
    except DataError as e:
        raise DataError(f"Fashion-MNIST not found in {root} or {SYSTEM_DIR} and the download "
                        f"failed ({e}); {_how_to_provide(root)}") from None
    _verify_fmnist(root)
    return f"downloaded {FMNIST_PACKAGE} into {root}"

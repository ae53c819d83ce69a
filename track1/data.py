"""Data: Fashion-MNIST preparation and loading, ImageNet-style folders and list files, deterministic batches.

Three kinds of data (`data.name`):
- `fashion_mnist`: the four idx .gz files in `data.root`; images are padded 28 -> 32, repeated to
  3 channels and kept in memory as uint8.
- `folder`: `root/train/<class>/*`, `root/val/<class>/*`; classes sorted alphabetically -> labels.
- `list`: `data.train_list` / `data.val_list`, lines `relative/path label` (relative to data.root).

Every split has one canonical order: file order for Fashion-MNIST, and a fixed shuffle (seed
CANONICAL_SEED, independent of the run seed) of the listing for folder/list data, so that "the
first N images" (data.train_size, data.val_size, score.calib_images, score.val_images) covers all
classes even when the listing is grouped by class.

Training order is a pure function of (run.seed, epoch, step): epoch e visits
`default_rng([seed, e]).permutation(n)` in global batches of batch_size * world_size images, and
each rank takes its slice of the global batch. Random augmentation is drawn per global batch
(Fashion-MNIST) or per sample (folder/list), so batches do not depend on world_size and a run
resumed at any step sees exactly the batches an uninterrupted run would have seen.
"""
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
from typing import Iterator

import numpy as np
import paddle
from PIL import Image

from track1.files import atomic_write


class DataError(Exception):
    """Data that is missing or unusable; the message names the file or directory and the problem."""


# --------------------------------------------------------------------------------------------
# Constants

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
AUGMENT_PAD = 4         # random crop of 32 from the zero-padded 40x40 image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
CANONICAL_SEED = 0
EVAL_CROP = 0.875       # eval: resize the shorter side to resolution / 0.875, then center crop
# Folder/list eval images are cached in memory as uint8 only up to this size; larger sets stream.
EVAL_CACHE_BYTES = 1 << 30

# Process-level cache: parsed datasets and eval sets, so loading twice is free.
_CACHE: dict = {}


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: idx files

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


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def load_fashion_mnist(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Verified split ('train' or 'test'): padded uint8 images (N, 32, 32) and int64 labels (N,).

    Cached per process (keyed by the files' path, size and mtime), so a second call is free.
    """
    root = Path(root)
    img_path, lbl_path = (root / name for name in FMNIST_FILES[split])
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise DataError(f"{p}: file not found (run `prepare` or see data.root)")
    key = ("fmnist", split, _stat_key(img_path), _stat_key(lbl_path))
    if key in _CACHE:
        return _CACHE[key]
    images, labels = read_idx(img_path), read_idx(lbl_path)
    n = FMNIST_SIZES[split]
    if images.ndim != 3 or images.shape != (n, 28, 28):
        raise DataError(f"{img_path}: images of shape {images.shape}, expected ({n}, 28, 28)")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{lbl_path}: labels of shape {labels.shape}, expected ({n},)")
    if labels.max(initial=0) > 9:
        raise DataError(f"{lbl_path}: label {labels.max()} outside 0..9")
    padded = np.pad(images, ((0, 0), (FMNIST_PAD, FMNIST_PAD), (FMNIST_PAD, FMNIST_PAD)))
    _CACHE[key] = (padded, labels.astype(np.int64))
    return _CACHE[key]


def fmnist_to_tensor(images: np.ndarray) -> paddle.Tensor:
    """uint8 (B, H, W) -> normalized float32 (B, 3, H, W) tensor (grey repeated to 3 channels)."""
    x = (images.astype(np.float32) * (1.0 / 255.0) - FMNIST_MEAN) / FMNIST_STD
    return paddle.to_tensor(np.repeat(x[:, None], 3, axis=1))


def _has_fmnist(directory: Path) -> bool:
    return all((directory / name).is_file() for pair in FMNIST_FILES.values() for name in pair)


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


def _prepare_fmnist(cfg: dict) -> tuple[Path, str]:
    root = Path(cfg["data"]["root"])
    if _has_fmnist(root):
        # Files the user placed are authoritative: a corrupt one is an error, not a reason to fall back.
        _verify_fmnist(root)
        return root, f"found in {root}"
    if _has_fmnist(SYSTEM_DIR):
        _verify_fmnist(SYSTEM_DIR)
        _copy_fmnist(SYSTEM_DIR, root)
        _verify_fmnist(root)
        return root, f"copied from {SYSTEM_DIR} to {root}"
    try:
        with tempfile.TemporaryDirectory(prefix="fmnist-") as tmp:
            src = _download_fashion_mnist(Path(tmp))
            if not _has_fmnist(src):
                raise DataError(f"{src}: the downloaded package lacks the idx files")
            _verify_fmnist(src)
            _copy_fmnist(src, root)
    except DataError as e:
        raise DataError(f"Fashion-MNIST not found in {root} or {SYSTEM_DIR} and the download "
                        f"failed ({e}); {_how_to_provide(root)}") from None
    _verify_fmnist(root)
    return root, f"downloaded {FMNIST_PACKAGE} into {root}"


# --------------------------------------------------------------------------------------------
# ImageNet-style data: folders and list files

def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: directory not found (folder data needs root/train and root/val)")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"{split_dir}: no class subfolders")
    return classes


def _folder_samples(root: Path, split: str) -> list[tuple[str, int]]:
    classes = _class_dirs(root / "train")  # labels always come from the training classes
    index = {c: i for i, c in enumerate(classes)}
    split_dir = root / ("train" if split == "train" else "val")
    samples = []
    for c in _class_dirs(split_dir):
        if c not in index:
            raise DataError(f"{split_dir / c}: class not present in {root / 'train'}")
        files = sorted(e.name for e in os.scandir(split_dir / c)
                       if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
        samples += [(str(split_dir / c / f), index[c]) for f in files]
    if not samples:
        raise DataError(f"{split_dir}: no images (extensions {sorted(IMAGE_EXTENSIONS)})")
    return samples


def _list_samples(root: Path, list_file: str, num_classes: int) -> list[tuple[str, int]]:
    if not list_file:
        raise DataError("data.train_list / data.val_list must be set for data.name=list")
    path = Path(list_file)
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    samples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)  # paths may contain spaces; the label is the last field
            try:
                label = int(parts[1])
            except (IndexError, ValueError):
                raise DataError(f"{path}:{lineno}: expected 'relative/path label', "
                                f"got {line.strip()!r}") from None
            if not 0 <= label < num_classes:
                raise DataError(f"{path}:{lineno}: label {label} outside 0..{num_classes - 1} "
                                f"(space.num_classes)")
            samples.append((str(root / parts[0]), label))
    if not samples:
        raise DataError(f"{path}: no entries")
    return samples


def image_samples(cfg: dict, split: str) -> list[tuple[str, int]]:
    """(path, label) of a folder/list split ('train' or 'val') in canonical order (cached)."""
    d = cfg["data"]
    root = Path(d["root"])
    list_file = d["train_list"] if split == "train" else d["val_list"]
    # A list file is part of the key with its size and mtime, so an edited list is read again.
    listed = _stat_key(Path(list_file)) if d["name"] == "list" and Path(list_file).is_file() else ()
    key = ("samples", d["name"], str(root.resolve()), listed, split, cfg["space"]["num_classes"])
    if key not in _CACHE:
        if d["name"] == "folder":
            samples = _folder_samples(root, split)
        elif d["name"] == "list":
            samples = _list_samples(root, list_file, cfg["space"]["num_classes"])
        else:
            raise DataError(f"data.name={d['name']!r} is not folder or list")
        order = np.random.default_rng(CANONICAL_SEED).permutation(len(samples))
        _CACHE[key] = [samples[i] for i in order]
    return _CACHE[key]


def _prepare_images(cfg: dict) -> tuple[Path, str]:
    d, num_classes = cfg["data"], cfg["space"]["num_classes"]
    root = Path(d["root"])
    if d["name"] == "folder":
        classes = _class_dirs(root / "train")
        if len(classes) != num_classes:
            raise DataError(f"{root / 'train'}: {len(classes)} class folders but "
                            f"space.num_classes is {num_classes}")
    counts = {s: len(image_samples(cfg, s)) for s in ("train", "val")}
    first = image_samples(cfg, "train")[0][0]
    if not os.path.isfile(first):
        raise DataError(f"{first}: image file not found")
    return root, f"{counts['train']} train / {counts['val']} val images under {root}"


def _load_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def _to_chw_uint8(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, np.uint8).transpose(2, 0, 1))


def train_transform(img: Image.Image, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(resolution, scale (0.08, 1), ratio (3/4, 4/3)) + flip; uint8 (3, R, R)."""
    width, height = img.size
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):  # torchvision's algorithm: 10 tries, then a center crop
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        ratio = width / height
        if ratio < 3 / 4:
            w, h = width, int(round(width / (3 / 4)))
        elif ratio > 4 / 3:
            h, w = height, int(round(height * (4 / 3)))
        else:
            w, h = width, height
        w, h = min(w, width), min(h, height)
        top, left = (height - h) // 2, (width - w) // 2
    out = img.resize((resolution, resolution), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_chw_uint8(out)


def eval_transform(img: Image.Image, resolution: int) -> np.ndarray:
    """Resize the shorter side to int(resolution / 0.875), center crop resolution; uint8 (3, R, R)."""
    width, height = img.size
    short = int(resolution / EVAL_CROP)
    if width <= height:
        size = (short, max(1, int(round(height * short / width))))
    else:
        size = (max(1, int(round(width * short / height))), short)
    img = img.resize(size, Image.BILINEAR)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return _to_chw_uint8(img.crop((left, top, left + resolution, top + resolution)))


def rgb_to_tensor(images: np.ndarray | paddle.Tensor) -> paddle.Tensor:
    """uint8 (B, 3, H, W) -> float32 tensor normalized with the ImageNet mean and std."""
    x = paddle.to_tensor(images) if isinstance(images, np.ndarray) else images
    mean = paddle.to_tensor(IMAGENET_MEAN.reshape(1, 3, 1, 1))
    std = paddle.to_tensor(IMAGENET_STD.reshape(1, 3, 1, 1))
    return (x.astype("float32") * (1.0 / 255.0) - mean) / std


class ImageDataset(paddle.io.Dataset):
    """Folder/list images as uint8 (3, R, R) and int64 labels.

    Items are keyed by index or by (epoch, index). With augment, the random transform of a sample
    is drawn from default_rng([seed, epoch, index]): the same in any worker process, on any rank
    and in a resumed run. Without augment the deterministic eval transform is used.
    """

    def __init__(self, samples: list[tuple[str, int]], resolution: int, augment: bool, seed: int = 0):
        super().__init__()
        self.samples, self.resolution, self.augment, self.seed = samples, resolution, augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        path, label = self.samples[index]
        img = _load_rgb(path)
        if self.augment:
            if epoch is None:
                raise KeyError(f"augmented item {index} needs an (epoch, index) key")
            rng = np.random.default_rng([self.seed, epoch, index])
            return train_transform(img, self.resolution, rng), np.int64(label)
        return eval_transform(img, self.resolution), np.int64(label)


def _collate(items: list) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([x for x, _ in items]), np.array([y for _, y in items], np.int64)


# --------------------------------------------------------------------------------------------
# Training batches

def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n training images."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class EpochBatchSampler(paddle.io.BatchSampler):
    """One epoch of this rank's batches of (epoch, index) keys, from start_step on."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int,
                 epoch: int, start_step: int = 0):
        super().__init__(sampler=range(n), batch_size=batch_size, drop_last=True)
        self.n, self.rank, self.world_size, self.seed = n, rank, world_size, seed
        self.epoch, self.start_step = epoch, start_step
        self.steps = n // (batch_size * world_size)

    def __iter__(self) -> Iterator[list]:
        perm = epoch_permutation(self.seed, self.epoch, self.n)
        g, b = self.batch_size * self.world_size, self.batch_size
        for step in range(self.start_step, self.steps):
            mine = perm[step * g: (step + 1) * g][self.rank * b: (self.rank + 1) * b]
            yield [(self.epoch, int(i)) for i in mine]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


def _limit(n: int, size: int) -> int:
    """The first `size` of n items (0 = all)."""
    return min(n, size) if size > 0 else n


class TrainData:
    """Deterministic training batches of one rank; same interface for every kind of data.

    Global batch = data.batch_size * world_size images, the last incomplete one dropped; this rank
    gets images [rank * batch_size, (rank + 1) * batch_size) of each global batch.
    """

    def __init__(self, cfg: dict, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside 0..{world_size - 1}")
        d = cfg["data"]
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.seed = int(cfg["run"]["seed"])
        self.batch_size = int(d["batch_size"])
        self.augment = bool(d["augment"])
        if d["name"] == "fashion_mnist":
            images, labels = load_fashion_mnist(_fmnist_root(cfg), "train")
            self.num_samples = _limit(len(labels), d["train_size"])
            self._images, self._labels = images[:self.num_samples], labels[:self.num_samples]
        else:
            self._samples = image_samples(cfg, "train")
            self.num_samples = _limit(len(self._samples), d["train_size"])
        global_batch = self.batch_size * world_size
        self.steps_per_epoch = self.num_samples // global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"{d['root']}: {self.num_samples} training images, fewer than one "
                            f"global batch of {global_batch}")

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
        """(x float32 (B, 3, R, R), y int64 (B,)) for steps start_step .. steps_per_epoch - 1."""
        if self.cfg["data"]["name"] == "fashion_mnist":
            yield from self._array_batches(epoch, start_step)
        else:
            yield from self._image_batches(epoch, start_step)

    def _array_batches(self, epoch: int, start_step: int):
        perm = epoch_permutation(self.seed, epoch, self.num_samples)
        g, b = self.batch_size * self.world_size, self.batch_size
        for step in range(start_step, self.steps_per_epoch):
            idx = perm[step * g: (step + 1) * g]
            mine = slice(self.rank * b, (self.rank + 1) * b)
            if self.augment:
                # Draw for the whole global batch, then slice: independent of world_size.
                rng = np.random.default_rng([self.seed, epoch, step, 1])
                offsets = rng.integers(0, 2 * AUGMENT_PAD + 1, size=(g, 2))
                flips = rng.random(g) < 0.5
                images = augment_batch(self._images[idx[mine]], offsets[mine], flips[mine])
            else:
                images = self._images[idx[mine]]
            yield fmnist_to_tensor(images), paddle.to_tensor(self._labels[idx[mine]])

    def _image_batches(self, epoch: int, start_step: int):
        dataset = ImageDataset(self._samples[:self.num_samples], self.cfg["space"]["resolution"],
                               augment=self.augment, seed=self.seed)
        sampler = EpochBatchSampler(self.num_samples, self.batch_size, self.rank, self.world_size,
                                    self.seed, epoch, start_step)
        loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate,
                                      num_workers=int(self.cfg["data"]["num_workers"]))
        for x, y in loader:
            yield rgb_to_tensor(x), y


def augment_batch(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Crop (H, W) at offsets (dy, dx) from the zero-padded images, flipping where flips is set.

    One vectorised gather: output pixel (i, r, c) = padded[i, dy_i + r, dx_i + c'] with c' = c or
    W - 1 - c.
    """
    n, h, w = images.shape
    p = AUGMENT_PAD
    padded = np.pad(images, ((0, 0), (p, p), (p, p)))
    rows = offsets[:, 0:1] + np.arange(h)                                  # (n, h)
    cols = np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))      # (n, w)
    cols = offsets[:, 1:2] + cols
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


# --------------------------------------------------------------------------------------------
# Fixed evaluation sets

class EvalSet:
    """The first n images of a split as re-iterable (x, y) batches, without augmentation.

    Fashion-MNIST and small folder/list sets are held in memory as uint8 and converted per batch;
    larger folder/list sets are read again on every pass.
    """

    def __init__(self, cfg: dict, split: str, n: int, batch: int):
        d = cfg["data"]
        self.cfg, self.batch = cfg, int(batch)
        self._images = self._labels = None
        if d["name"] == "fashion_mnist":
            images, labels = load_fashion_mnist(_fmnist_root(cfg), "train" if split == "train" else "test")
            self.n = _limit(_limit(len(labels), d[f"{split}_size"]), n)
            self._images, self._labels = images[:self.n], labels[:self.n]
            self._to_tensor = fmnist_to_tensor
            return
        samples = image_samples(cfg, split)
        self.n = _limit(_limit(len(samples), d[f"{split}_size"]), n)
        res = cfg["space"]["resolution"]
        self._dataset = ImageDataset(samples[:self.n], res, augment=False)
        self._to_tensor = rgb_to_tensor
        if self.n * 3 * res * res <= EVAL_CACHE_BYTES:
            key = ("eval", d["name"], str(Path(d["root"]).resolve()),
                   d[f"{split}_list"] if d["name"] == "list" else "", split, self.n, res)
            if key not in _CACHE:
                parts = [(x.numpy(), y.numpy()) for x, y in self._loader()]
                _CACHE[key] = (np.concatenate([p[0] for p in parts]),
                               np.concatenate([p[1] for p in parts]))
            self._images, self._labels = _CACHE[key]

    def _loader(self):
        batches = [list(range(i, min(i + self.batch, self.n))) for i in range(0, self.n, self.batch)]
        return paddle.io.DataLoader(self._dataset, batch_sampler=batches, collate_fn=_collate,
                                    num_workers=int(self.cfg["data"]["num_workers"]))

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
        if self._images is None:
            for x, y in self._loader():
                yield self._to_tensor(x), y
            return
        for i in range(0, self.n, self.batch):
            yield (self._to_tensor(self._images[i:i + self.batch]),
                   paddle.to_tensor(self._labels[i:i + self.batch]))


def validation_set(cfg: dict, n: int = 0, batch: int = 500) -> EvalSet:
    """The first n validation (Fashion-MNIST: test) images, 0 = all (data.val_size still applies)."""
    return EvalSet(cfg, "val", n, batch)


def validation_batches(cfg: dict) -> list[tuple[paddle.Tensor, paddle.Tensor]]:
    """The fixed scoring set: the first score.val_images validation images, score.eval_batch a batch."""
    s = cfg["score"]
    return list(validation_set(cfg, s["val_images"], s["eval_batch"]))


def calibration_batches(cfg: dict) -> list[paddle.Tensor]:
    """Images for BN re-calibration: the first score.calib_images training images (within
    data.train_size), unaugmented, in fixed order, score.calib_batch a batch."""
    s = cfg["score"]
    return [x for x, _ in EvalSet(cfg, "train", s["calib_images"], s["calib_batch"])]


# --------------------------------------------------------------------------------------------
# Preparation

def _fmnist_root(cfg: dict) -> Path:
    """data.root if it holds the four files, else whatever prepare() makes available."""
    size = 28 + 2 * FMNIST_PAD
    if int(cfg["space"]["resolution"]) != size:
        # The images are not resized: a network built for another size would silently get 32 px.
        raise DataError(f"space.resolution={cfg['space']['resolution']}: Fashion-MNIST images are "
                        f"{size}x{size} (28 padded by {FMNIST_PAD}); set space.resolution={size}")
    root = Path(cfg["data"]["root"])
    return root if _has_fmnist(root) else prepare(cfg)


def prepare(cfg: dict) -> Path:
    """Make the configured data available and verified; the directory it is in. Prints one line."""
    name = cfg["data"]["name"]
    if name == "fashion_mnist":
        root, how = _prepare_fmnist(cfg)
    elif name in ("folder", "list"):
        root, how = _prepare_images(cfg)
    else:
        raise DataError(f"data.name={name!r}: expected fashion_mnist, folder or list")
    print(f"data: {name} ready: {how}")
    return root

"""The image pipeline: ImageNet-style folders and list files, train/eval transforms, the Dataset."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import paddle
from PIL import Image

from track1.data.datafiles import CACHE, DataError, stat_key


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
# Listings get a fixed shuffle (independent of the run seed), so "the first N images" covers every
# class even when the listing is grouped by class.
CANONICAL_SEED = 0
EVAL_CROP = 0.875       # eval: resize the shorter side to resolution / 0.875, then center crop
AUGMENT_PAD = 4         # in-memory 32 px data: random crop of 32 from the zero-padded 40x40 image


# --------------------------------------------------------------------------------------------
# Folders and list files

def class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: directory not found (folder data needs root/train and root/val)")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"{split_dir}: no class subfolders")
    return classes


def _folder_samples(root: Path, split: str, num_classes: int) -> list[tuple[str, int]]:
    classes = class_dirs(root / "train")  # labels always come from the training classes
    if len(classes) != num_classes:  # every reader of the folder refuses it alike: prepare, train, score
        raise DataError(f"{root / 'train'}: {len(classes)} class folders but space.num_classes is {num_classes}")
    index = {c: i for i, c in enumerate(classes)}
    split_dir = root / ("train" if split == "train" else "val")
    samples = []
    for c in class_dirs(split_dir):
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
    listed = stat_key(Path(list_file)) if d["name"] == "list" and Path(list_file).is_file() else ()
    key = ("samples", d["name"], str(root.resolve()), listed, split, cfg["space"]["num_classes"])
    if key not in CACHE:
        if d["name"] == "folder":
            samples = _folder_samples(root, split, cfg["space"]["num_classes"])
        elif d["name"] == "list":
            samples = _list_samples(root, list_file, cfg["space"]["num_classes"])
        else:
            raise DataError(f"data.name={d['name']!r} is not folder or list")
        order = np.random.default_rng(CANONICAL_SEED).permutation(len(samples))
        CACHE[key] = [samples[i] for i in order]
    return CACHE[key]


def prepare_images(cfg: dict) -> str:
    """Check a folder/list dataset (class count, listings, first image: image_samples); what was found."""
    root = Path(cfg["data"]["root"])
    counts = {s: len(image_samples(cfg, s)) for s in ("train", "val")}
    first = image_samples(cfg, "train")[0][0]
    if not os.path.isfile(first):
        raise DataError(f"{first}: image file not found")
    return f"{counts['train']} train / {counts['val']} val images under {root}"


# --------------------------------------------------------------------------------------------
# Transforms: decoded images (PIL) for folder/list data, uint8 arrays for in-memory 32 px data

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


def augment_batch(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Crop (H, W) at offsets (dy, dx) from the zero-padded images, flipping where flips is set.

    images: uint8 (N, H, W) or (N, C, H, W). One vectorised gather: output pixel (i, ..., r, c) =
    padded[i, ..., dy_i + r, dx_i + c'] with c' = c or W - 1 - c.
    """
    x = images[:, None] if images.ndim == 3 else images
    n, c, h, w = x.shape
    p = AUGMENT_PAD
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    rows = offsets[:, 0:1] + np.arange(h)                                  # (n, h)
    cols = np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))      # (n, w)
    cols = offsets[:, 1:2] + cols
    out = padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return out[:, 0] if images.ndim == 3 else out


_CONSTANTS: dict = {}


def normalize(images: np.ndarray | paddle.Tensor, mean: np.ndarray, std: np.ndarray) -> paddle.Tensor:
    """uint8 (B, 3, H, W) -> float32 tensor (x / 255 - mean) / std, converted on the tensor's device."""
    x = paddle.to_tensor(images) if isinstance(images, np.ndarray) else images
    # The per-channel constants are uploaded once per device, not once per batch.
    key = (mean.tobytes(), std.tobytes(), str(x.place))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = (paddle.to_tensor(mean.reshape(1, 3, 1, 1), place=x.place),
                           paddle.to_tensor(std.reshape(1, 3, 1, 1), place=x.place))
    m, s = _CONSTANTS[key]
    return (x.astype("float32") * (1.0 / 255.0) - m) / s


def rgb_to_tensor(images: np.ndarray | paddle.Tensor) -> paddle.Tensor:
    """uint8 (B, 3, H, W) -> float32 tensor normalized with the ImageNet mean and std."""
    return normalize(images, IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------------------------
# Dataset

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


def close_loader(batches) -> None:
    """End a DataLoader iterator's worker processes and reader thread now. Dropping the iterator
    does not: its reader thread holds it, so its workers (and their shared memory) live until the
    process exits, where they die under it ("DataLoader N workers exit unexpectedly"). Paddle has no
    public close; its own exit hook (dataloader_iter._clear_loader) calls __del__ the same way."""
    batches.__del__()


def collate(items: list) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([x for x, _ in items]), np.array([y for _, y in items], np.int64)

"""Which data a config names (`data.name`): its kind, the in-memory arrays of Fashion-MNIST and CIFAR
(uint8), and `prepare`, which makes the data available and verified."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from track1.data import cifar
from track1.data.datafiles import DataError
from track1.data.fmnist import (FMNIST_CLASSES, FMNIST_PAD, FMNIST_SIZE, fmnist_to_tensor, has_fmnist,
                                load_fashion_mnist, prepare_fmnist)
from track1.data.images import normalize, prepare_images


# Held in memory as uint8 arrays, 32 px, augmented per global batch; the others are image files.
ARRAY_DATA = ("fashion_mnist", *cifar.DATASETS)
IMAGE_DATA = ("folder", "list")


def check_resolution(cfg: dict, size: int, what: str) -> None:
    if int(cfg["space"]["resolution"]) != size:
        # The images are not resized: a network built for another size would silently get 32 px.
        raise DataError(f"space.resolution={cfg['space']['resolution']}: {what}; "
                        f"set space.resolution={size}")


def check_classes(cfg: dict, name: str, classes: int) -> None:
    if int(cfg["space"]["num_classes"]) != classes:
        # A head of another size trains without a word (labels fit any larger one) and scores wrongly.
        raise DataError(f"space.num_classes={cfg['space']['num_classes']}: {name} has {classes} "
                        f"classes; set space.num_classes={classes}")


def arrays(cfg: dict, split: str) -> tuple[np.ndarray, np.ndarray, Callable]:
    """uint8 images, int64 labels of the split ('train' or 'val') and their batch -> tensor function."""
    name, root = cfg["data"]["name"], Path(cfg["data"]["root"])
    if name == "fashion_mnist":
        check_resolution(cfg, FMNIST_SIZE, f"Fashion-MNIST images are {FMNIST_SIZE}x{FMNIST_SIZE} "
                                            f"(28 padded by {FMNIST_PAD})")
        check_classes(cfg, name, FMNIST_CLASSES)
        if not has_fmnist(root):
            prepare(cfg)
        return (*load_fashion_mnist(root, "train" if split == "train" else "test"), fmnist_to_tensor)
    check_resolution(cfg, cifar.SIZE, f"{name} images are {cifar.SIZE}x{cifar.SIZE}")
    check_classes(cfg, name, cifar.DATASETS[name]["classes"])
    mean, std = cifar.stats(name)
    images, labels = cifar.load_cifar(root, name, "train" if split == "train" else "test")
    return images, labels, partial(normalize, mean=mean, std=std)


def check_name(name: str) -> None:
    if name not in ARRAY_DATA + IMAGE_DATA:
        raise DataError(f"data.name={name!r}: expected one of {', '.join(ARRAY_DATA + IMAGE_DATA)}")



def first_n(n: int, size: int) -> int:
    """The first `size` of n items (0 = all)."""
    return min(n, size) if size > 0 else n



def prepare(cfg: dict) -> Path:
    """Make the configured data available and verified; the directory it is in. Prints one line."""
    name, root = cfg["data"]["name"], Path(cfg["data"]["root"])
    check_name(name)
    if name == "fashion_mnist":
        check_classes(cfg, name, FMNIST_CLASSES)
        how = prepare_fmnist(root)
    elif name in cifar.DATASETS:
        how = cifar.prepare_cifar(root, name)
        arrays(cfg, "train")  # also checks space.resolution and space.num_classes
    else:
        how = prepare_images(cfg)
    print(f"data: {name} ready: {how}")
    return root

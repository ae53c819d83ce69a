"""Deterministic data for training and scoring: the samplers, training batches, fixed evaluation
sets and `prepare`, over every kind of data (`data.name`): Fashion-MNIST and CIFAR held in memory
as uint8 (fmnist.py, cifar.py), ImageNet-style folders and list files decoded by workers (images.py)."""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import paddle

from . import cifar
from .datafiles import CACHE, DataError
from .fmnist import FMNIST_PAD, FMNIST_SIZE, fmnist_to_tensor, has_fmnist, load_fashion_mnist, prepare_fmnist
from .images import (AUGMENT_PAD, ImageDataset, augment_batch, collate, image_samples, normalize,
                     prepare_images, rgb_to_tensor)

__all__ = ["DataError", "TrainData", "EvalSet", "EvalImages", "validation_set", "validation_batches",
           "calibration_batches", "prepare", "epoch_permutation", "EpochBatchSampler", "BatchStream"]

# Held in memory as uint8 arrays, 32 px, augmented per global batch; the others are image files.
ARRAY_DATA = ("fashion_mnist", *cifar.DATASETS)
IMAGE_DATA = ("folder", "list")
# Folder/list evaluation images are kept in memory (uint8) up to this size; larger sets are decoded
# again on every pass, except the scoring sets (calibration_batches, validation_batches).
EVAL_CACHE_BYTES = 1 << 30


# --------------------------------------------------------------------------------------------
# In-memory data: Fashion-MNIST and CIFAR

def _check_resolution(cfg: dict, size: int, what: str) -> None:
    if int(cfg["space"]["resolution"]) != size:
        # The images are not resized: a network built for another size would silently get 32 px.
        raise DataError(f"space.resolution={cfg['space']['resolution']}: {what}; "
                        f"set space.resolution={size}")


def _arrays(cfg: dict, split: str) -> tuple[np.ndarray, np.ndarray, Callable]:
    """uint8 images, int64 labels of the split ('train' or 'val') and their batch -> tensor function."""
    name, root = cfg["data"]["name"], Path(cfg["data"]["root"])
    if name == "fashion_mnist":
        _check_resolution(cfg, FMNIST_SIZE, f"Fashion-MNIST images are {FMNIST_SIZE}x{FMNIST_SIZE} "
                                            f"(28 padded by {FMNIST_PAD})")
        if not has_fmnist(root):
            prepare(cfg)
        return (*load_fashion_mnist(root, "train" if split == "train" else "test"), fmnist_to_tensor)
    _check_resolution(cfg, cifar.SIZE, f"{name} images are {cifar.SIZE}x{cifar.SIZE}")
    classes = cifar.DATASETS[name]["classes"]
    if int(cfg["space"]["num_classes"]) != classes:
        raise DataError(f"space.num_classes={cfg['space']['num_classes']}: {name} has {classes} "
                        f"classes; set space.num_classes={classes}")
    mean, std = cifar.stats(name)
    images, labels = cifar.load_cifar(root, name, "train" if split == "train" else "test")
    return images, labels, partial(normalize, mean=mean, std=std)


def _check_name(name: str) -> None:
    if name not in ARRAY_DATA + IMAGE_DATA:
        raise DataError(f"data.name={name!r}: expected one of {', '.join(ARRAY_DATA + IMAGE_DATA)}")


# --------------------------------------------------------------------------------------------
# Training batches
#
# Training order is a pure function of (run.seed, epoch, step): epoch e visits
# `default_rng([seed, e]).permutation(n)` in global batches of batch_size * world_size images, and
# each rank takes its slice of the global batch. Random augmentation is drawn per global batch
# (in-memory data) or per sample (folder/list), so batches do not depend on world_size and a run
# resumed at any step sees exactly the batches an uninterrupted run would have seen.

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


class BatchStream:
    """EpochBatchSampler's batches from (epoch, start_step) on, then every following epoch, endlessly.

    One DataLoader over this stream keeps its workers, and its queue of prefetched batches, across
    epoch boundaries. (Paddle's persistent_workers keeps the workers too, but drains the queue
    and polls every 0.5 s while it restarts them at each epoch: benchmarks/bench_data.py.)
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int,
                 epoch: int, start_step: int = 0):
        self.args, self.epoch, self.start_step = (n, batch_size, rank, world_size, seed), epoch, start_step

    def __iter__(self) -> Iterator[list]:
        epoch, start = self.epoch, self.start_step
        while True:
            yield from EpochBatchSampler(*self.args, epoch, start)
            epoch, start = epoch + 1, 0


def _limit(n: int, size: int) -> int:
    """The first `size` of n items (0 = all)."""
    return min(n, size) if size > 0 else n


class TrainData:
    """Deterministic training batches of one rank; same interface for every kind of data.

    Global batch = data.batch_size * world_size images, the last incomplete one dropped; this rank
    gets images [rank * batch_size, (rank + 1) * batch_size) of each global batch. wait_seconds
    adds up the time the consumer of batches() waited for its next batch (an input-bound run
    shows it growing beside the step time).
    """

    def __init__(self, cfg: dict, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside 0..{world_size - 1}")
        d = cfg["data"]
        _check_name(d["name"])
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.seed = int(cfg["run"]["seed"])
        self.batch_size = int(d["batch_size"])
        self.augment = bool(d["augment"])
        self.wait_seconds = 0.0
        self._in_memory = d["name"] in ARRAY_DATA
        if self._in_memory:
            images, labels, self._to_tensor = _arrays(cfg, "train")
            self.num_samples = _limit(len(labels), d["train_size"])
            self._images, self._labels = images[:self.num_samples], labels[:self.num_samples]
        else:
            self._samples = image_samples(cfg, "train")
            self.num_samples = _limit(len(self._samples), d["train_size"])
            # The open stream of batches and the (epoch, step) of the next batch it yields.
            self._stream: Iterator | None = None
            self._position = (-1, -1)
        global_batch = self.batch_size * world_size
        self.steps_per_epoch = self.num_samples // global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"{d['root']}: {self.num_samples} training images, fewer than one "
                            f"global batch of {global_batch}")

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
        """(x float32 (B, 3, R, R), y int64 (B,)) for steps start_step .. steps_per_epoch - 1."""
        make = self._array_batches if self._in_memory else self._image_batches
        source = make(epoch, start_step)
        try:
            while True:
                start = time.perf_counter()
                try:
                    batch = next(source)
                except StopIteration:
                    return
                self.wait_seconds += time.perf_counter() - start
                yield batch
        finally:
            source.close()

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
            yield self._to_tensor(images), paddle.to_tensor(self._labels[idx[mine]])

    def _image_batches(self, epoch: int, start_step: int):
        if self._position != (epoch, start_step):
            # Not where the open stream is (the first call, a resume, an abandoned epoch): open a
            # new one; dropping the old iterator ends its workers.
            self._stream = None
            dataset = ImageDataset(self._samples[:self.num_samples], self.cfg["space"]["resolution"],
                                   augment=self.augment, seed=self.seed)
            stream = BatchStream(self.num_samples, self.batch_size, self.rank, self.world_size,
                                 self.seed, epoch, start_step)
            loader = paddle.io.DataLoader(dataset, batch_sampler=stream, collate_fn=collate,
                                          num_workers=int(self.cfg["data"]["num_workers"]))
            self._stream, self._position = iter(loader), (epoch, start_step)
        for step in range(start_step, self.steps_per_epoch):
            x, y = next(self._stream)
            self._position = (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)
            yield rgb_to_tensor(x), y


# --------------------------------------------------------------------------------------------
# Fixed evaluation sets
#
# Every split has one canonical order: file order for in-memory data, a fixed shuffle of the
# listing for folder/list data (images.CANONICAL_SEED), so "the first N images" (data.train_size,
# data.val_size, score.calib_images, score.val_images) covers all classes.

class EvalSet:
    """The first n images of a split as re-iterable (x, y) batches without augmentation.

    Images stay uint8 on the host; each batch becomes a float tensor (on the device) only when it
    is reached, so a pass holds one batch of floats at a time. len() is the number of batches.
    Folder/list sets above EVAL_CACHE_BYTES are decoded again on every pass unless `keep` is set.
    """

    def __init__(self, cfg: dict, split: str, n: int, batch: int, keep: bool = False):
        d = cfg["data"]
        _check_name(d["name"])
        self.cfg, self.batch = cfg, int(batch)
        self._images = self._labels = None
        if d["name"] in ARRAY_DATA:
            images, labels, self._to_tensor = _arrays(cfg, split)
            self.n = _limit(_limit(len(labels), d[f"{split}_size"]), n)
            self._images, self._labels = images[:self.n], labels[:self.n]
            return
        samples = image_samples(cfg, split)
        self.n = _limit(_limit(len(samples), d[f"{split}_size"]), n)
        res = cfg["space"]["resolution"]
        self._dataset = ImageDataset(samples[:self.n], res, augment=False)
        self._to_tensor = rgb_to_tensor
        if keep or self.n * 3 * res * res <= EVAL_CACHE_BYTES:
            key = ("eval", d["name"], str(Path(d["root"]).resolve()),
                   d[f"{split}_list"] if d["name"] == "list" else "", split, self.n, res)
            if key not in CACHE:
                parts = [(x.numpy(), y.numpy()) for x, y in self._loader()]
                CACHE[key] = (np.concatenate([p[0] for p in parts]),
                              np.concatenate([p[1] for p in parts]))
            self._images, self._labels = CACHE[key]

    def _loader(self):
        batches = [list(range(i, min(i + self.batch, self.n))) for i in range(0, self.n, self.batch)]
        return paddle.io.DataLoader(self._dataset, batch_sampler=batches, collate_fn=collate,
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

    def images(self) -> EvalImages:
        """The same batches without their labels."""
        return EvalImages(self)


class EvalImages:
    """An EvalSet's image batches only (x of each (x, y)): re-iterable, with len()."""

    def __init__(self, eval_set: EvalSet):
        self._set = eval_set

    def __len__(self) -> int:
        return len(self._set)

    def __iter__(self) -> Iterator[paddle.Tensor]:
        s = self._set
        if s._images is None:
            yield from (x for x, _ in s)
            return
        for i in range(0, s.n, s.batch):
            yield s._to_tensor(s._images[i:i + s.batch])


def validation_set(cfg: dict, n: int = 0, batch: int = 500) -> EvalSet:
    """The first n validation (Fashion-MNIST, CIFAR: test) images, 0 = all (data.val_size still applies)."""
    return EvalSet(cfg, "val", n, batch)


def validation_batches(cfg: dict) -> EvalSet:
    """The fixed scoring set: the first score.val_images validation images, score.eval_batch a batch.

    Iterated once per scored network, so folder/list images are always kept (uint8, on the host).
    """
    s = cfg["score"]
    return EvalSet(cfg, "val", s["val_images"], s["eval_batch"], keep=True)


def calibration_batches(cfg: dict) -> EvalImages:
    """Images for BN re-calibration: the first score.calib_images training images (within
    data.train_size), unaugmented, in fixed order, score.calib_batch a batch."""
    s = cfg["score"]
    return EvalSet(cfg, "train", s["calib_images"], s["calib_batch"], keep=True).images()


# --------------------------------------------------------------------------------------------
# Preparation

def prepare(cfg: dict) -> Path:
    """Make the configured data available and verified; the directory it is in. Prints one line."""
    name, root = cfg["data"]["name"], Path(cfg["data"]["root"])
    _check_name(name)
    if name == "fashion_mnist":
        how = prepare_fmnist(root)
    elif name in cifar.DATASETS:
        how = cifar.prepare_cifar(root, name)
        _arrays(cfg, "train")  # also checks space.resolution and space.num_classes
    else:
        how = prepare_images(cfg)
    print(f"data: {name} ready: {how}")
    return root

"""Fixed evaluation sets: calibration and validation images in a canonical order, uint8 on the host,
converted to float tensors one batch at a time."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import paddle

from track1.data.datafiles import CACHE, DataError
from track1.data.images import ImageDataset, close_loader, collate, image_samples, rgb_to_tensor
from track1.data.sources import ARRAY_DATA, arrays, check_name, first_n


# Folder/list evaluation images are kept in memory (uint8) up to this size; larger sets are decoded
# again on every pass, except the scoring sets (calibration_batches, validation_batches).
EVAL_CACHE_BYTES = 1 << 30

#
# Every split has one canonical order: file order for in-memory data, a fixed shuffle of the
# listing for folder/list data (images.CANONICAL_SEED), so "the first N images" (data.train_size,
# data.val_size, score.calib_images, score.val_images) covers all classes.

class EvalSet:
    """The first n images of a split as re-iterable (x, y) batches without augmentation.

    Images stay uint8 on the host; each batch becomes a float tensor (on the device) only when it
    is reached, so a pass holds one batch of floats at a time. len() is the number of batches.
    Folder/list sets above EVAL_CACHE_BYTES are decoded again on every pass unless `keep` is set.
    `shard=(rank, world)` keeps only batches rank, rank + world, ...: a rank of a distributed
    evaluation decodes, keeps and converts its own share of the images, nothing else.
    """

    def __init__(self, cfg: dict, split: str, n: int, batch: int, keep: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        d = cfg["data"]
        check_name(d["name"])
        self.cfg, self.batch = cfg, int(batch)
        if self.batch < 1:
            raise DataError(f"an evaluation batch of {batch} images: it must be at least 1")
        self._images = self._labels = None
        in_memory = d["name"] in ARRAY_DATA
        if in_memory:
            images, labels, self._to_tensor = arrays(cfg, split)
            total = first_n(first_n(len(labels), d[f"{split}_size"]), n)
        else:
            samples = image_samples(cfg, split)
            total = first_n(first_n(len(samples), d[f"{split}_size"]), n)
        rank, world = shard
        starts = range(rank * self.batch, total, world * self.batch)
        # This shard's images, contiguous, and the size of each of its batches.
        index = np.concatenate([np.arange(s, min(s + self.batch, total)) for s in starts] or
                               [np.zeros(0, np.int64)])
        self.sizes = [min(self.batch, total - s) for s in starts]
        self.n = len(index)
        if in_memory:
            self._images, self._labels = images[index], labels[index]
            return
        res = cfg["space"]["resolution"]
        self._dataset = ImageDataset([samples[i] for i in index], res, augment=False)
        self._to_tensor = rgb_to_tensor
        if keep or self.n * 3 * res * res <= EVAL_CACHE_BYTES:
            key = ("eval", d["name"], str(Path(d["root"]).resolve()),
                   d[f"{split}_list"] if d["name"] == "list" else "", split, total, self.batch,
                   shard, res)
            if key not in CACHE:
                parts = [(x.numpy(), y.numpy()) for x, y in self._loader()]
                CACHE[key] = (np.concatenate([p[0] for p in parts]),
                              np.concatenate([p[1] for p in parts]))
            self._images, self._labels = CACHE[key]

    def _spans(self) -> Iterator[tuple[int, int]]:
        start = 0
        for size in self.sizes:
            yield start, start + size
            start += size

    def _loader(self):
        batches = [list(range(a, b)) for a, b in self._spans()]
        return paddle.io.DataLoader(self._dataset, batch_sampler=batches, collate_fn=collate,
                                    num_workers=int(self.cfg["data"]["num_workers"]),
                                    use_shared_memory=bool(self.cfg["data"]["shared_memory"]))

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
        if self._images is None:
            batches = iter(self._loader())
            try:
                for x, y in batches:
                    yield self._to_tensor(x), y
            finally:  # a consumer that stops early leaves workers behind otherwise
                close_loader(batches)
            return
        for a, b in self._spans():
            yield self._to_tensor(self._images[a:b]), paddle.to_tensor(self._labels[a:b])

    def images(self) -> EvalImages:
        """The same batches without their labels."""
        return EvalImages(self)


class EvalImages:
    """An EvalSet's image batches only (x of each (x, y)): re-iterable, with len()."""

    def __init__(self, eval_set: EvalSet):
        self._set = eval_set

    @property
    def n(self) -> int:
        return self._set.n

    def __len__(self) -> int:
        return len(self._set)

    def __iter__(self) -> Iterator[paddle.Tensor]:
        s = self._set
        if s._images is None:
            yield from (x for x, _ in s)
            return
        for a, b in s._spans():
            yield s._to_tensor(s._images[a:b])


def validation_set(cfg: dict, n: int = 0, batch: int = 500) -> EvalSet:
    """The first n validation (Fashion-MNIST, CIFAR: test) images, 0 = all (data.val_size still applies)."""
    return EvalSet(cfg, "val", n, batch)


def validation_batches(cfg: dict, shard: tuple[int, int] = (0, 1), n: int | None = None) -> EvalSet:
    """The fixed scoring set: the first score.val_images (or n) validation images, score.eval_batch
    a batch; with `shard`, one rank's share of the batches (EvalSet).

    Iterated once per scored network, so folder/list images are always kept (uint8, on the host).
    """
    s = cfg["score"]
    return EvalSet(cfg, "val", s["val_images"] if n is None else n, s["eval_batch"], keep=True,
                   shard=shard)


def calibration_batches(cfg: dict) -> EvalImages:
    """Images for BN re-calibration: the first score.calib_images training images (within
    data.train_size), unaugmented, in fixed order, score.calib_batch a batch."""
    s = cfg["score"]
    return EvalSet(cfg, "train", s["calib_images"], s["calib_batch"], keep=True).images()


def split_size(cfg: dict, split: str) -> int:
    """The images a split ('train' or 'val') offers, within data.train_size / data.val_size."""
    d = cfg["data"]
    total = len(arrays(cfg, split)[1]) if d["name"] in ARRAY_DATA else len(image_samples(cfg, split))
    return first_n(total, d[f"{split}_size"])

"""Deterministic training batches: the order is a pure function of (run.seed, epoch, step), for every kind of data."""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import paddle

from track1.data.datafiles import DataError
from track1.data.images import (AUGMENT_PAD, ImageDataset, augment_batch, close_loader, collate, image_samples,
                                rgb_to_tensor)
from track1.data.sources import ARRAY_DATA, IMAGE_DATA, arrays, check_name, first_n


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


PREFETCH = 2  # paddle.io.DataLoader's prefetch_factor: batches each worker keeps in flight


def shared_memory_bytes(cfg: dict) -> int:
    """About the /dev/shm one process's DataLoader workers hold at once (folder/list data with
    data.shared_memory): PREFETCH uint8 batches a worker, of the largest batch it reads."""
    d, s = cfg["data"], cfg["score"]
    if d["name"] not in IMAGE_DATA or not d["shared_memory"] or d["num_workers"] == 0:
        return 0
    batch = max(d["batch_size"], s["calib_batch"], s["eval_batch"])
    return PREFETCH * d["num_workers"] * batch * (3 * cfg["space"]["resolution"] ** 2 + 8)


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
        check_name(d["name"])
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.seed = int(cfg["run"]["seed"])
        self.batch_size = int(d["batch_size"])
        self.augment = bool(d["augment"])
        self.wait_seconds = 0.0
        self._in_memory = d["name"] in ARRAY_DATA
        if self._in_memory:
            images, labels, self._to_tensor = arrays(cfg, "train")
            self.num_samples = first_n(len(labels), d["train_size"])
            self._images, self._labels = images[:self.num_samples], labels[:self.num_samples]
        else:
            self._samples = image_samples(cfg, "train")
            self.num_samples = first_n(len(self._samples), d["train_size"])
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

    def close(self) -> None:
        """End the open stream's loader workers (folder/list data); batches() opens a new one."""
        if not self._in_memory and self._stream is not None:
            close_loader(self._stream)
            self._stream, self._position = None, (-1, -1)

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
            # Not where the open stream is (the first call, a resume, an abandoned epoch): end it
            # and open a new one.
            self.close()
            dataset = ImageDataset(self._samples[:self.num_samples], self.cfg["space"]["resolution"],
                                   augment=self.augment, seed=self.seed)
            stream = BatchStream(self.num_samples, self.batch_size, self.rank, self.world_size,
                                 self.seed, epoch, start_step)
            loader = paddle.io.DataLoader(dataset, batch_sampler=stream, collate_fn=collate,
                                          num_workers=int(self.cfg["data"]["num_workers"]),
                                          use_shared_memory=bool(self.cfg["data"]["shared_memory"]))
            self._stream, self._position = iter(loader), (epoch, start_step)
        for step in range(start_step, self.steps_per_epoch):
            x, y = next(self._stream)
            self._position = (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)
            yield rgb_to_tensor(x), y

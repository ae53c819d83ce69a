"""A subnet's accuracy with the supernet's weights: BN re-calibration, and top-1 and cross-entropy over fixed batches."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import numpy as np
import paddle
import paddle.nn.functional as F

from track1.network.supernet import SuperNet
from track1.ranking.halves import HalfTally
from track1.space import Widths


def calibration_momentum(k: int) -> float:
    """The BN momentum for calibration batch k (1-based): batch 1 overwrites whatever the running
    statistics held, and after K batches they are the plain mean of the K batch statistics."""
    return (k - 1) / k


@paddle.no_grad()
def calibrate_bn(model: SuperNet, widths: Widths, batches: Iterable[paddle.Tensor]) -> None:
    """Re-estimate the subnet's BN statistics as the exact average over the calibration batches
    (also of a supernet trained with frozen statistics: train.bn_stats)."""
    bns = model.bn_layers()
    saved = [(bn.momentum, bn.frozen) for bn in bns]
    model.train()
    try:
        for k, x in enumerate(batches, start=1):
            for bn in bns:
                bn.momentum, bn.frozen = calibration_momentum(k), False
            model(x, widths)
    finally:
        for bn, (m, frozen) in zip(bns, saved):
            bn.momentum, bn.frozen = m, frozen
        model.eval()


def batch_sums(logits: paddle.Tensor, y: paddle.Tensor) -> tuple[int, float]:
    """(correct top-1 predictions, summed cross-entropy) of one batch."""
    correct = int((logits.argmax(axis=1) == y).astype("int64").sum().item())
    return correct, F.cross_entropy(logits, y, reduction="sum").item()


def batch_outcomes(logits: paddle.Tensor, y: paddle.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each image's top-1 outcome (bool) and cross-entropy: a HalfTally's input."""
    correct = (logits.argmax(axis=1) == y).numpy()
    return correct, F.cross_entropy(logits, y, reduction="none").numpy().reshape(-1)


def head_sums(logits: paddle.Tensor, y: paddle.Tensor, tally: HalfTally | None) -> tuple[int, float]:
    """batch_sums, the images' outcomes added to the tally when one is kept (the sums stay the
    same numbers either way)."""
    if tally is not None:
        tally.add(*batch_outcomes(logits, y))
    return batch_sums(logits, y)


@paddle.no_grad()
def evaluate_batches(forward: Callable[[paddle.Tensor], paddle.Tensor],
                     batches: Iterable[tuple[paddle.Tensor, paddle.Tensor]],
                     tally: HalfTally | None = None) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of forward(x) over the (x, y) batches; with a tally,
    the per-half sums of the split-halves too (track1.ranking.halves)."""
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches:
        c, s = head_sums(forward(x), y, tally)
        correct, loss_sum, n = correct + c, loss_sum + s, n + int(y.shape[0])
    return correct / n, loss_sum / n


def evaluate(model: SuperNet, widths: Widths, batches: Iterable[tuple[paddle.Tensor, paddle.Tensor]],
             tally: HalfTally | None = None) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of the subnet over the batches, BN in eval mode."""
    model.eval()
    return evaluate_batches(lambda x: model(x, widths), batches, tally)


def score_widths(model: SuperNet, widths: Widths, calib: Iterable, val: Iterable,
                 tally: HalfTally | None = None) -> tuple[float, float]:
    """Per-code scoring: re-calibrate the subnet's BN, then evaluate it."""
    calibrate_bn(model, widths, calib)
    return evaluate(model, widths, val, tally)


@contextlib.contextmanager
def kept_bn_statistics(model: SuperNet) -> Iterator[None]:
    """Every BN running mean and variance is put back as it was on leaving, so that scoring
    between training epochs never leaves recalibrated statistics in the supernet (or a checkpoint)."""
    buffers = [b for bn in model.bn_layers() for b in (bn._mean, bn._variance)]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        for b, value in zip(buffers, saved):
            b.set_value(value)

"""Prefix-shared scoring: a list of subnets scored as a trie over their layers, in chunks of images.

BN statistics and activations at a layer depend only on the layers before it: in calibration
(train mode) every BN normalises with the statistics of its own batch, so the activations that
reach layer l do not depend on any running statistics, and once layer l's running statistics are
the average over the calibration batches its evaluation-mode outputs are fixed too. Subnets that
share their first layers therefore share those layers' calibration and evaluation activations, and
`score_tree` computes each distinct prefix once (track1.ranking.trie).

It walks the trie depth-first (children in sorted order) and at each node runs that one layer with
the supernet's own forward (SuperNet.run_layer), its BN replaced by `_ChunkNorm`: train-mode batch
statistics on each calibration batch, folded with momentum (k-1)/k into running statistics of the
node's own, then eval mode with them on the evaluation images. Where a subnet ends, the head turns
the evaluation activations into top-1 and cross-entropy. The supernet's BN buffers are not touched.

Memory is bounded by `chunk_images`, not by the image count: a walk holds the activations of at most
that many images along the current path. All images in one chunk are one walk; more make several
walks over the same trie (calibration chunks first, whole batches each, then evaluation chunks),
with each node's running statistics kept between walks. Those statistics grow with the list, so a
list is scored in groups of GROUP subnets, contiguous in trie order, one trie each.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Iterator, Sequence

import paddle
import paddle.nn.functional as F

from track1.network.supernet import SuperNet
from track1.ranking.evaluate import calibration_momentum, head_sums
from track1.ranking.halves import Tallies
from track1.ranking.trie import Node, build_trie, part_of
from track1.space import Widths, layer_sequence


# Subnets per trie: their nodes' BN statistics are held until the trie is done (about 5 KB a node
# at width 1.0, some 10 nodes a subnet); the official list is 22 groups.
GROUP = 2048


@dataclasses.dataclass
class Chunk:
    """The images of one walk: whole calibration batches (the first is batch `first_k`, 1-based),
    then evaluation images with their labels."""

    calib: list[paddle.Tensor]
    first_k: int
    evals: paddle.Tensor | None = None
    labels: paddle.Tensor | None = None

    @property
    def n_calib(self) -> int:
        return sum(int(x.shape[0]) for x in self.calib)

    @property
    def n_evals(self) -> int:
        return 0 if self.labels is None else int(self.labels.shape[0])

    def sizes(self) -> list[int]:
        return [int(x.shape[0]) for x in self.calib] + ([self.n_evals] if self.n_evals else [])

    def images(self) -> paddle.Tensor:
        return _joined(list(self.calib) + ([self.evals] if self.n_evals else []))


def chunks(calib: Iterable[paddle.Tensor], val: Iterable[tuple[paddle.Tensor, paddle.Tensor]],
           chunk_images: int) -> Iterator[Chunk]:
    """The walks' images: calibration batches packed whole while they fit in chunk_images (one at
    least), the last of them topped up with evaluation images, then evaluation images in chunks of
    chunk_images. Lazy: a batch is read (and converted) when its chunk is reached."""
    pending, first_k, size, k = [], 1, 0, 0
    for k, x in enumerate(calib, start=1):
        n = int(x.shape[0])
        if pending and size + n > chunk_images:
            yield Chunk(pending, first_k)
            pending, first_k, size = [], k, 0
        pending.append(x)
        size += n
    if not pending:
        raise ValueError("tree scoring needs at least one calibration batch")
    current, room, xs, ys = Chunk(pending, first_k), chunk_images - size, [], []
    for x, y in val:
        done, n = 0, int(x.shape[0])
        while done < n:
            if room <= 0:  # the chunk is full and more images follow
                current.evals, current.labels = (_joined(xs), _joined(ys)) if xs else (None, None)
                yield current
                current, room, xs, ys = Chunk([], k + 1), chunk_images, [], []
            take = min(room, n - done)
            whole = done == 0 and take == n
            xs.append(x if whole else x[done:done + take])
            ys.append(y if whole else y[done:done + take])
            done, room = done + take, room - take
    current.evals, current.labels = (_joined(xs), _joined(ys)) if xs else (None, None)
    yield current


def _joined(parts: list[paddle.Tensor]) -> paddle.Tensor:
    return parts[0] if len(parts) == 1 else paddle.concat(parts)


class _ChunkNorm:
    """BN of one walk, in place of the layer's forward: per calibration batch F.batch_norm in
    training mode with momentum (k-1)/k into the node's running statistics, then inference mode
    with them on the evaluation images (what the BN layer does to its buffers, per node)."""

    def __init__(self, chunk: Chunk, stats: dict):
        self.chunk, self.stats, self.node = chunk, stats, None
        self.sizes = chunk.sizes()

    def __call__(self, bn, y: paddle.Tensor) -> paddle.Tensor:
        c = int(y.shape[1])
        weight, bias = bn.weight[:c], bn.bias[:c]
        key = (self.node, id(bn))
        if key not in self.stats:
            self.stats[key] = (paddle.zeros([c]), paddle.ones([c]))
        mean, var = self.stats[key]
        parts = paddle.split(y, self.sizes) if len(self.sizes) > 1 else [y]
        outs = []
        for k, part in enumerate(parts[:len(self.chunk.calib)], start=self.chunk.first_k):
            outs.append(F.batch_norm(part, mean, var, weight, bias, training=True,
                                     momentum=calibration_momentum(k), epsilon=bn.epsilon))
        for part in parts[len(self.chunk.calib):]:
            outs.append(F.batch_norm(part, mean, var, weight, bias, training=False, epsilon=bn.epsilon))
        return outs[0] if len(outs) == 1 else paddle.concat(outs)


def score_tree(model: SuperNet, widths_list: Sequence[Widths], calib: Iterable[paddle.Tensor],
               val: Iterable[tuple[paddle.Tensor, paddle.Tensor]], chunk_images: int,
               timings: dict[str, float] | None = None,
               tallies: Tallies | None = None) -> Iterator[tuple[Widths, float, float]]:
    """(widths, top-1, mean CE) for every distinct Widths, each as soon as it is final.

    Equal to per-code scoring (evaluate.score_widths) for each subnet up to float rounding, with
    at most chunk_images images' activations held along a path. Results come in depth-first order
    of the trie (sorted children) within groups of GROUP subnets, not in list order. calib and val
    are iterated once per group (an EvalSet converts each batch as it is reached). A `timings` dict
    receives the wall seconds spent in the stem, stage1..stage4 and head; `tallies` (halves.Tallies)
    holds each subnet's per-half sums when its result is yielded.
    """
    for widths, correct, loss_sum, n in tree_sums(model, widths_list, calib, val, chunk_images, timings,
                                                  tallies):
        yield widths, correct / n, loss_sum / n


def tree_sums(model: SuperNet, widths_list: Sequence[Widths], calib: Iterable[paddle.Tensor],
              val: Iterable[tuple[paddle.Tensor, paddle.Tensor]], chunk_images: int,
              timings: dict[str, float] | None = None,
              tallies: Tallies | None = None) -> Iterator[tuple[Widths, int, float, int]]:
    """score_tree's results as (widths, correct images, summed cross-entropy, images)."""
    distinct = sorted(dict.fromkeys(widths_list), key=layer_sequence)
    with paddle.no_grad():
        for i in range(0, len(distinct), GROUP):
            trie = build_trie(distinct[i:i + GROUP])
            yield from _Walks(model, trie, timings, tallies).run(chunks(calib, val, chunk_images))


class _Walks:
    """The walks of one trie over a sequence of chunks; results are yielded during the last one."""

    def __init__(self, model: SuperNet, root: Node, timings: dict[str, float] | None,
                 tallies: Tallies | None = None):
        self.model, self.root, self.timings, self.tallies = model, root, timings, tallies
        self.stats: dict = {}   # (node, BN layer) -> its running mean and variance
        self.sums: dict = {}    # widths -> [correct, loss sum] over the evaluation chunks so far
        self.n_val = 0

    def run(self, walks: Iterator[Chunk]) -> Iterator[tuple[Widths, int, float, int]]:
        chunk = next(walks)
        for following in walks:  # every walk but the last: statistics and sums only
            self.n_val += chunk.n_evals
            for _ in self._visit(self.root, chunk.images(), _ChunkNorm(chunk, self.stats), chunk, False):
                pass
            chunk = following
        self.n_val += chunk.n_evals
        if self.n_val == 0:
            raise ValueError("tree scoring needs at least one validation image")
        yield from self._visit(self.root, chunk.images(), _ChunkNorm(chunk, self.stats), chunk, True)

    def _visit(self, node: Node, x: paddle.Tensor, norm: _ChunkNorm, chunk: Chunk,
               last: bool) -> Iterator[tuple[Widths, int, float, int]]:
        for key in sorted(node.children):
            child = node.children[key]
            start = time.perf_counter()
            norm.node = child
            y = self.model.run_layer(key, x, norm)
            self._time(part_of(key), start)
            for widths in child.ends:
                start = time.perf_counter()
                sums = self.sums.setdefault(widths, [0, 0.0])
                if chunk.n_evals:
                    evals = y[chunk.n_calib:] if chunk.n_calib else y
                    tally = None if self.tallies is None else self.tallies[widths]
                    correct, loss = head_sums(self.model.head(evals), chunk.labels, tally)
                    sums[0], sums[1] = sums[0] + correct, sums[1] + loss
                self._time("head", start)
                if last:
                    yield widths, sums[0], sums[1], self.n_val
            if child.children:
                yield from self._visit(child, y, norm, chunk, last)

    def _time(self, part: str, start: float) -> None:
        if self.timings is not None:
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start

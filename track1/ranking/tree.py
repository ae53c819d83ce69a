"""Prefix-shared scoring: evaluate a list of subnets as a tree over their leading layers.

BN statistics and activations at a layer depend only on the layers before it: in calibration
(train mode) every BN normalises with the statistics of its own batch, so the activations that
reach layer l do not depend on any running statistics, and once layer l's running statistics are
the average over the calibration batches its evaluation-mode outputs are fixed too. Two subnets
that share their first layers (same stem width, same first blocks) therefore share the
calibration and evaluation activations of those layers, and `score_tree` computes each distinct
prefix once.

A subnet is the layer sequence

    ("stem", stem width), then per block in order (stage, index in stage, mid, out)

(input width and stride follow from the prefix), followed by the head (average pool + fc). The
sequences of a list form a trie; `score_tree` walks it depth-first, children in sorted order, and
at each node runs that one layer

  1. in train mode on each calibration activation of the parent, with BN momentum (k-1)/k for
     batch k, so the layer's running statistics become the exact average of its batch statistics
     (as `scoring.calibrate_bn` makes them), keeping the outputs as this node's calibration
     activations;
  2. then in eval mode on the parent's evaluation activations.

Where a subnet ends, the head turns the evaluation activations into top-1 and mean cross-entropy
as `scoring.evaluate` does. Siblings later overwrite the shared BN buffers, which is harmless: a
node's outputs are computed before the walk descends. Only the activations along the current path
are held.

Two engines run a layer. `_LayerEngine` (fast=False) calls the supernet's own layers batch by
batch, exactly the operations of calibrate_bn and evaluate. `_FastEngine` (fast=True, the default)
stacks all calibration and evaluation images into one tensor, computes every convolution with
track1.network.conv's fast mode (oneDNN on the CPU, whatever mode the supernet trained with) and runs
F.batch_norm part by part with the same momentum rule into per-layer running statistics of its
own. Both agree with per-code scoring to float rounding (tests/test_prefix.py).

`count_macs` gives the multiply-adds of per-code and of prefix-shared evaluation (SearchSpace.flops'
convention); on the official list at width 1.0 / 224 px the ratio is 1.876.
"""
from __future__ import annotations

import time
from typing import Iterator, Sequence

import paddle
import paddle.nn.functional as F

from track1.network.supernet import SuperNet
from track1.space import STAGE_STRIDES, STEM_POOL, Block, SearchSpace, Widths, needs_projection
from track1.space.cost import block_macs, head_macs, stem_macs


def layer_sequence(widths: Widths) -> tuple[tuple, ...]:
    """The trie path of a subnet: ("stem", w) then (stage, index, mid, out) per block."""
    seq: list[tuple] = [("stem", widths.stem)]
    for stage, pairs in enumerate(widths.blocks):
        for i, (mid, out) in enumerate(pairs):
            seq.append((stage, i, mid, out))
    return tuple(seq)


class _Node:
    __slots__ = ("children", "ends")

    def __init__(self) -> None:
        self.children: dict[tuple, _Node] = {}
        self.ends: list[Widths] = []


def build_trie(widths_list: Sequence[Widths]) -> _Node:
    """The trie of the distinct Widths' layer sequences (duplicates end at the same node once)."""
    root, seen = _Node(), set()
    for w in widths_list:
        if w in seen:
            continue
        seen.add(w)
        node = root
        for key in layer_sequence(w):
            node = node.children.setdefault(key, _Node())
        node.ends.append(w)
    return root


# ------------------------------------------------------------------------------------------------
# Multiply-adds

def _layer_macs(space: SearchSpace, key: tuple, c_in: int, h: int) -> tuple[int, int, int]:
    """(multiply-adds, out channels, out size) of one trie layer (track1.space.cost)."""
    if key[0] == "stem":
        macs, size = stem_macs(key[1], space.in_channels, h)
        return macs, key[1], size
    stage, i, mid, out = key
    stride = STAGE_STRIDES[stage] if i == 0 else 1
    macs, size = block_macs(Block(stage, i, c_in, mid, out, stride, needs_projection(c_in, out, stride)), h)
    return macs, out, size


def _part(key: tuple) -> str:
    return "stem" if key[0] == "stem" else f"stage{key[0] + 1}"


def shared_macs_by_part(space: SearchSpace, widths_list: Sequence[Widths]) -> dict[str, int]:
    """Prefix-shared multiply-adds of one image split into stem, stage1..stage4 and head."""
    parts = {"stem": 0, **{f"stage{s + 1}": 0 for s in range(len(STAGE_STRIDES))}, "head": 0}
    stack = [(build_trie(widths_list), space.in_channels, space.resolution)]
    while stack:
        node, c, h = stack.pop()
        parts["head"] += len(node.ends) * head_macs(c, h, space.num_classes)
        for key, child in node.children.items():
            macs, c2, h2 = _layer_macs(space, key, c, h)
            parts[_part(key)] += macs
            stack.append((child, c2, h2))
    return parts


def count_macs(space: SearchSpace, widths_list: Sequence[Widths]) -> tuple[int, int]:
    """(per-code, prefix-shared) multiply-adds of one image's forward pass through every subnet.

    Both count each distinct Widths once (score_list scores equal networks once too): per-code
    sums SearchSpace.flops over them; prefix-shared counts every trie node's layer once plus one
    head (pool + fc) per subnet. Calibration and evaluation run the same forward passes, so the
    ratio holds for the whole of scoring; multiply by the number of images for totals.
    """
    per_code = sum(space.flops(w) for w in dict.fromkeys(widths_list))
    return int(per_code), int(sum(shared_macs_by_part(space, widths_list).values()))


# ------------------------------------------------------------------------------------------------
# Scoring

class _LayerEngine:
    """The supernet's own layers, batch by batch: BN layers in train mode with momentum (k-1)/k for
    calibration batch k (their running statistics become the exact average, as calibrate_bn makes
    them), then in eval mode. Activations: (calibration batches, evaluation batches)."""

    def __init__(self, model: SuperNet, calib: list, evals: list):
        self.model, self.root = model, (list(calib), list(evals))

    def run(self, key: tuple, acts: tuple[list, list]) -> tuple[list, list]:
        model = self.model
        if key[0] == "stem":
            layer, bns = model.stem_bn, [model.stem_bn]
        else:
            layer = model.stages[key[0]][key[1]]
            bns = [layer.bn1, layer.bn2] + ([layer.shortcut_bn] if layer.projection else [])
        calib, evals = acts
        layer.train()
        out_calib = []
        for k, x in enumerate(calib, start=1):
            for bn in bns:
                bn.momentum = (k - 1) / k  # batch 1 overwrites; after K: the plain average
            out_calib.append(self._forward(key, x))
        layer.eval()
        return out_calib, [self._forward(key, x) for x in evals]

    def _forward(self, key: tuple, x: paddle.Tensor) -> paddle.Tensor:
        model = self.model
        if key[0] == "stem":
            return F.max_pool2d(F.relu(model.stem_bn(model.stem_conv(x, key[1]))), *STEM_POOL)
        stage, i, mid, out = key
        return model.stages[stage][i](x, mid, out)

    @staticmethod
    def evals(acts: tuple[list, list]) -> list:
        return acts[1]


class _FastEngine:
    """The same computation with every calibration and evaluation image in one tensor per layer.

    Convolutions act image by image, so they run once on the whole stack (track1.network.conv's fast
    mode). BN runs per part: F.batch_norm in training mode on calibration batch k with momentum
    (k-1)/k into this layer's own running mean/variance (what the BN layer does to its buffers),
    then in inference mode with those statistics on the evaluation images. The model's BN buffers
    and modes are not touched. Activations: one tensor, calibration images first.
    """

    def __init__(self, model: SuperNet, calib: list, evals: list):
        self.model = model
        self.sizes = [int(x.shape[0]) for x in calib] + [int(x.shape[0]) for x in evals]
        self.n_calib = sum(self.sizes[:len(calib)])
        self.n_parts = len(calib)
        self.root = paddle.concat(list(calib) + list(evals))

    def run(self, key: tuple, x: paddle.Tensor) -> paddle.Tensor:
        model = self.model
        if key[0] == "stem":
            x = F.relu(self._bn(model.stem_bn, model.stem_conv(x, key[1], "fast")))
            return F.max_pool2d(x, *STEM_POOL)
        stage, i, mid, out = key
        block = model.stages[stage][i]
        # DynamicBlock.forward with the fast conv and per-part BN (tests check that the two agree).
        y = F.relu(self._bn(block.bn1, block.conv1(x, mid, "fast")))
        y = self._bn(block.bn2, block.conv2(y, out, "fast"))
        if block.projection:
            x = self._bn(block.shortcut_bn, block.shortcut_conv(x, out, "fast"))
        return block.act(y + x)

    def _bn(self, bn, y: paddle.Tensor) -> paddle.Tensor:
        c = int(y.shape[1])
        weight, bias = bn.weight[:c], bn.bias[:c]
        mean, var = paddle.zeros([c]), paddle.ones([c])
        parts = paddle.split(y, self.sizes)
        outs = []
        for k, part in enumerate(parts[:self.n_parts], start=1):
            outs.append(F.batch_norm(part, mean, var, weight, bias, training=True,
                                     momentum=(k - 1) / k, epsilon=bn.epsilon))
        for part in parts[self.n_parts:]:
            outs.append(F.batch_norm(part, mean, var, weight, bias, training=False,
                                     epsilon=bn.epsilon))
        return paddle.concat(outs)

    def evals(self, x: paddle.Tensor) -> list:
        return [x[self.n_calib:]]


def score_tree(model: SuperNet, widths_list: Sequence[Widths], calib: list[paddle.Tensor],
               val: list[tuple[paddle.Tensor, paddle.Tensor]], fast: bool = True,
               timings: dict[str, float] | None = None) -> Iterator[tuple[Widths, float, float]]:
    """(widths, top-1, mean CE) for every distinct Widths, each as soon as it is computed.

    Equal to scoring.score_widths (calibrate_bn then evaluate) for each subnet up to float
    rounding. fast=False walks the trie with the supernet's own layers batch by batch (exactly
    calibrate_bn's and evaluate's operations); fast=True (_FastEngine) stacks all images and
    computes convolutions with track1.network.conv's fast mode. Results come in depth-first order of the
    trie (sorted children), not in list order. BN momentum and every layer's training flag are
    restored when the iterator is exhausted or closed; BN buffers are left as the last
    calibration wrote them (fast=False) or untouched (fast=True). A `timings` dict receives the
    wall seconds spent in the stem, stage1..stage4 and head (for profiling and extrapolation).
    """
    root = build_trie(widths_list)
    if not root.children:
        return
    if not calib or not val:
        raise ValueError("score_tree needs at least one calibration and one validation batch")
    bns = model.bn_layers()
    saved_momentum = [bn.momentum for bn in bns]
    layers = model.sublayers(include_self=True)
    saved_training = [layer.training for layer in layers]
    # Evaluation batches are independent image by image (eval-mode BN), so they run as one batch:
    # fewer, larger matrix products. Calibration batches stay separate (their BN statistics are).
    xs, ys = [x for x, _ in val], [y for _, y in val]
    if len(val) > 1:
        xs, ys = [paddle.concat(xs)], [paddle.concat(ys)]
    try:
        with paddle.no_grad():
            engine = (_FastEngine if fast else _LayerEngine)(model, calib, xs)
            walk = _Walk(model, engine, ys, timings)
            yield from walk.visit(root, engine.root)
    finally:
        for bn, m in zip(bns, saved_momentum):
            bn.momentum = m
        for layer, t in zip(layers, saved_training):
            layer.training = t


class _Walk:
    def __init__(self, model: SuperNet, engine, labels: list[paddle.Tensor],
                 timings: dict[str, float] | None):
        self.model, self.engine, self.labels, self.timings = model, engine, labels, timings
        self.n_val = sum(int(y.shape[0]) for y in labels)

    def visit(self, node: _Node, acts) -> Iterator[tuple[Widths, float, float]]:
        timings = self.timings
        for key in sorted(node.children):
            child = node.children[key]
            start = time.perf_counter()
            child_acts = self.engine.run(key, acts)
            if timings is not None:
                now = time.perf_counter()
                timings[_part(key)] = timings.get(_part(key), 0.0) + now - start
            for widths in child.ends:
                start = time.perf_counter()
                result = self.head(self.engine.evals(child_acts))
                if timings is not None:
                    timings["head"] = timings.get("head", 0.0) + time.perf_counter() - start
                yield (widths, *result)
            if child.children:
                yield from self.visit(child, child_acts)

    def head(self, eval_acts: list) -> tuple[float, float]:
        """scoring.evaluate's top-1 and mean cross-entropy from the last block's activations."""
        correct, loss_sum = 0, 0.0
        for x, y in zip(eval_acts, self.labels):
            logits = self.model.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
            correct += int((logits.argmax(axis=1) == y).astype("int64").sum().item())
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        return correct / self.n_val, loss_sum / self.n_val

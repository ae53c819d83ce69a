"""MeCo (Jiang et al., NeurIPS 2023): the smallest eigenvalue of the channel correlation of one image's feature maps, summed over layers.

As the authors' code (HamsterMimi/MeCo): per hooked output, the Pearson correlation of the first
image's C channels over their positions, its smallest eigenvalue (opt: of 8 drawn channels, x C/8),
summed. The hooks: track1.ranking.proxies.meco_maps; which outputs they see: docs/METHODS.md.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.network.resnet import ResNet
from track1.space import STEM_CONV, STEM_POOL, SearchSpace, Widths, block_plan, conv_out


OPT_CHANNELS = 8  # channels the opt variant samples from every hooked output


def layer_term(fea: np.ndarray, rng: Optional[np.random.Generator] = None) -> float:
    """One hooked output's term: fea [channels, positions] of the first image.

    rng given (meco_opt): OPT_CHANNELS channels drawn without replacement, the eigenvalue scaled by
    channels / OPT_CHANNELS; an output with fewer channels uses them all, unscaled (the authors'
    random.sample would raise there). A row of one position has no correlation: all NaN -> 0.
    """
    n, positions = fea.shape
    scale = 1.0
    if rng is not None and n > OPT_CHANNELS:
        fea = fea[rng.choice(n, OPT_CHANNELS, replace=False)]
        scale = n / OPT_CHANNELS
    if positions < 2:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(np.asarray(fea, dtype=np.float64))
    corr[~np.isfinite(corr)] = 0.0
    # The matrix is symmetric: eigvalsh's real eigenvalues are torch.linalg.eig's real parts.
    return float(np.linalg.eigvalsh(corr)[0] * scale)


def total(terms: Sequence[float]) -> float:
    """The network's score: the sum of the finite terms (the authors drop NaN and inf)."""
    t = np.asarray(terms, dtype=np.float64)
    return float(t[np.isfinite(t)].sum())


def first_image(out: paddle.Tensor) -> np.ndarray:
    """The first image's output as [channels, positions] (the authors' data_output[0].reshape(C, -1))."""
    a = out[0].numpy()
    return a.reshape(a.shape[0], -1)


def functional_outputs(net: nn.Layer) -> dict[int, list]:
    """What the project's ResNet computes with paddle.nn.functional, where a torch ResNet has a
    module whose hook MeCo reads: the stem's ReLU and max pool, and each block's inner ReLU. Keyed
    by the id of the BN layer whose output they take; empty for any other network."""
    if not isinstance(net, ResNet):
        return {}
    extra = {id(net.stem_bn): [F.relu, lambda y: F.max_pool2d(F.relu(y), *STEM_POOL)]}
    for stage in net.stages:
        for block in stage:
            extra[id(block.bn1)] = [F.relu]
    return extra


def score(maps: Sequence[np.ndarray], rng: Optional[np.random.Generator] = None) -> float:
    """MeCo of a network's first-image outputs in forward order (proxies.meco_maps); with rng,
    meco_opt, its channel draws in that order."""
    return total([layer_term(f, rng) for f in maps])


# -- where it cannot work --------------------------------------------------------------------------
def output_shapes(widths: Widths, resolution: int) -> list[tuple[int, int]]:
    """(channels, positions) of every hooked output of the ResNet before its head, in forward order
    (the head's outputs are single positions at any resolution: their term is 0 by construction)."""
    h = conv_out(resolution, *STEM_CONV)
    shapes = [(widths.stem, h * h)] * 3                  # conv, BN, ReLU
    h = conv_out(h, *STEM_POOL)
    shapes.append((widths.stem, h * h))                  # max pool
    for b in block_plan(widths):
        h = conv_out(h, 3, b.stride, 1)
        shapes += [(b.mid, h * h)] * 3 + [(b.c_out, h * h)] * (2 + 2 * b.projection + 2)  # ..., act, block
    return shapes


def degenerate(widths: Widths, resolution: int, opt: bool) -> list[tuple[int, int]]:
    """The outputs whose correlation matrix is singular whatever the weights and the image: k rows
    of P positions have rank at most P - 1 (each row is centred), so k >= P gives eigenvalue 0; k is
    every channel for meco, min(channels, 8) for meco_opt."""
    return [(c, p) for c, p in output_shapes(widths, resolution)
            if (min(c, OPT_CHANNELS) if opt else c) >= p]


def degenerate_note(name: str, space: SearchSpace, resolution: int) -> Optional[str]:
    """A one-line warning when some of MeCo's terms are 0 by construction on the space's largest
    network at this resolution (None when every output before the head can contribute)."""
    widths = space.max_widths
    bad = degenerate(widths, resolution, name == "meco_opt")
    if not bad:
        return None
    if name == "meco_opt":
        what = f"no more positions than the {OPT_CHANNELS} channels it samples (down to {min(p for _, p in bad)})"
        fix = "raise proxies.resolution"
    else:
        c, p = max(bad)
        what = f"at least as many channels as positions (up to {c} channels on {p})"
        fix = f"meco_opt samples {OPT_CHANNELS} channels"
    return (f"warning: {name} at {resolution} px: {len(bad)} of the largest network's "
            f"{len(output_shapes(widths, resolution))} feature maps have {what}, so their smallest eigenvalue "
            f"is 0 and they add nothing to the score; {fix}")

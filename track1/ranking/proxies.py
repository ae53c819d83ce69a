"""Zero-cost proxies: scores of an untrained network that predict its trained accuracy (higher = better).

Each scores the plain network `ResNet(widths, space, act)` right after `paddle.seed(seed)`, on one
caller-supplied batch (x, y) where it needs data; `compute` is the entry point. Convolutions run in
track1.network.conv's fast mode (oneDNN on the CPU; equal to stock to float rounding), except in grasp,
whose Hessian-vector product needs the stock kernel's double backward (synflow's float64 runs stock
by itself). Lists, settings and input batches: track1/proxy_runs.py; ensembles and the RD-NAS
teacher: track1/teacher.py; MeCo's measure: track1/ranking/meco.py.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.network.resnet import ResNet
from track1.ranking import meco as meco_measure
from track1.ranking.double_backward import ce_double_backward, grasp_logits, remove_batchnorm
from track1.space import SearchSpace, Widths


Batch = Tuple[paddle.Tensor, paddle.Tensor]
ProxyFn = Callable[[Widths, SearchSpace, Optional[Batch], int, str], float]

# Proxies whose value does not depend on the initialisation (computed once, whatever `repeats`).
SEED_FREE = frozenset({"flops", "params"})
# Proxies that read the caller's images (and labels, for the loss-based ones).
NEEDS_DATA = frozenset({"grad_norm", "snip", "grasp", "fisher", "jacob_cov", "naswot"})
NEEDS_LABELS = frozenset({"grad_norm", "snip", "grasp", "fisher"})

JACOB_K = 1e-5       # eigenvalue offset of Mellor et al.'s jacob_cov score
ZEN_GAMMA = 1e-2     # input perturbation size of Zen-NAS
DEFAULT_BATCH = 64   # Gaussian batch size of zen when the caller gives no batch
# Seeds a score averages when the caller does not say (`repeats=None`): meco_opt's one image and
# channel draw vary much from seed to seed (docs/METHODS.md).
DEFAULT_REPEATS = {"meco_opt": 10}
# Proxies whose networks convolve with Paddle's stock kernel: grasp needs its double backward, and
# synflow computes in float64, which oneDNN's fast path does not take.
STOCK_CONV = frozenset({"grasp", "synflow"})


def build_network(widths: Widths, space: SearchSpace, act: str = "relu",
                  conv: str = "fast") -> nn.Layer:
    """The network a proxy scores. A module-level hook so tests can score a hand-made network."""
    return ResNet(widths, space, act, conv)


def _fresh(widths: Widths, space: SearchSpace, act: str, seed: int, conv: str = "fast") -> nn.Layer:
    paddle.seed(seed)
    return build_network(widths, space, act, conv)


def _weights(net: nn.Layer) -> list:
    """Conv and linear weights: the tensors the pruning-based proxies score (as in Abdelfattah et al.)."""
    return [l.weight for l in net.sublayers() if isinstance(l, (nn.Conv2D, nn.Linear))]


def _need(batch: Optional[Batch], name: str) -> Batch:
    if batch is None:
        raise ValueError(f"proxy {name!r} needs a batch (x, y)")
    return batch


def _input_shape(space: SearchSpace, batch: Optional[Batch], n: int) -> list[int]:
    """The caller's batch shape (its resolution is the proxy resolution), else n x space input."""
    if batch is not None:
        return list(batch[0].shape)
    return [n, space.in_channels, space.resolution, space.resolution]


def _sum(values) -> float:
    return float(sum(v.item() for v in values))


@contextlib.contextmanager
def _post_hooks(layers, hook):
    """hook(layer, input, output) on each layer's forward for the duration of the block."""
    handles = [l.register_forward_post_hook(hook) for l in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _loss_and_grads(net: nn.Layer, batch: Batch) -> list:
    x, y = batch
    net.train()
    loss = F.cross_entropy(net(x), y)
    return paddle.grad(loss, _weights(net))


# -- proxies -----------------------------------------------------------------------------------
def flops(widths: Widths, space: SearchSpace, batch=None, seed: int = 0, act: str = "relu") -> float:
    return float(space.flops(widths))


def params(widths: Widths, space: SearchSpace, batch=None, seed: int = 0, act: str = "relu") -> float:
    return float(space.params(widths))


def grad_norm(widths, space, batch, seed=0, act="relu") -> float:
    """Sum over conv/linear layers of ||dL/dw||_2 of the cross-entropy loss."""
    net = _fresh(widths, space, act, seed)
    return _sum(paddle.linalg.norm(g) for g in _loss_and_grads(net, _need(batch, "grad_norm")))


def snip(widths, space, batch, seed=0, act="relu") -> float:
    """Sum of |w * dL/dw| over conv/linear weights (connection sensitivity, Lee et al.)."""
    net = _fresh(widths, space, act, seed)
    grads = _loss_and_grads(net, _need(batch, "snip"))
    return _sum((w * g).abs().sum() for w, g in zip(_weights(net), grads))


def grasp(widths, space, batch, seed=0, act="relu") -> float:
    """-sum(w * (H g)) over conv/linear weights, H the loss Hessian, g the gradient (Wang et al.).

    Computed as Abdelfattah et al. do: z = <dL/dw, stopgrad(g)>, then Hg = dz/dw by double backward.
    GraSP itself prunes the weights of highest per-weight score; the zero-cost-proxies benchmark
    sums the score as is and finds it correlates positively with accuracy, so we keep that sign.
    """
    x, y = _need(batch, "grasp")
    net = _fresh(widths, space, act, seed, conv="stock")  # STOCK_CONV
    net.train()
    # The input must take part in the first backward: Paddle's conv2d double grad silently drops the
    # path through its output gradient when the conv's input gradient is not requested (the stem
    # conv on image data), and the Hessian-vector product is then wrong with no error.
    x = x.detach().clone()
    x.stop_gradient = False
    ws = _weights(net)
    loss = ce_double_backward(grasp_logits(net, x), y)
    grads = paddle.grad(loss, [x] + ws, create_graph=True)[1:]
    z = paddle.add_n([(g * g.detach()).sum() for g in grads])
    hg = paddle.grad(z, ws)
    return -_sum((w * h).sum() for w, h in zip(ws, hg))


def fisher(widths, space, batch, seed=0, act="relu") -> float:
    """Sum over channels of 0.5 * mean_n (sum_positions act * dL/dact)^2 (Theis et al.).

    The activations are the outputs of every conv and linear layer, as in Abdelfattah et al.'s
    implementation: each is the quantity a channel-pruning decision removes.
    """
    x, y = _need(batch, "fisher")
    net = _fresh(widths, space, act, seed)
    net.train()
    acts: list = []
    with _post_hooks([l for l in net.sublayers() if isinstance(l, (nn.Conv2D, nn.Linear))],
                     lambda layer, inp, out: acts.append(out)):
        loss = F.cross_entropy(net(x), y)
    # The weights too: a fast-conv node must give every gradient it can (track1.network.conv.conv2d).
    grads = paddle.grad(loss, acts + _weights(net))[:len(acts)]
    total = 0.0
    for a, g in zip(acts, grads):
        g_nk = (a * g).sum(axis=[2, 3]) if a.ndim == 4 else a * g
        total += (0.5 * (g_nk ** 2).mean(axis=0)).sum().item()
    return float(total)


def synflow(widths, space, batch=None, seed=0, act="relu") -> float:
    """Sum of |w * dR/dw| with R = sum of the outputs of the |w| network on an all-ones input.

    BN layers are removed (Abdelfattah et al.'s bn=False copy) and the computation is in float64,
    because the product of many |w| over- or underflows float32 in deep networks.
    """
    net = _fresh(widths, space, act, seed)
    remove_batchnorm(net)
    net.to(dtype="float64")
    net.eval()
    with paddle.no_grad():
        for p in net.parameters():
            p.set_value(p.abs())
    x = paddle.ones([1] + _input_shape(space, batch, 1)[1:], dtype="float64")
    ws = _weights(net)
    grads = paddle.grad(net(x).sum(), ws)
    return _sum((w * g).abs().sum() for w, g in zip(ws, grads))


def jacob_cov(widths, space, batch, seed=0, act="relu") -> float:
    """Mellor et al.: correlation of the input-Jacobians of the batch, scored by its eigenvalues."""
    x, _ = _need(batch, "jacob_cov")
    net = _fresh(widths, space, act, seed)
    net.train()
    x = x.detach().clone()
    x.stop_gradient = False
    jac = paddle.grad(net(x).sum(), [x] + _weights(net))[0]  # all: see fisher
    return jacob_cov_score(jac.reshape([x.shape[0], -1]).numpy())


def naswot(widths, space, batch, seed=0, act="relu") -> float:
    """Mellor et al.: log|K|, K = sum over ReLU layers of (units - Hamming distance of ReLU codes)."""
    x, _ = _need(batch, "naswot")
    net = _fresh(widths, space, act, seed)
    net.train()
    codes: list[np.ndarray] = []

    def hook(layer, inp, out):
        codes.append((inp[0] > 0).reshape([inp[0].shape[0], -1]).numpy())

    # Every activation layer: each block's outer activation (a code is the sign of its input, which
    # for a ReLU is whether the unit is active). The stem's and the blocks' inner ReLUs are
    # functional (track1.network.layers.conv_bn_act): no hook sees them, unlike Mellor et al.'s.
    with _post_hooks([l for l in net.sublayers() if isinstance(l, (nn.ReLU, nn.PReLU, nn.Mish))], hook), \
            paddle.no_grad():
        net(x)
    return logdet(naswot_kernel(codes))


def zen(widths, space, batch=None, seed=0, act="relu") -> float:
    """Zen-NAS (Lin et al.), following the authors' compute_zen_score.py.

    Conv and linear weights ~ N(0, 1), BN in train mode, x ~ N(0, 1) of the batch's shape:
    log E_n[sum_{c,h,w} |f(x) - f(x + 0.01 eps)|] of the pre-pooling feature map f, plus, over
    BN layers, log sqrt(mean running variance). As in the authors' code the running variance is
    read after the two forwards with momentum 0.1 from its initial 1 (Paddle's momentum 0.9 is
    the same update), so it is dominated by, but not equal to, the batch variance.
    """
    net = _fresh(widths, space, act, seed)
    with paddle.no_grad():
        for l in net.sublayers():
            if isinstance(l, (nn.Conv2D, nn.Linear)):
                l.weight.set_value(paddle.randn(l.weight.shape))
                if l.bias is not None:
                    l.bias.set_value(paddle.zeros(l.bias.shape))
            elif isinstance(l, nn.BatchNorm2D):
                l.weight.set_value(paddle.ones(l.weight.shape))
                l.bias.set_value(paddle.zeros(l.bias.shape))
        shape = _input_shape(space, batch, DEFAULT_BATCH)
        x = paddle.randn(shape)
        x2 = x + ZEN_GAMMA * paddle.randn(shape)
        pool = [l for l in net.sublayers() if isinstance(l, nn.AdaptiveAvgPool2D)][-1]
        feats: list = []
        hook = pool.register_forward_pre_hook(lambda layer, inp: feats.append(inp[0]))
        net.train()
        try:
            net(x)
            net(x2)
        finally:
            hook.remove()
        delta = (feats[0] - feats[1]).abs().sum(axis=[1, 2, 3]).mean().item()
        bn_log = sum(0.5 * math.log(l._variance.mean().item())
                     for l in net.sublayers() if isinstance(l, nn.BatchNorm2D))
    return float(math.log(delta) + bn_log)


def meco_maps(net: nn.Layer, x: paddle.Tensor) -> list[np.ndarray]:
    """MeCo's feature maps: the first image's output of every layer (the network itself included),
    in the order the forward computes them, plus meco.functional_outputs; BN in train mode, as in
    the authors' fresh torch networks. Each [channels, positions], float32."""
    maps: list[np.ndarray] = []
    extra = meco_measure.functional_outputs(net)

    def hook(layer, inp, out):
        maps.append(meco_measure.first_image(out))
        maps.extend(meco_measure.first_image(fn(out[:1])) for fn in extra.get(id(layer), ()))

    net.train()
    with _post_hooks(net.sublayers(include_self=True), hook), paddle.no_grad():
        net(x[:1])
    return maps


def _meco(widths, space, batch, seed, act, opt: bool) -> float:
    net = _fresh(widths, space, act, seed)
    rng = np.random.default_rng(seed)  # the image, then meco_opt's channel draws
    x = rng.standard_normal([1] + _input_shape(space, batch, 1)[1:], dtype=np.float32)
    return meco_measure.score(meco_maps(net, paddle.to_tensor(x)), rng if opt else None)


def meco(widths, space, batch=None, seed=0, act="relu") -> float:
    """MeCo (Jiang et al.): the sum over layer outputs of the smallest eigenvalue of the Pearson
    correlation of one N(0, 1) image's channels (the batch gives only the resolution)."""
    return _meco(widths, space, batch, seed, act, opt=False)


def meco_opt(widths, space, batch=None, seed=0, act="relu") -> float:
    """MeCo's opt variant: each output's eigenvalue of 8 channels drawn at random, times channels / 8."""
    return _meco(widths, space, batch, seed, act, opt=True)


PROXIES: dict[str, ProxyFn] = {
    "flops": flops, "params": params, "grad_norm": grad_norm, "snip": snip, "grasp": grasp,
    "fisher": fisher, "synflow": synflow, "jacob_cov": jacob_cov, "naswot": naswot, "zen": zen,
    "meco": meco, "meco_opt": meco_opt,
}


# -- pieces shared with the tests -------------------------------------------------------------
def naswot_kernel(codes) -> np.ndarray:
    """K[i, j] = sum over layers of (units - Hamming(c_i, c_j)) for binary codes [batch, units]."""
    k = None
    for c in codes:
        c = np.asarray(c, dtype=np.float64)
        layer = c @ c.T + (1.0 - c) @ (1.0 - c).T  # agreements = units - Hamming distance
        k = layer if k is None else k + layer
    if k is None:
        raise ValueError("naswot: the network has no activation layer to read codes from")
    return k


def logdet(k: np.ndarray) -> float:
    """log|K| of the (positive semi-definite) NASWOT kernel; -inf when K is singular."""
    sign, value = np.linalg.slogdet(k)
    return float(value) if sign > 0 else -math.inf


def jacob_cov_score(jac: np.ndarray, k: float = JACOB_K) -> float:
    """-sum(log(v + k) + 1/(v + k)) over eigenvalues v of the correlation matrix of Jacobian rows.

    Maximal when the rows are uncorrelated (v = 1): Mellor et al.'s sign, higher = better.
    A sample whose Jacobian is constant has no correlation: the score is then -inf.
    """
    jac = np.asarray(jac, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(jac)
    if not np.all(np.isfinite(corr)):
        return -math.inf
    # eigvalsh: corr is symmetric; clip the rounding-level negatives of a PSD matrix.
    v = np.clip(np.linalg.eigvalsh(corr), 0.0, None)
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


def default_repeats(name: str) -> int:
    return DEFAULT_REPEATS.get(name, 1)


# -- one score ---------------------------------------------------------------------------------
def compute(name: str, widths: Widths | str, space: SearchSpace, batch: Optional[Batch] = None,
            seed: int = 0, act: str = "relu", repeats: Optional[int] = None) -> float:
    """The proxy's score, averaged over seeds seed .. seed + repeats - 1 (None: default_repeats);
    identical for a seed.

    The global Paddle RNG state is restored afterwards, so scoring does not perturb the caller.
    """
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}: expected one of {', '.join(PROXIES)}")
    repeats = default_repeats(name) if repeats is None else repeats
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if isinstance(widths, str):
        widths = space.widths(widths)
    fn = PROXIES[name]
    seeds = [seed] if name in SEED_FREE else [seed + r for r in range(repeats)]
    state = paddle.get_rng_state()
    try:
        return float(np.mean([fn(widths, space, batch, s, act) for s in seeds]))
    finally:
        paddle.set_rng_state(state)

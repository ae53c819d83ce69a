"""Zero-cost proxies: scores of an untrained network that predict its trained accuracy.

Every proxy scores the plain static network `ResNet(widths, space, act)` right after a fresh
initialisation made with `paddle.seed(seed)`, on one batch `(x, y)` supplied by the caller (float32
NCHW images, int64 labels) where it needs data. Higher = predicted better for every proxy; none
needs negating beyond its published definition (jacob_cov's and grasp's already carry a minus).

    compute(name, widths, space, batch, seed)     one score (averaged over `repeats` seeds)
    score_list(name, codes, space, batch, path)   every code of a list, cached and resumable (JSONL)
    to_official_json(records, codes)              the submission shape, in list order
    proxy_settings(cfg)                           the `proxies:` config section, resolved

Paddle 3.3.1 (CPU) limits on double backward that `grasp` works around, each checked against
finite differences in float64 (see tests/test_proxies.py):
  * no second-order kernel for mean_all (F.cross_entropy's mean), log_softmax, flatten, max pool
    (pool2d and max_pool2d_with_index), strided slices, max-reduction, PReLU or Mish, and one for
    batch_norm that is ~200x slower than the same maths from elementwise ops: grasp uses an
    equivalent forward built from fast, twice-differentiable ops (see `_grasp_logits`);
  * conv2d's double grad silently drops the path through its output gradient when the conv's
    *input* gradient is not requested in the first backward (the stem conv on image data): the
    Hessian-vector product is then wrong by ~50% with no error. Asking for d loss / d x too fixes it.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from tqdm import tqdm

from .files import append_jsonl, resume_log
from .space import SearchSpace, Widths
from .supernet import ResNet

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


def build_network(widths: Widths, space: SearchSpace, act: str = "relu") -> nn.Layer:
    """The network a proxy scores. A module-level hook so tests can score a hand-made network."""
    return ResNet(widths, space, act)


def _fresh(widths: Widths, space: SearchSpace, act: str, seed: int) -> nn.Layer:
    paddle.seed(seed)
    return build_network(widths, space, act)


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
    net = _fresh(widths, space, act, seed)
    net.train()
    # The input must take part in the first backward, else conv2d's double grad loses a term
    # (see the module docstring).
    x = x.detach().clone()
    x.stop_gradient = False
    ws = _weights(net)
    loss = _ce_double_backward(_grasp_logits(net, x), y)
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
    hooks = [l.register_forward_post_hook(lambda layer, inp, out: acts.append(out))
             for l in net.sublayers() if isinstance(l, (nn.Conv2D, nn.Linear))]
    try:
        loss = F.cross_entropy(net(x), y)
    finally:
        for h in hooks:
            h.remove()
    grads = paddle.grad(loss, acts)
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
    _remove_batchnorm(net)
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
    (jac,) = paddle.grad(net(x).sum(), [x])
    return jacob_cov_score(jac.reshape([x.shape[0], -1]).numpy())


def naswot(widths, space, batch, seed=0, act="relu") -> float:
    """Mellor et al.: log|K|, K = sum over ReLU layers of (units - Hamming distance of ReLU codes)."""
    x, _ = _need(batch, "naswot")
    net = _fresh(widths, space, act, seed)
    net.train()
    codes: list[np.ndarray] = []

    def hook(layer, inp, out):
        codes.append((inp[0] > 0).reshape([inp[0].shape[0], -1]).numpy())

    # Every activation layer: the inner ReLUs and the outer block activation (a code is the sign
    # of its input, which for a ReLU is whether the unit is active).
    hooks = [l.register_forward_post_hook(hook) for l in net.sublayers()
             if isinstance(l, (nn.ReLU, nn.PReLU, nn.Mish))]
    try:
        with paddle.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
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


PROXIES: dict[str, ProxyFn] = {
    "flops": flops, "params": params, "grad_norm": grad_norm, "snip": snip, "grasp": grasp,
    "fisher": fisher, "synflow": synflow, "jacob_cov": jacob_cov, "naswot": naswot, "zen": zen,
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


def _replace_layers(net: nn.Layer, kind: type, make: Callable[[nn.Layer], nn.Layer]) -> None:
    """Swap every sublayer of type kind for make(it) (the networks scored here are private copies)."""
    for layer in net.sublayers(include_self=True):
        for name, child in list(layer.named_children()):
            if isinstance(child, kind):
                setattr(layer, name, make(child))


def _remove_batchnorm(net: nn.Layer) -> None:
    _replace_layers(net, nn.BatchNorm2D, lambda bn: nn.Identity())


def _ce_double_backward(logits: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
    """F.cross_entropy (mean) from ops with second derivatives (log_softmax and mean_all have none)."""
    z = logits - logits.max(axis=1, keepdim=True).detach()  # a constant shift: value and derivatives unchanged
    log_p = z - paddle.log(paddle.exp(z).sum(axis=1, keepdim=True))
    onehot = F.one_hot(y.reshape([-1]), logits.shape[1]).astype(logits.dtype)
    return -(log_p * onehot).sum() / logits.shape[0]


def _max_pool_double_backward(x: paddle.Tensor, pool: nn.MaxPool2D) -> paddle.Tensor:
    """F.max_pool2d as a gather at the argmax, which take_along_axis can differentiate twice."""
    _, idx = F.max_pool2d(x, pool.ksize, pool.stride, pool.padding, return_mask=True)
    n, c, h, w = x.shape
    flat = x.reshape([n, c, h * w])
    out = paddle.take_along_axis(flat, idx.reshape([n, c, -1]).astype("int64"), axis=2)
    return out.reshape(idx.shape)


class _BatchNormDoubleBackward(nn.Layer):
    """Train-mode BN from elementwise ops and means, sharing the original scale and shift.

    Paddle's batch_norm double-grad kernel is correct but about 200x slower on CPU than this
    (99 s for one 64x16x32x32 activation); running statistics are not needed by grasp.
    """

    def __init__(self, bn: nn.BatchNorm2D):
        super().__init__()
        self.weight, self.bias, self.epsilon = bn.weight, bn.bias, bn._epsilon

    def forward(self, x):
        d = x - x.mean(axis=[0, 2, 3], keepdim=True)
        var = (d * d).mean(axis=[0, 2, 3], keepdim=True)  # biased: what BN normalises by
        scale = self.weight.reshape([1, -1, 1, 1]) * paddle.rsqrt(var + self.epsilon)
        return d * scale + self.bias.reshape([1, -1, 1, 1])


class _PReLUDoubleBackward(nn.Layer):
    """PReLU as relu(x) - a * relu(-x), sharing the original slope parameter."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu._weight  # nn.PReLU keeps its slope in _weight

    def forward(self, x):
        return F.relu(x) - self.weight * F.relu(-x)


class _MishDoubleBackward(nn.Layer):
    def forward(self, x):
        return x * paddle.tanh(F.softplus(x))


def _grasp_logits(net: nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """ResNet.forward with every op replaced by one that Paddle can differentiate twice."""
    if not isinstance(net, ResNet):
        return net(x)  # a hand-made test network: let Paddle report any op it cannot handle
    _replace_layers(net, nn.BatchNorm2D, _BatchNormDoubleBackward)
    _replace_layers(net, nn.PReLU, _PReLUDoubleBackward)
    _replace_layers(net, nn.Mish, lambda m: _MishDoubleBackward())
    x = _max_pool_double_backward(net.stem_relu(net.stem_bn(net.stem_conv(x))), net.pool)
    for stage in net.stages:
        for block in stage:
            x = block(x)
    x = net.avgpool(x)
    return net.fc(x.reshape([x.shape[0], -1]))  # reshape, not flatten: flatten_grad has no grad


# -- one score ---------------------------------------------------------------------------------
def compute(name: str, widths: Widths | str, space: SearchSpace, batch: Optional[Batch] = None,
            seed: int = 0, act: str = "relu", repeats: int = 1) -> float:
    """The proxy's score, averaged over seeds seed .. seed + repeats - 1; identical for a seed.

    The global Paddle RNG state is restored afterwards, so scoring does not perturb the caller.
    """
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}: expected one of {', '.join(PROXIES)}")
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


# -- a whole list, cached ------------------------------------------------------------------------
def score_list(name: str, codes: Mapping[str, str], space: SearchSpace, batch: Optional[Batch],
               out_path, seed: int = 0, repeats: int = 1, progress: bool = True,
               act: str = "relu") -> dict[str, dict]:
    """Score every key -> code of a list; returns key -> record, in list order.

    Each distinct network (equal `space.widths(code)`) is computed once; its records go to the
    JSONL log at out_path as soon as it is done, so a killed run resumes where it stopped.
    Records: {"key", "code", "score", "seconds", "proxy", "seed", "repeats", "act"}; "seconds"
    is the computation time for the key that paid for it and 0.0 for keys that reused it.
    """
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}: expected one of {', '.join(PROXIES)}")
    setting = {"proxy": name, "seed": seed, "repeats": repeats, "act": act}
    done = resume_log(out_path, codes, setting)
    by_widths: dict[Widths, dict] = {}
    for rec in done.values():
        by_widths.setdefault(space.widths(rec["code"]), rec)

    groups: dict[Widths, list[str]] = {}
    for key, code in codes.items():
        if key not in done:
            groups.setdefault(space.widths(code), []).append(key)

    with tqdm(total=len(codes), initial=len(codes) - sum(map(len, groups.values())),
              desc=f"proxy {name}", unit="arch", disable=not progress) as bar:
        for widths, keys in groups.items():
            seconds = [0.0] * len(keys)
            if widths in by_widths:
                score = by_widths[widths]["score"]
            else:
                start = time.perf_counter()
                score = compute(name, widths, space, batch, seed, act, repeats)
                seconds[0] = time.perf_counter() - start
            records = [{"key": k, "code": codes[k], "score": score, "seconds": s, **setting}
                       for k, s in zip(keys, seconds)]
            append_jsonl(out_path, records)
            for rec in records:
                done[rec["key"]] = rec
            by_widths.setdefault(widths, records[0])
            bar.update(len(keys))
    return {key: done[key] for key in codes}


def to_official_json(records: Mapping[str, dict], codes: Mapping[str, str]) -> dict[str, dict]:
    """{"arch1": {"acc": score, "arch": code, "seconds": t}, ...} in the list's order."""
    out = {}
    for key, code in codes.items():
        rec = records[key]
        if rec["code"] != code:
            raise ValueError(f"key {key!r}: record is for code {rec['code']}, list gives {code}")
        out[key] = {"acc": rec["score"], "arch": code, "seconds": rec["seconds"]}
    return out


def proxy_settings(cfg: Mapping) -> dict:
    """cfg["proxies"] with resolution 0 resolved to cfg["space"]["resolution"]."""
    p = cfg["proxies"]
    resolution = int(p["resolution"]) or int(cfg["space"]["resolution"])
    settings = {"batch_size": int(p["batch_size"]), "resolution": resolution,
                "seed": int(p["seed"]), "repeats": int(p["repeats"])}
    if settings["batch_size"] < 2:
        raise ValueError("proxies.batch_size must be >= 2 (jacob_cov and naswot compare samples)")
    if settings["repeats"] < 1:
        raise ValueError("proxies.repeats must be >= 1")
    if resolution < 1:
        raise ValueError("proxies.resolution must be >= 0 (0 = space.resolution)")
    return settings


def proxy_batch(cfg: Mapping) -> Batch:
    """The one batch data-dependent proxies see: the first proxies.batch_size training images
    (unaugmented) with their labels, resized to proxies.resolution when it differs."""
    from .data import EvalSet  # data loading only for callers that score with real data
    s = proxy_settings(cfg)
    x, y = next(iter(EvalSet(dict(cfg), "train", s["batch_size"], s["batch_size"])))
    if x.shape[-1] != s["resolution"]:
        x = F.interpolate(x, size=[s["resolution"]] * 2, mode="bilinear", align_corners=False)
    return x, y

"""The convolution of training and scoring: oneDNN's kernels on the CPU (`fast`), or Paddle's stock conv2d.

Paddle's CPU conv2d runs an im2col and a small GEMM per image; the `fast` mode calls oneDNN's JIT
kernels instead (track1.network.onednn: the library inside Paddle's own wheel), forward and both gradients,
several times faster per conv on this network's shapes (benchmarks/bench_conv.py). Anything oneDNN does not
take runs stock: tensors on an accelerator (cuDNN is already fast), non-float32 tensors, every
conv when the library cannot be loaded (a warning says why, once), and the shapes on which a oneDNN
primitive failed to build or run forward (a warning per shape; one that fails in backward raises
there: its forward has run). Results equal F.conv2d's to float rounding (other summation orders).
The fast path has no double backward: what needs a Hessian-vector product (the grasp proxy) builds
its networks with `stock`.

A training step goes further (`conv_bn`, used by track1.network.layers.conv_bn_act): each conv with the
batch norm after it, its ReLU and, for the stem, the max pool, is one oneDNN node, because on this
small network the per-op cost of dynamic mode weighs as much as the arithmetic.
"""
from __future__ import annotations

import warnings

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from track1.network import onednn


MODES = ("fast", "stock")
_warned = False
_failed: set[tuple] = set()  # shapes on which oneDNN failed: Paddle's kernels run them


def _give_up(key: tuple, what: str, error: Exception) -> None:
    """Send this shape to Paddle's kernels from now on, and say so (once: later calls never get
    to oneDNN)."""
    _failed.add(key)
    warnings.warn(f"train.conv=fast: oneDNN failed on {what} ({error}); Paddle's kernels run "
                  "this shape")



class _OneDNNConv(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        plan = onednn.plan(x.shape, weight.shape, stride, padding, training=True)
        ctx.plan, ctx.need = plan, (not x.stop_gradient, not weight.stop_gradient)
        ctx.save_for_backward(x, weight)
        return plan.forward(x, weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        need_dx, need_dw = ctx.need
        dx = ctx.plan.backward_data(dy, weight) if need_dx else None
        dw = ctx.plan.backward_weights(x, dy) if need_dw else None
        return dx, dw


class RunningStats:
    """A batch norm's running statistics and how a training step updates them (running =
    momentum * running + (1 - momentum) * batch, biased variance: Paddle's rule); a plain object,
    so that the PyLayer takes it as a constant."""

    def __init__(self, mean: paddle.Tensor, variance: paddle.Tensor, momentum: float, epsilon: float):
        self.mean, self.variance = mean, variance
        self.momentum, self.epsilon = float(momentum), float(epsilon)


class _OneDNNConvBN(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, gamma, beta, stats, out_channels, stride, padding, relu, max_pool):
        plan = onednn.conv_bn_plan(x.shape, weight.shape, out_channels, stride, padding, relu,
                                   stats.epsilon, max_pool)
        y, saved = plan.forward(x, weight, gamma, beta, stats.mean, stats.variance, stats.momentum)
        ctx.plan, ctx.present = plan, [t is not None for t in saved]
        ctx.need = [not t.stop_gradient for t in (x, weight, gamma, beta)]
        ctx.save_for_backward(weight, gamma, *[t for t in saved if t is not None])
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, gamma, *kept = ctx.saved_tensor()
        kept = iter(kept)
        saved = [next(kept) if present else None for present in ctx.present]
        return ctx.plan.backward(dy, saved, weight, gamma, *ctx.need)


def conv_bn(x: paddle.Tensor, weight: paddle.Tensor, gamma: paddle.Tensor, beta: paddle.Tensor,
            stats: RunningStats, out_channels: int, stride: int, padding: int, relu: bool,
            max_pool: tuple[int, int, int] | None = None) -> paddle.Tensor | None:
    """relu?(batch_norm(conv2d(x, weight[:out_channels, :x.shape[1]]), gamma[:out_channels],
    beta[:out_channels])) with batch statistics, then F.max_pool2d(., *max_pool) if given, for a
    training step: one oneDNN pass (forward, and one backward node), the intermediate maps kept in
    oneDNN's layout, the leading running statistics updated in place. Differentiable in x, weight,
    gamma and beta (a paddle.grad through it asks for all of them that need one, as with conv2d);
    the caller checks `fuses(x)` first (track1.network.layers.conv_bn_act). None, with nothing
    updated, where oneDNN fails on this shape (said once): the caller runs the layers one by one."""
    if _failed and _conv_bn_key(x, weight, out_channels, stride, padding, relu, stats,
                                max_pool) in _failed:
        return None
    try:
        return _OneDNNConvBN.apply(x, weight, gamma, beta, stats, out_channels, stride, padding,
                                   relu, max_pool)
    except onednn.OneDNNError as e:
        _give_up(_conv_bn_key(x, weight, out_channels, stride, padding, relu, stats, max_pool),
                 f"conv + batch norm of a {list(x.shape)} input by the leading {out_channels} filters "
                 f"of a {list(weight.shape)} weight, stride {stride}, padding {padding}, relu {relu}, "
                 f"max pool {max_pool}", e)
        return None


def _conv_bn_key(x, weight, out_channels, stride, padding, relu, stats, max_pool) -> tuple:
    return ("conv_bn", *x.shape, *weight.shape, out_channels, stride, padding, relu, stats.epsilon,
            max_pool and tuple(max_pool))


def fuses(x: paddle.Tensor) -> bool:
    """Whether conv_bn can take this input now: gradients on (the fused node is a training
    step's) and a tensor oneDNN runs."""
    return paddle.is_grad_enabled() and uses_onednn(x)


def uses_onednn(x: paddle.Tensor) -> bool:
    """Whether the fast mode runs this input through oneDNN."""
    global _warned
    if not x.place.is_cpu_place() or x.dtype != paddle.float32:
        return False
    if onednn.available():
        return True
    if not _warned:
        _warned = True
        warnings.warn(f"train.conv=fast: oneDNN unavailable ({onednn.why_unavailable()}); "
                      "using Paddle's stock conv2d")
    return False


def conv2d(x: paddle.Tensor, weight: paddle.Tensor, stride: int = 1, padding: int = 0,
           mode: str = "fast") -> paddle.Tensor:
    """F.conv2d(x, weight, stride=stride, padding=padding) (NCHW, no bias, square kernel), through
    oneDNN when mode is 'fast' and the input allows it; differentiable in x and weight.

    A paddle.grad through the fast path must ask for the gradient of every tensor upstream that
    requires one (weights included): Paddle's PyLayer node cannot tell which of its inputs a
    pruned paddle.grad skips, and refuses the gradient it returns for them.
    """
    if mode not in MODES:
        raise ValueError(f"unknown conv mode {mode!r}: expected one of {', '.join(MODES)}")
    if (mode == "stock" or not uses_onednn(x)
            or (_failed and _conv_key(x, weight, stride, padding) in _failed)):
        return F.conv2d(x, weight, stride=stride, padding=padding)
    try:
        if not paddle.is_grad_enabled() or (x.stop_gradient and weight.stop_gradient):
            # Inference: oneDNN's forward-inference primitive, no autograd node.
            return onednn.plan(x.shape, weight.shape, stride, padding, training=False).forward(x, weight)
        return _OneDNNConv.apply(x, weight, stride, padding)
    except onednn.OneDNNError as e:
        _give_up(_conv_key(x, weight, stride, padding), f"conv2d of a {list(x.shape)} input by a "
                 f"{list(weight.shape)} weight, stride {stride}, padding {padding}", e)
    return F.conv2d(x, weight, stride=stride, padding=padding)


def _conv_key(x, weight, stride, padding) -> tuple:
    return ("conv2d", *x.shape, *weight.shape, stride, padding)


class Conv2D(nn.Conv2D):
    """A bias-free nn.Conv2D (same parameter name, shape and initialisation) whose forward is
    conv2d(..., mode): state dicts and seeds carry over between the two modes unchanged.
    paddle.flops matches layers by exact type: pass it custom_ops={Conv2D: count_convNd}
    (paddle.hapi.dynamic_flops) to count these."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, mode: str = "stock"):
        if mode not in MODES:
            raise ValueError(f"unknown conv mode {mode!r}: expected one of {', '.join(MODES)}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias_attr=False)
        self.mode, self.square_stride, self.square_padding = mode, stride, padding

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return conv2d(x, self.weight, self.square_stride, self.square_padding, self.mode)

"""Dynamic supernet layers: max-width weights of which a subnet uses the leading channels."""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.network.conv import MODES, RunningStats, conv2d, conv_bn, fuses


def leading(t: paddle.Tensor, sizes: tuple[int, ...]) -> paddle.Tensor:
    """t[:sizes[0], :sizes[1], ...], differentiable, through paddle.split (forward: a copy or view).

    The backward of split is a concat (plus zero blocks for the unused parts), which is much
    cheaper on CPU than the backward of slicing (t[:a, :b] / paddle.slice / strided_slice: a zero
    tensor of the full shape plus a strided or Eigen-padded copy). Axes whose size is already
    full are left alone (no op at all). Double backward works too.
    """
    shape = t.shape
    for axis, n in enumerate(sizes):
        full = shape[axis]
        if n < full:
            t = paddle.split(t, [n, full - n], axis=axis)[0]
        elif n > full:
            raise ValueError(f"leading slice of size {n} on axis {axis} of a tensor of shape {shape}")
    return t


class DynamicConv2D(nn.Layer):
    """A bias-free conv whose subnet uses weight[:out, :in] (input channels come from the input);
    `conv` picks track1.network.conv's implementation (fast | stock)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, conv: str = "stock"):
        super().__init__()
        if conv not in MODES:
            raise ValueError(f"unknown conv mode {conv!r}: expected one of {', '.join(MODES)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.conv = stride, padding, conv
        self.weight = self.create_parameter(
            [out_channels, in_channels, kernel_size, kernel_size],
            default_initializer=nn.initializer.KaimingNormal())

    def forward(self, x: paddle.Tensor, out_channels: int) -> paddle.Tensor:
        in_channels = x.shape[1]
        weight = leading(self.weight, (out_channels, in_channels))
        return conv2d(x, weight, self.stride, self.padding, self.conv)


def conv_bn_act(conv: nn.Layer, bn: nn.Layer, x: paddle.Tensor, relu: bool,
                out_channels: int | None = None, fuse: bool = False,
                max_pool: tuple[int, int, int] | None = None, norm=None) -> paddle.Tensor:
    """relu?(bn(conv(x))), then F.max_pool2d(., *max_pool) if given (the stem), of a DynamicConv2D
    + DynamicBatchNorm2D (out_channels: the subnet's width) or of a track1.network.conv.Conv2D +
    nn.BatchNorm2D (a static network). With `fuse`, in a training-mode, fast-conv step on the CPU,
    it is one oneDNN node (track1.network.conv.conv_bn), which the layers' own forward (and their
    hooks) never see; anywhere else, with another normalisation layer, or on a shape where oneDNN's
    fused primitives fail, the layers run one by one.
    `norm(bn, y)`, if given, normalises in place of the BN layer's forward (tree scoring's per-image-
    group statistics, track1.ranking.tree); the layer's parameters are still its own."""
    if isinstance(conv, DynamicConv2D):
        if norm is None and fuse and conv.conv == "fast" and bn.training and not bn.frozen and fuses(x):
            stats = RunningStats(bn._mean, bn._variance, bn.momentum, bn.epsilon)
            y = conv_bn(x, conv.weight, bn.weight, bn.bias, stats, out_channels, conv.stride,
                        conv.padding, relu, max_pool)
            if y is not None:
                return y
        y = conv(x, out_channels)
    else:
        if (norm is None and fuse and conv.mode == "fast" and isinstance(bn, nn.BatchNorm2D) and bn.training
                and bn._data_format == "NCHW" and not bn._use_global_stats and fuses(x)):
            stats = RunningStats(bn._mean, bn._variance, bn._momentum, bn._epsilon)
            y = conv_bn(x, conv.weight, bn.weight, bn.bias, stats, conv.weight.shape[0],
                        conv.square_stride, conv.square_padding, relu, max_pool)
            if y is not None:
                return y
        y = conv(x)
    y = bn(y) if norm is None else norm(bn, y)
    y = F.relu(y) if relu else y
    return F.max_pool2d(y, *max_pool) if max_pool else y


BN_STATS = ("batch", "frozen")


class DynamicBatchNorm2D(nn.Layer):
    """BatchNorm over the leading channels; running statistics of those channels only are updated.

    `momentum` is an attribute (not a constant) so that BN re-calibration can turn the running
    statistics into an exact cumulative average by setting it per batch. With `frozen` set
    (train.bn_stats: frozen, set_bn_stats) a training-mode forward normalises with the leading
    running statistics and leaves them as they are, as the RD-NAS authors' SuperBatchNorm2D once its
    first call, in eval mode, fixed `_use_global_stats`; gamma and beta still get gradients.
    """

    def __init__(self, num_features: int, momentum: float = 0.9, epsilon: float = 1e-5):
        super().__init__()
        self.num_features, self.momentum, self.epsilon = num_features, momentum, epsilon
        self.frozen = False
        self.weight = self.create_parameter(
            [num_features], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([num_features], is_bias=True)
        self.register_buffer("_mean", paddle.zeros([num_features]))
        self.register_buffer("_variance", paddle.ones([num_features]))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        c = x.shape[1]
        if self.training and self.frozen:
            # Paddle's batch_norm in training mode with use_global_stats: the authors' op attributes
            return F.batch_norm(x, self._mean[:c], self._variance[:c], leading(self.weight, (c,)),
                                leading(self.bias, (c,)), training=True, momentum=self.momentum,
                                epsilon=self.epsilon, use_global_stats=True)
        if c == self.num_features:
            return F.batch_norm(x, self._mean, self._variance, self.weight, self.bias,
                                training=self.training, momentum=self.momentum,
                                epsilon=self.epsilon)
        # batch_norm updates mean/var in place; with Paddle's stride kernel (the default) these
        # leading slices are views, so the update lands in the buffers. Without it
        # (FLAGS_use_stride_kernel=0) slices are copies: write the update back explicitly.
        mean, var = self._mean[:c], self._variance[:c]
        out = F.batch_norm(x, mean, var, leading(self.weight, (c,)), leading(self.bias, (c,)),
                           training=self.training, momentum=self.momentum, epsilon=self.epsilon)
        if self.training and not mean._is_shared_buffer_with(self._mean):
            with paddle.no_grad():
                self._mean[:c] = mean
                self._variance[:c] = var
        return out


def set_bn_stats(model: nn.Layer, mode: str) -> None:
    """Every DynamicBatchNorm2D of model normalises a training step with the batch's statistics
    (batch) or with its running statistics, kept fixed (frozen)."""
    if mode not in BN_STATS:
        raise ValueError(f"unknown BN statistics {mode!r}: expected one of {', '.join(BN_STATS)}")
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, DynamicBatchNorm2D):
            layer.frozen = mode == "frozen"


class DynamicLinear(nn.Layer):
    """A linear classifier that reads the leading in-features of its [in, out] weight."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        # Same default initialisers as nn.Linear (Xavier weight, zero bias).
        self.weight = self.create_parameter([in_features, out_features])
        self.bias = self.create_parameter([out_features], is_bias=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        c = x.shape[1]
        weight = leading(self.weight, (c,))
        return F.linear(x, weight, self.bias)


ACTIVATIONS = ("relu", "prelu", "mish")


def make_activation(name: str) -> nn.Layer:
    """The outer (after the residual add) activation of a block; inner activations stay ReLU."""
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(num_parameters=1, init=0.25)
    if name == "mish":
        return nn.Mish()
    raise ValueError(f"unknown activation {name!r}: expected relu, prelu or mish")

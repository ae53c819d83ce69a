"""Dynamic supernet layers: max-width weights of which a subnet uses the leading channels."""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class DynamicConv2D(nn.Layer):
    """A bias-free conv whose subnet uses weight[:out, :in] (input channels come from the input)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding = stride, padding
        self.weight = self.create_parameter(
            [out_channels, in_channels, kernel_size, kernel_size],
            default_initializer=nn.initializer.KaimingNormal())

    def forward(self, x: paddle.Tensor, out_channels: int) -> paddle.Tensor:
        in_channels = x.shape[1]
        weight = self.weight
        # Slicing costs a scatter in backward, so skip it when the full weight is used.
        if out_channels != self.out_channels or in_channels != self.in_channels:
            weight = weight[:out_channels, :in_channels]
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)


class DynamicBatchNorm2D(nn.Layer):
    """BatchNorm over the leading channels; running statistics update in place through the slice.

    `momentum` is an attribute (not a constant) so that BN re-calibration can turn the running
    statistics into an exact cumulative average by setting it per batch.
    """

    def __init__(self, num_features: int, momentum: float = 0.9, epsilon: float = 1e-5):
        super().__init__()
        self.num_features, self.momentum, self.epsilon = num_features, momentum, epsilon
        self.weight = self.create_parameter(
            [num_features], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([num_features], is_bias=True)
        self.register_buffer("_mean", paddle.zeros([num_features]))
        self.register_buffer("_variance", paddle.ones([num_features]))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        c = x.shape[1]
        params = (self._mean, self._variance, self.weight, self.bias)
        if c != self.num_features:
            params = tuple(p[:c] for p in params)
        mean, var, weight, bias = params
        return F.batch_norm(x, mean, var, weight, bias, training=self.training,
                            momentum=self.momentum, epsilon=self.epsilon)


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
        weight = self.weight if c == self.in_features else self.weight[:c]
        return F.linear(x, weight, self.bias)


def make_activation(name: str) -> nn.Layer:
    """The outer (after the residual add) activation of a block; inner activations stay ReLU."""
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(num_parameters=1, init=0.25)
    if name == "mish":
        return nn.Mish()
    raise ValueError(f"unknown activation {name!r}: expected relu, prelu or mish")

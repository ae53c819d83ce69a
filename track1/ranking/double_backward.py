"""Paddle 3.3.1 double-backward workarounds for grasp: the ResNet forward from twice-differentiable ops.

Paddle (CPU) has no second-order kernel for mean_all (F.cross_entropy's mean), log_softmax, flatten,
max pool, strided slices, max-reduction, PReLU or Mish, and batch_norm's is far slower than the
same maths from elementwise ops; `grasp_logits` rebuilds the forward from ops that work. Each piece
is checked against finite differences in float64 (tests/ranking/test_proxies.py).
"""
from __future__ import annotations

from typing import Callable

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.network.resnet import ResNet
from track1.space import STEM_POOL


def replace_layers(net: nn.Layer, kind: type, make: Callable[[nn.Layer], nn.Layer]) -> None:
    """Swap every sublayer of type kind for make(it) (the networks scored here are private copies)."""
    for layer in net.sublayers(include_self=True):
        for name, child in list(layer.named_children()):
            if isinstance(child, kind):
                setattr(layer, name, make(child))


def remove_batchnorm(net: nn.Layer) -> None:
    replace_layers(net, nn.BatchNorm2D, lambda bn: nn.Identity())


def ce_double_backward(logits: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
    """F.cross_entropy (mean) from ops with second derivatives (log_softmax and mean_all have none)."""
    z = logits - logits.max(axis=1, keepdim=True).detach()  # a constant shift: value and derivatives unchanged
    log_p = z - paddle.log(paddle.exp(z).sum(axis=1, keepdim=True))
    onehot = F.one_hot(y.reshape([-1]), logits.shape[1]).astype(logits.dtype)
    return -(log_p * onehot).sum() / logits.shape[0]


def _max_pool_double_backward(x: paddle.Tensor, pool: tuple[int, int, int]) -> paddle.Tensor:
    """F.max_pool2d(x, *pool) as a gather at the argmax, which take_along_axis can differentiate
    twice."""
    _, idx = F.max_pool2d(x, *pool, return_mask=True)
    n, c, h, w = x.shape
    flat = x.reshape([n, c, h * w])
    out = paddle.take_along_axis(flat, idx.reshape([n, c, -1]).astype("int64"), axis=2)
    return out.reshape(idx.shape)


class _BatchNormDoubleBackward(nn.Layer):
    """Train-mode BN from elementwise ops and means, sharing the original scale and shift.

    Paddle's batch_norm double-grad kernel is correct but far slower on CPU than this; running
    statistics are not needed by grasp.
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


def grasp_logits(net: nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """ResNet.forward with every op replaced by one that Paddle can differentiate twice."""
    if not isinstance(net, ResNet):
        return net(x)  # a hand-made test network: let Paddle report any op it cannot handle
    replace_layers(net, nn.BatchNorm2D, _BatchNormDoubleBackward)
    replace_layers(net, nn.PReLU, _PReLUDoubleBackward)
    replace_layers(net, nn.Mish, lambda m: _MishDoubleBackward())
    x = _max_pool_double_backward(F.relu(net.stem_bn(net.stem_conv(x))), STEM_POOL)
    for stage in net.stages:
        for block in stage:
            x = block(x)
    x = net.avgpool(x)
    return net.fc(x.reshape([x.shape[0], -1]))  # reshape, not flatten: flatten_grad has no grad

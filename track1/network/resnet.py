"""The plain ResNet of one subnet (paddle.nn layers): what the supernet exports and stand-alone training trains."""
from __future__ import annotations

import paddle
import paddle.nn as nn

from track1.network.conv import Conv2D
from track1.network.layers import conv_bn_act, make_activation
from track1.space import STEM_POOL, Block, SearchSpace, Widths, block_plan


class BasicBlock(nn.Layer):
    """A plain BasicBlock; any well-formed code builds (a projection wherever block_plan says)."""

    def __init__(self, b: Block, act: str, conv: str = "stock", fuse_bn: bool = False):
        super().__init__()
        self.fuse_bn = fuse_bn
        self.conv1 = Conv2D(b.c_in, b.mid, 3, b.stride, 1, conv)
        self.bn1 = nn.BatchNorm2D(b.mid)
        self.conv2 = Conv2D(b.mid, b.c_out, 3, 1, 1, conv)
        self.bn2 = nn.BatchNorm2D(b.c_out)
        self.projection = b.projection
        if b.projection:
            self.shortcut_conv = Conv2D(b.c_in, b.c_out, 1, b.stride, 0, conv)
            self.shortcut_bn = nn.BatchNorm2D(b.c_out)
        self.act = make_activation(act)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = conv_bn_act(self.conv1, self.bn1, x, True, fuse=self.fuse_bn)
        y = conv_bn_act(self.conv2, self.bn2, y, False, fuse=self.fuse_bn)
        if self.projection:
            x = conv_bn_act(self.shortcut_conv, self.shortcut_bn, x, False, fuse=self.fuse_bn)
        return self.act(y + x)


class ResNet(nn.Layer):
    """The plain network of one subnet: paddle.nn layers, and nn.Conv2D subclasses whose forward
    is track1.network.conv's `conv` implementation (fast | stock); `fuse_bn` as in SuperNet."""

    def __init__(self, widths: Widths, space: SearchSpace, act: str = "relu", conv: str = "stock",
                 fuse_bn: bool = False):
        super().__init__()
        self.widths, self.fuse_bn = widths, fuse_bn
        self.stem_conv = Conv2D(space.in_channels, widths.stem, 7, 2, 3, conv)
        self.stem_bn = nn.BatchNorm2D(widths.stem)
        self.stages = nn.LayerList([nn.LayerList() for _ in widths.blocks])
        for b in block_plan(widths):
            self.stages[b.stage].append(BasicBlock(b, act, conv, fuse_bn))
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(widths.out_channels, space.num_classes)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = conv_bn_act(self.stem_conv, self.stem_bn, x, True, fuse=self.fuse_bn, max_pool=STEM_POOL)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.fc(self.avgpool(x).flatten(1))

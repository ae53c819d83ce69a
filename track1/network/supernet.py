"""The ResNet48 supernet over max-width weights, and export of a subnet as a plain network."""
from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.network.layers import (DynamicBatchNorm2D, DynamicConv2D, DynamicLinear, conv_bn_act,
                                   make_activation)
from track1.network.resnet import ResNet
from track1.space import STEM_POOL, Block, CodeError, SearchSpace, Widths, block_plan, layer_sequence


# The supernet and the static network use the same parameter names (stem_conv, stages.S.B.conv1,
# ...), so exporting a subnet is a leading slice of every same-named tensor.


class DynamicBlock(nn.Layer):
    """A BasicBlock over max widths. Only the blocks whose shortcut the official sub-space always
    projects (the first of stages 2-4) own a projection; every other block adds the identity."""

    def __init__(self, b: Block, act: str, conv: str = "stock", fuse_bn: bool = False):
        super().__init__()
        self.stride, self.projection, self.fuse_bn = b.stride, b.projection, fuse_bn
        self.conv1 = DynamicConv2D(b.c_in, b.mid, 3, b.stride, 1, conv)
        self.bn1 = DynamicBatchNorm2D(b.mid)
        self.conv2, self.bn2 = DynamicConv2D(b.mid, b.c_out, 3, 1, 1, conv), DynamicBatchNorm2D(b.c_out)
        if b.projection:
            self.shortcut_conv = DynamicConv2D(b.c_in, b.c_out, 1, b.stride, 0, conv)
            self.shortcut_bn = DynamicBatchNorm2D(b.c_out)
        self.act = make_activation(act)

    def forward(self, x: paddle.Tensor, mid: int, c_out: int, norm=None) -> paddle.Tensor:
        """`norm` replaces the BN layers' own forward (track1.network.layers.conv_bn_act)."""
        y = conv_bn_act(self.conv1, self.bn1, x, True, mid, self.fuse_bn, norm=norm)
        y = conv_bn_act(self.conv2, self.bn2, y, False, c_out, self.fuse_bn, norm=norm)
        if self.projection:
            x = conv_bn_act(self.shortcut_conv, self.shortcut_bn, x, False, c_out, self.fuse_bn, norm=norm)
        elif x.shape[1] != c_out:
            raise CodeError(f"a block of {x.shape[1]} -> {c_out} channels needs a projection the "
                            f"supernet does not hold: the subnet is outside the official sub-space")
        return self.act(y + x)


class SuperNet(nn.Layer):
    """Max-width weights; forward(x, widths) runs the subnet those widths describe. `conv` is the
    convolution implementation (track1.network.conv: fast | stock), also that of exported networks;
    `fuse_bn` runs each conv + BN (+ ReLU) of a fast-conv training step as one node
    (track1.network.layers.conv_bn_act: the conv layers' forward hooks then do not fire)."""

    def __init__(self, space: SearchSpace, act: str = "relu", conv: str = "stock", fuse_bn: bool = False):
        super().__init__()
        self.space, self.act_name, self.conv, self.fuse_bn = space, act, conv, fuse_bn
        self.max_widths = space.max_widths
        w = self.max_widths
        self.stem_conv = DynamicConv2D(space.in_channels, w.stem, 7, 2, 3, conv)
        self.stem_bn = DynamicBatchNorm2D(w.stem)
        self.stages = nn.LayerList([nn.LayerList() for _ in w.blocks])
        for b in block_plan(w):  # the largest subnet is official: projections where it has them
            self.stages[b.stage].append(DynamicBlock(b, act, conv, fuse_bn))
        self.fc = DynamicLinear(w.out_channels, space.num_classes)

    def forward(self, x: paddle.Tensor, widths: Widths | Sequence[Widths]):
        """Logits of one subnet, or a list of logits for a list of subnets on the same input.

        Several subnets in one call let paddle.DataParallel see a single forward per backward.
        """
        if not isinstance(widths, Widths):
            return [self.forward(x, w) for w in widths]
        for layer in layer_sequence(widths):
            x = self.run_layer(layer, x)
        return self.head(x)

    # The subnet layer by layer (space.layer_sequence), for scoring engines that share layers
    # between subnets (track1.ranking.tree); forward is these calls in order.
    def run_layer(self, layer: tuple, x: paddle.Tensor, norm=None) -> paddle.Tensor:
        """One layer of layer_sequence: the stem ("stem", width) or a block (stage, index, mid, out).
        `norm` replaces the BN layers' own forward (track1.network.layers.conv_bn_act)."""
        if layer[0] == "stem":
            return conv_bn_act(self.stem_conv, self.stem_bn, x, True, layer[1], self.fuse_bn, STEM_POOL,
                               norm=norm)
        stage, index, mid, out = layer
        return self.stages[stage][index](x, mid, out, norm)

    def head(self, x: paddle.Tensor) -> paddle.Tensor:
        """Logits from the last block's output: global average pool, then the classifier."""
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def parts_of(self, widths_list: Sequence[Widths]) -> list[tuple["SuperNet", list[Widths]]]:
        """(supernet, subnets) pairs to score, one for each set of weights (a few-shot supernet has
        one per group: track1.network.fewshot); here the one."""
        return [(self, list(widths_list))]

    def bn_layers(self) -> list[DynamicBatchNorm2D]:
        return [m for m in self.sublayers() if isinstance(m, DynamicBatchNorm2D)]

    def export(self, widths: Widths) -> "ResNet":
        """A plain paddle.nn network of these widths carrying the supernet's (sliced) weights."""
        net = ResNet(widths, self.space, self.act_name, self.conv, self.fuse_bn)
        own = self.state_dict()
        state = {}
        for name, target in net.state_dict().items():
            if name not in own:  # a projection the official sub-space never has
                raise CodeError(f"cannot export: {name} is outside the official sub-space")
            source = own[name]
            slices = tuple(slice(0, n) for n in target.shape)
            state[name] = source[slices] if slices else source
        net.set_state_dict(state)
        return net

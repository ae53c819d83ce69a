"""Networks from a config: the supernet, and the plain ResNet of one code, each seeded and named so that
its parameters and optimizer state are the same in every process."""
from __future__ import annotations

import paddle

from track1.network.fewshot import FewShotSupernet
from track1.network.resnet import BasicBlock, ResNet
from track1.network.supernet import DynamicBlock, SuperNet
from track1.space import SearchSpace, Widths
from track1.space.split import Split


def zero_residual_branches(net: paddle.nn.Layer) -> None:
    """Zero the last BN scale of every block, so each block starts as its shortcut: deep
    networks then train from the first step like shallow ones (Goyal et al., BigNAS)."""
    for layer in net.sublayers():
        if isinstance(layer, (DynamicBlock, BasicBlock)):
            layer.bn2.weight.set_value(paddle.zeros_like(layer.bn2.weight))


def build_supernet(cfg: dict) -> tuple[SearchSpace, SuperNet]:
    """The supernet, initialised from the run seed. The name guard gives the parameters the same
    global names in every process, which the optimizer state is keyed by."""
    space = SearchSpace.from_config(cfg)
    paddle.seed(cfg["run"]["seed"])
    with paddle.utils.unique_name.guard():
        model = SuperNet(space, act=cfg["space"]["act"], conv=cfg["train"]["conv"], fuse_bn=True)
    if cfg["train"]["zero_init_residual"]:
        zero_residual_branches(model)
    return space, model


def build_fewshot(cfg: dict, split: Split) -> tuple[SearchSpace, FewShotSupernet]:
    """A few-shot supernet of the split, its sub-supernets initialised as build_supernet's (a split
    step then sets them from its parent's weights)."""
    space = SearchSpace.from_config(cfg)
    paddle.seed(cfg["run"]["seed"])
    with paddle.utils.unique_name.guard():
        model = FewShotSupernet(space, split, act=cfg["space"]["act"], conv=cfg["train"]["conv"], fuse_bn=True)
    return space, model


def build_resnet(cfg: dict, widths: Widths, seed: int, zero_init_residual: bool) -> ResNet:
    """The plain network of these widths, initialised from seed (fresh parameter names every call)."""
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        net = ResNet(widths, SearchSpace.from_config(cfg), cfg["space"]["act"], cfg["train"]["conv"],
                     fuse_bn=True)
    if zero_init_residual:
        zero_residual_branches(net)
    return net

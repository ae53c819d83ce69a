import numpy as np
import paddle
import pytest

from track1.space import SearchSpace, parse
from track1.network.resnet import ResNet
from track1.network.build import zero_residual_branches
from track1.network.supernet import SuperNet

SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)


def _archs():
    rng = np.random.default_rng(3)
    return [SPACE.largest(), SPACE.smallest(), SPACE.sample(rng), SPACE.sample(rng)]


@pytest.mark.parametrize("act", ["relu", "prelu", "mish"])
def test_subnet_equals_exported_static_network(act):
    paddle.seed(0)
    net = SuperNet(SPACE, act=act)
    x = paddle.randn([4, 3, 32, 32])
    for arch in _archs():
        widths = SPACE.widths(arch)
        static = net.export(widths)
        assert isinstance(static, ResNet)
        net.eval(), static.eval()
        np.testing.assert_allclose(net(x, widths).numpy(), static(x).numpy(), atol=1e-5)
        # In train mode both use batch statistics and update their running statistics alike.
        net.train(), static.train()
        np.testing.assert_allclose(net(x, widths).numpy(), static(x).numpy(), atol=1e-5)
        c = widths.stem
        np.testing.assert_allclose(net.stem_bn._mean.numpy()[:c], static.stem_bn._mean.numpy(), atol=1e-6)


def test_export_is_a_standalone_copy():
    paddle.seed(0)
    net = SuperNet(SPACE)
    widths = SPACE.widths(parse("1252233313000000223212122253130000000000006515000000"))
    static = net.export(widths)
    shapes = {k: list(v.shape) for k, v in static.state_dict().items()}
    assert shapes["stem_conv.weight"] == [7, 3, 7, 7]  # 56 * 0.125
    assert shapes["stages.3.0.conv1.weight"] == [48, 29, 3, 3]  # 384 * 0.125 from 232 * 0.125
    assert "stages.1.0.shortcut_conv.weight" in shapes  # stride 2 needs a projection
    assert "stages.0.0.shortcut_conv.weight" not in shapes  # 7 -> 7 at stride 1: identity
    before = net.stem_conv.weight.numpy().copy()
    static.stem_conv.weight.set_value(paddle.zeros_like(static.stem_conv.weight))
    np.testing.assert_array_equal(net.stem_conv.weight.numpy(), before)


def test_gradients_reach_only_the_used_slice():
    paddle.seed(0)
    net = SuperNet(SPACE)
    widths = SPACE.widths(SPACE.smallest())
    net(paddle.randn([2, 3, 32, 32]), widths).sum().backward()
    g = net.stem_conv.weight.grad.numpy()
    assert np.abs(g[: widths.stem]).sum() > 0 and np.abs(g[widths.stem:]).sum() == 0
    assert net.stages[2][7].conv1.weight.grad is None or not net.stages[2][7].conv1.weight.grad.numpy().any()


def test_zero_init_residual_makes_every_block_its_shortcut():
    paddle.seed(0)
    net = SuperNet(SPACE)
    zero_residual_branches(net)
    assert all(not b.bn2.weight.numpy().any() for stage in net.stages for b in stage)
    assert net.stem_bn.weight.numpy().all()  # other BN scales keep their 1.0
    # A stride-1 block whose input and output widths agree is then act(identity) = relu(x).
    block, x = net.stages[0][1], paddle.rand([2, 8, 8, 8])
    block.eval()
    np.testing.assert_allclose(block(x, 8, 8).numpy(), x.numpy(), atol=1e-6)

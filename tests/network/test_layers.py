"""The dynamic layers: leading-slice semantics, gradients, BN statistics, supernet == static net."""
import contextlib
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
import pytest  # noqa: E402

from conftest import onednn_fails_for  # noqa: E402

from track1.network import conv as conv_module, onednn  # noqa: E402
from track1.network.layers import (DynamicBatchNorm2D, DynamicConv2D, DynamicLinear, conv_bn_act,  # noqa: E402
                           leading, set_bn_stats)
from track1.space import SearchSpace  # noqa: E402
from track1.network.supernet import SuperNet  # noqa: E402

SPACE = SearchSpace(width_mult=0.25, resolution=32, num_classes=10)


@contextlib.contextmanager
def stride_kernel(on: bool):
    """FLAGS_use_stride_kernel=0 makes slices copies: the BN statistics must still update."""
    old = paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"]
    paddle.set_flags({"FLAGS_use_stride_kernel": on})
    try:
        yield
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": old})


def _rand(*shape, seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal(shape).astype("float32"))


def test_leading_is_the_leading_slice():
    t = _rand(6, 5, 3, 3)
    for sizes in [(6, 5), (4, 5), (6, 2), (3, 1), (1,), (2, 5, 3, 1)]:
        expect = t.numpy()[tuple(slice(0, n) for n in sizes)]
        np.testing.assert_array_equal(leading(t, sizes).numpy(), expect)


@pytest.mark.parametrize("out_c,in_c,stride,padding", [(8, 6, 1, 1), (5, 3, 2, 1), (8, 6, 2, 0), (3, 2, 1, 1)])
def test_conv_equals_conv2d_with_sliced_weight(out_c, in_c, stride, padding):
    paddle.seed(0)
    k = 3 if padding else 1
    conv = DynamicConv2D(6, 8, k, stride, padding)
    x = _rand(2, in_c, 7, 7)
    expect = F.conv2d(x, paddle.to_tensor(conv.weight.numpy()[:out_c, :in_c]), stride=stride,
                      padding=padding)
    got = conv(x, out_c)
    assert got.shape == [2, out_c] + expect.shape[2:]
    np.testing.assert_allclose(got.numpy(), expect.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride_on", [True, False])
def test_conv_gradient_lands_only_in_used_slice(stride_on):
    with stride_kernel(stride_on):
        paddle.seed(0)
        conv = DynamicConv2D(6, 8, 3, 1, 1)
        x = _rand(2, 4, 5, 5)
        x.stop_gradient = False
        conv(x, 5).sum().backward()
        # Reference gradient: the same conv on a standalone copy of the used slice.
        w = paddle.to_tensor(conv.weight.numpy()[:5, :4], stop_gradient=False)
        x2 = paddle.to_tensor(x.numpy(), stop_gradient=False)
        F.conv2d(x2, w, padding=1).sum().backward()
        grad = conv.weight.grad.numpy()
        assert grad.shape == (8, 6, 3, 3)
        np.testing.assert_allclose(grad[:5, :4], w.grad.numpy(), rtol=1e-5, atol=1e-5)
        assert np.all(grad[5:] == 0) and np.all(grad[:, 4:] == 0)
        assert np.abs(grad[:5, :4]).sum() > 0
        np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_full_width_conv_has_full_gradient():
    conv = DynamicConv2D(3, 4, 3, 1, 1)
    conv(_rand(2, 3, 5, 5), 4).sum().backward()
    assert conv.weight.grad.shape == [4, 3, 3, 3] and np.all(conv.weight.grad.numpy() != 0)


def test_linear_uses_leading_in_features_and_grads_only_there():
    paddle.seed(0)
    fc = DynamicLinear(8, 3)
    x = _rand(4, 5)
    y = fc(x)
    np.testing.assert_allclose(y.numpy(), x.numpy() @ fc.weight.numpy()[:5] + fc.bias.numpy(),
                               rtol=1e-5, atol=1e-6)
    y.sum().backward()
    grad = fc.weight.grad.numpy()
    np.testing.assert_allclose(grad[:5], np.repeat(x.numpy().sum(0)[:, None], 3, 1), rtol=1e-5)
    assert np.all(grad[5:] == 0)


def _bn_pair(c_max, c, momentum):
    """A DynamicBatchNorm2D of c_max features with non-trivial state, and an nn.BatchNorm2D(c)
    holding the leading c channels of that state."""
    rng = np.random.default_rng(1)
    dyn = DynamicBatchNorm2D(c_max)
    for name in ("weight", "bias", "_mean"):
        getattr(dyn, name).set_value(rng.standard_normal(c_max).astype("float32"))
    dyn._variance.set_value(rng.uniform(0.5, 2, c_max).astype("float32"))
    dyn.momentum = momentum
    ref = nn.BatchNorm2D(c, momentum=momentum)
    ref.set_state_dict({k: paddle.to_tensor(v.numpy()[:c]) for k, v in dyn.state_dict().items()})
    return dyn, ref


@pytest.mark.parametrize("stride_on", [True, False])
@pytest.mark.parametrize("c", [5, 8])
def test_bn_train_updates_only_leading_channels_like_batchnorm2d(stride_on, c):
    with stride_kernel(stride_on):
        dyn, ref = _bn_pair(8, c, momentum=0.7)
        before = {k: v.numpy().copy() for k, v in dyn.state_dict().items()}
        dyn.train(), ref.train()
        x = _rand(4, c, 3, 3, seed=2) * 3 + 1
        x.stop_gradient = False
        x_ref = paddle.to_tensor(x.numpy(), stop_gradient=False)
        out, out_ref = dyn(x), ref(x_ref)
        np.testing.assert_allclose(out.numpy(), out_ref.numpy(), rtol=1e-5, atol=1e-5)
        for name in ("_mean", "_variance"):
            got = getattr(dyn, name).numpy()
            np.testing.assert_allclose(got[:c], getattr(ref, name).numpy(), rtol=1e-6, atol=1e-6)
            assert not np.allclose(got[:c], before[name][:c])  # it did move
            np.testing.assert_array_equal(got[c:], before[name][c:])  # unused channels untouched
        # Paddle keeps the biased batch variance: running = m * running + (1 - m) * var.
        xb = x.numpy()
        np.testing.assert_allclose(dyn._variance.numpy()[:c],
                                   0.7 * before["_variance"][:c] + 0.3 * xb.var(axis=(0, 2, 3)),
                                   rtol=1e-5)
        (out * _rand(*out.shape, seed=3)).sum().backward()
        (out_ref * _rand(*out.shape, seed=3)).sum().backward()
        for name in ("weight", "bias"):
            g = getattr(dyn, name).grad.numpy()
            np.testing.assert_allclose(g[:c], getattr(ref, name).grad.numpy(), rtol=1e-5, atol=1e-5)
            assert np.all(g[c:] == 0)
        np.testing.assert_allclose(x.grad.numpy(), x_ref.grad.numpy(), rtol=1e-5, atol=1e-5)


def _conv_bn_run(mode, x_np, full, o, k_s_p, relu, x_grad, max_pool, steps=2, fuse=True):
    """Two training steps of relu?(bn(conv(x, o))) on one (seeded) conv + BN pair with sliced
    widths: outputs, then every gradient (accumulated over the steps) and running statistic."""
    k, s, p = k_s_p
    paddle.seed(7)
    conv, bn = DynamicConv2D(full[1], full[0], k, s, p, mode), DynamicBatchNorm2D(full[0], momentum=0.7)
    with paddle.no_grad():  # not 1 and 0: the scale and shift must reach the maths
        bn.weight.set_value(_rand(full[0], seed=8) * 0.5 + 1)
        bn.bias.set_value(_rand(full[0], seed=9))
        bn._mean.set_value(_rand(full[0], seed=10))
    x = paddle.to_tensor(x_np, stop_gradient=not x_grad)
    got = []
    for step in range(steps):
        y = conv_bn_act(conv, bn, x, relu, o, fuse=fuse, max_pool=max_pool)
        node = y.grad_fn.name()
        (y * _rand(*y.shape, seed=20 + step)).sum().backward()
        got.append(y.numpy())
    got += [conv.weight.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy(),
            bn._mean.numpy(), bn._variance.numpy()]
    return got + [x.grad.numpy() if x_grad else None], node


# (batch, in channels of x, map, full weight [O, C], o, kernel, stride, padding, relu, x needs
# grad, max pool)
CONV_BN_SHAPES = [
    (3, 3, 32, (16, 3), 12, 7, 2, 3, True, False, None),  # the stem's conv on an image batch
    (3, 3, 32, (16, 3), 12, 7, 2, 3, True, True, (3, 2, 1)),  # the whole stem
    (2, 3, 18, (16, 3), 16, 7, 2, 3, True, True, (3, 2, 1)),  # odd maps: 9x9 pooled to 5x5
    (4, 24, 8, (32, 32), 24, 3, 1, 1, True, True, None),  # conv1 of a block, sliced in and out
    (4, 24, 8, (40, 32), 40, 3, 2, 1, False, True, None),  # conv2 / stride 2, full out
    (2, 16, 8, (32, 16), 20, 1, 2, 0, False, True, None),  # a projection shortcut
    (3, 40, 5, (48, 48), 48, 3, 1, 1, True, True, None),  # full widths, 5x5 map (odd)
]


@pytest.mark.needs_onednn
@pytest.mark.parametrize("n,c,h,full,o,k,s,p,relu,x_grad,pool", CONV_BN_SHAPES)
def test_fused_conv_bn_equals_the_layers_one_by_one(n, c, h, full, o, k, s, p, relu, x_grad, pool):
    x_np = np.random.default_rng(c + o + h).standard_normal((n, c, h, h)).astype("float32")
    fast, node = _conv_bn_run("fast", x_np, full, o, (k, s, p), relu, x_grad, pool)
    assert node == "GradNodePyLayer__OneDNNConvBN"
    stock, node = _conv_bn_run("stock", x_np, full, o, (k, s, p), relu, x_grad, pool)
    assert node != "GradNodePyLayer__OneDNNConvBN"
    names = ["output 1", "output 2", "weight grad", "gamma grad", "beta grad", "running mean",
             "running var", "input grad"]
    for name, a, b in zip(names, fast, stock):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, name
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err <= 1e-5, f"{name}: relative error {err:.2e}"
    weight_grad, gamma_grad, beta_grad, mean, var = fast[2:7]
    # Gradients land in the used block only; the running statistics move in the o channels only.
    assert np.abs(weight_grad[:o, :c]).max() > 0 and np.abs(gamma_grad[:o]).max() > 0
    assert np.all(weight_grad[o:] == 0) and np.all(weight_grad[:, c:] == 0)
    assert np.all(gamma_grad[o:] == 0) and np.all(beta_grad[o:] == 0)
    init_mean = _rand(full[0], seed=10).numpy()
    assert np.abs(mean[:o] - init_mean[:o]).min() > 0 and np.abs(var[:o] - 1).min() > 0
    np.testing.assert_array_equal(mean[o:], init_mean[o:])
    np.testing.assert_array_equal(var[o:], np.ones(full[0] - o, dtype="float32"))


@pytest.mark.needs_jit
def test_fused_conv_bn_only_in_a_fast_training_step():
    conv, bn = DynamicConv2D(8, 8, 3, 1, 1, "fast"), DynamicBatchNorm2D(8)
    x = _rand(2, 8, 4, 4)
    x.stop_gradient = False
    y = conv_bn_act(conv, bn, x, True, 8, fuse=True)
    assert y.grad_fn.name() == "GradNodePyLayer__OneDNNConvBN"
    y.sum().backward()
    with paddle.no_grad():  # e.g. BN re-calibration: train mode, no autograd node
        y = conv_bn_act(conv, bn, x, True, 8, fuse=True)
    np.testing.assert_allclose(y.numpy(), F.relu(bn(conv(x, 8))).numpy(), rtol=1e-5, atol=1e-5)
    bn.eval()
    assert conv_bn_act(conv, bn, x, True, 8, fuse=True).grad_fn.name() != "GradNodePyLayer__OneDNNConvBN"
    bn.train()
    stock = DynamicConv2D(8, 8, 3, 1, 1, "stock")
    assert conv_bn_act(stock, bn, x, True, 8, fuse=True).grad_fn.name() != "GradNodePyLayer__OneDNNConvBN"
    plan = onednn.conv_bn_plan(x.shape, conv.weight.shape, 8, 1, 1, True, bn.epsilon)
    names = plan.impl_names()  # forward and backward ran above
    assert len(names) == 5 and all(n and "ref" not in n for n in names), names


@pytest.mark.needs_onednn
@pytest.mark.parametrize("stage", ["build", "forward"])
def test_a_shape_the_fused_node_fails_on_runs_the_layers_one_by_one(stage, monkeypatch):
    n, c, h, full, o, k, s, p, relu, x_grad, pool = CONV_BN_SHAPES[1]  # the stem, max pool too
    x_np = np.random.default_rng(5).standard_normal((n, c, h, h)).astype("float32")
    attempts = onednn_fails_for(monkeypatch, "ConvBNPlan", [n, c, h, h], stage)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got, node = _conv_bn_run("fast", x_np, full, o, (k, s, p), relu, x_grad, pool)
        assert node != "GradNodePyLayer__OneDNNConvBN"
        assert any(key[0] != "conv_bn" for key in onednn._PLANS)  # the fast conv ran, then the BN
        ref, _ = _conv_bn_run("fast", x_np, full, o, (k, s, p), relu, x_grad, pool, fuse=False)
        for a, b in zip(got, ref):  # the same ops on the same values: every bit alike
            np.testing.assert_array_equal(a, b)
        # Another shape keeps its fused node.
        n, c, h, full, o, k, s, p, relu, x_grad, pool = CONV_BN_SHAPES[3]
        x_np = np.random.default_rng(6).standard_normal((n, c, h, h)).astype("float32")
        _, node = _conv_bn_run("fast", x_np, full, o, (k, s, p), relu, x_grad, pool)
        assert node == "GradNodePyLayer__OneDNNConvBN"
    assert attempts == [stage]  # the second step went straight to the layers
    assert len(said) == 1, [str(m.message) for m in said]
    message = str(said[0].message)
    assert ("conv + batch norm of a [3, 3, 32, 32] input by the leading 12 filters of a "
            "[16, 3, 7, 7] weight, stride 2, padding 3, relu True, max pool (3, 2, 1)") in message
    assert "oneDNN status" in message


@pytest.mark.needs_onednn
def test_an_evicted_fused_plan_lives_while_a_pending_backward_holds_it(monkeypatch):
    # As for the conv (test_conv): the fused node's backward runs on its plan after eviction.
    monkeypatch.setattr(onednn, "MAX_PLANS", 1)
    monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
    grads = {}
    for mode in ("fast", "stock"):
        paddle.seed(3)
        conv, bn = DynamicConv2D(16, 16, 3, 1, 1, mode), DynamicBatchNorm2D(16)
        x = _rand(2, 12, 6, 6, seed=11)
        x.stop_gradient = False
        y = conv_bn_act(conv, bn, x, True, 14, fuse=True)  # A
        conv_bn_act(conv, bn, _rand(2, 12, 5, 5, seed=12), True, 14, fuse=True)  # B evicts A
        (y * _rand(*y.shape, seed=13)).sum().backward()
        grads[mode] = [t.numpy() for t in (x.grad, conv.weight.grad, bn.weight.grad, bn.bias.grad)]
        if mode == "fast":
            assert y.grad_fn.name() == "GradNodePyLayer__OneDNNConvBN" and len(onednn._PLANS) == 1
    for name, a, b in zip(("input", "weight", "gamma", "beta"), grads["fast"], grads["stock"]):
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err <= 1e-5, f"{name} grad: relative error {err:.2e}"


def test_bn_default_momentum_matches_batchnorm2d_default():
    assert DynamicBatchNorm2D(4).momentum == nn.BatchNorm2D(4)._momentum == 0.9


@pytest.mark.parametrize("c", [5, 8])
def test_bn_eval_uses_running_stats_and_changes_nothing(c):
    dyn, _ = _bn_pair(8, c, momentum=0.9)
    dyn.eval()
    before = {k: v.numpy().copy() for k, v in dyn.state_dict().items()}
    x = _rand(3, c, 4, 4, seed=4)
    s = before
    expect = ((x.numpy() - s["_mean"][:c, None, None]) / np.sqrt(s["_variance"][:c, None, None] + 1e-5)
              * s["weight"][:c, None, None] + s["bias"][:c, None, None])
    np.testing.assert_allclose(dyn(x).numpy(), expect, rtol=1e-5, atol=1e-5)
    for k, v in dyn.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])


@pytest.mark.parametrize("c", [5, 8])
def test_frozen_bn_trains_on_the_running_stats_and_keeps_them(c):
    """train.bn_stats: frozen: a training-mode forward normalises with the leading running
    statistics and updates none; gamma and beta (and the input) still get their gradients."""
    dyn, _ = _bn_pair(8, c, momentum=0.9)
    set_bn_stats(dyn, "frozen")
    dyn.train()
    s = {k: v.numpy().copy() for k, v in dyn.state_dict().items()}
    x = _rand(3, c, 4, 4, seed=5)
    x.stop_gradient = False
    y = dyn(x)
    inv = 1 / np.sqrt(s["_variance"][:c, None, None] + 1e-5)
    expect = (x.numpy() - s["_mean"][:c, None, None]) * inv * s["weight"][:c, None, None] + s["bias"][:c, None, None]
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-5, atol=1e-5)
    dy = _rand(3, c, 4, 4, seed=6)
    gx, gw, gb = paddle.grad((y * dy).sum(), [x, dyn.weight, dyn.bias])
    np.testing.assert_allclose(gx.numpy(), dy.numpy() * inv * s["weight"][:c, None, None], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw.numpy()[:c], (dy.numpy() * (expect - s["bias"][:c, None, None])
                                                / s["weight"][:c, None, None]).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb.numpy()[:c], dy.numpy().sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert not gw.numpy()[c:].any()
    for k, v in dyn.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), s[k])
    set_bn_stats(dyn, "batch")
    dyn(x)
    assert not np.array_equal(dyn._mean.numpy(), s["_mean"])


def test_frozen_bn_keeps_the_convolution_on_onednn_and_leaves_the_fused_node(monkeypatch):
    """Frozen statistics take the layers one by one (the fused node computes batch statistics),
    the conv still oneDNN's; the same result as the stock conv."""
    paddle.seed(1)
    conv, bn = DynamicConv2D(6, 8, 3, 1, 1, conv="fast"), DynamicBatchNorm2D(8)
    with paddle.no_grad():
        bn._mean.set_value(_rand(8, seed=7) * 0.1)
    set_bn_stats(bn, "frozen")
    x = _rand(4, 6, 8, 8, seed=8)
    x.stop_gradient = False
    mean = bn._mean.numpy().copy()
    calls = []
    hook = conv.register_forward_post_hook(lambda *a: calls.append("layer"))
    apply = conv_module._OneDNNConv.apply
    monkeypatch.setattr(conv_module._OneDNNConv, "apply", lambda *a: calls.append("onednn") or apply(*a))
    y = conv_bn_act(conv, bn, x, True, 5, fuse=True)
    hook.remove()
    # the conv layer ran (not the fused node), through oneDNN where the library loads
    assert calls == (["onednn", "layer"] if onednn.available() else ["layer"])
    expect = F.relu(bn(F.conv2d(x, conv.weight[:5], padding=1)))
    np.testing.assert_allclose(y.numpy(), expect.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bn._mean.numpy(), mean)


@pytest.mark.parametrize("stride_on", [True, False])
def test_bn_momentum_schedule_gives_cumulative_average(stride_on):
    with stride_kernel(stride_on):
        dyn, _ = _bn_pair(8, 6, momentum=0.9)
        before = {k: v.numpy().copy() for k, v in dyn.state_dict().items()}
        dyn.train()
        means, variances = [], []
        with paddle.no_grad():
            for k in range(1, 6):
                x = _rand(4, 6, 3, 3, seed=10 + k) * k + k
                dyn.momentum = (k - 1) / k
                dyn(x)
                means.append(x.numpy().mean(axis=(0, 2, 3)))
                variances.append(x.numpy().var(axis=(0, 2, 3)))
        np.testing.assert_allclose(dyn._mean.numpy()[:6], np.mean(means, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dyn._variance.numpy()[:6], np.mean(variances, 0), rtol=1e-5)
        np.testing.assert_array_equal(dyn._mean.numpy()[6:], before["_mean"][6:])
        np.testing.assert_array_equal(dyn._variance.numpy()[6:], before["_variance"][6:])


def _archs():
    rng = np.random.default_rng(7)
    return {"largest": SPACE.largest(), "smallest": SPACE.smallest(), "random": SPACE.sample(rng)}


@pytest.mark.parametrize("name", ["largest", "smallest", "random"])
def test_supernet_equals_exported_resnet(name):
    paddle.seed(0)
    net = SuperNet(SPACE)
    widths = SPACE.widths(_archs()[name])
    x = _rand(4, 3, 32, 32, seed=5)
    static = net.export(widths)
    net.eval(), static.eval()
    np.testing.assert_allclose(net(x, widths).numpy(), static(x).numpy(), rtol=1e-5, atol=1e-5)

    net.train(), static.train()
    np.testing.assert_allclose(net(x, widths).numpy(), static(x).numpy(), rtol=1e-5, atol=1e-5)
    # Both updated their running statistics identically: export again and compare every buffer.
    own = net.state_dict()
    for key, value in static.state_dict().items():
        if key.endswith(("_mean", "_variance")):
            n = value.shape[0]
            np.testing.assert_allclose(own[key].numpy()[:n], value.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=key)
    # And the statistics moved away from their initial values (zeros / ones).
    assert not np.allclose(own["stem_bn._mean"].numpy()[:widths.stem], 0)
    # Eval after the update still agrees.
    net.eval(), static.eval()
    np.testing.assert_allclose(net(x, widths).numpy(), static(x).numpy(), rtol=1e-5, atol=1e-5)


def test_leading_rejects_sizes_beyond_the_max_width():
    with pytest.raises(ValueError):
        leading(_rand(4, 3), (5, 3))
    with pytest.raises(ValueError):
        DynamicConv2D(3, 4, 3, 1, 1)(_rand(1, 3, 5, 5), 6)

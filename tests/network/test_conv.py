"""track1.network.conv equals stock F.conv2d: outputs, input and weight gradients, inference, whole networks;
oneDNN's plans, scratch buffers and loader, and the fallback to stock where oneDNN fails."""
import ctypes
import re
import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import onednn_fails_for
from track1.network import conv

from track1.network import onednn

from track1.pipeline import standalone
from track1.pipeline.config import ConfigError, load_config
from track1.network.conv import conv2d
from track1.network.layers import DynamicConv2D, leading
from track1.space import SearchSpace, conv_out
from track1.network.resnet import ResNet
from track1.network.supernet import SuperNet
from track1.network.build import build_supernet

RTOL = 1e-5
SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)
CODE = "1252233313000000223212122253130000000000006515000000"

# (batch, in, out, map, kernel, stride, padding): the network's convs and a few odd ones.
SHAPES = [
    (2, 3, 8, 32, 7, 2, 3),     # stem
    (3, 8, 8, 8, 3, 1, 1), (1, 8, 16, 8, 3, 2, 1), (2, 8, 16, 8, 1, 2, 0),
    (2, 16, 16, 4, 3, 1, 1), (1, 16, 32, 4, 3, 2, 1), (3, 16, 32, 4, 1, 2, 0),
    (2, 32, 32, 2, 3, 1, 1), (2, 32, 64, 2, 3, 2, 1), (1, 32, 64, 2, 1, 2, 0),
    (3, 64, 64, 1, 3, 1, 1), (1, 64, 64, 1, 3, 1, 1),
    (2, 5, 6, 7, 3, 2, 1), (2, 8, 12, 8, 1, 1, 0),  # odd map, plain 1x1
]


def _close(got, ref, what):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, what
    err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err <= RTOL, f"{what}: relative error {err:.2e}"


def _run(path, x, full, o, k_s_p, dy):
    """Output and gradients wrt x and the FULL parameter of a conv on a leading weight slice."""
    k, s, p = k_s_p
    weight = leading(full, (o, int(x.shape[1])))
    if path == "stock":
        y = F.conv2d(x, weight, stride=s, padding=p)
    else:
        y = conv2d(x, weight, s, p, "fast")
        assert y.grad_fn.name() == "GradNodePyLayer__OneDNNConv"
    dx, dfull = paddle.grad([y], [x, full], [dy])
    return y.numpy(), dx.numpy(), dfull.numpy()


@pytest.mark.needs_onednn
@pytest.mark.parametrize("n,c,o,h,k,s,p", SHAPES)
def test_paths_match_stock_conv2d(n, c, o, h, k, s, p):
    rng = np.random.default_rng(h * 100 + c)
    x = paddle.to_tensor(rng.standard_normal((n, c, h, h)).astype("float32"), stop_gradient=False)
    # A larger parameter (sliced widths): gradients must land in its leading block only.
    full = paddle.to_tensor(rng.standard_normal((o + 3, c + 2, k, k)).astype("float32"),
                            stop_gradient=False)
    ho = conv_out(h, k, s, p)
    dy = paddle.to_tensor(rng.standard_normal((n, o, ho, ho)).astype("float32"))
    ref = _run("stock", x, full, o, (k, s, p), dy)
    assert np.abs(ref[2][o:]).max() == 0 and np.abs(ref[2][:, c:]).max() == 0
    got = _run("fast", x, full, o, (k, s, p), dy)
    for name, a, b in zip(("output", "input grad", "weight grad"), got, ref):
        _close(a, b, f"fast {name}")


@pytest.mark.needs_jit
def test_onednn_is_loaded_and_deterministic():
    # Paddle's CPU wheel ships oneDNN 3.x: the fast mode must not fall back silently here.
    assert onednn.available(), onednn.why_unavailable()
    assert onednn.version()[0] == 3
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((4, 32, 2, 2)).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.standard_normal((32, 32, 3, 3)).astype("float32"), stop_gradient=False)
    outs = []
    for _ in range(2):
        y = conv2d(x, w, 1, 1)
        outs.append([t.numpy() for t in (y, *paddle.grad([(y * y).sum()], [x, w]))])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    names = onednn.plan(x.shape, w.shape, 1, 1).impl_names()
    assert len(names) == 3 and all(n and "ref" not in n for n in names), names


@pytest.mark.needs_onednn
def test_no_grad_and_input_without_gradient():
    x, w = paddle.randn([2, 16, 4, 4]), paddle.randn([8, 16, 3, 3])
    with paddle.no_grad():
        y = conv2d(x, w, 1, 1)
    assert y.stop_gradient
    assert (2, 16, 4, 4, 8, 3, 1, 1, False) in onednn._PLANS  # oneDNN's inference primitive ran
    _close(y.numpy(), F.conv2d(x, w, padding=1).numpy(), "no_grad output")
    # An input without gradient (an image batch): the weight gradient alone.
    w.stop_gradient = False
    for h, k, s, p in ((32, 7, 2, 3), (4, 3, 1, 1), (4, 1, 2, 0)):
        xi, wk = paddle.randn([2, 16, h, h]), w[:, :, :k, :k]
        got = paddle.grad([conv2d(xi, wk, s, p).sum()], [w])[0]
        ref = paddle.grad([F.conv2d(xi, wk, stride=s, padding=p).sum()], [w])[0]
        _close(got.numpy(), ref.numpy(), f"weight grad, k={k}")


def test_bad_mode():
    x, w = paddle.randn([2, 16, 4, 4]), paddle.randn([8, 16, 3, 3])
    with pytest.raises(ValueError, match="unknown conv mode"):
        conv2d(x, w, 1, 1, "fastest")
    with pytest.raises(ValueError, match="unknown conv mode"):
        DynamicConv2D(4, 4, 3, conv="fastest")
    with pytest.raises(ConfigError, match="train.conv: 'fastest' is not one of fast, stock"):
        load_config(None, ["train.conv=fastest"])


def test_float64_runs_stock():
    x = paddle.randn([2, 4, 5, 5], dtype="float64")
    w = paddle.randn([3, 4, 3, 3], dtype="float64")
    assert not conv.uses_onednn(x)
    np.testing.assert_array_equal(conv2d(x, w, 1, 1).numpy(), F.conv2d(x, w, padding=1).numpy())


@pytest.mark.needs_onednn
def test_plan_cache_evicts_least_recent(monkeypatch):
    monkeypatch.setattr(onednn, "MAX_PLANS", 2)
    monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
    shapes = [([1, 2, 3, 3], [2, 2, 1, 1]), ([1, 2, 4, 4], [2, 2, 1, 1]), ([1, 2, 5, 5], [2, 2, 1, 1])]
    first = onednn.plan(*shapes[0], 1, 0)
    onednn.plan(*shapes[1], 1, 0)
    assert onednn.plan(*shapes[0], 1, 0) is first  # now the most recent
    onednn.plan(*shapes[2], 1, 0)
    assert [k[2] for k in onednn._PLANS] == [3, 5]
    x = paddle.randn(shapes[2][0])
    w = paddle.randn(shapes[2][1])
    _close(conv2d(x, w).numpy(), F.conv2d(x, w).numpy(), "after eviction")


def _net_grads(make, mode, dtype, seed):
    """Loss gradients of every parameter of make(mode) (seeded), on a fixed batch, in dtype."""
    rng = np.random.default_rng(1)
    x = paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype(dtype))
    y = paddle.to_tensor(rng.integers(0, 10, size=(4,)).astype("int64"))
    paddle.seed(seed)
    net = make(mode)
    if dtype == "float64":
        net.to(dtype="float64")
    F.cross_entropy(net(x), y).backward()
    return net, {n: p.grad.numpy().astype("float64") for n, p in net.named_parameters()
                 if p.grad is not None}


def _check_network(make, seed):
    """Fast float32 gradients are as close to the float64 truth (stock conv in float64) as stock
    float32 ones: through BN and 20-odd layers both drift ~1e-4 from it, not from each other's bugs."""
    _, truth = _net_grads(make, "stock", "float64", seed)
    _, stock = _net_grads(make, "stock", "float32", seed)
    net, fast = _net_grads(make, "fast", "float32", seed)
    assert truth.keys() == stock.keys() == fast.keys()
    assert any("conv" in name for name in fast)

    def err(grads, name):
        return np.abs(grads[name] - truth[name]).max() / np.abs(truth[name]).max()
    worst_stock = max(err(stock, name) for name in truth)
    worst_fast = max(err(fast, name) for name in truth)
    assert 0 < worst_stock < 1e-3
    assert worst_fast <= 2 * worst_stock, (worst_fast, worst_stock)
    return net


def test_static_resnet_fast_equals_stock():
    nets = {}
    for mode in ("stock", "fast"):
        paddle.seed(5)  # same initialisation: Conv2D is an nn.Conv2D whatever the mode
        nets[mode] = ResNet(SPACE.widths(CODE), SPACE, conv=mode)
    stock, fast = nets["stock"].state_dict(), nets["fast"].state_dict()
    assert list(stock) == list(fast)
    for name in stock:
        np.testing.assert_array_equal(stock[name].numpy(), fast[name].numpy())
    _check_network(lambda mode: ResNet(SPACE.widths(CODE), SPACE, conv=mode), 5)


def test_supernet_fast_equals_stock_through_sliced_weights():
    widths = SPACE.widths(CODE)  # narrower than the max widths: every conv weight is sliced

    class Subnet(paddle.nn.Layer):
        def __init__(self, mode):
            super().__init__()
            self.net = SuperNet(SPACE, conv=mode)

        def forward(self, x):
            return self.net(x, widths)
    net = _check_network(Subnet, 6).net
    assert net.stages[2][0].conv1.weight.grad is not None
    # The exported static network keeps the conv mode.
    assert net.export(widths).stem_conv.mode == "fast"


@pytest.mark.needs_onednn
def test_two_threads_fast_path_matches(tmp_path):
    # oneDNN at 2 threads; in a process of its own, as OMP_NUM_THREADS is read when paddle is
    # imported.
    script = tmp_path / "two.py"
    script.write_text(
        "import numpy as np, paddle, paddle.nn.functional as F\n"
        "from track1.network.conv import conv2d\n"
        "rng = np.random.default_rng(0)\n"
        "x = paddle.to_tensor(rng.standard_normal((3, 8, 4, 4)).astype('float32'), stop_gradient=False)\n"
        "w = paddle.to_tensor(rng.standard_normal((6, 8, 3, 3)).astype('float32'), stop_gradient=False)\n"
        "y = conv2d(x, w, 1, 1)\n"
        "assert y.grad_fn.name() == 'GradNodePyLayer__OneDNNConv', y.grad_fn.name()\n"
        "got = [y.numpy(), *[g.numpy() for g in paddle.grad([(y * y).sum()], [x, w])]]\n"
        "r = F.conv2d(x, w, padding=1)\n"
        "ref = [r.numpy(), *[g.numpy() for g in paddle.grad([(r * r).sum()], [x, w])]]\n"
        "print(max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(got, ref)))\n")
    import os
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert float(out.strip().splitlines()[-1]) <= RTOL


def test_input_gradient_alone():
    # A frozen kernel (as when a proxy takes the gradient with respect to the input only).
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(rng.standard_normal((2, 8, 6, 6)).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.standard_normal((4, 8, 3, 3)).astype("float32"))
    got = paddle.grad([conv2d(x, w, 2, 1).sum()], [x])[0]
    ref = paddle.grad([F.conv2d(x, w, stride=2, padding=1).sum()], [x])[0]
    _close(got.numpy(), ref.numpy(), "input grad with a frozen kernel")


def test_strided_views_are_read_as_their_values():
    # Paddle's slices and transposes are views with strides; oneDNN reads dense memory.
    rng = np.random.default_rng(4)
    full = paddle.to_tensor(rng.standard_normal((8, 6, 3, 3)).astype("float32"))
    x = paddle.to_tensor(rng.standard_normal((2, 5, 5, 3)).astype("float32")).transpose([0, 3, 1, 2])
    w = full[:4, :3]
    assert not x.is_contiguous() and not w.is_contiguous()
    with paddle.no_grad():
        got = conv2d(x, w, 1, 1)
    ref = F.conv2d(x.contiguous(), w.contiguous(), padding=1)
    _close(got.numpy(), ref.numpy(), "strided views")


def test_without_onednn_the_fast_mode_falls_back_to_stock_with_one_warning(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    monkeypatch.setattr(onednn, "why_unavailable", lambda: "no libdnnl in this wheel")
    monkeypatch.setattr(conv, "_warned", False)
    x = paddle.randn([2, 4, 6, 6])
    w = paddle.randn([3, 4, 3, 3])
    with pytest.warns(UserWarning, match="oneDNN unavailable .no libdnnl in this wheel"):
        y = conv2d(x, w, 1, 1)
    np.testing.assert_array_equal(y.numpy(), F.conv2d(x, w, padding=1).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every call
        conv2d(x, w, 1, 1)


@pytest.mark.needs_onednn
@pytest.mark.parametrize("network", ["supernet", "static"])
def test_fused_conv_bn_networks_match_the_float64_truth_like_stock(network, monkeypatch):
    # fuse_bn (what train and standalone build): every conv + BN (+ ReLU) of the training step is
    # one oneDNN node; the whole network's gradients stay as close to float64 as stock's.
    monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
    widths = SPACE.widths(CODE)

    class Subnet(paddle.nn.Layer):
        def __init__(self, mode):
            super().__init__()
            self.net = SuperNet(SPACE, conv=mode, fuse_bn=True)

        def forward(self, x):
            return self.net(x, widths)
    make = Subnet if network == "supernet" else (
        lambda mode: ResNet(widths, SPACE, conv=mode, fuse_bn=True))
    _check_network(make, 7)
    fused = [key for key in onednn._PLANS if key[0] == "conv_bn"]
    blocks = sum(len(stage) for stage in widths.blocks)
    assert len(fused) >= blocks  # the stem, every block's two convs, the projections


@pytest.mark.needs_onednn
def test_train_and_standalone_train_through_the_fused_node(monkeypatch):
    # Their networks' speed rests on fuse_bn; no result would change if it were dropped.
    cfg = load_config(None, ["space.width_mult=0.125"])
    x = paddle.randn([2, 3, 32, 32])
    for build in (lambda: build_supernet(cfg)[1], lambda: standalone.build_network(cfg, CODE, 0)[1]):
        monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
        net = build()
        net.train()
        out = net(x, SPACE.widths(CODE)) if isinstance(net, SuperNet) else net(x)
        out.sum().backward()
        kinds = {key[0] for key in onednn._PLANS}
        assert kinds == {"conv_bn"}, kinds  # every conv of the step went through the fused node


@pytest.mark.needs_onednn
def test_an_evicted_plan_lives_while_a_pending_backward_holds_it(monkeypatch):
    # The cache used to release an evicted plan's primitives at once: the backward of A then ran
    # (or built its primitives from) freed oneDNN objects, failing or crashing the process.
    monkeypatch.setattr(onednn, "MAX_PLANS", 1)
    monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
    rng = np.random.default_rng(8)
    x = paddle.to_tensor(rng.standard_normal((2, 16, 8, 8)).astype("float32"), stop_gradient=False)
    w = paddle.to_tensor(rng.standard_normal((16, 16, 3, 3)).astype("float32"), stop_gradient=False)
    y = conv2d(x, w, 1, 1)  # A
    (plan_a,) = onednn._PLANS.values()
    released = plan_a._release
    del plan_a
    conv2d(paddle.randn([2, 16, 6, 6]), w, 1, 1)  # B evicts A
    assert len(onednn._PLANS) == 1 and released.alive  # A's autograd node still holds it
    dy = paddle.to_tensor(rng.standard_normal(y.shape).astype("float32"))
    got = paddle.grad([y], [x, w], [dy])
    ref = F.conv2d(x, w, padding=1)
    for name, a, b in zip(("input grad", "weight grad"), got, paddle.grad([ref], [x, w], [dy])):
        _close(a.numpy(), b.numpy(), f"backward of an evicted plan: {name}")
    del y, got
    assert not released.alive  # its last holder gone, the plan released its oneDNN objects


def _conv_plan():
    """A cached plan of a conv whose forward has run once (its scratch buffers allocated)."""
    x, w = paddle.randn([2, 16, 8, 8]), paddle.randn([16, 16, 3, 3])
    plan = onednn.plan(x.shape, w.shape, 1, 1)
    plan.forward(x, w)
    return plan, x, w


@pytest.mark.needs_onednn
def test_a_step_refuses_one_scratch_for_two_copies(monkeypatch):
    monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
    plan, _, _ = _conv_plan()
    steps = len(plan.impl_names())
    with pytest.raises(onednn.OneDNNError, match="ConvPlan twice: two of its copies share"):
        plan.step("twice", plan._fwd_pd, [(onednn._ARG_SRC, plan.x, onednn._Q_SRC, onednn._S_X),
                                          (onednn._ARG_WEIGHTS, plan.w, onednn._Q_WEIGHTS, onednn._S_X)],
                  (onednn._ARG_DST, plan.y, onednn._Q_DST, onednn._S_Y))
    assert len(plan.impl_names()) == steps  # refused before it built anything


@pytest.mark.needs_onednn
def test_a_step_refuses_a_source_in_a_scratch_it_overwrites(monkeypatch):
    monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
    plan, x, w = _conv_plan()
    if not plan.fwd.overwrites:
        pytest.skip("oneDNN convolves this shape in the plain layout here: no scratch copies")
    y = paddle.empty(plan.y_shape)
    for scratch in plan.fwd.overwrites:
        for reads in ([scratch.ptr, w.data_ptr()], [x.data_ptr(), scratch.ptr]):
            with pytest.raises(onednn.OneDNNError, match="ConvPlan forward: a source lies in a scratch"):
                plan.fwd.run(reads, y.data_ptr())
    plan.fwd.run([x.data_ptr(), w.data_ptr()], y.data_ptr())  # the same step, sources elsewhere
    _close(y.numpy(), F.conv2d(x, w, padding=1).numpy(), "after the refusals")


@pytest.mark.needs_onednn
@pytest.mark.parametrize("stage", ["build", "forward"])
def test_a_shape_onednn_fails_on_runs_stock_with_one_warning(stage, monkeypatch):
    attempts = onednn_fails_for(monkeypatch, "ConvPlan", [2, 8, 6, 6], stage)
    rng = np.random.default_rng(9)
    w = paddle.to_tensor(rng.standard_normal((4, 8, 3, 3)).astype("float32"), stop_gradient=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")  # every warning given, not only the first per place
        for grad in (True, True, False):
            x = paddle.to_tensor(rng.standard_normal((2, 8, 6, 6)).astype("float32"),
                                 stop_gradient=not grad)
            with paddle.set_grad_enabled(grad):
                y, ref = conv2d(x, w, 1, 1), F.conv2d(x, w, padding=1)
            np.testing.assert_array_equal(y.numpy(), ref.numpy())
            if grad:
                assert y.grad_fn.name() != "GradNodePyLayer__OneDNNConv"
                for a, b in zip(paddle.grad([y.sum()], [x, w]), paddle.grad([ref.sum()], [x, w])):
                    np.testing.assert_array_equal(a.numpy(), b.numpy())
        # Another shape still runs through oneDNN, unannounced.
        other = paddle.randn([2, 8, 5, 5])
        other.stop_gradient = False
        assert conv2d(other, w, 1, 1).grad_fn.name() == "GradNodePyLayer__OneDNNConv"
    assert attempts == [stage]  # later calls of the shape go straight to F.conv2d
    assert len(said) == 1, [str(m.message) for m in said]
    message = str(said[0].message)
    assert "[2, 8, 6, 6] input by a [4, 8, 3, 3] weight" in message
    assert "oneDNN status" in message and "Paddle's kernels run this shape" in message


class _FakeDNNL:
    """What ctypes.CDLL(path) gives, for a libdnnl whose dnnl_version says `version` and
    `cpu_runtime`, missing the symbol `missing`; its other functions succeed and do nothing."""

    def __init__(self, path, version=(3, 6, 2), cpu_runtime=2, missing=None):
        self._path, self._missing = path, missing
        self._version = onednn._Version(*version, None, cpu_runtime, 0)

    def __getattr__(self, name):
        if name == self._missing:
            raise AttributeError(f"{self._path}: undefined symbol: {name}")
        if name == "dnnl_version":
            def fn():
                return ctypes.pointer(self._version)
        else:
            def fn(*args):
                return 0
        setattr(self, name, fn)  # a CDLL keeps its functions too (restype is set on them)
        return fn


# (what the wheel holds: None for no libdnnl, else _FakeDNNL's arguments; the reason given)
BROKEN_LOADS = {
    "no library": (None, "this Paddle wheel ships no libdnnl"),
    "oneDNN 2": ({"version": (2, 7, 3)}, r"libdnnl.so.3 is oneDNN 2.7: the declarations here are 3.x's"),
    "missing symbol": ({"missing": "dnnl_memory_desc_equal"},
                       "libdnnl.so.3: undefined symbol: dnnl_memory_desc_equal"),
    "TBB runtime": ({"cpu_runtime": 4}, "libdnnl.so.3's CPU runtime is TBB: this module needs OpenMP"),
    "threadpool runtime": ({"cpu_runtime": 8}, "CPU runtime is threadpool"),
    "unknown runtime": ({"cpu_runtime": 3}, r"CPU runtime is unknown \(3\)"),
}


def _load(monkeypatch, lib: dict | None) -> bool:
    """onednn.available() from scratch, with a wheel holding `lib` (see BROKEN_LOADS)."""
    monkeypatch.setattr(onednn, "_LIB", None)  # monkeypatch restores the real library after
    monkeypatch.setattr(onednn, "_WHY_NOT", None)
    path = "/wheel/paddle/libs/libdnnl.so.3"
    with monkeypatch.context() as m:
        m.setattr(onednn.glob, "glob", lambda pattern: [] if lib is None else [path])
        m.setattr(ctypes, "CDLL", lambda p: _FakeDNNL(p, **(lib or {})))
        return onednn.available()


@pytest.mark.parametrize("case", list(BROKEN_LOADS))
def test_a_library_that_cannot_serve_leaves_onednn_unavailable_and_conv_stock(case, monkeypatch):
    lib, reason = BROKEN_LOADS[case]
    assert not _load(monkeypatch, lib)
    why = onednn.why_unavailable()
    assert "\n" not in why, why
    assert re.search(reason, why), why
    assert onednn.version() is None
    monkeypatch.setattr(conv, "_warned", False)
    x, w = paddle.randn([2, 4, 6, 6]), paddle.randn([3, 4, 3, 3])
    with pytest.warns(UserWarning, match="oneDNN unavailable") as said:
        y = conv2d(x, w, 1, 1)
    assert len(said) == 1 and why in str(said[0].message)
    np.testing.assert_array_equal(y.numpy(), F.conv2d(x, w, padding=1).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        conv2d(x, w, 1, 1)


@pytest.mark.parametrize("cpu_runtime", [1, 2])
def test_onednn_on_openmp_or_sequential_loads(cpu_runtime, monkeypatch):
    assert _load(monkeypatch, {"cpu_runtime": cpu_runtime}), onednn.why_unavailable()
    assert onednn.version() == (3, 6, 2)

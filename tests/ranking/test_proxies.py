"""Zero-cost proxies: values against hand computations, determinism, and the cached runner."""
from __future__ import annotations

import json
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from track1.ranking import double_backward

from track1.ranking import proxies

from track1.ranking import proxy_runs
from track1.pipeline.config import ConfigError, load_config
from track1.space import SearchSpace
from track1.network.resnet import ResNet

SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)


def _batch(n=8, res=32, classes=10, seed=123, dtype="float32"):
    rng = np.random.default_rng(seed)
    x = paddle.to_tensor(rng.standard_normal((n, 3, res, res)).astype(dtype))
    y = paddle.to_tensor(rng.integers(0, classes, n).astype("int64"))
    return x, y


def _codes(n, seed=0):
    """n sampled codes with stem ratio '1', plus for each a twin with stem '2': the same network
    (64 * 0.95 rounds to 64)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        code = SPACE.sample(rng).code
        out[f"arch{2 * i + 1}"] = code[:5] + "1" + code[6:]
        out[f"arch{2 * i + 2}"] = code[:5] + "2" + code[6:]
    return out


SMALL = SPACE.smallest().code
TWIN_A = SMALL[:5] + "1" + SMALL[6:]
TWIN_B = SMALL[:5] + "2" + SMALL[6:]


# -- flops and params --------------------------------------------------------------------------
def test_flops_params_equal_space():
    for code in list(_codes(3).values()) + [SMALL]:
        w = SPACE.widths(code)
        assert proxies.compute("flops", w, SPACE) == SPACE.flops(w)
        assert proxies.compute("params", code, SPACE) == SPACE.params(w)
    net = ResNet(SPACE.widths(SMALL), SPACE)
    trainable = sum(int(np.prod(p.shape)) for p in net.parameters() if not p.stop_gradient)
    assert proxies.compute("params", SMALL, SPACE) == trainable


# -- hand-made networks against numpy ----------------------------------------------------------
class _TwoLayer(nn.Layer):
    """1x1 conv -> (BN) -> ReLU -> global average pool -> linear."""

    def __init__(self, bn: bool):
        super().__init__()
        self.conv = nn.Conv2D(3, 2, 1, bias_attr=False)
        self.bn = nn.BatchNorm2D(2) if bn else None
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.fc(self.avgpool(self.relu(x)).flatten(1))


def _two_layer_weights(bn, seed):
    paddle.seed(seed)
    net = _TwoLayer(bn)
    return (net.conv.weight.numpy()[:, :, 0, 0].astype(np.float64),
            net.fc.weight.numpy().astype(np.float64), net.fc.bias.numpy().astype(np.float64))


def test_synflow_of_a_two_layer_network_by_hand(monkeypatch):
    monkeypatch.setattr(proxies, "build_network", lambda w, s, act="relu", conv="fast": _TwoLayer(bn=True))
    x, _ = _batch(n=4, res=5)
    score = proxies.compute("synflow", SMALL, SPACE, (x, None), seed=7)
    w1, w2, _ = _two_layer_weights(True, 7)
    w1, w2 = np.abs(w1), np.abs(w2)                   # [out 2, in 3], [in 2, out 3]
    h = w1.sum(axis=1)                                # all-ones input, BN removed, ReLU a no-op
    # R = sum_j (sum_c h_c w2[c, j] + |b_j|): dR/dw2[c, j] = h_c, dR/dw1[c, k] = sum_j w2[c, j]
    expected = (w2 * h[:, None]).sum() + (w1 * w2.sum(axis=1)[:, None]).sum()
    # Not 1e-12: Paddle's float64 adaptive_avg_pool2d backward scales by a float32 1/25.
    assert score == pytest.approx(expected, rel=1e-7)


def test_snip_of_a_two_layer_network_by_hand(monkeypatch):
    monkeypatch.setattr(proxies, "build_network", lambda w, s, act="relu", conv="fast": _TwoLayer(bn=False))
    x, y = _batch(n=4, res=5, classes=3)
    score = proxies.compute("snip", SMALL, SPACE, (x, y), seed=3)
    w1, w2, b = _two_layer_weights(False, 3)
    xs = x.numpy().astype(np.float64).reshape(4, 3, -1)       # [n, k, positions]
    pre = np.einsum("ck,nkp->ncp", w1, xs)
    pooled = np.maximum(pre, 0).mean(axis=2)
    logits = pooled @ w2 + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d_logits = (p - np.eye(3)[y.numpy()]) / 4                  # mean cross-entropy
    d_w2 = pooled.T @ d_logits
    d_pre = (d_logits @ w2.T)[:, :, None] / xs.shape[2] * (pre > 0)
    d_w1 = np.einsum("ncp,nkp->ck", d_pre, xs)
    expected = np.abs(w1 * d_w1).sum() + np.abs(w2 * d_w2).sum()
    assert score == pytest.approx(expected, rel=1e-5)


def test_naswot_is_the_all_distinct_logdet(monkeypatch):
    # One ReLU layer of 6 units; sample i is positive only on unit i: one-hot, all-distinct codes.
    n, units = 4, 6
    monkeypatch.setattr(proxies, "build_network", lambda w, s, act="relu", conv="fast": nn.Sequential(nn.ReLU()))
    x = paddle.to_tensor(2 * np.eye(n, units, dtype="float32") - 1)
    score = proxies.compute("naswot", SMALL, SPACE, (x, None))
    # K = units on the diagonal, units - 2 elsewhere: eigenvalues n(units-2)+2 once, 2 (n-1) times.
    expected = math.log(n * (units - 2) + 2) + (n - 1) * math.log(2)
    assert score == pytest.approx(expected, rel=1e-12)
    # The kernel is units - Hamming distance, summed over layers.
    rng = np.random.default_rng(0)
    layers = [rng.integers(0, 2, (5, u)) for u in (7, 11)]
    brute = sum(u - (c[:, None, :] != c[None, :, :]).sum(-1) for c, u in zip(layers, (7, 11)))
    np.testing.assert_array_equal(proxies.naswot_kernel(layers), brute)
    # Two samples with the same codes everywhere: singular kernel, the lowest score.
    assert proxies.logdet(proxies.naswot_kernel([np.array([[1, 0, 1], [1, 0, 1]])])) == -math.inf


def test_jacob_cov_score_is_maximal_for_uncorrelated_jacobians():
    k = proxies.JACOB_K
    best = -3 * (math.log(1 + k) + 1 / (1 + k))                # eigenvalues all 1
    hadamard = np.tile([[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], 3)  # zero-mean, orthogonal
    assert proxies.jacob_cov_score(hadamard) == pytest.approx(best, rel=1e-12)
    rng = np.random.default_rng(0)
    correlated = rng.standard_normal(12) + 0.1 * rng.standard_normal((3, 12))
    assert proxies.jacob_cov_score(correlated) < best


# -- grasp: double backward --------------------------------------------------------------------
@pytest.mark.parametrize("act", ["relu", "prelu", "mish"])
def test_grasp_forward_is_the_resnet_forward(act):
    paddle.set_default_dtype("float64")  # float32 rounding differs between BN kernel and ops
    try:
        paddle.seed(0)
        net = ResNet(SPACE.widths(SMALL), SPACE, act)
        net.train()
        x, y = _batch(dtype="float64")
        expected = net(x).numpy()
        logits = double_backward.grasp_logits(net, x)
        np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-9, atol=1e-12)
        assert double_backward.ce_double_backward(logits, y).item() == pytest.approx(
            F.cross_entropy(logits, y).item(), rel=1e-12)
    finally:
        paddle.set_default_dtype("float32")


@pytest.mark.parametrize("act", ["relu", "prelu", "mish"])
def test_grasp_matches_finite_differences(act):
    """-sum(w * Hg) by double backward = the same with Hg from central differences of gradients."""
    paddle.set_default_dtype("float64")
    try:
        x, y = _batch(dtype="float64")
        widths = SPACE.widths(SMALL)
        score = proxies.compute("grasp", widths, SPACE, (x, y), seed=5, act=act)

        paddle.seed(5)
        net = ResNet(widths, SPACE, act)
        net.train()
        ws = proxies._weights(net)

        def grads():
            return [g.numpy() for g in paddle.grad(F.cross_entropy(net(x), y), ws)]

        g0, w0 = grads(), [w.numpy() for w in ws]
        # A small step: larger ones cross ReLU/max-pool kinks (1e-4 is already 4% off).
        eps = 1e-6 / math.sqrt(sum((g ** 2).sum() for g in g0))
        diffs = []
        for sign in (1, -1):
            for w, v, g in zip(ws, w0, g0):
                w.set_value(v + sign * eps * g)
            diffs.append(grads())
        hg = [(a - b) / (2 * eps) for a, b in zip(*diffs)]
        expected = -sum((w * h).sum() for w, h in zip(w0, hg))
    finally:
        paddle.set_default_dtype("float32")
    assert score == pytest.approx(expected, rel=1e-4)


# -- determinism and equal networks ------------------------------------------------------------
def test_every_proxy_is_deterministic_and_shared_by_equal_widths():
    assert TWIN_A != TWIN_B and SPACE.widths(TWIN_A) == SPACE.widths(TWIN_B)
    batch = _batch()
    for name in proxies.PROXIES:
        first = proxies.compute(name, TWIN_A, SPACE, batch, seed=1)
        assert math.isfinite(first), name
        assert proxies.compute(name, TWIN_A, SPACE, batch, seed=1) == first, name
        assert proxies.compute(name, TWIN_B, SPACE, batch, seed=1) == first, name


def test_seed_and_repeats():
    batch = _batch()
    a = proxies.compute("snip", SMALL, SPACE, batch, seed=0)
    b = proxies.compute("snip", SMALL, SPACE, batch, seed=1)
    assert a != b
    assert proxies.compute("snip", SMALL, SPACE, batch, seed=0, repeats=2) == pytest.approx((a + b) / 2)
    # Scoring leaves the caller's random stream where it was.
    paddle.seed(9)
    expected = paddle.randn([3]).numpy()
    paddle.seed(9)
    proxies.compute("zen", SMALL, SPACE, batch, seed=0)
    np.testing.assert_array_equal(paddle.randn([3]).numpy(), expected)


def test_data_proxies_need_a_batch():
    with pytest.raises(ValueError, match="needs a batch"):
        proxies.compute("snip", SMALL, SPACE, None)
    with pytest.raises(ValueError, match="unknown proxy"):
        proxies.compute("nope", SMALL, SPACE, None)


# -- the cached runner -------------------------------------------------------------------------
def _counting(monkeypatch, fail_after=None):
    calls = []

    def flops(widths, space, batch=None, seed=0, act="relu"):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("simulated kill")
        calls.append(widths)
        return float(space.flops(widths))

    monkeypatch.setitem(proxies.PROXIES, "flops", flops)
    return calls


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_runner_computes_each_distinct_network_once(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    codes = _codes(4)                                   # 8 keys, 4 networks
    out = tmp_path / "flops.jsonl"
    records = proxy_runs.score_list("flops", codes, SPACE, None, out, progress=False)
    assert len(calls) == 4 and len(set(calls)) == 4
    assert list(records) == list(codes)
    for key, code in codes.items():
        assert records[key]["code"] == code and records[key]["score"] == SPACE.flops(code)
    assert sorted(r["key"] for r in _lines(out)) == sorted(codes)
    # Only the key that paid for a computation carries its time.
    assert sum(r["seconds"] > 0 for r in records.values()) == 4
    # A second run reads everything back and computes nothing.
    again = proxy_runs.score_list("flops", codes, SPACE, None, out, progress=False)
    assert len(calls) == 4 and again == records
    official = proxy_runs.to_official_json(records, codes)
    assert list(official) == list(codes)
    assert official["arch1"] == {"acc": records["arch1"]["score"], "arch": codes["arch1"],
                                 "seconds": records["arch1"]["seconds"]}


def test_runner_resumes_after_a_kill(tmp_path, monkeypatch):
    codes = _codes(5)                                   # 10 keys, 5 networks
    out = tmp_path / "flops.jsonl"
    _counting(monkeypatch, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        proxy_runs.score_list("flops", codes, SPACE, None, out, progress=False)
    assert len(_lines(out)) == 6                        # 3 networks x 2 twins, all written
    calls = _counting(monkeypatch)
    records = proxy_runs.score_list("flops", codes, SPACE, None, out, progress=False)
    assert len(calls) == 2                              # only the 2 networks not done
    keys = [r["key"] for r in _lines(out)]
    assert sorted(keys) == sorted(codes) and len(keys) == len(set(keys))
    assert all(records[k]["score"] == SPACE.flops(c) for k, c in codes.items())


def test_runner_repairs_a_torn_last_line(tmp_path, monkeypatch):
    codes = _codes(3)
    out = tmp_path / "flops.jsonl"
    first = dict(list(codes.items())[:3])               # arch1, arch2 (twins) and arch3
    calls = _counting(monkeypatch)
    proxy_runs.score_list("flops", first, SPACE, None, out, progress=False)
    assert len(calls) == 2
    text = out.read_text()
    out.write_text(text[: text.rfind("\n", 0, len(text) - 1) + 1] + text.splitlines()[-1][:20])
    records = proxy_runs.score_list("flops", codes, SPACE, None, out, progress=False)
    # arch3 was torn off and is scored again; arch4 reuses arch3's network without computing.
    assert len(calls) == 4
    keys = [r["key"] for r in _lines(out)]
    assert sorted(keys) == sorted(codes) and len(keys) == len(set(keys))
    assert records["arch4"]["score"] == SPACE.flops(codes["arch4"])


def test_runner_refuses_a_log_of_other_settings(tmp_path, monkeypatch):
    _counting(monkeypatch)
    codes = _codes(1)
    out = tmp_path / "flops.jsonl"
    proxy_runs.score_list("flops", codes, SPACE, None, out, progress=False)
    with pytest.raises(ValueError, match="holds scores"):
        proxy_runs.score_list("flops", codes, SPACE, None, out, seed=1, progress=False)
    other = {k: SMALL for k in codes}
    with pytest.raises(ValueError, match="was scored for code"):
        proxy_runs.score_list("flops", other, SPACE, None, out, progress=False)


def test_proxy_settings():
    cfg = {"space": {"resolution": 32}, "proxies": {"batch_size": 64, "resolution": 0, "seed": 0,
                                                    "repeats": 1, "input": "data"}}
    assert proxy_runs.proxy_settings(cfg) == {"batch_size": 64, "resolution": 32, "seed": 0, "repeats": 1,
                                              "input": "data"}
    cfg["proxies"]["resolution"] = 64
    assert proxy_runs.proxy_settings(cfg)["resolution"] == 64
    with pytest.raises(ConfigError, match="proxies.input: 'noise' is not one of data, gaussian"):
        load_config(None, ["proxies.input=noise"])
    with pytest.raises(ConfigError, match="proxies.repeats: must be at least 0, got -1"):
        load_config(None, ["proxies.repeats=-1"])
    # repeats 0 (the default) is each proxy's own number of seeds; any other value is every proxy's.
    cfg = load_config(None, [])
    assert cfg["proxies"]["repeats"] == 0
    assert [proxy_runs.proxy_repeats(cfg, n) for n in ("snip", "meco", "meco_opt")] == [1, 1, 10]
    assert proxy_runs.proxy_seeds(cfg, "meco_opt") == list(range(10)) and proxy_runs.proxy_seeds(cfg, "flops") == []
    cfg = load_config(None, ["proxies.repeats=3", "proxies.seed=5"])
    assert [proxy_runs.proxy_repeats(cfg, n) for n in ("snip", "meco_opt")] == [3, 3]
    assert proxy_runs.proxy_seeds(cfg, "snip") == [5, 6, 7]


# -- input without a dataset ---------------------------------------------------------------------
def test_gaussian_batch_is_seeded_standard_normal_with_uniform_labels():
    x, y = proxy_runs.gaussian_batch(64, 16, 1000, seed=3)
    assert x.shape == [64, 3, 16, 16] and x.dtype == paddle.float32 and y.dtype == paddle.int64
    v = x.numpy()
    assert abs(v.mean()) < 0.02 and abs(v.std() - 1) < 0.02          # 49k draws: 5 sigma bounds
    labels = y.numpy()
    assert labels.min() >= 0 and labels.max() < 1000 and len(set(labels)) > 50
    x2, y2 = proxy_runs.gaussian_batch(64, 16, 1000, seed=3)
    np.testing.assert_array_equal(x2.numpy(), v)
    np.testing.assert_array_equal(y2.numpy(), labels)
    assert not np.array_equal(proxy_runs.gaussian_batch(64, 16, 1000, seed=4)[0].numpy(), v)


def _imagenet(tmp_path, *overrides):
    """configs/imagenet.yaml with an ImageNet folder that does not exist."""
    return load_config("configs/imagenet.yaml", [f"data.root={tmp_path / 'no_imagenet'}",
                                                 f"run.output_dir={tmp_path}", *overrides])


def test_input_batch_opens_the_dataset_only_for_data_proxies_with_input_data(tmp_path):
    from track1.data import DataError
    cfg = _imagenet(tmp_path, "proxies.batch_size=4", "proxies.resolution=24")
    assert proxy_runs.input_batch(cfg, ["flops", "params"]) is None
    x, y = proxy_runs.input_batch(cfg, ["synflow", "zen"])       # the shape, from no dataset
    assert x.shape == [4, 3, 24, 24]
    np.testing.assert_array_equal(x.numpy(), proxy_runs.gaussian_batch(4, 24, 1000, 0)[0].numpy())
    with pytest.raises(DataError, match="no_imagenet"):
        proxy_runs.input_batch(cfg, ["flops", "snip"])
    cfg = _imagenet(tmp_path, "proxies.batch_size=4", "proxies.resolution=24", "proxies.input=gaussian")
    x, y = proxy_runs.input_batch(cfg, ["snip"])
    assert x.shape == [4, 3, 24, 24] and int(y.numpy().max()) < 1000
    assert proxy_runs.input_kind(cfg, "snip") == "gaussian" and proxy_runs.input_kind(cfg, "zen") == "none"


def test_proxies_command_at_imagenet_scale_without_imagenet(tmp_path, capsys, official_codes):
    from track1.pipeline.cli import main
    from track1.space import SearchSpace
    from track1.ranking.submission import write_arch_list
    listed = tmp_path / "official3.json"
    picked = {f"arch{i + 1}": official_codes[i * 15000] for i in range(3)}
    write_arch_list(listed, picked)
    common = ["-c", "configs/imagenet.yaml", "--arch-list", str(listed), "-o", f"run.output_dir={tmp_path}",
              "-o", f"data.root={tmp_path / 'no_imagenet'}"]
    # Data-free: full width, 224 px, 1000 classes, no dataset.
    assert main(["proxies", "--proxy", "flops", *common]) == 0
    folder = tmp_path / "imagenet_sandwich" / "proxies"
    full = SearchSpace(1.0, 224, 1000)
    out = json.loads((folder / "official3@flops.json").read_text())
    assert {k: v["acc"] for k, v in out.items()} == {k: full.flops(c) for k, c in picked.items()}
    assert json.loads((folder / "official3@flops.meta.json").read_text())["input"] == {"flops": "none"}
    # A data proxy with proxies.input=data needs the folder: a one-line error, nothing written.
    cheap = ["-o", "space.width_mult=0.125", "-o", "proxies.batch_size=4", "-o", "proxies.resolution=32"]
    capsys.readouterr()
    assert main(["proxies", "--proxy", "snip", *common, *cheap]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_imagenet" in err and err.count("\n") == 1
    assert not list(folder.glob("*snip*"))
    # ... and with proxies.input=gaussian it does not; the cheaper resolution names its own files.
    assert main(["proxies", "--proxy", "snip", *common, *cheap, "-o", "proxies.input=gaussian"]) == 0
    out = json.loads((folder / "official3@snip@32px.json").read_text())
    meta = json.loads((folder / "official3@snip@32px.meta.json").read_text())
    assert meta["input"] == {"snip": "gaussian"} and meta["proxies"]["resolution"] == 32
    space = SearchSpace(0.125, 224, 1000)
    batch = proxy_runs.gaussian_batch(4, 32, 1000, 0)
    for key, code in picked.items():
        assert out[key]["acc"] == proxies.compute("snip", code, space, batch, seed=0)


# -- log names carry the settings; seeds in the output's name -----------------------------------
def _small_list(tmp_path, official_codes, n=2):
    from track1.ranking.submission import write_arch_list
    listed = tmp_path / f"small{n}.json"
    picked = {f"arch{i + 1}": official_codes[i * 7000] for i in range(n)}
    write_arch_list(listed, picked)
    return listed, picked


def _cheap(tmp_path, listed):
    return ["--arch-list", str(listed), "-o", f"run.output_dir={tmp_path}", "-o", "space.width_mult=0.125",
            "-o", "proxies.batch_size=2", "-o", "proxies.input=gaussian"]


def test_another_setting_starts_a_proxy_log_of_its_own(tmp_path, capsys, official_codes):
    from track1.pipeline.cli import main
    listed, picked = _small_list(tmp_path, official_codes)
    common = ["proxies", "--proxy", "grad_norm", *_cheap(tmp_path, listed)]
    assert main(common) == 0
    first = json.loads((tmp_path / "fmnist_sandwich" / "proxies" / "small2@grad_norm.json").read_text())
    # Another activation (and another batch) used to be refused: "holds scores for {...}".
    assert main(common + ["-o", "space.act=mish"]) == 0
    assert main(common + ["-o", "proxies.batch_size=3"]) == 0
    folder = tmp_path / "fmnist_sandwich" / "proxies"
    logs = sorted(folder.glob("small2@grad_norm.*.jsonl"))
    assert len(logs) == 3 and all(p.with_suffix(".settings.json").exists() for p in logs)
    acts = {json.loads(p.with_suffix(".settings.json").read_text())["act"] for p in logs}
    assert acts == {"relu", "mish"}
    # Back to the first setting: its own log is read (nothing recomputed, the same scores).
    before = {p: p.read_text() for p in logs}
    assert main(common) == 0
    assert {p: p.read_text() for p in logs} == before
    assert json.loads((folder / "small2@grad_norm.json").read_text()) == first


def test_a_proxy_log_of_the_old_name_is_still_read(tmp_path, official_codes):
    from track1.ranking.submission import load_arch_list
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "space.width_mult=0.125", "proxies.input=gaussian"])
    listed, picked = _small_list(tmp_path, official_codes)
    folder = tmp_path / "proxies"
    folder.mkdir()
    setting = proxy_runs.run_setting(cfg, "synflow")
    old = folder / "small2@synflow.jsonl"                # as every log was named before settings keys
    old.write_text("".join(json.dumps({"key": k, "code": c, "score": 100.0 + i, "seconds": 1.0, **setting}) + "\n"
                           for i, (k, c) in enumerate(picked.items())))
    final = proxy_runs.score_proxies(cfg, load_arch_list(listed), "small2", "synflow", folder)
    assert [v["acc"] for v in json.loads(final.read_text()).values()] == [100.0, 101.0]
    assert not list(folder.glob("small2@synflow.*.jsonl"))
    # An old log of another setting is left alone: the new setting starts a keyed log.
    cfg["proxies"]["seed"] = 1
    final = proxy_runs.score_proxies(cfg, load_arch_list(listed), "small2", "synflow", folder)
    assert final.name == "small2@synflow@seed1.json" and len(list(folder.glob("small2@synflow.*.jsonl"))) == 1
    assert 100.0 not in [v["acc"] for v in json.loads(final.read_text()).values()]


def test_proxies_command_meco_opt_names_its_seeds_and_warns(tmp_path, capsys, official_codes):
    from track1.pipeline.cli import main
    listed, picked = _small_list(tmp_path, official_codes, n=1)
    assert main(["proxies", "--proxy", "meco_opt", *_cheap(tmp_path, listed)]) == 0
    err = capsys.readouterr().err
    assert [l[:28] for l in err.splitlines() if l.startswith("warning")] == ["warning: meco_opt at 32 px: "]
    folder = tmp_path / "fmnist_sandwich" / "proxies"
    out = json.loads((folder / "small1@meco_opt@seeds0-9.json").read_text())
    meta = json.loads((folder / "small1@meco_opt@seeds0-9.meta.json").read_text())
    assert meta["seeds"] == {"meco_opt": list(range(10))} and meta["input"] == {"meco_opt": "none"}
    space = SearchSpace(0.125, 32, 10)
    expected = np.mean([proxies.compute("meco_opt", picked["arch1"], space, None, seed=s, repeats=1)
                        for s in range(10)])
    assert out["arch1"]["acc"] == pytest.approx(expected, rel=1e-12)
    # An ensemble with members of other seeds names each member's.
    cfg = load_config(None, [])
    assert proxy_runs.seeds_tag(cfg, ["flops", "snip", "meco_opt"]) == "@meco_opt-seeds0-9"
    assert proxy_runs.seeds_tag(cfg, ["flops", "snip"]) == "" and proxy_runs.seeds_tag(cfg, ["flops"]) == ""
    cfg = load_config(None, ["proxies.seed=2"])
    assert proxy_runs.seeds_tag(cfg, ["snip", "meco_opt"]) == "@snip-seed2+meco_opt-seeds2-11"
    assert proxy_runs.output_name(cfg, "list", "meco_opt") == "list@meco_opt@seeds2-11.json"

import json

import numpy as np
import pytest
from scipy import stats

from track1.pipeline import standalone
from track1.pipeline.config import ConfigError, load_config
from track1.files import read_jsonl
from track1.space import Arch, SearchSpace
from track1.ranking.submission import demo_arch_list
from track1.network.resnet import BasicBlock

from conftest import REPO, tiny_config

# The whole `standalone:` section at test size (set in full, so the tests do not depend on
# default.yaml's values).
SECTION = {
    "epochs": 1, "optimizer": "momentum", "lr": 0.1, "min_lr": 0.0, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5.0e-4,
    "no_decay_bn_bias": True, "warmup_epochs": 0.2, "label_smoothing": 0.0, "grad_clip": 1.0,
    "batch_size": 32, "train_size": 128, "zero_init_residual": True, "val_images": 64,
    "seeds": [0, 1], "num_codes": 0, "log_every": 1, "visualdl": True, "init_from": "",
}
SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)
CODES = demo_arch_list(3, 11, SPACE)


def _cfg(tmp_path, **changes):
    cfg = tiny_config(tmp_path)
    cfg["standalone"] = {**SECTION, **changes}
    return cfg


def _weights(net):
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


def test_same_seed_same_result_and_different_seeds_differ(tmp_path):
    cfg = _cfg(tmp_path)
    code = CODES["arch1"]
    a = standalone.train_standalone(cfg, code, 0, tmp_path / "a")
    b = standalone.train_standalone(cfg, code, 0, tmp_path / "b")
    assert (a["acc"], a["loss"]) == (b["acc"], b["loss"])
    assert a["epochs"] == 1.0 and a["seconds"] > 0 and 0.0 <= a["acc"] <= 1.0
    assert (tmp_path / "a" / "vdl" / f"{code}_s0").is_dir()
    # Seeds change the initialisation and, through the data order, the trained weights.
    _, n0 = standalone.build_network(cfg, code, 0)
    _, n1 = standalone.build_network(cfg, code, 1)
    init0, init1 = _weights(n0), _weights(n1)
    assert not np.array_equal(init0["stem_conv.weight"], init1["stem_conv.weight"])
    standalone.fit(cfg, n0, 0)
    standalone.fit(cfg, n1, 1)
    t0, t1 = _weights(n0), _weights(n1)
    assert not np.array_equal(t0["fc.weight"], init0["fc.weight"])  # training moved the weights
    assert not np.array_equal(t0["fc.weight"], t1["fc.weight"])


def test_data_order_is_that_of_the_seed():
    cfg = tiny_config(REPO / "unused")
    cfg["standalone"] = dict(SECTION)
    d = standalone.data_config(cfg, 5)
    assert (d["data"]["batch_size"], d["data"]["train_size"], d["run"]["seed"]) == (32, 128, 5)
    assert cfg["run"]["seed"] == 42 and cfg["data"]["batch_size"] == 32  # the original is untouched


def test_zero_init_residual_zeroes_the_last_bn_scale(tmp_path):
    code = CODES["arch2"]
    _, net = standalone.build_network(_cfg(tmp_path), code, 0)
    blocks = [m for m in net.sublayers() if isinstance(m, BasicBlock)]
    assert len(blocks) == sum(SPACE.widths(code).depths)
    assert all(not b.bn2.weight.numpy().any() for b in blocks)
    assert all((b.bn1.weight.numpy() == 1).all() for b in blocks)
    _, net = standalone.build_network(_cfg(tmp_path, zero_init_residual=False), code, 0)
    assert all((m.bn2.weight.numpy() == 1).all() for m in net.sublayers() if isinstance(m, BasicBlock))


def test_run_standalone_for_real(tmp_path):
    cfg = _cfg(tmp_path)
    codes = {"arch1": CODES["arch1"], "arch3": CODES["arch3"]}
    out = tmp_path / "gt" / "list.jsonl"
    summary = standalone.run_standalone(cfg, codes, [0], out, progress=False)
    written = json.loads(out.with_suffix(".json").read_text())
    assert written == summary and list(written) == ["arch1", "arch3"]
    recs = list(read_jsonl(out))
    assert [(r["key"], r["seed"]) for r in recs] == [("arch1", 0), ("arch3", 0)]
    assert written["arch3"]["acc"] == recs[1]["acc"] and written["arch3"]["accs"] == [recs[1]["acc"]]
    assert (tmp_path / "gt" / "list" / "vdl" / f"{codes['arch3']}_s0").is_dir()


class _Fake:
    """Stands in for train_standalone: acc from (code, seed); raises after `fail_after` calls."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = [], fail_after

    def __call__(self, cfg, code, seed, out_dir, progress=False):
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt
        self.calls.append((code, seed))
        acc = (sum(map(int, code)) % 50) / 100 + seed / 1000
        return {"acc": acc, "loss": 1.0 - acc, "seconds": 0.5, "epochs": 1.0}


def test_run_standalone_resumes_without_redoing_pairs(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    out = tmp_path / "gt.jsonl"
    seeds = [0, 1, 2]
    first = _Fake(fail_after=4)
    monkeypatch.setattr(standalone, "train_standalone", first)
    with pytest.raises(KeyboardInterrupt):
        standalone.run_standalone(cfg, CODES, seeds, out, progress=False)
    assert len(list(read_jsonl(out))) == 4 and not out.with_suffix(".json").exists()
    with open(out, "a") as f:
        f.write('{"key": "arch2", "se')  # a kill in the middle of an append
    second = _Fake()
    monkeypatch.setattr(standalone, "train_standalone", second)
    summary = standalone.run_standalone(cfg, CODES, seeds, out, progress=False)
    all_pairs = [(c, s) for c in CODES.values() for s in seeds]
    assert first.calls == all_pairs[:4] and second.calls == all_pairs[4:]
    recs = list(read_jsonl(out))
    assert len(recs) == 9 and {r["recipe"] for r in recs} == {standalone.recipe_hash(cfg)}
    official = json.loads(out.with_suffix(".json").read_text())
    assert official == summary and list(official) == list(CODES)
    for key, code in CODES.items():
        accs = [_Fake()(cfg, code, s, None)["acc"] for s in seeds]
        assert official[key] == {"acc": pytest.approx(np.mean(accs)), "arch": code, "accs": accs}
    # Everything done: a third run trains nothing.
    third = _Fake()
    monkeypatch.setattr(standalone, "train_standalone", third)
    standalone.run_standalone(cfg, CODES, seeds, out, progress=False)
    assert third.calls == []


def test_run_standalone_refuses_another_recipe_or_code(tmp_path, monkeypatch):
    monkeypatch.setattr(standalone, "train_standalone", _Fake())
    out = tmp_path / "gt.jsonl"
    standalone.run_standalone(_cfg(tmp_path), CODES, [0], out, progress=False)
    with pytest.raises(standalone.StandaloneError, match="recipe"):
        standalone.run_standalone(_cfg(tmp_path, lr=0.05), CODES, [0], out, progress=False)
    # Keys that do not change a result may change.
    standalone.run_standalone(_cfg(tmp_path, log_every=5, seeds=[3]), CODES, [0], out, progress=False)
    other = {**CODES, "arch1": CODES["arch2"]}
    with pytest.raises(standalone.StandaloneError, match="key 'arch1' was trained as"):
        standalone.run_standalone(_cfg(tmp_path), other, [0], out, progress=False)
    with pytest.raises(ValueError, match="must not end in .json"):
        standalone.run_standalone(_cfg(tmp_path), CODES, [0], tmp_path / "gt.json", progress=False)


def test_equal_networks_are_trained_once_per_seed(tmp_path, monkeypatch):
    # Stage-1 ratio codes 3 and 4 both give make_divisible(64 * r) = 56: one network, two codes.
    blocks = (((3, 3), (1, 1)), ((1, 1), (1, 1)), ((1, 1), (1, 1)), ((1, 1), (1, 1)))
    a = Arch(1, (2, 2, 2, 2), 1, blocks).code
    b = Arch(1, (2, 2, 2, 2), 1, (((4, 3), (1, 1)),) + blocks[1:]).code
    assert a != b and SPACE.widths(a) == SPACE.widths(b)
    fake = _Fake()
    monkeypatch.setattr(standalone, "train_standalone", fake)
    summary = standalone.run_standalone(_cfg(tmp_path), {"x": a, "y": b}, [0, 1], tmp_path / "g.jsonl",
                                        progress=False)
    assert fake.calls == [(a, 0), (a, 1)]
    assert summary["y"]["accs"] == summary["x"]["accs"] and summary["y"]["arch"] == b
    assert [r["seconds"] for r in read_jsonl(tmp_path / "g.jsonl") if r["key"] == "y"] == [0.0, 0.0]


def test_spread_codes_covers_the_flops_range():
    codes = demo_arch_list(50, 3, SPACE)
    picked = standalone.spread_codes(codes, SPACE, 5)
    flops = {k: SPACE.flops(c) for k, c in codes.items()}
    assert len(picked) == 5 and list(picked) == [k for k in codes if k in picked]  # list order
    assert min(flops[k] for k in picked) == min(flops.values())
    assert max(flops[k] for k in picked) == max(flops.values())
    assert standalone.spread_codes(codes, SPACE, 5) == picked
    assert standalone.spread_codes(codes, SPACE, 0) == codes


def _records(table):
    return [{"code": c, "seed": s, "acc": a} for c, row in table.items() for s, a in row.items()]


def test_ceiling():
    codes = list(CODES.values()) + list(demo_arch_list(5, 4).values())
    base = np.linspace(0.6, 0.9, len(codes))
    same = {c: {s: float(v) for s in (0, 1, 2)} for c, v in zip(codes, base)}
    c = standalone.ceiling(_records(same))
    assert c["half_kendall"] == pytest.approx(1.0) and c["pair_kendall"] == pytest.approx(1.0)
    assert (c["seeds"], c["codes"], c["splits"], c["pairs"]) == (3, len(codes), 3, 3)
    # Noisy seeds: compare with a direct computation.
    rng = np.random.default_rng(0)
    acc = base[:, None] + rng.normal(0, 0.05, (len(codes), 3))
    noisy = {c: {s: float(acc[i, s]) for s in range(3)} for i, c in enumerate(codes)}
    order = np.argsort(codes)  # ceiling sorts codes; tau does not depend on the order anyway
    acc = acc[order]
    tau = lambda x, y: stats.kendalltau(x, y).statistic
    half = np.mean([tau(acc[:, i], acc[:, [j for j in range(3) if j != i]].mean(1)) for i in range(3)])
    pair = np.mean([tau(acc[:, 0], acc[:, 1]), tau(acc[:, 0], acc[:, 2]), tau(acc[:, 1], acc[:, 2])])
    c = standalone.ceiling(_records(noisy))
    assert c["half_kendall"] == pytest.approx(half) and c["pair_kendall"] == pytest.approx(pair)
    assert c["pair_kendall"] < 1.0
    # The official-shape summary with "accs" gives the same answer.
    summary = {f"arch{i}": {"acc": 0.0, "arch": code, "accs": [noisy[code][s] for s in range(3)]}
               for i, code in enumerate(codes)}
    assert standalone.ceiling(summary) == c
    # Two seeds: one split, one pair, the same tau. Four seeds: 3 distinct half-splits.
    two = standalone.ceiling([r for r in _records(noisy) if r["seed"] < 2])
    assert two["splits"] == two["pairs"] == 1 and two["half_kendall"] == two["pair_kendall"]
    four = {c: {**row, 3: row[0]} for c, row in noisy.items()}
    assert standalone.ceiling(_records(four))["splits"] == 3
    with pytest.raises(ValueError, match="at least 2 seeds"):
        standalone.ceiling([r for r in _records(noisy) if r["seed"] == 0])


def test_ceiling_separates_signal_from_seed_noise():
    """Many synthetic codes with known spread (0.02) and seed noise (0.01): both are recovered, and
    the seeds it asks for do give the promised agreement on fresh draws."""
    rng = np.random.default_rng(1)
    codes = list(demo_arch_list(400, 5).values())
    true = rng.normal(0.85, 0.02, len(codes))
    draw = lambda seeds: {c: {s: float(true[i] + rng.normal(0, 0.01)) for s in seeds}
                          for i, c in enumerate(codes)}
    c = standalone.ceiling(_records(draw(range(3))))
    assert c["seed_std"] == pytest.approx(0.01, rel=0.08)
    assert c["signal_std"] == pytest.approx(true.std(ddof=1), rel=0.08)
    n = c["seeds_for_0.8"]
    r = np.sin(0.4 * np.pi)
    assert n == pytest.approx((c["seed_std"] / c["signal_std"]) ** 2 * r / (1 - r))
    assert 3 < n < 9  # the true ratio gives 0.25 * r / (1 - r) = 4.9
    k = int(np.ceil(n))
    halves = [draw(range(k)) for _ in range(2)]
    means = [np.array([np.mean(list(h[c].values())) for c in codes]) for h in halves]
    assert stats.kendalltau(*means).statistic == pytest.approx(0.8, abs=0.05)
    # No signal at all: no number of seeds is enough.
    flat = {c: {s: float(0.85 + rng.normal(0, 0.01)) for s in range(3)} for c in codes[:50]}
    assert standalone.seeds_for_kendall(0.8, 1e-4, 0.0) == float("inf")
    assert standalone.ceiling(_records(flat))["signal_std"] < 0.003


def test_config_section():
    cfg = load_config()
    assert set(cfg["standalone"]) == set(SECTION)
    longer = load_config(REPO / "configs" / "standalone.yaml")
    assert set(longer["standalone"]) == set(SECTION)
    assert longer["standalone"]["epochs"] > cfg["standalone"]["epochs"]
    # The benchmark recipe is the one its committed ground truth was made with.
    bench = load_config(REPO / "configs" / "benchmark.yaml")
    truth = REPO / "benchmarks" / "ground_truth" / f"fmnist_w0125@{standalone.recipe_hash(bench)}.jsonl"
    assert truth.exists(), f"{truth.name}: configs/benchmark.yaml no longer matches the committed truth"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["standalone.output=x"])


def test_standalone_command_prints_the_ceiling_and_signal_to_noise(tmp_path, monkeypatch, capsys):
    from track1.pipeline.cli import main
    from track1.ranking.submission import write_arch_list
    monkeypatch.setattr(standalone, "train_standalone", _Fake())
    listed = tmp_path / "list.json"
    write_arch_list(listed, demo_arch_list(6, 2, SPACE))
    args = ["standalone", "--arch-list", str(listed), "--out", str(tmp_path / "gt.jsonl"),
            "-o", "space.width_mult=0.125", "-o", "standalone.num_codes=0", "-o", "standalone.seeds=[0,1,2]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    c = standalone.ceiling(json.loads((tmp_path / "gt.json").read_text()))
    assert c["codes"] == 6 and c["seed_std"] > 0
    assert f"the other half {c['half_kendall']:.4f}, one seed vs another {c['pair_kendall']:.4f}" in out
    assert f"spread of the codes {c['signal_std']:.4f} vs seed noise {c['seed_std']:.4f}" in out

import numpy as np
import paddle
import pytest

from track1.files import read_jsonl
from track1.ranking.evaluate import calibrate_bn, evaluate
from track1.ranking.scoring import score_list
from track1.space import Arch, SearchSpace, parse
from track1.ranking.submission import SubmissionError, demo_arch_list
from track1.network.layers import set_bn_stats
from track1.network.supernet import SuperNet

SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)


@pytest.fixture
def net():
    paddle.seed(0)
    return SuperNet(SPACE)


def _batches(n, size, seed):
    rng = np.random.default_rng(seed)
    return [paddle.to_tensor(rng.normal(size=(size, 3, 32, 32)).astype("float32")) for _ in range(n)]


@pytest.mark.parametrize("bn_stats", ["batch", "frozen"])
def test_calibration_is_the_exact_average_of_batch_statistics(net, bn_stats):
    """Also of a supernet trained with frozen statistics (train.bn_stats), which it leaves frozen."""
    set_bn_stats(net, bn_stats)
    widths = SPACE.widths(SPACE.smallest())
    batches = _batches(3, 8, 0)
    net.stem_bn._mean.set_value(paddle.full_like(net.stem_bn._mean, 7.0))  # stale statistics
    calibrate_bn(net, widths, batches)
    c = widths.stem
    # The stem BN sees the stem conv's output; its per-batch channel means, averaged.
    means = [net.stem_conv(x, c).numpy().mean(axis=(0, 2, 3)) for x in batches]
    np.testing.assert_allclose(net.stem_bn._mean.numpy()[:c], np.mean(means, axis=0), rtol=1e-4, atol=1e-6)
    assert net.stem_bn._mean.numpy()[c:].tolist() == [7.0] * (net.stem_bn.num_features - c)
    assert all(bn.momentum == 0.9 for bn in net.bn_layers()) and not net.training
    assert all(bn.frozen == (bn_stats == "frozen") for bn in net.bn_layers())


def test_evaluate_counts_top1_and_loss(net):
    widths = SPACE.widths(SPACE.largest())
    x = _batches(1, 6, 1)[0]
    calibrate_bn(net, widths, [x])  # keeps the logits in a range where CE is not clipped
    logits = net(x, widths).numpy()
    y = paddle.to_tensor(np.array([logits[i].argmax() if i < 4 else (logits[i].argmax() + 1) % 10
                                   for i in range(6)], dtype="int64"))
    acc, loss = evaluate(net, widths, [(x, y)])
    assert acc == pytest.approx(4 / 6)
    lg = logits - logits.max(1, keepdims=True)
    ce = -(lg[np.arange(6), y.numpy()] - np.log(np.exp(lg).sum(1))).mean()
    assert loss == pytest.approx(ce, rel=1e-5)


def _with_stage1_output(code: str, ratio: int) -> str:
    a = parse(code)
    return Arch(1, a.depths, ratio, (tuple((m, ratio) for m, _ in a.blocks[0]),) + a.blocks[1:]).code


def test_score_list_resumes_and_shares_equal_networks(tmp_path, monkeypatch):
    # Both modes convolve with the fast mode here; with different kernels this untrained net on
    # batches of 4 would amplify their float rounding to 1.5e-4 in the loss.
    paddle.seed(0)
    net = SuperNet(SPACE, conv="fast")
    codes = demo_arch_list(6, seed=1)
    # Stage-1 (and stem) ratio codes 1 and 2 both give 64 channels (0.95 * 64 rounds back to 64):
    # two official codes, one network.
    codes["stem1"], codes["stem2"] = (_with_stage1_output(codes["arch1"], r) for r in (1, 2))
    assert SPACE.widths(codes["stem1"]) == SPACE.widths(codes["stem2"])
    calib, val = _batches(2, 4, 2), [(x, paddle.zeros([4], dtype="int64")) for x in _batches(1, 4, 3)]
    out = tmp_path / "scores.jsonl"
    full = score_list(net, SPACE, codes, calib, val, tmp_path / "full.jsonl", "per_code", 1024, progress=False)
    tree = score_list(net, SPACE, codes, calib, val, tmp_path / "tree.jsonl", "tree", 1024, progress=False)
    for k in codes:
        assert tree[k]["acc"] == full[k]["acc"]
        assert tree[k]["loss"] == pytest.approx(full[k]["loss"], rel=1e-4, abs=1e-6)

    import track1.ranking.scoring as scoring
    real, calls = scoring.score_widths, []

    def dying(*a):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a)
    monkeypatch.setattr(scoring, "score_widths", dying)
    with pytest.raises(KeyboardInterrupt):
        score_list(net, SPACE, codes, calib, val, out, "per_code", 1024, progress=False)
    with open(out, "a") as f:
        f.write('{"key": "arch9", "co')  # torn line of a killed write
    monkeypatch.setattr(scoring, "score_widths", real)
    resumed = score_list(net, SPACE, codes, calib, val, out, "per_code", 1024, progress=False)
    keys = [r["key"] for r in read_jsonl(out)]
    assert sorted(keys) == sorted(codes) and len(keys) == len(set(keys))
    for k in codes:
        assert resumed[k]["acc"] == full[k]["acc"] and resumed[k]["loss"] == pytest.approx(full[k]["loss"], rel=1e-6)
        # the scoring-noise fields resume too (track1.ranking.halves)
        assert [resumed[k][f] for f in ("acc_se", "images", "half_correct")] == \
            [full[k][f] for f in ("acc_se", "images", "half_correct")]
        assert resumed[k]["half_loss"] == pytest.approx(full[k]["half_loss"], rel=1e-6)
    assert full["stem1"]["loss"] == full["stem2"]["loss"]
    same = [k for k in codes if SPACE.widths(codes[k]) == SPACE.widths(codes["stem1"])]
    assert sum(full[k]["seconds"] > 0 for k in same) == 1  # the network was scored once
    # Another list whose keys name other codes cannot take these results for its own.
    other = {"arch1": codes["arch2"], "arch2": codes["arch1"]}
    with pytest.raises(ValueError, match="key 'arch1' was scored for code .*use another output file"):
        score_list(net, SPACE, other, calib, val, out, "per_code", 1024, progress=False)


def test_score_list_refuses_a_code_outside_the_official_sub_space(net, tmp_path):
    codes = demo_arch_list(3, seed=4)
    a = parse(codes["arch2"])
    untied = a.blocks[1][:-1] + ((a.blocks[1][-1][0], 3 if a.blocks[1][0][1] != 3 else 1),)
    codes["arch2"] = Arch(1, a.depths, a.stem_ratio, (a.blocks[0], untied) + a.blocks[2:]).code
    out = tmp_path / "scores.jsonl"
    for mode in ("tree", "per_code"):
        with pytest.raises(SubmissionError, match=f"scores.jsonl: 1 code outside the official sub-space "
                                                  f".* arch2, code {codes['arch2']}: stage 2 block "
                                                  f"{len(untied)} has output"):
            score_list(net, SPACE, codes, [], [], out, mode, 1024, progress=False)
    assert not out.exists()  # nothing written


def test_score_records_carry_the_standard_error_and_per_half_sums_in_both_modes(tmp_path):
    from track1.ranking.evaluate import batch_outcomes, calibrate_bn
    from track1.ranking.halves import SPLITS, SplitHalves
    paddle.seed(0)
    net = SuperNet(SPACE, conv="fast")
    codes = demo_arch_list(4, seed=2)
    rng = np.random.default_rng(6)
    calib = _batches(2, 8, 2)
    val = [(x, paddle.to_tensor(rng.integers(0, 10, 12).astype("int64"))) for x in _batches(3, 12, 3)]
    got = {mode: score_list(net, SPACE, codes, calib, val, tmp_path / f"{mode}.jsonl", mode, 16, progress=False)
           for mode in ("per_code", "tree")}  # chunks of 16 images: the tree's tallies span walks
    rows = SplitHalves().rows(0, 36)
    for k, code in codes.items():
        per_code, tree = got["per_code"][k], got["tree"][k]
        assert per_code["images"] == tree["images"] == 36 and len(per_code["half_correct"]) == SPLITS
        assert per_code["acc_se"] == pytest.approx(np.sqrt(per_code["acc"] * (1 - per_code["acc"]) / 35))
        assert tree["half_correct"] == per_code["half_correct"]
        assert tree["half_loss"] == pytest.approx(per_code["half_loss"], rel=1e-4, abs=1e-5)
        # by hand: this network's per-image outcomes summed over half A of each split
        widths = SPACE.widths(code)
        calibrate_bn(net, widths, calib)
        correct, losses = zip(*(batch_outcomes(net(x, widths), y) for x, y in val))
        correct, losses = np.concatenate(correct), np.concatenate(losses)
        assert per_code["half_correct"] == (correct @ rows).round().astype(int).tolist()
        assert per_code["half_loss"] == pytest.approx((losses @ rows).tolist(), rel=1e-5, abs=1e-5)
        assert correct.mean() == per_code["acc"]

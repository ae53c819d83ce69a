"""MeCo: the layer term against numpy, the hooked outputs against a forward written out by hand, why plain MeCo degenerates."""
from __future__ import annotations

import warnings

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from track1.network.resnet import ResNet
from track1.ranking import meco, proxies
from track1.space import STEM_POOL, SearchSpace

SPACE = SearchSpace(width_mult=0.125, resolution=64, num_classes=10)
CODE = SPACE.sample(np.random.default_rng(3)).code


def _reference_term(fea: np.ndarray) -> float:
    """The authors' formula in plain numpy: Pearson correlation of the rows, NaN/inf -> 0, the
    smallest real part of the (general) eigenvalues."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # one position: no degrees of freedom
        corr = np.corrcoef(fea.astype(np.float64))
    corr = np.where(np.isfinite(corr), corr, 0.0)
    return float(np.min(np.real(np.linalg.eig(corr)[0])))


def test_layer_term_is_the_smallest_eigenvalue_of_the_channel_correlation():
    rng = np.random.default_rng(0)
    fea = rng.standard_normal((6, 40)).astype(np.float32)
    fea[:, :20] += 2 * fea[0, :20]                        # correlated channels: a clearly smaller eigenvalue
    assert meco.layer_term(fea) == pytest.approx(_reference_term(fea), abs=1e-12)
    assert 0 < meco.layer_term(fea) < 0.9
    # A constant channel has no correlation: its row and column become 0, and so does the eigenvalue.
    fea[2] = 1.5
    assert meco.layer_term(fea) == pytest.approx(0.0, abs=1e-12)
    # A single position (the head's outputs): every correlation is NaN, the term 0.
    assert meco.layer_term(rng.standard_normal((10, 1))) == 0.0


def test_opt_term_draws_8_channels_and_scales_by_channels_over_8():
    fea = np.random.default_rng(1).standard_normal((40, 50)).astype(np.float32)
    picked = np.random.default_rng(7).choice(40, 8, replace=False)
    expected = _reference_term(fea[picked]) * 40 / 8
    assert meco.layer_term(fea, np.random.default_rng(7)) == pytest.approx(expected, rel=1e-12)
    # Fewer than 8 channels: all of them, unscaled (plain MeCo's term), and no draw.
    small = fea[:5]
    rng = np.random.default_rng(7)
    assert meco.layer_term(small, rng) == pytest.approx(_reference_term(small), abs=1e-12)
    assert rng.choice(40, 8, replace=False).tolist() == picked.tolist()


def test_total_drops_terms_that_are_not_finite():
    assert meco.total([1.0, float("nan"), -0.5, float("inf")]) == 0.5


def _maps_by_hand(net: ResNet, x: paddle.Tensor) -> list[np.ndarray]:
    """The first image's outputs a torch ResNet's module hooks would see, the forward written out."""
    maps = []

    def keep(t):
        maps.append(t.numpy()[0].reshape(t.shape[1], -1))
        return t

    with paddle.no_grad():
        y = keep(net.stem_bn(keep(net.stem_conv(x))))
        y = keep(F.max_pool2d(keep(F.relu(y)), *STEM_POOL))
        for stage in net.stages:
            for block in stage:
                h = keep(F.relu(keep(block.bn1(keep(block.conv1(y))))))
                h = keep(block.bn2(keep(block.conv2(h))))
                short = keep(block.shortcut_bn(keep(block.shortcut_conv(y)))) if block.projection else y
                y = keep(block.act(h + short))
                keep(y)                                    # the block's own output
        pooled = keep(net.avgpool(y))
        logits = keep(net.fc(pooled.flatten(1)))
        keep(logits)                                       # the network's output
    return maps


@pytest.mark.parametrize("opt", [False, True])
def test_meco_of_a_resnet_against_the_forward_by_hand(opt):
    seed = 4
    name = "meco_opt" if opt else "meco"
    score = proxies.compute(name, CODE, SPACE, None, seed=seed, repeats=1)
    paddle.seed(seed)
    net = ResNet(SPACE.widths(CODE), SPACE, "relu", "fast")
    net.train()
    rng = np.random.default_rng(seed)                      # the image, then the channel draws in order
    x = paddle.to_tensor(rng.standard_normal((1, 3, 64, 64), dtype=np.float32))
    maps = _maps_by_hand(net, x)
    assert [m.shape for m in maps[:-3]] == [tuple(s) for s in meco.output_shapes(SPACE.widths(CODE), 64)]
    terms = []
    for fea in maps:
        scale = 1.0
        if opt and fea.shape[0] > 8:
            idx = rng.choice(fea.shape[0], 8, replace=False)
            fea, scale = fea[idx], fea.shape[0] / 8
        terms.append(_reference_term(fea) * scale)
    expected = float(np.sum([t for t in terms if np.isfinite(t)]))
    assert score == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert abs(expected) > 1.0


def test_meco_opt_averages_its_default_ten_seeds():
    one = [proxies.compute("meco_opt", CODE, SPACE, None, seed=s, repeats=1) for s in range(10)]
    assert len(set(one)) == 10                             # each seed: its own init, image and draws
    assert proxies.compute("meco_opt", CODE, SPACE, None, seed=0) == pytest.approx(np.mean(one), rel=1e-12)
    assert proxies.compute("meco", CODE, SPACE, None, seed=0) == proxies.compute("meco", CODE, SPACE, None,
                                                                                  seed=0, repeats=1)


def test_plain_meco_degenerates_when_channels_outnumber_positions():
    rng = np.random.default_rng(2)
    # k centred rows of P positions span at most P - 1 dimensions: k >= P leaves eigenvalue 0.
    for channels, positions in [(9, 9), (64, 49), (512, 49)]:
        fea = rng.standard_normal((channels, positions)).astype(np.float32)
        assert abs(meco.layer_term(fea)) < 1e-10, (channels, positions)
        assert meco.layer_term(fea, np.random.default_rng(0)) > 1e-4     # 8 sampled channels
    assert meco.layer_term(rng.standard_normal((8, 9))) > 1e-3
    assert abs(meco.layer_term(rng.standard_normal((8, 8)), np.random.default_rng(0))) < 1e-10
    # In a real network every output of that shape is 0 whatever the weights: the score ignores them.
    paddle.seed(0)
    net = ResNet(SPACE.max_widths, SPACE, "relu", "fast")
    net.train()
    maps = proxies.meco_maps(net, paddle.randn([1, 3, 64, 64]))
    flat = [m for m in maps if m.shape[0] >= m.shape[1] > 1]
    assert len(flat) == len(meco.degenerate(SPACE.max_widths, 64, opt=False)) > 10
    assert all(abs(meco.layer_term(m)) < 1e-5 for m in flat)
    rest = meco.total([meco.layer_term(m) for m in maps if m.shape[0] < m.shape[1]])
    assert rest > 0.1 and meco.total([meco.layer_term(m) for m in maps]) == pytest.approx(rest, abs=1e-4)


def test_degenerate_note_at_the_competition_scale():
    full = SearchSpace(1.0, 224, 1000)
    note = meco.degenerate_note("meco", full, 224)
    assert note.startswith("warning: meco at 224 px: ") and "(up to 512 channels on 49)" in note
    assert "\n" not in note and "meco_opt samples 8 channels" in note
    assert meco.degenerate_note("meco_opt", full, 224) is None
    note = meco.degenerate_note("meco_opt", full, 64)      # the last stage at 2x2
    assert note.startswith("warning: meco_opt at 64 px: ") and "(down to 4)" in note

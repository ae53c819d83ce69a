"""Bootstrap intervals of the rank metrics, on synthetic data with known answers."""
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from track1.ranking import intervals
from track1.ranking.intervals import (metric_draws, paired_difference, percentile_interval, rank_intervals,
                                      resample_counts)
from track1.ranking.metrics import rank_metrics


def _scores(values, prefix="c"):
    return {f"{prefix}{i:05d}": float(v) for i, v in enumerate(values)}


def _gaussian(n, rho, seed):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal(n)
    return rho * t + math.sqrt(1 - rho ** 2) * rng.standard_normal(n), t


def test_identical_predictions_give_an_interval_collapsed_to_the_point():
    truth = _scores(np.random.default_rng(0).normal(0.7, 0.05, 40))
    m = rank_metrics(truth, truth)
    ci = rank_intervals(dict(truth), truth, resamples=300, seed=1)
    for name in ("kendall", "spearman", "pearson", "top5", "top10"):
        assert m[name] == pytest.approx(1.0)
        assert ci[name] == pytest.approx([1.0, 1.0], abs=1e-12), name


def test_an_unrelated_prediction_covers_zero_and_a_related_one_does_not():
    pred, truth = _gaussian(60, 0.0, seed=3)
    ci = rank_intervals(_scores(pred), _scores(truth), resamples=500, seed=0)
    for name in ("kendall", "spearman", "pearson"):
        assert ci[name][0] < 0 < ci[name][1], (name, ci[name])
    related, truth = _gaussian(60, 0.7, seed=3)
    ci = rank_intervals(_scores(related), _scores(truth), resamples=500, seed=0)
    for name in ("kendall", "spearman", "pearson"):
        assert ci[name][0] > 0.2, (name, ci[name])


@pytest.mark.parametrize("n", [200, 600])  # the vectorised quadratic form and the scipy path
def test_the_bootstrap_spread_matches_the_known_standard_error(n):
    pred, truth = _gaussian(n, 0.5, seed=n)
    d = metric_draws(pred, truth, [str(i) for i in range(n)], resamples=1000, seed=2)
    # The known large-n standard errors for bivariate normal data, at the sample's correlation:
    # Pearson (1 - r^2) / sqrt(n); Kendall sqrt(4 / n * (1/9 - (2/pi * asin(rho/2))^2)) with
    # rho = sin(pi tau / 2) (Greiner).
    r = np.corrcoef(pred, truth)[0, 1]
    tau = stats.kendalltau(pred, truth)[0]
    rho = math.sin(math.pi * tau / 2)
    assert d["pearson"].std() == pytest.approx((1 - r ** 2) / math.sqrt(n), rel=0.1)
    assert d["kendall"].std() == pytest.approx(math.sqrt(4 / n * (1 / 9 - (2 / math.pi * math.asin(rho / 2)) ** 2)),
                                               rel=0.1)
    assert np.median(d["kendall"]) == pytest.approx(tau, abs=0.01)


def test_the_draws_are_the_metrics_of_the_expanded_resamples():
    rng = np.random.default_rng(5)
    for n in (25, 450):
        x, y = np.round(rng.standard_normal(n), 1), rng.standard_normal(n)  # ties in x
        x[:3] = y[:3].max() + 1  # the predicted top ties too
        codes = [f"c{i:04d}" for i in range(n)]
        d = metric_draws(x, y, codes, ks=(5,), resamples=12, seed=7)
        for row, w in enumerate(next(resample_counts(n, 12, 7))):
            drawn = np.repeat(np.arange(n), w.astype(int))
            assert d["kendall"][row] == pytest.approx(stats.kendalltau(x[drawn], y[drawn])[0], abs=1e-12)
            assert d["spearman"][row] == pytest.approx(stats.spearmanr(x[drawn], y[drawn])[0], abs=1e-12)
            assert d["pearson"][row] == pytest.approx(stats.pearsonr(x[drawn], y[drawn])[0], abs=1e-12)
            top_x = Counter(sorted(drawn, key=lambda i: (-x[i], codes[i]))[:5])
            top_y = Counter(sorted(drawn, key=lambda i: (-y[i], codes[i]))[:5])
            assert d["top5"][row] == sum((top_x & top_y).values()) / 5


def test_the_paired_difference_of_a_prediction_with_itself_is_exactly_zero():
    pred, truth = _gaussian(50, 0.4, seed=9)
    p = _scores(pred)
    diff = paired_difference(p, dict(p), _scores(truth), resamples=300, seed=4)
    for name, v in diff.items():
        assert v["d"] == 0.0 and v["interval"] == [0.0, 0.0], name


def test_a_better_prediction_wins_the_paired_difference():
    rng = np.random.default_rng(11)
    truth = rng.standard_normal(80)
    good, poor = truth + 0.3 * rng.standard_normal(80), truth + 3.0 * rng.standard_normal(80)
    diff = paired_difference(_scores(good), _scores(poor), _scores(truth), resamples=500, seed=0)
    assert diff["kendall"]["interval"][0] > 0 and diff["kendall"]["d"] > 0.3
    lines = intervals.format_difference("good", "poor", diff)
    assert lines[0].startswith("kendall: good - poor = ") and lines[0].endswith("(good better)")


def test_the_bootstrap_is_seeded_and_reproducible():
    pred, truth = _gaussian(30, 0.3, seed=1)
    a = metric_draws(pred, truth, list("abcdefghijklmnopqrstuvwxyz0123"), resamples=200, seed=5)
    b = metric_draws(pred, truth, list("abcdefghijklmnopqrstuvwxyz0123"), resamples=200, seed=5)
    c = metric_draws(pred, truth, list("abcdefghijklmnopqrstuvwxyz0123"), resamples=200, seed=6)
    assert all(np.array_equal(a[m], b[m]) for m in a)
    assert not np.array_equal(a["kendall"], c["kendall"])
    assert len(a["kendall"]) == 200


def test_percentile_interval_ignores_undefined_draws():
    draws = np.r_[np.arange(101.0), np.nan]
    assert percentile_interval(draws, 0.9) == pytest.approx([5.0, 95.0], abs=1e-12)
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan]), 0.95))


def test_mean_draws_average_the_seeds_on_shared_resamples():
    # method_table's rows: a method's seeds averaged draw by draw; two rows' difference is paired
    pred_a, truth = _gaussian(40, 0.6, seed=2)
    pred_b, _ = _gaussian(40, 0.1, seed=8)
    codes = [f"c{i:05d}" for i in range(40)]
    a, b, t = _scores(pred_a), _scores(pred_b), _scores(truth)
    both = intervals.mean_draws([a, b], t, resamples=100, seed=3)
    each = [metric_draws(p, truth, codes, resamples=100, seed=3) for p in (pred_a, pred_b)]
    np.testing.assert_allclose(both["kendall"], (each[0]["kendall"] + each[1]["kendall"]) / 2, rtol=0, atol=1e-15)
    same = intervals.mean_draws([a, b], t, resamples=100, seed=3)
    assert np.array_equal(both["spearman"] - same["spearman"], np.zeros(100))

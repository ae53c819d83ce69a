import json

import numpy as np
import pytest
from scipy import stats

from track1.ranking.metrics import CoverageError, format_metrics, load_scores, plot, rank_metrics, top_k_overlap
from track1.ranking.submission import SubmissionError, demo_arch_list

CODES = list(demo_arch_list(12, 7).values())


def _scores(values, codes=CODES):
    return dict(zip(codes, map(float, values)))


def _write(path, entries):
    path.write_text(json.dumps({f"arch{i + 1}": e for i, e in enumerate(entries)}))
    return path


def test_perfect_and_reversed_order():
    truth = _scores(np.linspace(0.5, 0.9, 12))
    same_order = _scores(np.linspace(0.5, 0.9, 12) ** 3)  # monotone, not linear
    m = rank_metrics(same_order, truth)
    assert m["kendall"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] < 1.0 and m["top5"] == 1.0 and m["top10"] == 1.0 and m["n"] == 12
    rev = rank_metrics(_scores(-np.linspace(0.5, 0.9, 12)), truth)
    assert rev["kendall"] == pytest.approx(-1.0) and rev["spearman"] == pytest.approx(-1.0)
    assert rev["pearson"] == pytest.approx(-1.0)
    assert rev["top5"] == 0.0 and rev["top10"] == pytest.approx(8 / 10)  # 12 codes: 8 shared


def test_values_match_scipy_and_a_hand_count():
    rng = np.random.default_rng(3)
    t = rng.random(12)
    p = t + rng.normal(0, 0.3, 12)
    p[3] = p[4]  # a tie: tau-b
    m = rank_metrics(_scores(p), _scores(t), ks=(3, 5))
    assert m["kendall"] == pytest.approx(stats.kendalltau(p, t).statistic)
    assert m["spearman"] == pytest.approx(stats.spearmanr(p, t).statistic)
    assert m["pearson"] == pytest.approx(stats.pearsonr(p, t).statistic)
    true_top = set(np.argsort(-t)[:5])
    pred_top = set(sorted(range(12), key=lambda i: (-p[i], CODES[i]))[:5])
    assert m["top5"] == pytest.approx(len(true_top & pred_top) / 5)
    assert set(m) == {"kendall", "spearman", "pearson", "top3", "top5", "n"}
    # Hand-made: 4 codes, the predictor swaps the best two.
    truth = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    pred = {"a": 3.0, "b": 4.0, "c": 2.0, "d": 1.0}
    m = rank_metrics(pred, truth, ks=(1, 2))
    assert m["kendall"] == pytest.approx((5 - 1) / 6)  # 5 concordant, 1 discordant pair
    assert m["top1"] == 0.0 and m["top2"] == 1.0
    assert "kendall 0.6667" in format_metrics(m) and "n 4" in format_metrics(m)
    with_ci = format_metrics(m, {"kendall": (0.5, 0.8), "top1": (0.0, 1.0)})
    assert "kendall 0.6667 [0.50, 0.80]" in with_ci and "top1 0.00 [0.00, 1.00]" in with_ci
    assert "spearman 0.8000 [nan, nan]" in with_ci and with_ci.endswith("  n 4")


def test_top_k_overlap_caps_k_and_breaks_ties_by_code():
    truth = {"a": 3.0, "b": 2.0, "c": 1.0}
    assert top_k_overlap({"a": 1.0, "b": 1.0, "c": 0.0}, truth, 1) == 1.0  # tie: 'a' < 'b'
    assert top_k_overlap({"a": 0.0, "b": 1.0, "c": 2.0}, truth, 10) == 1.0


def test_codes_are_matched_by_code_not_key(tmp_path):
    truth = _scores(np.arange(6), CODES[:6])
    # The prediction file lists more codes, under other keys and in another order.
    entries = [{"acc": float(v), "arch": c} for c, v in zip(CODES[::-1], np.arange(12)[::-1])]
    pred_path = _write(tmp_path / "pred.json", entries)
    pred = load_scores(pred_path)
    assert pred[CODES[0]] == 0.0 and pred[CODES[11]] == 11.0
    m = rank_metrics(pred, truth)
    assert m["n"] == 6 and m["kendall"] == pytest.approx(1.0)
    with pytest.raises(CoverageError, match="6 codes only in the predictions"):
        rank_metrics(pred, truth, allow_extra=False)


def test_coverage_error_names_the_missing_codes():
    truth = _scores(range(8), CODES[:8])
    pred = _scores(range(6), CODES[2:8])  # lacks the first two truth codes
    with pytest.raises(CoverageError) as e:
        rank_metrics(pred, truth)
    msg = str(e.value)
    assert "2 codes only in the ground truth" in msg and CODES[0] in msg and CODES[1] in msg
    assert "\n" not in msg and isinstance(e.value, ValueError)
    with pytest.raises(CoverageError, match="at least 2"):
        rank_metrics({CODES[0]: 1.0}, {CODES[0]: 1.0})


def test_constant_prediction_gives_nan_not_an_exception():
    m = rank_metrics(_scores([0.5] * 12), _scores(range(12)))
    assert np.isnan(m["kendall"]) and np.isnan(m["pearson"])


def test_load_scores_errors_name_the_file_and_keys(tmp_path):
    with pytest.raises(SubmissionError, match="file not found"):
        load_scores(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SubmissionError, match="not valid JSON"):
        load_scores(tmp_path / "bad.json")
    path = _write(tmp_path / "s.json", [{"acc": 0.5, "arch": CODES[0]}, {"arch": CODES[1]}])
    with pytest.raises(SubmissionError, match="s.json: 1 entry .*arch2"):
        load_scores(path)
    path = _write(tmp_path / "s.json", [{"acc": "x", "arch": CODES[0]}])
    with pytest.raises(SubmissionError, match="not a finite number: arch1"):
        load_scores(path)
    path = _write(tmp_path / "s.json", [{"acc": 0.5, "arch": "123"}])
    with pytest.raises(SubmissionError, match="malformed code: arch1"):
        load_scores(path)
    path = _write(tmp_path / "s.json", [{"acc": 0.5, "arch": CODES[0]}, {"acc": 0.6, "arch": CODES[0]}])
    with pytest.raises(SubmissionError, match="different acc: arch2"):
        load_scores(path)
    # Extra fields (a stand-alone summary's "accs") and a repeated code with equal acc are fine.
    path = _write(tmp_path / "s.json", [{"acc": 0.5, "arch": CODES[0], "accs": [0.4, 0.6]},
                                        {"acc": 0.5, "arch": CODES[0]}])
    assert load_scores(path) == {CODES[0]: 0.5}


def test_plot_writes_a_png_atomically(tmp_path):
    truth = _scores(np.linspace(0.6, 0.9, 12))
    pred = _scores(np.linspace(0.6, 0.9, 12) + np.random.default_rng(0).normal(0, 0.02, 12))
    out = tmp_path / "plots" / "pred_vs_truth.png"
    m = plot(pred, truth, out, title="test run")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert m == rank_metrics(pred, truth)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left behind

"""benchmarks/method_table.py's interval cells: a row is worse than the best only when its paired interval says so."""
import importlib.util

import numpy as np

from conftest import REPO
from track1.ranking.intervals import mean_draws
from track1.ranking.metrics import rank_metrics


def _module():
    spec = importlib.util.spec_from_file_location("method_table", REPO / "benchmarks" / "method_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_is_worse_only_when_its_paired_interval_is_below_zero():
    table = _module()
    rng = np.random.default_rng(0)
    truth_values = rng.standard_normal(60)
    truth = {f"c{i}": float(v) for i, v in enumerate(truth_values)}

    def preds(noise, seeds):
        return [{c: v + noise * rng.standard_normal() for c, v in truth.items()} for _ in range(seeds)]
    rows = {"good": preds(0.3, 2), "close": preds(0.35, 2), "poor": preds(3.0, 1)}
    ms = {k: [rank_metrics(p, truth) for p in v] for k, v in rows.items()}
    draws = {k: mean_draws(v, truth, resamples=300) for k, v in rows.items()}
    poor = table.versus_best(ms["poor"], ms["good"], draws["poor"], draws["good"])
    close = table.versus_best(ms["close"], ms["good"], draws["close"], draws["good"])
    assert poor.endswith(" worse") and poor.startswith("-0.")
    assert close.endswith(" tied")
    lo, hi = (float(v) for v in table.interval_cell(draws["good"]["kendall"]).strip("[]").split(", "))
    assert 0.5 < lo < np.mean([m["kendall"] for m in ms["good"]]) < hi < 1

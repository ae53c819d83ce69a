"""benchmarks/bench_score.py runs with and without score's per-half bookkeeping (tiny sizes: a functional check, not a timing)."""
import os
import subprocess
import sys

import pytest

from conftest import OFFICIAL_LIST, REPO


@pytest.mark.skipif(not OFFICIAL_LIST.exists(), reason="the official list (the bench's codes) is not here")
def test_bench_score_measures_the_bookkeeping_side_by_side():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_score.py"), "--codes", "3", "--threads", "1",
                          "--random-data", "--warmup", "1", "--halves", "off,on", "--repeats", "2"],
                         cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for mode in ("per-code", "per-code +halves", "tree", "tree +halves"):
        assert f"\n| {mode} | 3 |" in out, mode
    assert "per-half bookkeeping (per-code): " in out and "per-half bookkeeping (tree): " in out
    # the bookkeeping changes no score: both tree rows equal per-code
    assert out.count("vs per-code: max |d top-1| 0.00e+00") == 2

"""benchmarks/bench_export.py runs (tiny sizes: a functional check, not a timing)."""
import os
import subprocess
import sys

from conftest import REPO


def test_bench_export_times_the_three_phases_of_one_code():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_export.py"), "--settings", "default",
                          "--threads", "1", "--calib-images", "16", "--val-images", "16"],
                         cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    row = [line for line in run.stdout.splitlines() if line.startswith("| default |")]
    assert len(row) == 1 and "| 0.25, 32 |" in row[0] and "| 16 | 16 |" in row[0]
    cells = [float(c) for c in row[0].strip("|").split("|")[-4:]]  # calibrate, evaluate, write, total
    assert all(c > 0 for c in cells) and abs(sum(cells[:3]) - cells[3]) < 0.02
    assert "FAKE images" in run.stdout

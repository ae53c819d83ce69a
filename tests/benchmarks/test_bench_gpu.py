"""benchmarks/bench_gpu.py runs end to end (at tiny CPU sizes: it has never run on a GPU here)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def test_bench_gpu_runs_every_preset_and_estimates_the_imagenet_wall_time(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--tiny", "--threads", "1",
                          "--steps", "1", "--warmup", "1", "--amp", "off,bf16", "--json", str(out)],
                         cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["preset"], r["amp"]) for r in rows] == [
        (p, a) for p in ("imagenet", "sandwich", "spos", "rdnas", "cream") for a in ("off", "bf16")]
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    assert all(r["images_per_s"] > 0 and 0 <= r["data_wait"] < 1 and r["peak_mem_mb"] > 0 for r in rows)
    est = result["estimate"]
    assert est["nproc"] == 8 and est["train_steps"] == 100 * (1_281_167 // (4 * 8))
    # The estimate trains at the measured step of imagenet.yaml's own row (amp off: the config's fp16
    # was not measured) and scores the 45,000 codes at the measured forward rate.
    step_s = next(r["step_s"] for r in rows if r["preset"] == "imagenet" and r["amp"] == est["amp"])
    assert est["amp"] == "off" and est["train_h"] == pytest.approx(est["train_steps"] * step_s / 3600)
    assert est["score_h"] == pytest.approx(45_000 / 8 * (4096 + 10_000) / est["scoring_images_per_s"] / 3600)
    assert "imagenet.yaml on 8 processes" in run.stdout and "not a real estimate" in run.stdout

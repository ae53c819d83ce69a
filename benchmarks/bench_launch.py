"""Start-up cost of paddle.distributed.launch on this machine (CPU, gloo).

    .venv/bin/python benchmarks/bench_launch.py [--nproc 2] [--repeats 3]

Times a launch whose processes only import paddle, initialise the parallel environment and meet
at a barrier, against one plain process doing the import; prints the medians and the difference.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--nproc", type=int, default=2)
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()

WORKER = """import paddle.distributed as dist
if dist.get_world_size() > 1:
    dist.init_parallel_env()
    dist.barrier()
"""
env = {**os.environ, "OMP_NUM_THREADS": "1"}
with tempfile.TemporaryDirectory() as tmp:
    script = Path(tmp) / "init.py"
    script.write_text(WORKER)

    def timed(cmd):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - start

    plain = [timed([sys.executable, str(script)]) for _ in range(args.repeats)]
    launch = [timed([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(args.nproc),
                     "--log_dir", str(Path(tmp) / "log"), str(script)]) for _ in range(args.repeats)]
print(f"plain process (import paddle): {statistics.median(plain):.1f} s")
print(f"paddle.distributed.launch --nproc_per_node {args.nproc} (import, init_parallel_env, barrier): "
      f"{statistics.median(launch):.1f} s")
print(f"launcher start-up overhead: {statistics.median(launch) - statistics.median(plain):.1f} s "
      f"(median of {args.repeats}; command: {' '.join(sys.argv)})")

"""Threads, device choice, the quiet import of Paddle and the start-up line."""
import os
import subprocess
import sys

import paddle
import pytest

from conftest import REPO, tiny_config
from track1.pipeline import runtime
from track1.pipeline.cli import main
from track1.pipeline.config import load_config


def test_start_line_names_device_build_threads_and_world_size(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    line = runtime.describe(2, "bf16")
    assert "device cpu" in line and "CPU build" in line and "world size 2" in line and "amp bf16" in line
    assert "3 CPU threads a process" in line and "gloo" in line
    assert "gloo" not in runtime.describe(1)


def _cuda_build(monkeypatch, gpus: int):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(paddle.version, "cuda", lambda: "12.6")


def test_a_cuda_build_that_sees_no_gpu_stops_unless_the_config_says_cpu(monkeypatch, tmp_path):
    _cuda_build(monkeypatch, 0)
    with pytest.raises(runtime.DeviceError, match="CUDA 12.6 build but sees no usable GPU.*run.device=cpu"):
        runtime.select_device(load_config())
    assert runtime.select_device(load_config(None, ["run.device=cpu"])) == "cpu"


def test_gpu_on_a_cpu_build_is_one_line(capsys, tmp_path):
    cfg = tiny_config(tmp_path)
    assert main(["train", "-o", "run.device=gpu", "-o", f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: run.device=gpu, but this Paddle is a CPU build: DEVICE=gpu bash run.sh --setup "
                   "installs the GPU build"]
    assert not (tmp_path / cfg["run"]["name"]).exists()


def test_start_line_names_the_gpu_model_and_count(monkeypatch):
    _cuda_build(monkeypatch, 8)
    monkeypatch.setattr(paddle.device, "get_device", lambda: "gpu:0")
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    line = runtime.describe(8, "fp16")
    assert line.startswith("device gpu:0 (8 x NVIDIA A100-SXM4-80GB), ") and "CUDA 12.6 build" in line
    assert "gloo" not in line


def test_threads_an_exported_variable_wins_then_the_config_then_a_share_of_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.set_threads(load_config(None, ["run.threads=2"])) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runtime.set_threads(load_config(None, ["run.threads=2"])) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "64")
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert runtime.set_threads(load_config()) == 2  # 128 cores among 64 local ranks


def test_commands_do_not_print_paddles_misleading_notices(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "track1", "prepare"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    assert "OMP_NUM_THREADS set to" not in done.stderr and "WISELY" not in done.stderr
    assert "No ccache found" not in done.stderr
    assert "data: fashion_mnist ready" in done.stdout


def test_proc_bytes_reads_a_kb_field_and_is_zero_where_there_is_none(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert runtime.proc_bytes(str(status), "VmHWM") == 2048 * 1024
    assert runtime.proc_bytes(str(status), "VmRSS") == 1024 * 1024
    assert runtime.proc_bytes(str(status), "VmSwap") == 0
    assert runtime.proc_bytes(str(tmp_path / "absent"), "VmHWM") == 0
    assert runtime.proc_bytes("/proc/self/status", "VmRSS") > 10 * 2 ** 20  # this process, Paddle imported

"""What a process runs on: its CPU threads (run.threads), its device (run.device), Paddle imported without
its misleading notices, and the start-up line that says all of it."""
from __future__ import annotations

import contextlib
import io
import os
import sys

from track1.errors import UserError


DEVICES = ("auto", "gpu", "cpu")
# Printed by Paddle at import whenever OMP_NUM_THREADS > 1; it is about data parallelism on CPU
# with OpenBLAS, which this wheel does not use, and says nothing true about a run.
_OMP_NOTICE = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")


class DeviceError(UserError):
    """A device that this Paddle build cannot run, or a GPU build that sees no GPU."""


def local_ranks() -> int:
    """Processes of this run on this machine (paddle.distributed.launch's --nproc_per_node)."""
    return int(os.environ.get("PADDLE_LOCAL_SIZE", 1))


def set_threads(cfg: dict) -> int:
    """The CPU threads of this process, set before Paddle is imported (its OpenMP runtime reads
    OMP_NUM_THREADS once). An OMP_NUM_THREADS the user exported wins (the tests pin 1); else
    run.threads; else the machine's cores shared among the local ranks."""
    if "OMP_NUM_THREADS" not in os.environ:
        threads = int(cfg["run"]["threads"]) or max(1, (os.cpu_count() or 1) // local_ranks())
        os.environ["OMP_NUM_THREADS"] = str(threads)
    return int(os.environ["OMP_NUM_THREADS"])


def import_paddle():
    """`import paddle` without the OMP_NUM_THREADS notice above, which says nothing true about a run
    (its "No ccache found" warning is filtered where the package is imported: track1/__init__.py)."""
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import paddle
    for line in captured.getvalue().splitlines(keepends=True):
        if not line.startswith(_OMP_NOTICE):
            sys.stderr.write(line)
    return paddle


def gpus() -> int:
    """GPUs this process's Paddle can use (0 on a CPU build)."""
    paddle = import_paddle()
    return paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0


def select_device(cfg: dict) -> str:
    """Put Paddle on run.device (auto | gpu | cpu); the device it runs on.

    auto takes a GPU on a CUDA build and the CPU on a CPU build. A CUDA build that sees no usable
    GPU (a driver too old for its CUDA, an empty CUDA_VISIBLE_DEVICES) is refused unless run.device
    is cpu: Paddle would otherwise train on the CPU without a word.
    """
    paddle = import_paddle()
    want = cfg["run"]["device"]
    if want not in DEVICES:
        raise DeviceError(f"run.device: {want!r} is not one of {', '.join(DEVICES)}")
    if want == "cpu":
        paddle.set_device("cpu")
        return "cpu"
    cuda = paddle.is_compiled_with_cuda()
    if want == "gpu" and not cuda:
        raise DeviceError("run.device=gpu, but this Paddle is a CPU build: DEVICE=gpu bash run.sh --setup "
                          "installs the GPU build")
    if cuda and gpus() == 0:
        raise DeviceError(f"this Paddle is a CUDA {paddle.version.cuda()} build but sees no usable GPU (a "
                          f"driver too old for it, or CUDA_VISIBLE_DEVICES empty?); fix that, or set "
                          f"-o run.device=cpu to run on the CPU")
    return paddle.device.get_device()


def describe(world: int, amp: str = "off", amp_note: str = "") -> str:
    """The start-up line: device (GPU model and count), Paddle build, world size, threads, precision."""
    paddle = import_paddle()
    cuda = paddle.is_compiled_with_cuda()
    device = paddle.device.get_device()
    if device.startswith("gpu"):
        device += f" ({gpus()} x {paddle.device.cuda.get_device_name()})"
    build = f"CUDA {paddle.version.cuda()}" if cuda else "CPU"
    line = (f"device {device}, Paddle {paddle.__version__} ({build} build), world size {world}, "
            f"{os.environ.get('OMP_NUM_THREADS', '?')} CPU threads a process, amp {amp}{amp_note}")
    if world > 1 and not device.startswith("gpu"):
        line += (f"\nnote: {world} processes on the CPU talk over gloo; for GPUs install "
                 f"paddlepaddle-gpu (DEVICE=gpu bash run.sh --setup)")
    return line


def shared_memory_notes(cfg: dict, shm: str = "/dev/shm") -> list[str]:
    """A one-line warning, with the fix, when /dev/shm is smaller than this machine's DataLoader
    workers need (Docker's default is 64 MB); none when it is large enough or absent."""
    from track1.data.training import shared_memory_bytes
    need = shared_memory_bytes(cfg) * local_ranks()
    if need == 0 or not os.path.isdir(shm):
        return []
    st = os.statvfs(shm)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    if need <= free:
        return []
    gb = -(-2 * need // 2 ** 30)  # twice the need, whole GB
    return [f"warning: {shm} has {free / 2 ** 20:.0f} MB free of {size / 2 ** 20:.0f} MB, the data loader workers "
            f"of {local_ranks()} process(es) need about {need / 2 ** 20:.0f} MB: run the container with "
            f"--shm-size={gb}g or --ipc=host, or set -o data.shared_memory=false"]


class PeakMemory:
    """`with PeakMemory() as peak: ...`, then peak.bytes: the peak memory of the block on the device
    in use, the GPU allocator's peak, or on the CPU the process's peak resident set (VmHWM, reset
    at the start through /proc/self/clear_refs; without that reset, the process's peak so far)."""

    def __enter__(self) -> "PeakMemory":
        paddle = import_paddle()
        self.gpu = paddle.device.get_device().startswith("gpu")
        if self.gpu:
            paddle.device.cuda.reset_max_memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        self.bytes = 0
        return self

    def __exit__(self, *exc) -> None:
        paddle = import_paddle()
        if self.gpu:
            self.bytes = paddle.device.cuda.max_memory_allocated()
            return
        self.bytes = proc_bytes("/proc/self/status", "VmHWM")


def proc_bytes(path: str, field: str) -> int:
    """A `Field: N kB` line of a /proc file (status, meminfo), in bytes; 0 where it is absent."""
    try:
        with open(path) as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":")), 0)
    except OSError:
        return 0

"""The pre-flight: what a multi-day run needs, checked in minutes at the config's own sizes (device, ranks,
one training step, one epoch-end check, the data loader, /dev/shm and host memory), as one table
and a verdict. `python -m track1 preflight -c CFG`; `NPROC=N bash run.sh --preflight` under the launcher."""
from __future__ import annotations

import dataclasses
import math
import os
import time

import paddle

from track1.data import TrainData
from track1.data.evaluation import split_size
from track1.data.training import shared_memory_bytes
from track1.errors import UserError
from track1.network.build import build_supernet
from track1.pipeline import runtime
from track1.pipeline.config import set_value
from track1.pipeline.train import distributed
from track1.pipeline.trainer import Trainer
from track1.ranking.health import health, health_sets

GB = 2 ** 30
HEADROOM = 0.9  # a run may use this share of a device's or a rank's memory
LOADER_BATCHES = 6  # batches timed from the data loader (after the first: worker start-up)


class PreflightError(UserError):
    """A check that would make the run fail."""


@dataclasses.dataclass
class Check:
    name: str
    measured: str
    verdict: str = "ok"  # ok | warn | FAIL
    why: str = ""        # warn, FAIL: the one line, with the fix


def preflight(cfg: dict) -> list[Check]:
    """Every check in order; it stops at the first one that makes the rest meaningless."""
    checks: list[Check] = []
    try:
        runtime.select_device(cfg)
    except runtime.DeviceError as e:
        return [Check("device", paddle.device.get_device(), "FAIL", str(e))]
    rank, world = distributed()
    checks.append(Check("device", runtime.describe(world, cfg["train"]["amp"]).split("\n")[0]))
    if world > 1:
        checks.append(_ranks_agree(rank, world))
    data = TrainData(cfg, rank=rank, world_size=world)
    checks.append(Check("data", f"{data.num_samples} training images, {data.steps_per_epoch} steps an "
                                f"epoch of {cfg['data']['batch_size']} x {world} images"))
    checks.append(_shared_memory(cfg))
    capacity = _memory_capacity()
    step_s, step_check = _training_step(cfg, data, world, capacity)
    checks.append(step_check)
    checks.append(_epoch_end_check(cfg, rank, world, capacity))
    checks.append(_loader(cfg, data, step_s))
    data.close()
    checks.append(_host_ram(cfg, world))
    return checks


def _ranks_agree(rank: int, world: int) -> Check:
    t = paddle.to_tensor([float(rank + 1)])
    paddle.distributed.all_reduce(t)
    got, want = t.item(), world * (world + 1) / 2
    text = f"{world} ranks, all-reduce of 1..{world}: {got:g} (expected {want:g})"
    if got != want:
        return Check("ranks", text, "FAIL", "the ranks' all-reduce disagrees: check the launcher's "
                                            "--ips and the network between the machines")
    return Check("ranks", text)


def _memory_capacity() -> tuple[int, str]:
    """(bytes one process may use, where they are): the GPU's memory, or this rank's share of the
    host memory available now."""
    if paddle.device.get_device().startswith("gpu"):
        return paddle.device.cuda.get_device_properties().total_memory, "GPU"
    return (_meminfo("MemAvailable") + _status("VmRSS")) // runtime.local_ranks(), "host, this rank's share"


def _training_step(cfg: dict, data: TrainData, world: int, capacity: tuple[int, str]) -> tuple[float, Check]:
    """Two optimizer steps at the configured batch (the first warms up); the second's time and the
    peak memory of both."""
    trainer = Trainer(set_value(cfg, "train.epochs", 1), data.steps_per_epoch, world)
    batches = _endless(data)
    with runtime.PeakMemory() as peak:
        x, y = next(batches)
        trainer.step(x, y, 0, read=True)
        x, y = next(batches)
        start = time.perf_counter()
        trainer.step(x, y, 1, read=True)
        seconds = time.perf_counter() - start
    batches.close()
    limit, where = capacity
    text = (f"{seconds * 1000:.0f} ms at batch {x.shape[0]} (amp {cfg['train']['amp']}), peak memory "
            f"{peak.bytes / GB:.2f} GB of {limit / GB:.1f} GB ({where})")
    if peak.bytes > HEADROOM * limit:
        return seconds, Check("training step", text, "FAIL", f"one step needs {peak.bytes / GB:.1f} GB of "
                              f"{limit / GB:.1f} GB: lower data.batch_size or use train.amp")
    return seconds, Check("training step", text)


def _epoch_end_check(cfg: dict, rank: int, world: int, capacity: tuple[int, str]) -> Check:
    """The health check on one walk's worth of images: a calibration batch and evaluation images up
    to score.chunk_images. Every walk of the real check holds at most that many, so its peak is the
    real check's (and tree scoring's); its time scales with the images."""
    s, t = cfg["score"], cfg["train"]
    walk = max(s["chunk_images"], s["calib_batch"])
    per_rank = max(1, walk - s["calib_batch"]) if walk > s["calib_batch"] else s["eval_batch"]
    small = set_value(set_value(cfg, "score.calib_images", min(s["calib_images"], s["calib_batch"])),
                      "train.eval_images", per_rank * world)
    space, model = build_supernet(cfg)
    sets = health_sets(small, rank, world)
    with runtime.PeakMemory() as peak:
        start = time.perf_counter()
        health(model, space, sets, t["eval_subnets"], world)
        seconds = time.perf_counter() - start
    measured = sets[0].n + sets[1].n
    val = split_size(cfg, "val") if t["eval_images"] == 0 else min(t["eval_images"], split_size(cfg, "val"))
    total = s["calib_images"] + math.ceil(val / world)
    limit, where = capacity
    text = (f"{measured} images: peak memory {peak.bytes / GB:.2f} GB of {limit / GB:.1f} GB ({where}), "
            f"{seconds:.1f} s; at the configured {s['calib_images']} + {val}/{world} images the same peak, "
            f"about {seconds * total / measured / 60:.1f} min an epoch end")
    if peak.bytes > HEADROOM * limit:
        return Check("epoch-end check", text, "FAIL", f"a walk of {walk} images needs {peak.bytes / GB:.1f} GB: "
                     f"lower score.chunk_images (and score.calib_batch)")
    return Check("epoch-end check", text)


def _endless(data: TrainData, first_epoch: int = 0):
    """Training batches epoch after epoch (a small data set has fewer batches than the checks take)."""
    epoch = first_epoch
    while True:
        yield from data.batches(epoch)
        epoch += 1


def _loader(cfg: dict, data: TrainData, step_s: float) -> Check:
    """Images per second the loader delivers against what the measured step consumes."""
    batches = _endless(data, first_epoch=2)
    next(batches)  # worker start-up
    start, n = time.perf_counter(), 0
    for _, (x, _y) in zip(range(LOADER_BATCHES), batches):
        n += x.shape[0]
    batches.close()
    have = n / max(time.perf_counter() - start, 1e-9)
    need = cfg["data"]["batch_size"] / max(step_s, 1e-9)
    text = f"{have:.0f} images/s with {cfg['data']['num_workers']} workers; the step takes {need:.0f}"
    if have < need:
        return Check("data loader", text, "warn", f"the loader is slower than the step ({have:.0f} < "
                     f"{need:.0f} images/s): raise data.num_workers")
    return Check("data loader", text)


def _shared_memory(cfg: dict) -> Check:
    need = shared_memory_bytes(cfg) * runtime.local_ranks()
    notes = runtime.shared_memory_notes(cfg)
    if notes:
        return Check("/dev/shm", f"{need / 2 ** 20:.0f} MB needed", "FAIL", notes[0].removeprefix("warning: "))
    if need == 0:
        return Check("/dev/shm", "not used (no loader workers, or data.shared_memory false)")
    return Check("/dev/shm", f"{need / 2 ** 20:.0f} MB needed, {_free('/dev/shm') / 2 ** 20:.0f} MB free")


def _host_ram(cfg: dict, world: int) -> Check:
    """Each local rank: its peak so far plus the images `train` and `score` keep on the host (uint8):
    the calibration images and the validation images (train's share a rank, score's all)."""
    s, t = cfg["score"], cfg["train"]
    image = 3 * cfg["space"]["resolution"] ** 2
    val = split_size(cfg, "val")
    shown = max(math.ceil((min(t["eval_images"], val) if t["eval_images"] else val) / world),
                min(s["val_images"], val) if s["val_images"] else val)
    kept = (min(s["calib_images"], split_size(cfg, "train")) + shown) * image
    need = (_status("VmHWM") + kept) * runtime.local_ranks()
    available = _meminfo("MemAvailable") + _status("VmRSS") * runtime.local_ranks()
    text = (f"{runtime.local_ranks()} local process(es) x ({_status('VmHWM') / GB:.1f} GB peak + "
            f"{kept / GB:.2f} GB of evaluation images) = {need / GB:.1f} GB of {available / GB:.1f} GB available")
    if need > HEADROOM * available:
        return Check("host RAM", text, "FAIL", f"the processes need {need / GB:.1f} GB of host memory, "
                     f"{available / GB:.1f} GB are available: lower score.calib_images, score.val_images or "
                     f"train.eval_images")
    return Check("host RAM", text)


def _meminfo(field: str) -> int:
    return runtime.proc_bytes("/proc/meminfo", field)


def _status(field: str) -> int:
    return runtime.proc_bytes("/proc/self/status", field)


def _free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def report(checks: list[Check], rank: int = 0) -> str:
    """The table and the verdict line."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  verdict  measured"]
    lines += [f"{c.name:<{width}}  {c.verdict:<7}  {c.measured}" for c in checks]
    failed = [c for c in checks if c.verdict == "FAIL"]
    warned = [c for c in checks if c.verdict == "warn"]
    lines += [f"warning: {c.name}: {c.why}" for c in warned]
    lines.append(f"verdict: {'not ready' if failed else 'ready'} ({len(failed)} failed, {len(warned)} "
                 f"warnings){f' on rank {rank}' if rank else ''}")
    return "\n".join(lines)


def first_failure(checks: list[Check]) -> str | None:
    failed = next((c for c in checks if c.verdict == "FAIL"), None)
    return None if failed is None else f"preflight: {failed.name}: {failed.why}"

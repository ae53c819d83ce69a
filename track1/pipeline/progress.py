"""What a training run reports as it goes: the progress bar, VisualDL scalars, images per second and
the fraction of time spent waiting for data (rank 0 only)."""
from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm


class Window:
    """Images per second and the fraction of time spent waiting for data, over the steps since
    the last log line. Timed on the host between logging steps, whose read of the scalars waits
    for the device, so asynchronous GPU work is counted where it is done."""

    def __init__(self, data):
        self.data = data
        self.restart()

    def restart(self) -> None:
        self.images, self.started = 0, time.perf_counter()
        self.waited = getattr(self.data, "wait_seconds", 0.0)  # the data helper's cumulative wait

    def scalars(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        waited = getattr(self.data, "wait_seconds", 0.0) - self.waited
        out = {"throughput/images_per_s": self.images / seconds, "throughput/data_wait": waited / seconds}
        self.restart()
        return out


class Progress:
    """The bar, the console lines and the VisualDL writer of one training run; on ranks other than 0
    every call does nothing."""

    def __init__(self, out: Path, data, total: int, done: int, main: bool, visualdl: bool, bar: bool):
        self.main, self.writer = main, None
        if main and visualdl:
            from visualdl import LogWriter
            self.writer = LogWriter(logdir=str(out / "vdl"))
        self.bar = tqdm(total=total, initial=done, desc="train", unit="step", disable=not (bar and main),
                        mininterval=1.0, dynamic_ncols=True)
        self.window = Window(data)

    def stepped(self, images: int) -> None:
        self.bar.update(1)
        self.window.images += images

    def log(self, scalars: dict[str, float], step: int, lr: float | None = None) -> None:
        """Scalars of a logging step (with the lr and the throughput of the window), to VisualDL
        and the bar; or epoch-end scalars (lr None), to VisualDL."""
        if not self.main:
            return
        if lr is not None:
            scalars = {**scalars, "lr": lr, **self.window.scalars()}
            self.bar.set_postfix(loss=f"{scalars['loss/total']:.3f}", lr=f"{lr:.4f}",
                                 img_s=f"{scalars['throughput/images_per_s']:.0f}",
                                 wait=f"{scalars['throughput/data_wait']:.0%}")
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)

    def say(self, line: str) -> None:
        if self.main:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

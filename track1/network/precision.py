"""Mixed precision for training (`train.amp`): the autocast region, loss scaling, and the fp32 islands.

O1 autocast runs convolutions and matrix products in bf16/fp16 and keeps the rest in fp32. Every
loss (label, in-place distillation, ranking) is computed from logits cast back to fp32, and BN
running statistics are fp32 buffers that O1 never casts. fp16 adds a GradScaler, whose step
unscales the gradients before the optimizer clips them. Paddle enables autocast and loss scaling
on CUDA (and XPU / custom devices) only: on CPU every mode trains in fp32.
"""
from __future__ import annotations

import contextlib

import paddle


MODES = {"off": None, "bf16": "bfloat16", "fp16": "float16"}


class Precision:
    def __init__(self, mode: str = "off"):
        self.mode, self.dtype = mode, MODES[mode]
        # Initial scale 2**15 (GradScaler's own is 2**16); it halves on an overflow and doubles
        # after 2000 clean steps (GradScaler's incr_every_n_steps in Paddle 3.3.1). Its update reads
        # the overflow flag on the host: with fp16, one device sync a step.
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if mode == "fp16" else None

    @classmethod
    def from_config(cls, cfg: dict) -> "Precision":
        return cls(cfg["train"]["amp"])

    def autocast(self):
        """The forward's autocast region (a no-op context when off)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(enable=True, level="O1", dtype=self.dtype)

    def backward(self, loss: paddle.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt) -> None:
        """The optimizer step; with fp16, skipped when a gradient overflowed (the scale then drops)."""
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def set_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

    def device_note(self) -> str:
        """How the mode takes effect on this device, for the start-up line."""
        if self.dtype is None:
            return ""
        if not paddle.is_compiled_with_cuda():
            return " (no effect on a CPU build of Paddle)"
        if self.mode == "bf16" and not paddle.amp.is_bfloat16_supported():
            return " (this GPU has no bf16 support: use fp16)"
        return ""


def fp32(t: paddle.Tensor) -> paddle.Tensor:
    """t in fp32 (a no-op when it already is): the start of a loss's fp32 island."""
    return t if t.dtype == paddle.float32 else t.astype("float32")

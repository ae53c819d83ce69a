"""The optimizer and learning-rate schedule of a training section (train: the supernet, standalone: plain
networks): linear warm-up, cosine decay, decay-free BN and biases, gradient value clipping."""
from __future__ import annotations

import math

import paddle


OPTIMIZERS = ("momentum", "adamw")
LR_SCHEDULES = ("cosine", "linear")


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float,
              schedule: str = "cosine") -> float:
    """Linear warm-up from 0, then cosine (or linear) decay to min_ratio, as a multiple of the base lr.
    A warm-up longer than the run never reaches the base lr (the RD-NAS authors' run did not)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * decay


def build_optimizer(section: dict, model: paddle.nn.Layer, total_steps: int, steps_per_epoch: int):
    """(optimizer, LR scheduler) of `section` (cfg["train"] or cfg["standalone"]: optimizer, lr,
    min_lr, momentum, nesterov, weight_decay, no_decay_bn_bias, warmup_epochs, grad_clip; lr_schedule
    where the section has one)."""
    base_lr = section["lr"]
    warmup = int(round(section["warmup_epochs"] * steps_per_epoch))
    min_ratio = section["min_lr"] / base_lr if base_lr else 0.0
    schedule = section.get("lr_schedule", "cosine")
    scheduler = paddle.optimizer.lr.LambdaDecay(
        base_lr, lambda s: lr_factor(s, warmup, total_steps, min_ratio, schedule))
    wd = section["weight_decay"]
    if section["no_decay_bn_bias"]:
        # 1-D parameters are BN scales/shifts, biases and PReLU slopes.
        params = [{"params": [p for p in model.parameters() if len(p.shape) > 1], "weight_decay": wd},
                  {"params": [p for p in model.parameters() if len(p.shape) <= 1], "weight_decay": 0.0}]
    else:
        params = [{"params": model.parameters(), "weight_decay": wd}]
    clip = paddle.nn.ClipGradByValue(section["grad_clip"]) if section["grad_clip"] else None
    if section["optimizer"] == "momentum":
        opt = paddle.optimizer.Momentum(learning_rate=scheduler, momentum=section["momentum"],
                                        parameters=params, use_nesterov=section["nesterov"],
                                        grad_clip=clip)
    else:
        opt = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=params, grad_clip=clip)
    _create_all_accumulators(opt, model)
    return opt, scheduler


def _create_all_accumulators(opt, model) -> None:
    """Give every parameter its optimizer state now rather than at its first gradient.

    Paddle creates an accumulator when a parameter first gets a gradient, and after loading a
    state dict it refuses to create one the dict does not hold. A subnet-sampling supernet leaves
    some parameters (e.g. unused projections) without gradients for many steps, so a checkpoint
    written early would not load. Created up front (zero, as they would be lazily), every
    accumulator is in every checkpoint. Paddle has no public call for this.
    """
    block = paddle.static.default_main_program().global_block()
    opt._create_accumulators(block, [p for p in model.parameters() if not p.stop_gradient])

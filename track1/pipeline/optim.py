"""The optimizer and learning-rate schedule of a training section (train: the supernet, standalone: plain
networks): linear warm-up, cosine decay, decay-free BN and biases, gradient value clipping."""
from __future__ import annotations

import math

import paddle


OPTIMIZERS = ("momentum", "adamw")


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 0, then cosine decay to min_ratio, as a multiple of the base lr."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(section: dict, model: paddle.nn.Layer, total_steps: int, steps_per_epoch: int,
                    lr_scales: dict[str, float] | None = None):
    """(optimizer, LR scheduler) of `section` (cfg["train"] or cfg["standalone"]: optimizer, lr,
    min_lr, momentum, nesterov, weight_decay, no_decay_bn_bias, warmup_epochs, grad_clip);
    lr_scales: parameter name -> a factor on the lr (Paddle's per-group learning_rate multiplier)."""
    base_lr = section["lr"]
    warmup = int(round(section["warmup_epochs"] * steps_per_epoch))
    min_ratio = section["min_lr"] / base_lr if base_lr else 0.0
    scheduler = paddle.optimizer.lr.LambdaDecay(
        base_lr, lambda s: lr_factor(s, warmup, total_steps, min_ratio))
    wd = section["weight_decay"]
    groups: dict[tuple, list] = {}
    for p in model.parameters():
        # 1-D parameters are BN scales/shifts, biases and PReLU slopes.
        decay = 0.0 if section["no_decay_bn_bias"] and len(p.shape) <= 1 else wd
        groups.setdefault((decay, (lr_scales or {}).get(p.name, 1.0)), []).append(p)
    params = [{"params": ps, "weight_decay": decay, **({"learning_rate": scale} if scale != 1.0 else {})}
              for (decay, scale), ps in groups.items()]
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

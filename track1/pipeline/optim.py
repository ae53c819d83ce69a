"""The optimizer and learning-rate schedule of a training section (train: the supernet, standalone: plain
networks): linear warm-up, cosine or linear decay (in stairs, or restarted at phases), per-parameter lr
factors, decay-free BN and biases, gradient value clipping."""
from __future__ import annotations

import math

import paddle


OPTIMIZERS = ("momentum", "adamw")
LR_SCHEDULES = ("cosine", "linear")


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float, schedule: str = "cosine",
              stair_steps: float = 0.0) -> float:
    """Linear warm-up from 0, then cosine (or linear) decay to min_ratio, as a multiple of the base lr.
    A warm-up longer than the run never reaches the base lr (the RD-NAS authors' run did not). With
    stair_steps, the decay moves once every stair_steps steps, over the run's whole stairs (Paddle's
    CosineAnnealingDecay stepped once an epoch: the last stair stays above min_ratio)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if stair_steps > 0:
        stairs = max(1, round((total_steps - warmup_steps) / stair_steps))
        progress = min(math.floor((step - warmup_steps) / stair_steps + 1e-9), stairs - 1) / stairs
    else:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    decay = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * decay


def restarted_factor(step: int, starts: list[int], factors: list[float], min_ratio: float,
                     stair_steps: float = 0.0) -> float:
    """The cosine restarted at each of starts (ascending, the run's end last), from factors[i] x the
    base lr in segment i, without warm-up (the 2nd place's six progressive optimizers)."""
    i = max(k for k in range(len(factors)) if starts[k] <= step or k == 0)
    return factors[i] * lr_factor(step - starts[i], 0, starts[i + 1] - starts[i], min_ratio,
                                   stair_steps=stair_steps)


def build_optimizer(section: dict, model: paddle.nn.Layer, total_steps: int, steps_per_epoch: int,
                    lr_scales: dict[str, float] | None = None,
                    restarts: tuple[list[int], list[float]] | None = None):
    """(optimizer, LR scheduler) of `section` (cfg["train"] or cfg["standalone"]: optimizer, lr,
    min_lr, momentum, nesterov, weight_decay, no_decay_bn_bias, warmup_epochs, grad_clip; lr_schedule and
    lr_stairs where the section has them); lr_scales: parameter name -> a factor on the lr (Paddle's
    per-group learning_rate multiplier); restarts: (first steps, lr factors) of segments each with a
    cosine of its own (restarted_factor)."""
    base_lr = section["lr"]
    warmup = int(round(section["warmup_epochs"] * steps_per_epoch))
    min_ratio = section["min_lr"] / base_lr if base_lr else 0.0
    schedule = section.get("lr_schedule", "cosine")
    stairs = section.get("lr_stairs", 0)  # train.lr_stairs: the cosine's moves an epoch (0: every step)
    stair_steps = steps_per_epoch / stairs if stairs else 0.0
    if restarts:
        scheduler = paddle.optimizer.lr.LambdaDecay(
            base_lr, lambda s: restarted_factor(s, *restarts, min_ratio, stair_steps))
    else:
        scheduler = paddle.optimizer.lr.LambdaDecay(
            base_lr, lambda s: lr_factor(s, warmup, total_steps, min_ratio, schedule, stair_steps))
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

"""Training losses: label cross-entropy, in-place distillation, and pairwise ranking distillation."""
from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F


def label_loss(logits: paddle.Tensor, labels: paddle.Tensor, smoothing: float = 0.0) -> paddle.Tensor:
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def soft_cross_entropy(logits: paddle.Tensor, target_probs: paddle.Tensor) -> paddle.Tensor:
    """In-place distillation: cross-entropy to a teacher's (detached) softmax."""
    return -(target_probs * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()


RANK_LOSSES = ("better_only", "margin", "second_only")
RANK_SCHEDULES = ("linear", "staircase", "sin", "constant")


def rank_loss(loss_a: paddle.Tensor, loss_b: paddle.Tensor, z_a: float, z_b: float,
              kind: str = "better_only", margin: float = 0.0) -> paddle.Tensor:
    """Penalise a pair of supernet losses whose order disagrees with the teacher's scores z.

    Higher z = predicted better = should have the lower loss. The kinds differ in which loss gets
    the gradient:
    - "better_only": relu(L_better - sg(L_worse) + m); ties in z give zero.
    - "margin" (RD-NAS paper): max(0, sign(z_a - z_b) * (L_a - L_b) + m), through both; ties zero.
    - "second_only" (RD-NAS authors' released step): only L_b moves. If z_a < z_b (b better):
      relu(L_b - sg(L_a) + m), pushing L_b down; else (ties included) relu(sg(L_a) - L_b + m),
      pushing L_b UP until it is no lower than L_a.
    """
    if kind == "second_only":
        if z_a < z_b:
            return F.relu(loss_b - loss_a.detach() + margin)
        return F.relu(loss_a.detach() - loss_b + margin)
    if kind not in RANK_LOSSES:
        raise ValueError(f"unknown rank loss {kind!r}: expected {', '.join(RANK_LOSSES)}")
    if z_a == z_b:
        return paddle.zeros([], dtype=loss_a.dtype)
    if kind == "better_only":
        better, worse = (loss_a, loss_b) if z_a > z_b else (loss_b, loss_a)
        return F.relu(better - worse.detach() + margin)
    sign = 1.0 if z_a > z_b else -1.0
    return F.relu(sign * (loss_a - loss_b) + margin)


def rank_weight(epoch: float, total_epochs: float, schedule: str, cap: float, ramp: float) -> float:
    """lambda(e): "linear" = min(cap, e / ramp) (the RD-NAS best); "staircase" = the same on the
    whole epochs done (their code's min(2, epoch/10.) with an integer epoch: 0 for the first epoch);
    "sin" = cap * sin(0.8 pi e / E)."""
    if schedule in ("linear", "staircase"):
        e = math.floor(epoch) if schedule == "staircase" else epoch
        return min(cap, e / ramp) if ramp > 0 else cap
    if schedule == "sin":
        return cap * math.sin(0.8 * math.pi * epoch / total_epochs)
    if schedule == "constant":
        return cap
    raise ValueError(f"unknown rank weight schedule {schedule!r}: expected {', '.join(RANK_SCHEDULES)}")


def cream_loss(student_logits: paddle.Tensor, teacher_probs: paddle.Tensor, labels: paddle.Tensor,
               rho, smoothing: float = 0.0) -> paddle.Tensor:
    """Cream's (rho * KD + (2 - rho) * CE) / 2: rho = 1 gives (KD + CE) / 2, rho = 0 gives CE.

    teacher_probs is detached here whatever the caller passes; rho may be a float or a Tensor.
    """
    kd = soft_cross_entropy(student_logits, teacher_probs.detach())
    ce = label_loss(student_logits, labels, smoothing)
    return (rho * kd + (2 - rho) * ce) / 2

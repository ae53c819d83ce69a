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


def rank_loss(loss_a: paddle.Tensor, loss_b: paddle.Tensor, z_a: float, z_b: float,
              kind: str = "authors", margin: float = 0.0) -> paddle.Tensor:
    """Penalise a pair of supernet losses whose order disagrees with the teacher's scores z.

    Higher z = predicted better = should have the lower loss.
    - "authors" (RD-NAS code): only the better-by-teacher subnet's loss gets gradient:
      relu(L_better - stopgrad(L_worse) + margin).
    - "margin" (RD-NAS paper): margin ranking loss max(0, sign(z_a - z_b) * (L_a - L_b) + margin),
      with gradient through both losses.
    Ties in z carry no order and give zero loss.
    """
    if z_a == z_b:
        return paddle.zeros([], dtype=loss_a.dtype)
    if kind == "authors":
        better, worse = (loss_a, loss_b) if z_a > z_b else (loss_b, loss_a)
        return F.relu(better - worse.detach() + margin)
    if kind == "margin":
        sign = 1.0 if z_a > z_b else -1.0
        return F.relu(sign * (loss_a - loss_b) + margin)
    raise ValueError(f"unknown rank loss {kind!r}: expected authors or margin")


def rank_weight(epoch: float, total_epochs: float, schedule: str, cap: float, ramp: float) -> float:
    """lambda(e): "linear" = min(cap, e / ramp) (the RD-NAS best); "sin" = cap * sin(0.8 pi e / E)."""
    if schedule == "linear":
        return min(cap, epoch / ramp) if ramp > 0 else cap
    if schedule == "sin":
        return cap * math.sin(0.8 * math.pi * epoch / total_epochs)
    if schedule == "constant":
        return cap
    raise ValueError(f"unknown rank weight schedule {schedule!r}: expected linear, sin or constant")


def cream_loss(student_logits: paddle.Tensor, teacher_probs: paddle.Tensor, labels: paddle.Tensor,
               rho, smoothing: float = 0.0) -> paddle.Tensor:
    """Cream's (rho * KD + (2 - rho) * CE) / 2: rho = 1 gives (KD + CE) / 2, rho = 0 gives CE.

    teacher_probs is detached here whatever the caller passes; rho may be a float or a Tensor.
    """
    kd = soft_cross_entropy(student_logits, teacher_probs.detach())
    ce = label_loss(student_logits, labels, smoothing)
    return (rho * kd + (2 - rho) * ce) / 2

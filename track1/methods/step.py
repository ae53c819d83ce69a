"""One training step: the subnets it trains, one forward of them all, their losses summed, one backward.

Every subnet comes from the sampler (sandwich: largest, smallest and random; SPOS: one random), a
function of (seed, step), so every rank and a resumed run train the same subnets; the methods
(track1.methods.base) add theirs. In the sandwich rule the first subnet is the largest: it learns
from the labels and every other subnet distils from its detached softmax (in-place distillation);
with the other samplers every subnet learns from the labels. A method may set a subnet's loss. All subnets go through one forward call, so that
paddle.DataParallel sees one forward per backward.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import paddle
import paddle.nn.functional as F

from track1.methods.base import NO_LOSS, Method
from track1.methods.losses import label_loss, soft_cross_entropy
from track1.methods.sampling import Bias, step_subnets
from track1.network.precision import Precision, fp32
from track1.space import Arch, SearchSpace, Subspace


def plan_subnets(cfg: dict, methods: Sequence[Method], step: int,
                 within: Subspace | None = None) -> list[tuple[str, Arch]]:
    """The (role, arch) subnets of a step, drawn from `within` (default: train.draw's sub-space): the
    sampler's (train.sampler, with train.bias), then what each method adds."""
    t = cfg["train"]
    within = within or Subspace.named(t["draw"])
    b = t["bias"]
    subnets = step_subnets(within, t["sampler"], t["num_random"], cfg["run"]["seed"], step,
                           Bias(b["rule"], b["temperature"], b["pool"]))
    for method in methods:
        subnets = subnets + method.extend(list(subnets), step, within)
    return subnets


def train_step(model, space: SearchSpace, subnets: list[tuple[str, Arch]], x: paddle.Tensor,
               y: paddle.Tensor, methods: Sequence[Method] = (), label_smoothing: float = 0.0,
               precision: Precision | None = None, read: bool = True) -> dict:
    """Forward every subnet of the step, sum the losses, one backward. Returns scalars to log:
    floats, or with read=False 0-d tensors left on the device (no host-device sync per step)."""
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        logits = model(x, [space.widths(arch) for _, arch in subnets])
    logits = [fp32(out) for out in logits]  # every loss below is computed in fp32
    losses: dict[str, list] = {}
    total, soft_target = 0.0, None
    for i, ((role, arch), out) in enumerate(zip(subnets, logits)):
        loss = next((found for m in methods
                     if (found := m.subnet_loss(i, role, arch, out, y)) is not None), None)
        if loss is NO_LOSS:
            continue
        if loss is None and soft_target is None:
            loss = label_loss(out, y, label_smoothing)
            if role == "largest":  # the sandwich rule's teacher
                soft_target = F.softmax(out.detach(), axis=-1)
        elif loss is None:
            loss = soft_cross_entropy(out, soft_target)
        total = total + loss
        losses.setdefault(role, []).append(loss.detach())
    scalars = {}
    for method in methods:
        term, more = method.extra_loss(subnets, logits, x, y)
        scalars.update(more)
        if term is not None:
            total = total + term
    if precision is not None:
        precision.backward(total)
    else:
        total.backward()
    for role, vals in losses.items():
        scalars[f"loss/{role}"] = paddle.stack(vals).mean()
    scalars["loss/total"] = total.detach()
    return read_scalars(scalars) if read else scalars


def read_scalars(scalars: dict) -> dict[str, float]:
    """The scalars as floats: one host-device sync, so only on logging steps."""
    return {k: v.item() if isinstance(v, paddle.Tensor) else v for k, v in scalars.items()}

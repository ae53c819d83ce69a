"""Supernet training: the sandwich / SPOS step with optional ranking distillation, and its loop.

The train command takes a config and nothing else. Stand-alone ground truth can reach the training
process only through the optional rank check (track1/monitor.py), which runs between epochs, after
the last optimizer step, and whose numbers go to the log only: it can never become a training
signal (a competition rule; tests/test_monitor.py checks the weights are the same with and without).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from .cream import Cream, cream_loss
from .config import config_hash, run_dir
from .data import TrainData, calibration_batches, validation_batches
from .losses import label_loss, rank_loss, rank_weight, soft_cross_entropy
from .sampling import MarginSampler, step_subnets
from .scoring import score_widths
from .space import Arch, SearchSpace
from .supernet import SuperNet
from .teacher import Teacher


def build_space(cfg: dict) -> SearchSpace:
    s = cfg["space"]
    return SearchSpace(width_mult=float(s["width_mult"]), resolution=int(s["resolution"]),
                       num_classes=int(s["num_classes"]))


def build_supernet(cfg: dict) -> tuple[SearchSpace, SuperNet]:
    """The supernet, initialised from the run seed. The name guard gives the parameters the same
    global names in every process, which the optimizer state is keyed by."""
    space = build_space(cfg)
    paddle.seed(int(cfg["run"]["seed"]))
    with paddle.utils.unique_name.guard():
        model = SuperNet(space, act=cfg["space"]["act"],
                         zero_init_residual=bool(cfg["train"]["zero_init_residual"]))
    return space, model


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 0, then cosine decay to min_ratio, as a multiple of the base lr."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(cfg: dict, model: SuperNet, total_steps: int, steps_per_epoch: int):
    t = cfg["train"]
    base_lr = float(t["lr"])
    warmup = int(round(float(t["warmup_epochs"]) * steps_per_epoch))
    min_ratio = float(t["min_lr"]) / base_lr if base_lr else 0.0
    scheduler = paddle.optimizer.lr.LambdaDecay(
        base_lr, lambda s: lr_factor(s, warmup, total_steps, min_ratio))
    wd = float(t["weight_decay"])
    if t["no_decay_bn_bias"]:
        # 1-D parameters are BN scales/shifts, biases and PReLU slopes.
        decay = [p for p in model.parameters() if len(p.shape) > 1]
        no_decay = [p for p in model.parameters() if len(p.shape) <= 1]
        params = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        params = [{"params": model.parameters(), "weight_decay": wd}]
    clip = paddle.nn.ClipGradByValue(float(t["grad_clip"])) if t["grad_clip"] else None
    if t["optimizer"] == "momentum":
        opt = paddle.optimizer.Momentum(learning_rate=scheduler, momentum=float(t["momentum"]),
                                        parameters=params, use_nesterov=bool(t["nesterov"]),
                                        grad_clip=clip)
    elif t["optimizer"] == "adamw":
        opt = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=params, grad_clip=clip)
    else:
        raise ValueError(f"unknown optimizer {t['optimizer']!r}: expected momentum or adamw")
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


def train_step(model, space: SearchSpace, subnets: list[tuple[str, Arch]], x, y, cfg: dict,
               pairs: list[tuple[Arch, Arch, float]] = (), teacher: Teacher | None = None,
               lam: float = 0.0, cream: Cream | None = None) -> dict:
    """Forward every subnet of the step, sum the losses, one backward. Returns scalars to log.

    The first subnet learns from the labels; in the sandwich rule it is the largest and every
    other subnet distils from its detached softmax (in-place distillation). Each ranking pair is
    (a sandwich random subnet, its margin-sampled partner); the partner distils too, and the pair
    adds lambda * rank_loss on their label losses, ordered by the teacher.
    All subnets go through one forward call, so that paddle.DataParallel sees one forward per
    backward.
    """
    t, r = cfg["train"], cfg["train"]["ranking"]
    roles = list(subnets) + [("partner", b) for _, b, _ in pairs]
    # Prioritized paths: the subnets of cream.roles learn from a board path (no-grad teacher
    # forwards on the bare SuperNet, before the step's one forward) and are offered to the board.
    students = [i for i, (role, _) in enumerate(subnets) if cream is not None and role in cream.roles]
    plans = {}
    if students:
        base = getattr(model, "_layers", model)  # the SuperNet under paddle.DataParallel
        plans = dict(zip(students, cream.plan(base, [subnets[i][1] for i in students], x)))
    logits = model(x, [space.widths(arch) for _, arch in roles])
    losses: dict[str, list] = {}
    logits_of: dict[Arch, paddle.Tensor] = {}
    total, soft_target = 0.0, None
    for i, ((role, arch), out) in enumerate(zip(roles, logits)):
        plan = plans.get(i)
        if plan is not None:
            loss = cream_loss(out, plan.teacher_probs, y, plan.rho, float(t["label_smoothing"]))
        elif soft_target is None:
            loss = label_loss(out, y, float(t["label_smoothing"]))
            soft_target = F.softmax(out.detach(), axis=-1)
        else:
            loss = soft_cross_entropy(out, soft_target)
        total = total + loss
        if i in plans:
            cream.observe(arch, out, x, y)
        losses.setdefault(role, []).append(loss.item())
        logits_of.setdefault(arch, out)
    scalars = {}
    if students:
        used = [p for p in plans.values() if p is not None]
        scalars["cream/taught"] = len(used) / len(students)
        if used:
            scalars["cream/rho"] = float(np.mean([p.rho for p in used]))
            scalars["cream/teacher_rank"] = float(np.mean([p.rank for p in used]))
        scalars.update(cream.scalars())
    if pairs:
        rank_terms, agree = [], 0
        label_losses = {arch: label_loss(logits_of[arch], y)
                        for arch in {a for p in pairs for a in p[:2]}}
        for a, b, dist in pairs:
            za, zb = teacher(space.widths(a)), teacher(space.widths(b))
            margin = float(r["margin"]) + float(r["margin_per_distance"]) * max(
                0.0, dist - float(r["threshold"]))
            rank_terms.append(rank_loss(label_losses[a], label_losses[b], za, zb, r["loss"], margin))
            agree += int((za > zb) == (label_losses[a].item() < label_losses[b].item()))
        rl = paddle.add_n(rank_terms) / len(rank_terms)
        total = total + lam * rl
        scalars.update({"rank/loss": rl.item(), "rank/lambda": lam, "rank/agree": agree / len(pairs)})
    total.backward()
    for role, vals in losses.items():
        scalars[f"loss/{role}"] = float(np.mean(vals))
    scalars["loss/total"] = total.item()
    return scalars


def train(cfg: dict, resume: bool = False, progress: bool = True) -> Path:
    """Train the supernet of cfg; returns the final checkpoint directory."""
    # Optimizer accumulators get global names when first used; a fresh name scope makes them the
    # same in every process and every call, so a saved optimizer state always loads.
    with paddle.utils.unique_name.guard():
        return _train(cfg, resume, progress)


def _train(cfg: dict, resume: bool, progress: bool) -> Path:
    out = run_dir(cfg)
    t, r = cfg["train"], cfg["train"]["ranking"]
    seed, chash = int(cfg["run"]["seed"]), config_hash(cfg)
    rank, world = 0, 1
    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.init_parallel_env()
        rank, world = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    is_main = rank == 0

    space, model = build_supernet(cfg)
    data = TrainData(cfg, rank=rank, world_size=world)
    spe, epochs = data.steps_per_epoch, int(t["epochs"])
    schedule_steps = spe * epochs
    stop_at = min(schedule_steps, int(t["max_steps"])) if int(t["max_steps"]) > 0 else schedule_steps
    opt, scheduler = build_optimizer(cfg, model, schedule_steps, spe)
    cream = Cream.from_config(cfg, space) if t["cream"]["enabled"] else None

    step, seconds_before = 0, 0.0  # seconds_before: training time of the runs this one resumes
    started = time.perf_counter()
    last = checkpoint.latest(out)
    if last is not None:
        if not resume:
            raise checkpoint.CheckpointError(
                f"{last}: run '{cfg['run']['name']}' already has checkpoints; pass --resume to "
                f"continue it or set run.name to start another")
        meta = checkpoint.load_weights(last, model, expect_hash=chash)
        state = checkpoint.load_state(last)
        opt.set_state_dict(state["optimizer"])
        scheduler.set_state_dict(state["scheduler"])
        if cream is not None:
            cream.set_state_dict(state["cream"])
        step, seconds_before = int(meta["step"]), float(meta.get("train_seconds", 0.0))
        if is_main:
            print(f"resumed from {last} at step {step}/{stop_at}")
    if step >= stop_at:
        return last

    net = paddle.DataParallel(model, find_unused_parameters=True) if world > 1 else model
    writer = None
    if is_main and t["visualdl"]:
        from visualdl import LogWriter
        writer = LogWriter(logdir=str(out / "vdl"))
    sampler = MarginSampler(space, r["distance"], float(r["threshold"]), float(r["depth_weight"]),
                            float(r["width_weight"]), int(r["max_tries"])) if r["enabled"] else None
    teacher = Teacher(cfg, space) if r["enabled"] else None
    eval_sets = _eval_sets(cfg) if is_main else None
    rank_check = None
    if is_main and int(cfg["monitor"]["every_epochs"]) > 0:
        from .monitor import RankCheck
        rank_check = RankCheck(cfg, space, out)

    def save(tag: str) -> Path | None:
        if world > 1:
            _check_ranks_agree(model)
        if not is_main:
            return None
        state = {"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}
        if cream is not None:
            state["cream"] = cream.state_dict()
        meta = {"config_hash": chash, "step": step, "epoch": step / spe, "steps_per_epoch": spe,
                "finished": step >= stop_at,
                "train_seconds": round(seconds_before + time.perf_counter() - started, 3)}
        path = checkpoint.save(out, tag, model, state, meta)
        checkpoint.prune(out, keep={tag})
        return path

    bar = tqdm(total=stop_at, initial=step, desc="train", unit="step", disable=not (progress and is_main),
               mininterval=1.0, dynamic_ncols=True)
    final = None
    while step < stop_at:
        epoch, start = divmod(step, spe)
        for x, y in data.batches(epoch, start_step=start):
            tic = time.perf_counter()
            model.train()
            subnets = step_subnets(space, t["sampler"], int(t["num_random"]), seed, step)
            pairs, lam = [], 0.0
            if sampler is not None:
                firsts = [a for role, a in subnets if role == "random"][: int(r["pairs"])]
                pairs = [(a, b, d) for a, (b, d) in zip(firsts, sampler.partners(firsts, seed, step))]
                lam = rank_weight(step / spe, epochs, r["schedule"], float(r["cap"]), float(r["ramp"]))
            active = cream if cream is not None and cream.active(step / spe) else None
            scalars = train_step(net, space, subnets, x, y, cfg, pairs, teacher, lam, active)
            opt.step()
            # None, not zero: a parameter this step's subnets did not use must not be updated by
            # momentum or weight decay, and a resumed run (fresh None grads) must do the same.
            opt.clear_grad(set_to_zero=False)
            if cream is not None and cream.meta_due(step, step / spe):
                # The matcher's look-ahead, on the bare SuperNet at this step's lr; it leaves the
                # supernet's weights, BN statistics and gradients as they are.
                student = next((a for role, a in subnets if role in cream.roles), None)
                if student is not None:
                    scalars.update(cream.meta_step(model, student, x, y, lr=opt.get_lr()))
            scheduler.step()
            step += 1
            bar.update(1)
            if is_main and step % int(t["log_every"]) == 0:
                scalars["lr"] = opt.get_lr()
                scalars["throughput/images_per_s"] = x.shape[0] * world / (time.perf_counter() - tic)
                if sampler is not None:
                    scalars["rank/acceptance"] = sampler.acceptance_rate
                bar.set_postfix(loss=f"{scalars['loss/total']:.3f}", lr=f"{scalars['lr']:.4f}")
                if writer:
                    for k, v in scalars.items():
                        writer.add_scalar(k, v, step)
            if step >= stop_at:
                break
            if step % spe and step % int(t["save_every_steps"]) == 0:
                save(f"step_{step:07d}")
        if step % spe == 0:
            if is_main:
                top1 = {role: score_widths(model, space.widths(arch), *eval_sets)[0]
                        for role, arch in (("largest", space.largest()), ("smallest", space.smallest()))}
                bar.write(f"epoch {step // spe} step {step}: val top-1 largest {top1['largest']:.4f}"
                          f" smallest {top1['smallest']:.4f}")
                if writer:
                    for role, v in top1.items():
                        writer.add_scalar(f"val/top1_{role}", v, step)
                if rank_check is not None and rank_check.due(step // spe):
                    checked = rank_check(model, step // spe)  # to the log only (see track1/monitor.py)
                    bar.write(f"epoch {step // spe}: {rank_check.describe(checked)}")
                    if writer:
                        for k, v in checked.items():
                            writer.add_scalar(k, v, step)
            final = save(f"epoch_{step // spe:03d}")
        else:  # stopped by train.max_steps mid-epoch: no evaluation, so a resume continues exactly
            final = save(f"step_{step:07d}")
    bar.close()
    if writer:
        writer.close()
    return final if final is not None else checkpoint.latest(out)


def _check_ranks_agree(model: SuperNet) -> None:
    """Stop if the ranks' weights differ: a silent drift (e.g. ranks sampling different subnets)
    would otherwise train several diverging supernets and save only one of them."""
    digest = paddle.stack([paddle.stack([w.astype("float64").sum(), w.astype("float64").abs().sum()])
                           for w in model.parameters()])
    gathered: list = []
    paddle.distributed.all_gather(gathered, digest)
    if any(not bool((g == gathered[0]).all().item()) for g in gathered[1:]):
        raise RuntimeError("distributed ranks hold different supernet weights; every rank must "
                           "sample the same subnets with the same seed")


def _eval_sets(cfg: dict) -> tuple[list, list]:
    """Calibration and validation batches for the epoch-end check of largest and smallest."""
    s = dict(cfg["score"])
    s["val_images"] = int(cfg["train"]["eval_images"])
    c = {**cfg, "score": s}
    return calibration_batches(c), validation_batches(c)

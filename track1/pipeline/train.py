"""Supernet training: the sandwich / SPOS step with optional ranking distillation, and its loop.

The train command takes a config and nothing else. Stand-alone ground truth can reach the training
process only through the optional rank check (track1/monitor.py), which runs between epochs, after
the last optimizer step, and whose numbers go to the log only: it can never become a training
signal (a competition rule; tests/test_monitor.py checks the weights are the same with and without).
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from track1.pipeline import checkpoint
from track1.methods.cream import Cream
from track1.pipeline.config import ConfigError, config_hash, run_dir
from track1.network.conv import MODES as CONV_MODES
from track1.data import TrainData, calibration_batches, validation_batches
from track1.methods.losses import RANK_LOSSES, cream_loss, label_loss, rank_loss, rank_weight, soft_cross_entropy
from track1.pipeline.precision import Precision, fp32
from track1.methods.sampling import PAIR_MODES, MarginSampler, step_pairs, step_subnets
from track1.ranking.scoring import score_shared
from track1.space import Arch, SearchSpace
from track1.network.supernet import SuperNet
from track1.methods.teacher import Teacher


def build_space(cfg: dict) -> SearchSpace:
    s = cfg["space"]
    return SearchSpace(width_mult=float(s["width_mult"]), resolution=int(s["resolution"]),
                       num_classes=int(s["num_classes"]))


def conv_mode(cfg: dict) -> str:
    """train.conv, checked: the convolution implementation of the supernet and stand-alone nets."""
    mode = cfg["train"]["conv"]
    if mode not in CONV_MODES:
        raise ConfigError(f"train.conv: {mode!r} is not one of {', '.join(CONV_MODES)}")
    return mode


def build_supernet(cfg: dict) -> tuple[SearchSpace, SuperNet]:
    """The supernet, initialised from the run seed. The name guard gives the parameters the same
    global names in every process, which the optimizer state is keyed by."""
    space = build_space(cfg)
    paddle.seed(int(cfg["run"]["seed"]))
    with paddle.utils.unique_name.guard():
        model = SuperNet(space, act=cfg["space"]["act"],
                         zero_init_residual=bool(cfg["train"]["zero_init_residual"]),
                         conv=conv_mode(cfg), fuse_bn=True)
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


def build_sampler(cfg: dict, space: SearchSpace) -> MarginSampler | None:
    """The ranking pairs' margin sampler (None without ranking distillation)."""
    r = cfg["train"]["ranking"]
    if not r["enabled"]:
        return None
    _check_ranking(cfg)
    return MarginSampler(space, r["distance"], float(r["threshold"]), float(r["depth_weight"]),
                         float(r["width_weight"]), int(r["max_tries"]))


def plan_step(space: SearchSpace, cfg: dict, sampler: MarginSampler | None,
              step: int) -> tuple[list[tuple[str, Arch]], list[tuple[Arch, Arch, float]]]:
    """The (role, arch) subnets of a step, with what its ranking pairs add, and the pairs: a function
    of (seed, step), so every rank and a resumed run train the same subnets."""
    t, r, seed = cfg["train"], cfg["train"]["ranking"], int(cfg["run"]["seed"])
    subnets = step_subnets(space, t["sampler"], int(t["num_random"]), seed, step)
    if sampler is None:
        return subnets, []
    added, pairs = step_pairs(space, r["pair_mode"], subnets, sampler, int(r["pairs"]), seed, step)
    return subnets + added, pairs


def train_step(model, space: SearchSpace, subnets: list[tuple[str, Arch]], x, y, cfg: dict,
               pairs: list[tuple[Arch, Arch, float]] = (), teacher: Teacher | None = None,
               lam: float = 0.0, cream: Cream | None = None, precision: Precision | None = None,
               read: bool = True) -> dict:
    """Forward every subnet of the step, sum the losses, one backward. Returns scalars to log:
    floats, or with read=False 0-d tensors left on the device (no host-device sync per step).

    The first subnet learns from the labels; in the sandwich rule it is the largest and every
    other subnet distils from its detached softmax (in-place distillation), except "pair" subnets
    (sampling.step_pairs), which learn only through the rank term. Each ranking pair (a, b) adds
    lambda * rank_loss on the two subnets' label losses, ordered by the teacher; the pair terms are
    averaged or summed (train.ranking.reduce). All subnets go through one forward call, so that
    paddle.DataParallel sees one forward per backward.
    """
    t, r = cfg["train"], cfg["train"]["ranking"]
    # Prioritized paths: the subnets of cream.roles learn from a board path (no-grad teacher
    # forwards on the bare SuperNet, before the step's one forward) and are offered to the board.
    students = [i for i, (role, _) in enumerate(subnets) if cream is not None and role in cream.roles]
    plans = {}
    if students:
        base = getattr(model, "_layers", model)  # the SuperNet under paddle.DataParallel
        plans = dict(zip(students, cream.plan(base, [subnets[i][1] for i in students], x)))
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        logits = model(x, [space.widths(arch) for _, arch in subnets])
    logits = [fp32(out) for out in logits]  # every loss below is computed in fp32
    losses: dict[str, list] = {}
    logits_of: dict[Arch, paddle.Tensor] = {}
    total, soft_target = 0.0, None
    for i, ((role, arch), out) in enumerate(zip(subnets, logits)):
        logits_of.setdefault(arch, out)
        if role == "pair":
            continue
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
            cream.observe(arch, out, x, y, plan)
        losses.setdefault(role, []).append(loss.detach())
    scalars = {}
    if students:
        used = [p for p in plans.values() if p is not None]
        scalars["cream/taught"] = len(used) / len(students)
        if used:
            scalars["cream/rho"] = float(np.mean([p.rho for p in used]))
            scalars["cream/teacher_rank"] = float(np.mean([p.rank for p in used]))
        scalars.update(cream.scalars())
    if pairs:
        rank_terms, agree = [], []
        label_losses = {arch: label_loss(logits_of[arch], y)
                        for arch in {a for p in pairs for a in p[:2]}}
        for a, b, dist in pairs:
            za, zb = teacher(space.widths(a)), teacher(space.widths(b))
            margin = float(r["margin"]) + float(r["margin_per_distance"]) * max(
                0.0, dist - float(r["threshold"]))
            rank_terms.append(rank_loss(label_losses[a], label_losses[b], za, zb, r["loss"], margin))
            a_lower = label_losses[a].detach() < label_losses[b].detach()
            agree.append(a_lower if za > zb else ~a_lower)
        rl = paddle.add_n(rank_terms)
        if r["reduce"] == "mean":
            rl = rl / len(rank_terms)
        total = total + lam * rl
        scalars.update({"rank/loss": rl.detach(), "rank/lambda": lam,
                        "rank/agree": paddle.stack(agree).astype("float32").mean()})
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
    precision = Precision.from_config(cfg)
    if is_main:
        print(describe_device(world, precision))

    space, model = build_supernet(cfg)
    data = TrainData(cfg, rank=rank, world_size=world)
    spe, epochs = data.steps_per_epoch, int(t["epochs"])
    schedule_steps = spe * epochs
    stop_at = min(schedule_steps, int(t["max_steps"])) if int(t["max_steps"]) > 0 else schedule_steps
    opt, scheduler = build_optimizer(cfg, model, schedule_steps, spe)
    cream = Cream.from_config(cfg, space, schedule_steps) if t["cream"]["enabled"] else None
    if is_main and r["enabled"] and r["schedule"] == "linear" and r["cap"] * r["ramp"] > epochs:
        # ramp counts absolute epochs; say so when this run ends before lambda reaches its cap
        print(f"note: train.ranking.ramp {r['ramp']} (epochs) brings lambda to only "
              f"{epochs / r['ramp']:.3g} of cap {r['cap']} by the end of this {epochs}-epoch run")

    step, seconds_before = 0, 0.0  # seconds_before: training time of the runs this one resumes
    started = time.perf_counter()
    last = checkpoint.latest(out)
    if last is not None:
        if not resume:
            raise checkpoint.CheckpointError(
                f"{last}: run '{cfg['run']['name']}' already has checkpoints; pass --resume to "
                f"continue it or set run.name to start another")
        meta = checkpoint.load_weights(last, model, expect_hash=chash)
        trained_on = meta.get("world_size")
        if trained_on is not None and trained_on != world:
            raise checkpoint.CheckpointError(
                f"{last}: trained with {trained_on} processes, this run has {world}: the global batch, "
                f"epoch length and LR schedule would change; resume with NPROC={trained_on}")
        if trained_on is None and meta.get("steps_per_epoch", spe) != spe:  # older checkpoints
            raise checkpoint.CheckpointError(
                f"{last}: written with {meta['steps_per_epoch']} steps an epoch, this run has {spe} "
                f"(another number of processes?); resume with the NPROC it was trained with")
        state = checkpoint.load_state(last)
        opt.set_state_dict(state["optimizer"])
        scheduler.set_state_dict(state["scheduler"])
        if cream is not None:
            cream.set_state_dict(state["cream"])
        precision.set_state_dict(state.get("precision", {}))
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
    sampler = build_sampler(cfg, space)
    teacher = Teacher(cfg, space, out / "teacher") if r["enabled"] else None
    eval_sets = _eval_sets(cfg, rank, world)
    rank_check = None
    if int(cfg["monitor"]["every_epochs"]) > 0:
        from track1.pipeline.monitor import RankCheck
        rank_check = RankCheck(cfg, space, out, rank=rank, world=world)

    def save(tag: str) -> Path | None:
        if world > 1:
            _check_ranks_agree(model)
        if not is_main:
            return None
        state = {"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}
        if cream is not None:
            state["cream"] = cream.state_dict()
        state["precision"] = precision.state_dict()
        meta = {"config_hash": chash, "step": step, "epoch": step / spe, "steps_per_epoch": spe,
                "world_size": world, "finished": step >= stop_at,
                "val_top1": epoch_top1 if tag.startswith("epoch") else None,
                "train_seconds": round(seconds_before + time.perf_counter() - started, 3)}
        path = checkpoint.save(out, tag, model, state, meta)
        checkpoint.prune(out, keep={tag})
        return path

    epoch_top1: dict | None = None  # the last epoch-end check, recorded with its checkpoint
    bar = tqdm(total=stop_at, initial=step, desc="train", unit="step", disable=not (progress and is_main),
               mininterval=1.0, dynamic_ncols=True)
    final = None
    window = Window(data)
    while step < stop_at:
        epoch, start = divmod(step, spe)
        for x, y in data.batches(epoch, start_step=start):
            # forward, backward, update
            model.train()
            log_now = is_main and (step + 1) % t["log_every"] == 0
            subnets, pairs = plan_step(space, cfg, sampler, step)
            lam = rank_weight(step / spe, epochs, r["schedule"], float(r["cap"]),
                              float(r["ramp"])) if pairs else 0.0
            active = cream if cream is not None and cream.active(step) else None
            # The Cream matcher's look-ahead (on the bare SuperNet, this step's student), before the
            # step (Cream's order) or after it; it leaves BN statistics and grads as they are, and
            # the weights too unless train.cream.meta_student_step.
            meta_scalars = {}
            if cream is not None and cream.meta_before and cream.meta_due(step):
                meta_scalars = cream.meta_step(model, subnets, x, y, step, opt.get_lr(), opt)
            scalars = train_step(net, space, subnets, x, y, cfg, pairs, teacher, lam, active,
                                 precision, read=log_now)
            precision.step(opt)
            # None, not zero: a parameter this step's subnets did not use must not be updated by
            # momentum or weight decay, and a resumed run (fresh None grads) must do the same.
            opt.clear_grad(set_to_zero=False)
            if cream is not None and not cream.meta_before and cream.meta_due(step):
                meta_scalars = cream.meta_step(model, subnets, x, y, step, opt.get_lr(), opt)
            scalars.update(meta_scalars)
            scheduler.step()
            step += 1
            bar.update(1)
            window.images += x.shape[0] * world
            # logging (scalars were read from the device only on this step)
            if log_now:
                scalars["lr"] = opt.get_lr()
                scalars.update(window.scalars())
                if sampler is not None:
                    scalars["rank/acceptance"] = sampler.acceptance_rate
                bar.set_postfix(loss=f"{scalars['loss/total']:.3f}", lr=f"{scalars['lr']:.4f}",
                                img_s=f"{scalars['throughput/images_per_s']:.0f}",
                                wait=f"{scalars['throughput/data_wait']:.0%}")
                _log(writer, scalars, step)
            if step >= stop_at:
                break
            # mid-epoch checkpoint
            if step % spe and step % t["save_every_steps"] == 0:
                save(f"step_{step:07d}")
                window.restart()
        if step % spe == 0:
            # epoch end: evaluation and rank check on every rank's share, then the checkpoint
            epoch_top1 = evaluate_ends(model, space, eval_sets, t["eval_subnets"], world)
            if is_main:
                bar.write(f"epoch {step // spe} step {step}: {describe_health(epoch_top1)}")
                _log(writer, epoch_top1, step)
            if rank_check is not None and rank_check.due(step // spe):
                checked = rank_check(model, step // spe)  # to the log only (see track1/monitor.py)
                if is_main:
                    bar.write(f"epoch {step // spe}: {rank_check.describe(checked)}")
                    _log(writer, checked, step)
            final = save(f"epoch_{step // spe:03d}")
            window.restart()
        else:  # stopped by train.max_steps mid-epoch: no evaluation, so a resume continues exactly
            final = save(f"step_{step:07d}")
    bar.close()
    if writer:
        writer.close()
    return final if final is not None else checkpoint.latest(out)


def _check_ranking(cfg: dict) -> None:
    r = cfg["train"]["ranking"]
    for key, allowed in (("loss", RANK_LOSSES), ("pair_mode", PAIR_MODES), ("reduce", ("mean", "sum"))):
        if r[key] not in allowed:
            raise ConfigError(f"train.ranking.{key}={r[key]!r}: expected one of {', '.join(allowed)}")
    if r["pair_mode"] == "free" and (cfg["train"]["sampler"] != "sandwich"
                                     or int(cfg["train"]["num_random"]) < 2):
        raise ConfigError("train.ranking.pair_mode=free pairs the step's own random subnets: it "
                          "needs train.sampler=sandwich and train.num_random >= 2")


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


def _log(writer, scalars: dict[str, float], step: int) -> None:
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)


def describe_device(world: int, precision: Precision) -> str:
    """The start-up line: device, Paddle build, world size and precision."""
    cuda = paddle.is_compiled_with_cuda()
    build = f"CUDA {paddle.version.cuda()}" if cuda else "CPU"
    line = (f"device {paddle.device.get_device()}, Paddle {paddle.__version__} ({build} build), "
            f"world size {world}, amp {precision.mode}{precision.device_note()}")
    if world > 1 and not cuda:
        line += (f"\nnote: {world} processes with a CPU-only Paddle: the ranks run on CPU and talk over "
                 f"gloo; for GPUs install paddlepaddle-gpu (DEVICE=gpu bash run.sh --setup)")
    return line


def probe_subnets(space: SearchSpace, n: int) -> list[Arch]:
    """A fixed set of official-distribution subnets (the same in every run) for health checks."""
    rng = np.random.default_rng(20220)
    return [space.sample(rng) for _ in range(n)]


def evaluate_ends(model: SuperNet, space: SearchSpace, eval_sets: tuple, n_probe: int = 0,
                  world: int = 1) -> dict[str, float]:
    """Validation top-1 (after BN re-calibration) of the largest and smallest subnets and the mean,
    min and max over `n_probe` fixed official subnets: the supernet's health. eval_sets:
    (calibration batches, this rank's validation shard, chunk_images), _eval_sets' tuple. Each rank
    evaluates its share of the images, at most chunk_images at a time; the supernet's BN
    statistics are left as they were (so no checkpoint carries them)."""
    roles = {"largest": space.widths(space.largest()), "smallest": space.widths(space.smallest())}
    probes = [space.widths(a) for a in probe_subnets(space, n_probe)]
    acc = {w: a for w, (a, _) in score_shared(model, [*roles.values(), *probes], *eval_sets,
                                              world=world).items()}
    out = {f"val/top1_{role}": acc[w] for role, w in roles.items()}
    if probes:
        p = [acc[w] for w in probes]
        out.update({"val/top1_probe_mean": float(np.mean(p)), "val/top1_probe_min": min(p),
                    "val/top1_probe_max": max(p)})
    return out


def describe_health(top1: dict[str, float]) -> str:
    text = f"val top-1 largest {top1['val/top1_largest']:.4f} smallest {top1['val/top1_smallest']:.4f}"
    if "val/top1_probe_mean" in top1:
        text += (f", official subnets mean {top1['val/top1_probe_mean']:.4f} "
                 f"({top1['val/top1_probe_min']:.4f}-{top1['val/top1_probe_max']:.4f})")
    return text


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


def _eval_sets(cfg: dict, rank: int = 0, world: int = 1) -> tuple:
    """The epoch-end check's images: all calibration batches, this rank's share of the first
    train.eval_images validation images (only those are decoded and kept), and score.chunk_images."""
    s = cfg["score"]
    return (calibration_batches(cfg), validation_batches(cfg, (rank, world), int(cfg["train"]["eval_images"])),
            s["chunk_images"])

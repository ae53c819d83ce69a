"""The supernet's training loop: resume, steps, logging, epoch-end checks and checkpoints.

The train command takes a config and nothing else. Stand-alone ground truth can reach the training
process only through the optional rank check (track1/pipeline/monitor.py), which runs between
epochs, after the last optimizer step, and whose numbers go to the log only: it can never become a
training signal (a competition rule; tests/pipeline/test_monitor.py checks the weights are the same
with and without).
"""
from __future__ import annotations

import time
from pathlib import Path

import paddle

from track1.data import TrainData
from track1.network.supernet import SuperNet
from track1.pipeline import checkpoint, runtime
from track1.pipeline.config import run_dir
from track1.pipeline.progress import Progress
from track1.pipeline.trainer import Trainer
from track1.ranking.health import describe_health, health, health_sets
from track1.space.split import Split


def train(cfg: dict, resume: bool = False, progress: bool = True, split: Split | None = None,
          initial_state: dict | None = None) -> Path | None:
    """Train the supernet of cfg (a few-shot supernet of `split`, starting from `initial_state`:
    track1.pipeline.fewshot); the final checkpoint directory (None on ranks other than 0)."""
    # Optimizer accumulators get global names when first used; a fresh name scope makes them the
    # same in every process and every call, so a saved optimizer state always loads.
    with paddle.utils.unique_name.guard():
        return _train(cfg, resume, progress, split, initial_state)


def _train(cfg: dict, resume: bool, progress: bool, split: Split | None, initial_state: dict | None) -> Path | None:
    out, t = run_dir(cfg), cfg["train"]
    rank, world = distributed()
    main = rank == 0
    data = TrainData(cfg, rank=rank, world_size=world)
    spe = data.steps_per_epoch
    trainer = Trainer(cfg, spe, world, out, split, initial_state)
    if main:
        print(runtime.describe(world, trainer.precision.mode, trainer.precision.device_note()))
        for line in trainer.notes() + runtime.shared_memory_notes(cfg):
            print(line)
    stop_at = trainer.run_steps
    step, seconds_before = resume_from(cfg, out, trainer, world, spe, resume, main, stop_at)
    if step >= stop_at:
        return checkpoint.latest(out)
    if step == 0:
        for line in trainer.start():
            if main:
                print(line)
    started = time.perf_counter()

    def save(tag: str, health_top1: dict | None = None) -> Path | None:
        meta = {"step": step, "epoch": step / spe, "steps_per_epoch": spe, "world_size": world,
                "finished": step >= stop_at, "val_top1": health_top1, "split": split and split.name,
                "train_seconds": round(seconds_before + time.perf_counter() - started, 3)}
        return save_checkpoint(cfg, out, tag, trainer, meta, world, main)

    sets = health_sets(cfg, rank, world)
    rank_check = None
    if cfg["monitor"]["every_epochs"] > 0:
        from track1.pipeline.monitor import RankCheck
        rank_check = RankCheck(cfg, trainer.space, out, rank=rank, world=world)
    report = Progress(out, data, stop_at, step, main, t["visualdl"], progress)
    final = None
    while step < stop_at:
        epoch, start = divmod(step, spe)
        for x, y in data.batches(epoch, start_step=start):
            # forward, backward, update
            log_now = main and (step + 1) % t["log_every"] == 0
            lr = trainer.optimizer.get_lr()
            scalars = trainer.step(x, y, step, read=log_now)
            step += 1
            report.stepped(x.shape[0] * world)
            # logging (scalars were read from the device only on this step)
            if log_now:
                report.log(scalars, step, lr=lr)
            if step >= stop_at:
                break
            # mid-epoch checkpoint
            if step % spe and step % t["save_every_steps"] == 0:
                save(f"step_{step:07d}")
                report.window.restart()
        if step % spe == 0 or step == trainer.total_steps:
            # epoch end (or the end of a run of part of an epoch, a few-shot step's): health and rank
            # check on every rank's share, then the checkpoint
            ep = -(-step // spe)
            top1 = health(trainer.model, trainer.space, sets, t["eval_subnets"], world)
            report.say(f"epoch {ep} step {step}: {describe_health(top1)}")
            report.log(top1, step)
            if rank_check is not None and rank_check.due(ep):
                checked = rank_check(trainer.model, ep)  # to the log only (track1/pipeline/monitor.py)
                report.say(f"epoch {ep}: {rank_check.describe(checked)}")
                report.log(checked, step)
            final = save(f"epoch_{ep:03d}", top1)
            report.window.restart()
        else:  # stopped by train.max_steps mid-epoch: no evaluation, so a resume continues exactly
            final = save(f"step_{step:07d}")
    data.close()
    report.close()
    return final if final is not None or not main else checkpoint.latest(out)


def distributed() -> tuple[int, int]:
    """(rank, world size), after initialising the parallel environment under the launcher."""
    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.init_parallel_env()
        return paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    return 0, 1


def resume_from(cfg: dict, out: Path, trainer: Trainer, world: int, spe: int, resume: bool, main: bool,
                stop_at: int) -> tuple[int, float]:
    """(step, training seconds before) of the run's latest checkpoint, loaded into the trainer;
    (0, 0.0) for a new run. A checkpoint of another config or world size is refused."""
    last = checkpoint.latest(out)
    if last is None:
        return 0, 0.0
    if not resume:
        raise checkpoint.CheckpointError(
            f"{last}: run '{cfg['run']['name']}' already has checkpoints; pass --resume to "
            f"continue it or set run.name to start another")
    meta = checkpoint.load_weights(last, trainer.model, cfg)
    trained_on = meta.get("world_size")
    if trained_on is not None and trained_on != world:
        raise checkpoint.CheckpointError(
            f"{last}: trained with {trained_on} processes, this run has {world}: the global batch, "
            f"epoch length and LR schedule would change; resume with NPROC={trained_on}")
    if trained_on is None and meta.get("steps_per_epoch", spe) != spe:  # older checkpoints
        raise checkpoint.CheckpointError(
            f"{last}: written with {meta['steps_per_epoch']} steps an epoch, this run has {spe} "
            f"(another number of processes?); resume with the NPROC it was trained with")
    trainer.set_state_dict(checkpoint.load_state(last))
    if main:
        print(f"resumed from {last} at step {meta['step']}/{stop_at}")
    return meta["step"], meta.get("train_seconds", 0.0)


def save_checkpoint(cfg: dict, out: Path, tag: str, trainer: Trainer, meta: dict, world: int,
                    main: bool) -> Path | None:
    """Rank 0 writes the checkpoint (after the ranks agree on the weights) and drops older step ones."""
    if world > 1:
        check_ranks_agree(trainer.model)
    if not main:
        return None
    path = checkpoint.save(out, tag, trainer.model, trainer.state_dict(), meta, cfg)
    checkpoint.prune(out, keep={tag})
    return path


def check_ranks_agree(model: SuperNet) -> None:
    """Stop if the ranks' weights differ: a silent drift (e.g. ranks sampling different subnets)
    would otherwise train several diverging supernets and save only one of them."""
    digest = paddle.stack([paddle.stack([w.astype("float64").sum(), w.astype("float64").abs().sum()])
                           for w in model.parameters()])
    gathered: list = []
    paddle.distributed.all_gather(gathered, digest)
    if any(not bool((g == gathered[0]).all().item()) for g in gathered[1:]):
        raise RuntimeError("distributed ranks hold different supernet weights; every rank must "
                           "sample the same subnets with the same seed")

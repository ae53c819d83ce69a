"""The supernet's health: validation top-1 of its largest, smallest and a fixed set of official subnets,
each after BN re-calibration, as the training loop checks it at every epoch end."""
from __future__ import annotations

import numpy as np

from track1.data import calibration_batches, validation_batches
from track1.network.supernet import SuperNet
from track1.ranking.scoring import score_shared
from track1.space import Arch, SearchSpace


def probe_subnets(space: SearchSpace, n: int) -> list[Arch]:
    """A fixed set of official-distribution subnets (the same in every run) for health checks."""
    rng = np.random.default_rng(20220)
    return [space.sample(rng) for _ in range(n)]


def health_sets(cfg: dict, rank: int = 0, world: int = 1) -> tuple:
    """The check's images: all calibration batches, this rank's share of the first
    train.eval_images validation images (only those are decoded and kept), and score.chunk_images."""
    return (calibration_batches(cfg), validation_batches(cfg, (rank, world), cfg["train"]["eval_images"]),
            cfg["score"]["chunk_images"])


def health(model: SuperNet, space: SearchSpace, sets: tuple, n_probe: int = 0,
           world: int = 1) -> dict[str, float]:
    """Validation top-1 (after BN re-calibration) of the largest and smallest subnets and the mean,
    min and max over `n_probe` fixed official subnets. sets: health_sets' tuple. Each rank
    evaluates its share of the images, at most chunk_images at a time; the supernet's BN
    statistics are left as they were (so no checkpoint carries them)."""
    roles = {"largest": space.widths(space.largest()), "smallest": space.widths(space.smallest())}
    probes = [space.widths(a) for a in probe_subnets(space, n_probe)]
    acc = {w: a for w, (a, _) in score_shared(model, [*roles.values(), *probes], *sets,
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

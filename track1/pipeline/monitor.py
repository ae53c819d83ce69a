"""The in-training rank check: score a fixed list every E epochs, for choosing checkpoints and settings.

At the end of every `monitor.every_epochs`-th epoch the training loop hands the supernet to
`RankCheck`, which scores a fixed architecture list exactly as the `score` command would (BN
re-calibration, then the fixed validation images), writes the scores as
<run>/monitor/<list>@epoch_NNN.json (official shape) and returns scalars for VisualDL:

  monitor/acc_mean       the mean top-1 of the list;
  monitor/kendall_prev   Kendall tau with the previous check's scores (no ground truth needed:
                         a ranking that stopped moving has converged);
  monitor/kendall, monitor/spearman, monitor/top5
                         against `monitor.truth`, a stand-alone accuracy file, when one is set.

Competition rule: ground truth may choose checkpoints and hyperparameters, never train. The check
runs after the epoch's last optimizer step, under no_grad, and puts the supernet's BN statistics
back as it found them; its numbers go to the log only. A run with a truth file configured trains
bit-identical weights to one without (tests/test_monitor.py), and the `monitor` section is left out
of the config hash, so turning the check on or off never blocks a resume.
"""
from __future__ import annotations

from pathlib import Path

import paddle

from track1.data import calibration_batches, validation_batches
from track1.files import write_json
from track1.network.supernet import SuperNet
from track1.ranking.evaluate import kept_bn_statistics
from track1.ranking.metrics import load_scores, rank_metrics
from track1.ranking.scoring import score_list, shard_keys
from track1.ranking.submission import check_official, demo_arch_list, load_arch_list
from track1.space import SearchSpace


LOG_NOTE = "monitoring only: not a loss, no gradient"


class RankCheck:
    """Scores a fixed list with the supernet every `every_epochs` epochs (see the module doc)."""

    def __init__(self, cfg: dict, space: SearchSpace, run_dir: str | Path, rank: int = 0, world: int = 1):
        m = cfg["monitor"]
        self.rank, self.world = rank, world
        self.every = int(m["every_epochs"])
        self.space, self.mode, self.chunk_images = space, cfg["score"]["mode"], cfg["score"]["chunk_images"]
        self.truth = None
        if m["truth"]:
            # Read here, at start-up, so a bad file fails before any training is done.
            self.truth = load_scores(m["truth"])
        # The list: monitor.arch_list; else the truth's codes; else num_codes codes of the demo list.
        if m["arch_list"]:
            self.codes, self.name = load_arch_list(m["arch_list"]), Path(m["arch_list"]).stem
        elif self.truth is not None:
            self.codes = {f"arch{i + 1}": c for i, c in enumerate(self.truth)}
            self.name = Path(m["truth"]).stem
        else:
            s = cfg["score"]
            self.codes = demo_arch_list(int(m["num_codes"]), int(s["demo_seed"]), space)
            self.name = f"demo{len(self.codes)}"
        check_official(m["arch_list"] or m["truth"] or self.name, self.codes)  # fail before training
        self.dir = Path(run_dir) / "monitor"
        calib_cfg = {**cfg, "score": {**cfg["score"], "calib_images": int(m["calib_images"]),
                                      "val_images": int(m["val_images"])}}
        self.calib, self.val = calibration_batches(calib_cfg), validation_batches(calib_cfg)
        self.previous: dict[str, float] | None = None  # the last check's code -> acc

    def due(self, epoch: int) -> bool:
        """True after epoch `epoch` (1-based) when the check is on and epoch is a multiple of E."""
        return self.every > 0 and epoch % self.every == 0

    def __call__(self, model: SuperNet, epoch: int) -> dict[str, float]:
        """Score the list with the model as it is now; scalars for the log (see the module doc)."""
        log = self.dir / f"{self.name}@epoch_{epoch:03d}.jsonl"
        # Each rank scores a contiguous part of the list into its own log; rank 0 gathers them.
        keys = shard_keys(list(self.codes), self.rank, self.world)
        part = log.with_suffix(f".shard{self.rank}of{self.world}.jsonl") if self.world > 1 else log
        with kept_bn_statistics(model), paddle.no_grad():
            records = score_list(model, self.space, {k: self.codes[k] for k in keys}, self.calib,
                                 self.val, part, self.mode, self.chunk_images, progress=False)
        if self.world > 1:
            parts: list = []
            paddle.distributed.all_gather_object(parts, records)
            merged = {k: r for p in parts for k, r in p.items()}
            records = {k: merged[k] for k in self.codes}
        if self.rank != 0:
            return {}
        write_json(log.with_suffix(".json"),
                   {k: {"acc": r["acc"], "arch": r["code"]} for k, r in records.items()}, indent=1)
        pred = {r["code"]: r["acc"] for r in records.values()}
        scalars = {"monitor/acc_mean": sum(pred.values()) / len(pred)}
        before = self.dir / f"{self.name}@epoch_{epoch - self.every:03d}.json"
        if self.previous is None and before.exists():  # a resumed run: the check before the kill
            self.previous = load_scores(before)
        if self.previous is not None and len(pred) > 1:
            scalars["monitor/kendall_prev"] = rank_metrics(pred, self.previous, ks=())["kendall"]
        self.previous = pred
        if self.truth is not None:
            m = rank_metrics(pred, self.truth, ks=(5,))
            scalars.update({"monitor/kendall": m["kendall"], "monitor/spearman": m["spearman"],
                            "monitor/top5": m["top5"]})
        return scalars

    def describe(self, scalars: dict[str, float]) -> str:
        parts = [f"{k.split('/')[1]} {v:.4f}" for k, v in scalars.items()]
        return f"rank check on {len(self.codes)} codes ({LOG_NOTE}): " + "  ".join(parts)


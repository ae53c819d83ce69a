"""RD-NAS ranking distillation as a training method: pairs of subnets whose label losses a zero-cost
teacher orders (train.ranking; the pairs from track1.methods.sampling, the losses from losses)."""
from __future__ import annotations

import paddle

from track1.errors import ConfigError
from track1.methods.base import NO_LOSS, Method, RunContext
from track1.methods.losses import label_loss, rank_loss, rank_weight
from track1.methods.sampling import MarginSampler, step_pairs
from track1.methods.teacher import Teacher
from track1.space import Subspace


class RankingDistillation(Method):
    """Each ranking pair (a, b) adds lambda * rank_loss on the two subnets' label losses, ordered by
    the teacher; the pair terms are averaged or summed (train.ranking.reduce). "pair" subnets (the
    extra pair mode) learn only through the rank term."""

    name = "ranking"

    def __init__(self, cfg: dict, context: RunContext):
        t, r = cfg["train"], cfg["train"]["ranking"]
        if r["pair_mode"] == "free" and (t["sampler"] != "sandwich" or t["num_random"] < 2):
            raise ConfigError("train.ranking.pair_mode=free pairs the step's own random subnets: it "
                              "needs train.sampler=sandwich and train.num_random >= 2")
        self.r, self.space, self.seed = r, context.space, cfg["run"]["seed"]
        self.steps_per_epoch, self.epochs = context.steps_per_epoch, t["epochs"]
        self.sampler = MarginSampler(Subspace.named(t["draw"]), r["distance"], r["threshold"], r["depth_weight"],
                                     r["width_weight"], r["max_tries"])
        cache = context.run_dir / "teacher" if context.run_dir is not None else None
        self.teacher = Teacher(cfg, context.space, cache)
        self.pairs, self.lam = [], 0.0

    def notes(self) -> list[str]:
        r = self.r
        if r["schedule"] in ("linear", "staircase") and r["cap"] * r["ramp"] > self.epochs:
            # ramp counts absolute epochs; say so when this run ends before lambda reaches its cap
            return [f"note: train.ranking.ramp {r['ramp']} (epochs) brings lambda to only "
                    f"{self.epochs / r['ramp']:.3g} of cap {r['cap']} by the end of this {self.epochs}-epoch run"]
        return []

    def extend(self, subnets, step, within):
        r = self.r
        added, self.pairs = step_pairs(within, r["pair_mode"], subnets, self.sampler, r["pairs"], self.seed, step)
        self.lam = (rank_weight(step / self.steps_per_epoch, self.epochs, r["schedule"], r["cap"], r["ramp"])
                    if self.pairs else 0.0)
        return added

    def subnet_loss(self, index, role, arch, logits, y):
        return NO_LOSS if role == "pair" else None

    def extra_loss(self, subnets, logits, x, y):
        scalars = {"rank/acceptance": self.sampler.acceptance_rate}
        if not self.pairs:
            return None, scalars
        r = self.r
        logits_of: dict = {}
        for (_, arch), out in zip(subnets, logits):
            logits_of.setdefault(arch, out)
        rank_terms, agree = [], []
        label_losses = {arch: label_loss(logits_of[arch], y) for arch in {a for p in self.pairs for a in p[:2]}}
        for a, b, dist in self.pairs:
            za, zb = self.teacher(self.space.widths(a)), self.teacher(self.space.widths(b))
            margin = r["margin"] + r["margin_per_distance"] * max(0.0, dist - r["threshold"])
            rank_terms.append(rank_loss(label_losses[a], label_losses[b], za, zb, r["loss"], margin))
            if za != zb:  # a tie in the teacher orders nothing: neither agreement nor disagreement
                a_lower = label_losses[a].detach() < label_losses[b].detach()
                agree.append(a_lower if za > zb else ~a_lower)
        rl = paddle.add_n(rank_terms)
        if r["reduce"] == "mean":
            rl = rl / len(rank_terms)
        scalars.update({"rank/loss": rl.detach(), "rank/lambda": self.lam})
        if agree:
            scalars["rank/agree"] = paddle.stack(agree).astype("float32").mean()
        return self.lam * rl, scalars

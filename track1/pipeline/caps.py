"""How train.max_steps caps a whole run: its share for the one-shot training and for each few-shot run
(a split step, or one group of a `sequence` step), in proportion to their epochs, each with enough
steps to pass every progressive phase and train every group."""
from __future__ import annotations

from track1.methods.sampling import parse_phases, steps_for_every_phase
from track1.space.split import Split, split_steps

ONE_SHOT = "train"  # the part name of the one-shot training


def group_epochs(cfg: dict, split: Split) -> list[float]:
    """Each group's epochs in a `sequence` step (fewshot.group_epochs, else fewshot.epochs each)."""
    f = cfg["fewshot"]
    return list(f["group_epochs"]) or [f["epochs"]] * len(split.groups)


def part_name(split: Split, group: int | None = None) -> str:
    """A few-shot run's name: its split's, with `_g<group>` for one group of a sequence step."""
    return split.name if group is None else f"{split.name}_g{group}"


def parts(cfg: dict) -> list[tuple[str, float, int]]:
    """(name, epochs, fewest steps) of every training run of cfg, in order."""
    t, f = cfg["train"], cfg["fewshot"]
    phases = parse_phases(t["progressive"]["phases"]) if t["progressive"]["enabled"] else []
    out = [(ONE_SHOT, t["epochs"], steps_for_every_phase(phases) if phases else 1)]
    if not f["enabled"]:
        return out
    for split in split_steps(f["split"], f["stage"], f["groups"]):
        if f["step"] == "sequence":
            out += [(part_name(split, g), e, 1) for g, e in enumerate(group_epochs(cfg, split)) if e > 0]
        else:  # each group at least once in rotation (global_sandwich: as many steps)
            out.append((part_name(split), f["epochs"], len(split.groups)))
    return out


def capped_steps(cfg: dict, name: str = ONE_SHOT) -> int:
    """Run `name`'s share of train.max_steps (0: no cap): max(its fewest steps, cap x its epochs / all)."""
    cap = cfg["train"]["max_steps"]
    if cap <= 0:
        return 0
    every = parts(cfg)
    total = sum(e for _, e, _ in every)
    epochs, fewest = next((e, m) for n, e, m in every if n == name)
    return max(fewest, int(cap * epochs / total))

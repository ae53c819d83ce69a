"""Cream's prioritized-path board: the K best paths seen in supernet training, with their samples.

Two rules (`rule`), both keeping at most one entry per code:
- "project": a path enters on room, on beating the worst entry's accuracy by more than `gap`, or
  on equal-or-better accuracy with fewer FLOPs; ties in accuracy sort fewer FLOPs first.
- "authors" (microsoft/Cream, PrioritizedBoard.isUpdate): the fewer-FLOPs entry needs strictly
  higher accuracy, and the board sorts as their tuples do, more FLOPs first on equal accuracy.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import paddle


BOARD_RULES = ("project", "authors")


@dataclasses.dataclass
class BoardEntry:
    acc: float          # the path's top-1 on the training batch it was recorded on
    flops: int
    code: str
    inputs: np.ndarray  # [m, C, H, W] a slice of that batch
    soft: np.ndarray    # [m, classes] a softmax on those inputs (the path's own or its teacher's)

    def state(self) -> dict:
        return {"acc": float(self.acc), "flops": int(self.flops), "code": str(self.code),
                "inputs": np.asarray(self.inputs), "soft": np.asarray(self.soft)}


def _numpy(value) -> np.ndarray:
    """paddle.load turns the numpy arrays of a saved dict into Tensors; turn them back."""
    if isinstance(value, paddle.Tensor):
        return value.numpy()
    return np.asarray(value)


class PathBoard:
    """The K best paths seen, best first (see the module docstring for the two rules).

    A code already on the board is updated in place with the new measurement (the supernet has
    moved on since the old one), so no code is ever held twice.
    """

    def __init__(self, capacity: int = 10, gap: float = 0.0, rule: str = "project"):
        if capacity < 1:
            raise ValueError(f"board capacity must be at least 1, got {capacity}")
        if rule not in BOARD_RULES:
            raise ValueError(f"unknown board rule {rule!r}: expected one of {BOARD_RULES}")
        self.capacity, self.gap, self.rule = int(capacity), float(gap), rule
        self.entries: list[BoardEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, code: str) -> bool:
        return any(e.code == code for e in self.entries)

    def _sort(self) -> None:
        sign = -1 if self.rule == "authors" else 1  # authors: more FLOPs first on equal accuracy
        self.entries.sort(key=lambda e: (-e.acc, sign * e.flops))

    def _beats_worst(self, acc: float, flops: int) -> bool:
        worst = self.entries[-1]
        if acc > worst.acc + self.gap:
            return True
        more_accurate = acc > worst.acc if self.rule == "authors" else acc >= worst.acc
        return more_accurate and flops < worst.flops

    def consider(self, acc: float, flops: int, code: str, inputs, soft) -> bool:
        """Offer a path to the board; True if it is on the board afterwards."""
        entry = BoardEntry(float(acc), int(flops), str(code), _numpy(inputs).copy(),
                           _numpy(soft).copy())
        for i, e in enumerate(self.entries):
            if e.code == entry.code:
                self.entries[i] = entry
                self._sort()
                return True
        if len(self.entries) < self.capacity:
            self.entries.append(entry)
            self._sort()
            return True
        if self._beats_worst(entry.acc, entry.flops):
            self.entries[-1] = entry
            self._sort()
            return True
        return False

    def best(self, exclude: str | None = None) -> BoardEntry | None:
        for e in self.entries:
            if e.code != exclude:
                return e
        return None

    @property
    def mean_acc(self) -> float:
        return float(np.mean([e.acc for e in self.entries])) if self.entries else float("nan")

    @property
    def mean_flops(self) -> float:
        return float(np.mean([e.flops for e in self.entries])) if self.entries else float("nan")

    def state_dict(self) -> dict:
        """Plain Python and numpy values only, so that paddle.save/paddle.load round-trip it."""
        return {"capacity": self.capacity, "gap": self.gap, "rule": self.rule,
                "entries": [e.state() for e in self.entries]}

    def set_state_dict(self, state: dict) -> None:
        self.capacity, self.gap = int(state["capacity"]), float(state["gap"])
        self.rule = str(state.get("rule", "project"))
        self.entries = [BoardEntry(float(e["acc"]), int(e["flops"]), str(e["code"]),
                                   _numpy(e["inputs"]), _numpy(e["soft"]))
                        for e in state["entries"]]
        self._sort()

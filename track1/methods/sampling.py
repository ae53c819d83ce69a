"""Which subnets a training step uses: sandwich / SPOS roles, ranking pairs, the margin sampler.

Every subnet is drawn from the official tied sub-space as the official list is distributed
(SearchSpace.sample).

Every draw is a pure function of (seed, step), so a resumed run and every rank of a distributed
run sample exactly the same subnets without saving or broadcasting any RNG state.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from track1.space import MAX_DEPTHS, Arch, SearchSpace, hamming


_SUBNETS, _PARTNERS, _EXTRA = 1, 2, 3  # stream ids, so pair draws never shift the sandwich draws
SAMPLERS = ("sandwich", "spos", "random", "largest")
PAIR_MODES = ("partners", "extra", "free")
DISTANCES = ("hamming", "group")


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, stream])


def step_subnets(space: SearchSpace, rule: str, num_random: int, seed: int,
                 step: int) -> list[tuple[str, Arch]]:
    """(role, arch) pairs of one step. sandwich: largest, smallest and num_random random; spos: one
    random; random: num_random random (the official baseline's two paths a step); largest: the
    largest alone (the full network, the pretrain stage's)."""
    rng = step_rng(seed, step, _SUBNETS)
    if rule == "sandwich":
        return ([("largest", space.largest()), ("smallest", space.smallest())]
                + [("random", space.sample(rng)) for _ in range(num_random)])
    if rule == "spos":
        return [("random", space.sample(rng))]
    if rule == "random":
        return [("random", space.sample(rng)) for _ in range(num_random)]
    if rule == "largest":
        return [("largest", space.largest())]
    raise ValueError(f"unknown sampler {rule!r}: expected one of {', '.join(SAMPLERS)}")


def uses_every_parameter(rule: str) -> bool:
    """Whether every step's subnets use every supernet parameter: a sandwich step trains the largest
    subnet, which does; a SPOS path does not. paddle.DataParallel then needs no search for unused
    parameters (find_unused_parameters), which costs a graph walk and a device sync per backward."""
    return rule in ("sandwich", "largest")


def group_distance(a: Arch, b: Arch, depth_weight: float = 2.0, width_weight: float = 0.5) -> float:
    """Depth differences and width-ratio-code differences, weighted separately.

    A block missing on one side counts as a depth difference only; its widths are not compared.
    """
    depth = sum(abs(x - y) for x, y in zip(a.depths, b.depths))
    width = abs(a.stem_ratio - b.stem_ratio)
    for pa, pb in zip(a.blocks, b.blocks):
        width += sum(abs(x - y) for qa, qb in zip(pa, pb) for x, y in zip(qa, qb))
    return depth_weight * depth + width_weight * width


def distance(a: Arch, b: Arch, kind: str, depth_weight: float = 2.0, width_weight: float = 0.5) -> float:
    if kind == "hamming":
        return float(hamming(a, b))
    if kind == "group":
        return group_distance(a, b, depth_weight, width_weight)
    raise ValueError(f"unknown distance {kind!r}: expected hamming or group")


@dataclasses.dataclass
class MarginSampler:
    """Draws a partner for a subnet, redrawing until their distance reaches a threshold.

    The teacher's order is only trusted between networks that differ enough; `accepted / tries`
    is the acceptance rate reported to VisualDL.
    """

    space: SearchSpace
    kind: str = "hamming"
    threshold: float = 33.0
    depth_weight: float = 2.0
    width_weight: float = 0.5
    max_tries: int = 100
    tries: int = 0
    accepted: int = 0

    def partner(self, first: Arch, rng: np.random.Generator) -> tuple[Arch, float]:
        best, best_d = None, -1.0
        for _ in range(self.max_tries):
            self.tries += 1
            cand = self.space.sample(rng)
            d = self.distance(first, cand)
            if d >= self.threshold:
                self.accepted += 1
                return cand, d
            if d > best_d:
                best, best_d = cand, d
        return best, best_d  # threshold unreachable in max_tries: the farthest candidate seen

    def partners(self, firsts: list[Arch], seed: int, step: int) -> list[tuple[Arch, float]]:
        rng = step_rng(seed, step, _PARTNERS)
        return [self.partner(a, rng) for a in firsts]

    def among(self, archs: list[Arch], n: int) -> list[tuple[Arch, Arch, float]]:
        """Up to n disjoint pairs of archs at least threshold apart, the farthest first."""
        candidates = sorted(((self.distance(a, b), i, j) for i, a in enumerate(archs)
                             for j, b in enumerate(archs) if i < j), key=lambda c: (-c[0], c[1], c[2]))
        self.tries += len(candidates)
        pairs, used = [], set()
        for d, i, j in candidates:
            if len(pairs) == n or d < self.threshold:
                break
            if i not in used and j not in used:
                pairs.append((archs[i], archs[j], d))
                used |= {i, j}
        self.accepted += len(pairs)
        return pairs

    def distance(self, a: Arch, b: Arch) -> float:
        return distance(a, b, self.kind, self.depth_weight, self.width_weight)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.tries if self.tries else float("nan")


def step_pairs(space: SearchSpace, mode: str, subnets: list[tuple[str, Arch]], sampler: MarginSampler,
               n_pairs: int, seed: int, step: int) -> tuple[list[tuple[str, Arch]], list[tuple[Arch, Arch, float]]]:
    """(subnets the pairs add, pairs (a, b, distance)) of one step's ranking distillation.

    partners  each of the first n_pairs sandwich random subnets gets a margin-sampled partner
              (role "partner"), which distils from the largest like a random subnet;
    extra     n_pairs pairs of two extra random subnets, the second margin-sampled against the
              first (role "pair": they learn only through the rank term; the RD-NAS authors' step);
    free      pairs among the step's own random subnets, those at least the threshold apart:
              nothing extra to forward.
    """
    randoms = [a for role, a in subnets if role == "random"]
    if mode == "partners":
        firsts = randoms[:n_pairs]
        pairs = [(a, b, d) for a, (b, d) in zip(firsts, sampler.partners(firsts, seed, step))]
        return [("partner", b) for _, b, _ in pairs], pairs
    if mode == "extra":
        rng = step_rng(seed, step, _EXTRA)
        firsts = [space.sample(rng) for _ in range(n_pairs)]
        pairs = [(a, *sampler.partner(a, rng)) for a in firsts]
        return [("pair", x) for a, b, _ in pairs for x in (a, b)], pairs
    if mode == "free":
        return [], sampler.among(randoms, n_pairs)
    raise ValueError(f"unknown ranking pair mode {mode!r}: expected {', '.join(PAIR_MODES)}")


def max_hamming() -> int:
    """Length of code[5:], the largest possible Hamming distance."""
    return 1 + 2 * sum(MAX_DEPTHS)

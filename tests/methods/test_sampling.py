import numpy as np
import pytest

from track1.methods.sampling import (PAIR_MODES, MarginSampler, distance, group_distance, max_hamming,
                             step_pairs, step_subnets)
from track1.space import SearchSpace, hamming, parse

SPACE = SearchSpace()


def test_step_subnets_are_a_pure_function_of_seed_and_step():
    a = step_subnets(SPACE, "sandwich", 2, seed=1, step=10)
    b = step_subnets(SPACE, "sandwich", 2, seed=1, step=10)
    c = step_subnets(SPACE, "sandwich", 2, seed=1, step=11)
    assert a == b and a != c
    assert [r for r, _ in a] == ["largest", "smallest", "random", "random"]
    assert a[0][1] == SPACE.largest() and a[1][1] == SPACE.smallest()
    spos = step_subnets(SPACE, "spos", 2, seed=1, step=10)
    assert len(spos) == 1 and spos[0][0] == "random"
    with pytest.raises(ValueError, match="unknown sampler"):
        step_subnets(SPACE, "greedy", 2, 1, 1)


def test_margin_sampler_meets_the_threshold_and_reports_acceptance():
    sampler = MarginSampler(SPACE, "hamming", threshold=33)
    firsts = [SPACE.sample(np.random.default_rng(i)) for i in range(40)]
    pairs = sampler.partners(firsts, seed=0, step=0)
    assert all(hamming(a, b) >= 33 and d == hamming(a, b) for a, (b, d) in zip(firsts, pairs))
    assert 0.05 < sampler.acceptance_rate < 0.95  # 33 is about the mean distance: many redraws
    assert sampler.partners(firsts, seed=0, step=0) == pairs  # reproducible
    # An unreachable threshold returns the farthest candidate instead of looping forever.
    far = MarginSampler(SPACE, "hamming", threshold=max_hamming() + 1, max_tries=5)
    b, d = far.partner(firsts[0], np.random.default_rng(0))
    assert d == hamming(firsts[0], b) < max_hamming() + 1 and far.accepted == 0 and far.tries == 5


def test_group_distance_weights_depth_and_width_separately():
    a = parse("1252233313000000223212122253130000000000006515000000")
    deeper = parse("1352233313110000223212122253130000000000006515000000")  # one more stage-1 block
    wider = parse("1252213313000000223212122253130000000000006515000000")   # stem 3 -> 1
    assert group_distance(a, deeper, depth_weight=2.0, width_weight=0.5) == 2.0
    assert group_distance(a, wider, depth_weight=2.0, width_weight=0.5) == 1.0  # |3-1| * 0.5
    assert distance(a, wider, "hamming") == 1


def test_every_sampler_draws_from_the_official_sub_space():
    from track1.space import official_problem
    sampler = MarginSampler(SPACE, "hamming", threshold=33)
    for step in range(20):
        subnets = step_subnets(SPACE, "sandwich", 3, seed=2, step=step)
        subnets += step_subnets(SPACE, "spos", 1, seed=2, step=step)
        for mode in PAIR_MODES:
            added, pairs = step_pairs(SPACE, mode, subnets, sampler, 2, seed=2, step=step)
            archs = [a for _, a in subnets + added] + [x for p in pairs for x in p[:2]]
            assert all(official_problem(a) is None for a in archs)


def test_pair_modes():
    sampler = MarginSampler(SPACE, "hamming", threshold=20)
    subnets = step_subnets(SPACE, "sandwich", 4, seed=0, step=3)
    randoms = [a for role, a in subnets if role == "random"]
    added, pairs = step_pairs(SPACE, "partners", subnets, sampler, 2, 0, 3)
    assert [a for a, _, _ in pairs] == randoms[:2] and [b for _, b in added] == [b for _, b, _ in pairs]
    added, pairs = step_pairs(SPACE, "extra", subnets, sampler, 2, 0, 3)
    assert len(added) == 4 and [x for p in pairs for x in p[:2]] == [a for _, a in added]
    assert not set(randoms) & {a for _, a in added}
    assert step_pairs(SPACE, "extra", subnets, sampler, 2, 0, 3) == (added, pairs)  # reproducible
    added, pairs = step_pairs(SPACE, "free", subnets, sampler, 2, 0, 3)
    assert added == [] and len(pairs) == 2
    a, b, c, d = (x for p in pairs for x in p[:2])
    assert len({a, b, c, d}) == 4 and all(x in randoms for x in (a, b, c, d))  # disjoint pairs
    all_d = sorted((hamming(x, y) for i, x in enumerate(randoms) for y in randoms[i + 1:]), reverse=True)
    assert pairs[0][2] == all_d[0] >= pairs[1][2] >= 20  # the farthest pair first
    far = MarginSampler(SPACE, "hamming", threshold=max_hamming() + 1)
    assert far.among(randoms, 2) == [] and far.tries == 6 and far.accepted == 0
    with pytest.raises(ValueError, match="unknown ranking pair mode"):
        step_pairs(SPACE, "nearest", subnets, sampler, 2, 0, 3)

import numpy as np
import pytest

from track1.sampling import MarginSampler, distance, group_distance, max_hamming, step_subnets
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

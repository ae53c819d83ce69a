import numpy as np
import paddle
import pytest

from track1.methods.sampling import (PAIR_MODES, MarginSampler, distance, group_distance, max_hamming,
                             step_pairs, step_subnets)
from track1.space import SearchSpace, hamming, parse

from conftest import REPO

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


# -- drawing toward large subnets, and progressive shrinking ---------------------------------------
def test_tilted_draws_follow_the_configured_distribution_inside_the_sub_space():
    from track1.methods.sampling import Bias
    from track1.space import DEPTH_CHOICES, OFFICIAL_CHOICES, Subspace, official_problem
    rng = np.random.default_rng(0)
    n, t = 6000, 1.5
    archs = Bias("tilt", temperature=t).draw(Subspace.official(), rng, n, step=1)
    assert len(archs) == n and all(official_problem(a) is None for a in archs)
    for stage in range(4):
        depths, outs = DEPTH_CHOICES[stage], OFFICIAL_CHOICES[stage]
        want_d = np.exp(-(len(depths) - 1 - np.arange(len(depths))) / t)  # the deepest has k = 0
        want_o = np.exp(-np.arange(len(outs)) / t)                         # ratio code 1 has k = 0
        got_d = np.array([sum(a.depths[stage] == d for a in archs) for d in depths]) / n
        got_o = np.array([sum(a.blocks[stage][0][1] == o for a in archs) for o in outs]) / n
        np.testing.assert_allclose(got_d, want_d / want_d.sum(), atol=0.02)
        np.testing.assert_allclose(got_o, want_o / want_o.sum(), atol=0.02)


def test_the_first_places_rule_keeps_the_largest_of_its_pool():
    from track1.methods.sampling import Bias, fuxi_size
    from track1.space import Subspace, official_problem
    bias, within = Bias("top_of", pool=50), Subspace.official()
    kept = bias.draw(within, np.random.default_rng(3), 4, step=1)
    pool = within.sample_many(np.random.default_rng(3), 50)  # the same generator: the same pool
    assert kept == sorted(dict.fromkeys(pool), key=lambda a: (-fuxi_size(a), a.code))[:4]
    assert len(bias.draw(within, np.random.default_rng(3), 4, step=3)) == 5  # every third step one more
    draws = [a for s in range(1, 200) if s % 3 for a in bias.draw(within, np.random.default_rng(s), 4, s)]
    assert all(official_problem(a) is None for a in draws)
    # Mostly a depth bias, as in their own runs: stage 3 at its deepest far more often than uniform (1/7).
    assert np.mean([a.depths[2] == 8 for a in draws]) > 0.45


def test_progressive_phases_switch_at_their_fractions_and_narrow_the_draws(tmp_path):
    from conftest import tiny_config
    from track1.pipeline.trainer import Trainer
    phases = ("train.progressive.phases=[{until: 0.25, depth: largest, width: largest}, "
              "{until: 0.5, depth: [4, 4, 6, 2], width: largest}, {until: 1.0, depth: elastic, width: elastic}]")
    cfg = tiny_config(tmp_path, "train.progressive.enabled=true", phases)
    trainer = Trainer(cfg, steps_per_epoch=8)  # 2 epochs: 16 steps
    assert [trainer.within(s)[1] for s in range(16)] == [0] * 4 + [1] * 4 + [2] * 8
    largest = trainer.space.largest()
    assert trainer.subnets(0) == [("largest", largest)]  # the largest alone, trained once
    for step in range(4, 8):
        roles = trainer.subnets(step)
        assert all(all(o == 1 for _, o in p) for _, a in roles for p in a.blocks)  # full width
        assert all(a.depths[0] >= 4 and a.depths[2] >= 6 for _, a in roles)
    assert len({a.code for s in range(8, 16) for _, a in trainer.subnets(s)}) == 10  # largest, smallest + 8 random
    x, y = paddle.randn([8, 3, 32, 32]), paddle.to_tensor(np.arange(8) % 10, dtype="int64")
    assert trainer.step(x, y, 5)["progressive/phase"] == 1
    from track1.pipeline.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="the last 1.0"):
        load_config(None, ["train.progressive.enabled=true", "train.progressive.phases=[{until: 0.5}]"])
    with pytest.raises(ConfigError, match="an lr for every phase .* or for none"):
        load_config(None, ["train.progressive.enabled=true",
                           "train.progressive.phases=[{until: 0.5, lr: 2}, {until: 1.0}]"])
    with pytest.raises(ConfigError, match=r"phases\[0\].lr: a factor above 0"):
        load_config(None, ["train.progressive.enabled=true", "train.progressive.phases=[{until: 1.0, lr: 0}]"])


def test_the_rdnas_authors_draw_every_tied_ratio_and_their_smallest():
    """train.draw every_ratio (their resofa.py): stem = stage 1's output, one output code a stage,
    every code 1..7 uniform in each tied position and each mid, depths uniform; smallest all 0.7
    at depths 2. The official draw stays the default."""
    from collections import Counter

    from track1.pipeline.config import load_config
    from track1.space import RATIOS, Subspace, official_problem
    every = Subspace.named("every_ratio")
    sandwich = step_subnets(every, "sandwich", 2, seed=3, step=0)
    assert sandwich[1][1].code == "1222277777000000777700000077770000000000007777000000"
    assert sandwich[0][1] == SPACE.largest()
    rng = np.random.default_rng(0)
    draws = [every.sample(rng) for _ in range(3000)]
    assert all(every.contains(a) and a.stem_ratio == a.blocks[0][0][1] for a in draws)
    assert all(len({o for _, o in pairs}) == 1 for a in draws for pairs in a.blocks)
    for stage in range(4):
        outs = Counter(a.blocks[stage][0][1] for a in draws)
        mids = Counter(m for a in draws for m, _ in a.blocks[stage])
        depths = Counter(a.depths[stage] for a in draws)
        assert set(outs) == set(mids) == set(RATIOS)
        assert max(outs.values()) / min(outs.values()) < 1.25          # about 3000/7 each
        assert max(depths.values()) / min(depths.values()) < 1.3
    assert sum(official_problem(a) is not None for a in draws) > 2500  # mostly outside the list
    assert Subspace.named(load_config()["train"]["draw"]) == Subspace.official()
    assert load_config(REPO / "configs/rdnas_authors.yaml")["train"]["draw"] == "every_ratio"
    with pytest.raises(ValueError, match="unknown draw"):
        Subspace.named("all")

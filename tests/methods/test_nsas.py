"""NSAS (the 2nd place's arch_nsas.py): its distance, the set's update with its ties, and the method's
state through a step, a resume and an epoch's fresh draw."""
import numpy as np
import pytest

from track1.methods.base import RunContext
from track1.methods.nsas import NSAS, nsas_distance, updated
from track1.pipeline.config import load_config
from track1.space import SearchSpace, Subspace, tied

DEPTHS = (2, 2, 2, 2)


def _arch(first_mids=(3, 3), second_mids=(3, 3), depths=DEPTHS):
    """A tied arch of outputs 3 whose first two stages' mids are given (the rest 3)."""
    mids = (first_mids, second_mids) + tuple((3,) * d for d in depths[2:])
    return tied(depths, (3, 3, 3, 3), mids)


def test_distance_counts_a_missing_block_as_9_over_47():
    a, b = _arch(), _arch(first_mids=(1, 3))
    assert nsas_distance(a, b) == pytest.approx(2 / 47)
    deeper = tied((3, 2, 2, 2), (3, 3, 3, 3))  # stage 1's third block: 3 3 against 0 0 (9 9)
    assert nsas_distance(_arch(), deeper) == pytest.approx((6 + 6) / 47)
    assert nsas_distance(a, a) == 0.0


def test_the_nearest_member_is_the_first_of_equals_and_replaced_only_by_a_strictly_more_diverse_one():
    base = _arch()
    near1, near2 = _arch(first_mids=(2, 3)), _arch(first_mids=(3, 2))  # both at 1/47 from base
    far = [_arch(second_mids=(m, 1)) for m in (1, 2, 4, 5)]
    select = [far[0], near1, far[1], near2, far[2]]
    # a recent arch far from every other member replaces the first of the two nearest
    lone = tied((5, 5, 8, 5), (1, 1, 1, 1))
    assert updated(select, [lone], base, knn=4) == [far[0], lone, far[1], near2, far[2]]
    # a recent arch exactly as diverse as the member does not replace it
    rest = [s for i, s in enumerate(select) if i != 1]
    twin = _arch(first_mids=(3, 4))  # near1 and twin differ from base by one step at other digits
    assert [nsas_distance(twin, r) for r in rest] == [nsas_distance(near1, r) for r in rest]
    assert updated(select, [twin], base, knn=4) == select


def _nsas(steps_per_epoch=10, **over):
    cfg = load_config(None, ["train.sampler=spos", "train.nsas.enabled=true",
                             *[f"train.nsas.{k}={v}" for k, v in over.items()]])
    return NSAS(cfg, RunContext(SearchSpace(width_mult=0.125, resolution=32), steps_per_epoch, 100))


def test_a_step_draws_the_set_at_an_epochs_start_updates_it_after_and_resumes_from_its_state():
    within, rng = Subspace.official(), np.random.default_rng(0)
    a = _nsas()
    path = within.sample(rng)
    first = a.extend([("random", path)], 0, within)
    assert len(first) == 7 and all(role == "nsas" and within.contains(x) for role, x in first)
    assert a.extend([("random", path)], 0, within) == first  # a function of the state and the step
    a.after_step(None, [("random", path)] + first, None, None, 0, 0.1, None)
    assert a.select == [x for _, x in first] and a.recent == [path]
    saved = a.state_dict()
    b = _nsas()
    b.set_state_dict(saved)
    nxt = within.sample(rng)
    assert b.extend([("random", nxt)], 1, within) == a.extend([("random", nxt)], 1, within)
    kept = a.extend([("random", nxt)], 1, within)  # within an epoch: at most one member changes
    assert sum(x != y for (_, x), y in zip(kept, a.select)) <= 1
    fresh = a.extend([("random", nxt)], 10, within)  # the next epoch's start: drawn afresh
    assert sum(x != y for (_, x), y in zip(fresh, a.select)) >= 5
    # the step's own path is among the recent ones a member can be replaced by
    d = _nsas()
    d.set_state_dict({"select": [_arch().code] * 7, "recent": []})
    lone = tied((5, 5, 8, 5), (1, 1, 1, 1))
    assert [x for _, x in d.extend([("random", lone)], 1, within)] == [lone] + [_arch()] * 6
    # the recent paths keep the last `recent`
    c = _nsas(recent=2)
    for step in range(4):
        p = within.sample(rng)
        c.after_step(None, [("random", p)] + c.extend([("random", p)], step, within), None, None, step, 0.1, None)
    assert len(c.recent) == 2 and c.recent[-1] == p

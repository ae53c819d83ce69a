"""Split-halves of the validation images, per-half sums, the self-agreement and the accuracy's standard error."""
import math

import numpy as np
import pytest

from track1.ranking.halves import (BLOCK, HalfTally, SplitHalves, accuracy_se, describe_agreement, self_agreement,
                                   spearman_brown_kendall)


def test_every_block_of_images_is_halved_exactly_and_the_same_way_each_time():
    halves = SplitHalves(splits=4, seed=1)
    rows = halves.rows(0, 3 * BLOCK)
    assert rows.shape == (3 * BLOCK, 4)
    assert (rows.reshape(3, BLOCK, 4).sum(axis=1) == BLOCK // 2).all()
    again = SplitHalves(splits=4, seed=1)
    assert np.array_equal(again.rows(BLOCK + 5, BLOCK + 9), rows[BLOCK + 5:BLOCK + 9])  # no count needed
    assert not np.array_equal(rows[:, 0], rows[:, 1])
    assert halves.sizes(BLOCK + 10).tolist() == rows[:BLOCK + 10].sum(axis=0).astype(int).tolist()


def test_a_tally_in_chunks_equals_one_in_one_go():
    rng = np.random.default_rng(0)
    correct, losses = rng.random(700) < 0.6, rng.random(700)
    whole, parts = HalfTally(SplitHalves()), HalfTally(SplitHalves())
    whole.add(correct, losses)
    for a, b in ((0, 100), (100, 333), (333, 700)):
        parts.add(correct[a:b], losses[a:b])
    assert whole.correct.tolist() == parts.correct.tolist() and whole.images == parts.images == 700
    np.testing.assert_allclose(whole.loss, parts.loss, rtol=1e-12)
    rows = SplitHalves().rows(0, 700)
    assert whole.correct.tolist() == [int(correct[rows[:, s] == 1].sum()) for s in range(rows.shape[1])]


def _records(correct: np.ndarray, losses: np.ndarray) -> list[dict]:
    out = []
    for c, l in zip(correct, losses):
        tally = HalfTally(SplitHalves())
        tally.add(c, l)
        out.append({"acc": c.mean(), "loss": l.mean(), "images": len(c), **tally.fields()})
    return out


def test_self_agreement_is_near_one_without_noise_and_near_zero_for_pure_noise():
    rng = np.random.default_rng(3)
    codes, images = 200, 1000
    # Noise-free: a code gets right exactly the images easier than its skill, so every half of the
    # images orders the codes as their skill does.
    skill, ease = np.sort(rng.uniform(0.3, 0.9, codes)), rng.random(images)
    correct = ease[None, :] < skill[:, None]
    losses = np.repeat(1 - skill[:, None], images, axis=1)
    a = self_agreement(_records(correct, losses))
    assert a["half"] == pytest.approx(1.0) and a["codes"] == codes and a["images"] == images
    top1_only = self_agreement(_records(correct, losses), "none")  # ties where no image falls between
    assert 0.97 < top1_only["half"] < 1 and top1_only["half"] < top1_only["full"] < 1
    noise = rng.random((codes, images)) < 0.5
    b = self_agreement(_records(noise, rng.random((codes, images))))
    assert abs(b["half"]) < 0.05 and b["half_min"] < b["half"] < b["half_max"]


def test_self_agreement_counts_equal_networks_once_and_names_older_records():
    rng = np.random.default_rng(4)
    correct = rng.random((20, 300)) < 0.5
    recs = _records(correct, rng.random((20, 300)))
    a = self_agreement(recs + recs[:5] + [{"acc": 0.5, "loss": 1.0}])
    b = self_agreement(recs)
    assert a["codes"] == 20 and a["missing"] == 1 and a["half"] == b["half"]
    assert self_agreement([{"acc": 0.5, "loss": 1.0}])["codes"] == 0


def test_ties_in_accuracy_are_broken_by_the_half_loss_as_submit_does():
    # Every code right on the same images: accuracy ties everywhere; losses rank the codes alike
    # on both halves, so the loss tie-break agrees perfectly and accuracy alone has no ranking.
    rng = np.random.default_rng(5)
    correct = np.repeat(rng.random((1, 512)) < 0.5, 30, axis=0)
    losses = np.linspace(0.1, 1.0, 30)[:, None] + 0.01 * rng.random((30, 512))
    recs = _records(correct, losses)
    for r, l in zip(recs, losses):
        r["loss"] = l.mean()
    assert self_agreement(recs, "loss")["half"] == pytest.approx(1.0)
    assert math.isnan(self_agreement(recs, "none")["half"])


def test_spearman_brown_projection():
    assert spearman_brown_kendall(0.4, 1.0) == pytest.approx(0.4)
    assert spearman_brown_kendall(1.0) == pytest.approx(1.0)
    assert 0.3 < spearman_brown_kendall(0.3) < spearman_brown_kendall(0.3, 4) < 1
    # Gaussian reliability: r = sin(pi/2 * 0.3) = 0.454 -> 2r/(1+r) = 0.625 -> tau 0.430
    assert spearman_brown_kendall(0.3) == pytest.approx(2 / math.pi * math.asin(0.6245), abs=1e-3)


def test_the_summary_line_names_the_estimator_and_its_numbers():
    a = {"half": 0.3, "half_min": 0.2, "half_max": 0.4, "full": spearman_brown_kendall(0.3), "codes": 50,
         "images": 1000, "splits": 16, "missing": 2}
    line = describe_agreement(a)
    assert ("Kendall 0.300 between rankings from two random halves of the 1000 validation images (mean of 16 "
            "split-halves, range 0.200..0.400, 50 distinct networks); about 0.429 for two independent sets of "
            "1000 images (Spearman-Brown); 2 records predate per-half sums and are left out") in line
    assert "not available" in describe_agreement({**a, "codes": 1})


def test_accuracy_se_is_the_standard_error_of_the_per_image_outcomes():
    outcomes = np.array([1] * 37 + [0] * 13, float)
    assert accuracy_se(outcomes.mean(), 50) == pytest.approx(outcomes.std(ddof=1) / math.sqrt(50), rel=1e-12)
    assert math.isnan(accuracy_se(1.0, 1))

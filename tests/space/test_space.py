import contextlib
import io

import numpy as np
import paddle
import pytest
from paddle.hapi.dynamic_flops import count_convNd

from track1.network.conv import Conv2D
from track1.space import (OFFICIAL_CHOICES, Arch, CodeError, SearchSpace, block_plan, hamming,
                          make_divisible, official_problem, parse, parse_official, unique_widths)
from track1.network.resnet import ResNet

EXAMPLE = "1252233313000000223212122253130000000000006515000000"


def test_make_divisible_gives_the_documented_widths():
    ratios = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7]
    assert [make_divisible(64 * r) for r in ratios] == [64, 64, 56, 56, 48, 48, 48]
    assert [make_divisible(128 * r) for r in ratios] == [128, 120, 112, 112, 104, 96, 88]
    assert [make_divisible(256 * r) for r in ratios] == [256, 240, 232, 216, 208, 192, 176]
    assert [make_divisible(512 * r) for r in ratios] == [512, 488, 464, 432, 408, 384, 360]


def test_parse_example_code():
    arch = parse(EXAMPLE)
    assert arch.depths == (2, 5, 2, 2)
    assert arch.stem_ratio == 3
    assert arch.blocks[0] == ((3, 3), (1, 3))
    assert arch.blocks[3] == ((6, 5), (1, 5))
    assert arch.code == EXAMPLE
    w = SearchSpace().widths(arch)
    assert w.stem == 56 and w.blocks[0] == ((56, 56), (64, 56)) and w.blocks[3][0] == (384, 408)


def test_every_official_code_round_trips(official_codes):
    assert len(official_codes) == 45000
    for code in official_codes:
        assert parse(code).code == code


def test_official_flops_range(official_codes):
    space = SearchSpace()
    flops = [space.flops(c) for c in official_codes]
    assert 1.3e9 < min(flops) < 1.5e9 and 4.7e9 < max(flops) < 5.0e9


@pytest.mark.parametrize("code, problem", [
    (EXAMPLE[:-1], "51 characters"),
    (EXAMPLE[:5] + "x" + EXAMPLE[6:], "non-digit"),
    ("2" + EXAMPLE[1:], "resolution code 2"),
    (EXAMPLE[:1] + "1" + EXAMPLE[2:], "stage 1 depth 1"),
    (EXAMPLE[:5] + "8" + EXAMPLE[6:], "stem ratio code 8"),
    (EXAMPLE[:6] + "03" + EXAMPLE[8:], "ratio codes '03'"),
    (EXAMPLE[:10] + "11" + EXAMPLE[12:], "expected padding '00'"),
])
def test_malformed_codes_name_the_problem(code, problem):
    with pytest.raises(CodeError, match=problem):
        parse(code)


def test_every_official_code_is_in_the_official_sub_space(official_codes):
    assert all(official_problem(parse(c)) is None for c in official_codes)


@pytest.mark.parametrize("edit, problem", [
    (lambda a: (2 if a.stem_ratio != 2 else 1, a.blocks),
     "stem ratio code . differs from stage 1's output code"),
    (lambda a: (a.stem_ratio, (a.blocks[0],) + ((a.blocks[1][0], (1, 3 - a.blocks[1][0][1] % 2))
                                                 + a.blocks[1][2:],) + a.blocks[2:]),
     "stage 2 block 2 has output ratio code ., block 1 has"),
    (lambda a: (a.stem_ratio, a.blocks[:2] + (((6, a.blocks[2][0][1]),) + a.blocks[2][1:],)
                + a.blocks[3:]),
     "stage 3 block 1 has mid ratio code 6, not one of the stage's official codes 1..5"),
    (lambda a: (a.stem_ratio, a.blocks[:2] + (tuple((1, 7) for _ in a.blocks[2]),) + a.blocks[3:]),
     "stage 3 has output ratio code 7, not one of the stage's official codes 1..5"),
])
def test_official_problem_names_the_broken_tie(edit, problem):
    a = parse(EXAMPLE)
    assert official_problem(a) is None and parse_official(EXAMPLE) == a
    stem, blocks = edit(a)
    code = Arch(1, a.depths, stem, blocks).code
    parse(code)  # still a well-formed code
    assert official_problem(parse(code)) is not None
    with pytest.raises(CodeError, match=f"code '{code}' is outside the official sub-space: {problem}"):
        parse_official(code)


def test_sampling_follows_the_official_distribution(official_codes):
    space, rng = SearchSpace(), np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(3000)]
    assert all(official_problem(a) is None for a in [*archs, space.largest(), space.smallest()])
    assert len({a.depths for a in archs}) > 400  # of 448
    for stage, choices in enumerate(OFFICIAL_CHOICES):
        outs = np.array([a.blocks[stage][0][1] for a in archs])
        mids = np.array([m for a in archs for m, _ in a.blocks[stage]])
        for values in (outs, mids):  # uniform over the stage's choices
            freq = np.bincount(values, minlength=8)[list(choices)] / len(values)
            np.testing.assert_allclose(freq, 1 / len(choices), atol=0.035)
    # The same marginals as the official list: mean depth and mean FLOPs within a few percent.
    official = [parse(c) for c in official_codes[::30]]
    for f in (lambda a: sum(a.depths), space.flops):
        ours, theirs = np.mean([f(a) for a in archs]), np.mean([f(a) for a in official])
        assert abs(ours / theirs - 1) < 0.03
    assert space.flops(space.smallest()) < min(space.flops(a) for a in archs)
    assert space.flops(space.largest()) > max(space.flops(a) for a in archs)


def test_projections_only_on_the_first_block_of_stages_2_to_4():
    space, rng = SearchSpace(width_mult=0.25), np.random.default_rng(5)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(50)]:
        plan = block_plan(space.widths(arch))
        assert [(b.stage, b.index) for b in plan if b.projection] == [(1, 0), (2, 0), (3, 0)]
    untied = parse("1" + EXAMPLE[1:5] + "1" + EXAMPLE[6:])  # stem 1, stage 1 output 3
    assert [(b.stage, b.index) for b in block_plan(space.widths(untied)) if b.projection][0] == (0, 0)


def test_width_mult_keeps_the_code_to_network_map():
    full, quarter = SearchSpace(), SearchSpace(width_mult=0.25)
    assert quarter.widths(EXAMPLE).stem == 14 and quarter.max_widths.blocks[3][0] == (128, 128)
    codes = [SearchSpace().sample(np.random.default_rng(i)).code for i in range(200)]
    codes += [c[:6] + c[6:].replace("2", "1") for c in codes]  # ratio 0.95 of 64 is 64 again
    assert len(unique_widths(full, codes)) == len(unique_widths(quarter, codes))


@pytest.mark.parametrize("width_mult, resolution, classes", [(1.0, 224, 1000), (0.25, 32, 10)])
def test_analytic_counts_equal_paddle_flops_and_params(width_mult, resolution, classes):
    space = SearchSpace(width_mult=width_mult, resolution=resolution, num_classes=classes)
    rng = np.random.default_rng(1)
    for arch in [space.largest(), space.smallest(), space.sample(rng), parse(EXAMPLE)]:
        net = ResNet(space.widths(arch), space)
        with contextlib.redirect_stdout(io.StringIO()):  # paddle.flops prints even when asked not to
            # paddle.flops matches layers by exact type: track1.network.conv.Conv2D is an nn.Conv2D subclass
            flops = paddle.flops(net, [1, 3, resolution, resolution],
                                 custom_ops={Conv2D: count_convNd})
        params = sum(int(np.prod(p.shape)) for p in net.parameters() if p.trainable)
        assert space.flops(arch) == flops
        assert space.params(arch) == params


def test_hamming_counts_code_positions_after_the_depths():
    other = EXAMPLE[:5] + "1" + EXAMPLE[6:]
    assert hamming(EXAMPLE, EXAMPLE) == 0 and hamming(EXAMPLE, other) == 1


def test_many_draws_at_once_have_the_distribution_of_single_draws():
    """Subspace.sample_many (biased sampling's pools) against sample: each stage's depth and output
    code, and the mid codes, uniform over the choices; every draw in the official sub-space."""
    import numpy as np

    from track1.space import DEPTH_CHOICES, OFFICIAL_CHOICES, Subspace, official_problem
    many = Subspace.official().sample_many(np.random.default_rng(0), 4000)
    assert len(many) == 4000 and all(official_problem(a) is None for a in many)
    for s in range(4):
        depth = np.array([sum(a.depths[s] == d for a in many) for d in DEPTH_CHOICES[s]]) / 4000
        out = np.array([sum(a.blocks[s][0][1] == c for a in many) for c in OFFICIAL_CHOICES[s]]) / 4000
        mid = np.array([sum(p[0] == c for a in many for p in a.blocks[s]) for c in OFFICIAL_CHOICES[s]], float)
        for freq in (depth, out, mid / mid.sum()):
            np.testing.assert_allclose(freq, 1 / len(freq), atol=0.03)

"""Prefix-shared scoring equals per-code scoring in any chunking; multiply-add counts; the model is left alone."""
import numpy as np
import paddle
import pytest

from track1.ranking import tree
from track1.ranking.evaluate import calibrate_bn, score_widths
from track1.ranking.tree import chunks, score_tree
from track1.ranking.trie import build_trie, count_macs, shared_macs_by_part
from track1.space import layer_sequence
from track1.space import Arch, SearchSpace, Widths
from track1.network.supernet import SuperNet

SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)


def _archs() -> list[Arch]:
    """~30 codes: random ones, ones that share a long prefix with them, exact and width repeats."""
    rng = np.random.default_rng(7)
    base = [SPACE.sample(rng) for _ in range(17)]
    out = list(base)
    for arch in base[:6]:
        # Same stem and stages 1-3; only stage 4 differs (shallower, deeper or other widths).
        s4, out4 = arch.blocks[3], arch.blocks[3][0][1]
        variants = [s4[:2], s4 + ((3, out4),) * (5 - len(s4)) if len(s4) < 5 else s4[:-1],
                    tuple((a, 7) for a, _ in s4)]
        for v in variants[: 2 if arch is base[0] else 1]:
            depths = arch.depths[:3] + (len(v),)
            out.append(Arch(1, depths, arch.stem_ratio, arch.blocks[:3] + (v,)))
    # Shares only the stem and the first stage with base[1].
    a = base[1]
    out.append(Arch(1, a.depths, a.stem_ratio, a.blocks[:1] + tuple(
        tuple((3, 1) for _ in pairs) for pairs in a.blocks[1:])))
    out += [base[2], base[5]]  # identical codes
    # Stage-1 (and stem) ratio 1 vs 2 give the same width (make_divisible(60.8) == 64): other
    # code, same net.
    b = next(a for a in base[3:] if a.stem_ratio in (1, 2))
    swap = 2 if b.stem_ratio == 1 else 1
    out.append(Arch(1, b.depths, swap, (tuple((m, swap) for m, _ in b.blocks[0]),) + b.blocks[1:]))
    out += [SPACE.largest(), SPACE.smallest()]
    return out


@pytest.fixture(scope="module")
def setup():
    paddle.seed(11)
    model = SuperNet(SPACE)
    model.eval()
    calib = [paddle.randn([n, 3, 32, 32]) for n in (24, 24, 17)]  # a short last batch too
    xs = [paddle.randn([40, 3, 32, 32]), paddle.randn([25, 3, 32, 32])]
    # Labels = the largest subnet's own predictions: accuracies then spread over 0..1 instead of
    # sitting near chance, so equal top-1 is a real check.
    calibrate_bn(model, SPACE.max_widths, calib)
    with paddle.no_grad():
        val = [(x, model(x, SPACE.max_widths).argmax(axis=1)) for x in xs]
    widths = [SPACE.widths(a) for a in _archs()]
    reference = {w: score_widths(model, w, calib, val) for w in dict.fromkeys(widths)}
    return model, calib, val, widths, reference


def test_list_shares_prefixes_and_repeats(setup):
    _, _, _, widths, reference = setup
    assert len(widths) >= 30
    assert 24 <= len(reference) < len(widths)
    root = build_trie(widths)
    per_code_layers = sum(len(layer_sequence(w)) for w in reference)

    def nodes(n):
        return sum(1 + nodes(c) for c in n.children.values())
    assert nodes(root) < per_code_layers - 40  # real sharing beyond the stem


# 1000: one walk; 48: two calibration batches a walk, evaluation images split across walks;
# 20: each calibration batch (24, 24, 17) a walk of its own, larger than the budget.
@pytest.mark.parametrize("chunk_images,group", [(1000, 2048), (48, 2048), (20, 2048), (48, 4)])
def test_tree_equals_per_code_scoring(setup, chunk_images, group, monkeypatch):
    model, calib, val, widths, reference = setup
    monkeypatch.setattr(tree, "GROUP", group)  # 4: the list in groups, a trie each
    buffers = [b.numpy().copy() for b in model.buffers()]
    results = list(score_tree(model, widths, calib, val, chunk_images))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(buffers, model.buffers()))
    got = [w for w, _, _ in results]
    assert len(got) == len(set(got)) == len(reference)  # every distinct Widths exactly once
    assert set(got) == set(reference)
    accs = set()
    for w, acc, loss in results:
        ref_acc, ref_loss = reference[w]
        assert acc == ref_acc, w
        assert loss == pytest.approx(ref_loss, rel=1e-6), w
        accs.add(acc)
    assert len(accs) > 5 and max(accs) == 1.0  # the largest subnet labels its own predictions
    # Depth-first over sorted children, group by group: the order of the sorted layer sequences.
    assert got == sorted(got, key=layer_sequence)


def test_chunks_hold_whole_calibration_batches_and_every_image_once(setup):
    _, calib, val, _, _ = setup  # calibration 24, 24, 17; validation 40, 25
    walks = list(chunks(calib, val, 30))
    assert [(c.first_k, [int(x.shape[0]) for x in c.calib], c.n_evals) for c in walks] == [
        (1, [24], 0), (2, [24], 0), (3, [17], 13), (4, [], 30), (4, [], 22)]
    labels = np.concatenate([c.labels.numpy() for c in walks if c.n_evals])
    np.testing.assert_array_equal(labels, np.concatenate([y.numpy() for _, y in val]))
    np.testing.assert_array_equal(walks[3].evals.numpy(), paddle.concat([x for x, _ in val])[13:43].numpy())
    assert [c.n_calib + c.n_evals for c in chunks(calib, val, 1000)] == [24 + 24 + 17 + 65]


def test_tree_memory_is_bounded_by_the_chunk_not_the_images():
    """The peak of live tensor bytes while scoring grows with chunk_images, not with the images."""
    from paddle.base import core
    space = SearchSpace(width_mult=0.25, resolution=64, num_classes=10)
    paddle.seed(1)
    model = SuperNet(space, conv="fast")
    widths = [space.max_widths, space.widths(space.smallest())]

    def peak(n_calib: int, n_val: int, chunk_images: int) -> int:
        rng = np.random.default_rng(0)
        calib = [paddle.to_tensor(rng.normal(size=(32, 3, 64, 64)).astype("float32"))
                 for _ in range(n_calib // 32)]
        val = [(paddle.to_tensor(rng.normal(size=(32, 3, 64, 64)).astype("float32")),
                paddle.zeros([32], "int64")) for _ in range(n_val // 32)]
        core.host_memory_stat_reset_peak_value("Allocated", 0)
        before = core.host_memory_stat_current_value("Allocated", 0)  # the inputs not counted
        for _ in score_tree(model, widths, calib, val, chunk_images):
            pass
        return core.host_memory_stat_peak_value("Allocated", 0) - before

    small, large = peak(64, 64, 64), peak(256, 512, 64)
    assert large < 1.3 * small  # 6x the images, the same chunk
    assert peak(256, 512, 1024) > 3 * small  # one walk of every image: grows with them


def test_momentum_and_modes_restored(setup):
    model, calib, val, widths, _ = setup
    bns = model.bn_layers()
    for i, bn in enumerate(bns):
        bn.momentum = 0.5 + i / 1000
    model.train()
    model.stages[2][1].eval()  # a mixed state must come back as it was
    before = [l.training for l in model.sublayers(include_self=True)]
    list(score_tree(model, widths[:5], calib, val, 1000))
    assert [bn.momentum for bn in bns] == [0.5 + i / 1000 for i in range(len(bns))]
    assert [l.training for l in model.sublayers(include_self=True)] == before
    # Also when the consumer stops early (the generator is closed mid-walk).
    it = score_tree(model, widths, calib, val, 1000)
    next(it)
    it.close()
    assert [bn.momentum for bn in bns] == [0.5 + i / 1000 for i in range(len(bns))]
    assert [l.training for l in model.sublayers(include_self=True)] == before
    for bn in bns:
        bn.momentum = 0.9
    model.eval()


def test_yields_as_computed(setup):
    """The first result arrives before the rest of the tree has been walked."""
    model, calib, val, widths, _ = setup
    calls = []
    hook = model.fc.register_forward_post_hook(lambda layer, inputs, output: calls.append(1))
    try:
        it = score_tree(model, widths, calib, val, 1000)
        next(it)
        assert len(calls) == 1  # one head evaluation so far (validation batches run as one)
        it.close()
    finally:
        hook.remove()


def test_count_macs_hand_computed():
    space = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)
    # Two subnets that share the stem and every block but the last one of stage 4.
    head = (((8, 8), (8, 8)), ((16, 16), (16, 16)), ((32, 32), (32, 32)))
    a = Widths(8, head + (((64, 64), (64, 64)),))
    b = Widths(8, head + (((64, 64), (48, 48)),))
    # stem 7x7/2: 32 -> 16, then max pool -> 8 (pool: no multiply-adds)
    stem = 8 * 16 * 16 * 3 * 49 + 2 * 8 * 16 * 16
    s1 = 2 * (8 * 64 * 8 * 9 + 2 * 8 * 64) * 2                       # 2 blocks, 8x8, no shortcut
    s2 = ((16 * 16 * 8 * 9 + 2 * 16 * 16) + (16 * 16 * 16 * 9 + 2 * 16 * 16)
          + (16 * 16 * 8 + 2 * 16 * 16)                              # stride-2 first block: 4x4
          + 2 * (16 * 16 * 16 * 9 + 2 * 16 * 16))                    # second block
    s3 = ((32 * 4 * 16 * 9 + 2 * 32 * 4) + (32 * 4 * 32 * 9 + 2 * 32 * 4)
          + (32 * 4 * 16 + 2 * 32 * 4) + 2 * (32 * 4 * 32 * 9 + 2 * 32 * 4))  # 2x2
    s4_first = (64 * 1 * 32 * 9 + 2 * 64) + (64 * 64 * 9 + 2 * 64) + (64 * 32 + 2 * 64)  # 1x1
    a_last = 2 * (64 * 64 * 9 + 2 * 64)
    b_last = (48 * 64 * 9 + 2 * 48) + (48 * 48 * 9 + 2 * 48) + (48 * 64 + 2 * 48)  # projection
    a_head, b_head = (1 + 1) * 64 + 64 * 10, (1 + 1) * 48 + 48 * 10
    prefix = stem + s1 + s2 + s3 + s4_first
    flops_a, flops_b = prefix + a_last + a_head, prefix + b_last + b_head
    assert space.flops(a) == flops_a and space.flops(b) == flops_b
    shared = prefix + a_last + b_last + a_head + b_head
    assert count_macs(space, [a, b]) == (flops_a + flops_b, shared)
    assert shared_macs_by_part(space, [a, b]) == {
        "stem": stem, "stage1": s1, "stage2": s2, "stage3": s3,
        "stage4": s4_first + a_last + b_last, "head": a_head + b_head}
    # Repeats count once on both sides; one subnet alone shares nothing.
    assert count_macs(space, [a, b, a]) == count_macs(space, [a, b])
    assert count_macs(space, [a]) == (flops_a, flops_a)
    # A subnet that is a prefix of another (one block shallower) ends at an inner node.
    c = Widths(8, head + (((64, 64),),))
    flops_c = prefix + (1 + 1) * 64 + 64 * 10
    assert count_macs(space, [a, c]) == (flops_a + flops_c, flops_a + (1 + 1) * 64 + 64 * 10)


def test_count_macs_official_list(official_codes):
    space = SearchSpace()
    per_code, shared = count_macs(space, [space.widths(c) for c in official_codes])
    assert 1.85 < per_code / shared < 1.90  # METHOD.md: about 1.87x


def test_timings(setup):
    model, calib, val, widths, _ = setup
    timings = {}
    n = sum(1 for _ in score_tree(model, widths[:4], calib, val, 1000, timings=timings))
    assert n == 4
    assert set(timings) == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
    assert all(t > 0 for t in timings.values())


def test_empty_list(setup):
    model, calib, val, _, _ = setup
    assert list(score_tree(model, [], calib, val, 1000)) == []

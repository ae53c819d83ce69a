"""Tests of track1.data on small generated files: deterministic training batches, the data-wait
clock, fixed evaluation sets as lazy re-iterable sequences, and their use by the scorers."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import paddle
import pytest

from fakes import N_TEST, N_TRAIN, small_fmnist, write_fake_fmnist, write_idx
from track1 import data
from track1.errors import ConfigError
from track1.data import fmnist
from track1.pipeline.config import load_config
from track1.data.datafiles import DataError


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch, tmp_path):
    small_fmnist(monkeypatch, tmp_path)


def fmnist_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.batch_size=8", *extra])


def decode(x: paddle.Tensor) -> np.ndarray:
    """The image index encoded in the centre pixel of each (unaugmented) fake image."""
    v = x.numpy()[:, 0, 16, 16] * fmnist.FMNIST_STD + fmnist.FMNIST_MEAN
    return np.rint(v * 255).astype(int)


def digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------- TrainData


def test_fashion_mnist_batches_are_bit_identical_to_the_unsplit_module(tmp_path):
    """Digests recorded with data.py before it was split into fmnist/images/data (commit e48d1bf)."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (N_TRAIN, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, N_TRAIN))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (N_TEST, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, N_TEST))
    cfg = fmnist_cfg(tmp_path, "data.augment=true", "run.seed=7", "score.calib_images=20",
                     "score.calib_batch=8", "score.val_images=10", "score.eval_batch=4")
    assert digest(t.numpy() for b in data.TrainData(cfg).batches(2) for t in b) == "442ce685eeb6752c"
    assert digest(x.numpy() for x in data.calibration_batches(cfg)) == "a2410fa9aa9b48e8"
    assert digest(t.numpy() for b in data.validation_batches(cfg) for t in b) == "043cf0527640757f"


def test_train_batches_follow_the_epoch_permutation(tmp_path):
    write_fake_fmnist(tmp_path)
    cfg = fmnist_cfg(tmp_path, "data.augment=false", "run.seed=7")
    td = data.TrainData(cfg)
    assert td.steps_per_epoch == N_TRAIN // 8
    batches = list(td.batches(2))
    assert len(batches) == td.steps_per_epoch
    x, y = batches[0]
    assert x.shape == [8, 3, 32, 32] and x.dtype == paddle.float32
    assert y.shape == [8] and y.dtype == paddle.int64
    perm = np.random.default_rng([7, 2]).permutation(N_TRAIN)
    seen = np.concatenate([decode(x) for x, _ in batches])
    assert seen.tolist() == perm.tolist()
    assert np.concatenate([y.numpy() for _, y in batches]).tolist() == (perm % 10).tolist()


def test_same_seed_same_batches_other_epoch_other_order(tmp_path):
    write_fake_fmnist(tmp_path)
    cfg = fmnist_cfg(tmp_path, "data.augment=true")
    a = [x.numpy() for x, _ in data.TrainData(cfg).batches(0)]
    b = [x.numpy() for x, _ in data.TrainData(cfg).batches(0)]
    c = [x.numpy() for x, _ in data.TrainData(cfg).batches(1)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    d = [x.numpy() for x, _ in data.TrainData(load_config(None, [
        f"data.root={tmp_path}", "data.batch_size=8", "run.seed=1"])).batches(0)]
    assert not np.array_equal(np.concatenate(a), np.concatenate(d))


def test_augmented_batches_differ_from_plain(tmp_path):
    write_fake_fmnist(tmp_path)
    plain = next(data.TrainData(fmnist_cfg(tmp_path, "data.augment=false")).batches(0))[0].numpy()
    aug = next(data.TrainData(fmnist_cfg(tmp_path, "data.augment=true")).batches(0))[0].numpy()
    assert plain.shape == aug.shape and not np.array_equal(plain, aug)
    # Same images (the centre survives any crop of pad 4), different pixels near the border.
    np.testing.assert_allclose(aug[:, :, 16, 16], plain[:, :, 16, 16])


def test_resume_equals_the_tail_of_a_full_pass(tmp_path):
    write_fake_fmnist(tmp_path)
    td = data.TrainData(fmnist_cfg(tmp_path, "data.augment=true"))
    full = [(x.numpy(), y.numpy()) for x, y in td.batches(3)]
    tail = [(x.numpy(), y.numpy()) for x, y in td.batches(3, start_step=5)]
    assert len(tail) == len(full) - 5
    for (fx, fy), (tx, ty) in zip(full[5:], tail):
        assert np.array_equal(fx, tx) and np.array_equal(fy, ty)


def test_rank_slices_concatenate_to_the_single_rank_batch(tmp_path):
    write_fake_fmnist(tmp_path)
    single = data.TrainData(fmnist_cfg(tmp_path, "data.batch_size=16", "data.augment=true"))
    ranks = [data.TrainData(fmnist_cfg(tmp_path, "data.augment=true"), rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == single.steps_per_epoch == N_TRAIN // 16
    for (sx, sy), (ax, ay), (bx, by) in zip(single.batches(1), ranks[0].batches(1), ranks[1].batches(1)):
        assert ax.shape == [8, 3, 32, 32]
        assert np.array_equal(sx.numpy(), np.concatenate([ax.numpy(), bx.numpy()]))
        assert np.array_equal(sy.numpy(), np.concatenate([ay.numpy(), by.numpy()]))


def test_train_size_limits_the_images(tmp_path):
    write_fake_fmnist(tmp_path)
    td = data.TrainData(fmnist_cfg(tmp_path, "data.train_size=20", "data.augment=false"))
    assert td.num_samples == 20 and td.steps_per_epoch == 2
    seen = np.concatenate([decode(x) for x, _ in td.batches(0)])
    assert len(seen) == 16 and len(set(seen.tolist())) == 16 and seen.max() < 20
    with pytest.raises(DataError, match="fewer than one global batch"):
        data.TrainData(fmnist_cfg(tmp_path, "data.train_size=7"))


def test_fashion_mnist_refuses_a_resolution_it_cannot_give(tmp_path):
    write_fake_fmnist(tmp_path)
    with pytest.raises(DataError, match="space.resolution=16: Fashion-MNIST images are 32x32"):
        data.TrainData(fmnist_cfg(tmp_path, "space.resolution=16"))
    with pytest.raises(DataError, match="set space.resolution=32"):
        data.validation_set(fmnist_cfg(tmp_path, "space.resolution=64"), 10)


def test_unknown_data_name_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.name: 'mnist' is not one of fashion_mnist, cifar10, "
                                          "cifar100, folder, list"):
        fmnist_cfg(tmp_path, "data.name=mnist")


def test_wait_seconds_counts_the_producer_not_the_consumer(tmp_path, monkeypatch):
    write_fake_fmnist(tmp_path)
    td = data.TrainData(fmnist_cfg(tmp_path))
    assert td.wait_seconds == 0.0
    real = td._array_batches

    def slow(epoch, start_step):
        for batch in real(epoch, start_step):
            time.sleep(0.03)  # a slow input pipeline
            yield batch
    monkeypatch.setattr(td, "_array_batches", slow)
    n = 0
    for _ in td.batches(0, start_step=4):
        time.sleep(0.1)  # the training step: not waiting for data
        n += 1
    assert n == 4
    assert 0.03 * n <= td.wait_seconds < 0.03 * n + 0.1 * n / 2
    before = td.wait_seconds
    list(td.batches(1, start_step=6))
    assert td.wait_seconds >= before + 0.03 * 2  # cumulative over calls


# ------------------------------------------------------------------------------- eval sets


def test_calibration_and_validation_sets_are_fixed(tmp_path):
    write_fake_fmnist(tmp_path)
    cfg = fmnist_cfg(tmp_path, "score.calib_images=20", "score.calib_batch=8",
                     "score.val_images=10", "score.eval_batch=4")
    calib = data.calibration_batches(cfg)
    assert [c.shape[0] for c in calib] == [8, 8, 4]
    assert np.concatenate([decode(c) for c in calib]).tolist() == list(range(20))
    val = data.validation_batches(cfg)
    assert [x.shape[0] for x, _ in val] == [4, 4, 2]
    assert np.concatenate([decode(x) for x, _ in val]).tolist() == list(range(100, 110))
    assert np.concatenate([y.numpy() for _, y in val]).tolist() == [(i + 3) % 10 for i in range(10)]
    again = data.validation_batches(cfg)
    assert all(np.array_equal(a.numpy(), b.numpy()) for (a, _), (b, _) in zip(val, again))

    everything = data.validation_set(cfg, 0, 5)
    assert len(everything) == 4 and sum(int(y.shape[0]) for _, y in everything) == N_TEST
    limited = data.validation_set(fmnist_cfg(tmp_path, "data.val_size=6"), 0, 4)
    assert [int(y.shape[0]) for _, y in limited] == [4, 2]


def test_eval_sets_are_lazy_uint8_sequences(tmp_path):
    """Floats exist one batch at a time; len() and every pass give the same tensors bit for bit."""
    write_fake_fmnist(tmp_path)
    cfg = fmnist_cfg(tmp_path, "score.calib_images=20", "score.calib_batch=8",
                     "score.val_images=10", "score.eval_batch=4")
    calib, val = data.calibration_batches(cfg), data.validation_batches(cfg)
    assert not isinstance(calib, list) and not isinstance(val, list)
    assert len(calib) == 3 and len(val) == 3 and bool(calib) and bool(val)
    first = [x.numpy() for x in calib]
    second = [x.numpy() for x in calib]
    assert len(first) == 3 and all(np.array_equal(a, b) for a, b in zip(first, second))
    # Held on the host as uint8, not as float tensors.
    images, labels = val._images, val._labels
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (10, 32, 32)
    passes = [[(x.numpy(), y.numpy()) for x, y in val] for _ in range(2)]
    for (ax, ay), (bx, by) in zip(*passes):
        assert np.array_equal(ax, bx) and np.array_equal(ay, by)
    np.testing.assert_array_equal(passes[0][0][0], fmnist.fmnist_to_tensor(images[:4]).numpy())
    np.testing.assert_array_equal(passes[0][0][1].reshape(-1), np.asarray(labels[:4]).reshape(-1))


def test_scorers_take_the_lazy_sets_like_lists(tmp_path):
    """score_widths and tree.score_tree give the same numbers from the sequences as from lists."""
    from track1.ranking.evaluate import score_widths
    from track1.ranking.tree import score_tree
    from track1.space import SearchSpace
    from track1.network.supernet import SuperNet
    write_fake_fmnist(tmp_path)
    cfg = fmnist_cfg(tmp_path, "score.calib_images=24", "score.calib_batch=8",
                     "score.val_images=16", "score.eval_batch=6")
    calib, val = data.calibration_batches(cfg), data.validation_batches(cfg)
    space = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)
    paddle.seed(3)
    model = SuperNet(space)
    widths = [space.max_widths, space.widths(space.smallest())]
    lazy = [score_widths(model, w, calib, val) for w in widths]
    listed = [score_widths(model, w, list(calib), list(val)) for w in widths]
    assert lazy == listed
    tree = {w: (acc, loss) for w, acc, loss in score_tree(model, widths, calib, val, 1024)}
    tree_listed = {w: (acc, loss) for w, acc, loss in score_tree(model, widths, list(calib), list(val), 1024)}
    assert tree == tree_listed and set(tree) == set(widths)

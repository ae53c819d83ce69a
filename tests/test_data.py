"""Tests of track1.data on small generated files: idx reading, prepare(), deterministic batches,
fixed evaluation sets, folder and list image data."""
from __future__ import annotations

import gzip
import os
import stat
import struct

import numpy as np
import paddle
import pytest
from PIL import Image

from track1 import data
from track1.config import load_config

N_TRAIN, N_TEST = 64, 16
# The real download function, kept before the autouse fixture replaces it.
ORIGINAL_DOWNLOAD = data._download_fashion_mnist


def write_idx(path, array: np.ndarray) -> None:
    array = np.asarray(array, np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_images(n: int, offset: int = 0) -> np.ndarray:
    """Image i is filled with the value offset + i, so a pixel tells which image it was."""
    return np.broadcast_to((offset + np.arange(n, dtype=np.uint8))[:, None, None], (n, 28, 28)).copy()


def write_fake_fmnist(directory) -> None:
    os.makedirs(directory, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte.gz", fake_images(N_TRAIN))
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.arange(N_TRAIN) % 10)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", fake_images(N_TEST, offset=100))
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", (np.arange(N_TEST) + 3) % 10)


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FMNIST_SIZES", {"train": N_TRAIN, "test": N_TEST})
    # Never touch the real system directory or the network.
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-dir")

    def no_download(workdir):
        raise data.DataError("download disabled in tests")
    monkeypatch.setattr(data, "_download_fashion_mnist", no_download)


def fmnist_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.batch_size=8", *extra])


def decode(x: paddle.Tensor) -> np.ndarray:
    """The image index encoded in the centre pixel of each (unaugmented) fake image."""
    v = x.numpy()[:, 0, 16, 16] * data.FMNIST_STD + data.FMNIST_MEAN
    return np.rint(v * 255).astype(int)


# ---------------------------------------------------------------------------------------- idx


def test_idx_round_trip_padding_and_normalisation(tmp_path):
    write_fake_fmnist(tmp_path)
    images, labels = data.load_fashion_mnist(tmp_path, "train")
    assert images.shape == (N_TRAIN, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(N_TRAIN)]
    assert (images[:, 2:30, 2:30] == np.arange(N_TRAIN)[:, None, None]).all()
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (images[:, border] == 0).all()

    x = data.fmnist_to_tensor(np.array([[[0, 255]]], np.uint8)).numpy()
    assert x.shape == (1, 3, 1, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], -0.2860 / 0.3530, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 0, 1], (1 - 0.2860) / 0.3530, rtol=1e-6)

    test_images, test_labels = data.load_fashion_mnist(tmp_path, "test")
    assert test_images[5, 10, 10] == 105 and test_labels[5] == 8
    # Process-level cache: the second load returns the same arrays.
    assert data.load_fashion_mnist(tmp_path, "train")[0] is images


@pytest.mark.parametrize("damage, message", [
    ("truncate", "data bytes"),
    ("magic", "magic number"),
    ("not_gzip", "gzip"),
    ("count", "expected (64, 28, 28)"),
])
def test_corrupt_idx_is_a_data_error_naming_the_file(tmp_path, damage, message):
    write_fake_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    if damage == "truncate":
        with gzip.open(path, "rb") as f:
            raw = f.read()
        with gzip.open(path, "wb") as f:
            f.write(raw[:-100])
    elif damage == "magic":
        with gzip.open(path, "rb") as f:
            raw = f.read()
        with gzip.open(path, "wb") as f:
            f.write(b"\0\0\x0d\x03" + raw[4:])
    elif damage == "not_gzip":
        path.write_bytes(b"plain bytes, not gzip")
    else:
        write_idx(path, fake_images(N_TRAIN - 1))
    with pytest.raises(data.DataError) as e:
        data.load_fashion_mnist(tmp_path, "train")
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_label_out_of_range(tmp_path):
    write_fake_fmnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(N_TEST, 10))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: label 10 outside 0..9"):
        data.load_fashion_mnist(tmp_path, "test")


# ------------------------------------------------------------------------------------ prepare


def test_prepare_finds_files_in_root(tmp_path, capsys):
    root = tmp_path / "fm"
    write_fake_fmnist(root)
    assert data.prepare(fmnist_cfg(root)) == root
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"found in {root}" in out


def test_prepare_corrupt_file_in_root_does_not_fall_back(tmp_path, monkeypatch):
    root, system = tmp_path / "fm", tmp_path / "system"
    write_fake_fmnist(root)
    write_fake_fmnist(system)
    monkeypatch.setattr(data, "SYSTEM_DIR", system)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.prepare(fmnist_cfg(root))


def test_prepare_copies_from_system_dir(tmp_path, monkeypatch, capsys):
    root, system = tmp_path / "fm", tmp_path / "system"
    write_fake_fmnist(system)
    monkeypatch.setattr(data, "SYSTEM_DIR", system)
    assert data.prepare(fmnist_cfg(root)) == root
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (root / name).read_bytes() == (system / name).read_bytes()
    assert stat.S_IMODE((root / "train-images-idx3-ubyte.gz").stat().st_mode) & 0o044  # not 0600
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    assert f"copied from {system}" in capsys.readouterr().out


def test_prepare_downloads_when_nothing_is_local(tmp_path, monkeypatch):
    root = tmp_path / "fm"
    calls = []

    def fake_download(workdir):
        calls.append(workdir)
        target = workdir / "deb" / "usr" / "share" / "datasets" / "fashion-mnist"
        write_fake_fmnist(target)
        return target
    monkeypatch.setattr(data, "_download_fashion_mnist", fake_download)
    assert data.prepare(fmnist_cfg(root)) == root
    assert len(calls) == 1 and not calls[0].exists()  # the temporary directory is removed
    images, _ = data.load_fashion_mnist(root, "test")
    assert images[0, 2, 2] == 100


def test_prepare_lists_the_ways_when_everything_fails(tmp_path):
    root = tmp_path / "fm"
    with pytest.raises(data.DataError) as e:
        data.prepare(fmnist_cfg(root))
    msg = str(e.value)
    assert "\n" not in msg and "download disabled in tests" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "apt-get download dataset-fashion-mnist" in msg and "dpkg-deb -x" in msg
    assert "train-images-idx3-ubyte.gz" in msg and str(root) in msg and "data.root" in msg


def test_real_download_function_reports_apt_failure(tmp_path, monkeypatch):
    """The genuine _download_fashion_mnist, with a fake apt-get that fails like a missing package."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    apt = bindir / "apt-get"
    apt.write_text("#!/bin/sh\necho 'E: Unable to locate package dataset-fashion-mnist' >&2\nexit 100\n")
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(data, "_download_fashion_mnist", ORIGINAL_DOWNLOAD)
    with pytest.raises(data.DataError) as e:
        data.prepare(fmnist_cfg(tmp_path / "fm"))
    assert "apt-get download dataset-fashion-mnist` failed: E: Unable to locate package" in str(e.value)


# -------------------------------------------------------------------------------- TrainData


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


def test_augmentation_crop_and_flip():
    img = np.arange(4 * 4, dtype=np.uint8).reshape(1, 4, 4) + 1
    p = data.AUGMENT_PAD
    same = data.augment_batch(img, np.array([[p, p]]), np.array([False]))
    assert np.array_equal(same, img)
    flipped = data.augment_batch(img, np.array([[p, p]]), np.array([True]))
    assert np.array_equal(flipped, img[:, :, ::-1])
    shifted = data.augment_batch(img, np.array([[p - 1, p + 2]]), np.array([False]))
    # One zero row on top; the content moves down one row and left two columns.
    assert (shifted[0, 0] == 0).all()
    assert np.array_equal(shifted[0, 1:, :2], img[0, :3, 2:]) and (shifted[0, :, 2:] == 0).all()


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
    with pytest.raises(data.DataError, match="fewer than one global batch"):
        data.TrainData(fmnist_cfg(tmp_path, "data.train_size=7"))


def test_fashion_mnist_refuses_a_resolution_it_cannot_give(tmp_path):
    write_fake_fmnist(tmp_path)
    with pytest.raises(data.DataError, match="space.resolution=16: Fashion-MNIST images are 32x32"):
        data.TrainData(fmnist_cfg(tmp_path, "space.resolution=16"))
    with pytest.raises(data.DataError, match="set space.resolution=32"):
        data.validation_set(fmnist_cfg(tmp_path, "space.resolution=64"), 10)


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


# ------------------------------------------------------------------- folder and list data

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255)}


def make_image(path, colour, size, seed):
    """A class-coloured red/blue channel plus a random green channel (so crops differ)."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0], arr[..., 2] = colour[0], colour[2]
    arr[..., 1] = rng.integers(0, 256, (size[1], size[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=100)


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "imgs"
    k = 0
    for split, n in (("train", 5), ("val", 3)):
        for cls, colour in COLOURS.items():
            for i in range(n):
                ext = ".png" if i % 2 else ".JPEG"
                make_image(root / split / cls / f"{cls}{i}{ext}", colour, (40 + 4 * i, 30), k)
                k += 1
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def image_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.name=folder", "space.num_classes=2",
                              "space.resolution=16", "data.batch_size=2", *extra])


def colour_label(x: np.ndarray) -> np.ndarray:
    """Label from the de-normalised colour: blue (dog) -> 1, red (cat) -> 0."""
    rgb = x * data.IMAGENET_STD[None, :, None, None] + data.IMAGENET_MEAN[None, :, None, None]
    return (rgb[:, 2].mean(axis=(1, 2)) > rgb[:, 0].mean(axis=(1, 2))).astype(int)


def test_folder_data(folder_root, capsys):
    cfg = image_cfg(folder_root)
    assert data.prepare(cfg) == folder_root
    assert "10 train / 6 val images" in capsys.readouterr().out
    samples = data.image_samples(cfg, "train")
    assert len(samples) == 10
    assert all(lbl == (1 if "/dog/" in path else 0) for path, lbl in samples)

    td = data.TrainData(cfg)
    assert td.steps_per_epoch == 5
    batches = list(td.batches(0))
    assert len(batches) == 5
    x, y = batches[0]
    assert x.shape == [2, 3, 16, 16] and x.dtype == paddle.float32
    assert y.shape == [2] and y.dtype == paddle.int64
    for x, y in batches:
        assert colour_label(x.numpy()).tolist() == y.numpy().tolist()
    perm = data.epoch_permutation(cfg["run"]["seed"], 0, 10)
    assert np.concatenate([y.numpy() for _, y in batches]).tolist() == [samples[i][1] for i in perm]

    val = data.validation_batches(image_cfg(folder_root, "score.eval_batch=4"))
    assert [int(v[1].shape[0]) for v in val] == [4, 2]
    for x, y in val:
        assert colour_label(x.numpy()).tolist() == y.numpy().tolist()
    calib = data.calibration_batches(image_cfg(folder_root, "score.calib_images=3"))
    assert len(calib) == 1 and calib[0].shape == [3, 3, 16, 16]


def test_folder_augmentation_is_per_sample_deterministic(folder_root):
    cfg = image_cfg(folder_root)
    samples = data.image_samples(cfg, "train")
    ds = data.ImageDataset(samples, 16, augment=True, seed=3)
    a, la = ds[(1, 4)]
    b, _ = data.ImageDataset(samples, 16, augment=True, seed=3)[(1, 4)]
    c, _ = ds[(2, 4)]
    assert a.shape == (3, 16, 16) and a.dtype == np.uint8 and la == samples[4][1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plain, _ = data.ImageDataset(samples, 16, augment=False)[4]
    assert plain.shape == (3, 16, 16) and np.array_equal(plain, data.ImageDataset(samples, 16, False)[4][0])

    # Batches do not depend on the rank split or on resuming.
    single = data.TrainData(image_cfg(folder_root, "data.batch_size=4"))
    full = [(x.numpy(), y.numpy()) for x, y in single.batches(1)]
    ranks = [list(data.TrainData(cfg, r, 2).batches(1)) for r in (0, 1)]
    for (fx, fy), (ax, ay), (bx, by) in zip(full, *ranks):
        np.testing.assert_allclose(fx, np.concatenate([ax.numpy(), bx.numpy()]), rtol=1e-6)
        assert fy.tolist() == ay.numpy().tolist() + by.numpy().tolist()
    tail = list(data.TrainData(image_cfg(folder_root, "data.batch_size=4")).batches(1, start_step=1))
    assert len(tail) == len(full) - 1
    np.testing.assert_allclose(tail[0][0].numpy(), full[1][0], rtol=1e-6)


def test_eval_transform_resizes_shorter_side_and_centre_crops():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 18:22] = 255  # a vertical stripe in the middle survives the centre crop
    out = data.eval_transform(Image.fromarray(arr), 16)
    assert out.shape == (3, 16, 16)  # shorter side 20 -> int(16 / 0.875) = 18, width 36, crop 16
    assert out[:, :, 7:9].min() > 200 and out[:, :, 0].max() == 0


def test_folder_errors(folder_root, tmp_path):
    with pytest.raises(data.DataError, match="2 class folders but space.num_classes is 10"):
        data.prepare(image_cfg(folder_root, "space.num_classes=10"))
    with pytest.raises(data.DataError, match=r"missing[/\\]train: directory not found"):
        data.prepare(image_cfg(tmp_path / "missing"))
    (folder_root / "val" / "bird").mkdir()
    with pytest.raises(data.DataError, match="bird: class not present"):
        data.image_samples(image_cfg(folder_root), "val")


def test_list_data(folder_root, tmp_path):
    train_list, val_list = tmp_path / "train.txt", tmp_path / "val.txt"
    train_list.write_text("train/cat/cat0.JPEG 0\ntrain/dog/dog1.png 1\n\ntrain/dog/dog2.JPEG 1\n"
                          "train/cat/cat3.png 0\n")
    val_list.write_text("val/dog/dog0.JPEG 1\nval/cat/cat1.png 0\n")
    cfg = load_config(None, [f"data.root={folder_root}", "data.name=list", "space.num_classes=2",
                             "space.resolution=16", "data.batch_size=2",
                             f"data.train_list={train_list}", f"data.val_list={val_list}"])
    data.prepare(cfg)
    samples = data.image_samples(cfg, "train")
    assert sorted(samples) == sorted([(str(folder_root / "train/cat/cat0.JPEG"), 0),
                                      (str(folder_root / "train/dog/dog1.png"), 1),
                                      (str(folder_root / "train/dog/dog2.JPEG"), 1),
                                      (str(folder_root / "train/cat/cat3.png"), 0)])
    td = data.TrainData(cfg)
    assert td.steps_per_epoch == 2
    for x, y in td.batches(0):
        assert x.shape == [2, 3, 16, 16] and colour_label(x.numpy()).tolist() == y.numpy().tolist()
    (vx, vy), = data.validation_batches(cfg)
    assert sorted(vy.numpy().tolist()) == [0, 1] and colour_label(vx.numpy()).tolist() == vy.numpy().tolist()

    train_list.write_text("train/cat/cat0.JPEG 0\ntrain/dog/dog1.png\n")
    with pytest.raises(data.DataError, match=r"train.txt:2: expected 'relative/path label'"):
        data.prepare(cfg)
    train_list.write_text("train/cat/cat0.JPEG 5\n")
    with pytest.raises(data.DataError, match=r"train.txt:1: label 5 outside 0..1"):
        data.prepare(cfg)


def test_worker_processes_give_the_same_batches(folder_root):
    """Per-sample RNG keyed by (seed, epoch, index): worker processes change nothing."""
    serial = [(x.numpy(), y.numpy()) for x, y in data.TrainData(image_cfg(folder_root)).batches(2)]
    workers = list(data.TrainData(image_cfg(folder_root, "data.num_workers=2")).batches(2))
    assert len(workers) == len(serial) == 5
    for (sx, sy), (wx, wy) in zip(serial, workers):
        assert np.array_equal(sx, wx.numpy()) and np.array_equal(sy, wy.numpy())

"""Tests of track1.data.images: folder and list files, transforms, the per-sample deterministic Dataset,
and the folder/list training and evaluation batches built on them."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from PIL import Image

from fakes import write_image_folders
from track1 import data
from track1.data import images
from track1.pipeline.config import load_config
from track1.data.datafiles import DataError


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "imgs"
    write_image_folders(root)
    return root


def image_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.name=folder", "space.num_classes=2",
                              "space.resolution=16", "data.batch_size=2", *extra])


def colour_label(x: np.ndarray) -> np.ndarray:
    """Label from the de-normalised colour: blue (dog) -> 1, red (cat) -> 0."""
    rgb = x * images.IMAGENET_STD[None, :, None, None] + images.IMAGENET_MEAN[None, :, None, None]
    return (rgb[:, 2].mean(axis=(1, 2)) > rgb[:, 0].mean(axis=(1, 2))).astype(int)


def test_folder_data(folder_root, capsys):
    cfg = image_cfg(folder_root)
    assert data.prepare(cfg) == folder_root
    assert "10 train / 6 val images" in capsys.readouterr().out
    samples = images.image_samples(cfg, "train")
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
    assert len(calib) == 1 and [c.shape for c in calib] == [[3, 3, 16, 16]]


def test_folder_augmentation_is_per_sample_deterministic(folder_root):
    cfg = image_cfg(folder_root)
    samples = images.image_samples(cfg, "train")
    ds = images.ImageDataset(samples, 16, augment=True, seed=3)
    a, la = ds[(1, 4)]
    b, _ = images.ImageDataset(samples, 16, augment=True, seed=3)[(1, 4)]
    c, _ = ds[(2, 4)]
    assert a.shape == (3, 16, 16) and a.dtype == np.uint8 and la == samples[4][1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plain, _ = images.ImageDataset(samples, 16, augment=False)[4]
    assert plain.shape == (3, 16, 16) and np.array_equal(plain, images.ImageDataset(samples, 16, False)[4][0])

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
    out = images.eval_transform(Image.fromarray(arr), 16)
    assert out.shape == (3, 16, 16)  # shorter side 20 -> int(16 / 0.875) = 18, width 36, crop 16
    assert out[:, :, 7:9].min() > 200 and out[:, :, 0].max() == 0


def test_augment_batch_crop_and_flip_grey_and_colour():
    img = np.arange(4 * 4, dtype=np.uint8).reshape(1, 4, 4) + 1
    p = images.AUGMENT_PAD
    same = images.augment_batch(img, np.array([[p, p]]), np.array([False]))
    assert np.array_equal(same, img)
    flipped = images.augment_batch(img, np.array([[p, p]]), np.array([True]))
    assert np.array_equal(flipped, img[:, :, ::-1])
    shifted = images.augment_batch(img, np.array([[p - 1, p + 2]]), np.array([False]))
    # One zero row on top; the content moves down one row and left two columns.
    assert (shifted[0, 0] == 0).all()
    assert np.array_equal(shifted[0, 1:, :2], img[0, :3, 2:]) and (shifted[0, :, 2:] == 0).all()
    # (N, C, H, W): every channel gets its own image's crop and flip.
    colour = np.stack([img[0], img[0] + 100, img[0] + 200])[None].repeat(2, axis=0)  # (2, 3, 4, 4)
    out = images.augment_batch(colour, np.array([[p, p], [p - 1, p + 2]]), np.array([True, False]))
    assert out.shape == (2, 3, 4, 4)
    for ch in range(3):
        assert np.array_equal(out[0, ch], colour[0, ch, :, ::-1])
        assert np.array_equal(out[1, ch], shifted[0] + np.where(shifted[0] > 0, 100 * ch, 0))


def test_normalize_uploads_constants_once_per_device():
    x = np.full((2, 3, 1, 1), 255, np.uint8)
    a = images.rgb_to_tensor(x).numpy()
    np.testing.assert_allclose(a[0, :, 0, 0], (1 - images.IMAGENET_MEAN) / images.IMAGENET_STD, rtol=1e-6)
    cached = dict(images._CONSTANTS)
    images.rgb_to_tensor(paddle.to_tensor(x))
    assert images._CONSTANTS.keys() == cached.keys()  # no new constants for the second batch


def test_folder_errors(folder_root, tmp_path):
    with pytest.raises(DataError, match="2 class folders but space.num_classes is 10"):
        data.prepare(image_cfg(folder_root, "space.num_classes=10"))
    with pytest.raises(DataError, match=r"missing[/\\]train: directory not found"):
        data.prepare(image_cfg(tmp_path / "missing"))
    (folder_root / "val" / "bird").mkdir()
    with pytest.raises(DataError, match="bird: class not present"):
        images.image_samples(image_cfg(folder_root), "val")


def test_list_data(folder_root, tmp_path):
    train_list, val_list = tmp_path / "train.txt", tmp_path / "val.txt"
    train_list.write_text("train/cat/cat0.JPEG 0\ntrain/dog/dog1.png 1\n\ntrain/dog/dog2.JPEG 1\n"
                          "train/cat/cat3.png 0\n")
    val_list.write_text("val/dog/dog0.JPEG 1\nval/cat/cat1.png 0\n")
    cfg = load_config(None, [f"data.root={folder_root}", "data.name=list", "space.num_classes=2",
                             "space.resolution=16", "data.batch_size=2",
                             f"data.train_list={train_list}", f"data.val_list={val_list}"])
    data.prepare(cfg)
    samples = images.image_samples(cfg, "train")
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
    with pytest.raises(DataError, match=r"train.txt:2: expected 'relative/path label'"):
        data.prepare(cfg)
    train_list.write_text("train/cat/cat0.JPEG 5\n")
    with pytest.raises(DataError, match=r"train.txt:1: label 5 outside 0..1"):
        data.prepare(cfg)


def test_every_reader_refuses_a_class_count_that_is_not_space_num_classes(folder_root):
    """prepare, train's batches and score's images: the same one line, before any batch (train
    took 2 class folders under space.num_classes 1000 that prepare refused)."""
    cfg = image_cfg(folder_root, "space.num_classes=1000")
    said = f"{folder_root / 'train'}: 2 class folders but space.num_classes is 1000"
    for read in (data.prepare, data.TrainData, data.validation_batches):
        with pytest.raises(DataError) as refused:
            read(cfg)
        assert str(refused.value) == said


def test_worker_processes_give_the_same_batches_and_persist(folder_root):
    """Per-sample RNG keyed by (seed, epoch, index): worker processes change nothing. One stream of
    batches serves consecutive epochs with the same worker processes; any other start opens a new one."""
    serial_data = data.TrainData(image_cfg(folder_root))
    workers_data = data.TrainData(image_cfg(folder_root, "data.num_workers=2"))
    streams = []
    for epoch, start, stop in ((2, 0, 5), (3, 0, 2), (3, 2, 5), (4, 0, 5), (6, 3, 5), (4, 1, 5)):
        serial = [(x.numpy(), y.numpy()) for x, y in serial_data.batches(epoch, start)][:stop - start]
        workers = []
        for x, y in workers_data.batches(epoch, start):
            workers.append((x, y))
            if len(workers) == stop - start:
                break  # abandon the epoch here: the stream stays where it is
        assert len(workers) == len(serial) == stop - start
        for (sx, sy), (wx, wy) in zip(serial, workers):
            assert np.array_equal(sx, wx.numpy()) and np.array_equal(sy, wy.numpy())
        streams.append(workers_data._stream)
    # (2, 0..5) -> (3, 0..2) -> (3, 2..5) -> (4, 0..5) continue one stream; (6, 3) and (4, 1) open new ones.
    assert streams[0] is streams[1] is streams[2] is streams[3]
    assert streams[4] is not streams[3] and streams[5] is not streams[4]
    workers = streams[5]._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    assert workers_data.wait_seconds > 0
    # A stream that is replaced, or closed, ends its workers at once (dropping it did not: the
    # loader's reader thread keeps it, and its workers died under it at exit with a warning).
    replaced = streams[4]._workers
    assert not any(w.is_alive() for w in replaced)
    workers_data.close()
    assert workers_data._stream is None and not any(w.is_alive() for w in workers)


def test_an_evaluation_pass_stopped_early_ends_its_workers(folder_root, monkeypatch):
    """A set too large to keep in memory decodes on every pass; a consumer that stops early ends
    that pass's loader workers."""
    from track1.data import evaluation
    monkeypatch.setattr(evaluation, "EVAL_CACHE_BYTES", 0)
    passes = iter(evaluation.validation_set(image_cfg(folder_root, "data.num_workers=2"), batch=2))
    next(passes)
    workers = passes.gi_frame.f_locals["batches"]._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    passes.close()
    assert not any(w.is_alive() for w in workers)

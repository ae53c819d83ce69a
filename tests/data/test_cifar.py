"""Tests of track1.data.cifar and CIFAR training/eval batches on small files in the official format
(protocol-2 pickles of dicts with bytes keys, uint8 rows of 3072 in CHW order)."""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import paddle
import pytest

from fakes import cifar_entry, cifar_rows, write_cifar_batch, write_fake_cifar10, write_fake_cifar100
from conftest import REPO
from track1.data import cifar
from track1 import data
from track1.pipeline.config import load_config
from track1.data.datafiles import DataError


def cifar_cfg(root, *extra, name="cifar10"):
    classes = cifar.DATASETS[name]["classes"]
    return load_config(None, [f"data.root={root}", f"data.name={name}", f"space.num_classes={classes}",
                              "data.batch_size=4", *extra])


def denormalize(x: paddle.Tensor, name="cifar10") -> np.ndarray:
    """uint8 pixel values back from a normalised batch."""
    mean, std = cifar.stats(name)
    v = x.numpy() * std[None, :, None, None] + mean[None, :, None, None]
    return np.rint(v * 255).astype(int)


def test_cifar10_reads_the_official_layout(tmp_path, capsys):
    write_fake_cifar10(tmp_path)
    images, labels = cifar.load_cifar(tmp_path, "cifar10", "train")
    assert images.shape == (40, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [k % 10 for k in range(40)]
    # Rows are CHW: the first 1024 bytes are the red plane, then green, then blue.
    assert images[:, 0, 5, 5].tolist() == list(range(40))
    assert images[:, 1, 5, 5].tolist() == [2 * (k % 8) for k in range(40)]
    assert (images[:, 2, 5, 5] == 200).all() and (images[:, :, 0, 31] == 255).all()
    test_images, test_labels = cifar.load_cifar(tmp_path, "cifar10", "test")
    assert test_images[:, 0, 0, 0].tolist() == list(range(100, 108)) and test_labels[0] == 3
    assert cifar.load_cifar(tmp_path, "cifar10", "train")[0] is images  # cached

    assert data.prepare(cifar_cfg(tmp_path)) == tmp_path
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "cifar10 ready: found: 40 train / 8 test images" in out
    # data.root may also name the batch directory itself.
    assert cifar.load_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test")[1].tolist() == test_labels.tolist()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_batch_pickled_again_by_python3_reads_the_same(tmp_path, protocol):
    write_fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    before = cifar.read_batch(path, "labels", 10)
    path.write_bytes(pickle.dumps(cifar_entry(cifar_rows(8, 16), range(16, 24)), protocol=protocol))
    after = cifar.read_batch(path, "labels", 10 ** 3)
    assert np.array_equal(before[0], after[0]) and after[1].tolist() == list(range(16, 24))
    assert before[1].tolist() == [k % 10 for k in range(16, 24)]


def test_cifar100_fine_labels(tmp_path):
    write_fake_cifar100(tmp_path)
    cfg = cifar_cfg(tmp_path, "data.augment=false", name="cifar100")
    td = data.TrainData(cfg)
    assert td.steps_per_epoch == 10
    batches = list(td.batches(0))
    perm = data.epoch_permutation(cfg["run"]["seed"], 0, 40)
    assert np.concatenate([y.numpy() for _, y in batches]).tolist() == ((7 * perm) % 100).tolist()
    x = np.concatenate([denormalize(x, "cifar100") for x, _ in batches])
    assert x[:, 0, 5, 5].tolist() == perm.tolist()
    (vx, vy), = data.validation_batches(load_config(None, [
        *[f"{k}={v}" for k, v in (("data.root", tmp_path), ("data.name", "cifar100"),
                                  ("space.num_classes", 100), ("score.val_images", 8))]]))
    assert vy.numpy().tolist() == list(range(99, 91, -1))
    assert denormalize(vx, "cifar100")[:, 0, 0, 0].tolist() == list(range(100, 108))


def test_cifar_train_and_eval_batches(tmp_path):
    write_fake_cifar10(tmp_path)
    cfg = cifar_cfg(tmp_path, "data.augment=false", "run.seed=3", "score.calib_images=10",
                    "score.calib_batch=4", "score.val_images=6", "score.eval_batch=4")
    td = data.TrainData(cfg)
    batches = list(td.batches(1))
    x, y = batches[0]
    assert x.shape == [4, 3, 32, 32] and x.dtype == paddle.float32 and y.dtype == paddle.int64
    perm = data.epoch_permutation(3, 1, 40)
    seen = np.concatenate([denormalize(x) for x, _ in batches])
    assert seen[:, 0, 5, 5].tolist() == perm.tolist() and (seen[:, 2, 1:] == 200).all()
    mean, std = cifar.stats("cifar10")
    np.testing.assert_allclose(x.numpy()[:, 2, 5, 5], (200 / 255 - mean[2]) / std[2], rtol=1e-6)

    calib = data.calibration_batches(cfg)
    assert [c.shape[0] for c in calib] == [4, 4, 2]
    assert np.concatenate([denormalize(c) for c in calib])[:, 0, 5, 5].tolist() == list(range(10))
    val = data.validation_batches(cfg)
    assert [int(y.shape[0]) for _, y in val] == [4, 2]
    assert np.concatenate([y.numpy() for _, y in val]).tolist() == [3, 4, 5, 6, 7, 8]


def test_cifar_augmentation_is_pad_crop_flip_and_deterministic(tmp_path):
    write_fake_cifar10(tmp_path)
    plain = list(data.TrainData(cifar_cfg(tmp_path, "data.augment=false")).batches(2))
    aug_cfg = cifar_cfg(tmp_path, "data.augment=true")
    aug = list(data.TrainData(aug_cfg).batches(2))
    again = list(data.TrainData(aug_cfg).batches(2))
    tail = list(data.TrainData(aug_cfg).batches(2, start_step=3))
    for (ax, ay), (bx, by) in zip(aug, again):
        assert np.array_equal(ax.numpy(), bx.numpy()) and np.array_equal(ay.numpy(), by.numpy())
    for (ax, _), (tx, _) in zip(aug[3:], tail):
        assert np.array_equal(ax.numpy(), tx.numpy())
    p = np.concatenate([denormalize(x) for x, _ in plain])
    a = np.concatenate([denormalize(x) for x, _ in aug])
    # Same images in the same order (the centre survives any crop of pad 4) ...
    assert np.array_equal(a[:, :, 16, 16], p[:, :, 16, 16])
    # ... shifted and flipped: the white pixel at (0, 31) moves; out-of-image pixels are zero padding.
    moved = [tuple(np.argwhere((img == 255).all(axis=0))[0]) if (img == 255).all(axis=0).any() else None
             for img in a]
    assert len(set(moved)) > 3
    assert any(m is not None and m[1] < 8 for m in moved)  # flipped to the left side
    assert (a == 0).all(axis=1).any()  # some zero padding came in
    # The draws are per global batch: two ranks together give the single-rank batch.
    single = list(data.TrainData(cifar_cfg(tmp_path, "data.augment=true", "data.batch_size=8")).batches(0))
    ranks = [list(data.TrainData(aug_cfg, r, 2).batches(0)) for r in (0, 1)]
    for (sx, _), (rx, _), (qx, _) in zip(single, *ranks):
        assert np.array_equal(sx.numpy(), np.concatenate([rx.numpy(), qx.numpy()]))


def test_prepare_unpacks_only_the_batch_files_of_the_archive(tmp_path, capsys):
    src = tmp_path / "src"
    write_fake_cifar10(src)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        evil = tarfile.TarInfo("../escaped.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    assert data.prepare(cifar_cfg(root)) == root
    assert "unpacked cifar-10-python.tar.gz: 40 train / 8 test images" in capsys.readouterr().out
    assert (root / "cifar-10-batches-py" / "data_batch_5").read_bytes() == \
        (src / "cifar-10-batches-py" / "data_batch_5").read_bytes()
    assert not (tmp_path / "escaped.txt").exists()


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError) as e:
        data.prepare(cifar_cfg(tmp_path / "nothing"))
    msg = str(e.value)
    assert "\n" not in msg and "data_batch_1: file not found" in msg
    assert "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert str(tmp_path / "nothing" / "cifar-10-batches-py") in msg
    write_fake_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(DataError, match="data_batch_4: file not found"):
        data.TrainData(cifar_cfg(tmp_path))


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > boom.txt",))


@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a CIFAR python pickle batch"),
    ("not_pickle", "not a CIFAR python pickle batch"),
    ("code", "global posix.system is not allowed"),
    ("list", "holds a list, expected a dict"),
    ("no_labels", "no b'labels' entry"),
    ("width", "expected uint8 rows of 3072"),
    ("float", "expected uint8 rows of 3072"),
    ("count", "7 entries in b'labels' for 8 images"),
    ("label", "label 10 outside 0..9"),
])
def test_malformed_batch_is_a_one_line_data_error(tmp_path, monkeypatch, damage, message):
    write_fake_cifar10(tmp_path)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    rows, labels = cifar_rows(8, 0), list(range(8))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-50])
    elif damage == "not_pickle":
        path.write_text("plain text")
    elif damage == "code":
        path.write_bytes(pickle.dumps({b"data": Boom()}, protocol=2))
    elif damage == "list":
        path.write_bytes(pickle.dumps([rows], protocol=2))
    elif damage == "no_labels":
        write_cifar_batch(path, rows, labels, label_key=b"fine_labels")
    elif damage == "width":
        write_cifar_batch(path, rows[:, :3000], labels)
    elif damage == "float":
        path.write_bytes(pickle.dumps(cifar_entry(rows.astype(np.float32), labels), protocol=2))
    elif damage == "count":
        write_cifar_batch(path, rows, labels[:7])
    else:
        write_cifar_batch(path, rows, [10] + labels[1:])
    with pytest.raises(DataError) as e:
        data.prepare(cifar_cfg(tmp_path))
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "boom.txt").exists()


def test_cifar_checks_the_network_shape(tmp_path):
    write_fake_cifar10(tmp_path)
    with pytest.raises(DataError, match="space.resolution=64: cifar10 images are 32x32; set space.resolution=32"):
        data.TrainData(cifar_cfg(tmp_path, "space.resolution=64"))
    with pytest.raises(DataError, match="space.num_classes=100: cifar10 has 10 classes"):
        data.prepare(cifar_cfg(tmp_path, "space.num_classes=100"))


def test_cifar10_config_trains_a_step(tmp_path):
    """configs/cifar10.yaml end to end on the fake files: one training step, one scored code."""
    from track1.pipeline.train import train
    write_fake_cifar10(tmp_path / "c10")
    cfg = load_config(REPO / "configs" / "cifar10.yaml", [
        f"data.root={tmp_path / 'c10'}", f"run.output_dir={tmp_path / 'out'}", "space.width_mult=0.125",
        "data.batch_size=8", "train.epochs=1", "train.max_steps=1", "train.eval_images=8",
        "score.calib_images=8", "score.calib_batch=8", "train.visualdl=false"])
    assert cfg["data"]["name"] == "cifar10" and cfg["run"]["name"] != "fmnist_sandwich"
    assert train(cfg, progress=False) is not None


def test_prepare_command_on_missing_cifar_is_one_line_and_non_zero(tmp_path, capsys):
    from track1.pipeline.cli import main
    code = main(["prepare", "-c", str(REPO / "configs" / "cifar10.yaml"),
                 "-o", f"data.root={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "data_batch_1" in err[0]
    write_fake_cifar10(tmp_path)
    assert main(["prepare", "-c", str(REPO / "configs" / "cifar10.yaml"),
                 "-o", f"data.root={tmp_path}"]) == 0
    assert "cifar10 ready: found: 40 train / 8 test images" in capsys.readouterr().out

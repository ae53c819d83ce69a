"""Tests of track1.data.fmnist on small generated idx files: reading, verification, fetching by prepare()."""
from __future__ import annotations

import gzip
import stat

import numpy as np
import pytest

from fakes import N_TEST, N_TRAIN, fake_images, small_fmnist, write_fake_fmnist, write_idx
from track1 import data
from track1.data import fmnist
from track1.pipeline.config import load_config
from track1.data.datafiles import DataError

# The real download function, kept before the autouse fixture replaces it.
ORIGINAL_DOWNLOAD = fmnist._download_fashion_mnist


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch, tmp_path):
    small_fmnist(monkeypatch, tmp_path)


def fmnist_cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.batch_size=8", *extra])


# ---------------------------------------------------------------------------------------- idx


def test_idx_round_trip_padding_and_normalisation(tmp_path):
    write_fake_fmnist(tmp_path)
    images, labels = fmnist.load_fashion_mnist(tmp_path, "train")
    assert images.shape == (N_TRAIN, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(N_TRAIN)]
    assert (images[:, 2:30, 2:30] == np.arange(N_TRAIN)[:, None, None]).all()
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (images[:, border] == 0).all()

    x = fmnist.fmnist_to_tensor(np.array([[[0, 255]]], np.uint8)).numpy()
    assert x.shape == (1, 3, 1, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], -0.2860 / 0.3530, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 0, 1], (1 - 0.2860) / 0.3530, rtol=1e-6)

    test_images, test_labels = fmnist.load_fashion_mnist(tmp_path, "test")
    assert test_images[5, 10, 10] == 105 and test_labels[5] == 8
    # Process-level cache: the second load returns the same arrays.
    assert fmnist.load_fashion_mnist(tmp_path, "train")[0] is images


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
    with pytest.raises(DataError) as e:
        fmnist.load_fashion_mnist(tmp_path, "train")
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_label_out_of_range(tmp_path):
    write_fake_fmnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(N_TEST, 10))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: label 10 outside 0..9"):
        fmnist.load_fashion_mnist(tmp_path, "test")


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
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", system)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.prepare(fmnist_cfg(root))


def test_prepare_copies_from_system_dir(tmp_path, monkeypatch, capsys):
    root, system = tmp_path / "fm", tmp_path / "system"
    write_fake_fmnist(system)
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", system)
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
    monkeypatch.setattr(fmnist, "_download_fashion_mnist", fake_download)
    assert data.prepare(fmnist_cfg(root)) == root
    assert len(calls) == 1 and not calls[0].exists()  # the temporary directory is removed
    images, _ = fmnist.load_fashion_mnist(root, "test")
    assert images[0, 2, 2] == 100


def test_prepare_lists_the_ways_when_everything_fails(tmp_path):
    root = tmp_path / "fm"
    with pytest.raises(DataError) as e:
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
    monkeypatch.setattr(fmnist, "_download_fashion_mnist", ORIGINAL_DOWNLOAD)
    with pytest.raises(DataError) as e:
        data.prepare(fmnist_cfg(tmp_path / "fm"))
    assert "apt-get download dataset-fashion-mnist` failed: E: Unable to locate package" in str(e.value)


def test_a_class_count_other_than_ten_is_refused_by_prepare_train_and_score(tmp_path):
    """As CIFAR's and image folders': a 1,000-way head took Fashion-MNIST without a word."""
    write_fake_fmnist(tmp_path)
    cfg = fmnist_cfg(tmp_path, "space.num_classes=1000")
    for read in (data.prepare, data.TrainData, data.validation_batches):
        with pytest.raises(DataError) as refused:
            read(cfg)
        assert str(refused.value) == "space.num_classes=1000: fashion_mnist has 10 classes; set space.num_classes=10"

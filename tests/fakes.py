"""Small fake datasets written in the real file formats (idx .gz, CIFAR pickles, image folders), and a
stand-in for the organizers' resnet48.pdparams in its names and shapes."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
from PIL import Image

from track1.data import fmnist
from track1.data.datafiles import DataError

N_TRAIN, N_TEST = 64, 16


# ------------------------------------------------------------------------------ Fashion-MNIST

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


def small_fmnist(monkeypatch, tmp_path) -> None:
    """Accept the fake sizes; never touch the real system directory or the network."""
    monkeypatch.setattr(fmnist, "FMNIST_SIZES", {"train": N_TRAIN, "test": N_TEST})
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "no-system-dir")

    def no_download(workdir):
        raise DataError("download disabled in tests")
    monkeypatch.setattr(fmnist, "_download_fashion_mnist", no_download)


# ---------------------------------------------------------------------------------------- CIFAR

def cifar_rows(n: int, offset: int) -> np.ndarray:
    """uint8 rows of 3072 in CHW order: image i has red = offset + i, green = 2 * i, blue = 200,
    except pixel (row 0, column 31), which is 255 in every channel (shows flips and the layout)."""
    img = np.zeros((n, 3, 32, 32), np.uint8)
    img[:, 0] = (offset + np.arange(n))[:, None, None]
    img[:, 1] = (2 * np.arange(n))[:, None, None]
    img[:, 2] = 200
    img[:, :, 0, 31] = 255
    return img.reshape(n, 3072)


def write_cifar_batch(path, rows: np.ndarray, labels, label_key: bytes = b"labels",
                      extra: dict | None = None) -> None:
    """One batch as the official files hold it: a dict with bytes keys, pickled as by Python 2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(python2_pickle(cifar_entry(rows, labels, label_key, extra)))


def cifar_entry(rows: np.ndarray, labels, label_key: bytes = b"labels", extra: dict | None = None) -> dict:
    return {b"batch_label": b"fake batch", label_key: [int(v) for v in labels], b"data": rows,
            b"filenames": [b"img_%d.png" % i for i in range(len(rows))], **(extra or {})}


def write_fake_cifar10(root, per_batch: int = 8, n_test: int = 8) -> None:
    """cifar-10-batches-py/data_batch_1..5 (image k overall has red = k) and test_batch (red 100 + i)."""
    d = root / "cifar-10-batches-py"
    for b in range(5):
        write_cifar_batch(d / f"data_batch_{b + 1}", cifar_rows(per_batch, b * per_batch),
                          (b * per_batch + np.arange(per_batch)) % 10)
    write_cifar_batch(d / "test_batch", cifar_rows(n_test, 100), (np.arange(n_test) + 3) % 10)


def write_fake_cifar100(root, n_train: int = 40, n_test: int = 8) -> None:
    d = root / "cifar-100-python"
    write_cifar_batch(d / "train", cifar_rows(n_train, 0), (7 * np.arange(n_train)) % 100,
                      label_key=b"fine_labels", extra={b"coarse_labels": [0] * n_train})
    write_cifar_batch(d / "test", cifar_rows(n_test, 100), 99 - np.arange(n_test),
                      label_key=b"fine_labels", extra={b"coarse_labels": [0] * n_test})


# --------------------------------------------------------------------------------- image folders

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255)}


def make_image(path, colour, size, seed):
    """A class-coloured red/blue channel plus a random green channel (so crops differ)."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0], arr[..., 2] = colour[0], colour[2]
    arr[..., 1] = rng.integers(0, 256, (size[1], size[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=100)


def write_image_folders(root) -> None:
    """root/{train,val}/{cat,dog}/ with 5 and 3 images per class, of several sizes and formats."""
    k = 0
    for split, n in (("train", 5), ("val", 3)):
        for cls, colour in COLOURS.items():
            for i in range(n):
                ext = ".png" if i % 2 else ".JPEG"
                make_image(root / split / cls / f"{cls}{i}{ext}", colour, (40 + 4 * i, 30), k)
                k += 1
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def python2_pickle(obj) -> bytes:
    """obj pickled as Python 2's cPickle with numpy 1 wrote the official CIFAR files: bytes as
    py2 str (SHORT_BINSTRING/BINSTRING), arrays through numpy.core.multiarray._reconstruct."""
    def enc(o) -> bytes:
        if o is None:
            return b"N"
        if isinstance(o, bool):
            return b"\x88" if o else b"\x89"
        if isinstance(o, (int, np.integer)):
            return b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o)
        if isinstance(o, bytes):
            return b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o
        if isinstance(o, tuple):
            return b"(" + b"".join(enc(v) for v in o) + b"t"
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            dtype = b"cnumpy\ndtype\n" + enc((b"u1", 0, 1)) + b"R" + enc((3, b"|", None, None, None, -1, -1, 0)) + b"b"
            array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + enc((0,)) + enc(b"b") + b"\x87R"
            state = b"(" + enc(1) + enc(o.shape) + dtype + enc(False) + enc(o.tobytes()) + b"t"
            return array + state + b"b"
        raise TypeError(type(o))
    return b"\x80\x02" + enc(obj) + b"."


# ------------------------------------------------------------------------------ the organizers' resnet48.pdparams

# The organizers' ResNet48 (the official baseline's hnas/models/resnet.py, resnet48()): blocks.0 is the
# stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), blocks.1-23 the BasicBlocks of stages of 5, 5, 8 and 5
# blocks with widths 64, 128, 256, 512 and strides 1, 2, 2, 2, a 1x1 conv + BN `downsample` on the
# first block of stages 2-4 only, blocks.24 the head (average pool, fc with weight [in, out]).
DEPTHS, WIDTHS, STRIDES = (5, 5, 8, 5), (64, 128, 256, 512), (1, 2, 2, 2)


def organizers_file(rng) -> dict[str, np.ndarray]:
    """A state dict in the organizers' names and shapes, random values (BN variances positive)."""
    state = {}

    def conv(name, out, inp, k):
        state[f"{name}.weight"] = rng.normal(0, (2 / (inp * k * k)) ** 0.5, (out, inp, k, k)).astype("float32")

    def bn(name, c):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype("float32")
        state[f"{name}.bias"] = rng.normal(0, 0.1, c).astype("float32")
        state[f"{name}._mean"] = rng.normal(0, 0.1, c).astype("float32")
        state[f"{name}._variance"] = rng.uniform(0.5, 1.5, c).astype("float32")

    conv("blocks.0.conv", 64, 3, 7)
    bn("blocks.0.bn", 64)
    i, c_in = 1, 64
    for depth, width in zip(DEPTHS, WIDTHS):
        for b in range(depth):
            conv(f"blocks.{i}.conv1", width, c_in, 3)
            bn(f"blocks.{i}.bn1", width)
            conv(f"blocks.{i}.conv2", width, width, 3)
            bn(f"blocks.{i}.bn2", width)
            if b == 0 and width != 64:
                conv(f"blocks.{i}.downsample.0", width, c_in, 1)
                bn(f"blocks.{i}.downsample.1", width)
            i, c_in = i + 1, width
    state["blocks.24.fc.weight"] = rng.normal(0, 0.05, (512, 1000)).astype("float32")
    state["blocks.24.fc.bias"] = rng.normal(0, 0.05, 1000).astype("float32")
    return state

"""Loading the organizers' resnet48.pdparams into the supernet, its refusals, and the baseline's reorder."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from track1.network.pretrained import (PretrainedError, load_full_network, organizer_name, read_full_network,
                                       reorder_mid_channels, write_organizer_file)
from track1.network.supernet import SuperNet
from track1.space import SearchSpace

# The organizers' ResNet48 (the official baseline's hnas/models/resnet.py, resnet48()): blocks.0 is the
# stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), blocks.1-23 the BasicBlocks of stages of 5, 5, 8 and 5
# blocks with widths 64, 128, 256, 512 and strides 1, 2, 2, 2, a 1x1 conv + BN `downsample` on the
# first block of stages 2-4 only, blocks.24 the head (average pool, fc with weight [in, out]).
DEPTHS, WIDTHS, STRIDES = (5, 5, 8, 5), (64, 128, 256, 512), (1, 2, 2, 2)
SPACE = SearchSpace(width_mult=1.0, resolution=32, num_classes=1000)


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


def plain_forward(state: dict[str, np.ndarray], x: paddle.Tensor) -> paddle.Tensor:
    """The organizers' ResNet48 in eval mode, written from its structure with functional ops."""
    t = {k: paddle.to_tensor(v) for k, v in state.items()}

    def bn(name, y):
        return F.batch_norm(y, t[f"{name}._mean"], t[f"{name}._variance"], t[f"{name}.weight"],
                            t[f"{name}.bias"], training=False, epsilon=1e-5)

    y = F.relu(bn("blocks.0.bn", F.conv2d(x, t["blocks.0.conv.weight"], stride=2, padding=3)))
    y = F.max_pool2d(y, 3, 2, 1)
    i = 1
    for depth, stride in zip(DEPTHS, STRIDES):
        for b in range(depth):
            s = stride if b == 0 else 1
            out = F.relu(bn(f"blocks.{i}.bn1", F.conv2d(y, t[f"blocks.{i}.conv1.weight"], stride=s, padding=1)))
            out = bn(f"blocks.{i}.bn2", F.conv2d(out, t[f"blocks.{i}.conv2.weight"], padding=1))
            if f"blocks.{i}.downsample.0.weight" in t:
                y = bn(f"blocks.{i}.downsample.1", F.conv2d(y, t[f"blocks.{i}.downsample.0.weight"], stride=s))
            y = F.relu(out + y)
            i += 1
    return paddle.matmul(F.adaptive_avg_pool2d(y, 1).flatten(1), t["blocks.24.fc.weight"]) + t["blocks.24.fc.bias"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "resnet48.pdparams"
    state = organizers_file(np.random.default_rng(0))
    paddle.save(state, str(path))
    return path, state


def _close(got, want):
    """Equal to float rounding, measured against the logits' scale (random weights grow them)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def _largest_logits(model, x):
    model.eval()
    with paddle.no_grad():
        return model(x, SPACE.max_widths).numpy()


def test_the_organizers_file_loads_and_the_largest_subnet_is_their_network(released):
    path, state = released
    assert len(state) == 252 and sum(v.size for v in state.values()) == 34_067_880
    model = SuperNet(SPACE)
    load_full_network(model, path)
    x = paddle.to_tensor(np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype("float32"))
    _close(_largest_logits(model, x), plain_forward(state, x).numpy())
    # ... and names map both ways: a written file is the organizers' again, value for value.
    back = paddle.load(str(write_organizer_file(model, path.parent / "again.pdparams")))
    assert set(back) == set(state) and all(np.array_equal(np.asarray(back[k]), state[k]) for k in state)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("blocks.11.downsample.1._variance"), r"tensor blocks.11.downsample.1._variance \[256\] is missing"),
    (lambda s: s.update({"blocks.1.downsample.0.weight": np.zeros((64, 64, 1, 1), "float32")}),
     "tensor blocks.1.downsample.0.weight is not one of the supernet's"),
    (lambda s: s.update({"blocks.24.fc.weight": np.zeros((512, 10), "float32")}),
     r"tensor blocks.24.fc.weight has shape \[512, 10\], the configured supernet .* expects \[512, 1000\]"),
])
def test_a_file_that_does_not_fit_is_refused_naming_the_first_tensor(released, tmp_path, change, message):
    state = dict(released[1])
    change(state)
    path = tmp_path / "bad.pdparams"
    paddle.save(state, str(path))
    with pytest.raises(PretrainedError, match=message):
        read_full_network(path, SuperNet(SPACE))


def test_a_file_of_another_width_is_refused(released):
    narrow = SuperNet(SearchSpace(width_mult=0.25, resolution=32, num_classes=1000))
    with pytest.raises(PretrainedError, match=r"blocks.0.conv.weight has shape \[64, 3, 7, 7\], the configured "
                                              r"supernet \(space.width_mult, space.num_classes\) expects \[16, 3, 7, 7\]"):
        read_full_network(released[0], narrow)
    assert organizer_name("stages.2.0.shortcut_bn._mean") == "blocks.11.downsample.1._mean"


def test_reorder_keeps_the_function_and_puts_the_most_important_mid_channels_first(released):
    path, state = released
    x = paddle.to_tensor(np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype("float32"))
    plain, reordered = SuperNet(SPACE), SuperNet(SPACE)
    load_full_network(plain, path)
    load_full_network(reordered, path, reorder=True)
    _close(_largest_logits(reordered, x), _largest_logits(plain, x))
    # Block blocks.13 (stage 3, block 3): its first k mid channels are the k most important ones.
    conv2, conv1 = state["blocks.13.conv2.weight"], state["blocks.13.conv1.weight"]
    importance = np.abs(conv2).sum(axis=(0, 2, 3))
    top = np.argsort(-importance, kind="stable")[:176]  # the narrowest stage-3 mid width
    got = reordered.state_dict()
    np.testing.assert_array_equal(got["stages.2.2.conv1.weight"].numpy()[:176], conv1[top])
    np.testing.assert_array_equal(got["stages.2.2.bn1._mean"].numpy()[:176], state["blocks.13.bn1._mean"][top])
    np.testing.assert_array_equal(got["stages.2.2.conv2.weight"].numpy()[:, :176], conv2[:, top])
    # Only mid channels move: a stage's outputs (conv2's, bn2, the shortcut) keep their order.
    np.testing.assert_array_equal(got["stages.2.2.bn2.weight"].numpy(), state["blocks.13.bn2.weight"])
    assert set(reorder_mid_channels({k: v.numpy() for k, v in plain.state_dict().items()})) == set(plain.state_dict())

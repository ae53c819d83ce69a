"""Loading the organizers' resnet48.pdparams into the supernet, its refusals, and the baseline's reorder."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from track1.network.pretrained import (PretrainedError, load_full_network, organizer_name, read_full_network,
                                       reorder_mid_channels, write_organizer_file)
from track1.network.supernet import SuperNet
from track1.space import SearchSpace

from fakes import DEPTHS, STRIDES, organizers_file

SPACE = SearchSpace(width_mult=1.0, resolution=32, num_classes=1000)


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
     r"1 of its 253 tensors are not the supernet's \(blocks.1.downsample.0.weight\); it takes 252 tensors"),
    (lambda s: s.update({"blocks.24.fc.weight": np.zeros((512, 10), "float32")}),
     r"tensor blocks.24.fc.weight has shape \[512, 10\], the configured supernet .* expects \[512, 1000\]"),
])
def test_a_file_that_does_not_fit_is_refused_naming_the_tensors(released, tmp_path, change, message):
    state = dict(released[1])
    change(state)
    path = tmp_path / "bad.pdparams"
    paddle.save(state, str(path))
    with pytest.raises(PretrainedError, match=message):
        read_full_network(path, SuperNet(SPACE))


def test_an_unrelated_network_names_the_tensors_it_has_and_the_ones_expected(tmp_path):
    """A torchvision-style ResNet's names: the unexpected ones and the expected ones, a few of each
    with their counts, in both naming schemes."""
    path = tmp_path / "resnet18.pdparams"
    paddle.save({"conv1.weight": np.zeros((64, 3, 7, 7), "float32"), "bn1.weight": np.ones(64, "float32"),
                 "layer1.0.conv1.weight": np.zeros((64, 64, 3, 3), "float32"),
                 "layer1.0.bn1.weight": np.ones(64, "float32"), "fc.weight": np.zeros((512, 1000), "float32")},
                str(path))
    with pytest.raises(PretrainedError) as refused:
        read_full_network(path, SuperNet(SPACE))
    assert str(refused.value) == (
        f"{path}: 4 of its 5 tensors are not the supernet's (conv1.weight, bn1.weight, layer1.0.conv1.weight, "
        f"... 1 more); it takes 252 tensors, in the organizers' names (blocks.0.conv.weight, blocks.0.bn.weight, "
        f"blocks.0.bn.bias, ... 249 more) or the project's (stem_conv.weight, stem_bn.weight, stem_bn.bias, "
        f"... 249 more)")


def test_truncated_text_empty_and_foreign_files_each_say_what_they_are(released, tmp_path):
    whole = released[0].read_bytes()
    files = {"truncated": whole[:len(whole) // 3], "text": "resnet48.pdparams\nsee the competition page\n".encode(),
             "empty": b"", "zip": b"PK\x03\x04" + bytes(200), "binary": bytes(range(256)) * 4}
    said = {}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(PretrainedError) as refused:
            read_full_network(tmp_path / name, SuperNet(SPACE))
        said[name] = str(refused.value).split(": ", 1)[1]
    assert said == {
        "truncated": f"a Paddle file that does not load to its end ({len(whole) // 3:,} bytes, ValueError): "
                     "truncated or damaged, copy or download it again",
        "text": "a text file, not a Paddle state dict (it begins 'resnet48.pdparams')",
        "empty": "an empty file, not a Paddle state dict",
        "zip": "a zip archive (PyTorch's format?), not a Paddle state dict",
        "binary": "not a Paddle state dict (1,024 bytes, ValueError)"}


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

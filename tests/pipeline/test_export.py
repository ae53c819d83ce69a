"""`export`: exported networks equal the supernet's calibrated subnets (eager, jit.load, Paddle Inference), score the
score log's top-1, load into the baseline's layout, refuse bad input; standalone from inherited weights."""
import json
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from track1.data import calibration_batches, validation_batches
from track1.errors import UserError
from track1.files import read_jsonl
from track1.network.resnet import ResNet
from track1.network.supernet import SuperNet
from track1.pipeline import export as ex
from track1.pipeline import runs
from track1.pipeline.cli import main
from track1.pipeline.config import load_config
from track1.ranking.evaluate import calibrate_bn, evaluate_batches
from track1.ranking.submission import demo_arch_list, write_arch_list, write_submission
from track1.space import SearchSpace, make_divisible, parse, tied

from conftest import REPO

SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)


def _overrides(tmp_path, *more):
    return [f"run.output_dir={tmp_path / 'out'}", "run.name=tiny", "space.width_mult=0.125",
            "data.train_size=256", "data.batch_size=32", f"data.root={REPO / 'data' / 'fashion-mnist'}",
            "train.epochs=1", "train.max_steps=3", "train.eval_images=64", "score.calib_images=64",
            "score.calib_batch=32", "score.val_images=200", "score.eval_batch=100",
            f"submit.dir={tmp_path / 'submit'}", *more]


def _argv(tmp_path, *more):
    return [a for o in _overrides(tmp_path, *more) for a in ("-o", o)]


def _close(got, want, scale=1e-5):
    """Equal to float rounding: |got - want| <= scale times the largest logit."""
    np.testing.assert_allclose(got, want, rtol=0, atol=scale * np.abs(want).max())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A supernet trained 3 steps, a list of 4 codes scored in tree and per_code mode, and a submission."""
    from track1.pipeline.train import train
    tmp = tmp_path_factory.mktemp("export")
    cfg = load_config(None, _overrides(tmp))
    train(cfg, progress=False)
    listed = tmp / "list.json"
    codes = demo_arch_list(4, 3, SPACE)
    write_arch_list(listed, codes)
    for mode in ("tree", "per_code"):
        runs.score(load_config(None, _overrides(tmp, f"score.mode={mode}")), str(listed), None, (0, 1))
    runs.submit(cfg, str(listed), None, None)
    return tmp, listed, codes


@pytest.mark.parametrize("mode", ["tree", "per_code"])
def test_exported_networks_score_what_the_score_log_says(run, capsys, mode):
    tmp, listed, codes = run
    assert main(["export", *_argv(tmp, f"score.mode={mode}"), "--arch-list", str(listed), "--force"]) == 0
    cfg = load_config(None, _overrides(tmp, f"score.mode={mode}"))
    val = validation_batches(cfg)
    accs = set()
    for code in codes.values():
        out = ex.export_dir(cfg, code)
        assert sorted(os.listdir(out)) == ["export.json", "inference.json", "inference.pdiparams", "model.pdparams"]
        info = json.loads((out / "export.json").read_text())
        logged = info["score"]
        assert logged["log"].endswith(".jsonl") and logged["images"] == 200 and mode == _mode_of(logged["log"])
        # The written weights, read back into a fresh network, score exactly the logged top-1.
        net = ResNet(SPACE.widths(code), SPACE, conv=cfg["train"]["conv"])  # score's kernels
        ex.load_exported(net, out / "model.pdparams")
        net.eval()
        acc, loss = evaluate_batches(net, val)
        assert acc == logged["acc"] == info["exported"]["acc"]
        assert loss == pytest.approx(logged["loss"], rel=1e-4)
        accs.add(acc)
        state = paddle.load(str(out / "model.pdparams"))
        trainable = sum(int(np.size(v)) for k, v in state.items() if not k.endswith(("_mean", "_variance")))
        assert info["params"] == trainable == SPACE.params(code) and info["macs"] == SPACE.flops(code)
        assert info["config_hash"] == json.loads((tmp / "out" / "tiny" / "checkpoints" / "latest.json")
                                                 .read_text())["config_hash"]
        assert info["calibration"]["images"] == 64 and info["calibration"]["first_momenta"] == [0.0, 0.5, 2 / 3]
    assert len(accs) > 1  # the codes differ: the check would notice a mix-up
    assert not list((tmp / "out" / "tiny" / "export").glob(".*"))  # no temporary directory left


def _mode_of(log: str) -> str:
    return json.loads(open(log[:-len(".jsonl")] + ".settings.json").read())["score"]["mode"]


def test_exported_logits_equal_the_calibrated_subnet_eager_jit_and_paddle_inference(run):
    tmp, listed, codes = run
    cfg = load_config(None, _overrides(tmp, "score.mode=per_code"))
    code = list(codes.values())[1]
    out = ex.export_dir(cfg, code)
    if not out.exists():
        assert main(["export", *_argv(tmp, "score.mode=per_code"), "--code", code]) == 0
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype("float32"))
    # The supernet's subnet after score's calibration (the reference).
    space, model = runs.load_supernet(cfg, runs.find_checkpoint(cfg, None))
    widths = space.widths(code)
    calibrate_bn(model, widths, calibration_batches(cfg))
    with paddle.no_grad():
        want = model(x, widths).numpy()
        eager = ResNet(widths, space, conv=cfg["train"]["conv"])  # the supernet's kernels: the same numbers
        ex.load_exported(eager, out / "model.pdparams")
        eager.eval()
        np.testing.assert_array_equal(eager(x).numpy(), want)
        stock = ResNet(widths, space, conv="stock")  # Paddle's kernels, as traced: float rounding apart
        ex.load_exported(stock, out / "model.pdparams")
        stock.eval()
        plain = stock(x).numpy()
        _close(plain, want, 1e-4)
        loaded = paddle.jit.load(str(out / "inference"))
        loaded.eval()
        _close(loaded(x).numpy(), plain, 1e-6)
    config = paddle.inference.Config(str(out / "inference.json"), str(out / "inference.pdiparams"))
    config.disable_gpu()
    predictor = paddle.inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.copy_from_cpu(x.numpy())
    predictor.run()
    _close(predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu(), plain, 1e-5)


# The baseline's stand-alone network of a code (model.py Model(arch) of xiteng01/CVPR_2022_Track1_demo), written
# here from its structure: blocks.0 the stem, then one block per used block numbered consecutively, with widths
# make_divisible(base * ratio, 8), a 1x1 `downsample` where the stride or the width changes, then the head.
BASE, RATIO, STRIDES = (64, 128, 256, 512), {1: 1.0, 2: .95, 3: .9, 4: .85, 5: .8, 6: .75, 7: .7}, (1, 2, 2, 2)


def baseline_shapes(code: str, classes: int = 1000) -> dict[str, tuple]:
    arch, shapes = parse(code), {}

    def bn(name, c):
        shapes.update({f"{name}.{t}": (c,) for t in ("weight", "bias", "_mean", "_variance")})

    c_in = make_divisible(64 * RATIO[arch.stem_ratio], 8)
    shapes["blocks.0.conv.weight"] = (c_in, 3, 7, 7)
    bn("blocks.0.bn", c_in)
    i = 1
    for stage, pairs in enumerate(arch.blocks):
        for b, (m, o) in enumerate(pairs):
            mid, out = make_divisible(BASE[stage] * RATIO[m], 8), make_divisible(BASE[stage] * RATIO[o], 8)
            shapes[f"blocks.{i}.conv1.weight"], shapes[f"blocks.{i}.conv2.weight"] = (mid, c_in, 3, 3), (out, mid, 3, 3)
            bn(f"blocks.{i}.bn1", mid)
            bn(f"blocks.{i}.bn2", out)
            if (STRIDES[stage] if b == 0 else 1) != 1 or c_in != out:
                shapes[f"blocks.{i}.downsample.0.weight"] = (out, c_in, 1, 1)
                bn(f"blocks.{i}.downsample.1", out)
            c_in, i = out, i + 1
    shapes[f"blocks.{i}.fc.weight"], shapes[f"blocks.{i}.fc.bias"] = (c_in, classes), (classes,)
    return shapes


def baseline_forward(state: dict, code: str, x: paddle.Tensor) -> paddle.Tensor:
    """model.py's Model(code) in eval mode, with functional ops on the state dict."""
    t = {k: paddle.to_tensor(np.asarray(v)) for k, v in state.items()}

    def bn(name, y):
        return F.batch_norm(y, t[f"{name}._mean"], t[f"{name}._variance"], t[f"{name}.weight"], t[f"{name}.bias"],
                            training=False, epsilon=1e-5)

    y = F.max_pool2d(F.relu(bn("blocks.0.bn", F.conv2d(x, t["blocks.0.conv.weight"], stride=2, padding=3))), 3, 2, 1)
    i = 1
    for stage, depth in enumerate(parse(code).depths):
        for b in range(depth):
            s = STRIDES[stage] if b == 0 else 1
            out = F.relu(bn(f"blocks.{i}.bn1", F.conv2d(y, t[f"blocks.{i}.conv1.weight"], stride=s, padding=1)))
            out = bn(f"blocks.{i}.bn2", F.conv2d(out, t[f"blocks.{i}.conv2.weight"], padding=1))
            if f"blocks.{i}.downsample.0.weight" in t:
                y = bn(f"blocks.{i}.downsample.1", F.conv2d(y, t[f"blocks.{i}.downsample.0.weight"], stride=s))
            y, i = F.relu(out + y), i + 1
    return paddle.matmul(F.adaptive_avg_pool2d(y, 1).flatten(1), t[f"blocks.{i}.fc.weight"]) + t[f"blocks.{i}.fc.bias"]


@pytest.mark.parametrize("code", [tied((2, 5, 3, 4), (2, 1, 3, 5), ((1, 3), (2, 1, 3, 1, 2), (5, 4, 1), (7, 6, 1, 2))).code,
                                  SearchSpace().largest().code])
def test_a_width_1_export_has_the_baseline_names_and_shapes_and_computes_its_network(code):
    space = SearchSpace(width_mult=1.0, resolution=32, num_classes=1000)
    paddle.seed(0)
    model = SuperNet(space)
    rng = np.random.default_rng(1)
    calib = [paddle.to_tensor(rng.normal(size=(8, 3, 32, 32)).astype("float32")) for _ in range(2)]
    net = ex.exported_network(model, space.widths(code), calib)
    state, naming = ex.named_state(net, "relu")
    assert naming == "organizers"
    assert {k: tuple(v.shape) for k, v in state.items()} == baseline_shapes(code)
    if code == SearchSpace().largest().code:
        assert "blocks.24.fc.weight" in state and len(state) == 252  # resnet48's own file layout
    x = paddle.to_tensor(rng.normal(size=(2, 3, 32, 32)).astype("float32"))
    with paddle.no_grad():
        want = net(x).numpy()
        _close(baseline_forward(state, code, x).numpy(), want)
        back = ResNet(space.widths(code), space)
        ex.load_exported(back, _saved(state))
        back.eval()
        np.testing.assert_array_equal(back(x).numpy(), want)  # the same weights: bit for bit


def _saved(state):
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "model.pdparams")
    paddle.save(state, path)
    return path


def test_load_exported_refuses_a_file_of_another_network(tmp_path):
    code_a, code_b = demo_arch_list(2, 7, SPACE).values()
    state, _ = ex.named_state(ResNet(SPACE.widths(code_a), SPACE), "relu")
    with pytest.raises(ex.ExportError, match="does not fit the network of these widths"):
        ex.load_exported(ResNet(SPACE.widths(code_b), SPACE), _saved(state))
    with pytest.raises(UserError, match="exported weights not found"):
        ex.load_exported(ResNet(SPACE.widths(code_a), SPACE), tmp_path / "none.pdparams")
    (tmp_path / "text.pdparams").write_text("not weights")  # what the file is instead, as train.init_from says
    with pytest.raises(UserError, match="a text file, not a Paddle state dict"):
        ex.load_exported(ResNet(SPACE.widths(code_a), SPACE), tmp_path / "text.pdparams")


def test_a_submission_gives_its_best_codes_and_top_is_checked(tmp_path):
    cfg = load_config(None, _overrides(tmp_path))
    codes = demo_arch_list(5, 4, SPACE)
    sub = tmp_path / "sub.json"
    accs = dict(zip(codes, [0.2, 0.9, 0.5, 0.9, 0.1]))
    write_submission(sub, codes, accs)
    best = ex.select_codes(cfg, submission=str(sub), top=3)
    assert best == [codes["arch2"], codes["arch4"], codes["arch3"]]  # ties keep list order
    assert ex.select_codes(cfg, arch_list=str(sub), top=2) == [codes["arch1"], codes["arch2"]]
    with pytest.raises(ex.ExportError, match="--top 6: .* holds only 5 distinct codes"):
        ex.select_codes(cfg, submission=str(sub), top=6)
    assert ex.select_codes(cfg) == []  # export.top_k 0: run.sh's stage is off
    with pytest.raises(ex.ExportError, match="--top K"):
        ex.select_codes(cfg, submission=str(sub))


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys):
    tmp, listed, codes = run
    code = list(codes.values())[0]
    outside = code[:5] + ("3" if code[5] != "3" else "2") + code[6:]  # the stem no longer equals stage 1's output
    rc, err = _err(capsys, ["export", *_argv(tmp), "--code", outside])
    assert rc == 2 and len(err) == 1 and "outside the official sub-space" in err[0]
    rc, err = _err(capsys, ["export", *_argv(tmp_path), "--code", code])  # a run that never trained
    assert rc == 2 and len(err) == 1 and "no checkpoint; run `train` first" in err[0]
    rc, err = _err(capsys, ["export", *_argv(tmp), "--arch-list", str(listed), "--top", "5"])
    assert rc == 2 and len(err) == 1 and "--top 5" in err[0]
    assert main(["export", *_argv(tmp), "--code", code, "--force"]) == 0
    before = (ex.export_dir(load_config(None, _overrides(tmp)), code) / "export.json").stat().st_mtime_ns
    rc, err = _err(capsys, ["export", *_argv(tmp), "--code", code])
    assert rc == 2 and len(err) == 1 and "already exported; pass --force" in err[0]
    assert (ex.export_dir(load_config(None, _overrides(tmp)), code) / "export.json").stat().st_mtime_ns == before


def test_standalone_fine_tunes_the_exported_networks(run, capsys):
    from track1.pipeline import standalone
    tmp, listed, codes = run
    st = ["standalone.epochs=1", "standalone.train_size=32", "standalone.batch_size=32",
          "standalone.val_images=64", "standalone.seeds=[0]", "standalone.num_codes=0", "standalone.visualdl=false"]
    inherited = load_config(None, _overrides(tmp, *st, "standalone.init_from=export"))
    code = list(codes.values())[2]
    if not ex.export_dir(inherited, code).exists():
        assert main(["export", *_argv(tmp), "--code", code]) == 0
    _, net = standalone.build_network(inherited, code, seed=0)
    saved = paddle.load(str(ex.export_dir(inherited, code) / "model.pdparams"))
    from track1.network.pretrained import organizer_name
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), np.asarray(saved[organizer_name(k, net.widths.depths)]))
    # The command: every listed code fine-tuned (missing exports made first), in a file that says so.
    assert main(["standalone", *_argv(tmp, *st, "standalone.init_from=export"), "--arch-list", str(listed)]) == 0
    (truth,) = (tmp / "out" / "standalone").glob("list@*.inherited.json")
    records = list(read_jsonl(truth.with_suffix(".jsonl")))
    assert len(records) == len(codes)
    scratch = load_config(None, _overrides(tmp, *st))
    assert records[0]["recipe"] == standalone.recipe_hash(inherited, ex.inherited_source(inherited, codes.values()))
    assert records[0]["recipe"] != standalone.recipe_hash(scratch)
    assert all(r["init"]["config_hash"] == json.loads((ex.export_dir(inherited, r["code"]) / "export.json")
                                                      .read_text())["config_hash"] for r in records)
    # evaluate takes the inherited ground truth like any other
    assert main(["evaluate", "--pred", str(tmp / "submit" / "tiny.json"), "--truth", str(truth),
                 "--resamples", "50"]) == 0
    assert "kendall" in capsys.readouterr().out

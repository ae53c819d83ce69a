import contextlib

import numpy as np
import paddle
import pytest

import track1.methods.ranking as ranking_mod
import track1.methods.step as step_mod
from track1.methods.base import RunContext
from track1.methods.ranking import RankingDistillation
from track1.methods.step import plan_subnets, read_scalars, train_step
from track1.network.build import build_supernet
from track1.network.precision import Precision, fp32
from track1.pipeline.config import ConfigError, load_config

from conftest import tiny_config


class Recording(Precision):
    """bf16 autocast as a GPU would run it: the model's logits come out in bfloat16 (Paddle's
    autocast does nothing on CPU, so the cast is simulated at the model's output)."""

    def __init__(self):
        super().__init__("bf16")
        self.inside, self.backwards = False, 0

    @contextlib.contextmanager
    def autocast(self):
        self.inside = True
        yield
        self.inside = False

    def backward(self, loss):
        self.backwards += 1
        assert loss.dtype == paddle.float32
        super().backward(loss)


def _step_inputs(tmp_path):
    cfg = tiny_config(tmp_path, "train.ranking.enabled=true", "train.ranking.threshold=20",
                      "train.ranking.margin=10")
    space, model = build_supernet(cfg)
    x = paddle.randn([8, 3, 32, 32])
    y = paddle.to_tensor(np.arange(8) % 10, dtype="int64")
    ranking = RankingDistillation(cfg, RunContext(space, 8, 16))
    ranking.lam = 1.0
    return cfg, space, model, x, y, plan_subnets(cfg, [ranking], 0), ranking


def test_bf16_forward_is_autocast_and_every_loss_is_computed_in_fp32(tmp_path, monkeypatch):
    cfg, space, model, x, y, subnets, ranking = _step_inputs(tmp_path)
    precision = Recording()
    forwards_inside = []

    def bf16_model(inp, widths):
        forwards_inside.append(precision.inside)
        return [o.astype("bfloat16") for o in model(inp, widths)]

    seen = []
    for module, name in ((step_mod, "label_loss"), (step_mod, "soft_cross_entropy"), (ranking_mod, "label_loss")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda logits, *a, _real=real, **k: (
            seen.append(logits.dtype), _real(logits, *a, **k))[1])
    scalars = train_step(bf16_model, space, subnets, x, y, [ranking], precision=precision)
    assert forwards_inside == [True] and precision.backwards == 1
    assert len(seen) >= 6 and set(seen) == {paddle.float32}  # 6 subnet losses + the pairs' label losses
    assert np.isfinite(scalars["loss/total"]) and scalars["rank/loss"] > 0
    assert model.stem_conv.weight.grad is not None and model.stem_conv.weight.grad.dtype == paddle.float32
    assert all(b.dtype == paddle.float32 for bn in model.bn_layers() for b in (bn._mean, bn._variance))


def test_modes_configure_paddle_autocast_and_loss_scaling(monkeypatch):
    calls = []
    monkeypatch.setattr(paddle.amp, "auto_cast", lambda **k: calls.append(k) or contextlib.nullcontext())
    for mode, dtype in (("bf16", "bfloat16"), ("fp16", "float16")):
        with Precision(mode).autocast():
            pass
        assert calls[-1] == {"enable": True, "level": "O1", "dtype": dtype}
    with Precision("off").autocast():
        pass
    assert len(calls) == 2  # off: no autocast region at all
    assert Precision("bf16").scaler is None and Precision("fp16").scaler is not None
    with pytest.raises(ConfigError, match="train.amp: 'fp8' is not one of off, bf16, fp16"):
        load_config(None, ["train.amp=fp8"])
    t = paddle.ones([2], dtype="bfloat16")
    assert fp32(t).dtype == paddle.float32 and fp32(fp32(t)) is not t


def test_fp16_step_goes_through_the_grad_scaler(monkeypatch):
    p = Precision("fp16")
    calls = []
    monkeypatch.setattr(p.scaler, "scale", lambda loss: calls.append("scale") or loss * 8)
    monkeypatch.setattr(p.scaler, "step", lambda opt: calls.append("step"))
    monkeypatch.setattr(p.scaler, "update", lambda: calls.append("update"))
    w = paddle.create_parameter([1], "float32")
    p.backward((w * 1.0).sum())
    p.step(None)
    assert calls == ["scale", "step", "update"] and w.grad.item() == 8.0


def test_step_without_reading_keeps_scalars_on_the_device_with_the_same_values(tmp_path):
    values = []
    for read in (True, False):
        cfg, space, model, x, y, subnets, ranking = _step_inputs(tmp_path)
        values.append(train_step(model, space, subnets, x, y, [ranking], read=read))
    assert isinstance(values[1]["loss/total"], paddle.Tensor) and isinstance(values[1]["rank/agree"], paddle.Tensor)
    assert read_scalars(values[1]) == values[0]

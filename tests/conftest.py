"""Shared test fixtures: the official list (read from ../shared, never copied) and tiny configs."""
import functools
from pathlib import Path

import pytest

from track1.pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_LIST = REPO.parent / "shared" / "data" / "CVPR_2022_NAS_Track1_test.json"


@pytest.fixture(scope="session")
def official_codes() -> list[str]:
    import json
    if not OFFICIAL_LIST.exists():
        pytest.skip(f"{OFFICIAL_LIST} not present")
    return [v["arch"] for v in json.loads(OFFICIAL_LIST.read_text()).values()]


def tiny_config(tmp_path: Path, *overrides: str) -> dict:
    """A config that trains in seconds: 256 images, width 0.125, 8 steps an epoch."""
    return load_config(None, [
        f"run.output_dir={tmp_path}", "run.name=tiny", "space.width_mult=0.125",
        "data.train_size=256", "data.batch_size=32", "data.root=" + str(REPO / "data" / "fashion-mnist"),
        "train.epochs=2", "train.log_every=2", "train.save_every_steps=3", "train.eval_images=64",
        "score.calib_images=64", "score.calib_batch=32", "score.val_images=64", "score.eval_batch=64",
        *overrides])


# oneDNN (track1.network.onednn): a test that asserts the fast conv runs through it is marked
# needs_onednn, one that asserts its JIT (not reference) kernels needs_jit; they skip, with the
# reason, where it cannot (a wheel without libdnnl, as on macOS or ARM; a CPU oneDNN has no JIT
# kernels for), rather than fail.
def pytest_configure(config):
    config.addinivalue_line("markers", "needs_onednn: skip unless track1.network.onednn loads")
    config.addinivalue_line("markers", "needs_jit: skip unless oneDNN convolves with JIT kernels")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in ("needs_onednn", "needs_jit"):
            if item.get_closest_marker(marker) is not None:
                reason = _onednn_missing(jit=marker == "needs_jit")
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))
                    break


@functools.lru_cache(maxsize=None)
def _onednn_missing(jit: bool) -> str | None:
    """Why oneDNN (jit: its JIT kernels) cannot run here, or None. The JIT probe: a small conv's
    three primitives, which picks reference kernels ('ref:...') where no JIT kernel fits the CPU."""
    from track1.network import onednn
    if not onednn.available():
        return f"oneDNN unavailable: {onednn.why_unavailable()}"
    if not jit:
        return None
    import paddle
    x, w = paddle.ones([2, 16, 8, 8]), paddle.ones([16, 16, 3, 3])
    try:
        plan = onednn.ConvPlan(onednn._library(), x.shape, w.shape, 1, 1, True)
        dy = plan.forward(x, w)
        plan.backward_data(dy, w), plan.backward_weights(x, dy)
    except onednn.OneDNNError as e:
        return f"oneDNN fails on a probe conv: {e}"
    names = plan.impl_names()
    if any("ref" in name for name in names):
        return f"oneDNN runs reference kernels on this CPU ({', '.join(names)})"
    return None


def onednn_fails_for(monkeypatch, plan_class: str, x_shape, stage: str) -> list:
    """Make track1.network.onednn's `plan_class` (ConvPlan, ConvBNPlan: what builds a cached plan)
    raise OneDNNError for inputs of x_shape, when built (stage 'build') or when its forward runs
    ('forward'), with empty plan cache and failed-shape set; the list it returns grows by one per
    attempt on x_shape."""
    from track1.network import conv, onednn
    real, attempts = getattr(onednn, plan_class), []

    def build(lib, x, *args):
        if list(x) != list(x_shape):
            return real(lib, x, *args)
        attempts.append(stage)
        if stage == "build":
            raise onednn.OneDNNError("dnnl_convolution_forward_primitive_desc_create failed with "
                                     "oneDNN status 3")
        plan = real(lib, x, *args)

        def forward(*_):
            raise onednn.OneDNNError("dnnl_primitive_execute failed with oneDNN status 5")
        plan.forward = forward
        return plan
    monkeypatch.setattr(onednn, plan_class, build)
    monkeypatch.setattr(onednn, "_PLANS", type(onednn._PLANS)())
    monkeypatch.setattr(conv, "_failed", set())
    return attempts

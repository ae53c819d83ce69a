"""Shared test fixtures: the official list (read from ../shared, never copied) and tiny configs."""
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

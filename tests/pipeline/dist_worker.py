"""Run by test_distributed.py under paddle.distributed.launch (2 CPU processes, gloo).

argv: OUT_DIR then config overrides. Trains a few steps (train() itself refuses to save if the
ranks' weights differ), then checks that the agreement check does catch a perturbed rank.
"""
import sys
from pathlib import Path

import paddle

from track1.pipeline.config import load_config
from track1.network.build import build_supernet
from track1.pipeline.train import check_ranks_agree, train

out, overrides = Path(sys.argv[1]), sys.argv[2:]
cfg = load_config(None, overrides)
train(cfg, progress=False)
rank = paddle.distributed.get_rank()
(out / f"trained.{rank}").write_text("ok")

_, model = build_supernet(cfg)
if rank == 1:
    w = model.stem_conv.weight
    w.set_value(w + 1e-3)
try:
    check_ranks_agree(model)
except RuntimeError:
    (out / f"drift_caught.{rank}").write_text("ok")

"""File entry point for `python -m paddle.distributed.launch`, which runs scripts, not modules.

    python -m paddle.distributed.launch --nproc_per_node 8 tools/launch.py train -c configs/imagenet.yaml
is the same as `python -m track1 train ...` in every process of the launch.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from track1.pipeline.cli import main  # noqa: E402

sys.exit(main())

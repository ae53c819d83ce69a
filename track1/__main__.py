"""Entry point of `python -m track1`."""
import sys

from track1.pipeline.cli import main


sys.exit(main())

"""Entry point of `python -m track1`."""
import sys

from .cli import main

sys.exit(main())

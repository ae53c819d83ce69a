"""Importing the package: Paddle's "No ccache found" notice is filtered once, in track1/__init__.py."""
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("module", ["track1.network.supernet", "track1.pipeline.cli", "track1.pipeline.train"])
def test_importing_the_library_prints_nothing(module):
    """A library user or a notebook imports a module (Paddle with it): stderr stays empty, and the
    filter is the narrow one (another UserWarning still shows)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    code = f"import {module}, paddle, warnings; warnings.warn('still shown', UserWarning)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ccache" not in done.stderr
    assert done.stderr == "<string>:1: UserWarning: still shown\n"

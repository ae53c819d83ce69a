"""What every data reader shares: DataError and the process cache keyed by a file's identity."""
from __future__ import annotations

from pathlib import Path

from track1.errors import UserError


class DataError(UserError):
    """Data that is missing or unusable; the message names the file or directory and the problem."""


# Parsed datasets, listings and evaluation images, so loading twice in one process is free.
CACHE: dict = {}


def stat_key(path: Path) -> tuple:
    """A file's identity for CACHE: an edited or replaced file is read again."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)

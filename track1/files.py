"""Crash-safe file output: atomic replace for whole files, fsync'd appends for result logs, and the short
digest of settings that names a run's files."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from track1.errors import UserError


class ResultLogError(UserError, ValueError):
    """A result log that belongs to another run or list, or is damaged beyond its last line."""


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename over path, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it an ordinary file's mode
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def append_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Append records, one JSON object a line, and flush them to disk before returning."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Records of a log written by append_jsonl; a torn last line (killed mid-write) is dropped."""
    if not os.path.exists(path):
        return
    with open(path, "r", encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                return
            raise ResultLogError(f"{path}: line {i + 1} is not valid JSON") from None


def repair_jsonl(path: str | os.PathLike) -> None:
    """Cut a torn last line so that later appends start on a fresh line."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        write_text(path, keep.decode("utf-8"))


def resume_log(path: str | os.PathLike, codes: Mapping[str, str],
               setting: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """key -> record of a per-key JSONL result log that a run resumes from (torn last line cut).

    A log that belongs to another run is refused with a one-line ValueError: a record whose
    `setting` fields differ, or that gives a key of `codes` another code (two lists whose files
    share a name, say) would otherwise be taken for this run's result.
    """
    repair_jsonl(path)
    done: dict[str, dict] = {}
    for rec in read_jsonl(path):
        if setting:
            found = {k: rec.get(k) for k in setting}
            if found != dict(setting):
                raise ResultLogError(f"{path}: holds scores for {found}, not {dict(setting)}; "
                                 "use another output file")
        key = rec["key"]
        if key in codes and codes[key] != rec["code"]:
            raise ResultLogError(f"{path}: key {key!r} was scored for code {rec['code']}, but the list "
                             f"gives {codes[key]}; use another output file")
        done[key] = rec
    return done


def digest(obj: Any, length: int) -> str:
    """The first `length` hex digits of the sha256 of obj as sorted JSON: the key of a settings dict
    in file names (score logs, teacher caches, stand-alone logs) and in checkpoints."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]

"""Architecture lists and submissions: the official JSON shape, demo lists, writing, validating and merging.

An architecture list and a submission share one shape:
    {"arch1": {"acc": 0.0, "arch": "<52-char code>"}, "arch2": {...}, ...}
A list carries acc 0.0; a submission has the same keys, codes and order, only acc filled in.
Every problem raises SubmissionError with a one-line message that names the file and the first
offending keys, so a bad file fails before a long scoring run, not after it.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from track1 import files
from track1.errors import UserError
from track1.space import CodeError, SearchSpace, official_problem, parse


MAX_NAMED_KEYS = 5  # how many offending keys a message names before it only counts the rest
ENTRY_SHAPE = '{"acc": number, "arch": string}'


class SubmissionError(UserError, ValueError):
    """An architecture list, submission or result shard that cannot be used (one-line message)."""


class _DuplicateKeys(Exception):
    def __init__(self, keys: list[str]):
        super().__init__()
        self.keys = keys


# -- formatting -----------------------------------------------------------------------------------
def _name(key: Any) -> str:
    # Keys come from untrusted JSON: quote anything that could break the one-line message.
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key:
        return key
    return repr(key)


def some_keys(keys: Sequence[Any]) -> str:
    """'arch7, arch9' or 'arch1, ..., arch5 and 12 more'."""
    shown = ", ".join(_name(k) for k in keys[:MAX_NAMED_KEYS])
    rest = len(keys) - MAX_NAMED_KEYS
    return f"{shown} and {rest} more" if rest > 0 else shown


def count_phrase(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


# -- reading --------------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # the cheap test first; only dig for names when it fails
        seen: set[str] = set()
        dups = []
        for k, _ in pairs:
            if k in seen and k not in dups:
                dups.append(k)
            seen.add(k)
        raise _DuplicateKeys(dups)
    return obj


def read_json_object(path: str | os.PathLike) -> dict:
    """The top-level JSON object of a file, refusing duplicate keys at any level."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SubmissionError(f"{path}: file not found") from None
    except OSError as e:
        raise SubmissionError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise SubmissionError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} "
                              f"column {e.colno})") from None
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        raise SubmissionError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    except _DuplicateKeys as e:
        raise SubmissionError(f"{path}: {count_phrase(len(e.keys), 'duplicate key')}: "
                              f"{some_keys(e.keys)}") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path}: top level must be a JSON object, got "
                              f"{_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number", dict: "an object"}.get(type(value), "a value")


def load_arch_list(path: str | os.PathLike, official: bool = False) -> dict[str, str]:
    """key -> code of an official-format list, in file order; every code is checked by parse and,
    with official=True (what the supernet can score), against the official tied sub-space."""
    data = read_json_object(path)
    if not data:
        raise SubmissionError(f"{path}: the list has no entries")
    codes: dict[str, str] = {}
    bad_shape = []
    for key, entry in data.items():
        if isinstance(entry, dict) and isinstance(entry.get("arch"), str):
            codes[key] = entry["arch"]
        else:
            bad_shape.append(key)
    if bad_shape:
        raise SubmissionError(f"{path}: {count_phrase(len(bad_shape), 'entry', 'entries')} not an "
                              f"object with a string \"arch\": {some_keys(bad_shape)}")
    check_codes(path, codes)
    if official:
        check_official(path, codes)
    return codes


def check_official(path, codes: dict[str, str]) -> None:
    """Raise SubmissionError naming the keys whose codes lie outside the official sub-space."""
    problems = {k: p for k, p in ((k, official_problem(parse(c))) for k, c in codes.items()) if p}
    if problems:
        first = next(iter(problems))
        raise SubmissionError(
            f"{path}: {count_phrase(len(problems), 'code')} outside the official sub-space the "
            f"supernet holds: {some_keys(list(problems))} (first, {_name(first)}, code "
            f"{codes[first]}: {problems[first]})")


def check_codes(path, codes: dict[str, str]) -> None:
    """Raise SubmissionError naming the file and the keys whose codes do not parse."""
    bad_codes = []
    first_error = ""
    for key, code in codes.items():
        try:
            parse(code)
        except CodeError as e:
            if not bad_codes:
                first_error = str(e)
            bad_codes.append(key)
    if bad_codes:
        raise SubmissionError(f"{path}: {count_phrase(len(bad_codes), 'malformed code')}: "
                              f"{some_keys(bad_codes)} (first, {_name(bad_codes[0])}: {first_error})")


# -- demo lists and writing -----------------------------------------------------------------------
def demo_arch_list(n: int, seed: int, space: SearchSpace | None = None) -> dict[str, str]:
    """n distinct codes 'arch1'..'archN', drawn as the official list is distributed; same seed,
    same list."""
    if n < 1:
        raise ValueError(f"demo list needs at least 1 code, got n={n}")
    space = space or SearchSpace()
    rng = np.random.default_rng(seed)
    codes: dict[str, None] = {}  # a dict keeps draw order, so the list is deterministic
    for _ in range(100 * n + 1000):  # bound the loop in case a tiny custom space runs dry
        codes[space.sample(rng).code] = None
        if len(codes) == n:
            return {f"arch{i + 1}": c for i, c in enumerate(codes)}
    raise ValueError(f"could not draw {n} distinct codes from the space (got {len(codes)})")


def write_arch_list(path: str | os.PathLike, codes: dict[str, str]) -> None:
    """Write an official-format list (acc 0.0); codes are checked so the file always loads."""
    if not codes:
        raise SubmissionError(f"{path}: refusing to write an empty list")
    for key, code in codes.items():
        try:
            parse(code)
        except CodeError as e:
            raise SubmissionError(f"{path}: malformed code for {_name(key)}: {e}") from None
    files.write_json(path, {k: {"acc": 0.0, "arch": c} for k, c in codes.items()})


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_finite(value: numbers.Real) -> bool:
    # Integers are finite however large; math.isfinite would overflow converting them to float.
    return isinstance(value, numbers.Integral) or math.isfinite(value)


def write_submission(path: str | os.PathLike, arch_list: dict[str, str],
                     accs: dict[str, float]) -> None:
    """Write arch_list's keys, codes and order with acc filled in; refuses incomplete or bad
    accuracies. Atomic: a refusal or a crash leaves any existing file at path untouched."""
    if not arch_list:
        raise SubmissionError(f"{path}: refusing to write a submission for an empty list")
    missing = [k for k in arch_list if k not in accs]
    if missing:
        raise SubmissionError(f"{path}: {count_phrase(len(missing), 'key')} missing from the "
                              f"accuracies: {some_keys(missing)}")
    not_number = [k for k in arch_list if not _is_number(accs[k])]
    if not_number:
        raise SubmissionError(f"{path}: {count_phrase(len(not_number), 'accuracy', 'accuracies')} not a "
                              f"number: {some_keys(not_number)}")
    non_finite = [k for k in arch_list if not _is_finite(accs[k])]
    if non_finite:
        raise SubmissionError(f"{path}: {count_phrase(len(non_finite), 'accuracy', 'accuracies')} not "
                              f"finite: {some_keys(non_finite)}")
    # Same rule as validate_submission, so a file written here always validates.
    out_of_range = [k for k in arch_list if not 0 <= accs[k] <= 1]
    if out_of_range:
        raise SubmissionError(f"{path}: {count_phrase(len(out_of_range), 'accuracy', 'accuracies')} "
                              f"outside [0, 1]: {some_keys(out_of_range)}")
    files.write_json(path, {k: {"acc": float(accs[k]), "arch": c} for k, c in arch_list.items()})


def break_ties(accs: dict[str, float], losses: dict[str, float]) -> dict[str, float]:
    """Accuracies with ties ordered by evaluation loss (lower loss ranks higher).

    Top-1 on n images moves in steps of 1/n, so many codes share an accuracy. Within a group of
    equal accuracies the code of rank r by loss (0 = lowest) loses r/g of half the smallest gap
    between distinct accuracies (g = group size): every value stays within that half-gap of its
    accuracy, so the order of different accuracies never changes; only ties are resolved. A
    group closer to 0 than the half-gap (accuracy 0) is lifted instead, so values stay in [0, 1].
    """
    missing = [k for k in accs if not _is_number(losses.get(k)) or not _is_finite(losses[k])]
    if missing:
        raise SubmissionError(f"{count_phrase(len(missing), 'score')} without a finite loss to break ties "
                              f"with: {some_keys(missing)}")
    levels = sorted(set(accs.values()))
    gap = min((b - a for a, b in zip(levels, levels[1:])), default=1.0)
    half = min(gap, 1.0) / 2
    groups: dict[float, list[str]] = {}
    for k, acc in accs.items():
        groups.setdefault(acc, []).append(k)
    out = dict(accs)
    for acc, keys in groups.items():
        if len(keys) < 2:
            continue
        by_loss = sorted(keys, key=lambda k: losses[k])  # stable: equal losses keep list order
        for r, k in enumerate(by_loss):
            step = half * r / len(keys)
            out[k] = acc - step if acc >= half else acc + half * (len(keys) - 1 - r) / len(keys)
    return out


# -- validating -----------------------------------------------------------------------------------
def validate_submission(sub_path: str | os.PathLike, list_path: str | os.PathLike) -> int:
    """Check a submission against the architecture list it answers; returns its entry count."""
    ref = load_arch_list(list_path)
    sub = read_json_object(sub_path)

    bad_shape = [k for k, e in sub.items()
                 if not (isinstance(e, dict) and set(e) == {"acc", "arch"}
                         and isinstance(e["arch"], str))]
    if bad_shape:
        raise SubmissionError(f"{sub_path}: {count_phrase(len(bad_shape), 'entry', 'entries')} not "
                              f"in the official shape {ENTRY_SHAPE}: {some_keys(bad_shape)}")
    missing = [k for k in ref if k not in sub]
    if missing:
        raise SubmissionError(f"{sub_path}: {count_phrase(len(missing), 'key')} missing: "
                              f"{some_keys(missing)}")
    extra = [k for k in sub if k not in ref]
    if extra:
        raise SubmissionError(f"{sub_path}: {count_phrase(len(extra), 'extra key')} not in "
                              f"{list_path}: {some_keys(extra)}")
    misplaced = [k for k, r in zip(sub, ref) if k != r]
    if misplaced:
        first = list(sub).index(misplaced[0]) + 1
        raise SubmissionError(f"{sub_path}: keys in a different order from {list_path}, "
                              f"{len(misplaced)} out of place from position {first}: "
                              f"{some_keys(misplaced)}")
    changed = [k for k in ref if sub[k]["arch"] != ref[k]]
    if changed:
        raise SubmissionError(f"{sub_path}: {count_phrase(len(changed), 'code')} changed from "
                              f"{list_path}: {some_keys(changed)}")
    accs = [(k, sub[k]["acc"]) for k in ref]
    not_number = [k for k, a in accs if not _is_number(a)]
    if not_number:
        raise SubmissionError(f"{sub_path}: {count_phrase(len(not_number), 'acc')} not a number: "
                              f"{some_keys(not_number)}")
    non_finite = [k for k, a in accs if not _is_finite(a)]
    if non_finite:
        raise SubmissionError(f"{sub_path}: {count_phrase(len(non_finite), 'acc')} not finite: "
                              f"{some_keys(non_finite)}")
    out_of_range = [k for k, a in accs if not 0.0 <= a <= 1.0]
    if out_of_range:
        raise SubmissionError(f"{sub_path}: {count_phrase(len(out_of_range), 'acc')} outside [0, 1]: "
                              f"{some_keys(out_of_range)}")
    return len(sub)


# -- merging result shards ------------------------------------------------------------------------
def merge_shards(paths: Iterable[str | os.PathLike]) -> dict[str, dict]:
    """Union of the score logs (JSONL records with key, code and acc) of a list's shards, in path
    order. A key in several logs must have the same code and acc there: anything else means two
    runs were mixed."""
    merged: dict[str, dict] = {}
    source: dict[str, Path] = {}
    for path in map(Path, paths):
        records = list(files.read_jsonl(path))
        bad = [str(i + 1) for i, r in enumerate(records)
               if not isinstance(r, dict) or not {"key", "code", "acc"} <= r.keys()]
        if bad:
            raise SubmissionError(f"{path}: {count_phrase(len(bad), 'line')} not a record with key, code "
                                  f"and acc: {some_keys(bad)}")
        conflicts = [r["key"] for r in records if r["key"] in merged
                     and (merged[r["key"]]["code"], merged[r["key"]]["acc"]) != (r["code"], r["acc"])]
        if conflicts:
            raise SubmissionError(f"{path}: {count_phrase(len(conflicts), 'record')} conflict with "
                                  f"{source[conflicts[0]]}: {some_keys(conflicts)}")
        for r in records:
            merged.setdefault(r["key"], r)
            source.setdefault(r["key"], path)
    return merged

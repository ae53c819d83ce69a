"""Architecture lists and submissions: loading, demo lists, writing, validating, merging."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import OFFICIAL_LIST
from track1 import files
from track1.space import parse
from track1.ranking.submission import (SubmissionError, break_ties, demo_arch_list, load_arch_list, merge_shards,
                               validate_submission, write_arch_list, write_submission)

OFFICIAL = OFFICIAL_LIST
needs_official = pytest.mark.skipif(not OFFICIAL.exists(), reason="official list not available")

CODE_A = "1252233313000000223212122253130000000000006515000000"
CODE_B = "1447233323333300331313230025153545153545003252000000"


def _dump(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _raises(fn, *args, contains: list[str]) -> str:
    with pytest.raises(SubmissionError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for text in contains:
        assert text in msg, f"{text!r} not in {msg!r}"
    return msg


@pytest.fixture
def small(tmp_path):
    """A 6-entry list on disk and its codes."""
    codes = demo_arch_list(6, seed=3)
    path = tmp_path / "list.json"
    write_arch_list(path, codes)
    return path, codes


# -- the official list ----------------------------------------------------------------------------
@needs_official
def test_official_list_loads_in_order_round_trips_and_is_official():
    codes = load_arch_list(OFFICIAL, official=True)  # speed: benchmarks, not a timed test
    assert len(codes) == 45_000
    assert list(codes) == [f"arch{i}" for i in range(1, 45_001)]
    assert codes["arch1"] == CODE_A
    assert all(parse(c).code == c for c in codes.values())


@needs_official
def test_official_list_validates_as_a_submission_of_zeros():
    assert validate_submission(OFFICIAL, OFFICIAL) == 45_000


# -- load_arch_list errors ------------------------------------------------------------------------
def test_load_missing_file(tmp_path):
    _raises(load_arch_list, tmp_path / "nope.json", contains=["nope.json", "not found"])


def test_load_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"arch1": {"acc": 0.0, "arch": ', encoding="utf-8")
    _raises(load_arch_list, path, contains=["bad.json", "not valid JSON"])
    path.write_bytes(b"\xff\xfe\x00")
    _raises(load_arch_list, path, contains=["bad.json", "not valid JSON"])


def test_load_top_level_not_object(tmp_path):
    path = _dump(tmp_path / "arr.json", [{"acc": 0.0, "arch": CODE_A}])
    _raises(load_arch_list, path, contains=["arr.json", "JSON object", "array"])


def test_load_duplicate_keys(tmp_path):
    path = tmp_path / "dup.json"
    entry = json.dumps({"acc": 0.0, "arch": CODE_A})
    path.write_text(f'{{"arch1": {entry}, "arch2": {entry}, "arch1": {entry}}}', encoding="utf-8")
    _raises(load_arch_list, path, contains=["dup.json", "duplicate key", "arch1"])


def test_load_entry_without_string_arch(tmp_path):
    for bad in ([CODE_A], {"acc": 0.0}, {"acc": 0.0, "arch": 1252}, None):
        path = _dump(tmp_path / "shape.json", {"arch1": {"acc": 0.0, "arch": CODE_A}, "arch2": bad})
        _raises(load_arch_list, path, contains=["shape.json", "arch2", '"arch"'])


def test_load_malformed_code_names_key_and_problem(tmp_path):
    short = CODE_A[:-1]
    bad_pad = CODE_A[:-1] + "1"  # padding position carries a ratio code
    path = _dump(tmp_path / "codes.json", {"arch1": {"acc": 0.0, "arch": CODE_A},
                                           "arch2": {"acc": 0.0, "arch": short},
                                           "arch3": {"acc": 0.0, "arch": bad_pad}})
    msg = _raises(load_arch_list, path, contains=["codes.json", "2 malformed codes", "arch2, arch3",
                                                  "51 characters"])
    assert msg.count("arch1") == 0


def test_load_empty_list(tmp_path):
    _raises(load_arch_list, _dump(tmp_path / "empty.json", {}), contains=["empty.json", "no entries"])


def test_messages_name_at_most_five_keys(tmp_path):
    path = _dump(tmp_path / "many.json", {f"arch{i}": {"acc": 0.0} for i in range(1, 9)})
    msg = _raises(load_arch_list, path, contains=["8 entries", "arch1, arch2, arch3, arch4, arch5",
                                                  "3 more"])
    assert "arch6" not in msg


def test_odd_keys_do_not_break_the_one_line_message(tmp_path):
    path = _dump(tmp_path / "odd.json", {"line\nbreak": {"acc": 0.0}})
    _raises(load_arch_list, path, contains=["odd.json", repr("line\nbreak")])


# -- demo lists -----------------------------------------------------------------------------------
def test_demo_list_distinct_valid_deterministic():
    codes = demo_arch_list(300, seed=7)
    assert list(codes) == [f"arch{i}" for i in range(1, 301)]
    assert len(set(codes.values())) == 300
    assert codes == demo_arch_list(300, seed=7)
    assert codes != demo_arch_list(300, seed=8)
    allowed = ({1, 2, 3}, {1, 2, 3}, {1, 2, 3, 4, 5}, {1, 2, 3, 4, 5, 6, 7})
    seen_stage = [set(), set(), set(), set()]
    for code in codes.values():
        arch = parse(code)
        assert arch.code == code
        assert arch.stem_ratio in {1, 2, 3}
        for stage, pairs in enumerate(arch.blocks):
            for a, b in pairs:
                assert {a, b} <= allowed[stage], (code, stage)
                seen_stage[stage] |= {a, b}
    # 300 draws cover every allowed code: the sampler spans the official distribution.
    assert seen_stage == [set(s) for s in allowed]


def test_demo_list_rejects_empty():
    with pytest.raises(ValueError):
        demo_arch_list(0, seed=0)


def test_write_arch_list_round_trip_and_refusals(tmp_path):
    codes = demo_arch_list(5, seed=1)
    path = tmp_path / "l.json"
    write_arch_list(path, codes)
    raw = json.loads(path.read_text())
    assert all(e == {"acc": 0.0, "arch": codes[k]} for k, e in raw.items())
    assert load_arch_list(path) == codes
    assert list(load_arch_list(path)) == list(codes)
    _raises(write_arch_list, tmp_path / "e.json", {}, contains=["e.json", "empty"])
    _raises(write_arch_list, tmp_path / "m.json", {"arch1": "123"}, contains=["m.json", "arch1"])
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "m.json").exists()


# -- write_submission -----------------------------------------------------------------------------
def test_write_submission_round_trip_validates(small, tmp_path):
    list_path, codes = small
    accs = {k: np.float32(0.1 * i) for i, k in enumerate(reversed(list(codes)))}
    accs["unrelated"] = 0.5  # extra results are ignored, only the list's keys are written
    sub = tmp_path / "sub.json"
    write_submission(sub, codes, accs)
    raw = json.loads(sub.read_text())
    assert list(raw) == list(codes)
    for k, entry in raw.items():
        assert list(entry) == ["acc", "arch"]
        assert entry["arch"] == codes[k]
        assert type(entry["acc"]) is float
        assert entry["acc"] == pytest.approx(float(accs[k]))
    assert validate_submission(sub, list_path) == 6


def test_write_submission_refuses_missing_and_bad_values(small, tmp_path):
    _, codes = small
    keys = list(codes)
    sub = tmp_path / "sub.json"
    partial = {k: 0.5 for k in keys[:3]}
    _raises(write_submission, sub, codes, partial,
            contains=["sub.json", "3 keys missing", ", ".join(keys[3:])])
    for bad, what in ((float("nan"), "not finite"), (math.inf, "not finite"),
                      ("0.5", "not a number"), (None, "not a number"), (True, "not a number"),
                      (1.5, "outside [0, 1]"), (-0.1, "outside [0, 1]")):
        accs = {k: 0.5 for k in keys}
        accs[keys[4]] = bad
        _raises(write_submission, sub, codes, accs, contains=["sub.json", what, keys[4]])
    assert not sub.exists()


def test_write_submission_never_replaces_a_good_file_on_failure(small, tmp_path, monkeypatch):
    _, codes = small
    sub = tmp_path / "sub.json"
    write_submission(sub, codes, {k: 0.25 for k in codes})
    good = sub.read_bytes()

    # A refused submission leaves the old one alone.
    _raises(write_submission, sub, codes, {k: math.nan for k in codes}, contains=["sub.json"])
    assert sub.read_bytes() == good

    # A crash in the middle of writing (here: the disk fails at fsync, after the new content
    # went to the temporary file) leaves the old file and no stray temporary files.
    def failing_fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_submission(sub, codes, {k: 0.75 for k in codes})
    assert sub.read_bytes() == good

    # A writer that dies half-way through its output does the same.
    monkeypatch.undo()

    def dying_write_text(path, text):
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text[: len(text) // 2])
            raise KeyboardInterrupt
        files.atomic_write(path, write)
    monkeypatch.setattr(files, "write_text", dying_write_text)
    with pytest.raises(KeyboardInterrupt):
        write_submission(sub, codes, {k: 0.75 for k in codes})
    assert sub.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json", "sub.json"]


# -- validate_submission --------------------------------------------------------------------------
def _good_submission(codes: dict[str, str]) -> dict:
    return {k: {"acc": 0.5, "arch": c} for k, c in codes.items()}


def test_validate_catches_each_failure(small, tmp_path):
    list_path, codes = small
    keys = list(codes)
    sub = tmp_path / "sub.json"

    def check(obj, *contains):
        _dump(sub, obj)
        return _raises(validate_submission, sub, list_path, contains=["sub.json", *contains])

    assert validate_submission(_dump(sub, _good_submission(codes)), list_path) == 6

    # Not the official shape.
    check([1, 2], "JSON object")
    for bad_entry in (0.5, {"acc": 0.5}, {"acc": 0.5, "arch": codes[keys[2]], "flops": 1},
                      {"acc": 0.5, "arch": None}):
        obj = _good_submission(codes)
        obj[keys[2]] = bad_entry
        check(obj, "official shape", keys[2])

    # Missing, extra, reordered keys.
    obj = _good_submission(codes)
    del obj[keys[1]], obj[keys[4]]
    check(obj, "2 keys missing", f"{keys[1]}, {keys[4]}")
    obj = _good_submission(codes)
    obj["arch999"] = {"acc": 0.5, "arch": CODE_B}
    check(obj, "1 extra key", "arch999", "list.json")
    obj = _good_submission(codes)
    order = keys[:2] + [keys[3], keys[2]] + keys[4:]
    check({k: obj[k] for k in order}, "different order", "position 3", f"{keys[3]}, {keys[2]}")

    # Changed code (valid, but not the listed one).
    obj = _good_submission(codes)
    obj[keys[5]]["arch"] = CODE_B if codes[keys[5]] != CODE_B else CODE_A
    check(obj, "1 code changed", keys[5])

    # Bad accuracies: written as raw JSON text since json.dumps would refuse some of them.
    for raw_acc, what in (('"0.5"', "not a number"), ("null", "not a number"),
                          ("true", "not a number"), ("NaN", "not finite"),
                          ("Infinity", "not finite"), ("1.01", "outside [0, 1]"),
                          ("-1", "outside [0, 1]"), ("1" + "0" * 400, "outside [0, 1]")):
        parts = [f'"{k}": {{"acc": {raw_acc if k == keys[0] else "0.5"}, "arch": "{c}"}}'
                 for k, c in codes.items()]
        sub.write_text("{" + ", ".join(parts) + "}", encoding="utf-8")
        _raises(validate_submission, sub, list_path, contains=["sub.json", what, keys[0]])

    # Accuracies at the bounds, as integers, are fine.
    obj = _good_submission(codes)
    obj[keys[0]]["acc"], obj[keys[1]]["acc"] = 0, 1
    assert validate_submission(_dump(sub, obj), list_path) == 6


def test_validate_reports_a_bad_list_by_its_own_name(small, tmp_path):
    _, codes = small
    sub = _dump(tmp_path / "sub.json", _good_submission(codes))
    _raises(validate_submission, sub, tmp_path / "gone.json", contains=["gone.json", "not found"])
    _raises(validate_submission, tmp_path / "nosub.json", small[0], contains=["nosub.json"])


# -- merge_shards ---------------------------------------------------------------------------------
def _log(path: Path, records) -> Path:
    files.append_jsonl(path, records)
    return path


def test_merge_shards(tmp_path):
    r = {k: {"key": k, "code": f"c{k[-1]}", "acc": 0.1 * int(k[-1]), "seconds": 1.0}
         for k in ("arch1", "arch2", "arch3")}
    a = _log(tmp_path / "a.jsonl", [r["arch1"], r["arch2"]])
    b = _log(tmp_path / "b.jsonl", [{**r["arch2"], "seconds": 0.0}, r["arch3"]])  # timing may differ
    merged = merge_shards([a, b])
    assert list(merged) == ["arch1", "arch2", "arch3"]
    assert [m["acc"] for m in merged.values()] == [r[k]["acc"] for k in r]
    (tmp_path / "empty.jsonl").write_text("")
    assert merge_shards([tmp_path / "empty.jsonl"]) == {}

    c = _log(tmp_path / "c.jsonl", [r["arch3"], {**r["arch1"], "acc": 0.9}])
    _raises(merge_shards, [a, b, c], contains=["c.jsonl", "conflict", "a.jsonl", "arch1"])
    d = _log(tmp_path / "d.jsonl", [{"key": "arch4", "acc": 0.4}])
    _raises(merge_shards, [a, d], contains=["d.jsonl", "not a record"])


def test_tie_break_keeps_the_accuracy_order_and_orders_ties_by_loss():
    rng = np.random.default_rng(0)
    n_val, n = 500, 2000
    # Accuracies on 500 images (quantum 0.002), with many ties, including 0 and 1.
    accs = {f"arch{i}": int(c) / n_val for i, c in enumerate(rng.integers(0, 40, n))}
    accs.update(arch0=0.0, arch1=0.0, arch2=1.0, arch3=1.0)
    losses = {k: float(rng.random()) for k in accs}
    out = break_ties(accs, losses)
    assert len(set(accs.values())) < n / 10 and len(set(out.values())) == n  # every tie resolved
    keys = list(accs)
    a = np.array([accs[k] for k in keys])
    o = np.array([out[k] for k in keys])
    lo = np.array([losses[k] for k in keys])
    assert ((0 <= o) & (o <= 1)).all() and np.abs(o - a).max() < 0.5 / n_val
    higher = a[:, None] > a[None, :]
    assert (o[:, None] > o[None, :])[higher].all()  # the order of distinct accuracies is kept
    tied = (a[:, None] == a[None, :]) & (lo[:, None] < lo[None, :])
    assert (o[:, None] > o[None, :])[tied].all()  # within a tie, the lower loss ranks higher
    assert out["arch0"] != out["arch1"] and out["arch2"] != out["arch3"]


def test_tie_break_needs_a_loss_for_every_score():
    with pytest.raises(SubmissionError, match="1 score without a finite loss.*arch2"):
        break_ties({"arch1": 0.5, "arch2": 0.5}, {"arch1": 0.1, "arch2": float("nan")})

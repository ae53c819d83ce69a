import json

import pytest

from track1.files import append_jsonl, read_jsonl, repair_jsonl, write_json


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # not serialisable: fails before the rename
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_jsonl_drops_a_torn_last_line_and_repairs_it(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"k": 1}, {"k": 2}])
    with open(path, "a") as f:
        f.write('{"k": 3')
    assert [r["k"] for r in read_jsonl(path)] == [1, 2]
    repair_jsonl(path)
    append_jsonl(path, [{"k": 4}])
    assert [r["k"] for r in read_jsonl(path)] == [1, 2, 4]


def test_jsonl_refuses_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"k": 1}\nnot json\n{"k": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_jsonl(path))

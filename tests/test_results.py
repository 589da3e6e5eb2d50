import json

import numpy as np
import pytest

from rsjax.errors import InputError
from rsjax.results import RecordStore, config_hash, open_run_dir, read_records, record_key, write_text_atomic


def test_store_dedupes_and_resumes(tmp_path):
    p = tmp_path / "r.jsonl"
    s = RecordStore(p)
    k1, k2 = record_key(image=1, attack="hsja"), record_key(attack="hsja", image=2)
    assert s.append([{"key": k1, "l2": np.float32(0.5)}, {"key": k2, "l2": float("nan")}]) == 2
    assert s.append([{"key": k1, "l2": 9.0}]) == 0
    s2 = RecordStore(p)
    assert k1 in s2 and k2 in s2 and len(s2) == 2
    recs = read_records(p)
    assert recs[0]["l2"] == 0.5 and recs[1]["l2"] is None


def test_torn_last_line_is_cut(tmp_path):
    p = tmp_path / "r.jsonl"
    s = RecordStore(p)
    s.append([{"key": "a", "v": 1}])
    with open(p, "a") as f:
        f.write('{"key": "b", "v"')  # crash mid-write
    s2 = RecordStore(p)
    assert "a" in s2 and "b" not in s2
    s2.append([{"key": "b", "v": 2}])
    assert [r["key"] for r in read_records(p)] == ["a", "b"]


def test_run_dir_refuses_other_config(tmp_path):
    out = tmp_path / "run"
    open_run_dir(out, {"a": 1, "b": [1, 2]})
    open_run_dir(out, {"b": [1, 2], "a": 1})  # same config: fine
    with pytest.raises(InputError, match=r"differs in \['b'\]"):
        open_run_dir(out, {"a": 1, "b": [1, 3]})
    assert json.loads((out / "config.json").read_text()) == {"a": 1, "b": [1, 2]}
    assert config_hash({"a": 1}) == config_hash({"a": 1}) != config_hash({"a": 2})


def test_atomic_write_keeps_the_old_file_when_the_replace_never_happens(tmp_path, monkeypatch):
    """A process stopped between writing the new text and replacing the file (here: os.replace
    fails) leaves the previous file whole, so a resumed run can still parse it."""
    import os

    path = tmp_path / "env.json"
    write_text_atomic(path, json.dumps({"a": 1}))
    assert json.loads(path.read_text()) == {"a": 1}

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, json.dumps({"a": 2, "b": "x" * 10_000}))
    assert json.loads(path.read_text()) == {"a": 1}
    monkeypatch.undo()
    write_text_atomic(path, json.dumps({"a": 3}))
    assert json.loads(path.read_text()) == {"a": 3} and not (tmp_path / "env.json.tmp").exists()

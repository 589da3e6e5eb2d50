"""experiments/compare_runs.py: the paired comparison of one attack between two run directories."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "compare_runs.py"


def load_script():
    spec = importlib.util.spec_from_file_location("compare_runs_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(path: Path, l2s: dict, n: int = 1, **fields) -> Path:
    path.mkdir()
    recs = []
    for (attack, image), l2 in l2s.items():
        status = "attacked" if l2 is not None else "unverified"
        recs.append({"attack": attack, "model": "m", "sigma": 0.5, "n": n, "p_a": 0.5, "image": image,
                     "criterion": "label", "status": status, "verified_l2": l2, "reference": 1,
                     "radius": 0.1 * image, "clean_level": 0.0, **fields})
    recs.append({"attack": "psj", "model": "m", "sigma": 0.5, "n": n, "p_a": 0.5, "image": 99, "criterion": "label",
                 "status": "misclassified", "verified_l2": None})
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (path / "images.json").write_text(json.dumps({"attacked": list(range(8))}))
    return path


def test_paired_ratio_difference_and_counts(tmp_path, capsys):
    mod = load_script()
    a = {("psj", i): 2.0 + i for i in range(8)} | {("hsja", i): 9.0 for i in range(8)}
    b = {("psj", i): 0.5 * (2.0 + i) for i in range(8)} | {("hsja", i): 1.0 for i in range(8)}
    b[("psj", 7)] = None  # unverified in B: left out of the paired statistics, counted
    rows = mod.compare(_run(tmp_path / "a", a), _run(tmp_path / "b", b), "psj")
    (row,) = rows
    assert (row["images"], row["verified_a"], row["verified_b"], row["both"]) == (8, 8, 7, 7)
    assert row["median_ratio"] == pytest.approx(0.5) and row["median_ratio_low"] == pytest.approx(0.5)
    assert row["mean_a"] == pytest.approx(5.0) and row["mean_b"] == pytest.approx(2.5)
    assert row["diff"] == pytest.approx(-2.5) and row["diff_high"] < 0 and row["verdict"] == "B lower"
    assert (row["b_lower"], row["b_higher"], row["equal"]) == (7, 0, 0)
    assert mod.main([str(tmp_path / "a"), str(tmp_path / "b"), "--attack", "psj"]) == 0
    assert "0.500 [0.500, 0.500]" in capsys.readouterr().out


def test_another_experiment_is_refused(tmp_path, capsys):
    mod = load_script()
    a = {("psj", i): 2.0 + i for i in range(8)}
    _run(tmp_path / "a", a)
    _run(tmp_path / "b", a, radius=0.3)  # another model's CERTIFY radii
    assert mod.main([str(tmp_path / "a"), str(tmp_path / "b"), "--attack", "psj"]) == 2
    assert "field 'radius'" in capsys.readouterr().err
    with pytest.raises(mod.CompareError, match="no image was attacked by 'rays'"):
        mod.compare(tmp_path / "a", tmp_path / "a", "rays")
    c = _run(tmp_path / "c", a)
    (c / "images.json").write_text(json.dumps({"attacked": list(range(1, 9))}))
    with pytest.raises(mod.CompareError, match="other images"):
        mod.compare(tmp_path / "a", c, "psj")
    assert math.isinf(mod._verified({"verified_l2": None}))

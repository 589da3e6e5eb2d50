"""Report/figure code on a small synthetic sweep directory (no model is run)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsjax.errors import InputError
from rsjax.report import (accuracy_table, distortion_ratios, load_run, ratio_table, sigma_drops, summary_rows,
                          write_report)
from rsjax.results import RecordStore, open_run_dir, record_key

REPO = Path(__file__).resolve().parents[1]


def _attack(model, sigma, n, p_a, attack, image, l2, radius, status="attacked", level=0.9):
    crit = "none" if sigma is None else "level"
    fields = dict(model=model, sigma=sigma, n=n, p_a=p_a, criterion=crit, attack=attack)
    return {"key": record_key(kind="attack", image=image, **fields), "kind": "attack", **fields,
            "k_wrong": None if n is None else max(1, math.ceil(n * (p_a or 1))), "image": image, "label": 1,
            "status": status, "success": status != "no_start", "l2": l2 if status != "no_start" else None,
            "linf": 0.1, "queries": 100, "evaluations": 100 * (n or 1), "max_queries": 100, "steps": 3,
            "radius": radius, "level": level, "level_low": 0.8, "level_high": 1.0, "level_calls": 10}


@pytest.fixture()
def run_dir(tmp_path):
    out = open_run_dir(tmp_path / "run", {"preset": "synthetic", "data": "x", "arch": "a", "seed": 0,
                                           "n_images": 3, "max_queries": 100, "criterion": "level"})
    recs = RecordStore(out / "records.jsonl")
    recs.append([
        _attack("standard", None, None, None, "hsja", 0, 1.0, None),
        _attack("standard", None, None, None, "hsja", 1, 3.0, None),
        _attack("standard", None, None, None, "hsja", 2, None, None, status="no_start"),
        _attack("standard", 0.5, 10, 0.5, "hsja", 0, 4.0, 0.1),
        _attack("standard", 0.5, 10, 0.5, "hsja", 1, 6.0, 0.0),  # abstained certificate: no ratio
        _attack("standard", 0.5, 10, 0.5, "hsja", 2, 0.0, 0.2, status="misclassified"),
        _attack("standard", 0.5, 1, None, "rays", 0, 2.0, 0.1),
        _attack("randtrain", 0.5, 10, 0.8, "rays", 0, 8.0, 0.2),
    ])
    # a second process's file, with one duplicate key (must be read once)
    RecordStore(out / "records.p1.jsonl").append([_attack("standard", 0.5, 1, None, "rays", 0, 2.0, 0.1),
                                                  _attack("standard", 0.5, 1, None, "rays", 1, 4.0, 0.4)])
    acc = RecordStore(out / "accuracy.jsonl")
    acc.append([
        {"key": "a1", "kind": "accuracy", "model": "standard", "sigma": None, "n": None, "accuracy": 0.9, "num_images": 10},
        {"key": "a2", "kind": "accuracy", "model": "standard", "sigma": 0.5, "n": 10, "accuracy": 0.8, "num_images": 10,
         "predict_accuracy": 0.7, "abstention_rate": 0.1},
        {"key": "a3", "kind": "accuracy", "model": "standard", "sigma": 0.5, "n": 1, "accuracy": 0.75, "num_images": 10,
         "predict_accuracy": 0.0, "abstention_rate": 1.0},
        {"key": "a4", "kind": "accuracy", "model": "randtrain", "sigma": 0.5, "n": 10, "accuracy": 0.85, "num_images": 10,
         "predict_accuracy": 0.8, "abstention_rate": 0.05},
    ])
    cert = RecordStore(out / "certify.jsonl")
    cert.append([{"key": f"c{i}{m}", "kind": "certify", "model": m, "sigma": 0.5, "image": i, "label": 1,
                  "prediction": 1 if r > 0 else -1, "radius": r, "correct": r > 0, "n0": 10, "n": 100, "alpha": 0.001}
                 for m in ("standard", "randtrain") for i, r in enumerate([0.1, 0.0, 0.2, 0.4])])
    (out / "runs.jsonl").write_text(json.dumps({"event": "start"}) + "\n"
                                    + json.dumps({"event": "stopped", "wall_s": 10.0}) + "\n"
                                    + json.dumps({"event": "start"}) + "\n"
                                    + json.dumps({"event": "finish", "wall_s": 5.5}) + "\n")
    return out


def test_summary_rows_statistics(run_dir):
    run = load_run(run_dir)
    assert len(run["records"]) == 9  # the duplicate across files is read once
    rows = {(r["model"], r["sigma"], r["n"], r["p_a"], r["attack"]): r for r in summary_rows(run)}
    base = rows[("standard", None, None, None, "hsja")]
    assert base["images"] == 3 and base["successes"] == 2 and base["no_start"] == 1
    assert base["mean_l2"] == pytest.approx(2.0) and base["accuracy"] == pytest.approx(0.9)
    assert math.isnan(base["median_ratio"])  # no ratio without RS
    rs = rows[("standard", 0.5, 10, 0.5, "hsja")]
    assert rs["successes"] == 3 and rs["misclassified"] == 1
    assert rs["mean_l2"] == pytest.approx((4.0 + 6.0 + 0.0) / 3)
    assert rs["accuracy"] == pytest.approx(0.8)
    # ratios: image 0 -> 40, image 1 has radius 0 (excluded), image 2 -> 0/0.2 = 0
    assert rs["ratio_images"] == 2 and rs["median_ratio"] == pytest.approx(20.0)
    assert rs["frac_ratio_ge_30"] == pytest.approx(0.5)
    r1 = rows[("standard", 0.5, 1, None, "rays")]
    assert r1["images"] == 2 and r1["median_ratio"] == pytest.approx(15.0) and r1["accuracy"] == pytest.approx(0.75)


def test_tables(run_dir):
    run = load_run(run_dir)
    ratios = distortion_ratios(run["records"])
    assert sorted(round(r["ratio"], 6) for r in ratios) == [0.0, 10.0, 20.0, 40.0, 40.0]
    rt = {(r["model"], r["n"], r["attack"]): r for r in ratio_table(run)}
    assert rt[("randtrain", 10, "rays")]["median"] == pytest.approx(40.0)
    acc = {(a["model"], a["sigma"], a["n"]): a for a in accuracy_table(run)}
    assert acc[("standard", 0.5, 10)]["drop"] == pytest.approx(0.1)
    assert acc[("randtrain", 0.5, 10)]["drop"] is None  # no clean accuracy recorded for it
    drops = sigma_drops(run)
    assert drops == [{"model": "standard", "sigma": 0.5, "n": 10, "clean": 0.9, "rs_accuracy": 0.8,
                      "drop": pytest.approx(0.1)}]


def test_write_report_files(run_dir):
    written = write_report(run_dir)
    for name in ("summary.csv", "report.md", "fig5_distortion_vs_accuracy.png", "fig4_certified_accuracy.png",
                 "distortion_over_radius.png", "distortion_over_radius.csv"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    with open(run_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    md = (run_dir / "report.md").read_text()
    assert "Wall time: 16 s over 2 start(s)" in md  # 10.0 + 5.5 s
    assert "| standard | 0.5 | 10 | 0.5 | hsja | 3 |" in md
    assert "![distortion vs accuracy](fig5_distortion_vs_accuracy.png)" in md
    assert set(written["figures"]) == {"fig4", "fig5", "ratio"}
    # the certified accuracy table: standard radii [0.1, 0, 0.2, 0.4] all correct but the abstention;
    # at r = 0.125 (= sigma/4) two of four images remain
    assert "| standard | 0.5 | 4 | 0.75 | 0.5 |" in md


def test_report_cli_redraws_from_records(run_dir):
    (run_dir / "report.md").unlink(missing_ok=True)
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "report.py"), str(run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "report.md").is_file()


def test_not_a_sweep_dir(tmp_path):
    with pytest.raises(InputError, match="not a sweep directory"):
        load_run(tmp_path)

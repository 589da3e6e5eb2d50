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


def _attack(model, sigma, n, p_a, attack, image, l2, radius, status="attacked", raw=None, criterion=None):
    """A record of the verified schema: ``l2`` is the verified distortion, ``raw`` the attacker's
    (default: 0.8 of the verified one, a lucky point)."""
    crit = criterion or ("none" if sigma is None else "label")
    fields = dict(model=model, sigma=sigma, n=n, p_a=p_a, criterion=crit, attack=attack)
    ok = status in ("attacked", "misclassified")
    raw = (0.8 * l2 if l2 else 0.0) if raw is None else raw
    return {"key": record_key(kind="attack", image=image, **fields), "kind": "attack", **fields,
            "k_wrong": None, "image": image, "label": 1, "reference": 1, "reference_kind": "smoothed",
            "status": status, "success": ok,
            "attack_status": None if status.startswith("smoothed") else ("no_start" if status == "no_start" else "attacked"),
            "l2": raw if status in ("attacked", "misclassified", "unverified") else None, "linf": 0.1, "queries": 100, "evaluations": 100 * (n or 1),
            "max_queries": 100, "steps": 3, "radius": radius,
            "verified_l2": l2 if ok else None, "verified_linf": 0.12 if ok else None,
            "verified_level": 0.9 if ok else None, "raw_level": 0.3, "verification_calls": 40}


@pytest.fixture()
def run_dir(tmp_path):
    out = open_run_dir(tmp_path / "run", {"preset": "synthetic", "data": "x", "arch": "a", "seed": 0,
                                           "n_images": 3, "max_queries": 100, "criterion": "label",
                                           "reference": "smoothed", "reference_n": 1000, "reference_alpha": 0.001,
                                           "verify_calls": 100, "verify_confidence": 0.95, "verify_rel_tol": 0.01,
                                           "pas": [0.5, 0.8], "certify_n0": 10, "certify_n": 100,
                                           "certify_alpha": 0.001})
    recs = RecordStore(out / "records.jsonl")
    recs.append([
        _attack("standard", None, None, None, "hsja", 0, 1.0, None),
        _attack("standard", None, None, None, "hsja", 1, 3.0, None),
        _attack("standard", None, None, None, "hsja", 2, None, None, status="no_start"),
        _attack("standard", 0.5, 10, 0.5, "hsja", 0, 4.0, 0.1),
        _attack("standard", 0.5, 10, 0.5, "hsja", 1, 6.0, 0.0),  # abstained certificate: no ratio
        _attack("standard", 0.5, 10, 0.5, "hsja", 2, 0.0, 0.2, status="misclassified"),
        _attack("standard", 0.5, 10, 0.5, "hsja", 3, None, 0.2, status="unverified", raw=0.01),
        _attack("standard", 0.5, 10, 0.5, "hsja", 4, None, 0.2, status="smoothed_wrong"),
        _attack("standard", 0.5, 1, 0.5, "rays", 0, 2.0, 0.1),
        _attack("randtrain", 0.5, 10, 0.8, "rays", 0, 8.0, 0.2),
    ])
    # a second process's file, with one duplicate key (must be read once)
    RecordStore(out / "records.p1.jsonl").append([_attack("standard", 0.5, 1, 0.5, "rays", 0, 2.0, 0.1),
                                                  _attack("standard", 0.5, 1, 0.5, "rays", 1, 4.0, 0.4)])
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
    assert len(run["records"]) == 11  # the duplicate across files is read once
    rows = {(r["model"], r["sigma"], r["n"], r["p_a"], r["attack"]): r for r in summary_rows(run)}
    base = rows[("standard", None, None, None, "hsja")]
    assert base["images"] == 3 and base["successes"] == 2 and base["no_start"] == 1
    assert base["mean_l2"] == pytest.approx(2.0) and base["accuracy"] == pytest.approx(0.9)
    assert base["mean_l2_low"] <= 2.0 <= base["mean_l2_high"]
    assert math.isnan(base["median_ratio"])  # no ratio without RS
    rs = rows[("standard", 0.5, 10, 0.5, "hsja")]
    assert rs["images"] == 5 and rs["successes"] == 3 and rs["misclassified"] == 1
    assert rs["unverified"] == 1 and rs["smoothed_wrong"] == 1 and rs["success_rate"] == pytest.approx(0.6)
    assert rs["mean_l2"] == pytest.approx((4.0 + 6.0 + 0.0) / 3)  # verified, zero of 'misclassified' included
    assert rs["raw_mean_l2"] == pytest.approx((3.2 + 4.8 + 0.0 + 0.01) / 4)  # the attacker's own, attacked images
    assert rs["accuracy"] == pytest.approx(0.8) and rs["mean_raw_level"] == pytest.approx(0.3)
    # ratios: image 0 -> 40, image 1 has radius 0 (excluded), image 2 -> 0/0.2 = 0
    assert rs["ratio_images"] == 2 and rs["median_ratio"] == pytest.approx(20.0)
    assert rs["ratio_of_means"] == pytest.approx((4.0 + 0.0) / (0.1 + 0.2))
    assert rs["frac_ratio_ge_30"] == pytest.approx(0.5) and rs["frac_inside_radius"] == pytest.approx(0.5)
    assert rs["raw_frac_inside_radius"] == pytest.approx(2 / 3)  # 0 < 0.2 and 0.01 < 0.2 of 3 with a radius
    r1 = rows[("standard", 0.5, 1, 0.5, "rays")]
    assert r1["images"] == 2 and r1["median_ratio"] == pytest.approx(15.0) and r1["accuracy"] == pytest.approx(0.75)


def test_tables(run_dir):
    run = load_run(run_dir)
    ratios = distortion_ratios(run["records"])
    assert sorted(round(r["ratio"], 6) for r in ratios) == [0.0, 10.0, 20.0, 40.0, 40.0]
    rt = {(r["model"], r["n"], r["attack"]): r for r in ratio_table(run)}
    assert all(r["criterion"] == "label" for r in ratio_table(run))
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
                 "distortion_over_radius.png", "distortion_over_radius.csv", "findings.csv"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    with open(run_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    md = (run_dir / "report.md").read_text()
    assert "Wall time: 16 s over 2 start(s)" in md  # 10.0 + 5.5 s
    assert "| standard | 0.5 | 10 | 0.5 | label | hsja | 5 | 0.6 | 1 | 1 | 1 | 0 |" in md
    assert "`label`: the attacker sees the deployed g_(σ,n)" in md and "`level`" not in md.split("## Models")[0]
    assert "PREDICT with n = 1000" in md and "m = 100 calls" in md and "n = 100, α = 0.001" in md
    assert "## The paper's findings" in md
    with open(run_dir / "summary.csv") as f:
        header = next(csv.reader(f))
    for col in ("mean_l2_low", "mean_l2_high", "raw_mean_l2", "raw_median_l2_low", "median_ratio_high",
                "ratio_of_means"):
        assert col in header
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


def test_bootstrap_intervals_and_verdicts():
    from rsjax.intervals import (mean_interval, median_interval, paired_difference_interval,
                                 ratio_of_means_interval, verdict)

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 200)
    iv = mean_interval(x)
    assert iv.low < x.mean() < iv.high and iv.size == 200
    assert abs((iv.high - iv.low) - 2 * 1.96 / np.sqrt(200)) < 0.08  # ~ the normal-theory width
    assert median_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0, 3)  # degenerate: a point interval
    assert math.isnan(mean_interval([]).estimate)
    r = ratio_of_means_interval([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    assert r.estimate == pytest.approx(2.0) and r.low == pytest.approx(2.0) and r.high == pytest.approx(2.0)
    d = paired_difference_interval(x + 0.5, x)  # a constant shift: decided despite the spread of x
    assert verdict(d) == "holds" and verdict(paired_difference_interval(x, x + 0.5)) == "reversed"
    assert verdict(paired_difference_interval(x, x[::-1])) == "undecided"
    assert verdict(paired_difference_interval([1.0, 2.0], [0.0, 0.0])) == "undecided"  # too few images


def test_findings_from_verified_records(run_dir):
    from rsjax.findings import comparisons, summarize

    recs = []
    rng = np.random.default_rng(1)
    for i in range(20):
        recs.append(_attack("standard", None, None, None, "rays", i, 1.0 + 0.1 * rng.random(), None))
        for n, scale in ((1, 3.0), (10, 1.5)):
            for attack, f in (("rays", 1.0), ("hsja", 2.0)):
                recs.append(_attack("standard", 0.5, n, 0.5, attack, i, f * scale + 0.1 * rng.random(), 0.1))
                recs.append(_attack("randtrain", 0.5, n, 0.5, attack, i, f * scale * 0.2 + 0.1 * rng.random(), 0.1))
    rows = comparisons(recs)
    by = {s["finding"]: s for s in summarize(rows)}
    assert by["fewer_n_larger"]["overall"] == "holds" and by["fewer_n_larger"]["comparisons"] == 4
    assert by["rays_least_affected"]["overall"] == "holds"
    assert by["sigma_no_robustness"]["overall"] == "not measured"  # one sigma only
    # randtrain RayS under RS: 0.6 / 0.3 vs standard no-RS ~1.05: weaker -> holds
    assert by["randtrain_rays_weaker"]["overall"] == "holds"
    # ratios: ~30-60 for standard n = 1, ~3-12 for randtrain -> mixed
    assert by["ratio_ge_30"]["overall"] == "mixed"

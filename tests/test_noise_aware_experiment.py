"""experiments/noise_aware.py's tables from a run directory's records (synthetic records: the
share of the gap to the white-box floor, its paired interval, the handling of unverified and
not-attacked images), and the 'noise-aware' preset."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np

from rsjax.study.config import preset

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "noise_aware.py"


def load_script():
    spec = importlib.util.spec_from_file_location("noise_aware_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(attack, image, l2, n=1, status="attacked", kind="attack"):
    return {"key": f"{kind}|{attack}|{image}|{n}", "kind": kind, "criterion": "label", "model": "standard",
            "sigma": 0.55, "n": n, "p_a": 0.5, "attack": attack, "image": image, "status": status,
            "verified_l2": l2}


def test_tables_gap_closure(tmp_path):
    mod = load_script()
    rng = np.random.default_rng(0)
    recs, floor = [], []
    for i in range(8):
        f = 1.0 + 0.1 * rng.random()
        recs += [_rec("hsja", i, 10.0 + rng.random()), _rec("psj", i, 5.5 + 0.1 * rng.random())]
        floor.append(_rec("smoothadv", i, f, kind="floor"))
    recs.append(_rec("hsja", 8, None, status="unverified"))  # a failure of the plain attack
    recs.append(_rec("psj", 8, 4.0))
    floor.append(_rec("smoothadv", 8, 1.0, kind="floor"))
    for a in ("hsja", "psj"):  # not attacked: no reference label
        recs.append(_rec(a, 9, None, status="smoothed_abstain"))
    floor.append(_rec("smoothadv", 9, None, status="smoothed_abstain", kind="floor"))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "floor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in floor))
    text = mod.write_tables(tmp_path, tmp_path / "out")
    assert "hsja -> psj" in text and "smoothadv (white box)" in text
    gap = list(csv.DictReader(open(tmp_path / "out" / "gap.csv")))
    assert len(gap) == 1
    g = gap[0]
    assert int(g["images"]) == 8  # image 8 (plain unverified) and 9 (not attacked) are out
    p, a, f = float(g["plain_mean"]), float(g["noise_aware_mean"]), float(g["floor_mean"])
    assert math.isclose(float(g["closed"]), (p - a) / (p - f), rel_tol=1e-9)
    assert 0.4 < float(g["closed"]) < 0.6
    assert float(g["closed_low"]) <= float(g["closed"]) <= float(g["closed_high"])
    summary = {r["attack"]: r for r in csv.DictReader(open(tmp_path / "out" / "summary.csv"))}
    assert summary["hsja"]["verified"] == "8" and summary["hsja"]["images"] == "9"
    assert summary["smoothadv"]["whitebox"] == "True"
    per = list(csv.DictReader(open(tmp_path / "out" / "per_image.csv")))
    assert len(per) == 9 and {r["image"] for r in per} == {str(i) for i in range(9)}


def test_noise_aware_preset():
    cfg = preset("noise-aware").validate()
    assert cfg.ns == (1, 10, 100) and cfg.pas == (0.5,) and not cfg.baseline
    assert set(cfg.attacks) == {"hsja", "psj", "surfree", "surfree_na", "rays", "rays_na"}
    # the default preset's standard model (the same cached checkpoint)
    assert cfg.models[0] == preset("default").models[0].__class__(**{**preset("default").models[0].__dict__,
                                                                       "sigmas": None})

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


def _write(path: Path, recs) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _results_folder(mod, tmp_path):
    """A committed results folder (trimmed records: no key, no criterion) and a run that re-made
    psj at n = 1 and added n = 10."""
    dest, run = tmp_path / "dest", tmp_path / "run"
    dest.mkdir()
    run.mkdir()
    ref = [{"key": f"reference|{i}", "kind": "reference", "image": i, "prediction": 1, "seconds": 0.1}
           for i in range(6)]
    _write(dest / "reference.jsonl", ref)
    _write(run / "reference.jsonl", [{**r, "seconds": 9.0} for r in ref])  # timings may differ
    keep = ("attack", "model", "sigma", "n", "p_a", "image", "status", "verified_l2")
    old = [_rec(a, i, 10.0 + i if a == "hsja" else 6.0 + i) for a in ("hsja", "psj") for i in range(6)]
    _write(dest / "records.jsonl", [{k: r[k] for k in keep} for r in old])
    _write(dest / "floor.jsonl", [_rec("smoothadv", i, 1.0, kind="floor") for i in range(6)])
    new = ([_rec("hsja", i, 10.0 + i) for i in range(6)] + [_rec("psj", i, 5.0 + i) for i in range(6)]
           + [_rec(a, i, 3.0 + i, n=10) for a in ("hsja", "psj") for i in range(6)])
    _write(run / "records.jsonl", [{**r, "attack_seconds": 1.0, "extra": 1} for r in new])
    _write(run / "floor.jsonl", [_rec("smoothadv", i, 1.0, kind="floor") for i in range(6)]
           + [_rec("smoothadv", i, 0.5, n=10, kind="floor") for i in range(6)])
    return dest, run, keep


def test_merge_into_replaces_and_adds(tmp_path):
    mod = load_script()
    dest, run, keep = _results_folder(mod, tmp_path)
    report = mod.merge_into(run, dest, {"psj"})
    assert report["reference"] == {"identical": 6, "added": 0}
    assert report["records"] == {"identical": 6, "replaced": 6, "changed": 6, "added": 12}
    assert report["floor"] == {"identical": 6, "replaced": 0, "changed": 0, "added": 6}
    recs = [json.loads(line) for line in (dest / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 24 and all(list(r) == list(keep) for r in recs)  # trimmed to the folder's fields
    by = {(r["attack"], r["n"], r["image"]): r["verified_l2"] for r in recs}
    assert by[("psj", 1, 2)] == 7.0 and by[("hsja", 1, 2)] == 12.0 and by[("psj", 10, 2)] == 5.0
    summary = {(r["attack"], int(r["n"])): r for r in csv.DictReader(open(dest / "summary.csv"))}
    assert float(summary[("psj", 1)]["median"]) == 7.5 and summary[("smoothadv", 10)]["verified"] == "6"
    # merging the same run again changes nothing
    again = mod.merge_into(run, dest, {"psj"}, write=False)
    assert again["records"] == {"identical": 12, "replaced": 12, "changed": 0, "added": 0}


def test_merge_into_refuses_another_experiment(tmp_path):
    import pytest

    mod = load_script()
    dest, run, _ = _results_folder(mod, tmp_path)
    before = {p.name: p.read_text() for p in dest.iterdir()}
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    recs[0]["verified_l2"] = 99.0  # an hsja record the run made differently
    _write(run / "records.jsonl", recs)
    with pytest.raises(mod.MergeError, match=r"'verified_l2'.*--merge-attacks hsja"):
        mod.merge_into(run, dest, {"psj"})
    assert mod.merge_into(run, dest, {"psj", "hsja"}, write=False)["records"]["changed"] == 7
    ref = [json.loads(line) for line in (run / "reference.jsonl").read_text().splitlines()]
    ref[3]["prediction"] = 2  # another model
    _write(run / "reference.jsonl", ref)
    with pytest.raises(mod.MergeError, match=r"reference record 'reference\|3': field 'prediction'"):
        mod.merge_into(run, dest, {"psj", "hsja"})
    assert {p.name: p.read_text() for p in dest.iterdir()} == before  # nothing written


def test_merge_into_a_folder_without_side_records_checks_the_model_on_attack_records(tmp_path):
    """The Fashion-MNIST folders keep no reference/accuracy/CERTIFY records: a merge does not
    add them, and checks the model through the attack records' per-image fields (reference label,
    CERTIFY radius, clean level), whatever the attack."""
    import pytest

    mod = load_script()
    dest, run, _ = _results_folder(mod, tmp_path)
    (dest / "reference.jsonl").unlink()
    for folder in (dest, run):
        recs = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
        _write(folder / "records.jsonl", [{**r, "reference": 1, "radius": 0.1 * r["image"]} for r in recs])
    report = mod.merge_into(run, dest, {"psj"}, write=False)
    assert report["reference"] == {"not kept in the folder": 6} and report["records"]["replaced"] == 6
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    recs[11]["radius"] = 0.25  # psj, n = 1, image 5: another model
    _write(run / "records.jsonl", recs)
    with pytest.raises(mod.MergeError, match=r"psj record .*field 'radius' is 0.25 in the run, 0.5 in"):
        mod.merge_into(run, dest, {"psj"})
    assert not (dest / "reference.jsonl").exists()


def test_save_folder_from_a_run(tmp_path):
    """--keep-records: the run's label records trimmed to the folder fields, the floor and side
    records as they are, the configuration with relative paths, the tables; a second run is
    refused (that is --merge-into's job) and then merges as identical."""
    import pytest

    mod = load_script()
    _, run, _ = _results_folder(mod, tmp_path)
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    _write(run / "records.jsonl", recs + [{**recs[0], "criterion": "k_wrong", "verified_l2": 0.0}])
    cfg = {"data": f"npz:{tmp_path / 'shared' / 'test.npz'}", "max_queries": 5000,
           "models": [{"name": "a", "checkpoint": str(repo / "runs" / "m.ckpt")},
                      {"name": "b", "checkpoint": str(cache / "checkpoints" / "b.ckpt")},
                      {"name": "c", "checkpoint": "/elsewhere/far/away/c.ckpt"}]}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "images.json").write_text(json.dumps({"attacked": list(range(6))}))
    mod.REPO = repo  # the repository the relative paths start from
    dest = tmp_path / "folder"
    written = mod.save_folder(run, dest, cache)
    assert {"records.jsonl", "floor.jsonl", "reference.jsonl", "images.json", "sweep_config.json",
            "table.md", "gap.csv"} <= set(written) and "accuracy.jsonl" not in written
    out = [json.loads(line) for line in (dest / "records.jsonl").read_text().splitlines()]
    assert len(out) == len(recs)  # the k_wrong record left out; the extra field dropped, the order kept
    assert all(list(r) == [k for k in mod.FOLDER_FIELDS if k in s] for r, s in zip(out, recs))
    assert "extra" in recs[0] and "attack_seconds" in out[0]
    assert [r["verified_l2"] for r in out] == [r["verified_l2"] for r in recs]
    assert (dest / "floor.jsonl").read_text() == (run / "floor.jsonl").read_text()
    saved = json.loads((dest / "sweep_config.json").read_text())
    assert saved["data"] == "npz:../shared/test.npz" and saved["max_queries"] == 5000
    assert [m["checkpoint"] for m in saved["models"]] == ["runs/m.ckpt", "$RSJAX_CACHE/checkpoints/b.ckpt",
                                                         "/elsewhere/far/away/c.ckpt"]
    summary = {(r["attack"], int(r["n"])): r for r in csv.DictReader(open(dest / "summary.csv"))}
    assert float(summary[("psj", 1)]["median"]) == 7.5
    with pytest.raises(mod.MergeError, match="already holds records.jsonl: use --merge-into"):
        mod.save_folder(run, dest, cache)
    again = mod.merge_into(run, dest, None, write=False)
    assert again["records"]["changed"] == 0 and again["floor"]["changed"] == 0
    assert mod.main(["--run", str(run), "--tables-only", "--keep-records"]) == 2  # no --out: refused
    # refused before any work: without --tables-only the floor step runs first, and on this
    # synthetic run (no model in its config) it would fail with another exception than exit 2
    assert mod.main(["--run", str(run), "--keep-records", "--out", str(tmp_path / "f2"),
                     "--merge-into", str(dest)]) == 2
    assert not (tmp_path / "f2").exists()


def test_attack_options_are_named_in_the_tables_and_a_variant_is_not_merged(tmp_path):
    """A run whose sweep set attack options (``--attack-option``) is another attack: its tables say
    so, and merging it into a folder made with other options (or with no configuration to compare)
    is refused."""
    import pytest

    mod = load_script()
    dest, run, _ = _results_folder(mod, tmp_path)
    base = {"attacks": ["hsja", "psj"], "attack_options": {}}
    (dest / "sweep_config.json").write_text(json.dumps(base))
    (run / "config.json").write_text(json.dumps({**base, "attack_options": {"psj": {"max_probe_rms": 0.5}}}))
    before = {p.name: p.read_text() for p in dest.iterdir()}
    with pytest.raises(mod.MergeError, match=r"psj: the run set the options \{'max_probe_rms': 0.5\}"):
        mod.merge_into(run, dest, {"psj"})
    (dest / "sweep_config.json").unlink()
    with pytest.raises(mod.MergeError, match="keeps no sweep_config"):
        mod.merge_into(run, dest, {"psj"})
    (dest / "sweep_config.json").write_text(json.dumps(base))
    assert {p.name: p.read_text() for p in dest.iterdir()} == before  # nothing written
    text = mod.write_tables(run, tmp_path / "tables")
    assert text.startswith("Attack options (config fields set, the rest at their defaults): psj: max_probe_rms=0.5")
    # the same options on both sides merge, and the folder's tables keep the line
    (dest / "sweep_config.json").write_text(json.dumps({**base, "attack_options": {"psj": {"max_probe_rms": 0.5}}}))
    mod.merge_into(run, dest, {"psj"})
    assert (dest / "table.md").read_text().startswith("Attack options")
    # a run without options writes the tables as before
    (run / "config.json").write_text(json.dumps(base))
    assert not mod.write_tables(run, tmp_path / "plain").startswith("Attack options")

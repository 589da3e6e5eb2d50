"""Each analysis-figure script runs end to end on tiny settings (a quick fmnist_mlp trained on 512
images for one epoch, cached once per session), writes its PNG and the data behind it, and the
figure can be re-drawn from the data file alone."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rsjax import analysis as A
from rsjax.classifier import Classifier

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"figscript_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def common(fmnist_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("figcache")
    return ["--data-dir", str(fmnist_dir), "--cache-dir", str(cache), "--train-limit", "512",
            "--train-epochs", "1", "--seed", "0"]


def cached_classifier(common) -> Classifier:
    cache = Path(common[common.index("--cache-dir") + 1])
    (path,) = sorted(p for p in cache.glob("*.ckpt") if not p.name.endswith(".best.ckpt"))
    return Classifier.from_checkpoint(str(path))


def redraw(mod, data: dict, path: Path) -> None:
    mod.plot(data, path)
    assert path.stat().st_size > 1000


def test_along_direction(common, tmp_path):
    mod = load_script("along_direction")
    mod.main(common + ["--out", str(tmp_path), "--t-steps", "5", "--t-max", "2", "--repeats", "10",
                       "--n-list", "1,3", "--n-pi", "100", "--certify-n", "200", "--ddn-steps", "30"])
    assert (tmp_path / "along_direction.png").stat().st_size > 1000
    data = json.loads((tmp_path / "along_direction.json").read_text())
    (img,) = data["images"]
    ts = np.asarray(img["ts"])
    np.testing.assert_allclose(ts, [0, 0.5, 1, 1.5, 2])
    assert img["f_labels"][0] == img["label"]  # x_o is correctly classified
    assert img["f_labels"][2] != img["label"]  # x_a (t = 1) is adversarial for f
    assert [e["n"] for e in img["per_n"]] == [1, 3]
    for e in img["per_n"]:
        p = np.asarray(e["prob_adversarial"])
        assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))
    assert img["certified_radius"] >= 0
    redraw(mod, data, tmp_path / "again.png")


def test_slice2d(common, tmp_path):
    mod = load_script("slice2d")
    mod.main(common + ["--out", str(tmp_path), "--resolution", "9", "--n-large", "20", "--n-small", "1",
                       "--certify-n", "200"])
    assert (tmp_path / "slice2d.png").stat().st_size > 1000
    data = json.loads((tmp_path / "slice2d.json").read_text())
    z = np.load(tmp_path / "slice2d.npz")
    names = list(z["panel_names"])
    assert names[0] == "f" and len(names) == 3
    # the stored f panel is exactly f on the stored grid
    clf = cached_classifier(common)
    pts = A.slice_points(z["x_o"], z["directions"][0], z["directions"][1], z["coords"])
    np.testing.assert_array_equal(A.labels_of(clf.logits_fn, pts).reshape(9, 9), z["labels_0"])
    assert z["labels_0"][4, 4] == data["label"]  # the centre is x_o, correctly classified
    flat = z["directions"].reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(flat @ flat.T, np.eye(2), atol=1e-5)
    assert data["panels"]["f"]["frac_differs_from_f"] == 0.0
    panels = {str(n): z[f"labels_{j}"] for j, n in enumerate(names)}
    mod.plot(data, panels, z["coords"], tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 1000


def test_binary_search(common, tmp_path):
    mod = load_script("binary_search")
    mod.main(common + ["--out", str(tmp_path), "--images", "1", "--n-list", "1,3", "--repeats", "8",
                       "--iterations", "8", "--n-ref", "50", "--grid", "9", "--certify-n", "200"])
    assert (tmp_path / "binary_search.png").stat().st_size > 1000
    data = json.loads((tmp_path / "binary_search.json").read_text())
    (img,) = data["images"]
    length = img["segment_length"]
    # against f the search finds the boundary at x_a (t = 1 of t_end = 2), within 2^-8 of the segment
    assert abs(img["distance_f"] - length / 2) <= length / 2 ** 8 + 1e-6
    for e in img["per_n"]:
        d = np.asarray(e["distances"])
        assert d.shape == (8,) and np.all((d > 0) & (d <= length + 1e-6))
    with open(tmp_path / "binary_search.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["n"]) for r in rows] == [1, 3]
    redraw(mod, data, tmp_path / "again.png")


def test_normal_estimate(common, tmp_path):
    mod = load_script("normal_estimate")
    mod.main(common + ["--out", str(tmp_path), "--images", "1", "--deltas", "0.5,2", "--probes", "10",
                       "--repeats", "2", "--n-list", "1", "--n-boundary", "50", "--stein-samples", "100"])
    assert (tmp_path / "normal_estimate.png").stat().st_size > 1000
    data = json.loads((tmp_path / "normal_estimate.json").read_text())
    np.testing.assert_allclose(data["deltas"], [0.5 * data["sigma"], 2 * data["sigma"]])
    (img,) = data["images"]
    cos = np.asarray(img["per_n"][0]["cos_f_rs"])
    assert cos.shape == (2, 2) and np.all(np.abs(cos) <= 1 + 1e-9)
    with open(tmp_path / "normal_estimate.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(0 <= float(r["frac_adv_f"]) <= 1 for r in rows)
    redraw(mod, data, tmp_path / "again.png")

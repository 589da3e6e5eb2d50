"""`rsjax train` and `rsjax evaluate`: --json prints exactly one JSON object on stdout, the
checkpoint written by train is what evaluate reads, and bad input gives a clear error (exit 2)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rsjax.cli import main


def _json_out(capsys) -> dict:
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist_dir):
    """One short `rsjax train` run with the default architecture (2,000 images, 1 epoch)."""
    out = tmp_path_factory.mktemp("cli") / "mlp.ckpt"
    argv = ["train", "--dataset", "fashion-mnist:train", "--data-dir", str(fmnist_dir), "--limit", "2000",
            "--eval-limit", "500", "--epochs", "1", "--batch-size", "32", "--out", str(out), "--json",
            "--no-progress"]
    return out, argv


def test_train_then_evaluate_json(trained, fmnist_dir, capsys):
    out, argv = trained
    assert main(argv) == 0
    summary = _json_out(capsys)
    meta = summary["metadata"]
    assert meta["arch"] == "fmnist_mlp"  # DEFAULT_ARCH["fashion-mnist"]
    assert meta["recipe"] == "standard" and meta["epochs"] == 1 and meta["n_train"] == 2000
    assert summary["test_accuracy"] >= 0.6  # 62 steps; chance is 0.10
    assert summary["checkpoint"] == str(out) and out.is_file()

    assert main(["evaluate", "--checkpoint", str(out), "--data", "fashion-mnist:test",
                 "--data-dir", str(fmnist_dir), "--limit", "500", "--json"]) == 0
    result = _json_out(capsys)
    assert result["n_images"] == 500
    assert result["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)
    assert result["metadata"]["arch"] == "fmnist_mlp" and result["metadata"]["seed"] == 0

    assert main(["evaluate", "--checkpoint", str(out), "--data", "fashion-mnist",
                 "--data-dir", str(fmnist_dir), "--limit", "100"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("accuracy: ") and "/100)" in text


def test_evaluate_on_npz(trained, fmnist_dir, tmp_path, capsys):
    """An npz copy of the first 100 test images gives the same accuracy as the IDX files."""
    from rsjax.data import load_dataset

    out, argv = trained
    if not out.is_file():
        assert main(argv) == 0
        capsys.readouterr()
    test = load_dataset("fashion-mnist:test", data_dir=fmnist_dir, limit=100)
    np.savez(tmp_path / "t.npz", images=np.round(test.images[..., 0] * 255).astype(np.uint8), labels=test.labels)
    codes = [main(["evaluate", "--checkpoint", str(out), "--data", spec, "--data-dir", str(fmnist_dir),
                   "--limit", "100", "--json"]) for spec in (f"npz:{tmp_path / 't.npz'}", "fashion-mnist:test")]
    assert codes == [0, 0]
    lines = capsys.readouterr().out.splitlines()
    a, b = json.loads(lines[0]), json.loads(lines[1])
    assert a["accuracy"] == b["accuracy"] and a["n_images"] == 100


def test_errors_exit_2_with_message(tmp_path, capsys, fmnist_dir):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.ckpt"), "--data", "fashion-mnist"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(4, np.int64))
    assert main(["train", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "--eval-data" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar:train", "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "'cifar'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "bogus", "--out", str(tmp_path / "x.ckpt")])


@pytest.mark.slow
def test_default_recipe_reaches_88_percent(tmp_path, fmnist_dir, capsys):
    """The documented default: `rsjax train --dataset fashion-mnist:train --out CKPT` (15 epochs of
    the default MLP; ~35 s on an idle 2-core CPU, see experiments/train_defaults.py for timings)."""
    out = tmp_path / "default.ckpt"
    assert main(["train", "--dataset", "fashion-mnist:train", "--data-dir", str(fmnist_dir), "--out", str(out),
                 "--json", "--no-progress"]) == 0
    summary = _json_out(capsys)
    assert summary["metadata"]["arch"] == "fmnist_mlp"
    assert summary["test_accuracy"] >= 0.88

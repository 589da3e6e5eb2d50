"""`rsjax evaluate --sigma S --n N --alpha A`: accuracy of g_{σ,n} and of PREDICT from the CLI."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from rsjax.checkpoints import save_checkpoint
from rsjax.cli import main
from rsjax.models import get_model_spec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evs")
    spec = get_model_spec("fmnist_mlp")
    ckpt = d / "mlp.ckpt"
    save_checkpoint(ckpt, "fmnist_mlp", spec.init(jax.random.PRNGKey(1)), {"recipe": "random-init"})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    from rsjax.classifier import Classifier

    labels = Classifier.from_checkpoint(str(ckpt)).predict(images[..., None] / 255.0)
    labels[:10] = (labels[:10] + 1) % 10  # 10 images the base classifier gets wrong
    np.savez(d / "data.npz", images=images, labels=labels)
    return ckpt, f"npz:{d / 'data.npz'}"


def _run(capsys, *argv):
    code = main(["evaluate", *argv])
    return code, capsys.readouterr()


def test_tiny_sigma_matches_base_and_predict_does_not_abstain(setup, capsys):
    ckpt, data = setup
    code, out = _run(capsys, "--checkpoint", str(ckpt), "--data", data, "--sigma", "1e-5", "--n", "20", "--json")
    assert code == 0
    r = json.loads(out.out)
    assert r["accuracy"] == pytest.approx(0.75)
    sm = r["smoothed"]
    assert sm["n"] == 20 and sm["sigma"] == 1e-5
    assert sm["smoothed_accuracy"] == pytest.approx(0.75)  # unanimous votes = f's labels
    assert sm["abstention_rate"] == 0.0  # 20/20 gives p ~ 2e-6 < 0.001
    assert sm["predict_accuracy"] == pytest.approx(0.75)


def test_predict_n10_alpha_0001_always_abstains(setup, capsys):
    ckpt, data = setup
    code, out = _run(capsys, "--checkpoint", str(ckpt), "--data", data, "--sigma", "1e-5", "--n", "10",
                     "--alpha", "0.001", "--json")
    assert code == 0
    sm = json.loads(out.out)["smoothed"]
    assert sm["abstention_rate"] == 1.0 and sm["predict_accuracy"] == 0.0  # the known trap
    assert sm["smoothed_accuracy"] == pytest.approx(0.75)


@pytest.mark.parametrize("extra, message", [
    (["--sigma", "0.25"], "needs both --sigma and --n"),
    (["--sigma", "-1", "--n", "10"], "--sigma must be a finite number > 0, got -1.0"),
    (["--sigma", "0.25", "--n", "0"], "--n must be an integer >= 1, got 0"),
    (["--sigma", "0.25", "--n", "10", "--alpha", "1.5"], "--alpha must lie in the open interval"),
])
def test_bad_smoothing_arguments_are_named(setup, capsys, extra, message):
    ckpt, data = setup
    code, out = _run(capsys, "--checkpoint", str(ckpt), "--data", data, *extra)
    assert code == 2
    assert message in out.err

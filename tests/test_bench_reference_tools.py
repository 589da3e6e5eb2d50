"""The model conversions benchmarks/bench_reference_tools.py relies on: its PyTorch copy of the
Flax fmnist_mlp, and the PyTorch ResNet-20 with akamaster's weights against rsjax's converted one."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: pip install -e '.[bench]'")

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_reference_tools",
                                                  REPO / "benchmarks/bench_reference_tools.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fmnist_mlp_torch_copy_matches_flax():
    import rsjax

    spec = rsjax.get_model_spec("fmnist_mlp")
    clf = rsjax.Classifier(spec, spec.init(jax.random.key(3)))
    model = _bench().flax_mlp_to_torch(clf)
    x = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        tl = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(tl, clf.logits(x), atol=1e-5, rtol=0)


def test_cifar_resnet20_torch_matches_converted(shared_dir, tmp_path):
    import rsjax
    from rsjax.models.convert import convert_file

    weights = shared_dir / "data/cifar10/resnet20-12fca82f.th"
    if not weights.exists():
        pytest.skip(f"{weights} not found")
    out = tmp_path / "r20.ckpt"
    convert_file("cifar_resnet20", str(weights), str(out))
    clf = rsjax.Classifier.from_checkpoint(str(out))
    model = _bench().cifar_resnet20_torch(weights)
    x = np.random.default_rng(1).uniform(size=(8, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        tl = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    jl = clf.logits(x)
    np.testing.assert_allclose(tl, jl, atol=1e-3 * float(np.abs(jl).max()), rtol=0)
    assert (tl.argmax(1) == jl.argmax(1)).all()

import json

import jax
import numpy as np
import pytest

import rsjax
from rsjax.checkpoints import MAGIC, load_checkpoint, read_checkpoint_header, save_checkpoint
from rsjax.models import get_model_spec


@pytest.fixture
def mlp_ckpt(tmp_path):
    spec = get_model_spec("fmnist_mlp")
    variables = spec.init(jax.random.PRNGKey(3))
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, "fmnist_mlp", variables, {"recipe": "standard", "test_accuracy": 0.5})
    return path, variables


def test_round_trip_is_bit_exact(mlp_ckpt):
    path, variables = mlp_ckpt
    loaded, meta = load_checkpoint(path)
    a = jax.tree_util.tree_leaves(variables)
    b = jax.tree_util.tree_leaves(loaded)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.asarray(x).dtype == y.dtype
        assert np.asarray(x).tobytes() == y.tobytes()
    assert meta["arch"] == "fmnist_mlp" and meta["recipe"] == "standard"
    assert meta["rsjax_version"] == rsjax.__version__
    clf = rsjax.Classifier.from_checkpoint(str(path))
    assert clf.spec.name == "fmnist_mlp"


def test_batch_stats_round_trip(tmp_path):
    spec = get_model_spec("fmnist_cnn")
    variables = spec.init(jax.random.PRNGKey(0))
    assert "batch_stats" in variables
    save_checkpoint(tmp_path / "c.ckpt", "fmnist_cnn", variables)
    loaded, _ = load_checkpoint(tmp_path / "c.ckpt", arch="fmnist_cnn")
    assert set(loaded) == {"params", "batch_stats"}


def test_truncated_rejected(mlp_ckpt):
    path, _ = mlp_ckpt
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(rsjax.CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_tampered_payload_rejected(mlp_ckpt):
    path, _ = mlp_ckpt
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(rsjax.CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_tampered_metadata_rejected(mlp_ckpt):
    path, _ = mlp_ckpt
    data = path.read_bytes()
    head, rest = data[len(MAGIC):].split(b"\n", 1)
    header = json.loads(head)
    header["metadata"]["test_accuracy"] = 0.99
    path.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + rest)
    with pytest.raises(rsjax.CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_other_architecture_rejected(mlp_ckpt, tmp_path):
    path, _ = mlp_ckpt
    with pytest.raises(rsjax.CheckpointError, match="not the requested 'fmnist_cnn'"):
        load_checkpoint(path, arch="fmnist_cnn")
    # a file whose header claims one architecture but holds another's tensors
    other = get_model_spec("fmnist_cnn").init(jax.random.PRNGKey(0))
    bad = tmp_path / "bad.ckpt"
    save_checkpoint(bad, "fmnist_cnn", other)
    raw = bad.read_bytes()
    head, rest = raw[len(MAGIC):].split(b"\n", 1)
    header = json.loads(head)
    header["arch"] = "fmnist_mlp"
    header["metadata"]["arch"] = "fmnist_mlp"
    from rsjax.checkpoints import _digest

    header["sha256"] = _digest("fmnist_mlp", header["metadata"], rest)
    bad.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + rest)
    with pytest.raises(rsjax.CheckpointError, match="do not match architecture 'fmnist_mlp'"):
        load_checkpoint(bad)


def test_missing_and_not_a_checkpoint(tmp_path):
    with pytest.raises(rsjax.CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    p = tmp_path / "x.ckpt"
    p.write_bytes(b"\x80\x04garbage pickle")
    with pytest.raises(rsjax.CheckpointError, match="not an rsjax checkpoint"):
        read_checkpoint_header(p)

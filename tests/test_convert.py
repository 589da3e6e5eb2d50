"""PyTorch -> Flax weight conversion: numerical equivalence with a PyTorch reference, file formats,
error reporting, and the trained ResNet-20 of ../shared."""
from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest

import rsjax
from rsjax.checkpoints import load_checkpoint
from rsjax.cli import main as cli_main
from rsjax.errors import CheckpointError
from rsjax.models import get_model_spec
from rsjax.models.convert import (
    convert_state_dict,
    expected_tensors,
    load_state_dict,
)
from rsjax.models.features import stage_features

CIFAR_RESNETS = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56"]
LOGIT_TOL = 1e-4
STAGE_TOL = 1e-3


def flax_to_torch_layout(arch: str, variables: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Inverse of the converter (key names from expected_tensors, checked against real PyTorch keys
    by the reference tests below): Flax variables -> a PyTorch-layout
    state_dict (OIHW convs, [out, in] linears, BN running stats, plus num_batches_tracked)."""
    sd: dict[str, np.ndarray] = {}
    for key, target in expected_tensors(arch).items():
        node = variables[target.collection]
        for name in target.path:
            node = node[name]
        a = np.asarray(node)
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        elif a.ndim == 2:
            a = a.T
        sd[prefix + key] = np.ascontiguousarray(a)
        if key.endswith(".running_var"):
            sd[prefix + key.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
    return sd


@pytest.fixture(scope="module")
def resnet20_variables():
    spec = get_model_spec("cifar_resnet20")
    v = jax.jit(spec.init)(jax.random.PRNGKey(3))
    rng = np.random.default_rng(3)
    # random BN statistics so that mean/var are not the init's 0/1
    v = jax.tree_util.tree_map(np.asarray, v)
    for bn in jax.tree_util.tree_leaves(v["batch_stats"], is_leaf=lambda t: isinstance(t, dict) and "mean" in t):
        bn["mean"] = rng.normal(0, 0.2, bn["mean"].shape).astype(np.float32)
        bn["var"] = rng.uniform(0.5, 2.0, bn["var"].shape).astype(np.float32)
    return v


def _assert_trees_equal(a, b):
    fa = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_flatten_with_path(a)[0]}
    fb = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_flatten_with_path(b)[0]}
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


# ---------------------------------------------------------------- mapping, no PyTorch needed


def test_expected_tensor_names_follow_torchvision_layout():
    keys = expected_tensors("resnet50")
    assert len(keys) == 267  # torchvision resnet50: 320 state_dict entries minus 53 num_batches_tracked
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
              "layer4.2.bn3.bias", "fc.weight", "fc.bias"]:
        assert k in keys
    assert keys["conv1.weight"].torch_shape == (64, 3, 7, 7)
    assert keys["fc.weight"].torch_shape == (1000, 2048)
    assert "layer1.1.downsample.0.weight" not in keys
    k20 = expected_tensors("cifar_resnet20")
    assert len(k20) == 97 and "linear.weight" in k20 and "layer3.2.bn2.running_mean" in k20


def test_safetensors_round_trip_is_bit_exact(tmp_path, resnet20_variables):
    from safetensors.numpy import save_file

    sd = flax_to_torch_layout("cifar_resnet20", resnet20_variables, prefix="module.")
    path = tmp_path / "r20.safetensors"
    save_file(sd, str(path))
    loaded = load_state_dict(str(path))
    assert set(loaded) == set(sd)
    _assert_trees_equal(convert_state_dict("cifar_resnet20", loaded), resnet20_variables)


def test_cli_converts_safetensors_without_torch(tmp_path, resnet20_variables, monkeypatch, capsys):
    from safetensors.numpy import save_file

    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    path = tmp_path / "r20.safetensors"
    save_file(flax_to_torch_layout("cifar_resnet20", resnet20_variables), str(path))
    out = tmp_path / "r20.ckpt"
    rc = cli_main(["convert", "--arch", "cifar_resnet20", "--weights", str(path), "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recipe"] == "converted" and summary["source"] == "r20.safetensors"
    assert summary["source_format"] == "safetensors" and len(summary["source_sha256"]) == 64
    assert summary["n_tensors_converted"] == 97 and summary["n_tensors_ignored"] == 19
    variables, meta = load_checkpoint(out, arch="cifar_resnet20")
    assert meta["source_sha256"] == summary["source_sha256"] and meta["arch"] == "cifar_resnet20"
    _assert_trees_equal(variables, resnet20_variables)


def test_missing_unexpected_and_misshaped_tensors_are_named(resnet20_variables):
    sd = flax_to_torch_layout("cifar_resnet20", resnet20_variables)
    del sd["layer2.1.bn1.running_var"]
    sd["layer9.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
    sd["linear.weight"] = sd["linear.weight"].T  # [64, 10] instead of [10, 64]
    with pytest.raises(CheckpointError) as e:
        convert_state_dict("cifar_resnet20", sd)
    msg = str(e.value)
    assert "1 missing: layer2.1.bn1.running_var" in msg
    assert "1 unexpected: layer9.0.conv1.weight" in msg
    assert "1 mis-shaped: linear.weight (64, 10) (expected (10, 64))" in msg


def test_stray_num_batches_tracked_is_not_ignored(resnet20_variables):
    sd = flax_to_torch_layout("cifar_resnet20", resnet20_variables)
    sd["linear.num_batches_tracked"] = np.array(1, np.int64)  # linear is not a BatchNorm
    with pytest.raises(CheckpointError, match="unexpected: linear.num_batches_tracked"):
        convert_state_dict("cifar_resnet20", sd)


def test_wrong_architecture_is_reported(resnet20_variables):
    sd = flax_to_torch_layout("cifar_resnet20", resnet20_variables)
    with pytest.raises(CheckpointError, match=r"missing: .*layer1\.3\..*Is --arch right"):
        convert_state_dict("cifar_resnet32", sd)
    with pytest.raises(CheckpointError, match=r"unexpected: .*layer1\.0\.bn1"):
        convert_state_dict("resnet50", sd)


def test_pth_without_torch_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not really a checkpoint")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CheckpointError, match=r"pip install 'rsjax\[torch\]'"):
        load_state_dict(str(path))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_state_dict(str(tmp_path / "nope.pth"))
    assert cli_main(["convert", "--arch", "resnet50", "--weights", str(tmp_path / "nope.pth"),
                     "--out", str(tmp_path / "o.ckpt")]) == 2


# ---------------------------------------------------------------- against a PyTorch reference


def _compare_with_torch(arch: str, batch: int, seed: int) -> dict:
    torch = pytest.importorskip("torch")
    from torch_reference_resnets import build_reference, randomize, state_dict_numpy

    ref = randomize(build_reference(arch), seed)
    spec = get_model_spec(arch)
    variables = convert_state_dict(arch, state_dict_numpy(ref))
    x = np.random.default_rng(seed).random((batch, *spec.input_shape), dtype=np.float32)
    with torch.no_grad():
        want = {k: v.numpy() for k, v in ref.forward_stages(torch.from_numpy(x).permute(0, 3, 1, 2)).items()}
    logits, feats = jax.jit(lambda v, x: stage_features(spec.module(), v, x))(variables, x)
    logits = np.asarray(logits)
    assert set(feats) | {"logits"} == set(want)
    errors = {"logits": float(np.abs(logits - want["logits"]).max())}
    for name, got in feats.items():
        w = want[name] if want[name].ndim == 2 else want[name].transpose(0, 2, 3, 1)
        assert got.shape == w.shape, name
        errors[name] = float(np.abs(np.asarray(got) - w).max())
    print(f"{arch}: max |delta| per stage {errors}; logit range "
          f"[{want['logits'].min():.2f}, {want['logits'].max():.2f}]")
    assert np.ptp(want["logits"]) > 1.0  # logits not degenerate, so the tolerance means something
    assert errors["logits"] <= LOGIT_TOL
    assert (logits.argmax(1) == want["logits"].argmax(1)).all()
    for name, err in errors.items():
        assert err <= STAGE_TOL, (name, err)
    return errors


@pytest.mark.parametrize("arch", CIFAR_RESNETS)
def test_cifar_resnet_matches_torch_reference(arch):
    _compare_with_torch(arch, batch=8, seed=11)


def test_resnet50_matches_torch_reference():
    _compare_with_torch("resnet50", batch=2, seed=5)


def test_pth_wrapper_with_module_prefix_through_cli(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from torch_reference_resnets import build_reference, randomize

    ref = randomize(build_reference("cifar_resnet20"), 2)
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    path = tmp_path / "wrapped.th"
    torch.save({"state_dict": sd, "best_prec1": 12.5, "epoch": 3}, str(path))
    out = tmp_path / "r20.ckpt"
    assert cli_main(["convert", "--arch", "cifar_resnet20", "--weights", str(path), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source_format"] == "torch" and summary["n_tensors_ignored"] == 19
    clf = rsjax.Classifier.from_checkpoint(str(out))
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(clf.logits(x, batch_size=4), want, atol=LOGIT_TOL, rtol=0)


def test_torch_load_refuses_arbitrary_pickles(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": _NotATensor()}, str(path))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict(str(path))


class _NotATensor:
    """A user class: torch.load(weights_only=True) must refuse to unpickle it."""


# ---------------------------------------------------------------- the trained ResNet-20 of ../shared


@pytest.fixture(scope="module")
def converted_resnet20(shared_dir, tmp_path_factory):
    pytest.importorskip("torch")
    weights = shared_dir / "data" / "cifar10" / "resnet20-12fca82f.th"
    out = tmp_path_factory.mktemp("real") / "resnet20.ckpt"
    assert cli_main(["convert", "--arch", "cifar_resnet20", "--weights", str(weights), "--out", str(out)]) == 0
    return weights, out


@pytest.mark.shared
def test_real_resnet20_converts_with_recorded_provenance(converted_resnet20):
    weights, out = converted_resnet20
    _, meta = load_checkpoint(out, arch="cifar_resnet20")
    assert meta["source"] == "resnet20-12fca82f.th" and meta["recipe"] == "converted"
    assert meta["source_sha256"].startswith("12fca82f")


@pytest.mark.shared
def test_real_resnet20_logits_match_pytorch_original(converted_resnet20, shared_dir):
    import torch
    from torch_reference_resnets import build_reference

    weights, out = converted_resnet20
    ref = build_reference("cifar_resnet20").eval()
    sd = torch.load(str(weights), map_location="cpu", weights_only=True)["state_dict"]
    ref.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()}, strict=True)
    data = np.load(shared_dir / "data" / "cifar10" / "test_jpeg.npz")
    x = data["images"][:64].astype(np.float32) / 255.0
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = rsjax.Classifier.from_checkpoint(str(out)).logits(x, batch_size=64)
    err = float(np.abs(got - want).max())
    print(f"real ResNet-20: max |delta logit| vs PyTorch on 64 images = {err:.2e}")
    assert err <= LOGIT_TOL
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.shared
def test_real_resnet20_accuracy(converted_resnet20, shared_dir):
    _, out = converted_resnet20
    clf = rsjax.Classifier.from_checkpoint(str(out))
    first20 = np.load(shared_dir / "data" / "cifar10" / "test_first20_lossless.npz")
    pred20 = clf.logits(first20["images"].astype(np.float32) / 255.0, batch_size=32).argmax(1)
    np.testing.assert_array_equal(pred20, first20["labels"])
    test = np.load(shared_dir / "data" / "cifar10" / "test_jpeg.npz")
    assert test["images"].shape == (10_000, 32, 32, 3)
    pred = clf.logits(test["images"].astype(np.float32) / 255.0, batch_size=500).argmax(1)
    accuracy = float((pred == test["labels"]).mean())
    print(f"converted ResNet-20 on test_jpeg.npz: {accuracy:.4f} ({len(pred)} images)")
    assert accuracy >= 0.80

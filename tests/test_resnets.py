"""Architecture tests of the Flax ResNets (no PyTorch needed except where imported)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax.models import get_model_spec, list_models
from rsjax.models.cifar_resnet import shortcut_option_a
from rsjax.models.features import stage_features

# Parameter counts (weights + biases + BN affine; not running stats) of the published models:
# torchvision resnet50 has 25,557,032; akamaster's CIFAR ResNets 0.27M / 0.46M / 0.66M / 0.85M.
PARAM_COUNTS = {
    "cifar_resnet20": 269_722,
    "cifar_resnet32": 464_154,
    "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018,
    "resnet50": 25_557_032,
}
RESNETS = list(PARAM_COUNTS)

STAGE_SHAPES = {
    "cifar_resnet20": {"stem": (32, 32, 16), "layer1": (32, 32, 16), "layer2": (16, 16, 32),
                       "layer3": (8, 8, 64), "pool": (64,)},
    "resnet50": {"stem": (56, 56, 64), "layer1": (56, 56, 256), "layer2": (28, 28, 512),
                 "layer3": (14, 14, 1024), "layer4": (7, 7, 2048), "pool": (2048,)},
}


def _n_params(tree) -> int:
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(tree)))


def test_resnets_are_registered():
    assert set(RESNETS) <= set(list_models())
    for name in RESNETS:
        assert get_model_spec(name).has_batch_stats


@pytest.mark.parametrize("name", RESNETS)
def test_parameter_count_and_variable_shapes(name):
    spec = get_model_spec(name)
    shapes = jax.eval_shape(spec.init, jax.random.PRNGKey(0))
    assert _n_params(shapes["params"]) == PARAM_COUNTS[name]
    assert set(shapes) == {"params", "batch_stats"}


@pytest.mark.parametrize("name", RESNETS)
def test_parameter_count_matches_torch_reference(name):
    pytest.importorskip("torch")
    from torch_reference_resnets import build_reference

    ref = build_reference(name)
    assert sum(p.numel() for p in ref.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "resnet50"])
def test_output_shape_and_finite(name):
    spec = get_model_spec(name)
    variables = jax.jit(spec.init)(jax.random.PRNGKey(1))  # eager init of ResNet-50 takes ~30 s
    batch = 2
    x = np.random.default_rng(0).random((batch, *spec.input_shape), dtype=np.float32)
    out = jax.jit(lambda v, x: spec.module().apply(v, x, train=False))(variables, x)
    assert out.shape == (batch, spec.num_classes)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("name", sorted(STAGE_SHAPES))
def test_stage_features_shapes(name):
    spec = get_model_spec(name)
    variables = jax.eval_shape(spec.init, jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((2, *spec.input_shape), jnp.float32)
    logits, feats = jax.eval_shape(lambda v, x: stage_features(spec.module(), v, x), variables, x)
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == STAGE_SHAPES[name]
    assert logits.shape == (2, spec.num_classes)


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = jnp.arange(2 * 4 * 4 * 16, dtype=jnp.float32).reshape(2, 4, 4, 16) + 1.0
    y = shortcut_option_a(x, planes=32)
    assert y.shape == (2, 2, 2, 32)
    np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., :8], 0.0)
    np.testing.assert_array_equal(y[..., 24:], 0.0)


def test_train_mode_uses_batch_statistics_and_updates_running_averages():
    spec = get_model_spec("cifar_resnet20")
    module = spec.module()
    variables = spec.init(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
    out_train, state = module.apply(variables, x, train=True, mutable=["batch_stats"])
    out_eval = module.apply(variables, x, train=False)
    assert out_train.shape == out_eval.shape == (4, 10)
    assert not np.allclose(out_train, out_eval)
    # Flax momentum 0.9 (PyTorch 0.1): running = 0.9 * running + 0.1 * batch mean of bn1's input
    h = (x - jnp.asarray(module.mean)) / jnp.asarray(module.std)
    conv = jax.lax.conv_general_dilated(
        h, variables["params"]["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    expected = 0.9 * variables["batch_stats"]["bn1"]["mean"] + 0.1 * conv.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"], expected, rtol=1e-5, atol=1e-6)


def test_classifier_runs_a_cifar_resnet():
    spec = get_model_spec("cifar_resnet20")
    clf = rsjax.Classifier(spec, spec.init(jax.random.PRNGKey(0)))
    out = clf.logits(np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32), batch_size=4)
    assert out.shape == (3, 10)
    with pytest.raises(rsjax.InputError, match="expects images of shape"):
        clf.logits(np.zeros((2, 28, 28, 1), np.float32))

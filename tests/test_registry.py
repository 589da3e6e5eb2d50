import jax
import numpy as np
import pytest

import rsjax
from rsjax.models import get_model_spec, list_models


def test_unknown_model_is_named():
    with pytest.raises(rsjax.InputError, match="no_such_net"):
        get_model_spec("no_such_net")


@pytest.mark.parametrize("name", ["fmnist_mlp", "fmnist_cnn"])
def test_small_models_shape_and_param_count(name):
    spec = get_model_spec(name)
    variables = spec.init(jax.random.PRNGKey(0))
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    expected = {"fmnist_mlp": 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10}
    if name in expected:
        assert n_params == expected[name]
    clf = rsjax.Classifier(spec, variables)
    out = clf.logits(np.random.rand(5, *spec.input_shape).astype(np.float32))
    assert out.shape == (5, spec.num_classes)
    with pytest.raises(rsjax.InputError, match="expects images of shape"):
        clf.logits(np.zeros((2, 32, 32, 3), np.float32))


def test_registry_lists_models():
    assert {"fmnist_mlp", "fmnist_cnn"} <= set(list_models())

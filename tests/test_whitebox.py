"""White-box minimal-L2 adversarial (DDN + boundary bisection) against closed forms."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.errors import InputError
from rsjax.models import get_model_spec
from rsjax.models.linear import l2_distance_to_hyperplane, linear_logits_fn
from rsjax.whitebox import minimal_l2_adversarial

SHAPE = (5, 5, 1)


def linear_case(seed=0, count=6):
    """Points inside the box on both sides of a hyperplane, at distances 0.05..0.3 (no clipping)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=SHAPE).astype(np.float32)
    wn = w / np.linalg.norm(w)
    base = np.full(SHAPE, 0.5, np.float32)
    b = -float(np.sum(base * w))  # the plane goes through the centre of the box
    dist = np.linspace(0.05, 0.3, count) * np.where(np.arange(count) % 2 == 0, 1.0, -1.0)
    x = (base[None] + dist[:, None, None, None] * wn[None]).astype(np.float32)
    return w, b, x


def test_linear_output_is_the_projection_on_the_hyperplane():
    w, b, x = linear_case()
    fn = linear_logits_fn(w, b)
    y = np.asarray(jnp.argmax(fn(jnp.asarray(x)), axis=-1))
    assert set(y.tolist()) == {0, 1}
    res = minimal_l2_adversarial(fn, x, y)
    exact = l2_distance_to_hyperplane(x, w, b)
    assert res.success.all() and not res.misclassified.any()
    np.testing.assert_allclose(res.l2, exact, rtol=1e-5, atol=1e-4)  # refine_tol = 1e-4
    assert np.all(res.l2 >= exact - 1e-5)  # never before the plane
    d = (res.x_adv - x).reshape(len(x), -1)
    cos = np.abs(d @ w.ravel()) / (np.linalg.norm(d, axis=1) * np.linalg.norm(w))
    assert np.all(cos > 1 - 1e-5)
    # the output has crossed the plane (float32 rounding of w.x + b is ~1e-6)
    signed = (res.x_adv.reshape(len(x), -1) @ w.ravel() + b) / np.linalg.norm(w)
    side = np.where(y == 1, 1.0, -1.0)
    assert np.all(signed * side < 1e-5)


def test_misclassified_image_gets_zero_distance():
    w, b, x = linear_case()
    fn = linear_logits_fn(w, b)
    y = np.asarray(jnp.argmax(fn(jnp.asarray(x)), axis=-1))
    wrong = 1 - y
    res = minimal_l2_adversarial(fn, x[:2], wrong[:2])
    assert res.misclassified.all() and res.success.all()
    np.testing.assert_array_equal(res.l2, 0.0)
    np.testing.assert_array_equal(res.x_adv, x[:2])


def test_batch_invariance_and_boundary_on_random_mlp():
    spec = get_model_spec("fmnist_mlp")
    variables = spec.init(jax.random.key(3))
    module = spec.build()

    def fn(x):
        return module.apply(variables, x, train=False)

    x = np.asarray(jax.random.uniform(jax.random.key(4), (4, 28, 28, 1)), np.float32)
    y = np.asarray(jnp.argmax(fn(jnp.asarray(x)), -1))
    res = minimal_l2_adversarial(fn, x, y, steps=60)
    one = minimal_l2_adversarial(fn, x[1:2], y[1:2], steps=60)
    np.testing.assert_allclose(one.x_adv[0], res.x_adv[1], atol=1e-5)
    assert res.success.all()
    assert np.all((res.x_adv >= 0) & (res.x_adv <= 1))
    lab_adv = np.asarray(jnp.argmax(fn(jnp.asarray(res.x_adv)), -1))
    before = x + 0.99 * (res.x_adv - x)
    lab_before = np.asarray(jnp.argmax(fn(jnp.asarray(before)), -1))
    assert np.all(lab_adv != y)
    assert np.all(lab_before == y)  # the bisection put x_adv on the boundary of the segment


@pytest.mark.parametrize("kw", [{"gamma": 1.5}, {"steps": 0}, {"init_norm": -1.0}])
def test_bad_settings_raise(kw):
    w, b, x = linear_case()
    with pytest.raises(InputError):
        minimal_l2_adversarial(linear_logits_fn(w, b), x, np.zeros(len(x), int), **kw)


def test_bad_shapes_raise():
    w, b, x = linear_case()
    fn = linear_logits_fn(w, b)
    with pytest.raises(InputError):
        minimal_l2_adversarial(fn, x[0], [0])
    with pytest.raises(InputError):
        minimal_l2_adversarial(fn, x, [0, 1])

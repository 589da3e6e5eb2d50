"""The white-box floor (rsjax.smoothadv): on the exact linear classifier its verified distortion
is the exact level-P_a distance of eq. (6); batch independence; no NaN; settings validated."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from rsjax.errors import InputError
from rsjax.models.linear import linear_logits_fn
from rsjax.oracle import SmoothedOracle, image_keys
from rsjax.smoothadv import smoothadv_minimal
from rsjax.theory import distortion_lower_bound
from rsjax.verify import VerifyConfig, level_test_plan, verify_attack

from test_verify import SIGMA, exact_t, linear_setup, signed_distance


def _keys(count, seed=0):
    return image_keys(jax.random.key(seed), jax.numpy.arange(count))


def test_linear_direction_is_the_normal_and_verified_distance_is_eq6():
    """Every gradient of the soft classifier of a linear f is parallel to w, so delta_best is
    along the normal; verified against g_{sigma,n} (n in 1, 10, 100; P_a = 0.5) the distortion
    lies in the window the test states, [d(P_a), d(accept_level)] (1 + rel_tol), where d(p) is
    the exact distance of eq. (6) at level p along the normal (the tolerance: d(accept_level) -
    d(P_a), 0.21 at n = 1, 0.08 at n = 10, 0.03 at n = 100 with sigma = 0.25 and the
    evaluator at 100 calls, 99.9 % confidence and power)."""
    x_o, w, b = linear_setup()
    f = linear_logits_fn(w, b)
    res = smoothadv_minimal(f, x_o, np.zeros(4), _keys(4), SIGMA, m=32, steps=60)
    assert res.success.all() and np.isfinite(res.l2).all()
    assert not np.isnan(res.x_adv).any()
    step = np.linalg.norm((res.x_adv - x_o).reshape(4, -1), axis=1)
    np.testing.assert_allclose(step, 0.0625 * np.maximum(res.l2, 1e-3), rtol=1e-4)  # x_o + delta / 16
    nrm = (w / np.linalg.norm(w)).ravel()
    d = res.delta.reshape(4, -1)
    cos = d @ nrm / np.linalg.norm(d, axis=1)
    assert np.all(cos > 1 - 1e-4), cos
    r_o = -signed_distance(x_o, w, b)
    cfg = VerifyConfig(confidence=0.999, power=0.999)  # 100 calls per test
    for n in (1, 10, 100):
        ver = verify_attack(SmoothedOracle(f, 2, SIGMA, n), x_o, res.x_adv, np.zeros(4), 0.5, jax.random.key(7),
                            config=cfg)
        assert ver.verified.all()
        tol = level_test_plan(0.5, cfg).accept_level
        eq6 = distortion_lower_bound(r_o, SIGMA, n, 0.5)
        for i in range(4):
            dd = res.x_adv[i] - x_o[i]
            lo = exact_t(x_o[i], dd, w, b, n, 0.5)
            hi = exact_t(x_o[i], dd, w, b, n, tol)
            assert lo * (1 - 1e-6) <= ver.t[i] <= hi * (1 + cfg.rel_tol) + 1e-9
            # along the normal, t(P_a) is eq. (6) itself: the floor is tight on the linear classifier
            assert ver.l2[i] >= eq6[i] - 1e-5
            top = distortion_lower_bound(r_o[i], SIGMA, n, tol) * (1 + cfg.rel_tol)
            assert ver.l2[i] <= top + 1e-6, (n, i, ver.l2[i], eq6[i], top)


@pytest.mark.parametrize("resample", [False, True])
def test_batch_independence_and_no_nan(resample):
    """Image i's result depends on its own key only (same output alone or in a batch)."""
    x_o, w, b = linear_setup()
    f = linear_logits_fn(w, b)
    keys = _keys(4, 3)
    full = smoothadv_minimal(f, x_o, np.zeros(4), keys, SIGMA, m=4, steps=10, resample=resample)
    for i in (0, 3):
        one = smoothadv_minimal(f, x_o[i:i + 1], np.zeros(1), keys[i:i + 1], SIGMA, m=4, steps=10,
                                resample=resample)
        np.testing.assert_allclose(one.x_adv[0], full.x_adv[i], atol=1e-6)
        np.testing.assert_allclose(one.l2[0], full.l2[i], rtol=1e-5)
    assert np.isfinite(full.x_adv).all() and full.samples == 40


def test_zero_gradient_gives_no_nan():
    """A constant classifier (zero gradient everywhere, never adversarial): no NaN, no success,
    the candidate is x_o itself."""
    def const(x):
        return jax.numpy.tile(jax.numpy.array([[1.0, 0.0]]), (x.shape[0], 1))

    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    res = smoothadv_minimal(const, x, np.zeros(2), _keys(2), SIGMA, m=4, steps=5)
    assert not res.success.any() and np.all(res.l2 == np.inf)
    np.testing.assert_array_equal(res.x_adv, x)


@pytest.mark.parametrize("kw", [{"m": 0}, {"steps": 0}, {"target": 1.0}, {"shrink": 0.0}, {"gamma": 1.0}, {"min_norm": 0.0}])
def test_bad_settings_raise(kw):
    x_o, w, b = linear_setup()
    with pytest.raises(InputError):
        smoothadv_minimal(linear_logits_fn(w, b), x_o, np.zeros(4), _keys(4), SIGMA, **kw)

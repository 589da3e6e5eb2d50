"""RayS: L-inf accuracy on a linear classifier, batch invariance, robustness to random and
constant oracles, status reporting, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from rsjax.attacks import RayS
from rsjax.models.linear import linf_distance_to_hyperplane
from test_attacks_common import (
    CoinOracle, ConstantOracle, assert_same_result, assert_sane, check_row_equal, linear_problem,
)


@pytest.fixture(scope="module")
def rays():
    return RayS()


@pytest.fixture(scope="module")
def problem():
    # D = 64: the hierarchical search reaches single-coordinate blocks within the budget
    return linear_problem(8, [0.02, 0.04, 0.06, 0.08], seed=3, norm="linf")


def test_linear_linf_within_5_percent(rays, problem):
    x, y, w, b, oracle = problem
    res = rays.run(oracle, x, y, 0, 1000)
    assert_sane(res, 1000)
    assert (res.status == "attacked").all() and (res.queries == 1000).all()
    true = linf_distance_to_hyperplane(x, w, b)
    ratio = res.linf / true
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.05).all(), ratio
    # the final point is adversarial, its norms are the reported ones, the trace ends there
    x_adv = res.x_adv.reshape(len(x), -1).astype(np.float64)
    assert ((x_adv @ w.ravel() + b) <= 0).all()
    diff = (res.x_adv - x).reshape(len(x), -1)
    np.testing.assert_allclose(np.abs(diff).max(axis=1), res.linf, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(diff, axis=1), res.l2, rtol=1e-5)
    np.testing.assert_array_equal(res.distortion_at(1000, "linf"), res.linf)
    assert (res.distortion_at(100, "linf") > res.linf).all()


def test_batched_equals_one_at_a_time(rays):
    x, y, _, _, oracle = linear_problem(8, [0.02, 0.04, 0.06, 0.08, 0.03, 0.05, 0.07, 0.09], seed=4,
                                        norm="linf")
    y = y.copy()
    y[[0, 2, 5, 7]] = 0
    ids = np.arange(100, 108)
    batched = rays.run(oracle, x, y, 11, 300, image_ids=ids)
    assert (batched.status == "misclassified").sum() == 4 and (batched.status == "attacked").sum() == 4
    for i in range(len(x)):
        single = rays.run(oracle, x[i : i + 1], y[i : i + 1], 11, 300, image_ids=ids[i : i + 1])
        check_row_equal(batched, i, single)


def test_same_seed_same_result(rays, problem):
    x, y, _, _, _ = problem
    coin = CoinOracle()  # one instance: one compilation
    a = rays.run(coin, x, y, 3, 200)
    b = rays.run(coin, x, y, 3, 200)
    assert_same_result(a, b)
    c = rays.run(coin, x, y, 4, 200)
    assert not np.array_equal(a.status, c.status) or not np.array_equal(a.linf, c.linf)


def test_coin_flip_oracle_no_nan_budget_exact(rays, problem):
    x, y, _, _, _ = problem
    res = rays.run(CoinOracle(evals=10), x, y, 0, 300)
    assert_sane(res, 300)
    assert (res.evaluations == 10 * res.queries).all()
    att = res.status == "attacked"
    assert (res.queries[att] == 300).all()


def test_constant_oracles(rays, problem):
    x, y, _, _, _ = problem
    never = rays.run(ConstantOracle(False), x, y, 0, 50)
    assert_sane(never, 50)
    assert (never.status == "no_start").all() and (never.queries == 50).all()
    always = rays.run(ConstantOracle(True), x, y, 0, 50)
    assert (always.status == "misclassified").all() and (always.linf == 0).all()


@pytest.mark.parametrize("criterion,p_a", [("label", None), ("level", 0.8)])
def test_under_randomized_smoothing_no_nan_exact_budget_reproducible(rays, problem, criterion, p_a):
    from rsjax.models.linear import linear_logits_fn
    from rsjax.oracle import SmoothedOracle

    x, y, w, b, _ = problem
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, sigma=0.25, n=10, criterion=criterion, p_a=p_a)
    a = rays.run(oracle, x, y, 0, 300)
    assert_sane(a, 300)
    assert (a.evaluations <= 10 * a.queries).all() and (a.evaluations >= a.queries).all()
    assert (a.queries[a.status != "misclassified"] == 300).all()
    assert_same_result(a, rays.run(oracle, x, y, 0, 300))

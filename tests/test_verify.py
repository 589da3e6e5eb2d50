"""The evaluator (rsjax.verify): the sequential level test, verified distortions on the exact
linear classifier against closed forms, lucky points of a coin-flip oracle, and the separation
of the evaluator's calls from the attack's budget."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import optimize, stats

from rsjax.attacks import get_attack
from rsjax.errors import InputError
from rsjax.models.linear import linear_logits_fn
from rsjax.oracle import SmoothedOracle
from rsjax.theory import distortion_lower_bound, prob_wrong_majority
from rsjax.verify import (VerifyConfig, acceptance_probability, level_at_points, level_test_plan,
                          look_schedule, verify_attack)

from test_attacks_common import CoinOracle

SIGMA = 0.25


def test_look_schedule_and_plan_validate():
    assert look_schedule(100, 4).tolist() == [13, 25, 50, 100]
    assert look_schedule(1, 4).tolist() == [1]
    with pytest.raises(InputError, match="P_a"):
        level_test_plan(1.0)
    with pytest.raises(InputError, match="verify calls"):
        VerifyConfig(calls=0).validate()
    with pytest.raises(InputError, match="growth"):
        VerifyConfig(growth=1.0).validate()


@pytest.mark.parametrize("p_a", [0.5, 0.8])
def test_sequential_test_error_and_power(p_a):
    """P[accept | level <= P_a] <= 1 - confidence (exact, over all looks), and the stated
    tolerance accept_level has acceptance probability >= power; checked by simulation too."""
    cfg = VerifyConfig()
    test = level_test_plan(p_a, cfg)
    assert acceptance_probability(test, [p_a])[0] <= 1 - cfg.confidence + 1e-12
    assert acceptance_probability(test, [p_a - 0.1])[0] < acceptance_probability(test, [p_a])[0]
    assert acceptance_probability(test, [test.accept_level])[0] >= cfg.power
    assert p_a < test.accept_level < min(1.0, p_a + 0.25)
    # simulation of the same test with Bernoulli answers (numpy, seeded)
    rng = np.random.default_rng(0)
    for p, expect in ((p_a, acceptance_probability(test, [p_a])[0]),
                      (test.accept_level, acceptance_probability(test, [test.accept_level])[0])):
        acc = 0
        for _ in range(4000):
            draws = rng.random(cfg.calls) < p
            for c, a, r in zip(test.looks, test.accept, test.reject):
                k = draws[:c].sum()
                if k >= a:
                    acc += 1
                    break
                if k <= r:
                    break
        assert abs(acc / 4000 - expect) < 4 * np.sqrt(expect * (1 - expect) / 4000) + 1e-3


# ---------------------------------------------------------------------------------------------
# The exact linear classifier under RS: class 0 (the reference, which wins ties) on the x_o side
# ---------------------------------------------------------------------------------------------
def linear_setup(seed=0, side=8, r_o=(0.10, 0.15, 0.20, 0.25)):
    """Images at distance r_o inside class 0 of f(x) = [w.x + b > 0], in the middle of the box."""
    rng = np.random.default_rng(seed)
    shape = (side, side, 1)
    w = rng.normal(size=shape)
    x = 0.5 + 0.02 * rng.uniform(-1, 1, size=(len(r_o),) + shape)
    s = x.reshape(len(r_o), -1) @ w.ravel()
    b = -float(s.mean())
    r_o = np.asarray(r_o)
    x = x + ((-r_o * np.linalg.norm(w) - (s + b)) / np.sum(w * w))[:, None, None, None] * w[None]
    return x.astype(np.float32), w.astype(np.float32), b


def signed_distance(x, w, b):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return (x @ w.ravel().astype(np.float64) + b) / np.linalg.norm(w)


def exact_level(x, w, b, n):
    """P[g_{sigma,n}(x) != 0] = P[Bin(n, q) >= n~], q = Phi(s / sigma) (class 0 wins ties)."""
    return prob_wrong_majority(n, stats.norm.cdf(signed_distance(x, w, b) / SIGMA))


def exact_t(x_o, d, w, b, n, level):
    """The first t at which clip(x_o + t d) reaches the exact level ``level`` (the clipped ray
    bends at the box, so the level along it need not be monotone: scan, then bracket)."""
    def g(t):
        return exact_level(np.clip(x_o + t * d, 0, 1)[None], w, b, n)[0] - level
    grid = np.concatenate([[0.0], np.geomspace(1e-3, 1e7, 6000)])
    vals = exact_level(np.clip(x_o[None] + grid[:, None, None, None] * d[None], 0, 1), w, b, n) - level
    k = int(np.flatnonzero(vals >= 0)[0])
    return optimize.brentq(g, grid[k - 1], grid[k], xtol=1e-12)


@pytest.mark.parametrize("n", [1, 10, 100])
def test_verified_distortion_matches_exact_level_distance(n):
    """For every item the verified t lies in [t(P_a), t(accept_level)] (x (1 + rel_tol)), the
    exact ray parameters at which the closed-form level equals P_a and the test's stated
    tolerance, and the verified distortion is never below eq. (6)'s bound."""
    x_o, w, b = linear_setup()
    f = linear_logits_fn(w, b)
    oracle = SmoothedOracle(f, 2, SIGMA, n)
    angles = [0.0, 25.0, 45.0, 60.0]
    rng = np.random.default_rng(1)
    nrm = (w / np.linalg.norm(w)).ravel()
    r_o = -signed_distance(x_o, w, b)
    x_a = []
    for xo, ang, r in zip(x_o, angles, r_o):
        v = rng.normal(size=nrm.shape)
        v -= (v @ nrm) * nrm
        v /= np.linalg.norm(v)
        u = np.cos(np.radians(ang)) * nrm + np.sin(np.radians(ang)) * v
        # 40 % of the way to the boundary of f along u: a lucky point deep in the certified ball
        x_a.append(xo.ravel() + 0.4 * (r / np.cos(np.radians(ang))) * u)
    x_a = np.asarray(x_a, np.float32).reshape(x_o.shape)
    cfg = VerifyConfig(calls=400, confidence=0.999, power=0.999)
    for p_a in (0.5, 0.8):
        ver = verify_attack(oracle, x_o, x_a, np.zeros(4), p_a, jax.random.key(5), config=cfg)
        assert ver.verified.all()
        tol = level_test_plan(p_a, cfg).accept_level
        for i in range(4):
            d = x_a[i] - x_o[i]
            t_lo = exact_t(x_o[i], d, w, b, n, p_a)
            t_hi = exact_t(x_o[i], d, w, b, n, tol)
            assert t_lo * (1 - 1e-6) <= ver.t[i] <= t_hi * (1 + cfg.rel_tol) + 1e-9, (n, p_a, i, t_lo, ver.t[i], t_hi)
            assert ver.l2[i] >= float(distortion_lower_bound(r_o[i], SIGMA, n, p_a)) - 1e-6
            assert ver.level[i] >= p_a  # accepted on a lower confidence bound >= P_a
            assert ver.level_low[i] <= ver.level[i] <= ver.level_high[i]
        # the lucky points themselves are far below P_a
        assert np.all(exact_level(x_a, w, b, n) < p_a)


def test_verified_at_t1_when_already_of_level():
    """An output already of level P_a is verified where it is: t = 1, distortion unchanged."""
    x_o, w, b = linear_setup()
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 10)
    nrm = (w / np.linalg.norm(w))
    r_o = -signed_distance(x_o, w, b)
    x_a = (x_o + (r_o + 2 * SIGMA)[:, None, None, None] * nrm[None]).astype(np.float32)
    ver = verify_attack(oracle, x_o, x_a, np.zeros(4), 0.5, jax.random.key(0))
    assert ver.verified.all() and np.all(ver.t == 1.0) and np.all(ver.tests == 1)
    np.testing.assert_allclose(ver.l2, np.linalg.norm((x_a - x_o).reshape(4, -1), axis=1), rtol=1e-6)
    assert np.all(ver.calls == 13)  # far above P_a: decided at the first look (m / 8 calls)


@pytest.mark.parametrize("attack", ["rays", "hsja", "surfree"])
def test_coin_flip_oracle_no_lucky_point_survives(attack):
    """An attacker whose oracle answers 'adversarial' at random with probability 1/2 everywhere
    returns lucky points; verified against the real g_{sigma,n}, every distortion is at or above
    the exact level-P_a distance along its ray, hence above eq. (6)."""
    x_o, w, b = linear_setup()
    n, p_a = 10, 0.5
    atk = get_attack(attack, **({"init_num_evals": 10} if attack == "hsja" else {}))
    res = atk.run(CoinOracle(), x_o, np.zeros(4, np.int64), jax.random.key(3), 150, check_clean=False)
    assert (res.status == "attacked").all()
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, n)
    cfg = VerifyConfig(confidence=0.999)
    ver = verify_attack(oracle, x_o, res.x_adv, np.zeros(4), p_a, jax.random.key(4), config=cfg)
    r_o = -signed_distance(x_o, w, b)
    bound = distortion_lower_bound(r_o, SIGMA, n, p_a)
    for i in range(4):
        d = res.x_adv[i] - x_o[i]
        if not ver.verified[i]:  # a ray that never reaches P_a (it points into class 0)
            assert ver.l2[i] == np.inf
            continue
        t_star = exact_t(x_o[i], d, w, b, n, p_a)
        assert ver.t[i] >= t_star * (1 - 1e-6)
        assert ver.l2[i] >= bound[i] - 1e-6
    assert np.all(ver.l2 > res.l2)  # every raw output was a lucky point
    # the same outputs against g_{sigma,n} for n in {1, 10, 100} and P_a in {0.5, 0.8}: each verified
    # t lies in [t(P_a), t(accept_level)] x (1 + rel_tol), the window the test states
    strict = VerifyConfig(calls=400, confidence=0.999, power=0.999)
    for n_ in (1, 10, 100):
        smoothed = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, n_)
        for pa in (0.5, 0.8):
            v = verify_attack(smoothed, x_o, res.x_adv, np.zeros(4), pa, jax.random.key(6), config=strict)
            tol = level_test_plan(pa, strict).accept_level
            for i in np.flatnonzero(v.verified):
                d = res.x_adv[i] - x_o[i]
                lo = exact_t(x_o[i], d, w, b, n_, pa)
                try:
                    hi = exact_t(x_o[i], d, w, b, n_, tol)
                except IndexError:  # the clipped ray never reaches accept_level: no upper end
                    hi = np.inf
                assert lo * (1 - 1e-6) <= v.t[i] <= hi * (1 + strict.rel_tol) + 1e-9, (attack, n_, pa, i, lo, v.t[i], hi)
                assert v.l2[i] >= float(distortion_lower_bound(r_o[i], SIGMA, n_, pa)) - 1e-6


def test_clean_level_test_and_deterministic_oracle():
    """level_at_points: clean images deep inside class 0 are not of level 0.5; points across the
    boundary are. A deterministic oracle decides with one call."""
    from rsjax.oracle import ModelOracle
    from rsjax.verify import oracle_decide

    x_o, w, b = linear_setup()
    f = linear_logits_fn(w, b)
    decide, det = oracle_decide(SmoothedOracle(f, 2, SIGMA, 5))
    assert not det
    nrm = w / np.linalg.norm(w)
    far = (x_o + 1.0 * nrm[None]).astype(np.float32)
    out = level_at_points(decide, np.concatenate([x_o, far]), np.zeros(8), 0.5, np.arange(8), jax.random.key(1))
    assert out["accepted"].tolist() == [False] * 4 + [True] * 4
    assert np.all(out["level"][:4] < 0.5) and np.all(out["calls"] <= 100)
    assert np.all(out["calls"][4:] == 13)  # far beyond P_a: decided at the first look
    decide_f, det_f = oracle_decide(ModelOracle(f, 2))
    assert det_f
    out = level_at_points(decide_f, np.concatenate([x_o, far]), np.zeros(8), 0.8, np.arange(8), jax.random.key(1),
                          deterministic=True)
    assert out["accepted"].tolist() == [False] * 4 + [True] * 4 and np.all(out["calls"] == 1)


def test_evaluator_calls_never_count_toward_the_attack_budget():
    """Queries and evaluations of an AttackResult are those of the attack alone (<= budget);
    verifying its outputs spends the evaluator's calls, reported apart, and changes nothing in it."""
    x_o, w, b = linear_setup()
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 10)
    res = get_attack("rays").run(oracle, x_o, np.zeros(4, np.int64), jax.random.key(2), 80, check_clean=False)
    before = (res.queries.copy(), res.evaluations.copy(), res.x_adv.copy())
    assert np.all(res.queries <= 80) and np.all(res.evaluations <= 80 * 10)
    ver = verify_attack(oracle, x_o, res.x_adv, np.zeros(4), 0.5, jax.random.key(9))
    assert np.all(ver.calls >= 13)
    np.testing.assert_array_equal(res.queries, before[0])
    np.testing.assert_array_equal(res.evaluations, before[1])
    np.testing.assert_array_equal(res.x_adv, before[2])


def test_no_items_gives_empty_verification():
    """A batch where no image has an output to verify (e.g. every reference label is wrong):
    empty arrays, no error."""
    x_o, w, b = linear_setup()
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 10)
    empty = x_o[:0]
    ver = verify_attack(oracle, empty, empty, np.zeros(0), 0.5, jax.random.key(0))
    assert len(ver.verified) == 0 and ver.x.shape == empty.shape and len(ver.l2) == 0

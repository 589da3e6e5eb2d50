"""Closed forms of the paper (eqs. 2, 3, 5, 6) against Monte Carlo and exact references."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rsjax.errors import InputError
from rsjax.theory import (
    certified_radius_binary,
    certified_radius_cohen,
    distortion_lower_bound,
    level_threshold,
    level_wrong_count,
    majority_count,
    prob_wrong_majority,
    sorm_pi0,
)


@pytest.mark.parametrize("n", [7, 10, 25, 50, 51])
@pytest.mark.parametrize("p_a", [0.5, 0.8])
def test_eq5_threshold_matches_monte_carlo_both_parities(n, p_a):
    """At pi_0 = threshold, P[Bin(n, 1 - pi_0) >= n~] = P_a (Monte Carlo, 400k draws)."""
    t = level_threshold(n, p_a)
    assert 0 < t < 0.5 + 1e-12
    draws = np.random.default_rng(n).binomial(n, 1 - t, size=400_000)
    mc = np.mean(draws >= majority_count(n))
    assert abs(mc - p_a) < 4.5 * np.sqrt(p_a * (1 - p_a) / draws.size)
    assert abs(stats.binom.sf(majority_count(n) - 1, n, 1 - t) - p_a) < 1e-9  # exact tail


def test_paper_form_equals_exact_for_odd_and_misses_for_even_n():
    for n in (5, 11, 101):
        assert level_threshold(n, 0.8, paper_form=True) == pytest.approx(level_threshold(n, 0.8), abs=1e-14)
    for n in (4, 10, 100):
        t_paper = level_threshold(n, 0.8, paper_form=True)
        # the printed form is the threshold for n + 1 samples; with n samples it falls short of P_a
        assert t_paper == pytest.approx(level_threshold(n + 1, 0.8), abs=1e-14)
        assert prob_wrong_majority(n, 1 - t_paper) < 0.8 - 1e-3


def test_radius_eq2_is_cohen_two_class_bound():
    p = np.array([0.6, 0.9, 0.999])
    np.testing.assert_allclose(certified_radius_binary(p, 0.5), certified_radius_cohen(p, 1 - p, 0.5), rtol=1e-12)
    np.testing.assert_allclose(certified_radius_binary(p, 0.5), 0.5 * stats.norm.ppf(p), rtol=1e-12)
    assert certified_radius_binary(0.4, 0.5) == 0.0


def test_eq6_bound_is_radius_plus_flat_boundary_margin():
    # odd n: the paper's printed form sigma * Phi^{-1}(I^{-1}_{P_a}(n~, n~))
    from scipy.special import betaincinv

    n, p_a, sigma, r = 11, 0.8, 0.25, 0.3
    nt = majority_count(n)
    assert distortion_lower_bound(r, sigma, n, p_a) == pytest.approx(
        r + sigma * stats.norm.ppf(betaincinv(nt, nt, p_a)), abs=1e-12)
    assert distortion_lower_bound(r, sigma, n, p_a) > r


def test_sorm_flat_and_curved_against_monte_carlo():
    assert sorm_pi0(1.5, np.zeros(9)) == pytest.approx(stats.norm.cdf(-1.5), rel=1e-12)
    # class 0 = inside a ball of radius rho (convex: curvature 1/rho in d - 1 directions),
    # x outside at distance beta * sigma from the sphere; sigma = 1. SORM is asymptotic in beta.
    rng = np.random.default_rng(0)
    for d, rho, beta, rel_tol in [(8, 30.0, 3.0, 0.10), (8, 10.0, 2.0, 0.25)]:
        z = rng.normal(size=(1_000_000, d))
        z[:, 0] += rho + beta  # x = (rho + beta) e_1, ball centred at 0
        mc = np.mean(np.sum(z * z, 1) < rho**2)
        approx = sorm_pi0(beta, np.full(d - 1, 1 / rho))
        flat = stats.norm.cdf(-beta)
        assert approx < flat  # convex class region: less mass than a flat boundary
        assert abs(approx - mc) < rel_tol * mc, (d, rho, beta, approx, mc)
        assert abs(approx - mc) < 0.35 * abs(flat - mc)  # far better than ignoring curvature
    with pytest.raises(InputError, match="1 \\+ beta"):
        sorm_pi0(2.0, [-1.0])


def test_level_shortcut_count_and_validation():
    assert level_wrong_count(10, 0.5) == 5 and level_wrong_count(10, 0.8) == 8 and level_wrong_count(7, 0.8) == 6
    with pytest.raises(InputError, match="p_a.*1.2"):
        level_threshold(10, 1.2)
    with pytest.raises(InputError, match="n must be.*0"):
        majority_count(0)

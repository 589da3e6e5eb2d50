"""Closed forms of Maho, Furon, Le Merrer, "Randomized smoothing under attack: how good is it in
practice?" (ICASSP 2022), equations (2), (3), (5), (6), and Cohen et al.'s bounds.

Notation: pi_c(x) = P[f(x + sigma N) = c]; x_o the original image with true class 0 (binary
picture), x_a an adversarial point; n the number of noise samples of g_{sigma,n};
n~ = 1 + floor(n/2) (a strict majority of wrong micro-decisions); I_p(a, b) the regularized
incomplete beta function and I^{-1} its inverse in p (``scipy.special.betaincinv``).

Eq. (5), exact statement used here: with q = 1 - pi_0(x_a) the probability of one wrong
micro-decision, P[Bin(n, q) >= n~] = I_q(n~, n - n~ + 1), so P[g_{sigma,n}(x_a) != 0] >= P_a as
soon as q >= I^{-1}_{P_a}(n~, n - n~ + 1), i.e.

    pi_0(x_a) <= 1 - I^{-1}_{P_a}(n~, n - n~ + 1).

For odd n, n - n~ + 1 = n~ and this is the paper's 1 - I^{-1}_{P_a}(n~, n~). For even n the
paper's form is *not* exact: I_q(n~, n~) = P[Bin(n + 1, q) >= n~] is the probability for n + 1
samples; the exact second parameter is n~ - 1 = n/2. :func:`level_threshold` implements the exact
statement for both parities (``paper_form=True`` gives the printed formula).
"""
from __future__ import annotations

import numpy as np
from scipy import special, stats

from rsjax.errors import InputError, check_int_at_least, check_open_unit, check_positive


def _check_prob(name: str, p) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InputError(f"{name} must be probabilities in [0, 1], got {p!r}")
    return p


def certified_radius_binary(pi_top, sigma: float) -> np.ndarray:
    """Eq. (2): R(x, sigma) = sigma * Phi^{-1}(pi_{g(x)}(x)) (binary case, exact probability);
    0 where pi_top <= 1/2 (no certificate)."""
    check_positive("sigma", sigma)
    p = _check_prob("pi_top", pi_top)
    return np.where(p > 0.5, sigma * stats.norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


def certified_radius_cohen(p_a, p_b, sigma: float) -> np.ndarray:
    """Cohen et al. (2019), Theorem 1: R = sigma/2 (Phi^{-1}(p_A) - Phi^{-1}(p_B)) for a lower
    bound p_A of the top class and an upper bound p_B of the runner-up; with p_B = 1 - p_A it
    reduces to eq. (2)."""
    check_positive("sigma", sigma)
    pa, pb = _check_prob("p_a", p_a), _check_prob("p_b", p_b)
    return 0.5 * sigma * (stats.norm.ppf(pa) - stats.norm.ppf(pb))


def majority_count(n: int) -> int:
    """n~ = 1 + floor(n/2): the number of wrong micro-decisions that outvotes the right class in a
    binary vote of n samples."""
    check_int_at_least("n", n, 1)
    return 1 + n // 2


def prob_wrong_majority(n: int, q) -> np.ndarray:
    """P[Bin(n, q) >= n~] = I_q(n~, n - n~ + 1): probability that g_{sigma,n} errs (binary case)
    when each micro-decision is wrong with probability q."""
    nt = majority_count(n)
    return special.betainc(nt, n - nt + 1, _check_prob("q", q))


def level_threshold(n: int, p_a: float, *, paper_form: bool = False) -> float:
    """Eq. (5): the largest pi_0(x_a) for which P[g_{sigma,n}(x_a) != 0] >= P_a, namely
    1 - I^{-1}_{P_a}(n~, n - n~ + 1) (exact, both parities; see the module docstring).
    ``paper_form=True`` returns the printed 1 - I^{-1}_{P_a}(n~, n~) (equal for odd n)."""
    check_open_unit("p_a", p_a)
    nt = majority_count(n)
    b = nt if paper_form else n - nt + 1
    return float(1.0 - special.betaincinv(nt, b, p_a))


def distortion_lower_bound(radius, sigma: float, n: int, p_a: float) -> np.ndarray:
    """Eq. (6) for a flat boundary (pi_0 = Phi(signed distance / sigma)): an adversarial point of
    level P_a is at least R(x_o, sigma) + sigma Phi^{-1}(1 - t) away from x_o, with t the exact
    eq. (5) threshold, i.e. R + sigma Phi^{-1}(I^{-1}_{P_a}(n~, n - n~ + 1)) (the paper prints
    I^{-1}_{P_a}(n~, n~), the same for odd n)."""
    check_positive("sigma", sigma)
    t = level_threshold(n, p_a)
    return np.asarray(radius, np.float64) + sigma * stats.norm.ppf(1.0 - t)


def sorm_pi0(beta, curvatures) -> np.ndarray:
    """Eq. (3), second-order reliability method: for x outside the region of class 0, at
    distance delta = beta * sigma from the boundary of f whose principal curvatures are kappa_i
    (in units of 1/sigma, at the point of the boundary closest to x), the probability that the
    noise brings x back into class 0 is pi_0(x) ~ Phi(-beta) * prod_i (1 + beta kappa_i)^{-1/2}.
    Flat boundary (all kappa = 0): exactly Phi(-beta). Needs 1 + beta kappa_i > 0."""
    beta = np.asarray(beta, np.float64)
    kappa = np.asarray(curvatures, np.float64)
    factor = 1.0 + beta[..., None] * kappa
    if np.any(factor <= 0):
        raise InputError(f"SORM needs 1 + beta * kappa_i > 0; got min {factor.min()!r}")
    return stats.norm.cdf(-beta) * np.prod(factor ** -0.5, axis=-1)


def level_wrong_count(n: int, p_a: float) -> int:
    """The authors' simulation shortcut: a query point counts as adversarial of level P_a when at
    least ceil(n * P_a) of its n micro-decisions are wrong."""
    check_int_at_least("n", n, 1)
    check_open_unit("p_a", p_a)
    return int(np.ceil(n * p_a - 1e-12))


def max_certified_radius(n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n samples at level alpha, in units of sigma:
    with n_A = n the Clopper-Pearson lower bound is alpha^(1/n), so R_max = sigma Phi^{-1}(alpha^(1/n))
    (e.g. 3.2 sigma at n = 10,000, 3.8 sigma at n = 100,000 for alpha = 0.001)."""
    check_int_at_least("n", n, 1)
    check_open_unit("alpha", alpha)
    return float(stats.norm.ppf(alpha ** (1.0 / n)))

"""Analysis computations against closed forms on the linear binary classifier.

f(x) = [w.x + b > 0] (class 0 wins ties); along the unit normal, pi_y(x_t) = Phi(signed distance /
sigma), one call of g_{sigma,n} errs with probability P[Bin(n, 1 - pi_y) >= n~] (class 0 as y)
or P[Bin(n, 1 - pi_y) >= n/2] (class 1 as y, even n: it loses ties). Monte-Carlo checks use fixed
seeds and a 4.5-standard-error tolerance.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

from rsjax import analysis as A
from rsjax.errors import InputError
from rsjax.models.linear import linear_logits_fn

SHAPE = (4, 4, 1)  # d = 16
SIGMA = 0.25


def plane():
    """Hyperplane through the centre of the box; returns (w, b, unit normal, centre)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=SHAPE).astype(np.float32)
    centre = np.full(SHAPE, 0.5, np.float32)
    b = -float(np.sum(centre * w))
    return w, b, w / np.linalg.norm(w), centre


@pytest.mark.parametrize("n, y", [(1, 1), (10, 1), (11, 1), (10, 0)])
def test_prob_adversarial_along_the_normal_matches_binomial(n, y):
    w, b, wn, c = plane()
    fn = linear_logits_fn(w, b)
    dist = 0.3
    side = 1.0 if y == 1 else -1.0
    x_o = c + side * dist * wn  # class y, at distance 0.3
    x_a = c  # on the plane
    ts = np.linspace(0.0, 2.0, 9)
    pts = A.points_along(x_o, x_a, ts)
    repeats = 3000
    p = A.prob_adversarial(fn, pts, y, jax.random.key(n), SIGMA, n, repeats, 2)
    pi_y = A.phi_along_normal(ts, dist, SIGMA)
    exact = A.binary_vote_probability(pi_y, n, loses_ties=(y == 1))
    tol = 4.5 * np.sqrt(np.maximum(exact * (1 - exact), 1e-4) / repeats)
    assert np.all(np.abs(p - exact) <= tol), (p, exact)
    if n == 1:
        np.testing.assert_allclose(exact, stats.norm.cdf((ts - 1.0) * dist / SIGMA), atol=1e-12)
    # the multinomial law of one vote from the exact class probabilities is the same law
    pi = np.stack([1 - pi_y, pi_y], 1) if y == 1 else np.stack([pi_y, 1 - pi_y], 1)
    mn = A.multinomial_vote_probability(pi, y, n, draws=20000)
    assert np.all(np.abs(mn - exact) <= 4.5 * np.sqrt(np.maximum(exact * (1 - exact), 1e-4) / 20000))


def test_tie_rule_matters_only_for_even_n():
    q = np.linspace(0.05, 0.95, 7)
    for n in (3, 11):
        np.testing.assert_allclose(A.binary_vote_probability(1 - q, n, loses_ties=True),
                                   A.binary_vote_probability(1 - q, n, loses_ties=False))
    hi = A.binary_vote_probability(1 - q, 10, loses_ties=True)
    lo = A.binary_vote_probability(1 - q, 10, loses_ties=False)
    np.testing.assert_allclose(hi - lo, stats.binom.pmf(5, 10, q), atol=1e-12)


def test_class_probability_and_frequencies():
    w, b, wn, c = plane()
    fn = linear_logits_fn(w, b)
    ts = np.linspace(0.0, 2.0, 5)
    pts = A.points_along(c + 0.3 * wn, c, ts)
    pi = A.class_probability(fn, pts, 1, jax.random.key(7), SIGMA, 20000, 2)
    exact = A.phi_along_normal(ts, 0.3, SIGMA)
    assert np.all(np.abs(pi - exact) <= 4.5 * np.sqrt(exact * (1 - exact) / 20000) + 1e-9)
    freq = A.class_frequencies(fn, pts, jax.random.key(7), SIGMA, 20000, 2)
    np.testing.assert_allclose(freq[:, 1], pi)  # same keys, same votes
    np.testing.assert_allclose(freq.sum(1), 1.0)


def test_adversarial_from_counts_plurality_and_level_shortcut():
    counts = np.array([[3, 7], [5, 5], [8, 2]])
    np.testing.assert_array_equal(A.adversarial_from_counts(counts, 0), [True, False, False])
    np.testing.assert_array_equal(A.adversarial_from_counts(counts, 1), [False, True, True])
    # shortcut: at least ceil(10 * P_a) wrong micro-decisions
    np.testing.assert_array_equal(A.adversarial_from_counts(counts, 0, p_a=0.8), [False, False, False])
    np.testing.assert_array_equal(A.adversarial_from_counts(counts, 0, p_a=0.5), [True, True, False])


def test_binary_search_outputs_deterministic_and_random():
    w, b, wn, c = plane()
    fn = linear_logits_fn(w, b)
    x_o, x_end = c + 0.3 * wn, c - 0.3 * wn  # boundary at blend 1/2
    a_f = A.binary_search_outputs(fn, x_o, x_end, 1, jax.random.key(0), SIGMA, None, 3, 20, 2)
    np.testing.assert_allclose(a_f, 0.5, atol=2.0 ** -19)
    key = jax.random.key(1)
    a1 = A.binary_search_outputs(fn, x_o, x_end, 1, key, SIGMA, 1, 300, 12, 2)
    a101 = A.binary_search_outputs(fn, x_o, x_end, 1, key, SIGMA, 101, 300, 12, 2)
    assert np.all((a1 > 0) & (a1 <= 1)) and np.all((a101 > 0) & (a101 <= 1))
    # many votes: the outputs concentrate at the boundary of g_sigma (= the plane)
    assert abs(np.median(a101) - 0.5) < 0.03
    # one vote: the search is broken, outputs spread far more
    assert a1.std() > 3 * a101.std()
    # same key, same outputs
    np.testing.assert_array_equal(a1, A.binary_search_outputs(fn, x_o, x_end, 1, key, SIGMA, 1, 300, 12, 2))


def test_hsja_normal_estimate_on_the_linear_boundary():
    w, b, wn, c = plane()
    fn = linear_logits_fn(w, b)
    sigma = 0.1
    # y = 0: adversarial side is +w; probe radii 0.05 sigma and 4 sigma
    ne = A.normal_estimate_cosines(fn, c, 0, jax.random.key(1), [0.05 * sigma, 4 * sigma], 400, 4,
                                   sigma, 1, 2, reference=wn)
    assert np.all(ne.cos_f_ref > 0.93)  # f alone: the normal w/||w|| at every radius
    assert np.all(ne.cos_rs_ref[1] > 0.85)  # probes beyond sigma: RS decisions carry the normal
    assert np.all(np.abs(ne.cos_rs_ref[0]) < 0.45)  # probes well inside sigma: mostly noise
    assert ne.cos_f_rs[1].mean() > ne.cos_f_rs[0].mean() + 0.5
    assert np.all(ne.cos_f_f > 0.85)  # two independent f estimates agree
    np.testing.assert_allclose(ne.frac_adv_f, 0.5, atol=0.1)


def test_hsja_normal_estimate_degenerate_cases():
    u = np.eye(3)[None].repeat(2, 0)  # [2, 3 probes, 3]
    phi = np.array([[True, True, True], [False, False, False]])
    g = A.hsja_normal_estimate(phi, u)
    np.testing.assert_allclose(g[0], np.ones(3) / np.sqrt(3))  # all adversarial: + mean u
    np.testing.assert_allclose(g[1], -np.ones(3) / np.sqrt(3))  # none adversarial: - mean u
    z = A.hsja_normal_estimate(np.array([True, False]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    np.testing.assert_array_equal(z, 0.0)  # a zero estimate stays zero, no NaN
    assert A.cosine(z, np.array([1.0, 0.0])) == 0.0


def test_stein_normal_and_smoothed_boundary_point():
    w, b, wn, c = plane()
    fn = linear_logits_fn(w, b)
    ref = A.stein_normal(fn, c, 0, jax.random.key(2), SIGMA, 4000)
    assert A.cosine(ref.ravel(), wn.ravel()) > 0.97
    x_o, x_a = c - 0.2 * wn, c + 0.1 * wn  # class 0, boundary at t = 2/3
    x_b, t_b = A.smoothed_boundary_point(fn, x_o, x_a, 0, jax.random.key(3), SIGMA, 1000, 2)
    assert abs(t_b * 0.3 - 0.2) < 4.5 * SIGMA * np.sqrt(np.pi / 2 / 1000)
    np.testing.assert_allclose(x_b, x_o + np.float32(t_b) * (x_a - x_o), atol=1e-6)
    with pytest.raises(InputError):
        A.smoothed_boundary_point(fn, x_a, x_o, 0, jax.random.key(3), SIGMA, 100, 2)


def test_slice_geometry():
    key = jax.random.key(5)
    first = np.arange(16, dtype=np.float32).reshape(SHAPE) + 1
    dirs = A.orthonormal_directions(key, SHAPE, 2, first=first)
    flat = dirs.reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(flat @ flat.T, np.eye(2), atol=1e-6)
    assert A.cosine(flat[0], first.ravel()) > 1 - 1e-6
    x_o = np.full(SHAPE, 0.5, np.float32)
    coords = np.linspace(-1, 1, 5)
    pts = A.slice_points(x_o, dirs[0], dirs[1], coords)
    assert pts.shape == (25, *SHAPE)
    np.testing.assert_allclose(pts[1 * 5 + 3], x_o + coords[3] * dirs[0] + coords[1] * dirs[1], atol=1e-6)
    with pytest.raises(InputError):
        A.orthonormal_directions(key, (2, 1, 1), 3)


def test_first_crossing_and_labels():
    ts = np.array([0.0, 1.0, 2.0, 3.0])
    assert A.first_crossing(ts, [1.0, 0.8, 0.4, 0.1], 0.6) == pytest.approx(1.5)
    assert A.first_crossing(ts, [0.0, 0.2, 0.6, 0.9], 0.4, decreasing=False) == pytest.approx(1.5)
    assert np.isnan(A.first_crossing(ts, [1.0, 0.9, 0.8, 0.7], 0.5))
    w, b, wn, c = plane()
    fn = linear_logits_fn(w, b)
    pts = A.points_along(c - 0.1 * wn, c + 0.1 * wn, np.linspace(0, 1, 11))
    lab = A.labels_of(fn, pts, batch_size=4)  # several padded batches
    np.testing.assert_array_equal(lab, (np.arange(11) > 5).astype(int))


def test_adversarial_from_counts_is_the_oracles_rule():
    """The analysis decides with the oracles' rule (rsjax.oracle.adversarial_from_counts): the
    plurality (lowest index on ties) differs from y, or at least ceil(n P_a) wrong votes."""
    from rsjax.analysis import adversarial_from_counts
    from rsjax.theory import level_wrong_count

    rng = np.random.default_rng(0)
    counts = rng.multinomial(10, [0.3, 0.3, 0.2, 0.2], size=400)
    y = rng.integers(0, 4, 400)
    assert (counts.max(1)[:, None] == counts).sum(1).max() > 1  # ties occur
    np.testing.assert_array_equal(adversarial_from_counts(counts, y), counts.argmax(1) != y)
    for p_a in (0.5, 0.8):
        wrong = counts.sum(1) - counts[np.arange(400), y]
        np.testing.assert_array_equal(adversarial_from_counts(counts, y, p_a), wrong >= level_wrong_count(10, p_a))

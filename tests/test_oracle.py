"""Decision oracles: criteria, abstention semantics, early stopping, level estimation, budgets."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rsjax.errors import InputError
from rsjax.models.linear import linear_logits_fn
from rsjax.oracle import (
    BudgetError,
    CountingOracle,
    ModelOracle,
    Oracle,
    SmoothedOracle,
    decide_padded,
    image_keys,
    level_of,
    query_key,
)
from rsjax.smoothing import votes
from rsjax.theory import distortion_lower_bound, level_wrong_count, prob_wrong_majority

SHAPE = (4, 4, 1)


def hyperplane(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=SHAPE).astype(np.float32)
    return w, 0.05


def points_at(w, b, signed_dist):
    """Points at signed distances (class 1 side positive) from w.x + b = 0."""
    wn = w / np.linalg.norm(w)
    base = np.full(SHAPE, 0.5, np.float32)
    base = base - (np.sum(base * w) + b) / np.linalg.norm(w) * wn
    d = np.asarray(signed_dist, np.float64)
    return (base[None] + d[:, None, None, None] * wn[None]).astype(np.float32)


def keys_for(seed, m):
    return image_keys(jax.random.key(seed), np.arange(m))


def test_smoothed_oracle_is_an_oracle_and_validates():
    w, b = hyperplane()
    f = linear_logits_fn(w, b)
    assert isinstance(SmoothedOracle(f, 2, 0.25, 10), Oracle)
    with pytest.raises(InputError, match="sigma.*-0.1"):
        SmoothedOracle(f, 2, -0.1, 10)
    with pytest.raises(InputError, match="n must be.*0"):
        SmoothedOracle(f, 2, 0.1, 0)
    with pytest.raises(InputError, match="p_a.*1.5"):
        SmoothedOracle(f, 2, 0.1, 10, criterion="level", p_a=1.5)
    with pytest.raises(InputError, match="p_a"):
        SmoothedOracle(f, 2, 0.1, 10, criterion="level")
    with pytest.raises(InputError, match="criterion.*'labels'"):
        SmoothedOracle(f, 2, 0.1, 10, criterion="labels")


@pytest.mark.parametrize("criterion,p_a", [("label", None), ("level", 0.8)])
def test_answers_match_full_votes_with_and_without_early_stop(criterion, p_a):
    w, b = hyperplane()
    f = linear_logits_fn(w, b)
    n, sigma = 31, 0.3
    x = points_at(w, b, np.linspace(-0.6, 0.6, 64))
    y = np.zeros(64, np.int32)
    y[::2] = 1
    keys = keys_for(1, 64)
    counts = votes(f, x, keys, sigma, n, 2).counts  # same keys: sample j <- fold_in(key, j)
    if criterion == "label":
        expected = counts.argmax(1) != y
    else:
        expected = (n - counts[np.arange(64), y]) >= level_wrong_count(n, p_a)
    early = SmoothedOracle(f, 2, sigma, n, criterion, p_a=p_a, chunk_size=128)
    full = SmoothedOracle(f, 2, sigma, n, criterion, p_a=p_a, early_stop=False, chunk_size=128)
    adv_e, ev_e = decide_padded(early, x, y, keys)
    adv_f, ev_f = decide_padded(full, x, y, keys)
    np.testing.assert_array_equal(adv_e, expected)
    np.testing.assert_array_equal(adv_f, expected)
    np.testing.assert_array_equal(ev_f, n)
    assert np.all(ev_e <= n) and ev_e.sum() < 0.8 * ev_f.sum()


def test_inactive_rows_cost_no_evaluations_and_do_not_change_active_answers():
    w, b = hyperplane()
    f = linear_logits_fn(w, b)
    x = jnp.asarray(points_at(w, b, np.linspace(-0.4, 0.4, 16)))
    y = jnp.asarray(np.arange(16) % 2, jnp.int32)
    keys = keys_for(2, 16)
    active = jnp.asarray(np.arange(16) % 3 != 0)
    for early_stop in (True, False):
        oracle = SmoothedOracle(f, 2, 0.3, 40, early_stop=early_stop, chunk_size=64)
        full = jax.jit(oracle.decide)(x, y, keys)
        part = jax.jit(oracle.decide)(x, y, keys, active)
        a = np.asarray(active)
        np.testing.assert_array_equal(np.asarray(part.adversarial)[a], np.asarray(full.adversarial)[a])
        if not early_stop:  # with early stopping a chunk is shared among the active rows
            np.testing.assert_array_equal(np.asarray(part.evaluations)[a], 40)
        assert np.all(np.asarray(part.evaluations)[a] <= 40)
        assert np.all(np.asarray(part.evaluations)[~a] == 0)


def test_abstention_is_not_success_unless_configured():
    """n = 10, alpha = 0.001: PREDICT always abstains, so no query can ever succeed (and every
    query succeeds if abstention counts as success) -- even on points of the other class."""
    w, b = hyperplane()
    f = linear_logits_fn(w, b)
    x = points_at(w, b, [-1.0, -0.5, 0.5, 1.0])
    y = np.array([1, 1, 1, 1])  # the first two are misclassified
    keys = keys_for(2, 4)
    plain = SmoothedOracle(f, 2, 0.2, 10)
    assert decide_padded(plain, x, y, keys)[0].tolist() == [True, True, False, False]
    never = SmoothedOracle(f, 2, 0.2, 10, abstain_alpha=0.001)
    always = SmoothedOracle(f, 2, 0.2, 10, abstain_alpha=0.001, abstain_is_success=True)
    assert not decide_padded(never, x, y, keys)[0].any()
    assert decide_padded(always, x, y, keys)[0].all()
    assert decide_padded(never, x, y, keys)[1].tolist() == [10] * 4  # no early stop with abstention
    answering = SmoothedOracle(f, 2, 0.2, 100, abstain_alpha=0.001)
    assert decide_padded(answering, x, y, keys)[0].tolist() == [True, True, False, False]


def test_model_oracle_contract_unchanged():
    w, b = hyperplane()
    x = points_at(w, b, [-0.3, 0.3])
    ans = ModelOracle(linear_logits_fn(w, b), 2).decide(jnp.asarray(x), jnp.array([1, 1]), None)
    assert ans.adversarial.tolist() == [True, False] and ans.evaluations.tolist() == [1, 1]


def test_level_of_matches_exact_level_and_eq6():
    """For a hyperplane, P[g_{sigma,n}(x_a) != 0] = P[Bin(n, q) >= n~] with q = Phi(s / sigma).
    The point at eq. (6)'s distance from x_o (flat boundary) has level exactly P_a."""
    w, b = hyperplane()
    f = linear_logits_fn(w, b)
    sigma, n, p_a = 0.25, 11, 0.8
    r_o = 0.2  # x_o at distance 0.2 inside class 0
    bound = float(distortion_lower_bound(r_o, sigma, n, p_a))
    signed = np.array([-r_o + bound, 0.0, 0.05, -0.1])
    x = points_at(w, b, signed)
    q = stats.norm.cdf(signed / sigma)
    exact = prob_wrong_majority(n, q)
    assert abs(exact[0] - p_a) < 1e-9
    oracle = SmoothedOracle(f, 2, sigma, n, criterion="level", p_a=p_a)
    est = level_of(oracle, x, np.zeros(4, np.int32), jax.random.key(3), calls=800, confidence=0.999)
    assert np.all((est.low <= exact) & (exact <= est.high)), (est, exact)
    assert np.all(np.abs(est.level - exact) <= 4.5 * np.sqrt(exact * (1 - exact) / 800) + 1e-9)
    assert np.all(est.evaluations <= 800 * n)


def test_counting_oracle_keys_and_budgets():
    w, b = hyperplane()
    f = linear_logits_fn(w, b)
    oracle = SmoothedOracle(f, 2, 0.3, 10)
    seed_key = jax.random.key(11)
    counter = CountingOracle(oracle, seed_key, max_queries=5, max_evaluations=45)
    x = points_at(w, b, [-0.05, 0.0, 0.05])
    adv = counter(x, [0, 0, 1], [7, 7, 9])
    # keys: query 0 and 1 of image 7, query 0 of image 9
    k7, k9 = image_keys(seed_key, np.array([7, 9]))
    keys = jnp.stack([query_key(k7, 0), query_key(k7, 1), query_key(k9, 0)])
    expected, evals = decide_padded(oracle, x, np.array([0, 0, 1]), keys)
    np.testing.assert_array_equal(adv, expected)
    assert counter.queries == {7: 2, 9: 1}
    assert counter.evaluations == {7: int(evals[0] + evals[1]), 9: int(evals[2])}
    with pytest.raises(BudgetError, match="image 7.*max_queries=5"):
        counter(np.repeat(x[:1], 4, 0), [0] * 4, [7] * 4)
    assert counter.queries[7] == 2  # refused whole: nothing counted, nothing evaluated
    # evaluation budget 45 with up to 10 per query: refuse when the worst case exceeds it
    for _ in range(10):
        try:
            counter(x[:1], [0], [9])
        except BudgetError as e:
            assert "max_evaluations=45" in str(e) or "max_queries=5" in str(e)
            break
    assert counter.evaluations[9] <= 45 and counter.queries[9] <= 5


def test_jitted_decide_cache_does_not_keep_oracles_alive():
    """``decide_padded`` caches one jitted ``decide`` per oracle object; once the caller drops
    the oracle it is garbage-collected (the cache holds it weakly) and its entry is gone."""
    import gc
    import weakref

    from rsjax.oracle import _DECIDE_JIT

    w, b = hyperplane()
    x = points_at(w, b, [-0.3, 0.3])
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, 0.5, 5)
    first = decide_padded(oracle, x, np.array([0, 1]), keys_for(0, 2))
    again = decide_padded(oracle, x, np.array([0, 1]), keys_for(0, 2))
    assert [a.tolist() for a in first] == [a.tolist() for a in again]
    before = len(_DECIDE_JIT)
    ref = weakref.ref(oracle)
    del oracle
    gc.collect()
    assert ref() is None
    assert len(_DECIDE_JIT) == before - 1


def test_oracle_cache_keys_by_identity():
    """Two equal (even unhashable) oracles get their own entries; an oracle without weak
    references is still served (and held)."""
    from rsjax.oracle import OracleCache

    class Unhashable:
        __hash__ = None

        def __eq__(self, other):
            return True

    class Slotted:
        __slots__ = ("v",)

    cache = OracleCache()
    a, b, c = Unhashable(), Unhashable(), Slotted()
    assert cache.get(a, "k", lambda ref: ref()) is a
    assert cache.get(b, "k", lambda ref: ref()) is b
    assert cache.get(a, "k", lambda ref: None) is a  # cached
    assert cache.get(c, "k", lambda ref: ref()) is c
    assert len(cache) == 3

"""Noise-aware attacks (issue 16): the probabilistic bisection and the capped SPRT of
rsjax.attacks.noisy, and the attacks built on them ('psj', 'rays_na', 'surfree_na'):
deterministic efficiency against their plain versions, verified distortions against the exact
linear classifier under RS beside the plain attacks', exact budgets, bounded loops, batch
invariance."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.attacks import ATTACKS, get_attack
from rsjax.attacks.common import AttackEnv, bcast, initial_core
from rsjax.attacks.noisy import NeutralTest, prob_bisection, record_answer, sprt
from rsjax.models.linear import linear_logits_fn
from rsjax.oracle import ModelOracle, OracleAnswer, SmoothedOracle, image_keys
from rsjax.theory import distortion_lower_bound
from rsjax.verify import VerifyConfig, verify_attack

from test_attacks_common import CoinOracle, assert_same_result, assert_sane, check_row_equal

SIGMA = 0.25
PAIRS = {"psj": "hsja", "rays_na": "rays", "surfree_na": "surfree"}


# ----------------------------------------------------------------------------- problems

def linear_rs_problem(attack: str, r_o=(0.3, 0.4, 0.45), seed: int = 0):
    """Images at L2 distance r_o inside class 0 (the reference, which wins ties) of the linear
    f(x) = [w.x + b > 0], ||w|| = 1, around 0.5. SurFree searches low-frequency DCT directions
    only: for it w lies in that subspace (8x8 images); the others get a Gaussian w (6x6)."""
    rng = np.random.default_rng(seed)
    side = 8 if attack.startswith("surfree") else 6
    shape = (side, side, 1)
    if attack.startswith("surfree"):
        from rsjax.attacks import dct

        coef = rng.normal(size=shape) * dct.zigzag_mask(side, side)[:, :, None]
        w = np.array(dct.idct2(jnp.asarray(coef, jnp.float32)), np.float64)
    else:
        w = rng.normal(size=shape)
    w /= np.linalg.norm(w)
    r_o = np.asarray(r_o, np.float64)
    x = 0.5 + 0.02 * rng.uniform(-1, 1, size=(len(r_o),) + shape)
    s = x.reshape(len(r_o), -1) @ w.ravel()
    b = -float(s.mean())
    x = x + (-r_o - (s + b))[:, None, None, None] * w[None]
    x = x.astype(np.float32)
    w = w.astype(np.float32)
    r = -(x.reshape(len(r_o), -1).astype(np.float64) @ w.ravel().astype(np.float64) + b)
    return x, np.zeros(len(r_o), np.int64), w, b, r


def metric_of(attack: str) -> str:
    return "linf" if attack.startswith("rays") else "l2"


def exact_level_distance(attack: str, r, w, n: int, p_a: float = 0.5) -> np.ndarray:
    """Eq. (6) for the flat boundary: the distance of the level-P_a hyperplane, in the attack's
    metric (L-inf: the L2 distance times ||w||_2 / ||w||_1; the box does not bind here)."""
    d = distortion_lower_bound(r, SIGMA, n, p_a)
    if metric_of(attack) == "linf":
        d = d * np.linalg.norm(w) / np.abs(w).sum()
    return d


def verified(attack: str, oracle, x, x_adv, y, config=VerifyConfig()) -> np.ndarray:
    ver = verify_attack(oracle, x, x_adv, y, 0.5, jax.random.key(101), config=config)
    return ver.linf if metric_of(attack) == "linf" else ver.l2


# ----------------------------------------------------------------------------- building blocks

class FlipOracle:
    """The sign of a 1-D crossing at ``t``: a point's first pixel a is 'adversarial' iff
    a > t, answered correctly with probability ``p`` (drawn from the query key)."""

    name = "flip"
    num_classes = 2

    def __init__(self, t: float, p: float):
        self.t, self.p = t, p

    def decide(self, x, y, keys):
        truth = x.reshape(x.shape[0], -1)[:, 0] > self.t
        right = jax.vmap(lambda k: jax.random.bernoulli(k, self.p))(keys)
        return OracleAnswer(jnp.where(right, truth, ~truth), jnp.ones(truth.shape, jnp.int32))

    def max_evaluations_per_query(self):
        return 1


def _segment_env(b: int, max_queries: int):
    x = jnp.zeros((b, 2, 2, 1), jnp.float32)
    env = AttackEnv(x, jnp.zeros((b,), jnp.int32), image_keys(jax.random.key(0), jnp.arange(b)),
                    jnp.ones((b,), bool), jnp.int32(max_queries))
    return env, initial_core(env)


@pytest.mark.parametrize("p_true, p_c, cap, tol", [(1.0, None, 40, 2 / 256), (1.0, 0.999, 40, 2 / 256),
                                                    (0.8, 0.8, 120, 0.05), (0.8, None, 120, 0.06)])
def test_probabilistic_bisection_finds_crossing(p_true, p_c, cap, tol):
    """Deterministic answers: a bisection on the grid edges (estimated p_c: ~10-25 queries);
    answers right with probability 0.8: the posterior median lands near the crossing, p_c known
    or estimated. Queries are counted exactly and never exceed the cap."""
    ts = jnp.asarray([0.1, 0.33, 0.5, 0.77, 0.9], jnp.float32)
    env, core = _segment_env(len(ts), 10_000)
    oracle = FlipOracle(0.5, p_true)

    def point(a):  # image i's crossing at ts[i]: its pixel a - ts[i] + 0.5 crosses 0.5 there
        return jnp.broadcast_to((a - ts + 0.5)[:, None, None, None], env.x.shape)

    res, core2 = prob_bisection(oracle, env, core, point, jnp.ones(len(ts), bool), grid=256, max_queries=cap,
                                width=2 / 256, p_c=p_c)
    q = np.asarray(res.queries)
    np.testing.assert_array_equal(q, np.asarray(core2.queries))
    assert (q <= cap).all()
    a = np.asarray(res.a)
    assert np.all(np.abs(a - np.asarray(ts)) <= tol), (a, ts)
    assert np.all(np.asarray(res.lo) <= a) and np.all(a <= np.asarray(res.hi))
    if p_true == 1.0:
        assert q.max() <= (12 if p_c else 25), q
        assert np.all(np.asarray(res.p_c) > 0.95)


def test_bisection_budget_and_sprt():
    """The budget stops a search exactly; the SPRT decides a deterministic answer in one query
    with p1 = 0.999, needs several with p1 = 0.6, and stops at its cap on a coin."""
    env, core = _segment_env(3, 5)
    oracle = FlipOracle(0.4, 1.0)

    def point(a):
        return jnp.broadcast_to(a[:, None, None, None], env.x.shape)

    res, c2 = prob_bisection(oracle, env, core, point, jnp.ones(3, bool), grid=64, max_queries=50, width=1 / 64)
    assert np.all(np.asarray(c2.queries) == 5) and np.all(np.asarray(res.queries) == 5)
    env, core = _segment_env(3, 100)
    far = jnp.full(env.x.shape, 0.9)
    d, c2 = sprt(oracle, env, core, far, jnp.ones(3, bool), 0.999, max_queries=10)
    assert np.all(np.asarray(d.adversarial)) and np.all(np.asarray(d.queries) == 1)
    d, c2 = sprt(oracle, env, core, far * 0, jnp.array([True, True, False]), 0.6, max_queries=10)
    assert np.asarray(d.adversarial).tolist() == [False] * 3
    assert np.asarray(d.queries).tolist() == [8, 8, 0] and np.all(np.asarray(d.decided)[:2])
    d, c2 = sprt(CoinOracle(), env, core, far, jnp.ones(3, bool), 0.6, max_queries=7)
    assert np.all(np.asarray(d.queries) <= 7) and np.all(np.asarray(c2.queries) <= 7)


class TwoCrossings:
    """Deterministic, not monotone along the segment: a point is adversarial iff its first
    pixel a lies in (0.2, 0.3) or above 0.7 (a curved boundary crossed three times)."""

    name = "two-crossings"
    num_classes = 2

    def decide(self, x, y, keys):
        a = x.reshape(x.shape[0], -1)[:, 0]
        return OracleAnswer(((a > 0.2) & (a < 0.3)) | (a > 0.7), jnp.ones(a.shape, jnp.int32))

    def max_evaluations_per_query(self):
        return 1


def test_disagreement_proves_randomness_not_several_crossings():
    """``SearchResult.disagreed`` (one edge answered both ways) is what psj needs before its
    noisy branch: never set by a deterministic oracle, even one whose answers along the segment
    fit no single crossing (the p_c posterior drops there: the case that made psj lose 52 % on
    the deterministic ResNet-20), and set for most images of a random oracle."""
    def point(a):
        return jnp.broadcast_to(a[:, None, None, None], env.x.shape)

    env, core = _segment_env(8, 100)
    res, _ = prob_bisection(TwoCrossings(), env, core, point, jnp.ones(8, bool), grid=256, max_queries=40,
                            width=2 / 256)
    assert not np.asarray(res.disagreed).any()
    assert (np.asarray(res.p_c) < 0.99).all()  # what the p_c posterior alone would call noise
    res, _ = prob_bisection(FlipOracle(0.4, 0.75), env, core, point, jnp.ones(8, bool), grid=256, max_queries=40,
                            width=2 / 256)
    assert np.asarray(res.disagreed).sum() >= 6
    seen = jnp.zeros((2, 4), jnp.int32)
    seen = record_answer(seen, jnp.array([1, 2]), jnp.array([True, False]), jnp.array([True, True]))
    seen = record_answer(seen, jnp.array([1, 2]), jnp.array([False, False]), jnp.array([True, False]))
    assert np.asarray(seen).tolist() == [[0, 3, 0, 0], [0, 0, 1, 0]]


def test_sprt_mixed_and_bisection_enough():
    """``Decision.mixed`` (one point answered both ways) is never set by a deterministic oracle
    and is set by a coin on most rows; a caller's ``enough(lo, hi)`` stops a search as soon as
    it holds (True at once: one query a row) and otherwise leaves the search unchanged."""
    env, core = _segment_env(8, 100)
    far = jnp.full(env.x.shape, 0.9)
    d, _ = sprt(FlipOracle(0.4, 1.0), env, core, far, jnp.ones(8, bool), 0.6, max_queries=10)
    assert not np.asarray(d.mixed).any() and np.asarray(d.adversarial).all()
    d, _ = sprt(CoinOracle(), env, core, far, jnp.ones(8, bool), 0.6, max_queries=10)
    assert np.asarray(d.mixed).sum() >= 6

    def point(a):
        return jnp.broadcast_to(a[:, None, None, None], env.x.shape)

    oracle = FlipOracle(0.4, 1.0)
    kw = dict(grid=256, max_queries=40, width=2 / 256)
    base, _ = prob_bisection(oracle, env, core, point, jnp.ones(8, bool), **kw)
    once, _ = prob_bisection(oracle, env, core, point, jnp.ones(8, bool), enough=lambda lo, hi: lo >= 0, **kw)
    never, _ = prob_bisection(oracle, env, core, point, jnp.ones(8, bool), enough=lambda lo, hi: lo < 0, **kw)
    assert np.asarray(once.queries).tolist() == [1] * 8
    for f in base._fields:
        np.testing.assert_array_equal(np.asarray(getattr(never, f)), np.asarray(getattr(base, f)))
    # a gain-like rule: stop when the interval is below 1/16 (4 halvings of [0, 1])
    # on the estimated-p_c credible interval (widened by the low-accuracy hypotheses) it takes
    # more queries than a bisection; on the answered bracket (``bracket``) exactly 4 halvings
    coarse, _ = prob_bisection(oracle, env, core, point, jnp.ones(8, bool), enough=lambda lo, hi: hi - lo <= 1 / 16,
                               **kw)
    assert np.all(np.asarray(coarse.hi) - np.asarray(coarse.lo) <= 1 / 16)
    fast, _ = prob_bisection(oracle, env, core, point, jnp.ones(8, bool), enough=lambda lo, hi: hi - lo <= 1 / 16,
                             bracket=jnp.ones(8, bool), **kw)
    q, qf = np.asarray(coarse.queries), np.asarray(fast.queries)
    assert np.all(qf == 4) and np.all(q > qf), (q, qf)
    lo, hi = np.asarray(fast.max_clean), np.asarray(fast.min_adv)
    assert np.all((lo <= 0.4) & (0.4 < hi) & (hi - lo <= 1 / 16))
    # ``midpoint``: the answered bracket is halved exactly by every query (a deterministic
    # bisection), 7 queries from [0, 1] to 2 cells of 256; the posterior median halves it less
    rule = lambda lo, hi: hi - lo <= 2 / 256  # noqa: E731
    med, _ = prob_bisection(oracle, env, core, point, jnp.ones(8, bool), enough=rule, bracket=jnp.ones(8, bool), **kw)
    mid, _ = prob_bisection(oracle, env, core, point, jnp.ones(8, bool), enough=rule, bracket=jnp.ones(8, bool),
                            midpoint=jnp.ones(8, bool), **kw)
    assert np.all(np.asarray(mid.queries) == 7), np.asarray(mid.queries)
    assert np.all(np.asarray(med.queries) > 7), np.asarray(med.queries)
    lo, hi = np.asarray(mid.max_clean), np.asarray(mid.min_adv)
    assert np.all((lo <= 0.4) & (0.4 < hi)) and np.allclose(hi - lo, 2 / 256)


def test_neutral_sprt_rejects_level_half_and_accepts_clearly_better():
    """The symmetric SPRT is a coin flip at level 1/2 (about half of 256 rows say "yes");
    :class:`NeutralTest` (H0 at 1/2) says "yes" at level 1/2 on at most ~alpha of the rows and
    at level p1 on at least ~1 - beta, within its own cap; in one batch the other rows keep the
    symmetric test and its cap, exactly as in a batch of their own."""
    b, p1 = 256, 0.8
    env, core = _segment_env(b, 1000)
    far = jnp.full(env.x.shape, 0.9)
    every = jnp.ones(b, bool)
    sym, _ = sprt(CoinOracle(), env, core, far, every, p1, max_queries=40)
    assert 0.35 <= np.asarray(sym.adversarial).mean() <= 0.65
    neutral = NeutralTest(every, alpha=0.2, beta=0.2, max_queries=40)
    coin, c2 = sprt(CoinOracle(), env, core, far, every, p1, max_queries=10, neutral=neutral)
    assert np.asarray(coin.adversarial).mean() <= 0.25
    assert np.asarray(coin.queries).max() <= 40 and np.asarray(c2.queries).max() <= 40
    better, _ = sprt(FlipOracle(0.4, p1), env, core, far, every, p1, max_queries=10, neutral=neutral)
    assert np.asarray(better.adversarial).mean() >= 0.75
    sure, _ = sprt(FlipOracle(0.4, 1.0), env, core, far, every, p1, max_queries=10, neutral=neutral)
    # log((1 - beta) / alpha) / log(2 p1) = 1.386 / 0.470: 3 answers
    assert np.asarray(sure.adversarial).all() and (np.asarray(sure.queries) == 3).all()
    rows = jnp.arange(b) % 2 == 0
    mixed, _ = sprt(CoinOracle(), env, core, far, every, p1, max_queries=10, neutral=neutral._replace(rows=rows))
    alone, _ = sprt(CoinOracle(), env, core, far, every, p1, max_queries=10)
    odd = ~np.asarray(rows)
    for f in ("adversarial", "queries", "llr"):
        np.testing.assert_array_equal(np.asarray(getattr(mixed, f))[odd], np.asarray(getattr(alone, f))[odd])
    assert np.asarray(mixed.queries)[odd].max() <= 10 and np.asarray(mixed.queries)[~odd].max() <= 40


def test_rays_na_neutral_test_changes_nothing_on_a_deterministic_oracle():
    """A deterministic oracle never shows randomness, so rays_na's neutral test never applies:
    identical results with and without it; under RS both are valid runs of the budget."""
    x, y, w, b, r = linear_rs_problem("rays_na")
    det = ModelOracle(linear_logits_fn(w, b), 2)
    on = get_attack("rays_na").run(det, x, y, 0, 300)
    off = get_attack("rays_na", neutral_test=False).run(det, x, y, 0, 300)
    assert_same_result(on, off)
    rs = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 1)
    for attack in (get_attack("rays_na"), get_attack("rays_na", neutral_test=False)):
        assert_sane(attack.run(rs, x, y, 0, 300, check_clean=False), 300)


def test_surfree_na_deterministic_reports_answered_adversarial_points():
    """Against a deterministic oracle surfree_na never proves randomness, so it keeps SurFree's
    choice, the closest point answered adversarial, instead of a posterior median that may lie
    on the clean side: every reported point is adversarial for f itself."""
    x, y, w, b, r = linear_rs_problem("surfree_na")
    oracle = ModelOracle(linear_logits_fn(w, b), 2)
    res = get_attack("surfree_na").run(oracle, x, y, 0, 300)
    assert_sane(res, 300)
    keys = image_keys(jax.random.key(5), jnp.arange(len(x)))
    adv = np.asarray(oracle.decide(jnp.asarray(res.x_adv), jnp.asarray(y), keys).adversarial)
    assert adv.all(), (adv, res.l2, r)


def test_registry():
    for name in PAIRS:
        assert name in ATTACKS
        assert get_attack(name).name == name
    from rsjax.errors import InputError

    with pytest.raises(InputError, match="p_c"):
        get_attack("psj", p_c=0.4)
    with pytest.raises(InputError, match="grid"):
        get_attack("rays_na", grid=1)
    with pytest.raises(InputError, match="neutral_alpha"):
        get_attack("rays_na", neutral_alpha=0.5)
    with pytest.raises(InputError, match="neutral_max_queries"):
        get_attack("rays_na", neutral_max_queries=0)
    with pytest.raises(InputError, match="bisect_after"):
        get_attack("surfree_na", bisect_after=-1)
    with pytest.raises(InputError, match="monotone_growth"):
        get_attack("psj", monotone_growth=0.9)
    with pytest.raises(InputError, match="noisy_step"):
        get_attack("psj", noisy_step=0.0)


# ----------------------------------------------------------------------------- deterministic f

# 3 images, 400 queries, seed 0; distortions are verified ones (ModelOracle: the reported
# point itself when adversarial, else the nearest adversarial point outward on its ray, 1 %):
# the noise-aware attacks report their boundary estimate, within one grid cell on either side.
@pytest.mark.slow
@pytest.mark.parametrize("na", list(PAIRS))
def test_deterministic_loss_at_most_10_percent(na):
    plain = PAIRS[na]
    x, y, w, b, r = linear_rs_problem(na)
    oracle = ModelOracle(linear_logits_fn(w, b), 2)
    out = {}
    for name in (plain, na):
        res = get_attack(name).run(oracle, x, y, 0, 400)
        assert_sane(res, 400)
        assert (res.status == "attacked").all()
        out[name] = np.median(verified(name, oracle, x, res.x_adv, y) / exact_level_distance(name, r, w, 1))
    print(f"deterministic, median verified / exact distance: {plain} {out[plain]:.4f}  {na} {out[na]:.4f}")
    assert out[na] <= 1.10 * out[plain], out


# ----------------------------------------------------------------------------- RS, exact f

@pytest.mark.slow
@pytest.mark.parametrize("na", list(PAIRS))
def test_rs_verified_distortion_vs_exact_level_distance(na):
    """g_{sigma,n} of the linear f (label criterion), n in {1, 10}, 1,000 queries: the
    verified distortion (P_a = 0.5, evaluator with 800 calls a point) of the noise-aware attack
    beside the plain one's, both divided by eq. (6)'s exact level-P_a distance. The bounds
    asserted are what was measured (see the module's report), not the 10 % goal."""
    plain = PAIRS[na]
    x, y, w, b, r = linear_rs_problem(na, r_o=(0.3, 0.45))
    cfg = VerifyConfig(calls=800)
    for n in (1, 10):
        oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, n)
        exact = exact_level_distance(na, r, w, n)
        ratio = {}
        for name in (plain, na):
            res = get_attack(name).run(oracle, x, y, 0, 1000, check_clean=False)
            assert_sane(res, 1000)
            ratio[name] = verified(name, oracle, x, res.x_adv, y, cfg) / exact
        print(f"n={n}: {plain} {np.round(ratio[plain], 3)}  {na} {np.round(ratio[na], 3)}")
        assert np.all(ratio[na] >= 1 - 0.02)  # never below the exact level distance
        assert np.median(ratio[na]) <= BOUNDS[(na, n)], ratio
        assert np.median(ratio[na]) <= np.median(ratio[plain]), ratio


#: medians of verified / eq. (6) measured on these 2 images (seed 0), plain in brackets:
#: n=1 psj 1.40 (hsja 2.60), rays_na 2.14 (rays inf/4.62), surfree_na 2.12 (surfree 5.19);
#: n=10 psj 1.19 (hsja 3.22), rays_na 1.37 (rays 1.70), surfree_na 1.59 (surfree 6.10);
#: the bounds add ~15 % (surfree_na: 2.43 / 1.59 before session 8's deterministic mode; rays_na
#: 1.65 / 1.27 since session 15's neutral test, kept under the earlier bounds).
#: Far from the 10 % goal at n = 1: see the report of issue 16.
BOUNDS = {("psj", 1): 1.6, ("psj", 10): 1.37, ("rays_na", 1): 2.5, ("rays_na", 10): 1.6,
          ("surfree_na", 1): 2.45, ("surfree_na", 10): 1.85}


# ----------------------------------------------------------------------------- robustness

@pytest.mark.parametrize("name", list(PAIRS))
def test_coin_oracle_terminates_budget_exact_no_nan(name):
    x, y, _, _, _ = linear_rs_problem(name)
    res = get_attack(name).run(CoinOracle(), x, y, 0, 150, check_clean=False)
    assert_sane(res, 150)
    assert (res.queries <= 150).all()
    assert not np.isnan(res.x_adv).any()


class ConstOracle:
    """Every answer the same: always adversarial (``value`` True) or never."""

    name = "const"
    num_classes = 2

    def __init__(self, value: bool):
        self.value = value

    def decide(self, x, y, keys):
        return OracleAnswer(jnp.full((x.shape[0],), self.value), jnp.ones((x.shape[0],), jnp.int32))

    def max_evaluations_per_query(self):
        return 1


@pytest.mark.parametrize("name", list(PAIRS))
def test_all_same_oracles_no_nan_and_identical_reruns(name):
    """An oracle that always (or never) answers 'adversarial': the budget is kept exactly, no
    NaN; and a run under RS repeated with the same seed is bit-identical."""
    x, y, w, b, _ = linear_rs_problem(name)
    for value in (True, False):
        res = get_attack(name).run(ConstOracle(value), x, y, 0, 100, check_clean=False)
        assert_sane(res, 100)
        assert (res.queries <= 100).all() and not np.isnan(res.x_adv).any()
        assert np.all(np.isfinite(res.l2) | ~res.success)
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 1)
    first = get_attack(name).run(oracle, x, y, 2, 150, check_clean=False)
    assert_same_result(first, get_attack(name).run(oracle, x, y, 2, 150, check_clean=False))


@pytest.mark.parametrize("name", list(PAIRS))
def test_batched_equals_one_at_a_time(name):
    """Same result for an image batched or alone (same ids, same key), under RS (n = 1)."""
    x, y, w, b, _ = linear_rs_problem(name)
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 1)
    ids = np.array([7, 3, 11])
    atk = get_attack(name)
    batched = atk.run(oracle, x, y, 5, 200, image_ids=ids, check_clean=False)
    assert_sane(batched, 200)
    for i in range(len(x)):
        single = atk.run(oracle, x[i:i + 1], y[i:i + 1], 5, 200, image_ids=ids[i:i + 1], check_clean=False)
        check_row_equal(batched, i, single)


# ----------------------------------------------------------------------------- psj, statistical

def test_psj_monotone_growth_unlocks_a_lucky_low_estimate():
    """Image 4 of the 8-image linear problem (seed 0), n = 10, ``noisy_step`` 1: its third search
    lands inside the level-1/2 set (0.925 x eq. (6)); with a fixed slack every later step is
    rejected and x_b stays there, with ``monotone_growth`` > 1 (the default 1.1) a step is
    accepted after rejections in a row and the verified distortion drops (1.32 -> 1.21 x eq. (6)
    when written). The run is image id 4 alone: the same trajectory as inside its batch
    (per-image keys)."""
    x, y, w, b, r = linear_rs_problem("psj", r_o=np.linspace(0.3, 0.45, 8), seed=0)
    x, y, r = x[4:5], y[4:5], r[4:5]
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 10)
    exact = exact_level_distance("psj", r, w, 10)
    out = {}
    for growth in (1.0, 1.1):
        attack = get_attack("psj", monotone_growth=growth, noisy_step=1.0)
        res = attack.run(oracle, x, y, 0, 1000, image_ids=np.array([4]), check_clean=False)
        assert_sane(res, 1000)
        trace = res.trace_l2[0][res.trace_queries[0] >= 0] / exact[0]
        out[growth] = (trace, verified("psj", oracle, x, res.x_adv, y, VerifyConfig(calls=800))[0] / exact[0])
    locked, free = out[1.0][0], out[1.1][0]
    assert len(locked) == len(free) >= 5 and np.allclose(locked[:-1], free[:-1])
    assert locked[2] < 0.97 and np.all(locked[2:] == locked[2])  # stuck at the lucky low estimate
    assert free[-1] != locked[-1]  # the growing slack let a step through
    assert out[1.1][1] < out[1.0][1]


def test_psj_rs_n10_near_exact_level_distance():
    """psj against g_{sigma,n} of the linear f, n = 10, 1,000 queries, 4 images (seed 3): the
    verified distortion (P_a = 1/2, 800 calls a point) over eq. (6)'s exact level-1/2 distance is
    never below 0.98 (the verifier's ray bisection), within 40 % on at least 3 of the 4 images and
    within 25 % on at least 2. Binomial tolerances from benchmarks/bench_noise_aware_linear.py
    (16 other images: 16/16 within 40 %, 13/16 within 25 %, median 1.14; this test's images
    measured 1.57, 1.24, 1.24, 1.09): with per-image probabilities 0.95 and 0.8 the two counts
    fail with probability P[Bin(4, 0.95) <= 2] = 1.4 % and P[Bin(4, 0.8) <= 1] = 2.7 %; the run is
    bit-identical from one run to the next, so a failure flags a change of the attack, and the
    thresholds are not the measured values."""
    x, y, w, b, r = linear_rs_problem("psj", r_o=np.linspace(0.3, 0.45, 4), seed=3)
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, 10)
    res = get_attack("psj").run(oracle, x, y, 3, 1000, check_clean=False)
    assert_sane(res, 1000)
    ratio = verified("psj", oracle, x, res.x_adv, y, VerifyConfig(calls=800)) / exact_level_distance("psj", r, w, 10)
    print("psj n=10 verified / eq. (6):", np.round(ratio, 3))
    assert np.all(ratio >= 0.98), ratio
    assert (ratio <= 1.4).sum() >= 3, ratio
    assert (ratio <= 1.25).sum() >= 2, ratio

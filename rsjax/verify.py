"""The evaluator: verified level-P_a adversarial examples against the random classifier g_{sigma,n}.

An attack against g_{sigma,n} returns the closest point x_a that ever got one "adversarial"
answer. Against a random oracle that point is often a lucky one. Eq. (4) of Maho, Furon and
Le Merrer (ICASSP 2022) defines an adversarial example of level P_a as a point with

    level(x) = P[g_{sigma,n}(x) != ref] >= P_a,                                            (4)

where ref = g_sigma(x_o) is the smoothed label of the clean image. This module measures that
level with the evaluator's own calls (never charged to the attack) and turns an attack output
into a *verified* distortion:

1. **Sequential level test** (:func:`level_test_plan`, :class:`LevelTest`): m calls of
   g_{sigma,n} at most, each a full n-sample vote with fresh noise, inspected at the looks
   c_1 < c_2 < ... < c_L = m (m/8, m/4, m/2, m). With k wrong answers out of c, and
   delta_j = (1 - confidence) / L, the test

   * accepts ("level >= P_a") as soon as the one-sided Clopper-Pearson lower bound
     Beta.ppf(delta_j, k, c - k + 1) >= P_a;
   * rejects as soon as the one-sided upper bound Beta.ppf(1 - delta_j, k + 1, c - k) < P_a;
   * rejects at c = m otherwise (not shown to reach P_a).

   A point whose level is below P_a is accepted with probability <= 1 - confidence (union bound
   over the looks). The test's *tolerance* is the level ``accept_level`` at which it accepts with
   probability >= ``power`` (computed exactly from the look thresholds): verified points have a
   level in [P_a, accept_level] with probability >= confidence + power - 1.
   Points far from P_a stop at the first look (m/8 calls).
2. **Ray search** (:func:`verify_rays`): if x_a fails the test, the evaluator searches along
   x(t) = clip(x_o + t (x_a - x_o), 0, 1), t >= 1: t doubles until the test accepts (or the
   clipped ray stops moving, or t reaches ``max_t``), then bisects [t_rejected, t_accepted]
   until t_hi / t_lo - 1 <= ``rel_tol``. The smallest accepted point's distance to x_o is the
   **verified distortion**. Every test on the ray uses the same noise for call c (common random
   numbers: call c of image i uses ``fold_in(fold_in(root, image_id), c)``), so for a classifier
   whose decisions are monotone along the ray (e.g. the linear one) the empirical level is
   monotone in t and the bisection brackets one crossing.
3. **Deterministic classifiers** (no RS): one call, accepted iff adversarial (level 1).

Everything is batched over items (image x P_a) on the host: each round sends every undecided
item's next look of calls in fixed-size blocks to one ``decide`` function, so the number of
compiled programs does not grow with the number of items.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from rsjax.errors import InputError, check_int_at_least, check_open_unit, check_positive
from rsjax.oracle import clopper_pearson_interval

#: decide(points [P, H, W, C], references [P], keys [P], active [P]) -> adversarial [P] (numpy bool)
DecideFn = Callable[[np.ndarray, np.ndarray, jax.Array, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class VerifyConfig:
    """Settings of the evaluator (see module docstring).

    ``calls``: m, the most calls of g_{sigma,n} spent on one tested point; ``looks``: L, the
    number of inspections (at m / 2^(L-1), ..., m / 2, m); ``confidence``: 1 - P[accept a point
    whose level is below P_a]; ``power``: the acceptance probability that defines the stated
    tolerance ``accept_level``; ``growth``: factor of t while expanding; ``rel_tol``: relative
    width of the final bracket of t; ``max_t``: the largest t tried; ``block``: points per
    ``decide`` call (a static shape)."""

    calls: int = 100
    looks: int = 4
    confidence: float = 0.95
    power: float = 0.95
    growth: float = 2.0
    rel_tol: float = 0.01
    max_t: float = 1e6
    block: int = 1024

    def validate(self) -> "VerifyConfig":
        check_int_at_least("verify calls", self.calls, 1)
        check_int_at_least("verify looks", self.looks, 1)
        check_open_unit("verify confidence", self.confidence)
        check_open_unit("verify power", self.power)
        if not (isinstance(self.growth, (int, float)) and self.growth > 1):
            raise InputError(f"verify growth must be > 1, got {self.growth!r}")
        check_positive("verify rel_tol", self.rel_tol)
        if not self.max_t >= 1:
            raise InputError(f"verify max_t must be >= 1, got {self.max_t!r}")
        check_int_at_least("verify block", self.block, 1)
        return self


# ---------------------------------------------------------------------------------------------
# The sequential test
# ---------------------------------------------------------------------------------------------
class LevelTest(NamedTuple):
    """Look schedule and decision thresholds of the sequential test of level >= P_a.

    At look j (after ``looks[j]`` calls) with k wrong answers: accept iff k >= ``accept[j]``,
    reject iff k <= ``reject[j]``; at the last look everything not accepted is rejected."""

    p_a: float
    looks: np.ndarray  # [L] cumulative call counts, last = m
    accept: np.ndarray  # [L] smallest k accepted (look + 1 when none)
    reject: np.ndarray  # [L] largest k rejected (-1 when none)
    accept_level: float  # level accepted with probability >= power (the stated tolerance)


def look_schedule(calls: int, looks: int) -> np.ndarray:
    """Cumulative calls at each look: ceil(m / 2^(L-1-j)), j < L, duplicates removed."""
    sched = sorted({max(1, int(math.ceil(calls / 2 ** (looks - 1 - j)))) for j in range(looks)})
    return np.asarray(sched, np.int64)


def level_test_plan(p_a: float, config: VerifyConfig = VerifyConfig()) -> LevelTest:
    """The thresholds of the sequential test at level P_a (module docstring, item 1) and its
    tolerance: the smallest level p with P[accept | level p] >= ``power``, computed exactly by
    propagating the distribution of k through the looks."""
    check_open_unit("P_a", p_a)
    sched = look_schedule(config.calls, config.looks)
    delta = (1.0 - config.confidence) / len(sched)
    acc, rej = [], []
    for c in sched:
        k = np.arange(c + 1)
        low, high = clopper_pearson_interval(k, c, 1.0 - 2.0 * delta)  # one-sided bounds at level delta
        ok = np.flatnonzero(low >= p_a)
        no = np.flatnonzero(high < p_a)
        acc.append(int(ok[0]) if len(ok) else int(c) + 1)
        rej.append(int(no[-1]) if len(no) else -1)
    acc, rej = np.asarray(acc, np.int64), np.asarray(rej, np.int64)
    test = LevelTest(float(p_a), sched, acc, rej, 1.0)
    grid = np.linspace(p_a, 1.0, 2001)
    power = acceptance_probability(test, grid)
    ok = np.flatnonzero(power >= config.power)
    return test._replace(accept_level=float(grid[ok[0]]) if len(ok) else 1.0)


def acceptance_probability(test: LevelTest, levels) -> np.ndarray:
    """P[the sequential test accepts | true level p] for each p of ``levels`` (exact)."""
    levels = np.atleast_1d(np.asarray(levels, np.float64))
    out = np.zeros(len(levels))
    for i, p in enumerate(levels):
        dist = np.array([1.0])  # distribution of k among paths still undecided
        prev = 0
        accepted = 0.0
        for c, a, r in zip(test.looks, test.accept, test.reject):
            step = stats.binom.pmf(np.arange(c - prev + 1), c - prev, p)
            dist = np.convolve(dist, step)
            k = np.arange(len(dist))
            accepted += dist[k >= a].sum()
            dist = np.where((k >= a) | (k <= r), 0.0, dist)
            prev = c
        out[i] = accepted
    return out


# ---------------------------------------------------------------------------------------------
# Batched evaluation of calls
# ---------------------------------------------------------------------------------------------
def call_keys(root: jax.Array, image_ids: np.ndarray, call_index: np.ndarray) -> jax.Array:
    """Key of evaluator call c of image i: fold_in(fold_in(root, image_id), c) -> [P] keys."""
    ids = jnp.asarray(np.asarray(image_ids, np.int64).astype(np.uint32))
    cs = jnp.asarray(np.asarray(call_index, np.int64).astype(np.uint32))
    return _call_keys_jit(root, ids, cs)


@jax.jit
def _call_keys_jit(root, ids, cs):
    return jax.vmap(lambda i, c: jax.random.fold_in(jax.random.fold_in(root, i), c))(ids, cs)


def _run_calls(decide: DecideFn, points: np.ndarray, refs: np.ndarray, image_ids: np.ndarray,
               call_index: np.ndarray, root: jax.Array, block: int) -> np.ndarray:
    """decide() of call ``call_index[p]`` of image ``image_ids[p]`` at ``points[p]`` for P points,
    in blocks of exactly ``block`` rows (the last block padded with inactive rows, keys computed
    per block: one compiled shape): adversarial [P] bool."""
    p = len(points)
    out = np.zeros(p, bool)
    for lo in range(0, p, block):
        hi = min(p, lo + block)
        m = hi - lo
        sl = slice(lo, hi)
        pts, rf, ids, cs = points[sl], refs[sl], image_ids[sl], call_index[sl]
        active = np.ones(block, bool)
        if m < block:
            pad = block - m
            pts = np.concatenate([pts, np.repeat(pts[:1], pad, axis=0)])
            rf, ids, cs = (np.concatenate([a, np.repeat(a[:1], pad)]) for a in (rf, ids, cs))
            active[m:] = False
        out[lo:hi] = np.asarray(decide(pts, rf, call_keys(root, ids, cs), active))[:m]
    return out


def ray_points(x_o: np.ndarray, direction: np.ndarray, t: np.ndarray) -> np.ndarray:
    """x(t) = clip(x_o + t d, 0, 1) per item: x_o, d [J, ...], t [J] -> [J, ...] float32.
    t = 0 gives x_o exactly."""
    tt = t.reshape((-1,) + (1,) * (x_o.ndim - 1)).astype(np.float32)
    return np.where(tt == 0, x_o, np.clip(x_o + tt * direction, 0.0, 1.0)).astype(np.float32)


def saturation_t(x_o: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Per item, the t beyond which clip(x_o + t d) no longer moves: max over the coordinates
    with d != 0 of the t at which they reach 0 or 1 (0 for a zero direction)."""
    width = int(np.prod(x_o.shape[1:]))  # not -1: no items is a valid call
    xo = x_o.reshape(len(x_o), width).astype(np.float64)
    d = direction.reshape(len(direction), width).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        to_bound = np.where(d > 0, (1.0 - xo) / d, np.where(d < 0, -xo / d, 0.0))
    return to_bound.max(axis=1, initial=0.0)


class TestOutcome(NamedTuple):
    accepted: np.ndarray  # [J] bool
    wrong: np.ndarray  # [J] int wrong answers among the calls made
    calls: np.ndarray  # [J] int calls made


def _answers(decide: DecideFn, points: np.ndarray, refs: np.ndarray, image_ids: np.ndarray, item: np.ndarray,
             cidx: np.ndarray, root: jax.Array, block: int, tags: list | None, cache: dict | None) -> np.ndarray:
    """Answers of calls ``cidx`` at the points of items ``item``; with ``tags`` (a hashable id of
    each item's point: same tag = same point, same reference, same image) and a ``cache`` dict,
    a call already answered for that point (e.g. by the test at another P_a) is not asked again
    and identical requests in one round are asked once."""
    if tags is None or cache is None:
        return _run_calls(decide, points[item], refs[item], image_ids[item], cidx, root, block)
    keys = [(tags[j], int(c)) for j, c in zip(item.tolist(), cidx.tolist())]
    todo: dict = {}
    for r, k in enumerate(keys):
        if k not in cache and k not in todo:
            todo[k] = r
    if todo:
        rows = np.fromiter(todo.values(), np.int64, len(todo))
        it = item[rows]
        got = _run_calls(decide, points[it], refs[it], image_ids[it], cidx[rows], root, block)
        cache.update(zip(todo.keys(), got.tolist()))
    return np.fromiter((cache[k] for k in keys), bool, len(keys))


def run_level_tests(decide: DecideFn, points: np.ndarray, refs: np.ndarray, image_ids: np.ndarray,
                    tests: list[LevelTest], root: jax.Array, config: VerifyConfig,
                    deterministic: bool = False, tags: list | None = None,
                    cache: dict | None = None) -> TestOutcome:
    """Run the sequential test of item j (``tests[j]``) at ``points[j]`` for every item at once,
    one round per look; call c of item j uses ``call_keys(root, image_ids[j], c)``. With
    ``deterministic`` one call decides (accept iff adversarial). ``tags``/``cache``: see
    :func:`_answers` (the answers are the same with or without them)."""
    j_items = len(points)
    wrong = np.zeros(j_items, np.int64)
    calls = np.zeros(j_items, np.int64)
    accepted = np.zeros(j_items, bool)
    live = np.ones(j_items, bool)
    if deterministic:
        adv = (_answers(decide, points, refs, image_ids, np.arange(j_items), np.zeros(j_items, np.int64), root,
                        config.block, tags, cache) if j_items else np.zeros(0, bool))
        return TestOutcome(adv, adv.astype(np.int64), np.ones(j_items, np.int64))
    look = np.zeros(j_items, np.int64)
    while live.any():
        idx = np.flatnonzero(live)
        target = np.array([tests[j].looks[look[j]] for j in idx])
        need = target - calls[idx]
        item = np.repeat(idx, need)
        cidx = np.concatenate([np.arange(calls[j], t) for j, t in zip(idx, target)])
        adv = _answers(decide, points, refs, image_ids, item, cidx, root, config.block, tags, cache)
        np.add.at(wrong, item, adv.astype(np.int64))
        calls[idx] = target
        for j in idx:
            t = tests[j]
            if wrong[j] >= t.accept[look[j]]:
                accepted[j], live[j] = True, False
            elif wrong[j] <= t.reject[look[j]] or look[j] == len(t.looks) - 1:
                live[j] = False
            else:
                look[j] += 1
    return TestOutcome(accepted, wrong, calls)


def ray_tags(x_o: np.ndarray, x_a: np.ndarray, refs: np.ndarray, image_ids: np.ndarray) -> list[bytes]:
    """One id per item's ray (image id, reference, x_o, x_a): items with equal tags share points."""
    out = []
    for i, r, a, b in zip(np.asarray(image_ids).tolist(), np.asarray(refs).tolist(), x_o, x_a):
        h = hashlib.sha1(np.int64(i).tobytes() + np.int64(r).tobytes())
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(np.ascontiguousarray(b).tobytes())
        out.append(h.digest())
    return out


# ---------------------------------------------------------------------------------------------
# Verified distortions
# ---------------------------------------------------------------------------------------------
class Verification(NamedTuple):
    """Per item (image x P_a) outcome of :func:`verify_rays` (numpy arrays [J])."""

    verified: np.ndarray  # bool: a point of level >= P_a was found on the ray
    t: np.ndarray  # float: its ray parameter (nan when not verified)
    x: np.ndarray  # [J, H, W, C] the verified point (x_a when not verified)
    l2: np.ndarray  # float: ||x - x_o||_2 (inf when not verified)
    linf: np.ndarray  # float: ||x - x_o||_inf (inf when not verified)
    level: np.ndarray  # float: measured level at the verified point (at x_a when not verified)
    level_low: np.ndarray  # two-sided Clopper-Pearson interval of that level
    level_high: np.ndarray
    level_calls: np.ndarray  # int: calls behind that level estimate
    calls: np.ndarray  # int: all evaluator calls spent on the item
    tests: np.ndarray  # int: points tested on the ray
    accept_level: np.ndarray  # float: the test's stated tolerance at the item's P_a
    raw_level: np.ndarray  # float: measured level at x_a itself (the first test)
    raw_level_calls: np.ndarray  # int: calls behind it


def _distances(x: np.ndarray, x_o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = (x.astype(np.float64) - x_o.astype(np.float64)).reshape(len(x), int(np.prod(x.shape[1:])))
    return np.sqrt((d * d).sum(axis=1)), np.abs(d).max(axis=1, initial=0.0)


def verify_rays(decide: DecideFn, x_o, x_a, refs, p_a, image_ids, root: jax.Array,
                config: VerifyConfig = VerifyConfig(), deterministic: bool = False,
                interval_confidence: float = 0.95, cache: dict | None = None) -> Verification:
    """Verified distortion of each attack output (module docstring, items 1-3).

    ``x_o``, ``x_a`` [J, H, W, C]: clean images and attack outputs (one item per image x P_a);
    ``refs`` [J]: the reference labels the level is measured against; ``p_a`` [J]: the levels;
    ``image_ids`` [J]: seed each item's calls (items of one image share their noise). ``decide``
    answers one call of g_{sigma,n} per point (see :data:`DecideFn`). Items on the same ray (an
    output verified at several P_a) share the answers at the points they both test (common
    random numbers make them identical), so ``cache`` (a dict, new if None) saves calls, not
    numbers; ``calls`` still counts every call each item's tests used."""
    cache = {} if cache is None else cache
    config.validate()
    x_o = np.asarray(x_o, np.float32)
    x_a = np.asarray(x_a, np.float32)
    j_items = len(x_o)
    refs = np.asarray(refs, np.int32).reshape(j_items)
    p_a = np.broadcast_to(np.asarray(p_a, np.float64), (j_items,))
    ids = np.asarray(image_ids, np.int64).reshape(j_items)
    plans = {float(p): level_test_plan(float(p), config) for p in np.unique(p_a)}
    tests = [plans[float(p)] for p in p_a]
    direction = x_a - x_o
    t_sat = np.minimum(saturation_t(x_o, direction), config.max_t)
    moves = t_sat > 0

    t_cur = np.ones(j_items)
    t_lo = np.full(j_items, np.nan)  # largest t rejected
    t_hi = np.full(j_items, np.nan)  # smallest t accepted
    best = np.zeros((j_items, 2), np.int64)  # wrong answers and calls of the test at t_hi
    first = np.zeros((j_items, 2), np.int64)
    total = np.zeros(j_items, np.int64)
    n_tests = np.zeros(j_items, np.int64)
    live = moves.copy()
    tags = ray_tags(x_o, x_a, refs, ids)
    # a zero direction (x_a == x_o, e.g. no adversarial known) is tested at x_o once
    while True:
        idx = np.flatnonzero(live | (n_tests == 0))
        if len(idx) == 0:
            break
        pts = ray_points(x_o[idx], direction[idx], np.where(moves[idx], t_cur[idx], 0.0))
        tcur = np.where(moves[idx], t_cur[idx], 0.0)
        out = run_level_tests(decide, pts, refs[idx], ids[idx], [tests[j] for j in idx], root, config,
                              deterministic, [(tags[j], float(t)) for j, t in zip(idx, tcur)], cache)
        total[idx] += out.calls
        for row, j in enumerate(idx):
            if n_tests[j] == 0:
                first[j] = (out.wrong[row], out.calls[row])
            n_tests[j] += 1
            if out.accepted[row]:
                t_hi[j] = t_cur[j]
                best[j] = (out.wrong[row], out.calls[row])
            else:
                t_lo[j] = t_cur[j]
            if not moves[j]:
                live[j] = False
                continue
            if np.isnan(t_hi[j]):  # expanding
                if t_cur[j] >= t_sat[j] or t_cur[j] >= config.max_t:
                    live[j] = False
                else:
                    t_cur[j] = min(t_cur[j] * config.growth, t_sat[j])
                continue
            if np.isnan(t_lo[j]) or t_hi[j] / t_lo[j] - 1.0 <= config.rel_tol:
                live[j] = False  # accepted at t = 1, or the bracket is tight
            else:
                t_cur[j] = 0.5 * (t_lo[j] + t_hi[j])
    verified = ~np.isnan(t_hi)
    x_ver = np.where(verified.reshape((-1,) + (1,) * (x_o.ndim - 1)),
                     ray_points(x_o, direction, np.where(verified & moves, np.nan_to_num(t_hi), 0.0)), x_a)
    l2, linf = _distances(x_ver, x_o)
    l2 = np.where(verified, l2, np.inf)
    linf = np.where(verified, linf, np.inf)
    k = np.where(verified, best[:, 0], first[:, 0])
    c = np.where(verified, best[:, 1], first[:, 1])
    low, high = clopper_pearson_interval(k, np.maximum(c, 1), interval_confidence)
    return Verification(verified, np.where(verified, t_hi, np.nan), x_ver, l2, linf,
                        k / np.maximum(c, 1), low, high, c, total, n_tests,
                        np.array([t.accept_level for t in tests]).reshape(j_items),
                        first[:, 0] / np.maximum(first[:, 1], 1), first[:, 1])


def level_at_points(decide: DecideFn, x, refs, p_a, image_ids, root: jax.Array,
                    config: VerifyConfig = VerifyConfig(), deterministic: bool = False,
                    interval_confidence: float = 0.95, cache: dict | None = None) -> dict[str, np.ndarray]:
    """The sequential test at fixed points (e.g. the clean images: is x_o already of level
    P_a?): dict of ``accepted``, ``level``, ``level_low``, ``level_high``, ``calls`` [J]. Items at
    the same point (one image tested at several P_a) share their answers (``cache``)."""
    config.validate()
    x = np.asarray(x, np.float32)
    j_items = len(x)
    p_a = np.broadcast_to(np.asarray(p_a, np.float64), (j_items,))
    refs = np.asarray(refs, np.int32).reshape(j_items)
    ids = np.asarray(image_ids, np.int64).reshape(j_items)
    plans = {float(p): level_test_plan(float(p), config) for p in np.unique(p_a)}
    tags = [(t, "point") for t in ray_tags(x, x, refs, ids)]
    out = run_level_tests(decide, x, refs, ids, [plans[float(p)] for p in p_a], root, config, deterministic,
                          tags, {} if cache is None else cache)
    c = np.maximum(out.calls, 1)
    low, high = clopper_pearson_interval(out.wrong, c, interval_confidence)
    return {"accepted": out.accepted, "level": out.wrong / c, "level_low": low, "level_high": high,
            "calls": out.calls}


# ---------------------------------------------------------------------------------------------
# decide functions for the library's oracles
# ---------------------------------------------------------------------------------------------
def oracle_decide(oracle) -> tuple[DecideFn, bool]:
    """(decide, deterministic) for a library oracle: a :class:`rsjax.oracle.SmoothedOracle` is
    evaluated with the ``label`` criterion (one call = one plurality vote of n samples, compared
    with the reference), a :class:`rsjax.oracle.ModelOracle` is deterministic."""
    from rsjax.oracle import ModelOracle, SmoothedOracle, jitted_decide

    if isinstance(oracle, SmoothedOracle):
        label = oracle.as_label_oracle()
        fn = jitted_decide(label)

        def decide(pts, refs, keys, active, _keep=label):  # the jit cache holds the oracle weakly
            ans = fn(jnp.asarray(pts), jnp.asarray(refs, jnp.int32), keys, jnp.asarray(active))
            return np.asarray(ans.adversarial)

        return decide, False
    if isinstance(oracle, ModelOracle):
        fn = jitted_decide(oracle)

        def decide_f(pts, refs, keys, active, _keep=oracle):
            return np.asarray(fn(jnp.asarray(pts), jnp.asarray(refs, jnp.int32), keys).adversarial)

        return decide_f, True
    raise InputError(f"verification needs a SmoothedOracle or a ModelOracle, got {type(oracle).__name__}")


def verify_attack(oracle, x_o, x_a, refs, p_a: float, key: jax.Array, image_ids=None,
                  config: VerifyConfig = VerifyConfig()) -> Verification:
    """:func:`verify_rays` for one P_a with a library oracle (its ``label`` version for a
    smoothed one). ``key``: the evaluator's root key (keep it apart from the attack's)."""
    x_o = np.asarray(x_o, np.float32)
    ids = np.arange(len(x_o)) if image_ids is None else np.asarray(image_ids, np.int64)
    decide, det = oracle_decide(oracle)
    return verify_rays(decide, x_o, x_a, refs, p_a, ids, key, config, deterministic=det)

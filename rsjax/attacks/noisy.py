"""Noise-aware building blocks shared by the noise-aware attacks (``psj``, ``rays_na``,
``surfree_na``): a batched probabilistic bisection and a capped sequential (SPRT) decision.

Both spend their queries through :func:`rsjax.attacks.common.query_one` (exact counting, the
budget is never exceeded, unsent probes move nothing), run in ``lax.while_loop`` with a static
bound on the rounds, and keep every per-image quantity in arrays with a leading image axis.

Probabilistic bisection (Horstein 1963; Waeber, Frazier, Henderson 2013)
----------------------------------------------------------------------
A segment ``point(a)``, a in [0, 1], whose far end (a = 1) is adversarial and near end (a = 0)
is not; the unknown crossing t in [0, 1] lies in one of ``G`` equal cells of a fixed grid.
An answer at a is *correct* ("adversarial" iff a > t) with probability p_c, wrong otherwise.
For a random classifier g_{sigma,n} the probability of an "adversarial" answer at a is the
level of point(a), a sigmoid in a; the constant-p_c model is the standard robust surrogate:
the posterior concentrates where that probability crosses 1/2 (the level-1/2 point).

* p_c known (``p_c`` a number) or estimated: a small set of hypotheses
  p_c in ``P_HYPOTHESES`` (0.6 ... 0.999) with a prior over them (carried between searches by
  the attacks, see :func:`carry_prior`), inferred jointly with t.
* The joint posterior is stored as exact integers: per cell c the number D[c] of answers that
  contradict "t in cell c", and the number N of answers. The posterior of (c, h) is
  prior_h p_h^(N - D[c]) (1 - p_h)^D[c]; it is evaluated in the log domain with fixed-order sums
  (:func:`rsjax.attacks.common.tree_sum`, a pairwise prefix sum), so an image's search does not
  depend on which images share its batch.
* Each round queries the posterior median of t (the grid edge nearest to it in probability)
  and updates D; the search stops
  when the central ``credible`` interval of t is at most ``width`` wide, or after
  ``max_queries`` rounds (a static cap), or when the budget ends.
* Result: the posterior median ``a`` (the estimate of the crossing), the credible interval
  [lo, hi], the posterior over the p_c hypotheses and its mean. With a deterministic oracle and
  p_c close to 1 this is exactly the bisection on the grid edges, one query per halving.

Sequential decision (Wald's SPRT with an indifference zone, capped)
------------------------------------------------------------------
"Is this point adversarial?" under answers that are right with probability p1 > 1/2:
H1: P[adversarial answer] = p1 vs H0: = 1 - p1 (the indifference zone is (1 - p1, p1)).
The log-likelihood ratio moves by +-log(p1 / (1 - p1)) per answer; accept H1 at
log((1 - beta) / alpha), H0 at log(beta / (1 - alpha)); at the cap (``max_queries``) or when
the budget ends, decide "adversarial" only if the LLR is positive (a tie is "no"). With p1
estimated close to 1 (a deterministic oracle) one answer decides.

The symmetric test is a coin flip for a point whose level is 1/2: it lies mid-way in the
indifference zone, so either threshold is reached with probability 1/2. An attack that asks
"is the candidate better than my current point?" at its current level-1/2 estimate therefore
adopts half of the candidates that are no better, and its iterate random-walks (measured:
rays_na's direction degrading with the budget at n = 1, ``benchmarks/RESULTS.md``).
:class:`NeutralTest` puts H0 at 1/2 itself (a candidate no better than the current point)
against H1 at p1, with error rates of its own: a no-better candidate is then adopted with
probability about alpha (Wald's bound alpha / (1 - beta); less with the cap, at which such rows
say "no"), one whose level at the point is p1 with probability about 1 - beta.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.attacks.common import AttackCore, AttackEnv, query_one, tree_sum

#: the p_c hypotheses of an estimated answer accuracy, and their default prior: half on a
#: (nearly) deterministic oracle. Answers at the posterior median are 50/50 under every
#: hypothesis, so p_c is learnt only from contradictions: a single contradiction divides the
#: weight of 0.999 by ~1000, while a flat prior would keep a deterministic search spending
#: queries to rule out low accuracies that consistent answers hardly contradict.
P_HYPOTHESES = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
P_PRIOR = (0.5 / 6,) * 6 + (0.5,)


def hypotheses(p_c: float | None) -> np.ndarray:
    """The p_c hypotheses: the one known value, or :data:`P_HYPOTHESES` (estimated)."""
    if p_c is None:
        return np.asarray(P_HYPOTHESES, np.float32)
    return np.asarray([p_c], np.float32)


def default_prior(b: int, p_c: float | None) -> jax.Array:
    """Default log prior over the hypotheses (:data:`P_PRIOR`; 0 for a known p_c): [B, H]."""
    if p_c is not None:
        return jnp.zeros((b, 1), jnp.float32)
    return jnp.broadcast_to(jnp.log(jnp.asarray(P_PRIOR, jnp.float32)), (b, len(P_PRIOR)))


def carry_prior(log_post: jax.Array, keep: float = 0.5) -> jax.Array:
    """Prior of the next search from the posterior over p_c of the last one: the mixture
    ``keep * posterior + (1 - keep) * default`` (the accuracy along a new segment resembles,
    but need not equal, the last one): [B, H] log -> [B, H] log."""
    h = log_post.shape[-1]
    post = jnp.exp(log_post)
    base = jnp.exp(default_prior(1, None if h > 1 else 0.5))
    return jnp.log(keep * post + (1.0 - keep) * base)


def prefix_sum(v: jax.Array) -> jax.Array:
    """Inclusive prefix sum over the last axis in a fixed order (Hillis-Steele: log2(G)
    shifted elementwise adds), identical for one row whatever the other rows."""
    g = v.shape[-1]
    shift = 1
    while shift < g:
        pad = jnp.zeros(v.shape[:-1] + (shift,), v.dtype)
        v = v + jnp.concatenate([pad, v[..., :-shift]], axis=-1)
        shift *= 2
    return v


class Posterior(NamedTuple):
    """Summary of the posterior of a probabilistic bisection (all [B] unless noted)."""

    median: jax.Array  # posterior median of t (a grid edge)
    lo: jax.Array  # lower end of the central credible interval (grid edge)
    hi: jax.Array  # upper end
    log_hyp: jax.Array  # [B, H] log posterior over the p_c hypotheses
    p_c: jax.Array  # posterior mean of p_c


def _marginals(contra: jax.Array, n_answers: jax.Array, log_prior: jax.Array, p_hyp: np.ndarray):
    """(cdf [B, G] with cdf[:, c] = P[t < (c+1)/G], posterior over hypotheses [B, H])."""
    p = jnp.asarray(p_hyp, jnp.float32)  # [H]
    log_r = jnp.log1p(-p) - jnp.log(p)  # log((1-p)/p) < 0
    dmin = jnp.min(contra, axis=-1)  # exact (integers)
    rel = (contra - dmin[:, None]).astype(jnp.float32)  # [B, G] >= 0
    w = jnp.exp(rel[:, None, :] * log_r[None, :, None])  # [B, H, G] r_h^(D - Dmin) in (0, 1]
    s = tree_sum(w, axis=2)  # [B, H] >= 1
    nf = n_answers.astype(jnp.float32)
    log_h = (log_prior + nf[:, None] * jnp.log(p)[None, :] + dmin.astype(jnp.float32)[:, None] * log_r[None, :]
             + jnp.log(s))
    log_h = log_h - jnp.max(log_h, axis=1, keepdims=True)
    ph = jnp.exp(log_h)
    ph = ph / tree_sum(ph, axis=1)[:, None]
    cells = tree_sum(ph[:, :, None] * w / s[:, :, None], axis=1)  # [B, G] marginal of t
    cdf = prefix_sum(cells)
    return cdf / cdf[:, -1:], ph


def posterior(contra: jax.Array, n_answers: jax.Array, log_prior: jax.Array, p_hyp: np.ndarray,
              credible: float) -> Posterior:
    """The posterior of (t, p_c) from the contradiction counts ``contra`` [B, G] (int), the
    number of answers [B] and the log prior over hypotheses [B, H]."""
    g = contra.shape[-1]
    cdf, ph = _marginals(contra, n_answers, log_prior, p_hyp)

    def edge(q):  # smallest edge e = (k+1)/G with P[t < e] >= q
        k = jnp.sum((cdf < q).astype(jnp.int32), axis=1)  # exact integer count
        return (jnp.minimum(k, g - 1) + 1).astype(jnp.float32) / g

    def low_edge(q):  # largest edge e = k/G with P[t < e] <= q
        k = jnp.sum((cdf <= q).astype(jnp.int32), axis=1)
        return k.astype(jnp.float32) / g

    tail = 0.5 * (1.0 - credible)
    p = jnp.asarray(p_hyp, jnp.float32)
    return Posterior(median=edge(0.5), lo=low_edge(tail), hi=edge(1.0 - tail),
                     log_hyp=jnp.log(jnp.maximum(ph, 1e-30)), p_c=tree_sum(ph * p[None, :], axis=1))


def _query_edge(contra: jax.Array, n_answers: jax.Array, log_prior, p_hyp, g: int):
    """The edge queried next: of the two grid edges around the posterior median, the one whose
    cdf is closer to 1/2 (Horstein's median restricted to the grid; always taking the upper one
    would keep asking the same edge once the mass sits in one cell), within 1 .. G-1: [B]."""
    cdf, _ = _marginals(contra, n_answers, log_prior, p_hyp)
    k1 = 1 + jnp.sum((cdf < 0.5).astype(jnp.int32), axis=1)  # smallest k with P[t < k/G] >= 1/2
    k1 = jnp.minimum(k1, g)
    e1 = jnp.take_along_axis(cdf, (k1 - 1)[:, None], axis=1)[:, 0]
    e0 = jnp.where(k1 >= 2, jnp.take_along_axis(cdf, jnp.maximum(k1 - 2, 0)[:, None], axis=1)[:, 0], 0.0)
    k = jnp.where(0.5 - e0 < e1 - 0.5, k1 - 1, k1)
    return jnp.clip(k, 1, g - 1)


def update_counts(contra: jax.Array, k: jax.Array, adversarial: jax.Array, answered: jax.Array) -> jax.Array:
    """Contradiction counts after an answer at edge k ([B] int) of the cells [B, G]: an
    adversarial answer contradicts every cell at or beyond the edge (t >= a), a
    non-adversarial one every cell before it (t < a); unanswered rows are unchanged."""
    g = contra.shape[-1]
    cell = jnp.arange(g, dtype=jnp.int32)[None, :]
    beyond = cell >= k[:, None]
    hit = jnp.where(adversarial[:, None], beyond, ~beyond) & answered[:, None]
    return contra + hit.astype(contra.dtype)


class SearchResult(NamedTuple):
    a: jax.Array  # [B] posterior median of the crossing (the estimate reported)
    lo: jax.Array  # [B] credible interval
    hi: jax.Array  # [B]
    log_hyp: jax.Array  # [B, H] posterior over the p_c hypotheses
    p_c: jax.Array  # [B] its mean
    queries: jax.Array  # [B] int32 queries this search spent
    any_adv: jax.Array  # [B] bool some answer was adversarial
    min_adv: jax.Array  # [B] smallest a answered adversarial (1 when none)
    max_clean: jax.Array  # [B] largest a answered not adversarial (0 when none)
    disagreed: jax.Array  # [B] bool one edge was answered both ways: the oracle is random


def prob_bisection(oracle, env: AttackEnv, core: AttackCore, point: Callable[[jax.Array], jax.Array],
                   mask: jax.Array, *, grid: int, max_queries: int, width: jax.Array | float,
                   credible: float = 0.9, p_c: float | None = None,
                   log_prior: jax.Array | None = None,
                   enough: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                   bracket: jax.Array | None = None,
                   midpoint: jax.Array | None = None) -> tuple[SearchResult, AttackCore]:
    """Probabilistic bisection of the crossing along ``point(a)`` ([B] -> [B, ...] points,
    a = 1 adversarial end, a = 0 the other) for the images of ``mask`` [B] (module docstring).

    Stops an image when its ``credible`` interval is at most ``width`` ([B] or scalar, in a
    units; a grid cell is 1/grid) or ``enough(lo, hi)`` ([B] bool, optional: a caller's own
    precision, e.g. SurFree's distance gain at stake), after ``max_queries`` rounds (static),
    or when its budget ends. ``bracket`` ([B] bool, optional): rows that may also stop on the
    *answered* bracket [max_clean, min_adv] when it is consistent (max_clean < min_adv) -- for a
    caller that has not seen the oracle answer one point both ways: a deterministic bisection's
    interval, which the estimated-p_c credible interval (widened by the low-accuracy
    hypotheses) reaches only after several more queries. ``midpoint`` ([B] bool, optional):
    rows that query the middle edge of their answered bracket while it is consistent and two
    cells or more wide (a deterministic bisection; the posterior median, pulled towards the
    side with more cells outside the bracket, halves it less) -- for a caller confident the
    oracle is deterministic: such queries never repeat an edge, so they never show noise.
    ``p_c``: known accuracy, or None to estimate it over the hypotheses with ``log_prior``
    [B, H] (default uniform). Returns (SearchResult, core)."""
    b = mask.shape[0]
    p_hyp = hypotheses(p_c)
    if log_prior is None:
        log_prior = default_prior(b, p_c)
    wid = jnp.broadcast_to(jnp.asarray(width, jnp.float32), (b,))
    q0 = core.queries

    def narrow(lo, hi):
        done = hi - lo <= wid
        return done if enough is None else done | enough(lo, hi)

    def converged(contra, n, min_adv, max_clean):
        pst = posterior(contra, n, log_prior, p_hyp, credible)
        done = narrow(pst.lo, pst.hi)
        if bracket is None:
            return done
        return done | (bracket & (max_clean < min_adv) & narrow(max_clean, min_adv))

    def cond(c):
        i, live, contra, n = c[:4]
        return (i < max_queries) & jnp.any(live)

    def body(c):
        i, live, contra, n, any_adv, min_adv, max_clean, seen, core_ = c
        k = _query_edge(contra, n, log_prior, p_hyp, grid)
        if midpoint is not None:  # a consistent answered bracket is halved exactly (bisection)
            lo_k = jnp.round(max_clean * grid).astype(jnp.int32)
            hi_k = jnp.round(min_adv * grid).astype(jnp.int32)
            k = jnp.where(midpoint & (hi_k - lo_k >= 2), (lo_k + hi_k) // 2, k)
        a = k.astype(jnp.float32) / grid
        out = query_one(oracle, env, core_, point(a), live)
        contra = update_counts(contra, k, out.adversarial, out.sent)
        seen = record_answer(seen, k, out.adversarial, out.sent)
        n = n + out.sent.astype(jnp.int32)
        any_adv = any_adv | out.adversarial
        min_adv = jnp.where(out.adversarial, jnp.minimum(min_adv, a), min_adv)
        max_clean = jnp.where(out.sent & ~out.adversarial, jnp.maximum(max_clean, a), max_clean)
        live = live & out.sent & ~converged(contra, n, min_adv, max_clean)
        return i + 1, live, contra, n, any_adv, min_adv, max_clean, seen, out.core

    contra0 = jnp.zeros((b, grid), jnp.int32)
    n0 = jnp.zeros((b,), jnp.int32)
    seen0 = jnp.zeros((b, grid), jnp.int32)
    init = (0, mask, contra0, n0, jnp.zeros((b,), bool), jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32),
            seen0, core)
    _, _, contra, n, any_adv, min_adv, max_clean, seen, core = jax.lax.while_loop(cond, body, init)
    pst = posterior(contra, n, log_prior, p_hyp, credible)
    res = SearchResult(pst.median, pst.lo, pst.hi, pst.log_hyp, pst.p_c, core.queries - q0, any_adv, min_adv, max_clean,
                       jnp.any(seen == 3, axis=1))
    return res, core


def record_answer(seen: jax.Array, k: jax.Array, adversarial: jax.Array, answered: jax.Array) -> jax.Array:
    """The answers seen at each edge [B, G] (bit 1: not adversarial, bit 2: adversarial) after
    an answer at edge k ([B] int); unanswered rows are unchanged. An edge holding 3 was answered
    both ways: a deterministic oracle never does that (the same point gets the same answer),
    whereas several crossings along a curved boundary only make answers at *different* edges
    disagree, which the p_c posterior cannot tell from noise."""
    g = seen.shape[-1]
    at_k = (jnp.arange(g, dtype=jnp.int32)[None, :] == k[:, None]) & answered[:, None]
    return seen | jnp.where(at_k, jnp.where(adversarial[:, None], 2, 1), 0)


# --------------------------------------------------------------------------- SPRT

class Decision(NamedTuple):
    adversarial: jax.Array  # [B] bool decision "adversarial" (False for rows not asked)
    decided: jax.Array  # [B] bool a threshold was reached (False: cap or budget decided)
    llr: jax.Array  # [B] final log-likelihood ratio
    queries: jax.Array  # [B] int32 queries spent
    mixed: jax.Array  # [B] bool the point was answered both ways: the oracle is random


class NeutralTest(NamedTuple):
    """Where ``rows`` [B]: the SPRT's H0 is P[adversarial answer] = 1/2 instead of 1 - p1 (a
    candidate no better than the current point, whose level is ~1/2 by construction), with its
    own error rates, its own cap of answers (a static int), and "adversarial" only
    on reaching the upper threshold (at the cap or the end of the budget such rows say "no")."""

    rows: jax.Array  # [B] bool
    alpha: float = 0.2
    beta: float = 0.2
    max_queries: int = 40


def sprt(oracle, env: AttackEnv, core: AttackCore, point: jax.Array, mask: jax.Array, p1: jax.Array | float,
         *, max_queries: int, alpha: float = 0.05, beta: float = 0.05,
         neutral: NeutralTest | None = None) -> tuple[Decision, AttackCore]:
    """Capped SPRT of "``point`` [B, ...] is adversarial" for the rows of ``mask`` [B]:
    H1 P[adversarial answer] = p1 ([B] or scalar in (1/2, 1)) vs H0 = 1 - p1 (module
    docstring), or, for the rows of ``neutral`` (:class:`NeutralTest`), vs H0 = 1/2: an
    answer then moves the log-likelihood ratio by log(2 p1) ("adversarial") or
    log(2 (1 - p1)) ("not"). Every answer is a query at the same point (fresh oracle
    randomness). ``max_queries``: the cap of answers of the other rows (static)."""
    b = mask.shape[0]
    p1 = jnp.clip(jnp.broadcast_to(jnp.asarray(p1, jnp.float32), (b,)), 0.5 + 1e-3, 1.0 - 1e-6)
    step = jnp.log(p1) - jnp.log1p(-p1)  # > 0
    step_yes, step_no = step, -step
    up = math.log((1.0 - beta) / alpha)
    down = math.log(beta / (1.0 - alpha))
    cap = bound = max_queries
    strict = jnp.zeros((b,), bool)
    if neutral is not None:
        strict = neutral.rows
        bound = max(max_queries, neutral.max_queries)
        step_yes = jnp.where(strict, jnp.log(2.0 * p1), step_yes)
        step_no = jnp.where(strict, jnp.log(2.0 * (1.0 - p1)), step_no)
        up = jnp.where(strict, math.log((1.0 - neutral.beta) / neutral.alpha), up)
        down = jnp.where(strict, math.log(neutral.beta / (1.0 - neutral.alpha)), down)
        cap = jnp.where(strict, neutral.max_queries, max_queries)
    q0 = core.queries

    def cond(c):
        i, live = c[:2]
        return (i < bound) & jnp.any(live)

    def body(c):
        i, live, llr, decided, yes, no, core_ = c
        out = query_one(oracle, env, core_, point, live)
        llr = llr + jnp.where(out.sent, jnp.where(out.adversarial, step_yes, step_no), 0.0)
        yes = yes | out.adversarial
        no = no | (out.sent & ~out.adversarial)
        hit = out.sent & ((llr >= up) | (llr <= down))
        decided = decided | hit
        live = live & out.sent & ~hit & (i + 1 < cap)
        return i + 1, live, llr, decided, yes, no, out.core

    zb = jnp.zeros((b,), bool)
    _, _, llr, decided, yes, no, core = jax.lax.while_loop(
        cond, body, (0, mask, jnp.zeros((b,), jnp.float32), zb, zb, zb, core))
    accept = jnp.where(strict, llr >= up, llr > 0)
    return Decision(mask & accept, decided, llr, core.queries - q0, yes & no), core


def set_current(env: AttackEnv, core: AttackCore, candidate: jax.Array, ok: jax.Array,
                norm: Callable[[jax.Array], jax.Array] | None = None) -> AttackCore:
    """Report ``candidate`` [B, ...] where ``ok`` [B], closer or not (a noise-aware attack
    reports its current estimate of the level-1/2 boundary point, not the closest point that
    was ever answered adversarial: against a random oracle that one is a lucky point).
    ``norm``: the [B]-valued L2 norm of the reported distance (default
    :func:`rsjax.geometry.l2_norm`)."""
    from rsjax.attacks.common import bcast, l2_norm, linf_norm

    d = candidate - env.x
    return core._replace(
        best_x=jnp.where(bcast(ok, candidate), candidate, core.best_x),
        best_l2=jnp.where(ok, (norm or l2_norm)(d), core.best_l2),
        best_linf=jnp.where(ok, linf_norm(d), core.best_linf),
        found=core.found | ok,
    )


__all__ = ["Decision", "NeutralTest", "P_HYPOTHESES", "Posterior", "SearchResult", "carry_prior", "hypotheses", "posterior",
           "prefix_sum", "prob_bisection", "record_answer", "set_current", "sprt", "update_counts", "default_prior", "P_PRIOR"]

"""Randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019): Monte Carlo votes, PREDICT,
CERTIFY and certified accuracy.

Smoothed classifier g_sigma(x) = argmax_c P[f(x + sigma N) = c], N ~ N(0, I), noise added in
[0,1] pixel space before the model's normalization, not clipped unless ``clip=True``.
The practical classifier g_{sigma,n}(x) is the plurality vote of n micro-decisions f(x + sigma n_j).

Tie rule (everywhere in rsjax): among classes with the maximal count the **lowest class index**
wins (``argmax`` of the counts), exactly like ``argmax`` of logits in the base classifier.

Randomness: sample j of point i uses the key ``fold_in(key_i, j)`` (``key_i`` the point's own key,
e.g. ``fold_in(seed_key, image_id)``), so its noise does not depend on the batch size, on the
chunk size, on the order of the points or on early stopping. The N(0, I) generators
(``noise='hash'`` or ``'threefry'``) are in :mod:`rsjax.noise`.

Computation (:func:`vote_counts`): the B points x n samples are flattened into (point, sample)
slots and walked in fixed-size chunks of ``chunk_size`` slots inside one ``lax.while_loop``:
each chunk gives every still-active point its next samples (contiguous sample indices), draws
their noise, runs the model once on the whole chunk and adds the labels to the counts. ``n`` is a
traced value (per point), so changing n never recompiles; padded points get n = 0 and cost nothing.

Exact early stopping (``stop="label"``): after each chunk a point stops as soon as its leader
c* (lowest-index argmax of the counts) cannot be overtaken by the r = n - m samples left: for
every rival c, n_c + r < n_{c*} if c < c*, and n_c + r <= n_{c*} if c > c* (the tie rule). The
returned label is then exactly the label of the full n-sample vote with the same keys.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from rsjax.errors import InputError, check_int_at_least, check_open_unit, check_positive
# the generators live in rsjax.noise; the names stay importable from here
from rsjax.noise import (NOISE_IMPLS, _hash_normal, erfinv_giles, sample_key,  # noqa: F401
                         sample_noise)
from rsjax.xla_options import jit

LogitsFn = Callable[[jax.Array], jax.Array]
STOP_RULES = (None, "label")
DEFAULT_CHUNK_SIZE = 1024
#: rows per model call inside a vote chunk on the CPU backend, for models without their own block
CPU_EVAL_ROWS = 256


# ---------------------------------------------------------------------------------------------
# Noisy copies (the noise itself: rsjax.noise)
# ---------------------------------------------------------------------------------------------
def noisy_copies(x: jax.Array, key: jax.Array, sigma: float, n: int, *, clip: bool = False,
                 noise: str = "hash") -> jax.Array:
    """The n noisy copies x + sigma N_j (j < n) of one point x [H,W,C] that :func:`vote_counts`
    evaluates; for tests and figures."""
    ks = jax.vmap(lambda j: sample_key(key, j))(jnp.arange(n, dtype=jnp.uint32))
    z = jax.vmap(lambda k: sample_noise(k, x.shape, noise))(ks)
    out = x[None] + sigma * z
    return jnp.clip(out, 0.0, 1.0) if clip else out


# ---------------------------------------------------------------------------------------------
# Stopping rules (pure functions of the counts so far and the samples left)
# ---------------------------------------------------------------------------------------------
def label_decided(counts: jax.Array, remaining: jax.Array) -> jax.Array:
    """True where the plurality label (lowest-index tie rule) can no longer change whatever the
    ``remaining`` [B] samples give: for all c != c*, n_c + r < n_{c*} (c < c*) or
    n_c + r <= n_{c*} (c > c*)."""
    k = counts.shape[-1]
    leader = jnp.argmax(counts, axis=-1)
    lead = jnp.take_along_axis(counts, leader[:, None], axis=-1)[:, 0]
    idx = jnp.arange(k)[None, :]
    reach = counts + remaining[:, None]
    ok = jnp.where(idx < leader[:, None], reach < lead[:, None], reach <= lead[:, None])
    ok = ok | (idx == leader[:, None])
    return jnp.all(ok, axis=-1)


def label_vs_reference_decided(counts: jax.Array, remaining: jax.Array, y: jax.Array) -> jax.Array:
    """True where "plurality label != y" is already decided: either y is the sure winner
    (:func:`label_decided` with leader y) or y can no longer win: some c != y has
    n_c > n_y + r, or n_c = n_y + r with c < y (tie rule)."""
    k = counts.shape[-1]
    idx = jnp.arange(k)[None, :]
    ny = jnp.take_along_axis(counts, y[:, None], axis=-1)
    reach_y = ny + remaining[:, None]
    beats = (counts > reach_y) | ((counts == reach_y) & (idx < y[:, None]))
    sure_loser = jnp.any(beats & (idx != y[:, None]), axis=-1)
    sure_winner = label_decided(counts, remaining) & (jnp.argmax(counts, axis=-1) == y)
    return sure_loser | sure_winner


def wrong_count_decided(counts: jax.Array, remaining: jax.Array, y: jax.Array, k_wrong: int) -> jax.Array:
    """True where "at least k_wrong micro-decisions != y" is decided: already reached, or out of
    reach even if all remaining samples are wrong."""
    ny = jnp.take_along_axis(counts, y[:, None], axis=-1)[:, 0]
    wrong = jnp.sum(counts, axis=-1) - ny
    return (wrong >= k_wrong) | (wrong + remaining < k_wrong)


# ---------------------------------------------------------------------------------------------
# Votes
# ---------------------------------------------------------------------------------------------
class VoteResult(NamedTuple):
    counts: jax.Array  # [B, K] int32 micro-decision counts
    evaluations: jax.Array  # [B] int32 base-model evaluations actually spent (== n without early stop)


_TRACES = {"vote_counts": 0}


def trace_count() -> int:
    """How many times :func:`vote_counts` has been traced (for no-recompilation tests)."""
    return _TRACES["vote_counts"]


def _add_block_votes(logits_fn: LogitsFn, x: jax.Array, keys: jax.Array, sigma: jax.Array,
                     counts: jax.Array, point: jax.Array, sample: jax.Array, valid: jax.Array,
                     noise: str, clip: bool) -> jax.Array:
    pshape = x.shape[1:]
    skeys = jax.vmap(lambda p, j: sample_key(keys[p], j.astype(jnp.uint32)))(point, sample)
    z = jax.vmap(lambda k: sample_noise(k, pshape, noise))(skeys)
    xs = x[point] + sigma * z
    if clip:
        xs = jnp.clip(xs, 0.0, 1.0)
    labels = jnp.argmax(logits_fn(xs), axis=-1)
    return counts.at[point, labels].add(valid.astype(jnp.int32))


def default_eval_rows(logits_fn: LogitsFn, chunk_size: int) -> int | None:
    """Rows per model call inside a vote chunk when ``eval_rows`` is not given: on the CPU
    backend the model's own block (``logits_fn.block_rows``, set by
    :func:`rsjax.classifier.forward_in_blocks` for specs with ``cpu_forward_block``, e.g. 32 for
    the CIFAR ResNets) or :data:`CPU_EVAL_ROWS`; None (one call per chunk) on accelerators, which
    want large calls, and when the rows do not divide the chunk. A mostly empty chunk (an attack's
    binary search: few points x n samples) then costs the blocks holding its samples only, and a
    full chunk costs what one call would (speed-ups in ``benchmarks/RESULTS.md``, "Performance
    notes moved out of docstrings")."""
    if jax.default_backend() != "cpu":
        return None
    return split_rows(getattr(logits_fn, "block_rows", None) or CPU_EVAL_ROWS, chunk_size)


def split_rows(rows: int | None, chunk_size: int) -> int | None:
    """``rows`` if calls of that many rows split a chunk of ``chunk_size`` into several, else
    None (the chunk is one call)."""
    return rows if rows and rows < chunk_size and chunk_size % rows == 0 else None


def add_sample_votes(logits_fn: LogitsFn, x: jax.Array, keys: jax.Array, sigma: jax.Array,
                     counts: jax.Array, point: jax.Array, sample: jax.Array, valid: jax.Array, *,
                     noise: str = "hash", clip: bool = False, eval_rows: int | None = None) -> jax.Array:
    """One chunk of a vote: slot s evaluates f(x[point_s] + sigma N) with N the noise of
    sample ``sample_s`` of that point (key ``fold_in(keys[point_s], sample_s)``) and adds its
    label to ``counts`` [B, K] where ``valid_s``. The noise convention every vote shares.

    ``eval_rows`` (static, dividing the chunk): the chunk is drawn and evaluated in model calls
    of that many rows, and only up to the block holding the last valid slot (a dynamic count), so
    a chunk that is mostly empty (few active points, as in an attack's binary search) costs what
    its valid slots need rather than the whole chunk. Each slot's noise and label are the same
    either way (up to the model's float dependence on its batch shape)."""
    rows = point.shape[0]
    if eval_rows is None or eval_rows >= rows:
        return _add_block_votes(logits_fn, x, keys, sigma, counts, point, sample, valid, noise, clip)
    if rows % eval_rows:
        raise InputError(f"eval_rows={eval_rows} must divide the chunk of {rows} rows")
    nb = rows // eval_rows
    used = jnp.max(jnp.where(valid, jnp.arange(rows, dtype=jnp.int32) + 1, 0))
    blocks = (point.reshape(nb, eval_rows), sample.reshape(nb, eval_rows), valid.reshape(nb, eval_rows))

    def body(i, c):
        p, j, v = (a[i] for a in blocks)
        return _add_block_votes(logits_fn, x, keys, sigma, c, p, j, v, noise, clip)

    return jax.lax.fori_loop(0, (used + eval_rows - 1) // eval_rows, body, counts)


def vote_counts(
    logits_fn: LogitsFn,
    x: jax.Array,
    keys: jax.Array,
    sigma: float | jax.Array,
    n: int | jax.Array,
    num_classes: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    clip: bool = False,
    noise: str = "hash",
    stop: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    eval_rows: int | None = None,
) -> VoteResult:
    """Counts of f(x_i + sigma N_ij), j < n_i, for each point (traceable; use inside jit).

    x [B,H,W,C] in [0,1]; keys [B] (one per point); n a scalar or [B] (traced: no recompilation
    when it changes; n_i = 0 skips point i); ``stop(counts, remaining) -> [B] bool`` an optional
    exact stopping rule checked after every chunk (e.g. :func:`label_decided`). Each chunk is
    evaluated in model calls of ``eval_rows`` rows, skipping the empty tail
    (:func:`add_sample_votes`; default :func:`default_eval_rows`; ``eval_rows=chunk_size`` makes
    one call per chunk).
    """
    _TRACES["vote_counts"] += 1
    if eval_rows is None:
        eval_rows = default_eval_rows(logits_fn, chunk_size)
    b = x.shape[0]
    n_vec = jnp.broadcast_to(jnp.asarray(n, jnp.int32), (b,))
    sigma = jnp.asarray(sigma, jnp.float32)
    slots = jnp.arange(chunk_size, dtype=jnp.int32)

    def active_of(done, decided):
        return (~decided) & (done < n_vec)

    def cond(state):
        counts, done, decided = state
        return jnp.any(active_of(done, decided))

    def body(state):
        counts, done, decided = state
        active = active_of(done, decided)
        num_active = jnp.maximum(jnp.sum(active.astype(jnp.int32)), 1)
        per_point = (chunk_size + num_active - 1) // num_active
        want = jnp.where(active, jnp.minimum(n_vec - done, per_point), 0)
        raw_cum = jnp.cumsum(want)
        cum = jnp.minimum(raw_cum, chunk_size)  # samples beyond the chunk wait for the next one
        start = jnp.minimum(raw_cum - want, chunk_size)
        quota = cum - start
        point = jnp.minimum(jnp.searchsorted(cum, slots, side="right"), b - 1).astype(jnp.int32)
        valid = slots < cum[-1]
        sample = done[point] + slots - start[point]
        counts = add_sample_votes(logits_fn, x, keys, sigma, counts, point, sample, valid,
                                  noise=noise, clip=clip, eval_rows=eval_rows)
        done = done + quota
        if stop is not None:
            decided = decided | stop(counts, n_vec - done)
        return counts, done, decided

    init = (jnp.zeros((b, num_classes), jnp.int32), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
    counts, done, _ = jax.lax.while_loop(cond, body, init)
    return VoteResult(counts, done)


@partial(jit, static_argnames=("logits_fn", "num_classes", "chunk_size", "clip", "noise", "stop",
                               "eval_rows"))
def _votes_jit(logits_fn, x, keys, sigma, n_vec, *, num_classes, chunk_size, clip, noise, stop,
               eval_rows=None):
    stop_fn = label_decided if stop == "label" else None
    return vote_counts(logits_fn, x, keys, sigma, n_vec, num_classes,
                       chunk_size=chunk_size, clip=clip, noise=noise, stop=stop_fn, eval_rows=eval_rows)


def batch_bucket(b: int) -> int:
    """Padded batch size for b points: the next power of two (so a sweep compiles few programs)."""
    return 1 if b <= 1 else 1 << (b - 1).bit_length()


def _check_vote_args(sigma, n, chunk_size, noise) -> None:
    check_positive("sigma", float(sigma))
    if np.any(np.asarray(n) < 0):
        raise InputError(f"n (number of noise samples) must be >= 0, got {n!r}")
    check_int_at_least("chunk_size", chunk_size, 1)
    if noise not in NOISE_IMPLS:
        raise InputError(f"noise implementation must be one of {NOISE_IMPLS}, got {noise!r}")


def _pad_keys(keys: jax.Array, size: int) -> jax.Array:
    if keys.shape[0] == size:
        return keys
    pad = jnp.repeat(keys[:1], size - keys.shape[0], axis=0)
    return jnp.concatenate([keys, pad], axis=0)


def votes(
    logits_fn: LogitsFn,
    x,
    keys: jax.Array,
    sigma: float,
    n: int,
    num_classes: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    clip: bool = False,
    noise: str = "hash",
    early_stop: bool = False,
    eval_rows: int | None = None,
) -> VoteResult:
    """Host entry point of :func:`vote_counts`: pads the B points to :func:`batch_bucket` (padding
    costs nothing: n = 0 there), runs one compiled program, returns numpy counts [B,K] and
    evaluations [B]. ``early_stop=True`` stops each point once its plurality label is decided
    (same label as the full vote, fewer evaluations; the counts are then partial).
    The chunk walked is min(chunk_size, next power of two >= B*n), so small jobs do not pay for a
    full chunk (at most log2(chunk_size) programs per batch bucket). ``eval_rows``: rows per model
    call inside a chunk (:func:`vote_counts`).
    ``logits_fn`` must be a hashable pure function (e.g. ``Classifier.logits_fn``): the compiled
    program is cached on it, and sigma and n are runtime values (no recompilation)."""
    _check_vote_args(sigma, n, chunk_size, noise)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
        raise InputError(f"x must be [B, H, W, C], got shape {tuple(x.shape)}")
    b = x.shape[0]
    if keys.shape[0] != b:
        raise InputError(f"need one key per point: {b} points but keys of shape {tuple(keys.shape)}")
    size = batch_bucket(b)
    n_vec = np.zeros(size, np.int32)
    n_vec[:b] = n
    if size > b:
        x = jnp.concatenate([x, jnp.zeros((size - b, *x.shape[1:]), x.dtype)])
    # never walk a chunk larger than the whole job (B*n < chunk_size): a power of two below it
    chunk = min(chunk_size, batch_bucket(max(int(n_vec.sum()), 1)))
    res = _votes_jit(logits_fn, x, _pad_keys(keys, size), jnp.float32(sigma), jnp.asarray(n_vec),
                     num_classes=num_classes, chunk_size=chunk, clip=clip, noise=noise,
                     stop="label" if early_stop else None, eval_rows=eval_rows)
    return VoteResult(np.asarray(res.counts)[:b], np.asarray(res.evaluations)[:b])


def plurality(counts) -> np.ndarray:
    """Voted label g_{sigma,n}: argmax of the counts, ties to the lowest class index."""
    return np.asarray(counts).argmax(axis=-1)


# ---------------------------------------------------------------------------------------------
# PREDICT and CERTIFY (Cohen et al. 2019, Algorithm "PREDICT" / "CERTIFY")
# ---------------------------------------------------------------------------------------------
ABSTAIN = -1


def _top_two(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.asarray(counts)
    order = np.argsort(-counts, axis=-1, kind="stable")  # ties: lowest index first
    c_a = order[..., 0]
    n_a = np.take_along_axis(counts, order[..., :1], -1)[..., 0]
    n_b = np.take_along_axis(counts, order[..., 1:2], -1)[..., 0]
    return c_a, n_a, n_b


def predict_from_counts(counts, alpha: float) -> np.ndarray:
    """Cohen's PREDICT: with n_A, n_B the two largest counts (ties: the lowest class index is
    A), return the top class unless the two-sided binomial test of n_A successes in n_A + n_B
    trials at p = 1/2 has p-value > alpha, in which case abstain (-1). Vectorised: the test is
    the threshold n_A >= t[n_A + n_B] of :func:`predict_min_top_count`, computed once per distinct
    n_A + n_B (equal to ``scipy.stats.binomtest`` row by row: ``tests/test_smoothing.py``).

    The trap: the p-value can never be below 2^(1 - n) (all n votes agree), so for small n the
    test abstains on *every* input: with n = 10 and alpha = 0.001, even 10/10 gives
    p = 2/1024 ~ 0.00195 > 0.001 (locuslab/smoothing issue 8). Choose n > 1 + log2(1/alpha)."""
    check_open_unit("alpha", alpha)
    c_a, n_a, n_b = _top_two(np.atleast_2d(counts))
    trials = (n_a + n_b).astype(np.int64)
    uniq, inverse = np.unique(trials, return_inverse=True)
    threshold = np.array([_min_top_count(int(m), alpha) for m in uniq], np.int64)[inverse.reshape(-1)]
    out = np.where(n_a >= threshold, c_a, ABSTAIN).astype(np.int64)
    return out if np.ndim(counts) > 1 else out[0]


def _min_top_count(m: int, alpha: float) -> int:
    """Smallest n_A for which PREDICT does not abstain with n_A + n_B = m (m + 1: it always
    abstains); see :func:`predict_min_top_count`."""
    a = np.arange((m + 1) // 2, m + 1)
    a = a[a > 0]
    pval = np.minimum(1.0, 2.0 * stats.binom.sf(a - 1, m, 0.5))
    pval[2 * a == m] = 1.0
    ok = np.nonzero(pval <= alpha)[0]
    return int(a[ok[0]]) if len(ok) else m + 1


def predict_min_top_count(n_max: int, alpha: float) -> np.ndarray:
    """Table t[m] (m = n_A + n_B = 0..n_max): PREDICT does not abstain iff n_A >= t[m]
    (t[m] = m + 1 when it always abstains). For jitted abstention decisions.

    At p = 1/2 the two-sided binomial p-value of a >= m/2 is min(1, 2 P[Bin(m, 1/2) >= a])
    (symmetric distribution; what ``scipy.stats.binomtest`` returns), monotone in a."""
    check_open_unit("alpha", alpha)
    check_int_at_least("n_max", n_max, 0)
    return np.array([_min_top_count(m, alpha) for m in range(n_max + 1)], np.int32)


def clopper_pearson_lower(n_a, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on p from n_a successes in
    n trials: Beta.ppf(alpha, n_a, n - n_a + 1), and 0 when n_a = 0."""
    n_a = np.asarray(n_a)
    safe = np.maximum(n_a, 1)
    return np.where(n_a > 0, stats.beta.ppf(alpha, safe, n - safe + 1), 0.0)


def certify_from_counts(counts0, counts, sigma: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Cohen's CERTIFY given the selection counts (n0 samples) and the estimation counts (n
    fresh samples): c_A = plurality(counts0), p_A_lower = Clopper-Pearson lower bound of
    counts[c_A] out of n = sum(counts) at level alpha; abstain (-1, radius 0) if p_A_lower < 1/2,
    else radius R = sigma * Phi^{-1}(p_A_lower) (eq. (2) with the bound in place of the genie).
    Returns (predictions [B], radii [B])."""
    check_positive("sigma", sigma)
    check_open_unit("alpha", alpha)
    counts0 = np.atleast_2d(counts0)
    counts = np.atleast_2d(counts)
    c_a = plurality(counts0)
    n = counts.sum(axis=-1)
    n_a = np.take_along_axis(counts, c_a[:, None], -1)[:, 0]
    p_lower = np.array([float(clopper_pearson_lower(a, int(m), alpha)) for a, m in zip(n_a, n)])
    ok = p_lower >= 0.5
    radius = np.where(ok, sigma * stats.norm.ppf(np.where(ok, p_lower, 0.5)), 0.0)
    pred = np.where(ok, c_a, ABSTAIN)
    return pred, radius


@dataclass(frozen=True)
class CertifyResult:
    predictions: np.ndarray  # [B] class or -1 (abstain)
    radii: np.ndarray  # [B] certified L2 radius (0 on abstention)
    seconds: np.ndarray  # [B] wall time per image (batch time / B)


def certify(
    logits_fn: LogitsFn,
    x,
    keys: jax.Array,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    clip: bool = False,
    noise: str = "hash",
) -> CertifyResult:
    """CERTIFY(x, n0, n, alpha) for a batch: selection noise uses the point keys
    ``fold_in(key_i, 0)``, estimation noise ``fold_in(key_i, 1)`` (independent samples)."""
    check_int_at_least("n0", n0, 1)
    check_int_at_least("n", n, 1)
    t0 = time.perf_counter()
    k0 = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    k1 = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    sel = votes(logits_fn, x, k0, sigma, n0, num_classes, chunk_size=chunk_size, clip=clip, noise=noise)
    est = votes(logits_fn, x, k1, sigma, n, num_classes, chunk_size=chunk_size, clip=clip, noise=noise)
    pred, radius = certify_from_counts(sel.counts, est.counts, sigma, alpha)
    dt = (time.perf_counter() - t0) / max(len(pred), 1)
    return CertifyResult(pred, radius, np.full(len(pred), dt))


def certified_accuracy(radii, correct, grid) -> np.ndarray:
    """Certified accuracy at each radius r of ``grid``: fraction of points that are correctly
    classified (abstentions count as wrong) and certified with R >= r."""
    radii = np.asarray(radii, np.float64)
    correct = np.asarray(correct, bool)
    grid = np.asarray(grid, np.float64)
    if radii.shape != correct.shape:
        raise InputError(f"radii {radii.shape} and correct {correct.shape} must have the same shape")
    if len(radii) == 0:
        return np.zeros_like(grid)
    return ((radii[None, :] >= grid[:, None]) & correct[None, :]).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# Accuracy of g_{sigma,n} and of PREDICT over a data set
# ---------------------------------------------------------------------------------------------
def evaluate_smoothed(classifier, images, labels, sigma: float, n: int, alpha: float | None = 0.001,
                      seed: int = 0, *, batch_size: int = 64, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      noise: str = "hash") -> dict:
    """Accuracy of the practical smoothed classifier g_{sigma,n} (plurality vote, lowest-index
    ties) and, if alpha is given, of Cohen's PREDICT (abstentions count as errors) with its
    abstention rate. Image i uses the key fold_in(key(seed), i)."""
    check_positive("sigma", sigma)
    check_int_at_least("n", n, 1)
    check_int_at_least("batch_size", batch_size, 1)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    classifier.check_input(images)
    seed_key = jax.random.key(seed)
    all_counts = []
    for s in range(0, len(images), batch_size):
        ids = jnp.arange(s, min(s + batch_size, len(images)), dtype=jnp.uint32)
        keys = jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(ids)
        res = votes(classifier.logits_fn, images[s:s + batch_size], keys, sigma, n,
                    classifier.num_classes, chunk_size=chunk_size, noise=noise)
        all_counts.append(res.counts)
    counts = np.concatenate(all_counts) if all_counts else np.zeros((0, classifier.num_classes), int)
    out = {"sigma": sigma, "n": n, "num_images": int(len(labels)),
           "smoothed_accuracy": float(np.mean(plurality(counts) == labels)) if len(labels) else float("nan")}
    if alpha is not None:
        pred = predict_from_counts(counts, alpha) if len(counts) else np.zeros(0, int)
        out.update(alpha=alpha,
                   predict_accuracy=float(np.mean(pred == labels)) if len(labels) else float("nan"),
                   abstention_rate=float(np.mean(pred == ABSTAIN)) if len(labels) else float("nan"))
    return out

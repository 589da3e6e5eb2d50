"""Computations behind the analysis figures of Maho, Furon, Le Merrer (ICASSP 2022).

Every randomized-smoothing evaluation goes through :func:`rsjax.smoothing.votes` (wrapped by
:func:`smoothed_counts`). Notation: f the base classifier, y the true label of x_o,
pi_y(x) = P[f(x + sigma N) = y], g_{sigma,n}(x) the plurality of n micro-decisions f(x + sigma N_j)
(ties to the lowest class index), n~ = 1 + floor(n/2).

Decision of one call of g_{sigma,n} at x (:func:`adversarial_from_counts`, with the oracles'
:class:`rsjax.criterion.Criterion`):

* ``p_a=None`` (exact): adversarial iff plurality(counts) != y;
* ``p_a`` given (the authors' simulation shortcut): adversarial iff at least ceil(n P_a) of the
  n micro-decisions are != y (:func:`rsjax.theory.level_wrong_count`).

What is computed (one function each, host-level, numpy out):

* Fig. 1 -- P[g_{sigma,n}(x_t) != y] along x_t = x_o + t (x_a - x_o) (:func:`prob_adversarial`,
  Monte Carlo over ``repeats`` independent calls), next to pi_y(x_t) (:func:`class_probability`)
  and the binary-vote prediction P[Bin(n, 1 - pi_y) >= n~] (:func:`binary_vote_probability`),
  exact when f is binary. For a linear binary f and x_a - x_o normal to the hyperplane at distance
  D, pi_y(x_t) = Phi((1 - t) D / sigma).
* Fig. 2 -- labels on a 2-D slice x_o + a u + b v (:func:`orthonormal_directions`,
  :func:`slice_points`, :func:`labels_of`, :func:`smoothed_labels`).
* Fig. 3 -- the output of a bisection on [x_o, x_end] against g_{sigma,n} with fresh noise at
  every query, over ``repeats`` runs (:func:`binary_search_outputs`).
* Normal estimate -- HSJA's estimate at a boundary point x_b with probes at radius delta,
  u_hat = mean_j (phi_j - mean phi) u_j (or +-mean u_j when all phi_j agree), normalised
  (:func:`hsja_normal_estimate`), computed with f and with g_{sigma,n} on the *same* probes, and
  their cosine (:func:`normal_estimate_cosines`); x_b on the boundary of g_sigma is found by a
  bisection with common random numbers (:func:`smoothed_boundary_point`); a reference normal of
  the boundary of g_sigma is the Stein estimate of -grad pi_y(x_b) (:func:`stein_normal`).

Randomness: every call derives its keys from one ``key`` with ``fold_in`` on integer ids (point
index, repetition, bisection round), so results do not depend on batch sizes.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from rsjax.criterion import Criterion
from rsjax.errors import InputError, check_int_at_least, check_positive
from rsjax.smoothing import DEFAULT_CHUNK_SIZE, votes
from rsjax.theory import prob_wrong_majority
from rsjax.xla_options import jit

LogitsFn = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------------
# Keys and the base / smoothed classifiers
# ---------------------------------------------------------------------------------------------
def fold_keys(key: jax.Array, *ids) -> jax.Array:
    """Keys fold_in(...fold_in(fold_in(key, ids[0]), ids[1])..., ids[-1]) broadcast over the
    integer arrays ``ids`` (all of the same shape, or scalars): one key per element."""
    arrays = np.broadcast_arrays(*[np.asarray(i, np.int64) for i in ids])
    shape = arrays[0].shape
    flat = [jnp.asarray(a.reshape(-1).astype(np.uint32)) for a in arrays]

    def one(*js):
        k = key
        for j in js:
            k = jax.random.fold_in(k, j)
        return k

    return jax.vmap(one)(*flat).reshape(shape)


@partial(jit, static_argnums=0)
def _labels_jit(logits_fn, x):
    return jnp.argmax(logits_fn(x), axis=-1)


def labels_of(logits_fn: LogitsFn, x, batch_size: int = 4096) -> np.ndarray:
    """Labels of the base classifier f (argmax of the logits, lowest index on ties) of x [P,...],
    in padded batches of ``batch_size`` (one compiled shape)."""
    x = np.asarray(x, np.float32)
    out = []
    for s in range(0, len(x), batch_size):
        chunk = x[s:s + batch_size]
        m = len(chunk)
        size = batch_size if len(x) > batch_size else m
        if m < size:
            chunk = np.concatenate([chunk, np.zeros((size - m, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_labels_jit(logits_fn, jnp.asarray(chunk)))[:m])
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def smoothed_counts(logits_fn: LogitsFn, x, keys: jax.Array, sigma: float, n: int, num_classes: int,
                    *, chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 8192) -> np.ndarray:
    """Micro-decision counts [P, K] of f(x_i + sigma N_ij), j < n, with point keys ``keys`` [P]
    (:func:`rsjax.smoothing.votes`), in slices of ``batch_size`` points."""
    x = np.asarray(x, np.float32)
    if len(keys) != len(x):
        raise InputError(f"need one key per point: {len(x)} points, {len(keys)} keys")
    out = []
    for s in range(0, len(x), batch_size):
        res = votes(logits_fn, x[s:s + batch_size], keys[s:s + batch_size], sigma, n, num_classes,
                    chunk_size=chunk_size)
        out.append(np.asarray(res.counts))
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.int32)


def criterion_of(p_a: float | None) -> Criterion:
    """The analysis's criterion: 'label' (the exact decision) when ``p_a`` is None, else the
    'level' shortcut at P_a."""
    return Criterion("label") if p_a is None else Criterion("level", p_a)


def adversarial_from_counts(counts, y, p_a: float | None = None) -> np.ndarray:
    """Decision of one call of g_{sigma,n} from its counts [P, K] (same n on every row) for true
    labels y ([P] or scalar): plurality != y when ``p_a`` is None, else (wrong micro-decisions)
    >= ceil(n P_a): the oracles' rule, :meth:`rsjax.criterion.Criterion.is_adversarial`."""
    counts = np.asarray(counts)
    y = np.broadcast_to(np.asarray(y), counts.shape[:1]).astype(np.int32)
    if len(counts) == 0:
        return np.zeros(0, bool)
    return np.asarray(criterion_of(p_a).is_adversarial(counts, y))


def smoothed_labels(logits_fn: LogitsFn, x, key: jax.Array, sigma: float, n: int, num_classes: int,
                    **kw) -> tuple[np.ndarray, np.ndarray]:
    """One call of g_{sigma,n} at each point of x [P,...] (point i uses fold_in(key, i)):
    (plurality labels [P], frequency of the plurality label [P])."""
    counts = smoothed_counts(logits_fn, x, fold_keys(key, np.arange(len(x))), sigma, n, num_classes, **kw)
    lab = counts.argmax(axis=-1)
    return lab, counts.max(axis=-1) / max(n, 1)


# ---------------------------------------------------------------------------------------------
# Fig. 1: along a direction
# ---------------------------------------------------------------------------------------------
def points_along(x_o, x_a, ts) -> np.ndarray:
    """x_t = x_o + t (x_a - x_o) for each t: [T, H, W, C] (not clipped). t = 0 and t = 1 give
    x_o and x_a exactly (recomputing x_a could round a point that sits on a boundary back across)."""
    x_o = np.asarray(x_o, np.float32)
    x_a = np.asarray(x_a, np.float32)
    ts = np.asarray(ts, np.float32)
    shape = (-1,) + (1,) * x_o.ndim
    pts = x_o[None] + ts.reshape(shape) * (x_a - x_o)[None]
    pts = np.where(ts.reshape(shape) == 1.0, x_a[None], pts)
    return np.where(ts.reshape(shape) == 0.0, x_o[None], pts).astype(np.float32)


def class_probability(logits_fn: LogitsFn, x, y, key: jax.Array, sigma: float, n: int, num_classes: int,
                      **kw) -> np.ndarray:
    """Monte-Carlo estimate of pi_y(x_i) = P[f(x_i + sigma N) = y] from n samples per point
    (point i uses fold_in(key, i)): [P]."""
    check_int_at_least("n", n, 1)
    counts = smoothed_counts(logits_fn, x, fold_keys(key, np.arange(len(x))), sigma, n, num_classes, **kw)
    y = np.broadcast_to(np.asarray(y), (len(x),))
    return np.take_along_axis(counts, y[:, None], axis=-1)[:, 0] / n


def prob_adversarial(logits_fn: LogitsFn, x, y, key: jax.Array, sigma: float, n: int, repeats: int,
                     num_classes: int, *, p_a: float | None = None, **kw) -> np.ndarray:
    """P[g_{sigma,n}(x_i) is adversarial] estimated from ``repeats`` independent calls at each
    point of x [P,...] (call r at point i uses fold_in(fold_in(key, i), r)): [P] frequencies.
    Standard error sqrt(p (1 - p) / repeats)."""
    check_int_at_least("n", n, 1)
    check_int_at_least("repeats", repeats, 1)
    x = np.asarray(x, np.float32)
    p = len(x)
    idx, rep = np.meshgrid(np.arange(p), np.arange(repeats), indexing="ij")
    xs = np.repeat(x, repeats, axis=0)
    counts = smoothed_counts(logits_fn, xs, fold_keys(key, idx.ravel(), rep.ravel()), sigma, n,
                             num_classes, **kw)
    yy = np.repeat(np.broadcast_to(np.asarray(y), (p,)), repeats)
    return adversarial_from_counts(counts, yy, p_a).reshape(p, repeats).mean(axis=1)


def binary_vote_probability(pi_y, n: int, *, loses_ties: bool = False) -> np.ndarray:
    """Probability that one call of g_{sigma,n} errs when there are only two classes, y and a
    rival: with W ~ Bin(n, 1 - pi_y) wrong votes, P[W >= n~] = P[W > n/2] if y wins ties (y has the
    lower class index; :func:`rsjax.theory.prob_wrong_majority`), P[W >= n/2] if it loses them
    (``loses_ties``; differs only for even n). Exact for a binary f; for K > 2 classes the
    plurality can be lost with fewer wrong votes, so it is then an approximation."""
    q = np.clip(1.0 - np.asarray(pi_y, np.float64), 0.0, 1.0)
    check_int_at_least("n", n, 1)
    if loses_ties and n % 2 == 0:
        return stats.binom.sf(n // 2 - 1, n, q)
    return prob_wrong_majority(n, q)


def class_frequencies(logits_fn: LogitsFn, x, key: jax.Array, sigma: float, n: int, num_classes: int,
                      **kw) -> np.ndarray:
    """Monte-Carlo estimate of the whole vector pi_c(x_i), c < K, from n samples per point
    (point i uses fold_in(key, i)): [P, K]; its argmax estimates g_sigma(x_i)."""
    check_int_at_least("n", n, 1)
    counts = smoothed_counts(logits_fn, x, fold_keys(key, np.arange(len(x))), sigma, n, num_classes, **kw)
    return counts / n


def multinomial_vote_probability(pi, y, n: int, draws: int = 20000, seed: int = 0) -> np.ndarray:
    """P[plurality of n i.i.d. micro-decisions with class probabilities pi != y] (lowest index
    wins ties), by ``draws`` multinomial draws per point (numpy, seeded): pi [P, K] -> [P].
    This is the exact law of one call of g_{sigma,n} when pi = (pi_c(x)), whatever K."""
    check_int_at_least("n", n, 1)
    pi = np.clip(np.asarray(pi, np.float64), 0.0, None)
    y = np.broadcast_to(np.asarray(y), pi.shape[:1])
    rng = np.random.default_rng(seed)
    out = np.empty(len(pi))
    for i, p in enumerate(pi):
        c = rng.multinomial(n, p / p.sum(), size=draws)
        out[i] = np.mean(c.argmax(axis=1) != y[i])
    return out


def first_crossing(ts, values, level: float, *, decreasing: bool = True) -> float:
    """Smallest t where the piecewise-linear curve ``values``(ts) crosses ``level`` (going
    below it when ``decreasing``, above otherwise); NaN when it never does."""
    ts = np.asarray(ts, np.float64)
    v = np.asarray(values, np.float64)
    s = (level - v) if decreasing else (v - level)
    if s[0] >= 0:
        return float(ts[0])
    hit = np.nonzero(s >= 0)[0]
    if len(hit) == 0:
        return float("nan")
    i = hit[0]
    a = s[i - 1] / (s[i - 1] - s[i])
    return float(ts[i - 1] + a * (ts[i] - ts[i - 1]))


# ---------------------------------------------------------------------------------------------
# Fig. 2: 2-D slice
# ---------------------------------------------------------------------------------------------
def orthonormal_directions(key: jax.Array, shape: Sequence[int], k: int = 2, first=None) -> np.ndarray:
    """k orthonormal directions [k, *shape] drawn as Gaussian vectors and Gram-Schmidt
    orthonormalised (in float64); ``first`` (optional) fixes the direction of the first one."""
    check_int_at_least("k", k, 1)
    d = int(np.prod(shape))
    if k > d:
        raise InputError(f"cannot draw {k} orthonormal directions in dimension {d}")
    g = np.asarray(jax.random.normal(key, (k, d)), np.float64)
    if first is not None:
        f = np.asarray(first, np.float64).reshape(-1)
        if f.shape[0] != d or not np.linalg.norm(f) > 0:
            raise InputError("first direction must be a non-zero array of the image's shape")
        g[0] = f
    q = []
    for v in g:
        for u in q:
            v = v - (v @ u) * u
        v = v / np.linalg.norm(v)
        q.append(v)
    return np.stack(q).reshape(k, *shape).astype(np.float32)


def slice_points(x_o, u, v, coords) -> np.ndarray:
    """Grid x_o + a u + b v for a in coords (columns) and b in coords (rows): [R*R, H, W, C],
    row-major with b varying slowest (image row r is b = coords[r]). Not clipped."""
    c = np.asarray(coords, np.float32)
    b, a = np.meshgrid(c, c, indexing="ij")
    x_o, u, v = (np.asarray(z, np.float32) for z in (x_o, u, v))
    return (x_o[None] + a.reshape(-1, 1, 1, 1) * u[None] + b.reshape(-1, 1, 1, 1) * v[None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Fig. 3: binary search against a random classifier
# ---------------------------------------------------------------------------------------------
def binary_search_outputs(logits_fn: LogitsFn, x_o, x_end, y: int, key: jax.Array, sigma: float,
                          n: int | None, repeats: int, iterations: int, num_classes: int, *,
                          p_a: float | None = None, **kw) -> np.ndarray:
    """Bisection of the blend factor a in p(a) = x_o + a (x_end - x_o), [lo, hi] = [0, 1],
    against the practical classifier g_{sigma,n} (``n=None``: the deterministic f), for
    ``repeats`` independent runs: each round queries p(mid) once with fresh noise (run r, round i
    uses point key fold_in(fold_in(key, r), i)), hi <- mid on an adversarial answer, lo <- mid
    otherwise. Like the attacks it trusts that p(1) is adversarial and never re-checks it.
    Returns the final hi of each run, [repeats] (the distance is hi * ||x_end - x_o||)."""
    check_int_at_least("repeats", repeats, 1)
    check_int_at_least("iterations", iterations, 1)
    x_o = np.asarray(x_o, np.float32)
    d = np.asarray(x_end, np.float32) - x_o
    lo = np.zeros(repeats, np.float64)
    hi = np.ones(repeats, np.float64)
    for i in range(iterations):
        mid = 0.5 * (lo + hi)
        pts = (x_o[None] + mid.astype(np.float32).reshape(-1, 1, 1, 1) * d[None]).astype(np.float32)
        if n is None:
            adv = labels_of(logits_fn, pts) != y
        else:
            counts = smoothed_counts(logits_fn, pts, fold_keys(key, np.arange(repeats), i), sigma, n,
                                     num_classes, **kw)
            adv = adversarial_from_counts(counts, y, p_a)
        hi = np.where(adv, mid, hi)
        lo = np.where(adv, lo, mid)
    return hi


# ---------------------------------------------------------------------------------------------
# Normal-vector estimates
# ---------------------------------------------------------------------------------------------
def unit_probes(key: jax.Array, count: int, shape: Sequence[int]) -> np.ndarray:
    """``count`` directions uniform on the unit sphere: [count, *shape] float32."""
    u = np.asarray(jax.random.normal(key, (count, int(np.prod(shape)))), np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u.reshape(count, *shape).astype(np.float32)


def hsja_normal_estimate(phi, u) -> np.ndarray:
    """HSJA's normal estimate from decisions phi [..., K] (True = adversarial) at probe
    directions u [..., K, D]: mean_j (phi_j - mean phi) u_j with phi in {-1,+1}; when all phi_j
    agree, phi_j u_j averaged instead (the original's fallback: + mean u if all adversarial,
    - mean u otherwise). Normalised to unit L2 norm (a zero vector stays zero): [..., D]."""
    s = np.where(np.asarray(phi), 1.0, -1.0)
    u = np.asarray(u, np.float64).reshape(*np.shape(phi), -1)
    mean = s.mean(axis=-1, keepdims=True)
    agree = np.abs(mean) == 1.0
    w = np.where(agree, s, s - mean)
    g = np.einsum("...k,...kd->...d", w, u) / s.shape[-1]
    norm = np.linalg.norm(g, axis=-1, keepdims=True)
    return np.where(norm > 0, g / np.where(norm > 0, norm, 1.0), 0.0)


def cosine(a, b) -> np.ndarray:
    """Cosine similarity of the last axis (0 where a norm is 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    ok = (na > 0) & (nb > 0)
    return np.where(ok, np.sum(a * b, axis=-1) / np.where(ok, na * nb, 1.0), 0.0)


class NormalEstimates(NamedTuple):
    """Cosines for each probe radius delta [Δ] and repetition [R]."""

    deltas: np.ndarray  # [Δ]
    cos_f_rs: np.ndarray  # [Δ, R] cos(u_hat with f, u_hat with g_{sigma,n}) on the same probes
    cos_f_f: np.ndarray  # [Δ, R] cos(u_hat with f, u_hat with f on an independent probe set): how
    #                      reproducible f's own estimate is (cos_f_rs shares its probes, so it can
    #                      exceed this: identical decisions give cosine 1 whatever the probes)
    cos_f_ref: np.ndarray  # [Δ, R] cos(u_hat with f, reference normal) (NaN without reference)
    cos_rs_ref: np.ndarray  # [Δ, R] cos(u_hat with g_{sigma,n}, reference normal)
    frac_adv_f: np.ndarray  # [Δ, R] fraction of probes adversarial for f
    frac_adv_rs: np.ndarray  # [Δ, R] fraction of probes adversarial for g_{sigma,n}


def normal_estimate_cosines(logits_fn: LogitsFn, x_b, y: int, key: jax.Array, deltas, probes: int,
                            repeats: int, sigma: float, n: int, num_classes: int, *,
                            reference=None, clip: bool = True, p_a: float | None = None,
                            **kw) -> NormalEstimates:
    """HSJA normal estimates at x_b from ``probes`` probes x_b + delta u_j (u_j uniform on the
    sphere; with ``clip`` the probe is clipped to [0,1] and u_j recomputed as
    (clip(x_b + delta u_j) - x_b) / delta, as HSJA does), decided once by f and once by one call
    of g_{sigma,n} each; ``repeats`` independent probe sets per delta (set r of delta index i
    uses fold_in(fold_in(key, i), r)); a second, independent probe set decided by f gives
    cos_f_f, the reproducibility of f's own estimate. ``reference`` (optional, [*shape]) is a normal to compare
    both estimates with (e.g. :func:`stein_normal`)."""
    check_int_at_least("probes", probes, 2)
    check_int_at_least("repeats", repeats, 1)
    x_b = np.asarray(x_b, np.float32)
    deltas = np.asarray(deltas, np.float64)
    shape = x_b.shape
    out = {k: np.full((len(deltas), repeats), np.nan) for k in
           ("cos_f_rs", "cos_f_f", "cos_f_ref", "cos_rs_ref", "frac_adv_f", "frac_adv_rs")}
    for i, delta in enumerate(deltas):
        check_positive("delta", float(delta))
        def probe_set(stream: int):
            us, pts = [], []
            for r in range(repeats):
                k = jax.random.fold_in(jax.random.fold_in(key, i), r)
                u = unit_probes(jax.random.fold_in(k, stream), probes, shape)
                z = x_b[None] + np.float32(delta) * u
                if clip:
                    z = np.clip(z, 0.0, 1.0)
                    u = (z - x_b[None]) / np.float32(delta)
                us.append(u)
                pts.append(z.astype(np.float32))
            return np.stack(us), np.concatenate(pts)  # [R, K, ...], [R*K, ...]

        u_all, z_all = probe_set(0)
        phi_f = (labels_of(logits_fn, z_all) != y).reshape(repeats, probes)
        u_2, z_2 = probe_set(2)
        g_f2 = hsja_normal_estimate((labels_of(logits_fn, z_2) != y).reshape(repeats, probes), u_2)
        rkeys = fold_keys(jax.random.fold_in(key, i), np.repeat(np.arange(repeats), probes), 1,
                          np.tile(np.arange(probes), repeats))
        counts = smoothed_counts(logits_fn, z_all, rkeys, sigma, n, num_classes, **kw)
        phi_rs = adversarial_from_counts(counts, y, p_a).reshape(repeats, probes)
        g_f = hsja_normal_estimate(phi_f, u_all)
        g_rs = hsja_normal_estimate(phi_rs, u_all)
        out["cos_f_rs"][i] = cosine(g_f, g_rs)
        out["cos_f_f"][i] = cosine(g_f, g_f2)
        out["frac_adv_f"][i] = phi_f.mean(axis=1)
        out["frac_adv_rs"][i] = phi_rs.mean(axis=1)
        if reference is not None:
            ref = np.asarray(reference, np.float64).reshape(1, -1)
            out["cos_f_ref"][i] = cosine(g_f, ref)
            out["cos_rs_ref"][i] = cosine(g_rs, ref)
    return NormalEstimates(deltas, **out)


def stein_normal(logits_fn: LogitsFn, x, y: int, key: jax.Array, sigma: float, samples: int,
                 batch_size: int = 4096) -> np.ndarray:
    """Unit estimate of -grad pi_y(x) (the normal of the boundary of g_sigma pointing to the
    adversarial side) by Stein's identity: grad pi_y(x) = E[1{f(x + sigma N) = y} N] / sigma, with
    the control variate a_j - mean(a), a_j = 1{f(x + sigma N_j) != y}: the HSJA estimator with
    Gaussian probes of scale sigma. Noise sample j uses fold_in(key, j)."""
    check_int_at_least("samples", samples, 2)
    check_positive("sigma", sigma)
    x = np.asarray(x, np.float32)
    a_all, z_sum = [], np.zeros(x.size, np.float64)
    zs_weighted = np.zeros(x.size, np.float64)
    for s in range(0, samples, batch_size):
        m = min(batch_size, samples - s)
        keys = fold_keys(key, np.arange(s, s + m))
        z = np.asarray(jax.vmap(lambda k: jax.random.normal(k, x.shape))(keys), np.float32)
        a = (labels_of(logits_fn, x[None] + np.float32(sigma) * z) != y).astype(np.float64)
        zf = z.reshape(m, -1).astype(np.float64)
        zs_weighted += a @ zf
        z_sum += zf.sum(axis=0)
        a_all.append(a)
    a_mean = np.concatenate(a_all).mean()
    g = (zs_weighted - a_mean * z_sum) / samples
    norm = np.linalg.norm(g)
    return (g / norm if norm > 0 else g).reshape(x.shape).astype(np.float32)


def smoothed_boundary_point(logits_fn: LogitsFn, x_o, x_a, y: int, key: jax.Array, sigma: float,
                            n: int, num_classes: int, *, t_max: float = 4.0, iterations: int = 30,
                            **kw) -> tuple[np.ndarray, float]:
    """A point x_b = x_o + t_b (x_a - x_o) on the boundary of g_sigma, approximated by g_{sigma,n}
    with large n and *common random numbers* (the same n noises, key fold_in(key, 0), at every
    query, so that t -> g_{sigma,n}(x_t) is a fixed function): bisection of t on [0, t_max],
    keeping the adversarial end. Returns (x_b, t_b); raises InputError if x_{t_max} is not
    adversarial or x_o is."""
    x_o = np.asarray(x_o, np.float32)
    d = np.asarray(x_a, np.float32) - x_o
    k = fold_keys(key, np.zeros(1, np.int64))

    def adv(t: float) -> bool:
        c = smoothed_counts(logits_fn, (x_o + np.float32(t) * d)[None], k, sigma, n, num_classes, **kw)
        return bool(c[0].argmax() != y)

    if adv(0.0):
        raise InputError("x_o is already misclassified by g_sigma: no boundary to find")
    if not adv(t_max):
        raise InputError(f"x_o + {t_max} (x_a - x_o) is not adversarial for g_sigma; raise t_max")
    lo, hi = 0.0, float(t_max)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if adv(mid):
            hi = mid
        else:
            lo = mid
    return (x_o + np.float32(hi) * d).astype(np.float32), hi


def binomial_stderr(p, repeats: int) -> np.ndarray:
    """sqrt(p (1 - p) / repeats)."""
    p = np.asarray(p, np.float64)
    return np.sqrt(p * (1.0 - p) / repeats)


def phi_along_normal(ts, distance: float, sigma: float) -> np.ndarray:
    """pi_y(x_t) = Phi((1 - t) D / sigma) for a flat boundary at distance D crossed at t = 1."""
    return stats.norm.cdf((1.0 - np.asarray(ts, np.float64)) * distance / sigma)

"""SurFree (Maho, Furon, Le Merrer, "SurFree: a fast surrogate-free black-box attack", CVPR 2021),
L2, untargeted, with the defaults of the authors' standalone code (t-maho/SurFree, ``surfree.py``).

Algorithm (angles in degrees, every query point clipped to [0,1] and quantised to 1/255):

1. Start: query ``x + 0.5 N(0, I)`` (clipped) until it is adversarial (at most
   ``start_max_tries`` tries, every try a counted query). Then the boosted line search below.
2. Line search (initial and final, the authors' ``_binary_search(boost=True)``): query the boost
   point ``b = 0.2 x + 0.8 x_adv``; if adversarial bisect the blend factor between ``x`` and ``b``,
   otherwise between ``b`` and ``x_adv``; ``bs_max_iteration`` bisections (their threshold
   ``gamma / (d sqrt d)`` never stops it earlier); keep the last adversarial blend.
3. A step, repeated ``steps`` times: with ``u = (x_adv - x) / r``, ``r = ||x_adv - x||``,
   * draw a direction ``v``: a random low-frequency DCT vector (:mod:`rsjax.attacks.dct`)
     Gram–Schmidt-orthogonalised against ``u`` and the last ``n_ortho`` directions drawn, unit norm;
   * circle search ``z(theta) = clip(x + r cos(theta) (cos(theta) u + sin(theta) v))``, so
     ``||z - x|| = r cos(theta)`` before clipping: probe ``theta = +-theta_max (1 - i / T)``,
     i = 0..T-1, first ``+`` then ``-``; the first adversarial probe makes the direction a success
     (``theta_max /= rho``), if none the direction fails (``theta_max *= rho``) and a new direction
     is drawn. ``theta_max`` is each image's own (the authors' batched code also shrinks it for
     every image that had already succeeded while another retries — not reproduced);
   * alpha line search on a success: bracket ``[lower, upper]`` with ``lower`` the adversarial probe
     and ``upper = lower + sign(lower) theta_max / T`` (``theta_max`` already updated, as in the
     authors' code: with T = 1 this upper bound is never queried); when ``|lower| == theta_max``
     (only possible for ``rho = 1``) ``upper`` is first pushed out by ``theta_max / T`` while
     adversarial, stopping at 90 degrees where ``z = x`` (the authors stop at 180 degrees where
     ``z = x_adv`` is adversarial, an endless loop). Then bisect while
     ``|alpha(upper) - alpha(lower)| > bs_gamma``, ``alpha(theta) = 1 - cos(theta)``, at most
     ``bs_max_iteration`` times: query ``z(mid)`` and, while ``lower > 0`` and the opposite side
     answered adversarial so far, also ``z(-mid)``; an adversarial ``mid`` becomes ``lower``,
     else an adversarial ``-mid`` flips the bracket to ``[-mid, -upper]``, else ``upper = mid``;
   * ``x_adv <- z(lower)`` if closer to ``x``.
4. The final line search (step 2) runs with the queries kept in reserve for it
   (``1 + bs_max_iteration``); the main loop stops when only that reserve is left.

Not implemented (off in the defaults): the authors' distance line search and interpolation
options, their "8x8" DCT basis and random (non-DCT) basis.

rsjax specifics: queries are counted exactly, start search included (the authors count neither
the start search nor the clean-image check, and overrun the budget by up to one step); each
query of an image is one tick of a per-image state machine, so all images advance one query per
oracle call and an image's trajectory never depends on which other images share its batch;
the reported point is always the closest point that an oracle query answered adversarial
(quantised, exactly the point queried), never a padding row (the authors' final line search
could return the all-black image of a finished batch row). ``AttackResult.steps`` counts these
ticks (= queries after the start search); the number of SurFree steps completed is not exposed.

Per-image randomness: direction number k of an image uses ``attack_keys(image_key, k + 1)``;
start try t uses ``fold_in(attack_keys(image_key, 0), t)``. Bit-for-bit batch invariance also
needs the arithmetic of one row not to depend on the batch size: row norms use a fixed-order
:func:`tree_sum`, a single image runs as two rows (:func:`_as_two_rows`), and the Gram–Schmidt
projections are batched matrix products, which XLA CPU computes identically per row for every
batch size >= 2 (checked by the tests; other backends may differ in the last bit).

Budget and ``steps``: a step costs about 10 queries, so the authors' ``steps = 100`` ends the
attack (final line search included) near 1,000 queries whatever the budget. rsjax's default
``steps = None`` derives the number of steps from the query budget: steps continue until only
the final line search's reserve is left, so a 2,000-query run uses its 2,000 queries (at budgets
of at most ~1,000 queries this is the same attack as ``steps = 100``). Pass ``steps=100`` for the
authors' stopping rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.attacks import dct
from rsjax.attacks.common import (
    halving_sum as tree_sum,
    AttackCore,
    AttackEnv,
    DecisionAttack,
    attack_keys,
    bcast,
    clip01,
    flat,
    query_one,
    remaining,
    replace_best,
)
from rsjax.errors import InputError
from rsjax.geometry import halving_dot, halving_l2_norm, safe_normalize
from rsjax.oracle import Oracle

# Phases of the per-image state machine: every real phase asks exactly one query per tick.
LS_BOOST, LS_BISECT, PROBE, EXTEND, ALPHA_MID, ALPHA_OPP, DONE = range(7)
# Transient phases, resolved within the tick that reaches them (no query).
_ALPHA_CHECK, _END_STEP, _BEGIN_STEP, _GO_FINAL, _LS_END = range(7, 12)


@dataclass(frozen=True)
class SurFreeBasisConfig:
    """SurFree's direction basis and start search (the authors' defaults), shared by the plain
    and the noise-aware SurFree."""

    basis_function: str = "tanh"
    tanh_gamma: float = 1.0
    frequency_range: tuple = (0.0, 0.5)
    beta: float = 0.0
    start_sigma: float = 0.5
    start_max_tries: int = 100


@dataclass(frozen=True)
class SurFreeConfig(SurFreeBasisConfig):
    """Defaults of the authors' standalone ``SurFree`` class and ``Basis`` class.

    (Their ``config_example.json`` differs: steps 50, BS_max_iteration 10, rho 0.98, n_ortho 10,
    basis function "constant"; the frequency range [0, 0.5] and the full-image DCT are the same.)"""

    steps: int | None = None  # None: as many as the query budget allows (authors: 100)
    bs_gamma: float = 0.01
    bs_max_iteration: int = 7
    theta_max: float = 30.0
    n_ortho: int = 100
    rho: float = 0.95
    T: int = 1
    with_alpha_line_search: bool = True
    final_line_search: bool = True
    quantization: bool = True
    clip: bool = True
    chunk_steps: int = 64


class SurFreeState(NamedTuple):
    """Per-image SurFree state (leading axis B). Angles in degrees."""

    phase: jax.Array  # [B] int32
    x_adv: jax.Array  # [B, H, W, C] current adversarial point (centre of the circle search)
    basis: jax.Array  # [B, H, W, C] DCT weights phi(dct2(x) * mask)
    v: jax.Array  # [B, D] current unit direction
    history: jax.Array  # [B, n_ortho, D] last directions drawn (ring buffer, zero rows unused)
    n_dirs: jax.Array  # [B] int32 directions drawn so far
    theta_max: jax.Array  # [B] float32
    probe: jax.Array  # [B] int32 probe index of the current direction
    lower: jax.Array  # [B] float32 adversarial angle of the bracket
    upper: jax.Array  # [B] float32 non-adversarial end of the bracket
    check_opp: jax.Array  # [B] bool also query -mid
    bs_iter: jax.Array  # [B] int32 alpha bisections done
    mid_adv: jax.Array  # [B] bool answer on z(mid), pending while z(-mid) is asked
    cand: jax.Array  # [B, H, W, C] queried adversarial point at angle ``lower``
    ls_in: jax.Array  # [B, H, W, C] non-adversarial end of the line search
    ls_out: jax.Array  # [B, H, W, C] adversarial end of the line search
    ls_lo: jax.Array  # [B] float32
    ls_hi: jax.Array  # [B] float32
    ls_iter: jax.Array  # [B] int32
    ls_best: jax.Array  # [B, H, W, C] last adversarial point of the line search
    ls_final: jax.Array  # [B] bool the line search is the final one
    n_steps: jax.Array  # [B] int32 SurFree steps completed


# --------------------------------------------------------------------------- pure maths

row_dot = halving_dot  # batch-invariant per-row inner product [B, ...] x [B, ...] -> [B]
row_norm = halving_l2_norm  # batch-invariant per-row L2 norm [B, ...] -> [B]


def unit(a: jax.Array) -> jax.Array:
    """a / ||a|| per row ([B, D]); rows of zero or non-finite norm become 0 (never NaN)."""
    return safe_normalize(a, norm=row_norm)


def keep_best(env: AttackEnv, core: AttackCore, candidate: jax.Array, ok: jax.Array) -> AttackCore:
    """:func:`rsjax.attacks.common.update_best` (L2 metric) with batch-invariant norms."""
    d = candidate - env.x
    l2 = row_norm(d)
    linf = jnp.max(jnp.abs(flat(d)), axis=1)  # max is exact in any order
    return replace_best(core, ok & (l2 < core.best_l2), candidate, l2, linf, ok)


def quantize(x: jax.Array) -> jax.Array:
    """Round to the 8-bit grid: ``round(255 x) / 255`` (half to even, like torch.round)."""
    return jnp.round(x * 255.0) / 255.0


def circle_point(x: jax.Array, x_adv: jax.Array, v: jax.Array, theta_deg: jax.Array,
                 clip: bool = True) -> jax.Array:
    """``z(theta) = x + r cos(theta) (cos(theta) u + sin(theta) v)``, ``u = (x_adv - x) / r``,
    ``r = ||x_adv - x||`` (SurFree eq. of the circular search); x, x_adv [B, ...], v [B, D]
    unit and orthogonal to u, theta [B] degrees. Clipped to [0,1] when ``clip``. With r = 0
    it returns x (no NaN)."""
    diff = flat(x_adv - x)
    r = row_norm(diff)
    u = unit(diff)
    t = jnp.deg2rad(theta_deg)
    c, s = jnp.cos(t), jnp.sin(t)
    step = (r * c)[:, None] * (c[:, None] * u + s[:, None] * v)
    z = x + step.reshape(x.shape)
    return clip01(z) if clip else z


def alpha(theta_deg: jax.Array) -> jax.Array:
    """``1 - cos(theta)``: the relative distance gain ``1 - ||z - x|| / r`` at angle theta."""
    return 1.0 - jnp.cos(jnp.deg2rad(theta_deg))


def probe_coefficients(T: int) -> np.ndarray:
    """``[1, -1, 1 - 1/T, -(1 - 1/T), ..., 1/T, -1/T]``: probe angles / theta_max, in order."""
    c = 1.0 - np.arange(T) / T
    return np.stack([c, -c], axis=1).reshape(-1).astype(np.float32)


def orthogonal_direction(r: jax.Array, u: jax.Array, history: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unit vector along the part of ``r`` [B, D] orthogonal to the rows of ``history``
    [B, N, D] (orthonormal or zero) and to ``u`` [B, D] (unit or zero).

    v1 = r - H^T H r; u' = unit(u - H^T H u); v = v1 - <v1, u'> u' is orthogonal to both.
    Both projections are applied twice (classical Gram-Schmidt, reorthogonalised). When the
    history and u already (nearly) span r's subspace (||v|| <= 1e-2 ||r||, only possible when
    n_ortho is not far below the dimension of the DCT subspace), fall back to orthogonalising
    against u only and report it (``exhausted`` [B] True): the caller must then restart the
    history, which has to stay orthonormal. A zero result stays zero (never NaN).
    Returns (v, exhausted)."""
    def off_history(a):  # a [B, K, D] minus its projection on span(history), all K at once
        # Broadcast products reduced over D and N (XLA CPU: ~5x faster than batched einsums,
        # which lower to tiny per-image GEMMs, and ~200x faster than tree_sum); each image's
        # result is the same for every batch size >= 2 (single images run as 2 rows).
        coef = jnp.sum(history[:, None, :, :] * a[:, :, None, :], axis=-1)  # [B, K, N]
        return a - jnp.sum(coef[..., None] * history[:, None, :, :], axis=2)

    def off(a, b):  # a minus its component along unit-or-zero b
        return a - row_dot(a, b)[:, None] * b

    both = jnp.stack([r, u], axis=1)
    both = off_history(off_history(both))  # twice: classical Gram-Schmidt loses orthogonality in float32
    v1, u_perp_raw = both[:, 0], both[:, 1]
    u_perp = jnp.where((row_norm(u_perp_raw) > 1e-6)[:, None], unit(u_perp_raw), 0.0)
    v = off(v1, u_perp)
    exhausted = row_norm(v) <= 1e-2 * row_norm(r)
    v = jnp.where(exhausted[:, None], off(r, u), v)
    return unit(v), exhausted


def update_theta_max(theta_max: jax.Array, success: jax.Array, failure: jax.Array, rho: float) -> jax.Array:
    """Each image's own adaptation: ``/ rho`` after a successful direction, ``* rho`` after a
    failed one, unchanged otherwise."""
    return jnp.where(success, theta_max / rho, jnp.where(failure, theta_max * rho, theta_max))


def alpha_bisection_update(lower, upper, check_opp, mid, adv_mid, adv_opp):
    """One bisection of the alpha line search (authors' ``_alpha_binary_search``), all [B]:
    adversarial mid -> lower = mid; else (opposite side checked and adversarial) ->
    [lower, upper] = [-mid, -upper]; else upper = mid. The opposite side stays checked only while
    it answers adversarial and lower > 0. Returns (lower, upper, check_opp)."""
    opp = ~adv_mid & check_opp & adv_opp
    new_lower = jnp.where(adv_mid, mid, jnp.where(opp, -mid, lower))
    new_upper = jnp.where(opp, -upper, jnp.where(adv_mid, upper, mid))
    new_check = check_opp & adv_opp & (new_lower > 0)
    return new_lower, new_upper, new_check


# --------------------------------------------------------------------------- the attack

class SurFree(DecisionAttack):
    """SurFree with the authors' standalone defaults (see module docstring and
    :class:`SurFreeConfig`); ``SurFree(**overrides)``, then ``.run(oracle, x, y, key, max_queries)``."""

    name = "surfree"
    metric = "l2"
    Config = SurFreeConfig
    # written only in _new_directions, on rows that need a direction (a subset of the active)
    inactive_rows_kept = ("history",)

    def check_config(self) -> None:
        super().check_config()
        c = self.config
        for name in ("steps", "bs_max_iteration", "T", "n_ortho", "start_max_tries"):
            val = getattr(c, name)
            if name == "steps" and val is None:
                continue
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise InputError(f"surfree: {name} must be an integer >= 1, got {val!r}")
        if not (0.0 < c.rho <= 1.0):
            raise InputError(f"surfree: rho must lie in (0, 1], got {c.rho!r}")
        for name in ("bs_gamma", "theta_max", "start_sigma", "tanh_gamma"):
            val = getattr(c, name)
            if not isinstance(val, (int, float)) or not np.isfinite(val) or val <= 0:
                raise InputError(f"surfree: {name} must be a finite number > 0, got {val!r}")
        if c.theta_max >= 90:
            raise InputError(f"surfree: theta_max must be below 90 degrees, got {c.theta_max!r}")
        if not isinstance(c.beta, (int, float)) or c.beta < 0:
            raise InputError(f"surfree: beta must be >= 0, got {c.beta!r}")
        if c.basis_function not in dct.BASIS_FUNCTIONS:
            raise InputError(f"surfree: unknown basis_function {c.basis_function!r}; "
                             f"known: {', '.join(dct.BASIS_FUNCTIONS)}")
        fr = tuple(c.frequency_range)
        if len(fr) != 2 or not (0.0 <= fr[0] < fr[1]):
            raise InputError(f"surfree: frequency_range must be (f0, f1) with 0 <= f0 < f1, got {c.frequency_range!r}")

    @property
    def reserve(self) -> int:
        """Queries kept for the final line search."""
        return 1 + self.config.bs_max_iteration if self.config.final_line_search else 0

    def _ask(self, x: jax.Array) -> jax.Array:
        """The point actually queried: clipped (if ``clip``) and quantised (if ``quantization``)."""
        x = clip01(x) if self.config.clip else x
        x = quantize(x) if self.config.quantization else x
        # Materialise the point: without the barrier XLA may fuse its arithmetic into the model
        # (contracting a*b+c into an FMA), so the model would judge an unrounded version of the
        # point that is stored and reported.
        return jax.lax.optimization_barrier(x)

    # -- single-image batches run as two rows (see _as_two_rows)
    def init(self, oracle: Oracle, env: AttackEnv, core: AttackCore, active: jax.Array):
        if env.x.shape[0] == 1:
            env2, (core2, active2) = _as_two_rows(env, (core, active))
            return _first_row(self._init(oracle, env2, core2, active2))
        return self._init(oracle, env, core, active)

    def step(self, oracle: Oracle, env: AttackEnv, core: AttackCore, s: "SurFreeState", active: jax.Array):
        if env.x.shape[0] == 1:
            env2, (core2, s2, active2) = _as_two_rows(env, (core, s, active))
            return _first_row(self._step(oracle, env2, core2, s2, active2))
        return self._step(oracle, env, core, s, active)

    # -- init: start search
    def _init(self, oracle: Oracle, env: AttackEnv, core: AttackCore, active: jax.Array):
        c = self.config
        x = env.x
        key0 = attack_keys(env.image_keys, 0)

        def cond(carry):
            t, core_, _ = carry
            want = active & ~core_.found & (remaining(env, core_) > 0)
            return (t < c.start_max_tries) & jnp.any(want)

        def body(carry):
            t, core_, start = carry
            want = active & ~core_.found
            keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(key0)
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
            point = self._ask(clip01(x + c.start_sigma * noise))
            out = query_one(oracle, env, core_, point, want)
            start = jnp.where(bcast(out.adversarial, x), point, start)
            core_ = keep_best(env, out.core, point, out.adversarial)
            return t + 1, core_, start

        _, core, start = jax.lax.while_loop(cond, body, (jnp.int32(0), core, x))

        b = x.shape[0]
        h, w, _ = x.shape[1:]
        mask = jnp.asarray(dct.zigzag_mask(h, w, tuple(c.frequency_range)))
        basis = jax.vmap(lambda xi: dct.basis_weights(xi, mask, c.basis_function, c.tanh_gamma))(x)
        d = int(np.prod(x.shape[1:]))
        zf = jnp.zeros((b,), jnp.float32)
        zi = jnp.zeros((b,), jnp.int32)
        zb = jnp.zeros((b,), bool)
        state = SurFreeState(
            phase=jnp.full((b,), LS_BOOST, jnp.int32), x_adv=start, basis=basis,
            v=jnp.zeros((b, d), x.dtype), history=jnp.zeros((b, c.n_ortho, d), x.dtype),
            n_dirs=zi, theta_max=jnp.full((b,), c.theta_max, jnp.float32), probe=zi,
            lower=zf, upper=zf, check_opp=zb, bs_iter=zi, mid_adv=zb, cand=start,
            ls_in=x, ls_out=start, ls_lo=zf, ls_hi=jnp.ones((b,), jnp.float32), ls_iter=zi,
            ls_best=start, ls_final=zb, n_steps=zi)
        return core, state

    # -- one tick: one query per active image
    def _draw_directions(self, env: AttackEnv, s: SurFreeState, rows: jax.Array, sel: jax.Array):
        """New unit directions for the images ``rows`` [K] (``sel`` [K]: real entries; the
        others are out-of-range padding whose results are dropped). Returns (v [K, D],
        exhausted [K]). Each row's arithmetic is row-wise, so its result does not depend on K
        (K >= 2, checked by the batch-invariance tests)."""
        c = self.config
        take = lambda a: jnp.take(a, rows, axis=0, mode="clip")  # noqa: E731
        keys = attack_keys(take(env.image_keys), take(s.n_dirs) + 1)
        raw = jax.vmap(lambda k, wgt: dct.random_dct_direction(k, wgt, c.beta))(keys, take(s.basis))
        u = unit(flat(take(s.x_adv) - take(env.x)))
        v, exhausted = orthogonal_direction(flat(raw), u, take(s.history))
        return v, exhausted & sel

    def _new_directions(self, env: AttackEnv, s: SurFreeState, need: jax.Array) -> SurFreeState:
        """Draw a direction for every image with ``need``: the K needing ones are gathered into
        the smallest bucket of 2, 4, 8, ... rows that holds them (a switch over the buckets),
        so the Gram-Schmidt against the [n_ortho, D] history -- the attack's largest memory
        traffic -- is paid only for them, not for the whole batch."""
        c = self.config
        b = need.shape[0]
        sizes = [2]
        while sizes[-1] < b:
            sizes.append(min(2 * sizes[-1], b))
        count = jnp.sum(need, dtype=jnp.int32)
        branch = jnp.sum(jnp.asarray(sizes[:-1], jnp.int32) < count, dtype=jnp.int32)

        def for_size(k):
            def run(st: SurFreeState) -> SurFreeState:
                rows = jnp.nonzero(need, size=k, fill_value=b)[0]  # padding: index b, dropped
                sel = rows < b
                v, exhausted = self._draw_directions(env, st, rows, sel)
                # restart an exhausted history (rare), then write v into each ring slot: only
                # the K rows are touched, in place
                history = jax.lax.cond(
                    jnp.any(exhausted),
                    lambda h: h.at[jnp.where(exhausted, rows, b)].set(0.0, mode="drop"),
                    lambda h: h, st.history)
                slot = jnp.take(st.n_dirs, rows, mode="clip") % c.n_ortho
                return st._replace(v=st.v.at[rows].set(v, mode="drop"),
                                   history=history.at[rows, slot].set(v, mode="drop"),
                                   n_dirs=st.n_dirs + need.astype(jnp.int32))
            return run

        return jax.lax.switch(branch, [for_size(k) for k in sizes], s)

    # long by design: one tick of a per-image state machine; splitting its phases would scatter
    # the transitions that must be read together (one query per tick, decided in one place)
    def _step(self, oracle: Oracle, env: AttackEnv, core: AttackCore, s: SurFreeState, active: jax.Array):
        c = self.config
        x = env.x
        coefs = jnp.asarray(probe_coefficients(c.T))

        need = active & (s.phase == PROBE) & (s.probe == 0)
        s = jax.lax.cond(jnp.any(need), lambda st: self._new_directions(env, st, need), lambda st: st, s)

        # ---- the point each image asks
        mid = 0.5 * (s.lower + s.upper)
        extend_to = s.lower + jnp.sign(s.lower) * s.theta_max / c.T
        theta = jnp.select(
            [s.phase == PROBE, s.phase == EXTEND, s.phase == ALPHA_MID],
            [coefs[jnp.minimum(s.probe, 2 * c.T - 1)] * s.theta_max, extend_to, mid], -mid)
        on_circle = circle_point(x, s.x_adv, s.v, theta, clip=c.clip)
        ls_mid = 0.5 * (s.ls_lo + s.ls_hi)
        ls_point = (1.0 - bcast(ls_mid, x)) * s.ls_in + bcast(ls_mid, x) * s.ls_out
        boost = 0.2 * x + 0.8 * s.x_adv
        point = jnp.where(bcast(s.phase == LS_BOOST, x), boost,
                          jnp.where(bcast(s.phase == LS_BISECT, x), ls_point, on_circle))
        point = self._ask(point)

        asking = active & (s.phase != DONE)
        out = query_one(oracle, env, core, point, asking)
        core = keep_best(env, out.core, point, out.adversarial)
        adv = out.adversarial
        ph = s.phase
        sel = lambda m, a, b: jnp.where(bcast(m, a), a, b)  # noqa: E731

        # ---- line search (boost, then bisection)
        at = asking & (ph == LS_BOOST)
        s = s._replace(
            ls_in=sel(at & adv, x, sel(at, point, s.ls_in)),
            ls_out=sel(at & adv, point, sel(at, s.x_adv, s.ls_out)),
            ls_best=sel(at & adv, point, sel(at, s.x_adv, s.ls_best)),
            ls_lo=jnp.where(at, 0.0, s.ls_lo), ls_hi=jnp.where(at, 1.0, s.ls_hi),
            ls_iter=jnp.where(at, 0, s.ls_iter))
        phase = jnp.where(at, LS_BISECT, ph)
        at_bis = asking & (ph == LS_BISECT)
        s = s._replace(
            ls_hi=jnp.where(at_bis & adv, ls_mid, s.ls_hi),
            ls_lo=jnp.where(at_bis & ~adv, ls_mid, s.ls_lo),
            ls_best=sel(at_bis & adv, point, s.ls_best),
            ls_iter=s.ls_iter + at_bis.astype(jnp.int32))
        d = float(np.prod(x.shape[1:]))
        ls_threshold = c.bs_gamma / (d * np.sqrt(d))
        ls_over = (phase == LS_BISECT) & ((s.ls_iter >= c.bs_max_iteration) | (s.ls_hi - s.ls_lo <= ls_threshold))
        phase = jnp.where(asking & ls_over, _LS_END, phase)

        # ---- circle probes
        at = asking & (ph == PROBE)
        success = at & adv
        failure = at & ~adv & (s.probe + 1 >= 2 * c.T)
        new_tmax = update_theta_max(s.theta_max, success, failure, c.rho)
        lower = jnp.where(success, theta, s.lower)
        extend = success & (jnp.abs(lower) == new_tmax)
        upper = jnp.where(success, lower + jnp.sign(lower) * new_tmax / c.T, s.upper)
        at_right_angle = extend & (jnp.abs(upper) >= 90.0)  # z(+-90) = x: known non-adversarial
        upper = jnp.where(at_right_angle, jnp.sign(lower) * 90.0, upper)
        extend = extend & ~at_right_angle
        s = s._replace(
            theta_max=new_tmax, lower=lower, upper=upper,
            check_opp=jnp.where(success, lower > 0, s.check_opp),
            bs_iter=jnp.where(success, 0, s.bs_iter),
            cand=sel(success, point, s.cand),
            probe=jnp.where(at, jnp.where(adv | failure, 0, s.probe + 1), s.probe))
        after_success = _ALPHA_CHECK if c.with_alpha_line_search else _END_STEP
        phase = jnp.where(success, jnp.where(extend, EXTEND, after_success), phase)

        # ---- pushing the upper end out (only when |lower| == theta_max)
        at = asking & (ph == EXTEND)
        grown = at & adv
        nxt = extend_to + jnp.sign(extend_to) * s.theta_max / c.T
        capped = grown & (jnp.abs(nxt) >= 90.0)
        s = s._replace(
            lower=jnp.where(grown, extend_to, s.lower),
            upper=jnp.where(at & ~adv, extend_to, jnp.where(capped, jnp.sign(extend_to) * 90.0, s.upper)),
            cand=sel(grown, point, s.cand))
        phase = jnp.where(at & (~adv | capped), _ALPHA_CHECK, phase)

        # ---- alpha bisection
        at_mid = asking & (ph == ALPHA_MID)
        at_opp = asking & (ph == ALPHA_OPP)
        s = s._replace(mid_adv=jnp.where(at_mid, adv, s.mid_adv),
                       cand=sel((at_mid & adv) | (at_opp & adv & ~s.mid_adv), point, s.cand))
        resolve = (at_mid & ~s.check_opp) | at_opp
        adv_mid = jnp.where(at_mid, adv, s.mid_adv)
        adv_opp = jnp.where(at_opp, adv, False)
        lo2, up2, chk2 = alpha_bisection_update(s.lower, s.upper, s.check_opp, mid, adv_mid, adv_opp)
        s = s._replace(lower=jnp.where(resolve, lo2, s.lower), upper=jnp.where(resolve, up2, s.upper),
                       check_opp=jnp.where(resolve, chk2, s.check_opp),
                       bs_iter=s.bs_iter + resolve.astype(jnp.int32))
        phase = jnp.where(at_mid & s.check_opp & ~resolve, ALPHA_OPP, phase)
        phase = jnp.where(resolve, _ALPHA_CHECK, phase)

        # ---- transient phases (no query), in a fixed order
        rem = remaining(env, core)
        ls_end = phase == _LS_END
        x_adv = sel(ls_end & (row_norm(s.ls_best - x) < row_norm(s.x_adv - x)), s.ls_best, s.x_adv)
        s = s._replace(x_adv=x_adv)
        phase = jnp.where(ls_end, jnp.where(s.ls_final, DONE, _BEGIN_STEP), phase)

        check = phase == _ALPHA_CHECK
        more = (s.bs_iter < c.bs_max_iteration) & (jnp.abs(alpha(s.upper) - alpha(s.lower)) > c.bs_gamma)
        phase = jnp.where(check, jnp.where(more, ALPHA_MID, _END_STEP), phase)

        low_budget = asking & (rem <= self.reserve)
        in_step = (phase == EXTEND) | (phase == ALPHA_MID) | (phase == ALPHA_OPP)
        phase = jnp.where(low_budget & in_step, _END_STEP, phase)
        phase = jnp.where(low_budget & (phase == PROBE), _GO_FINAL, phase)

        end = phase == _END_STEP
        closer = row_norm(s.cand - x) < row_norm(s.x_adv - x)
        s = s._replace(x_adv=sel(end & closer, s.cand, s.x_adv), n_steps=s.n_steps + end.astype(jnp.int32),
                       probe=jnp.where(end, 0, s.probe))
        phase = jnp.where(end, _BEGIN_STEP, phase)

        begin = phase == _BEGIN_STEP
        phase = jnp.where(begin, jnp.where(_steps_cap_reached(s.n_steps, c.steps) | low_budget, _GO_FINAL, PROBE), phase)

        final = phase == _GO_FINAL
        if c.final_line_search:
            phase = jnp.where(final & (rem > 0), LS_BOOST, jnp.where(final, DONE, phase))
            s = s._replace(ls_final=s.ls_final | final)
        else:
            phase = jnp.where(final, DONE, phase)
        phase = jnp.where(asking, phase, s.phase)
        s = s._replace(phase=phase)
        core = core._replace(done=core.done | (active & (phase == DONE)))
        return core, s


def _steps_cap_reached(n_steps: jax.Array, steps: int | None) -> jax.Array:
    """True where ``steps`` SurFree steps are completed (never when steps is None: the budget
    decides)."""
    if steps is None:
        return jnp.zeros(n_steps.shape, bool)
    return n_steps >= steps


def _as_two_rows(env: AttackEnv, tree):
    """Duplicate the single row of ``env`` and of every array in ``tree``; the copy is marked
    invalid (never queried, never active). XLA CPU compiles [1, ...] programs differently
    (degenerate-dimension simplifications change where a*b+c is contracted into an FMA, so
    results differ in the last bit from the same row inside a larger batch); running them as
    two rows makes a single image follow exactly the trajectory it has in any batch."""
    two = lambda a: jnp.concatenate([a, a], axis=0)  # noqa: E731
    env2 = AttackEnv(two(env.x), two(env.y), two(env.image_keys),
                     jnp.concatenate([env.valid, jnp.zeros((1,), bool)]), env.max_queries)
    tree2 = jax.tree.map(two, tree)
    *rest, active = tree2
    active = active.at[1].set(False)
    return env2, (*rest, active)


def _first_row(tree):
    return jax.tree.map(lambda a: a[:1], tree)


__all__ = ["SurFree", "SurFreeConfig", "SurFreeState", "alpha", "alpha_bisection_update", "circle_point",
           "orthogonal_direction", "probe_coefficients", "quantize", "update_theta_max"]

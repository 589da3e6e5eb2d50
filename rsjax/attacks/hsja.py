"""HopSkipJump attack, L2 version (Chen, Jordan, Wainwright, S&P 2020), faithful to the
authors' numpy original (Jianbo-Lab/HSJA ``hsja.py``), batched over images and robust to a
random (smoothed) classifier.

Algorithm, with d = H*W*C and phi(z) = +1 if z is adversarial else -1:

* start: uniform noise u ~ U[0,1]^d until adversarial (at most ``max_init_tries`` queries),
  then bisect the blend (1-a) x + a u to tolerance 1e-3 (keep the adversarial end), then the
  boundary binary search below. dist_post = ||start - x||.
* boundary binary search (``binary_search_batch`` of the original): bisect a in
  (1-a) x + a z until the interval is <= theta = gamma / (d sqrt d); keep the adversarial end.
* iteration t = 1, 2, ...:
  - probe radius delta_t = 0.1 if t = 1 else sqrt(d) * theta * dist_post (dist_post: distance of
    the previous stepped point before its binary search, as in the original);
  - n_t = min(floor(init_num_evals * sqrt(t)), max_num_evals, queries left) unit Gaussian
    directions u_j (u_j from the key fold_in(step key, j) alone); probes
    z_j = clip(x_b + delta u_j); u_j <- (z_j - x_b) / delta;
  - gradient estimate g = mean_j (phi_j - mean phi) u_j, or +-mean_j u_j when all phi_j agree
    (the case where the original misbehaves under RS), normalised (no NaN: a zero estimate
    skips the step);
  - geometric step search: eps = ||x_b - x|| / sqrt(t), halved until x_b + eps g is
    adversarial, at most ``max_step_halvings`` queries (the original loop is unbounded);
  - x_b <- boundary binary search between x and clip(x_b + eps g).
* Every query counts, start included; the best adversarial point seen is reported.

Published defaults (the original's ``hsja()`` signature): gamma = 1.0, init_num_evals = 100,
max_num_evals = 10,000, num_iterations = 40, geometric step search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rsjax.attacks.common import (
    AttackCore, AttackEnv, DecisionAttack, attack_keys, bcast, binary_search, clip01, iterations_for,
    l2_norm, query, query_one, remaining, safe_normalize, tree_sum, update_best,
)
from rsjax.errors import InputError
from rsjax.noise import NOISE_IMPLS, sample_noise
from rsjax.oracle import Oracle


def probe_directions(keys: jax.Array, start: jax.Array | int, count: int, shape: tuple[int, ...],
                     noise: str = "hash") -> jax.Array:
    """Gaussian probe directions number start, ..., start + count - 1 of each image: [B, count,
    *shape]; direction j of image b is ``sample_noise(fold_in(keys[b], j), shape, noise)``, so
    it does not depend on how the probes are split into batches (``probe_batch``)."""
    j = jnp.asarray(start, jnp.uint32) + jnp.arange(count, dtype=jnp.uint32)

    def one_image(k):
        return jax.vmap(lambda jj: sample_noise(jax.random.fold_in(k, jj), shape, noise))(j)

    return jax.vmap(one_image)(keys)


@dataclass(frozen=True)
class HSJAConfig:
    """HSJA settings; defaults are the original's. ``probe_batch``, ``max_step_halvings``,
    ``max_init_tries`` and ``chunk_steps`` are execution bounds, not algorithm parameters
    (``probe_batch`` changes only the rounding of the gradient sums: probe j's direction
    depends on j alone, see :func:`probe_directions`).
    ``probe_noise`` is the generator of the Gaussian probe directions: 'hash' (default, the
    counter-hash normals of :func:`rsjax.noise.sample_noise`, ~2.5x cheaper on CPU) or
    'threefry' (``jax.random.normal``); both give N(0, I) directions, only the draws differ."""

    gamma: float = 1.0
    init_num_evals: int = 100
    max_num_evals: int = 10_000
    num_iterations: int = 40
    init_blend_tolerance: float = 1e-3
    max_init_tries: int = 10_000
    max_step_halvings: int = 30
    probe_batch: int = 50
    chunk_steps: int = 1
    probe_noise: str = "hash"


class HSJAState(NamedTuple):
    x_b: jax.Array  # [B, H, W, C] current boundary point
    dist: jax.Array  # [B] ||x_b - x||
    dist_post: jax.Array  # [B] distance of the last stepped point before its binary search


def uniform_start_search(oracle: Oracle, env: AttackEnv, core: AttackCore, active: jax.Array,
                         max_tries: int) -> tuple[jax.Array, jax.Array, AttackCore]:
    """HSJA's start: try t = 0, 1, ... < ``max_tries`` draws u ~ U([0,1]^d) (key
    ``fold_in(attack_keys(image_key, 0), t)``) until one is answered adversarial. Returns (found
    [B], the adversarial draw [B, ...] (x where none), core); an image still searching at the end
    ran out of tries or budget."""
    keys = attack_keys(env.image_keys, 0)
    shape = env.x.shape[1:]

    def noise(i):
        return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, i), shape))(keys)

    def cond(s):
        i, searching, _, _, _ = s
        return (i < max_tries) & jnp.any(searching)

    def body(s):
        i, searching, hit, start, core_ = s
        u = noise(i)
        out = query_one(oracle, env, core_, u, searching)
        start = jnp.where(bcast(out.adversarial, start), u, start)
        hit = hit | out.adversarial
        searching = searching & out.sent & ~out.adversarial
        return i + 1, searching, hit, start, out.core

    _, _, got, start, core = jax.lax.while_loop(cond, body, (0, active, jnp.zeros_like(active), env.x, core))
    return got, start, core


class HSJA(DecisionAttack):
    """HopSkipJump L2. ``HSJA(**overrides)`` with the fields of :class:`HSJAConfig`."""

    name = "hsja"
    metric = "l2"
    Config = HSJAConfig

    def check_config(self) -> None:
        super().check_config()
        c = self.config
        if not (isinstance(c.gamma, (int, float)) and math.isfinite(c.gamma) and c.gamma > 0):
            raise InputError(f"gamma must be a finite number > 0, got {c.gamma!r}")
        for name in ("init_num_evals", "max_num_evals", "num_iterations", "max_init_tries",
                     "max_step_halvings", "probe_batch"):
            v = getattr(c, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if c.probe_noise not in NOISE_IMPLS:
            raise InputError(f"probe_noise must be one of {NOISE_IMPLS}, got {c.probe_noise!r}")
        if not 0 < c.init_blend_tolerance < 1:
            raise InputError(f"init_blend_tolerance must lie in (0, 1), got {c.init_blend_tolerance!r}")

    @staticmethod
    def _theta(env: AttackEnv, gamma: float) -> float:
        d = math.prod(env.x.shape[1:])
        return gamma / (d * math.sqrt(d))

    def _boundary_search(self, oracle, env, core, z, mask):
        theta = self._theta(env, self.config.gamma)
        return binary_search(oracle, env, core, env.x, z, mask, theta, iterations_for(theta))

    # ------------------------------------------------------------------ start
    def init(self, oracle, env: AttackEnv, core: AttackCore, active: jax.Array):
        c = self.config
        got, start, core = uniform_start_search(oracle, env, core, active, c.max_init_tries)
        blended, _, core = binary_search(oracle, env, core, env.x, start, got, c.init_blend_tolerance,
                                         iterations_for(c.init_blend_tolerance))
        dist_post = l2_norm(blended - env.x)
        x_b, _, core = self._boundary_search(oracle, env, core, blended, got)
        core = update_best(env, core, x_b, got)
        dist = l2_norm(x_b - env.x)
        return core, HSJAState(x_b, dist, dist_post)

    # ------------------------------------------------------------------ iteration
    def _gradient(self, oracle, env, core, x_b, delta, n_evals, key, active):
        """Monte-Carlo estimate of the boundary normal at x_b from n_evals probes per image,
        in batches of ``probe_batch`` probes. Returns (unit direction, ok [B], core)."""
        g, ok, core, _ = self._gradient_stats(oracle, env, core, x_b, delta, n_evals, key, active)
        return g, ok, core

    def _gradient_stats(self, oracle, env, core, x_b, delta, n_evals, key, active):
        """:meth:`_gradient` and the estimate's statistics (``psj`` sizes its probe radius on
        them): (unit direction, ok, core, (||mean estimate||^2 [B], probes answered [B], mean
        answer in {-1, +1} [B]))."""
        c = self.config
        p = c.probe_batch
        shape = x_b.shape[1:]
        n_batches = jnp.max(jnp.where(active, (n_evals + p - 1) // p, 0))
        zeros = jnp.zeros_like(x_b)
        b = x_b.shape[0]

        def body(s):
            i, core_, s_phi_u, s_u, s_phi, count = s
            want = active[:, None] & ((i * p + jnp.arange(p))[None, :] < n_evals[:, None])

            def directions(_):
                rv = probe_directions(key, i * p, p, shape, c.probe_noise)  # [B, P, ...]
                rv = safe_normalize(rv.reshape((b * p,) + shape)).reshape(rv.shape)
                probes = clip01(x_b[:, None] + bcast(delta, rv) * rv)
                return probes, (probes - x_b[:, None]) / bcast(delta, rv)

            def no_directions(_):
                z = jnp.zeros((b, p) + shape, x_b.dtype)
                return z, z

            # the conditional materialises the directions once; as plain code, XLA's fusion
            # re-derived the normals inside each consumer (the oracle's input, the norm, the
            # sums below): ~3x the generator's cost per probe batch
            probes, rv = jax.lax.cond(jnp.any(want), directions, no_directions, None)
            out = query(oracle, env, core_, probes, want)
            phi = jnp.where(out.adversarial, 1.0, -1.0)
            w = out.sent.astype(rv.dtype)
            wts = jnp.stack([w * phi, w], axis=2)  # [B, P, 2]: both weighted sums in one pass
            sums = tree_sum(bcast(wts, rv[:, :, None]) * rv[:, :, None], axis=1)  # [B, 2, ...]
            s_phi_u = s_phi_u + sums[:, 0]
            s_u = s_u + sums[:, 1]
            s_phi = s_phi + jnp.sum(w * phi, axis=1)
            count = count + jnp.sum(w, axis=1)
            return i + 1, out.core, s_phi_u, s_u, s_phi, count

        init = (0, core, zeros, zeros, jnp.zeros((b,)), jnp.zeros((b,)))
        _, core, s_phi_u, s_u, s_phi, count = jax.lax.while_loop(lambda s: s[0] < n_batches, body, init)
        safe_count = jnp.maximum(count, 1.0)
        mean_phi = s_phi / safe_count
        all_adv = s_phi >= count
        all_not = -s_phi >= count
        centred = (s_phi_u - bcast(mean_phi, s_u) * s_u) / bcast(safe_count, s_u)
        g = jnp.where(bcast(all_adv, s_u), s_u / bcast(safe_count, s_u),
                      jnp.where(bcast(all_not, s_u), -s_u / bcast(safe_count, s_u), centred))
        norm = l2_norm(g)
        ok = (count > 0) & (norm > 0) & jnp.all(jnp.isfinite(g.reshape(b, -1)), axis=1)
        return safe_normalize(g), ok, core, (jnp.square(norm), count, mean_phi)

    def step(self, oracle, env: AttackEnv, core: AttackCore, st: HSJAState, active: jax.Array):
        c = self.config
        d = math.prod(env.x.shape[1:])
        theta = self._theta(env, c.gamma)
        t = (core.steps + 1).astype(jnp.float32)
        key = attack_keys(env.image_keys, core.steps + 1)

        delta = jnp.where(t == 1, 0.1, math.sqrt(d) * theta * st.dist_post)
        delta = jnp.maximum(delta, 1e-12)
        n_evals = jnp.floor(c.init_num_evals * jnp.sqrt(t)).astype(jnp.int32)
        n_evals = jnp.minimum(jnp.minimum(n_evals, c.max_num_evals), remaining(env, core))
        g, g_ok, core = self._gradient(oracle, env, core, st.x_b, delta, n_evals, key, active)

        # geometric progression: eps = dist / sqrt(t), halved until adversarial (bounded)
        eps0 = st.dist / jnp.sqrt(t)

        def cond(s):
            i, _, searching, _, _ = s
            return (i < c.max_step_halvings) & jnp.any(searching)

        def body(s):
            i, eps, searching, hit, core_ = s
            out = query_one(oracle, env, core_, st.x_b + bcast(eps, g) * g, searching)
            hit = hit | out.adversarial
            searching = searching & out.sent & ~out.adversarial
            eps = jnp.where(searching, eps * 0.5, eps)
            return i + 1, eps, searching, hit, out.core

        search = active & g_ok & (eps0 > 0)
        _, eps, _, moved, core = jax.lax.while_loop(
            cond, body, (0, eps0, search, jnp.zeros_like(search), core))

        stepped = clip01(st.x_b + bcast(eps, g) * g)
        dist_post = jnp.where(moved, l2_norm(stepped - env.x), st.dist_post)
        x_new, _, core = self._boundary_search(oracle, env, core, stepped, moved)
        x_b = jnp.where(bcast(moved, x_new), x_new, st.x_b)
        core = update_best(env, core, x_b, moved)
        core = core._replace(done=core.done | (active & (core.steps + 1 >= c.num_iterations)))
        return core, HSJAState(x_b, l2_norm(x_b - env.x), dist_post)


__all__ = ["HSJA", "HSJAConfig", "HSJAState", "probe_directions"]

"""RayS: hard-label L-inf ray search (Chen & Gu, KDD 2020), faithful to the authors' batched
code (uclaml/RayS ``RayS.py``), with exact query accounting. The paper we reproduce also
scores it in L2: both norms of the final point are reported, "best" is the RayS radius.

State per image: sign vector s in {-1,+1}^D (all +1 at start), best radius d_t (inf at start)
along the unit ray u(s) = s / ||s||_2 = s / sqrt(D), the point x_final = clip(x + d_t u(s)),
and the block schedule (level k, block index i).

Iteration (one step):
  * block size ceil(D / 2^k); candidate s' = s with block i (in the flattened H*W*C order)
    negated; level 0 negates everything;
  * one query at clip(x + d_t u(s')) (d_t = inf: the saturated image clip(x + inf s'));
  * only if adversarial: bisect the radius on [0, min(d_t, sqrt(D))] to tolerance 1e-3
    (keep the adversarial end); if the end radius is < d_t, adopt s', d_t and x_final;
  * i <- i + 1; after the last block of level k (or when the block reaches D) k <- k + 1, i <- 0.
The L-inf distance of x_final is at most d_t / sqrt(D) (equal when clipping does not bind).

Differences from the reference, on purpose: a bisection probe beyond the budget is not sent
(the reference overspends); a bisection ends after ceil(log2(sqrt(D) / tol)) rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rsjax.attacks.common import (
    AttackCore, AttackEnv, DecisionAttack, bcast, clip01, l2_norm, linf_norm, query_one,
)
from rsjax.errors import InputError


@dataclass(frozen=True)
class RaySConfig:
    """RayS settings; ``tolerance`` is the reference's bisection tolerance on the radius along
    the unit ray. ``chunk_steps`` is an execution setting (steps per jitted chunk)."""

    tolerance: float = 1e-3
    chunk_steps: int = 32


class RaySState(NamedTuple):
    sign: jax.Array  # [B, D] float32 in {-1, +1}, the best sign vector
    d_t: jax.Array  # [B] float32 best radius along u(sign) (inf when none)
    level: jax.Array  # [B] int32 block level k
    block: jax.Array  # [B] int32 block index within the level
    bisecting: jax.Array  # [B] bool: bisecting the radius along ``candidate``
    candidate: jax.Array  # [B, D] float32 sign vector being bisected
    lo: jax.Array  # [B] float32 bisection interval (lo not adversarial, hi adversarial)
    hi: jax.Array  # [B] float32


def block_flipped_signs(sign: jax.Array, level: jax.Array, block: jax.Array,
                        d: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RayS's hierarchical probe direction: the sign vector s [B, d] with block ``block`` of
    level ``level`` (2^level blocks of ceil(d / 2^level) coordinates) negated; also returns the
    number of blocks of the level and the block's end (for moving to the next block)."""
    n_blocks = jnp.left_shift(1, level)
    size = (d + n_blocks - 1) // n_blocks
    start = block * size
    end = jnp.minimum(d, start + size)
    idx = jnp.arange(d)[None, :]
    flip = (idx >= start[:, None]) & (idx < end[:, None])
    return jnp.where(flip, -sign, sign), n_blocks, end


class RayS(DecisionAttack):
    """RayS (L-inf). ``RayS(**overrides)`` with the fields of :class:`RaySConfig`.

    Execution: one step = one query per image (a small state machine: probe a new direction,
    or one bisection round), so a batch never computes idle bisection rounds for images
    that are not bisecting; each image's sequence of queries is the nested-loop one above.
    A radius answered adversarial during a bisection is adopted at once (it is < d_t), so
    the best point is current even when the budget ends a bisection."""

    name = "rays"
    metric = "linf"
    Config = RaySConfig
    start_in_init = False

    def check_config(self) -> None:
        super().check_config()
        t = self.config.tolerance
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise InputError(f"tolerance must be a finite number > 0, got {t!r}")

    def init(self, oracle, env: AttackEnv, core: AttackCore, active: jax.Array):
        b = env.x.shape[0]
        d = math.prod(env.x.shape[1:])
        ones = jnp.ones((b, d), jnp.float32)
        zeros = jnp.zeros((b,), jnp.float32)
        st = RaySState(sign=ones, d_t=jnp.full((b,), jnp.inf, jnp.float32), level=jnp.zeros((b,), jnp.int32),
                       block=jnp.zeros((b,), jnp.int32), bisecting=jnp.zeros((b,), bool), candidate=ones,
                       lo=zeros, hi=zeros)
        return core, st

    def step(self, oracle, env: AttackEnv, core: AttackCore, st: RaySState, active: jax.Array):
        tol = self.config.tolerance
        d = math.prod(env.x.shape[1:])
        max_level = max(0, math.ceil(math.log2(d)))  # beyond it blocks are single coordinates
        sqrt_d = math.sqrt(d)

        attempt, n_blocks, end = block_flipped_signs(st.sign, st.level, st.block, d)

        probing = ~st.bisecting
        direction = jnp.where(probing[:, None], attempt, st.candidate)
        mid = 0.5 * (st.lo + st.hi)
        radius = jnp.where(probing, st.d_t, mid)
        unit = (direction / sqrt_d).reshape(env.x.shape)

        def point(r):  # r may be inf: x + inf * (+-1/sqrt(D)) saturates to the box
            return clip01(env.x + bcast(r, unit) * unit)

        out = query_one(oracle, env, core, point(radius), active)
        core, adv = out.core, out.adversarial

        # probe answered adversarial: start bisecting on [0, min(d_t, sqrt D)]
        start_bis = probing & adv
        lo = jnp.where(start_bis, 0.0, jnp.where(st.bisecting & out.sent & ~adv, mid, st.lo))
        hi = jnp.where(start_bis, jnp.minimum(st.d_t, sqrt_d), jnp.where(st.bisecting & adv, mid, st.hi))
        bisecting = (start_bis | (st.bisecting & out.sent)) & (hi - lo > tol)
        # adopt any adversarial radius below d_t (the reference adopts the bisection's end)
        adopt = (start_bis | (st.bisecting & adv)) & (hi < st.d_t)
        x_new = point(hi)
        diff = x_new - env.x
        core = core._replace(
            best_x=jnp.where(bcast(adopt, x_new), x_new, core.best_x),
            best_l2=jnp.where(adopt, l2_norm(diff), core.best_l2),
            best_linf=jnp.where(adopt, linf_norm(diff), core.best_linf),
            found=core.found | adopt,
        )
        candidate = jnp.where(start_bis[:, None], attempt, st.candidate)
        sign = jnp.where(adopt[:, None], candidate, st.sign)
        d_t = jnp.where(adopt, hi, st.d_t)

        # a direction is finished (failed probe, or bisection done): next block
        leave = active & out.sent & ~bisecting
        block = st.block + 1
        next_level = (block == n_blocks) | (end == d)
        level = jnp.where(leave & next_level, jnp.minimum(st.level + 1, max_level), st.level)
        block = jnp.where(leave, jnp.where(next_level, 0, block), st.block)
        return core, RaySState(sign, d_t, level, block, bisecting, candidate, lo, hi)


__all__ = ["RayS", "RaySConfig", "RaySState"]

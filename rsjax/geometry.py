"""Batched geometry helpers shared by the attacks, the evaluator's callers, the white-box
attack and the exact linear model: rows are images ([B, ...] arrays), and every sum runs in a
fixed elementwise order so that a row's result never depends on the other rows of its batch.

* :func:`tree_sum` — zero-pad to a power of two, add halves (the order of the attacks' norms and
  of :func:`rsjax.models.linear.linear_logits_fn`);
* :func:`halving_sum` — add halves, padding an odd length by one zero at each level (SurFree's
  order; :func:`halving_dot`, :func:`halving_l2_norm`);
* :func:`padded_tree_sum` — the same pairwise order written as an explicit zero padding (the
  exact arithmetic of :func:`rsjax.models.linear.linear_logits_fn`, kept as it is so its logits
  do not move by a rounding);
* :func:`l2_norm`, :func:`linf_norm`, :func:`safe_normalize`, :func:`flat`, :func:`bcast`,
  :func:`clip01`, and :func:`keep_better` (the best-point update of every attack);
* :func:`xla_l2_norm` — the plain XLA reduction (not batch-invariant), the form of the white-box
  attack and of PGD training, whose results do not depend on a row's batch by design;
* :func:`split_product` — a product whose later additions no FMA contraction can change, and
  :func:`split_l2_norm`, the L2 norm summing such squares in :func:`tree_sum`'s order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def flat(v: jax.Array) -> jax.Array:
    """[B, ...] -> [B, D]."""
    return v.reshape(v.shape[0], -1)


def tree_sum(v: jax.Array, axis: int = 1) -> jax.Array:
    """Sum over ``axis`` in a fixed pairwise order (zero-pad to a power of two, then add halves).

    XLA:CPU's own reductions change their summation order with the number of rows (measured:
    a row sum over 784 values differs in the last bit between 5 and 7 rows), which would make an
    image's trajectory depend on its batch; elementwise adds in a fixed order do not."""
    axis = axis % v.ndim
    d = v.shape[axis]
    n = 1 << max(0, (d - 1).bit_length())
    if n != d:
        # first halving of the zero-padded vector without materialising the padding:
        # w[i] = v[i] + v[i + n/2] for i < d - n/2, and w[i] = v[i] (+ 0) for the rest
        h = n // 2
        sl = lambda a, b: jax.lax.slice_in_dim(v, a, b, axis=axis)  # noqa: E731
        v = jnp.concatenate([sl(0, d - h) + sl(h, d), sl(d - h, h)], axis=axis)
        n = h
    while n > 1:
        n //= 2
        v = jax.lax.slice_in_dim(v, 0, n, axis=axis) + jax.lax.slice_in_dim(v, n, 2 * n, axis=axis)
    return jnp.squeeze(v, axis)


def padded_tree_sum(v: jax.Array) -> jax.Array:
    """Row sums of v [B, D]: zero-pad D to a power of two, then add halves. The order of
    :func:`tree_sum` written with an explicit padding (XLA fuses the two forms differently, so
    their roundings may differ: this is the linear model's)."""
    n = 1 << max(0, (v.shape[1] - 1).bit_length())
    v = jnp.pad(v, ((0, 0), (0, n - v.shape[1])))
    while n > 1:
        n //= 2
        v = v[:, :n] + v[:, n:]
    return v[:, 0]


def halving_sum(a: jax.Array, axis: int = -1) -> jax.Array:
    """Sum over ``axis`` in SurFree's fixed pairwise order: halves added elementwise, an odd
    length padded with one zero at each level (784 -> 392 -> ... -> 49 -> 50 -> 25 -> 26 -> ...).
    Batch-invariant like :func:`tree_sum` (a row's result never depends on the other rows) but a
    different order, hence other roundings: SurFree's trajectories are defined by this one."""
    axis = axis % a.ndim
    while a.shape[axis] > 1:
        if a.shape[axis] % 2:
            pad = [(0, 0)] * a.ndim
            pad[axis] = (0, 1)
            a = jnp.pad(a, pad)
        half = a.shape[axis] // 2
        a = jax.lax.slice_in_dim(a, 0, half, axis=axis) + jax.lax.slice_in_dim(a, half, 2 * half, axis=axis)
    return jnp.squeeze(a, axis)


def halving_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-row inner product of [B, ...] arrays -> [B] in SurFree's order (:func:`halving_sum`)."""
    return halving_sum(flat(a) * flat(b))


def halving_l2_norm(v: jax.Array) -> jax.Array:
    """Per-row L2 norm of a [B, ...] array -> [B] in SurFree's order (:func:`halving_dot`)."""
    return jnp.sqrt(halving_dot(v, v))


def l2_norm(v: jax.Array) -> jax.Array:
    """Per-row L2 norm over all axes after the first: [B, ...] -> [B] (batch-invariant order)."""
    return jnp.sqrt(tree_sum(jnp.square(flat(v)), axis=1))


def linf_norm(v: jax.Array) -> jax.Array:
    """Per-row L-inf norm over all axes after the first: [B, ...] -> [B]."""
    return jnp.max(jnp.abs(flat(v)), axis=1)


def xla_l2_norm(v: jax.Array, keepdims: bool = False) -> jax.Array:
    """Per-row L2 norm by XLA's own reduction: [B, ...] -> [B] over the flattened row, or with
    ``keepdims`` -> [B, 1, ..., 1] over the trailing axes (PGD training's form). Faster than
    :func:`l2_norm` but its summation order may change with the number of rows."""
    if keepdims:
        return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))
    return jnp.sqrt(jnp.sum(jnp.square(flat(v)), axis=1))


def bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    """Reshape a [B] (or [B, P]) array to broadcast against ``like`` ([B, ...])."""
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def safe_normalize(v: jax.Array, fallback: jax.Array | None = None, norm=l2_norm) -> jax.Array:
    """v / ||v||_2 per row; rows of zero (or non-finite) norm become ``fallback`` (default 0),
    so no NaN ever appears. ``norm``: the [B]-valued norm used (:func:`l2_norm`, or
    :func:`xla_l2_norm` for the white-box attack)."""
    n = norm(v)
    ok = (n > 0) & jnp.isfinite(n)
    out = v / bcast(jnp.where(ok, n, 1.0), v)
    fb = jnp.zeros_like(v) if fallback is None else fallback
    return jnp.where(bcast(ok, v), out, fb)


def keep_better(better: jax.Array, candidate: jax.Array, best: jax.Array, *values) -> tuple:
    """The best-point update: rows where ``better`` [B] take ``candidate`` [B, ...] over ``best``,
    and each ``(new, old)`` pair of ``values`` ([B] arrays: the distances) follows. Returns
    (best', old'...)."""
    return (jnp.where(bcast(better, candidate), candidate, best),
            *(jnp.where(better, new, old) for new, old in values))


def split_halves(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 v = hi + lo exactly: hi is v with the 12 low bits of its mantissa cleared (at most
    12 significant bits), lo = v - hi (exact, at most 12 significant bits). Finite v only."""
    bits = jax.lax.bitcast_convert_type(v.astype(jnp.float32), jnp.uint32)
    hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, v - hi


def split_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """a * b (float32, broadcasting, finite) as ah bh + ((ah bl + al bh) + al bl) over the halves of
    :func:`split_halves`: each partial product has at most 24 significant bits, so it is exact,
    and a sum that consumes it rounds the same whether or not the compiler contracts the pair
    into an FMA.

    Why: XLA:CPU compiles with FMA contraction allowed, and in (1 - a) x + a y LLVM fuses one of
    the two products into an FMA; which one depends on the operand order of the fusion the
    expression lands in. XLA duplicates such cheap elementwise producers into each consumer
    fusion (``optimization_barrier`` does not prevent it: XLA:CPU removes barriers before
    fusion), so the same value was rounded differently by different consumers, and by different
    programs (a batch of 3 versus one image run as two rows). With exact partial products every
    consumer computes the same bits. Differs from the rounded a * b by at most a unit in the
    last place (products below ~1e-30, whose halves underflow, may differ more)."""
    ah, al = split_halves(a)
    bh, bl = split_halves(b)
    return ah * bh + ((ah * bl + al * bh) + al * bl)


def split_l2_norm(v: jax.Array) -> jax.Array:
    """Per-row L2 norm [B, ...] -> [B] in :func:`tree_sum`'s order, the squares formed by
    :func:`split_product`: no FMA contraction can change it, whatever the fusion it is compiled
    in (:func:`l2_norm`'s first additions consume two squares, one of which LLVM may contract)."""
    f = flat(v)
    return jnp.sqrt(tree_sum(split_product(f, f), axis=1))


def clip01(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 1.0)

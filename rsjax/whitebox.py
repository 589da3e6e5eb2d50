"""White-box minimal-L2 adversarial examples of the base classifier f, found with gradients.

Used by the analysis figures (Fig. 1 of Maho et al. 2022: the direction x_a - x_o), not by the
decision-based attacks. Two stages, both batched over images and jitted:

1. **DDN** -- Decoupled Direction and Norm (Rony et al., CVPR 2019), untargeted. With
   delta_0 = 0, eps_0 = ``init_norm`` and the loss L = CE(f(x + delta), y):

       g_k     = grad_delta L(x + delta_k, y)                     (ascent direction)
       delta~  = delta_k + alpha_k g_k / ||g_k||_2,  alpha_k = cosine annealing alpha_max -> alpha_min
       eps_k+1 = eps_k (1 - gamma) if x + delta_k is adversarial else eps_k (1 + gamma)
       delta_k+1 = clip(x + eps_k+1 delta~ / ||delta~||_2, 0, 1) - x

   and the best (smallest-norm) adversarial x + delta_k seen is kept. A zero gradient (or a zero
   delta~) leaves the direction unchanged, so no NaN appears.
2. **Boundary refinement** -- a bisection of the blend factor a in p(a) = x + a (x_best - x) on
   [0, 1], keeping the adversarial end, one forward pass per round, until the bracket is shorter
   than ``refine_tol`` in L2 (at most ``refine_iterations`` rounds). The output lies on the segment
   [x, x_best], past the boundary of f by less than ``refine_tol`` (default 1e-4). Bisecting much
   further is harmful: the logit margin then reaches float32 rounding, and re-evaluating f in
   another batch shape (another matmul kernel) can give the clean label back.

For a linear binary f(x) = [w.x + b > 0] every gradient is parallel to w, so delta stays parallel
to w and the output is the orthogonal projection onto the hyperplane, at the exact distance
|w.x + b| / ||w|| (tested).

Only f's labels and logits are used (no smoothing): x_a is the adversarial of *f*; the figures then
look at g_{sigma,n} along x_a - x_o.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import InputError, check_int_at_least, check_positive
from rsjax.geometry import bcast, keep_better, safe_normalize, xla_l2_norm
from rsjax.xla_options import jit

LogitsFn = Callable[[jax.Array], jax.Array]


class WhiteboxResult(NamedTuple):
    """Per-image outcome (numpy): ``x_adv`` [B,H,W,C] (the clean image where no adversarial was
    found), ``l2`` [B] its L2 distance to x (0 for misclassified images, inf where none found),
    ``success`` [B] (an adversarial point of f is known), ``misclassified`` [B] (f(x) != y)."""

    x_adv: np.ndarray
    l2: np.ndarray
    success: np.ndarray
    misclassified: np.ndarray


def _unit(v: jax.Array, fallback: jax.Array) -> jax.Array:
    """v / ||v|| per row (XLA's reduction); rows of zero or non-finite norm take ``fallback``."""
    return safe_normalize(v, fallback, norm=xla_l2_norm)


def ddn_step(x: jax.Array, delta: jax.Array, eps: jax.Array, g: jax.Array, adv: jax.Array, k, *, steps: int,
             gamma: float, alpha_max: float, alpha_min: float) -> tuple[jax.Array, jax.Array]:
    """One DDN update (module docstring, stage 1) of step k of ``steps``: the step
    alpha_k g / ||g|| with the cosine-annealed alpha_k, the radius eps shrunk by (1 - gamma) where
    x + delta is adversarial (``adv``) and grown by (1 + gamma) elsewhere, the new delta of norm
    eps along delta~ (along delta where delta~ = 0), clipped to the [0, 1] box.
    Returns (delta_k+1, eps_k+1). Shared by DDN on f and by SmoothAdv on the soft classifier."""
    alpha = alpha_min + 0.5 * (alpha_max - alpha_min) * (1.0 + jnp.cos(jnp.pi * k / steps))
    step = _unit(g, jnp.zeros_like(g))
    moved = delta + alpha * step
    eps = jnp.where(adv, eps * (1.0 - gamma), eps * (1.0 + gamma))
    direction = _unit(moved, _unit(delta, jnp.zeros_like(delta)))
    return jnp.clip(x + bcast(eps, x) * direction, 0.0, 1.0) - x, eps


@partial(jit, static_argnames=("logits_fn", "steps", "refine_iterations"))
def _ddn_jit(logits_fn, x, y, *, steps, gamma, init_norm, alpha_max, alpha_min, refine_iterations,
             refine_tol):
    b = x.shape[0]

    def loss(delta):
        logp = jax.nn.log_softmax(logits_fn(x + delta), axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=1)), logp

    grad_fn = jax.grad(loss, has_aux=True)

    def body(k, s):
        delta, eps, best, best_l2 = s
        g, logp = grad_fn(delta)
        adv = jnp.argmax(logp, axis=-1) != y
        l2 = xla_l2_norm(delta)
        best, best_l2 = keep_better(adv & (l2 < best_l2), x + delta, best, (l2, best_l2))
        delta, eps = ddn_step(x, delta, eps, g, adv, k, steps=steps, gamma=gamma, alpha_max=alpha_max,
                              alpha_min=alpha_min)
        return delta, eps, best, best_l2

    init = (jnp.zeros_like(x), jnp.full((b,), init_norm, jnp.float32), x,
            jnp.full((b,), jnp.inf, jnp.float32))
    delta, _, best, best_l2 = jax.lax.fori_loop(0, steps, body, init)
    # the last iterate has not been checked yet
    adv = jnp.argmax(logits_fn(x + delta), axis=-1) != y
    l2 = xla_l2_norm(delta)
    best, best_l2 = keep_better(adv & (l2 < best_l2), x + delta, best, (l2, best_l2))
    found = jnp.isfinite(best_l2)
    misclassified = jnp.argmax(logits_fn(x), axis=-1) != y

    seg = xla_l2_norm(best - x)

    def bisect(_, s):
        lo, hi, p_hi = s
        live = (hi - lo) * seg > refine_tol
        mid = 0.5 * (lo + hi)
        p = x + bcast(mid, x) * (best - x)
        a = jnp.argmax(logits_fn(p), axis=-1) != y
        up = live & a
        return (jnp.where(live & ~a, mid, lo), jnp.where(up, mid, hi),
                jnp.where(bcast(up, x), p, p_hi))

    # carry the last point answered adversarial itself (recomputing it from hi could round it)
    _, _, p_hi = jax.lax.fori_loop(
        0, refine_iterations, bisect,
        (jnp.zeros((b,), jnp.float32), jnp.ones((b,), jnp.float32), best))
    x_adv = jnp.where(bcast(found & ~misclassified, x), p_hi, x)
    return x_adv, found | misclassified, misclassified


def check_ddn_inputs(x, y, *, gamma: float, init_norm: float, alpha_max: float,
                     alpha_min: float) -> tuple[jax.Array, jax.Array]:
    """DDN's settings checked (gamma in (0, 1), positive init_norm and step sizes; InputError
    naming the value) and (x as float32 [B, H, W, C], y as int32 [B'])."""
    check_positive("init_norm", init_norm)
    check_positive("alpha_max", alpha_max)
    check_positive("alpha_min", alpha_min)
    if not 0.0 < gamma < 1.0:
        raise InputError(f"gamma must lie in (0, 1), got {gamma!r}")
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
        raise InputError(f"x must be [B, H, W, C], got shape {tuple(x.shape)}")
    return x, jnp.asarray(y, jnp.int32).reshape(-1)


def minimal_l2_adversarial(
    logits_fn: LogitsFn,
    x,
    y,
    *,
    steps: int = 200,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    alpha_max: float = 1.0,
    alpha_min: float = 0.01,
    refine_iterations: int = 40,
    refine_tol: float = 1e-4,
) -> WhiteboxResult:
    """DDN + boundary bisection (module docstring) on a batch x [B,H,W,C] in [0,1], labels y [B].

    ``logits_fn`` must be a pure, differentiable, hashable function (e.g.
    ``Classifier.logits_fn``): the compiled program is cached on it. Misclassified images get
    x_adv = x and l2 = 0; images where no adversarial is found keep x_adv = x and l2 = inf."""
    check_int_at_least("steps", steps, 1)
    check_int_at_least("refine_iterations", refine_iterations, 0)
    check_positive("refine_tol", refine_tol)
    x, y = check_ddn_inputs(x, y, gamma=gamma, init_norm=init_norm, alpha_max=alpha_max, alpha_min=alpha_min)
    if y.shape[0] != x.shape[0]:
        raise InputError(f"need one label per image: {x.shape[0]} images, {y.shape[0]} labels")
    x_adv, success, mis = _ddn_jit(logits_fn, x, y, steps=steps, gamma=jnp.float32(gamma),
                                   init_norm=jnp.float32(init_norm), alpha_max=jnp.float32(alpha_max),
                                   alpha_min=jnp.float32(alpha_min), refine_iterations=refine_iterations,
                                   refine_tol=jnp.float32(refine_tol))
    x_adv = np.asarray(x_adv)
    success = np.asarray(success)
    l2 = np.linalg.norm((x_adv - np.asarray(x)).reshape(len(x_adv), -1).astype(np.float64), axis=1)
    l2 = np.where(success, l2, math.inf)
    return WhiteboxResult(x_adv, l2, success, np.asarray(mis))

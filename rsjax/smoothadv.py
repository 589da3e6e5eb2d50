"""The white-box floor of issue 16: SmoothAdv's attack on the smoothed classifier (Salman et al.,
NeurIPS 2019), made minimal-norm, then verified like any black-box output.

**Soft smoothed classifier.** With m Gaussian noise draws eps_1..eps_m ~ N(0, I) per image, the
Monte Carlo soft classifier of Salman et al. is

    G(x)_c = (1/m) sum_j softmax(f(x + sigma eps_j))_c,

and SmoothAdv's loss at the reference label y is L(delta) = -log G(x + delta)_y (their eq. (S1),
the cross-entropy of the averaged softmax; its gradient is a proper gradient of a smooth
function, unlike the average of the per-sample cross-entropies). The attack ascends L.

**Minimal norm (DDN on the soft classifier).** A fixed-radius PGD answers "is there an
adversarial within eps"; the floor needs the *smallest* distortion, so the radius is adapted as in
DDN (Rony et al. 2019, also :mod:`rsjax.whitebox`): with delta_0 = 0, eps_0 = ``init_norm``,

    g_k       = grad_delta L(delta_k)
    delta~    = delta_k + alpha_k g_k / ||g_k||_2,   alpha_k: cosine annealing alpha_max -> alpha_min
    adv_k     = [ (1/m) sum_j 1{argmax f(x + delta_k + sigma eps_j) != y} >= ``target`` ]
    eps_k+1   = eps_k (1 - gamma) if adv_k else eps_k (1 + gamma)
    delta_k+1 = clip(x + eps_k+1 delta~ / ||delta~||_2, 0, 1) - x

keeping the smallest-norm delta_k != 0 with adv_k (a clean image already counted adversarial by
the m draws still gets a direction). adv_k is the Monte Carlo estimate of "the level of
g_{sigma,1} reaches ``target``" (for n > 1 and P_a = 1/2 the crossing of the level of g_{sigma,n}
lies close to it, and the verifier finds the exact crossing along the direction anyway). As in
Salman et al.'s attack the m draws are drawn afresh at every step (``resample``, the default:
``fold_in(key_i, k)`` at step k); ``resample=False`` keeps one set of m draws per image (common
random numbers: a deterministic objective, which the search can overfit; on the Fashion-MNIST MLP
both gave the same verified floor within 2 %).

**Candidate for verification.** The evaluator (:func:`rsjax.verify.verify_rays`) only searches
outwards from its candidate (t >= 1) and then bisects. The floor therefore hands it
x_o + ``shrink`` * delta_best (default 1/16, well below the Monte Carlo crossing: the crossing of
the level of g_{sigma,n} along the direction may lie below or far above the search's own estimate,
which is made with m draws), so the verifier's ray search (doubling, then bisection) locates the
level-P_a crossing of g_{sigma,n} *along the white-box direction* with its own fresh calls and its
own tolerance (a delta_best shorter than ``min_norm`` is lengthened to it, direction unchanged,
so that the ray reaches the crossing within the verifier's ``max_t``): the floor's verified
distortion is measured by exactly the procedure that measures the black-box attacks.

Cost: ``steps`` gradient steps of m samples each (white box: no decision queries are counted).
On the exact linear classifier every sample's gradient is parallel to w, so delta stays parallel
to w, and the verified distortion is the exact level-P_a distance of eq. (6) (tested).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import InputError, check_int_at_least, check_open_unit, check_positive
from rsjax.geometry import bcast, xla_l2_norm
from rsjax.whitebox import check_ddn_inputs, ddn_step
from rsjax.xla_options import jit

LogitsFn = Callable[[jax.Array], jax.Array]


class SmoothAdvResult(NamedTuple):
    """Per image (numpy): ``x_adv`` [B,H,W,C] the candidate handed to the verifier
    (x_o + shrink * delta_best; x_o where nothing was found), ``delta`` [B,H,W,C] delta_best,
    ``l2`` [B] ||delta_best|| (inf where nothing was found), ``success`` [B], ``wrong_fraction``
    [B] the Monte Carlo share of wrong micro-decisions at x_o + delta_best, ``steps`` and
    ``samples`` (gradient steps, base-model evaluations per image)."""

    x_adv: np.ndarray
    delta: np.ndarray
    l2: np.ndarray
    success: np.ndarray
    wrong_fraction: np.ndarray
    steps: int
    samples: int


@partial(jit, static_argnames=("logits_fn", "m", "steps", "resample"))
def _smoothadv_jit(logits_fn, x, y, keys, sigma, *, m, steps, resample, gamma, init_norm, alpha_max,
                   alpha_min, target):
    b = x.shape[0]
    shape = x.shape[1:]

    def draws(k):
        ks = keys if k is None else jax.vmap(lambda kk: jax.random.fold_in(kk, k))(keys)
        return jax.vmap(lambda kk: jax.random.normal(kk, (m,) + shape, jnp.float32))(ks)

    fixed = draws(None)

    def soft(delta, eps):
        pts = (x + delta)[:, None] + sigma * eps  # [B, m, ...]
        logits = logits_fn(pts.reshape((b * m,) + shape))
        logits = logits.reshape(b, m, -1)
        probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)  # G(x + delta) [B, C]
        wrong = jnp.mean((jnp.argmax(logits, axis=-1) != y[:, None]).astype(jnp.float32), axis=1)
        return probs, wrong

    def loss(delta, eps):
        probs, wrong = soft(delta, eps)
        p_y = jnp.take_along_axis(probs, y[:, None], axis=1)[:, 0]
        return -jnp.sum(jnp.log(jnp.maximum(p_y, 1e-30))), wrong

    grad_fn = jax.grad(loss, has_aux=True)

    def body(k, s):
        delta, eps_r, best, best_l2, best_w = s
        eps = draws(k) if resample else fixed
        g, wrong = grad_fn(delta, eps)
        adv = wrong >= target
        l2 = xla_l2_norm(delta)
        better = adv & (l2 > 0) & (l2 < best_l2)  # delta = 0 gives no direction to verify
        best = jnp.where(bcast(better, x), delta, best)
        best_l2 = jnp.where(better, l2, best_l2)
        best_w = jnp.where(better, wrong, best_w)
        delta, eps_r = ddn_step(x, delta, eps_r, g, adv, k, steps=steps, gamma=gamma, alpha_max=alpha_max,
                                alpha_min=alpha_min)
        return delta, eps_r, best, best_l2, best_w

    init = (jnp.zeros_like(x), jnp.full((b,), init_norm, jnp.float32), jnp.zeros_like(x),
            jnp.full((b,), jnp.inf, jnp.float32), jnp.zeros((b,), jnp.float32))
    delta, _, best, best_l2, best_w = jax.lax.fori_loop(0, steps, body, init)
    # the last iterate, judged with the draws of the last step
    _, wrong = soft(delta, draws(steps - 1) if resample else fixed)
    l2 = xla_l2_norm(delta)
    better = (wrong >= target) & (l2 > 0) & (l2 < best_l2)
    best = jnp.where(bcast(better, x), delta, best)
    best_l2 = jnp.where(better, l2, best_l2)
    best_w = jnp.where(better, wrong, best_w)
    return best, best_l2, best_w


def smoothadv_minimal(
    logits_fn: LogitsFn,
    x,
    y,
    keys: jax.Array,
    sigma: float,
    *,
    m: int = 32,
    steps: int = 100,
    resample: bool = True,
    target: float = 0.5,
    shrink: float = 0.0625,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    alpha_max: float = 1.0,
    alpha_min: float = 0.01,
    min_norm: float = 1e-3,
) -> SmoothAdvResult:
    """Minimal-norm SmoothAdv (module docstring) on x [B,H,W,C] in [0,1] against labels y [B]
    (the reference labels), with one PRNG key per image (``keys`` [B]: image i's noise draws
    depend on its key only, so the result of an image does not depend on the batch).

    ``logits_fn`` must be pure, differentiable and hashable (the compiled program is cached on
    it). Returns the candidate to verify and the white-box search's own numbers."""
    check_positive("sigma", sigma)
    check_int_at_least("m", m, 1)
    check_int_at_least("steps", steps, 1)
    check_open_unit("target", target)
    check_positive("min_norm", min_norm)
    if not 0.0 < shrink <= 1.0:
        raise InputError(f"shrink must lie in (0, 1], got {shrink!r}")
    x, y = check_ddn_inputs(x, y, gamma=gamma, init_norm=init_norm, alpha_max=alpha_max, alpha_min=alpha_min)
    if y.shape[0] != x.shape[0] or keys.shape[0] != x.shape[0]:
        raise InputError(f"need one label and one key per image: {x.shape[0]} images, {y.shape[0]} labels, "
                         f"{keys.shape[0]} keys")
    best, best_l2, best_w = _smoothadv_jit(
        logits_fn, x, y, keys, jnp.float32(sigma), m=m, steps=steps, resample=bool(resample),
        gamma=jnp.float32(gamma), init_norm=jnp.float32(init_norm), alpha_max=jnp.float32(alpha_max),
        alpha_min=jnp.float32(alpha_min), target=jnp.float32(target))
    best = np.asarray(best)
    ok = np.isfinite(np.asarray(best_l2))
    x_np = np.asarray(x)
    l2 = np.where(ok, np.linalg.norm(best.reshape(len(best), -1).astype(np.float64), axis=1), np.inf)
    # a near-zero delta_best (a clean image the draws already call adversarial) still gives a ray
    # the verifier can follow within its max_t: its norm is raised to min_norm, direction unchanged
    scale = np.where(ok & (l2 < min_norm), min_norm / np.maximum(l2, 1e-30), 1.0).astype(np.float32)
    step = np.float32(shrink) * scale.reshape(-1, 1, 1, 1) * best
    x_adv = np.where(ok.reshape(-1, 1, 1, 1), np.clip(x_np + step, 0.0, 1.0), x_np)
    return SmoothAdvResult(x_adv.astype(np.float32), best, l2, ok, np.asarray(best_w), int(steps),
                           int(steps) * int(m))

"""Linear binary classifier f(x) = [w.x + b > 0], the exact test oracle of the project.

For it everything has a closed form (Cohen et al. 2019): the smoothed class-1 probability is
pi_1(x) = Phi((w.x + b) / (sigma ||w||)), g_sigma = f, and the certified radius equals the L2
distance |w.x + b| / ||w|| to the hyperplane; the L-inf distance is |w.x + b| / ||w||_1.
Class 0 wins ties (w.x + b = 0), like ``argmax`` of logits ``[0, w.x + b]``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def linear_logits_fn(w: np.ndarray, b: float) -> Callable[[jax.Array], jax.Array]:
    """x [N, *shape(w)] -> logits [N, 2] = [0, w.x + b]; batch-invariant: an elementwise
    product and a per-row sum in a fixed pairwise order (:func:`rsjax.geometry.padded_tree_sum`; XLA:CPU's own row reduction changes
    its summation order with N, e.g. between 5 and 7 rows, so ``jnp.sum`` is not)."""
    w = jnp.asarray(w, jnp.float32)
    b = jnp.float32(b)

    def logits(x: jax.Array) -> jax.Array:
        from rsjax.geometry import padded_tree_sum

        s = padded_tree_sum(x.reshape(x.shape[0], -1) * w.reshape(1, -1)) + b
        return jnp.stack([jnp.zeros_like(s), s], axis=1)

    return logits


def l2_distance_to_hyperplane(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """|w.x + b| / ||w||_2 for each row of x."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    w = np.asarray(w, np.float64).ravel()
    return np.abs(x @ w + b) / np.linalg.norm(w)


def linf_distance_to_hyperplane(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """|w.x + b| / ||w||_1 for each row of x (unconstrained by the [0,1] box)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    w = np.asarray(w, np.float64).ravel()
    return np.abs(x @ w + b) / np.abs(w).sum()

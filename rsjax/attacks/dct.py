"""Low-frequency DCT directions of SurFree (Maho, Furon, Le Merrer, CVPR 2021, §3.3).

SurFree draws its search directions in a low-frequency subspace of the image's 2-D DCT-II
(taken over the spatial axes H, W of each channel separately):

* ``dct2`` is the *unnormalised* DCT-II of scipy's ``norm=None`` (and of the authors'
  ``torch_dct.dct_2d``): ``Y[k, l] = 4 sum_{m,n} x[m, n] cos(pi k (2m+1) / 2H) cos(pi l (2n+1) / 2W)``;
  ``idct2`` is its exact inverse. Both are written with the orthonormal DCT matrix ``D``
  (``D D^T = I``): ``Y = S * (D_H X D_W^T)`` with the scale ``S[k, l] = s_H[k] s_W[l]``,
  ``s[0] = 2 sqrt(N)``, ``s[k>0] = 2 sqrt(N / 2)``.
* ``zigzag_mask(H, W, (f0, f1))`` keeps the coefficients at zig-zag positions
  ``[int(f0 H W), int(f1 H W))`` (anti-diagonals ``k + l = s`` in increasing ``s``; on odd ``s`` the
  row index increases along the diagonal, on even ``s`` it decreases — the authors' order, so the
  partially kept last diagonal is the same). For ``f0 = 0`` this is exactly the authors' mask; for
  ``f0 > 0`` their code keeps ``int(f1 H W)`` coefficients *after* the skipped ones, a quirk not
  reproduced here.
* Basis weights (once per image): ``B = phi(dct2(x) * mask)`` with ``phi = tanh(gamma .)`` (class
  default of the authors' ``Basis``), ``1[|.| > 0]`` ("constant", their example config) or the
  identity.
* A direction: ``r = idct2(B * p) + beta N(0, I)``, ``p`` i.i.d. uniform on {-1, 0, +1} per
  coefficient (``beta = 0`` by default). Orthogonalisation and normalisation are done by the
  attack (:mod:`rsjax.attacks.surfree`).
"""
from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import InputError

BASIS_FUNCTIONS = ("tanh", "constant", "identity")


@lru_cache(maxsize=None)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D[k, m] = c_k cos(pi k (2m + 1) / (2n))``, ``c_0 = sqrt(1/n)``,
    ``c_k = sqrt(2/n)``; ``D @ D.T = I``."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    d = np.cos(np.pi * k * (2 * m + 1) / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


@lru_cache(maxsize=None)
def dct_scale(n: int) -> np.ndarray:
    """Per-frequency factor between the unnormalised (scipy ``norm=None``) and orthonormal DCT-II:
    ``2 sqrt(n)`` for k = 0, ``2 sqrt(n / 2)`` otherwise."""
    s = np.full(n, 2.0 * np.sqrt(n / 2.0))
    s[0] = 2.0 * np.sqrt(n)
    return s


def _scale_2d(h: int, w: int) -> jax.Array:
    return jnp.asarray(np.outer(dct_scale(h), dct_scale(w))[:, :, None], jnp.float32)


def dct2(x: jax.Array) -> jax.Array:
    """Unnormalised 2-D DCT-II over the spatial axes of one image ``x`` [H, W, C]."""
    h, w, _ = x.shape
    dh = jnp.asarray(dct_matrix(h), jnp.float32)
    dw = jnp.asarray(dct_matrix(w), jnp.float32)
    ortho = jnp.einsum("km,mnc,ln->klc", dh, x, dw, precision=jax.lax.Precision.HIGHEST)
    return ortho * _scale_2d(h, w)


def idct2(y: jax.Array) -> jax.Array:
    """Inverse of :func:`dct2`: ``idct2(dct2(x)) == x`` (up to float rounding)."""
    h, w, _ = y.shape
    dh = jnp.asarray(dct_matrix(h), jnp.float32)
    dw = jnp.asarray(dct_matrix(w), jnp.float32)
    ortho = y / _scale_2d(h, w)
    return jnp.einsum("km,klc,ln->mnc", dh, ortho, dw, precision=jax.lax.Precision.HIGHEST)


def zigzag_order(h: int, w: int) -> list[tuple[int, int]]:
    """All (row, col) positions of an h x w grid in the authors' zig-zag order (see module doc)."""
    order = []
    for s in range(h + w - 1):
        for i in range(min(s + 1, max(h, w))):
            j = s - i
            if s % 2:
                r, c = i, j
            else:
                r, c = j, i
            if 0 <= r < h and 0 <= c < w:
                order.append((r, c))
    return order


def zigzag_mask(h: int, w: int, frequency_range: tuple[float, float] = (0.0, 0.5)) -> np.ndarray:
    """[h, w] float32 mask of the DCT coefficients at zig-zag positions
    ``[int(f0 h w), int(f1 h w))`` with ``(f0, f1) = frequency_range`` clipped to [0, 1]."""
    f0, f1 = frequency_range
    if not (0.0 <= f0 < f1):
        raise InputError(f"frequency_range must satisfy 0 <= f0 < f1, got {frequency_range!r}")
    total = h * w
    start, stop = int(total * max(0.0, f0)), int(total * min(1.0, f1))
    mask = np.zeros((h, w), np.float32)
    for r, c in zigzag_order(h, w)[start:stop]:
        mask[r, c] = 1.0
    return mask


def basis_weights(
    x: jax.Array,
    mask: jax.Array,
    function: str = "tanh",
    tanh_gamma: float = 1.0,
) -> jax.Array:
    """``phi(dct2(x) * mask)`` for one image ``x`` [H, W, C] and ``mask`` [H, W] (module doc)."""
    coeffs = dct2(x) * mask[:, :, None]
    if function == "tanh":
        return jnp.tanh(tanh_gamma * coeffs)
    if function == "constant":
        return (jnp.abs(coeffs) > 0).astype(x.dtype)
    if function == "identity":
        return coeffs
    raise InputError(f"unknown DCT basis function {function!r}; known: {', '.join(BASIS_FUNCTIONS)}")


def random_dct_direction(key: jax.Array, weights: jax.Array, beta: float = 0.0) -> jax.Array:
    """One raw (not orthogonalised, not normalised) direction ``idct2(weights * p) + beta N``,
    ``p`` uniform on {-1, 0, +1} per coefficient; ``weights`` [H, W, C] from :func:`basis_weights`."""
    k_sign, k_noise = jax.random.split(key)
    p = jax.random.randint(k_sign, weights.shape, -1, 2).astype(weights.dtype)
    r = idct2(weights * p)
    if beta:
        r = r + beta * jax.random.normal(k_noise, r.shape, r.dtype)
    return r

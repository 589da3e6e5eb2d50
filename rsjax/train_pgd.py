"""L2 PGD (Madry et al. 2018) for adversarial training and robust accuracy, and the data
augmentation of training (:mod:`rsjax.train` re-exports every name)."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax.geometry import xla_l2_norm
from rsjax.models.registry import ModelSpec
from rsjax.xla_options import jit

LogitsFn = Callable[[jax.Array], jax.Array]
#: zero padding of the ``flip-crop`` augmentation, in pixels (the CIFAR convention)
CROP_PAD = 4


def _l2_norms(x: jax.Array) -> jax.Array:
    """Per-example L2 norm, shaped [N, 1, 1, 1] for broadcasting."""
    return xla_l2_norm(x, keepdims=True)


def project_l2_ball(delta: jax.Array, eps: float) -> jax.Array:
    """Projection onto the L2 ball: ``delta * min(1, eps / ||delta||_2)`` per example."""
    norms = _l2_norms(delta)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(norms, 1e-12))


def pgd_l2(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    eps: float,
    steps: int,
    step_size: float,
    key: jax.Array | None = None,
) -> jax.Array:
    """Untargeted L2 PGD (Madry et al. 2018) in [0,1] pixel space.

    ``delta_0`` = 0, or uniform in the eps-ball when ``key`` is given (direction uniform on the
    sphere, radius ``eps * U^(1/d)``). Then ``steps`` times:
    ``g = grad_delta sum CE(f(x + delta), y)``,
    ``delta <- Proj_{||.||<=eps}(delta + step_size * g / ||g||_2)``,
    ``delta <- clip(x + delta, 0, 1) - x``. Returns ``x + delta`` (stops gradients).

    The steps are unrolled into the traced program (a Python loop, not ``lax.scan``): on XLA:CPU
    the gradients of a convolutional network inside a loop run several times slower
    (``benchmarks/RESULTS.md``).
    """
    x = jax.lax.stop_gradient(x)
    if key is None:
        delta = jnp.zeros_like(x)
    else:
        k_dir, k_rad = jax.random.split(key)
        direction = jax.random.normal(k_dir, x.shape, x.dtype)
        direction = direction / jnp.maximum(_l2_norms(direction), 1e-12)
        d = math.prod(x.shape[1:])
        radius = eps * jax.random.uniform(k_rad, (x.shape[0], 1, 1, 1), x.dtype) ** (1.0 / d)
        delta = jnp.clip(x + direction * radius, 0.0, 1.0) - x

    def total_loss(delta):
        logits = logits_fn(x + delta)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    for _ in range(steps):
        g = jax.grad(total_loss)(delta)
        g = g / jnp.maximum(_l2_norms(g), 1e-12)
        delta = project_l2_ball(delta + step_size * g, eps)
        delta = jnp.clip(x + delta, 0.0, 1.0) - x
    return jax.lax.stop_gradient(x + delta)


def augment_batch(x: jax.Array, key: jax.Array, mode: str, pad: int = CROP_PAD) -> jax.Array:
    """``flip``: each image mirrored left-right with probability 1/2; ``flip-crop``: then
    zero-padded by ``pad`` pixels on every side and cropped back to H x W at a uniform random
    offset ``(i, j) in {0..2 pad}^2``, i.e. ``x'[r, c] = x_pad[r + i, c + j]`` (the usual CIFAR
    augmentation with ``pad = 4``: torchvision's ``RandomHorizontalFlip``,
    ``RandomCrop(32, padding=4)``). The draws come from ``key``, one per training step."""
    if mode == "none":
        return x
    k_flip, k_crop = jax.random.split(key)
    flip = jax.random.bernoulli(k_flip, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
    if mode == "flip-crop" and pad > 0:
        h, w = x.shape[1], x.shape[2]
        padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(k_crop, (x.shape[0], 2), 0, 2 * pad + 1)
        x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1])))(
            padded, offsets)
    return x


def _padded_batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    return np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


def pgd_robust_accuracy(
    spec: ModelSpec,
    variables: Mapping[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    eps: float = 1.0,
    steps: int = 20,
    step_size: float | None = None,
    batch_size: int = 500,
) -> float:
    """Accuracy under a ``steps``-step L2 PGD of radius ``eps`` (no random start, step size
    ``2.5 * eps / steps`` unless given), the model in inference mode. A point counts as robust when
    both the clean image and the PGD output are classified correctly."""
    module = spec.build()
    step_size = 2.5 * eps / steps if step_size is None else step_size

    @jit
    def robust(variables, x, y):
        logits_fn = lambda z: module.apply(variables, z, train=False)  # noqa: E731
        x_adv = pgd_l2(logits_fn, x, y, eps, steps, step_size, key=None)
        clean_ok = jnp.argmax(logits_fn(x), -1) == y
        adv_ok = jnp.argmax(logits_fn(x_adv), -1) == y
        return clean_ok & adv_ok

    batch_size = min(batch_size, len(images))
    ok = 0
    for start, stop in _padded_batches(len(images), batch_size):
        x = _pad(np.asarray(images[start:stop], np.float32), batch_size)
        y = _pad(np.asarray(labels[start:stop], np.int32), batch_size)
        ok += int(np.sum(np.asarray(robust(variables, jnp.asarray(x), jnp.asarray(y)))[: stop - start]))
    return ok / len(images)

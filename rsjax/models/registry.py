"""Model registry: architecture name -> how to build it, its input size and normalization.

Every registered module maps images in [0,1], NHWC float32, to logits; its normalization
``(x - mean) / std`` is its first operation, so randomized-smoothing noise is added in pixel
space before normalization (Cohen et al. 2019 convention). Modules take ``train: bool``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.errors import InputError


@dataclass(frozen=True)
class ModelSpec:
    """What rsjax needs to know about an architecture."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    dataset: str  # the dataset family it is meant for: "fashion-mnist", "cifar10", "imagenet"
    description: str = ""
    has_batch_stats: bool = False
    defaults: dict = field(default_factory=dict)
    # On CPU, a large batch is evaluated in blocks of this many images (jax.lax.map over blocks):
    # XLA:CPU convolutions run fastest on cache-sized batches (benchmarks/RESULTS.md). None:
    # one call.
    cpu_forward_block: int | None = None

    def module(self) -> nn.Module:
        return self.build()

    def init(self, key: jax.Array) -> dict:
        """Random initial variables (``params`` and, if any, ``batch_stats``)."""
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        variables = self.build().init(key, x, train=False)
        return jax.tree_util.tree_map(lambda a: a, dict(variables))


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (name must be new)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of architecture ``name``; a clear error listing known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown model architecture {name!r}; known: {', '.join(list_models())}"
        ) from None


class Normalize(nn.Module):
    """x -> (x - mean) / std per channel, the first layer of every rsjax model."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return (x - mean) / std

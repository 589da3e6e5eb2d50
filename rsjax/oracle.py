"""Decision oracles: what a decision-based attack may ask ("is this point adversarial for
image i?"), with the cost of each answer in base-model evaluations.

Contract shared by every oracle (the attacks rely on nothing else):

* ``oracle.decide(x, y, keys) -> OracleAnswer`` is pure and jit/vmap-compatible.
  ``x``: [M, H, W, C] query points in [0,1]; ``y``: [M] int true labels; ``keys``: [M] PRNG
  keys, one per query, the query's own randomness (a deterministic oracle ignores them).
  It returns ``adversarial`` [M] bool and ``evaluations`` [M] int32 (base-model calls spent).
* Randomness of query number q of image i is ``query_key(image_key_i, q)`` with
  ``image_key_i = fold_in(seed_key, image_id)``: it depends on (seed, image id, query index)
  only, never on batch position or on which other images share the batch.
* Query counting and budgets live in the caller (attack state), which knows each image's
  query index; one call of ``decide`` on one point is one query.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp


class OracleAnswer(NamedTuple):
    adversarial: jax.Array  # [M] bool
    evaluations: jax.Array  # [M] int32 base-model evaluations spent on each query


@runtime_checkable
class Oracle(Protocol):
    """A decision oracle (see module docstring)."""

    name: str
    num_classes: int

    def decide(self, x: jax.Array, y: jax.Array, keys: jax.Array) -> OracleAnswer: ...

    def max_evaluations_per_query(self) -> int: ...


def image_keys(seed_key: jax.Array, image_ids: jax.Array) -> jax.Array:
    """Per-image keys ``fold_in(seed_key, image_id)`` ([B] keys from [B] ids)."""
    return jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(jnp.asarray(image_ids, jnp.uint32))


def query_key(image_key: jax.Array, query_index: jax.Array) -> jax.Array:
    """Key of query number ``query_index`` of one image: ``fold_in(image_key, query_index)``."""
    return jax.random.fold_in(image_key, query_index)


def query_keys(image_keys_: jax.Array, query_index: jax.Array) -> jax.Array:
    """Broadcast :func:`query_key` over images [B] and query indices [B, P] -> keys [B, P]."""
    return jax.vmap(lambda k, q: jax.vmap(lambda qi: query_key(k, qi))(q))(image_keys_, query_index)


class ModelOracle:
    """Deterministic oracle of the plain classifier f: adversarial iff argmax f(x) != y.

    Ties in the logits resolve to the lowest class index (``jnp.argmax``)."""

    def __init__(self, logits_fn: Callable[[jax.Array], jax.Array], num_classes: int, name: str = "model"):
        self.logits_fn = logits_fn
        self.num_classes = num_classes
        self.name = name

    def decide(self, x: jax.Array, y: jax.Array, keys: jax.Array | None = None) -> OracleAnswer:
        labels = jnp.argmax(self.logits_fn(x), axis=-1)
        adv = labels != y
        return OracleAnswer(adv, jnp.ones(adv.shape, jnp.int32))

    def max_evaluations_per_query(self) -> int:
        return 1

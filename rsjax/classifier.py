"""A trained model ready for inference: architecture spec + variables -> logits and labels.

``Classifier.logits_fn`` is a pure function x[N,H,W,C] in [0,1] -> logits[N,K] that closes over
the variables, so when it is traced inside another ``jax.jit`` (smoothing, attacks) the weights
become compile-time constants (faster on CPU than passing them as arguments:
``benchmarks/RESULTS.md``).
On the CPU backend, models whose spec sets ``cpu_forward_block`` evaluate a large batch in
fixed-size blocks (:func:`forward_in_blocks`), which keeps XLA:CPU convolutions in cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import InputError
from rsjax.models import get_model_spec
from rsjax.models.registry import ModelSpec
from rsjax.xla_options import jit


def forward_in_blocks(fn: Callable[[jax.Array], jax.Array], block: int | None,
                      pad_small: bool = False) -> Callable[[jax.Array], jax.Array]:
    """``x[N, ...] -> fn(x)`` computed as ``jax.lax.map`` of ``fn`` over ceil(N / block) blocks of
    ``block`` rows (the last one zero-padded, its padding dropped). Identity wrapper when ``block``
    is None. A batch of at most ``block`` rows is one call of ``fn`` on exactly those rows, or,
    with ``pad_small``, on them zero-padded to ``block`` rows (then every call of ``fn`` has the
    same shape whatever N, so a row's output never depends on N).
    Every block has the same shape, so each image's output depends only on its own block.
    The returned function carries ``block_rows = block`` (the votes evaluate their chunks in
    calls of that many rows)."""
    if block is None:
        return fn

    def blocked(x: jax.Array) -> jax.Array:
        n = x.shape[0]
        if n <= block and not pad_small:
            return fn(x)
        m = max(1, -(-n // block)) * block
        xp = jnp.pad(x, [(0, m - n)] + [(0, 0)] * (x.ndim - 1))
        if m == block:
            return fn(xp)[:n]
        out = jax.lax.map(fn, xp.reshape((m // block, block) + x.shape[1:]))
        return out.reshape((m,) + out.shape[2:])[:n]

    blocked.block_rows = block  # read by rsjax.smoothing.default_eval_rows
    return blocked


@dataclass(frozen=True, eq=False)
class Classifier:
    """Inference wrapper of (spec, variables); ``metadata`` is what the checkpoint recorded."""

    spec: ModelSpec
    variables: Mapping[str, Any]
    metadata: Mapping[str, Any] | None = None
    #: compute dtype of the forward: 'float32', or 'bfloat16' (variables cast by
    #: :meth:`astype`, inputs cast on entry, float32 logits out)
    dtype: str = "float32"

    def astype(self, dtype: str) -> "Classifier":
        """This classifier computing in ``dtype`` ('float32' or 'bfloat16'): floating variables
        and inputs cast, logits returned in float32. Check the agreement first
        (:func:`rsjax.memory.dtype_agreement`)."""
        from rsjax.memory import check_dtype

        check_dtype(dtype, "dtype")
        if dtype == self.dtype:
            return self
        dt = jnp.dtype(dtype)
        variables = jax.tree_util.tree_map(
            lambda a: a.astype(dt) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, self.variables)
        return Classifier(self.spec, variables, self.metadata, dtype)

    @classmethod
    def from_arch(cls, arch: str, variables: Mapping[str, Any], metadata=None) -> "Classifier":
        return cls(get_model_spec(arch), variables, metadata)

    @classmethod
    def from_checkpoint(cls, path: str, arch: str | None = None) -> "Classifier":
        """Load a checkpoint written by :func:`rsjax.checkpoints.save_checkpoint`."""
        from rsjax.checkpoints import load_checkpoint

        variables, metadata = load_checkpoint(path, arch=arch)
        return cls(get_model_spec(metadata["arch"]), variables, metadata)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    @cached_property
    def _module(self):
        return self.spec.build()

    @cached_property
    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """Pure x -> logits (inference mode) with the variables closed over as constants."""
        module, variables = self._module, self.variables
        if self.dtype != "float32":
            dt = jnp.dtype(self.dtype)

            def logits(x: jax.Array) -> jax.Array:
                return module.apply(variables, x.astype(dt), train=False).astype(jnp.float32)
        else:
            def logits(x: jax.Array) -> jax.Array:
                return module.apply(variables, x, train=False)

        return forward_in_blocks(logits, self.forward_block)

    @property
    def forward_block(self) -> int | None:
        """Rows per model call of :attr:`logits_fn` on this backend: the spec's
        ``cpu_forward_block`` on the CPU (cache-sized blocks), None (one call) elsewhere."""
        return self.spec.cpu_forward_block if jax.default_backend() == "cpu" else None

    @cached_property
    def _jit_logits(self):
        return jit(self.logits_fn)

    def check_input(self, x: np.ndarray | jax.Array) -> None:
        """Raise InputError unless x is [N, H, W, C] of this model's input shape."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise InputError(
                f"{self.spec.name} expects images of shape [N, {', '.join(map(str, self.input_shape))}]"
                f" (NHWC in [0,1]), got {tuple(x.shape)}"
            )

    def logits(self, x, batch_size: int = 1024) -> np.ndarray:
        """Logits of x (NHWC in [0,1]) in fixed-size padded batches (one compiled program)."""
        x = np.asarray(x, np.float32)
        self.check_input(x)
        out = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            m = len(chunk)
            if m < batch_size and len(x) > batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self._jit_logits(jnp.asarray(chunk)))[:m])
        if not out:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(out)

    def predict(self, x, batch_size: int = 1024) -> np.ndarray:
        """Top-1 labels of x (ties -> lowest class index, as argmax)."""
        return self.logits(x, batch_size).argmax(-1)

"""XLA compile options for every program rsjax compiles, and the ``jit`` that applies them.

On XLA:CPU (jaxlib 0.10) the default library-fusion set hands some convolutions to YNNPACK
(on the CIFAR ResNet-20, the 16x16x32 layers). On the project's 2-core AVX-512 machine those run
slower than XLA's own (Eigen) convolutions, so the ResNet-20 forward is faster when YNNPACK keeps
only dots and reductions, and the MLP is unchanged (``benchmarks/RESULTS.md``). rsjax therefore
compiles its programs with
``xla_cpu_experimental_ynn_fusion_type = INDIVIDUAL_DOT, REDUCE`` as a per-program compile
option (``jax.jit(..., compiler_options=...)``): nothing global is changed, and other JAX code in
the same process keeps XLA's defaults.

The option is used only when the default backend is the CPU, the user has not set
``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` themselves, ``RSJAX_XLA_DEFAULTS`` is
unset, and this jaxlib accepts it (checked once by compiling a one-op program; older or newer
jaxlibs that lack the option get XLA's defaults instead of an error).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import numpy as np

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS: dict[str, str] = {
    YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def compiler_options() -> dict[str, str] | None:
    """The compile options rsjax passes to ``jax.jit`` (None: XLA's defaults); see the module
    docstring for when they apply. Computed once per process (initializes the JAX backend)."""
    if os.environ.get("RSJAX_XLA_DEFAULTS"):
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda v: v + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001 - an option this jaxlib does not know: keep its defaults
        return None
    return dict(CPU_COMPILER_OPTIONS)


class _LazyJit:
    """``jax.jit(fun, compiler_options=compiler_options(), **kwargs)``, built on first use so that
    importing rsjax does not initialize the JAX backend."""

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        self._fun = fun
        self._kwargs = kwargs
        self._jitted: Callable | None = None
        functools.update_wrapper(self, fun)

    def jitted(self) -> Any:
        if self._jitted is None:
            self._jitted = jax.jit(self._fun, compiler_options=compiler_options(), **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self.jitted()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted().lower(*args, **kwargs)

    def __getattr__(self, name: str):  # the rest of jax.jit's interface (trace, eval_shape, ...)
        if name.startswith("__") or name in ("_fun", "_kwargs", "_jitted"):
            raise AttributeError(name)
        return getattr(self.jitted(), name)


def jit(fun: Callable | None = None, /, **kwargs) -> Any:
    """``jax.jit`` with rsjax's :func:`compiler_options`; same keywords, also usable as
    ``@partial(jit, static_argnames=...)``."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    if "compiler_options" in kwargs:
        return jax.jit(fun, **kwargs)
    return _LazyJit(fun, kwargs)


__all__ = ["CPU_COMPILER_OPTIONS", "compiler_options", "jit"]

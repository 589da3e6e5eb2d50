"""Where rsjax keeps what it can reuse between runs: ``$RSJAX_CACHE`` (default
``~/.cache/rsjax``) holds trained default checkpoints (``checkpoints/``) and XLA executables
(``xla/``, JAX's persistent compilation cache)."""
from __future__ import annotations

import os
from pathlib import Path

import jax


def cache_dir() -> Path:
    """``$RSJAX_CACHE`` or ``~/.cache/rsjax``."""
    return Path(os.environ.get("RSJAX_CACHE") or Path.home() / ".cache" / "rsjax")


def enable_compilation_cache(root: Path | None = None) -> Path | None:
    """Persist XLA executables under ``<cache>/xla`` (``jax_compilation_cache_dir``), unless the
    user already configured a cache or ``RSJAX_NO_XLA_CACHE`` is set: a repeated or resumed run
    then skips most compilation (an attack on a ResNet compiles one program per batch bucket,
    tens of seconds each on a CPU). Returns the directory used, or None when disabled."""
    if os.environ.get("RSJAX_NO_XLA_CACHE"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    path = (root or cache_dir()) / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


__all__ = ["cache_dir", "enable_compilation_cache"]

"""Records and the resumable JSONL store.

A run directory holds ``config.json`` (the run's configuration, fixed at creation),
``env.json`` (versions, devices, seed, git revision) and one or more append-only JSONL files of
records. Each record is one JSON object on one line with a ``key`` field that identifies it
uniquely (e.g. model/sigma/n/p_a/attack/image). Writes are line-at-a-time, flushed and fsynced,
so a crash loses at most the line being written; on reopening, a torn last line is cut off and
records already present are skipped by key, so a killed run restarts without losing or
duplicating finished work.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from rsjax.errors import InputError


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    """Compact JSON with numpy scalars/arrays converted; NaN/inf written as null."""
    def clean(v):
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, np.floating) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), default=_json_default, sort_keys=True, allow_nan=False)


def record_key(**fields: Any) -> str:
    """Canonical key string of a record from its identifying fields (order-independent)."""
    return "|".join(f"{k}={fields[k]}" for k in sorted(fields))


class RecordStore:
    """Append-only JSONL file of records with unique ``key`` fields; safe to resume."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys: set[str] = set()
        self._repair_and_index()

    def _repair_and_index(self) -> None:
        if not self.path.exists():
            self.path.touch()
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # a crash tore the last line: drop it (its record will be recomputed)
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
            data = data[:cut]
        for line in data.splitlines():
            if line.strip():
                self._keys.add(json.loads(line)["key"])

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Write the records whose key is new; returns how many were written."""
        lines = []
        for r in records:
            if "key" not in r:
                raise ValueError("a record needs a 'key' field")
            if r["key"] in self._keys:
                continue
            self._keys.add(r["key"])
            lines.append(dumps(r) + "\n")
        if lines:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
        return len(lines)

    def __iter__(self) -> Iterator[dict]:
        yield from read_records(self.path)


def read_records(path: str | os.PathLike) -> list[dict]:
    """All complete records of a JSONL file (a torn last line is ignored)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                out.append(json.loads(line))
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of a configuration."""
    return hashlib.sha256(dumps(config).encode()).hexdigest()[:12]


def open_run_dir(out: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Create ``out`` with ``config.json``, or reopen it if its config is identical.

    A different configuration in an existing directory is refused (InputError naming the
    differing keys): results of two configurations never mix in one directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; the sweep writes a run directory there")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe.", delete=True)  # can files go there?
        probe.close()
    except OSError as e:
        raise InputError(f"--out {out} cannot be used as the run directory: {e.strerror or e}") from None
    cfg_path = out / "config.json"
    new = json.loads(dumps(config))
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InputError(
                f"{out} holds results of another configuration (differs in {diff}); "
                f"choose a new --out directory or delete {out}")
    else:
        write_text_atomic(cfg_path, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return out


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace the file ``path`` by ``text`` in one step (written to ``PATH.tmp``, fsynced, then
    ``os.replace``d): a process killed meanwhile leaves the old file or the new one, never a
    truncated one that a resumed run could not parse."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_sidecar(path: str | os.PathLike) -> Path:
    """``PATH.config.json``: where the configuration of the single results file ``PATH`` lives."""
    return Path(os.fspath(path) + ".config.json")


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for each key whose value differs (sorted; a missing key is None;
    SHA-256 digests shortened to 12 hex digits)."""
    def show(v: Any) -> str:
        if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            return v[:12] + "..."  # a SHA-256 digest: its start is enough to tell
        return json.dumps(v, sort_keys=True)

    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [f"{k}: {show(old.get(k))} -> {show(new.get(k))}" for k in keys]


def bind_results_file(path: str | os.PathLike, config: Mapping[str, Any], has_results: bool) -> Path:
    """Tie the results file ``path`` to ``config`` through its sidecar ``PATH.config.json`` (the
    single-file counterpart of :func:`open_run_dir`); returns the sidecar.

    While ``path`` holds no results the sidecar is (re)written atomically. Once it does, the
    sidecar must exist and equal ``config``, else InputError naming the file and each differing
    key with its old and new value: results of two configurations never mix in one file."""
    path = Path(path)
    sidecar = config_sidecar(path)
    new = json.loads(dumps(config))
    if has_results:
        if not sidecar.is_file():
            raise InputError(
                f"{path} already holds results but has no configuration file {sidecar.name} (written by "
                f"an older rsjax or by another program), so a resume cannot be checked; choose another "
                f"--out or delete {path}")
        try:
            old = json.loads(sidecar.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the configuration file {sidecar} of {path}: {e}") from None
        diff = config_differences(old, new)
        if diff:
            raise InputError(
                f"{path} holds results of another configuration (per {sidecar.name}; differs in "
                f"{'; '.join(diff)}); choose another --out or delete {path} and {sidecar.name}")
        return sidecar
    try:
        write_text_atomic(sidecar, json.dumps(new, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise InputError(f"cannot write the configuration file {sidecar} of {path}: {e.strerror or e}") from None
    return sidecar


def environment_info(seed: int | None = None) -> dict:
    """Versions, devices, seed and git revision, for ``env.json``."""
    import jax

    from rsjax._version import __version__

    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return None

    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).resolve().parent).stdout.strip())
    except Exception:
        rev, dirty = None, None
    return {
        "rsjax": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": version("jax"), "jaxlib": version("jaxlib"), "flax": version("flax"),
        "optax": version("optax"), "numpy": version("numpy"), "scipy": version("scipy"),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "seed": seed,
        "git_revision": rev,
        "git_dirty": dirty,
    }

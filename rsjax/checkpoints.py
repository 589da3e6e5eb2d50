"""One-file checkpoints: variables (params, batch statistics) + metadata, integrity-checked.

File layout (no pickle, nothing executable)::

    b"RSJAX-CHECKPOINT 1\n"
    <header: one line of JSON>\n      {"arch", "metadata", "payload_bytes", "sha256"}
    <payload: msgpack of the variables tree (flax.serialization), payload_bytes long>

``sha256`` is the SHA-256 of the canonical JSON of {"arch", "metadata"} followed by the payload,
so a changed byte anywhere (header or payload) or a truncated file is detected on load. Loading
also checks the variables' tree structure and shapes against the registered architecture, so a
file of another architecture gives a clear error naming the first mismatching tensor.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import serialization

from rsjax._version import __version__
from rsjax.errors import CheckpointError

MAGIC = b"RSJAX-CHECKPOINT 1\n"


def _digest(arch: str, metadata: Mapping[str, Any], payload: bytes) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch, "metadata": metadata}, sort_keys=True).encode())
    h.update(payload)
    return h.hexdigest()


def _to_numpy_tree(variables: Mapping[str, Any]) -> dict:
    plain = serialization.to_state_dict(dict(variables))
    return jax.tree_util.tree_map(lambda a: np.asarray(a), plain)


def save_checkpoint(path: str | os.PathLike, arch: str, variables: Mapping[str, Any],
                    metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``variables`` of architecture ``arch`` with ``metadata`` to ``path`` atomically.

    ``metadata`` must be JSON-serializable; ``arch`` and ``rsjax_version`` are added to it."""
    from rsjax.models import get_model_spec

    get_model_spec(arch)  # unknown architecture -> InputError
    meta = dict(metadata or {})
    meta.setdefault("rsjax_version", __version__)
    meta["arch"] = arch
    try:
        json.dumps(meta)
    except TypeError as e:
        raise CheckpointError(f"checkpoint metadata is not JSON-serializable: {e}") from None
    payload = serialization.msgpack_serialize(_to_numpy_tree(variables))
    header = {"arch": arch, "metadata": meta, "payload_bytes": len(payload),
              "sha256": _digest(arch, meta, payload)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(json.dumps(header, sort_keys=True).encode() + b"\n")
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint_header(path: str | os.PathLike) -> dict:
    """The header (arch, metadata, payload size, hash) without reading the payload."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (train one with `rsjax train` or "
                              f"convert one with `rsjax convert`)")
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise CheckpointError(f"{path} is not an rsjax checkpoint (bad magic {magic[:20]!r})")
        line = f.readline()
    try:
        header = json.loads(line)
        header["arch"], header["metadata"], header["payload_bytes"], header["sha256"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: corrupt checkpoint header") from None
    header["_offset"] = len(MAGIC) + len(line)
    return header


def _check_against_spec(path: Path, arch: str, variables: dict) -> None:
    from rsjax.models import get_model_spec

    spec = get_model_spec(arch)
    expected = jax.eval_shape(lambda: spec.init(jax.random.PRNGKey(0)))
    exp_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    missing = sorted(set(exp_flat) - set(got_flat))
    extra = sorted(set(got_flat) - set(exp_flat))
    if missing or extra:
        raise CheckpointError(
            f"{path}: variables do not match architecture {arch!r}: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, e in exp_flat.items():
        if tuple(got_flat[name].shape) != tuple(e.shape):
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(got_flat[name].shape)}, "
                                  f"architecture {arch!r} needs {tuple(e.shape)}")


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> tuple[dict, dict]:
    """Read ``path`` -> (variables, metadata), verifying magic, length, SHA-256 and shapes.

    If ``arch`` is given and differs from the file's architecture, raise CheckpointError."""
    path = Path(path)
    header = read_checkpoint_header(path)
    file_arch = header["arch"]
    if arch is not None and arch != file_arch:
        raise CheckpointError(f"{path} holds architecture {file_arch!r}, not the requested {arch!r}")
    with open(path, "rb") as f:
        f.seek(header["_offset"])
        payload = f.read()
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(f"{path} is truncated or padded: payload has {len(payload)} bytes, "
                              f"header says {header['payload_bytes']}")
    if _digest(file_arch, header["metadata"], payload) != header["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 mismatch, the file was modified or corrupted")
    try:
        variables = serialization.msgpack_restore(payload)
    except Exception as e:  # msgpack raises several types on garbage
        raise CheckpointError(f"{path}: cannot decode the variables ({e})") from None
    _check_against_spec(path, file_arch, variables)
    return variables, dict(header["metadata"])

"""Resuming an interrupted training run (:func:`rsjax.train.train`; :mod:`rsjax.train`
re-exports every name).

After every epoch ``<out>.resume`` (same file format as a checkpoint, see
:func:`save_resume_state`) holds the whole training state (:class:`TrainState`: weights, batch
statistics, optimizer state, step counter), the finished epoch count, the best score so far, the
metadata and a fingerprint of the run (:func:`run_fingerprint`: the resolved configuration,
SHA-256 of the training / evaluation data and of the initial weights). A resume state of another
configuration is refused (InputError naming each difference: :func:`fingerprint_differences`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import jax
import numpy as np
import optax
from flax import serialization

from rsjax.data import Dataset
from rsjax.errors import CheckpointError, InputError, name_problems

if TYPE_CHECKING:
    from rsjax.train import TrainConfig


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree, passed through the jitted step)."""

    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: optax.OptState
    step: jax.Array


def _flat_by_path(tree: Any) -> dict[str, Any]:
    """``{"['params']['Dense_0']['kernel']": leaf, ...}`` (jax key paths as strings)."""
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _tensor_mismatches(expected: Any, got: Any) -> list[str]:
    """Every difference between two trees of arrays in tensor names, shapes or dtypes."""
    exp, have = _flat_by_path(expected), _flat_by_path(got)
    problems = name_problems(("missing", sorted(set(exp) - set(have))),
                             ("unexpected", sorted(set(have) - set(exp))))
    for name in sorted(set(exp) & set(have)):
        e, g = exp[name], have[name]
        e_dtype, g_dtype = np.dtype(e.dtype), np.asarray(g).dtype
        if tuple(np.shape(g)) != tuple(e.shape) or g_dtype != e_dtype:
            problems.append(f"{name} is {g_dtype}{list(np.shape(g))}, expected {e_dtype}{list(e.shape)}")
    return problems


#: ``metadata["kind"]`` of a resume state file
RESUME_KIND = "rsjax-train-resume"


def resume_state_path(out: str | Path) -> Path:
    """``model.ckpt`` -> ``model.ckpt.resume`` (the state to continue an interrupted run)."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def array_digest(named_arrays: Mapping[str, Any]) -> str:
    """SHA-256 over ``name, dtype, shape, bytes`` of each array, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(named_arrays):
        a = np.ascontiguousarray(np.asarray(named_arrays[name]))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def run_fingerprint(config: TrainConfig, train_data: Dataset, eval_data: Dataset | None,
                    init_variables: Mapping[str, Any] | None) -> dict:
    """What a resumed run must share with the interrupted one: every field of the resolved
    ``config``, the data specs, sizes and SHA-256 (images and labels), and the SHA-256 of the
    initial weights (None: drawn from the seed)."""
    fingerprint = dataclasses.asdict(config)
    fingerprint.update(
        dataset=train_data.spec, n_train=len(train_data),
        train_data_sha256=array_digest({"images": train_data.images, "labels": train_data.labels}),
        eval_dataset=None if eval_data is None else eval_data.spec,
        n_eval=None if eval_data is None else len(eval_data),
        eval_data_sha256=None if eval_data is None else array_digest(
            {"images": eval_data.images, "labels": eval_data.labels}),
        init_sha256=None if init_variables is None else array_digest(_flat_by_path(dict(init_variables))),
    )
    return fingerprint


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name: <saved> in the resume state, <current> now"`` for each differing field."""
    def show(key: str, value: Any) -> str:
        return f"{value[:12]}..." if key.endswith("sha256") and isinstance(value, str) else repr(value)

    return [f"{key}: {show(key, saved.get(key))} in the resume state, {show(key, current.get(key))} now"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def _state_tree(state: TrainState) -> dict:
    """The state as a plain tree of arrays (the optimizer state as Flax's state dict)."""
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": serialization.to_state_dict(state.opt_state), "step": state.step}


def save_resume_state(path: str | Path, arch: str, state: TrainState, info: Mapping[str, Any]) -> None:
    """Write ``state`` in the checkpoint format of :mod:`rsjax.checkpoints` (msgpack payload,
    SHA-256, atomic replace, no pickle): the tree ``{params, batch_stats, opt_state, step}``, the
    metadata ``info`` (JSON) plus ``kind`` = :data:`RESUME_KIND`."""
    from rsjax.checkpoints import save_checkpoint

    save_checkpoint(path, arch, jax.device_get(_state_tree(state)), {**info, "kind": RESUME_KIND})


def read_resume_metadata(path: str | Path) -> dict:
    """The metadata of a resume state (its header only; verified later by :func:`load_resume_state`)."""
    from rsjax.checkpoints import read_checkpoint_header

    metadata = read_checkpoint_header(path)["metadata"]
    if metadata.get("kind") != RESUME_KIND:
        raise CheckpointError(f"{path} is an rsjax checkpoint but not a training resume state")
    return metadata


def load_resume_state(path: str | Path, template: TrainState) -> tuple[TrainState, dict]:
    """Read a file of :func:`save_resume_state` -> (state on the device, metadata), verifying the
    magic, length and SHA-256 as :func:`rsjax.checkpoints.load_checkpoint` does, and every
    tensor's name, shape and dtype against ``template`` (the fresh state of the same config)."""
    from rsjax.checkpoints import _digest, read_checkpoint_header

    path = Path(path)
    header = read_checkpoint_header(path)
    metadata = read_resume_metadata(path)
    with open(path, "rb") as f:
        f.seek(header["_offset"])
        payload = f.read()
    if len(payload) != header["payload_bytes"] or _digest(header["arch"], metadata, payload) != header["sha256"]:
        raise CheckpointError(f"{path} is truncated or corrupted (length or SHA-256 mismatch); delete it "
                              f"to start the run over")
    try:
        tree = serialization.msgpack_restore(payload)
    except Exception as e:  # msgpack raises several types on garbage
        raise CheckpointError(f"{path}: cannot decode the training state ({e})") from None
    problems = _tensor_mismatches(_state_tree(template), tree)
    if problems:
        raise CheckpointError(f"{path} does not fit this run's training state: {'; '.join(problems[:5])}")
    opt_state = serialization.from_state_dict(template.opt_state, tree["opt_state"])
    state = TrainState(tree["params"], tree["batch_stats"], opt_state, tree["step"])
    return jax.device_put(state), metadata


def _resume(path: Path, fresh: TrainState, fingerprint: dict, log: Callable[[str], None]):
    """(state, metadata, epochs done, best score) from the resume state at ``path``; InputError
    listing the differences when it was written by another configuration."""
    saved = read_resume_metadata(path)
    differences = fingerprint_differences(saved.get("fingerprint", {}), fingerprint)
    if differences:
        raise InputError(
            f"{path} holds an interrupted run of another training configuration: {'; '.join(differences)}. "
            f"Rerun with the same options to resume it, or start over with --no-resume (resume=False) "
            f"or another --out")
    state, saved = load_resume_state(path, fresh)
    if saved.get("jax_version") != jax.__version__:
        log(f"warning: {path} was written with jax {saved.get('jax_version')}, this is {jax.__version__}: "
            f"the result may differ in the last bits from an uninterrupted run")
    metadata = dict(saved["run_metadata"])
    metadata["resumed_after_epochs"] = [*metadata.get("resumed_after_epochs", []), saved["epochs_done"]]
    log(f"resuming from {path}: {saved['epochs_done']} of {fingerprint['epochs']} epochs done")
    return state, metadata, int(saved["epochs_done"]), float(saved["best_score"])

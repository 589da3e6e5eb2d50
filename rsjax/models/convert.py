"""PyTorch state_dict -> Flax variables for the ResNets (torchvision / akamaster key layout).

Reading (:func:`load_state_dict`):
  * ``.safetensors``: read with the ``safetensors`` package, no PyTorch needed;
  * anything else (``.pth``, ``.th``, ``.pt``): ``torch.load(path, map_location="cpu",
    weights_only=True)`` -- PyTorch's restricted unpickler, which refuses to run arbitrary code.
    PyTorch is imported only here, so it stays an optional extra (``pip install 'rsjax[torch]'``).
  * A wrapper dict ``{"state_dict": {...}, ...}`` (as saved by many training scripts) is unwrapped;
    a ``module.`` prefix (``nn.DataParallel``) is stripped from every key that has it.

Mapping (:func:`convert_state_dict`): the Flax ResNets name their submodules after the PyTorch
keys with ``.`` replaced by ``_`` (``layer2_0/downsample_1`` <-> ``layer2.0.downsample.1``), so the
expected PyTorch tensors are derived from the Flax variable tree itself:

  ==================  ==============================  ===================================
  Flax leaf           PyTorch tensor                  transform
  ==================  ==============================  ===================================
  Conv ``kernel``     ``<prefix>.weight`` [O,I,kh,kw]  transpose to HWIO [kh,kw,I,O]
  Dense ``kernel``    ``<prefix>.weight`` [out,in]     transpose to [in,out]
  Dense ``bias``      ``<prefix>.bias``                as is
  BatchNorm ``scale`` ``<prefix>.weight``              as is
  BatchNorm ``bias``  ``<prefix>.bias``                as is
  BN stats ``mean``   ``<prefix>.running_mean``        as is (collection ``batch_stats``)
  BN stats ``var``    ``<prefix>.running_var``         as is (collection ``batch_stats``)
  ==================  ==============================  ===================================

``<prefix>.num_batches_tracked`` (a training counter with no effect on inference) is the only key
accepted and deliberately ignored. Every missing, unexpected or mis-shaped tensor is reported by
name in one :class:`~rsjax.errors.CheckpointError`; nothing is silently dropped.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jax
import numpy as np

from rsjax.errors import CheckpointError, name_problems
from rsjax.models.registry import get_model_spec

IGNORED_SUFFIX = "num_batches_tracked"
DATA_PARALLEL_PREFIX = "module."


@dataclass(frozen=True)
class TensorTarget:
    """Where one PyTorch tensor goes in the Flax variables, and how it is reshaped."""

    collection: str  # "params" or "batch_stats"
    path: tuple[str, ...]  # module names then the leaf name
    flax_shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """The shape the PyTorch tensor must have for ``to_flax`` to give ``flax_shape``."""
        s = self.flax_shape
        if self.to_flax is _conv_kernel:
            return (s[3], s[2], s[0], s[1])
        if self.to_flax is _dense_kernel:
            return (s[1], s[0])
        return s


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch OIHW -> Flax HWIO."""
    return np.transpose(w, (2, 3, 1, 0))


def _dense_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear [out, in] -> Flax Dense [in, out]."""
    return np.transpose(w, (1, 0))


def _same(w: np.ndarray) -> np.ndarray:
    return w


def torch_prefix(module_path: tuple[str, ...]) -> str:
    """Flax module path -> PyTorch key prefix: ``("layer1_0", "bn1")`` -> ``"layer1.0.bn1"``."""
    return ".".join(name.replace("_", ".") for name in module_path)


def variable_shapes(arch: str) -> dict:
    """Shapes of the Flax variables of ``arch``, without computing anything (``jax.eval_shape``)."""
    spec = get_model_spec(arch)
    return jax.eval_shape(spec.init, jax.random.PRNGKey(0))


def expected_tensors(arch: str) -> dict[str, TensorTarget]:
    """PyTorch key -> :class:`TensorTarget` for every tensor ``arch`` needs."""
    shapes = variable_shapes(arch)
    params, stats = shapes["params"], shapes.get("batch_stats", {})
    targets: dict[str, TensorTarget] = {}

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        leaves = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
        for name, sub in tree.items():
            if isinstance(sub, Mapping):
                walk(sub, path + (name,))
        if not leaves:
            return
        prefix = torch_prefix(path)

        def add(torch_name: str, collection: str, leaf: str, fn) -> None:
            src = params if collection == "params" else stats
            node = src
            for p in path:
                node = node[p]
            targets[f"{prefix}.{torch_name}"] = TensorTarget(
                collection, path + (leaf,), tuple(node[leaf].shape), fn
            )

        if "scale" in leaves:  # BatchNorm
            if set(leaves) != {"scale", "bias"}:
                raise CheckpointError(f"unsupported BatchNorm variables at {prefix}: {sorted(leaves)}")
            add("weight", "params", "scale", _same)
            add("bias", "params", "bias", _same)
            add("running_mean", "batch_stats", "mean", _same)
            add("running_var", "batch_stats", "var", _same)
        elif "kernel" in leaves:
            ndim = len(leaves["kernel"].shape)
            if ndim == 4:
                add("weight", "params", "kernel", _conv_kernel)
            elif ndim == 2:
                add("weight", "params", "kernel", _dense_kernel)
            else:
                raise CheckpointError(f"unsupported {ndim}-D kernel at {prefix}")
            if "bias" in leaves:
                add("bias", "params", "bias", _same)
            extra = set(leaves) - {"kernel", "bias"}
            if extra:
                raise CheckpointError(f"unsupported variables at {prefix}: {sorted(extra)}")
        else:
            raise CheckpointError(f"no PyTorch mapping for variables {sorted(leaves)} at {prefix}")

    walk(params, ())
    return targets


def strip_data_parallel_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a leading ``module.`` (``nn.DataParallel``) from every key that has one."""
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key[len(DATA_PARALLEL_PREFIX):] if key.startswith(DATA_PARALLEL_PREFIX) else key
        if name in out:
            raise CheckpointError(f"state_dict holds both {name!r} and {DATA_PARALLEL_PREFIX}{name!r}")
        out[name] = value
    return out


def convert_state_dict(arch: str, state_dict: Mapping[str, np.ndarray]) -> dict:
    """Map a PyTorch state_dict (numpy arrays, keys with or without ``module.``) onto the Flax
    variables ``{"params": ..., "batch_stats": ...}`` of ``arch`` (float32 numpy arrays).

    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    sd = strip_data_parallel_prefix(state_dict)
    targets = expected_tensors(arch)
    bn_prefixes = {k.rsplit(".", 1)[0] for k in targets if k.endswith(".running_mean")}

    missing = [k for k in targets if k not in sd]
    ignored = [k for k in sd if k.endswith("." + IGNORED_SUFFIX) and k.rsplit(".", 1)[0] in bn_prefixes]
    unexpected = [k for k in sd if k not in targets and k not in ignored]
    misshaped = []
    for key, target in targets.items():
        if key in sd and tuple(np.shape(sd[key])) != target.torch_shape:
            misshaped.append(f"{key} {tuple(np.shape(sd[key]))} (expected {target.torch_shape})")
    non_float = [
        k for k in targets
        if k in sd and not np.issubdtype(np.asarray(sd[k]).dtype, np.floating)
    ]
    problems = name_problems(("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", misshaped), ("not floating point", non_float))
    if problems:
        hint = " Is --arch right?" if missing or unexpected else ""
        raise CheckpointError(
            f"state_dict does not match architecture {arch!r}: " + "; ".join(problems) + "." + hint
        )

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, target in targets.items():
        node = variables[target.collection]
        for name in target.path[:-1]:
            node = node.setdefault(name, {})
        node[target.path[-1]] = np.ascontiguousarray(
            target.to_flax(np.asarray(sd[key], dtype=np.float32))
        )
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    return variables


def _torch_to_numpy(obj: Any, key: str, path: str) -> np.ndarray:
    import torch

    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: state_dict entry {key!r} is a {type(obj).__name__}, not a tensor")
    t = obj.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading the PyTorch file {path} needs PyTorch: pip install 'rsjax[torch]'"
            " (or convert it to .safetensors, which needs no PyTorch)"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # restricted unpickler refusal, truncated or non-PyTorch file
        raise CheckpointError(
            f"cannot read {path} with torch.load(weights_only=True): {type(e).__name__}: {e}"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    return {str(k): _torch_to_numpy(v, str(k), path) for k, v in obj.items()}


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs the safetensors package: pip install safetensors"
        ) from None
    try:
        return dict(load_file(path))
    except Exception as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {type(e).__name__}: {e}") from None


def is_safetensors(path: str) -> bool:
    return str(path).lower().endswith(".safetensors")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state_dict as numpy arrays from ``.safetensors`` or a ``torch.save`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path!r} not found")
    return _load_safetensors(path) if is_safetensors(path) else _load_torch(path)


def sha256_of_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_file(arch: str, weights: str, out: str) -> dict:
    """Convert the PyTorch weights file ``weights`` for ``arch`` into the rsjax checkpoint ``out``.

    Returns the metadata written (source name, sha256 and format, ``recipe: "converted"``).
    """
    from rsjax.checkpoints import save_checkpoint

    spec = get_model_spec(arch)
    state_dict = load_state_dict(weights)
    variables = convert_state_dict(arch, state_dict)
    n_params = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(variables["params"])))
    ignored = sorted(k for k in strip_data_parallel_prefix(state_dict) if k.endswith(IGNORED_SUFFIX))
    metadata = {
        "arch": arch,
        "dataset": spec.dataset,
        "recipe": "converted",
        "source": os.path.basename(os.fspath(weights)),
        "source_sha256": sha256_of_file(weights),
        "source_format": "safetensors" if is_safetensors(weights) else "torch",
        "n_params": n_params,
        "n_tensors_converted": len(state_dict) - len(ignored),
        "n_tensors_ignored": len(ignored),
    }
    save_checkpoint(os.fspath(out), arch, variables, metadata)
    return metadata

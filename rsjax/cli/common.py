"""Helpers shared by the subcommands."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")


def emit_json(obj: dict) -> None:
    """Print one JSON object on stdout (the only thing a ``--json`` run writes there)."""
    sys.stdout.write(json.dumps(obj, default=_default) + "\n")
    sys.stdout.flush()


def log(*parts: Any) -> None:
    """Human-readable progress on stderr."""
    print(*parts, file=sys.stderr, flush=True)


def parse_option(item: str, flag: str = "--option") -> tuple[str, Any]:
    """``"max_probe_rms=0.5"`` -> ``("max_probe_rms", 0.5)``: one config field of an attack, its
    value read as a Python literal (numbers, True/False/None; anything else stays a string).
    InputError naming ``flag`` when ``item`` is not KEY=VALUE."""
    import ast

    from rsjax.errors import InputError

    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise InputError(f"{flag} takes KEY=VALUE, got {item!r}")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def add_data_args(p, default_limit=None) -> None:
    p.add_argument("--data", required=True, help="dataset spec: fashion-mnist[:train|test], npz:PATH, imagefolder:DIR")
    p.add_argument("--data-dir", default=None, help="directory of the Fashion-MNIST IDX files")
    p.add_argument("--limit", type=int, default=default_limit, help="use only the first K images")
    p.add_argument("--per-class", type=int, default=None, metavar="K",
                   help="then only the first K images of each class (files sorted by class, e.g. "
                        "CIFAR-10 npz exports, otherwise give one class with --limit); image "
                        "indices stay those of the full dataset")


def load_data_for(args, classifier):
    """The dataset of ``--data`` (with ``--data-dir``, ``--limit``, ``--per-class``) at the
    classifier's input size; InputError naming the flag or the shape mismatch."""
    from rsjax.data import load_dataset
    from rsjax.errors import InputError, check_int_at_least

    if args.per_class is not None:
        check_int_at_least("--per-class", args.per_class, 1)
    data = load_dataset(args.data, data_dir=args.data_dir, limit=args.limit,
                        image_size=classifier.input_shape[0], per_class=args.per_class)
    if data.image_shape != classifier.input_shape:
        raise InputError(f"data {data.spec!r} has images of shape {data.image_shape}, checkpoint "
                         f"{args.checkpoint} ({classifier.spec.name}) needs {classifier.input_shape}")
    return data


def check_writable(path: str, flag: str = "--out") -> Path:
    """``path`` as a Path if a file can be written there, else InputError naming it (checked
    before any expensive work): not a directory, its parent directory exists or can be created,
    an existing file can be opened for appending (nothing is truncated) and a new one can be
    created (a probe file is created in the parent directory and removed)."""
    from rsjax.errors import InputError

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {path} is a directory; give a file path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot create its directory {p.parent}: {e.strerror or e}") from None
    try:
        if p.exists():
            with open(p, "ab"):
                pass
        else:
            fd, probe = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".probe")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise InputError(f"{flag} {path} cannot be written: {e.strerror or e}") from None
    return p


def checkpoint_sha256(path: str) -> str:
    """The content digest recorded in an rsjax checkpoint's header (names the weights, whatever
    the file is called; verified when the checkpoint is loaded)."""
    from rsjax.checkpoints import read_checkpoint_header

    return read_checkpoint_header(path)["sha256"]


def data_sha256(data) -> str:
    """SHA-256 of a loaded dataset's image indices, labels and float32 images: a rerun on the
    same spec whose file changed is not a resume of the same configuration."""
    import numpy as np

    h = hashlib.sha256()
    for a in (np.asarray(data.ids, np.int64), np.asarray(data.labels, np.int64),
              np.asarray(data.images, np.float32)):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_config(args, classifier, data, **settings: Any) -> dict:
    """The configuration a resumable ``--out`` file is bound to (see
    :func:`rsjax.results.bind_results_file`): the checkpoint's digest and architecture, the data
    (spec, --limit, --per-class, content digest) and the command's own ``settings``."""
    return {"command": args.command, "checkpoint_sha256": checkpoint_sha256(args.checkpoint),
            "arch": classifier.spec.name, "data": data.spec, "limit": args.limit,
            "per_class": args.per_class, "n_images": len(data), "data_sha256": data_sha256(data),
            **settings}


def add_memory_args(p) -> None:
    """``--memory-budget GiB`` and ``--dtype`` (:mod:`rsjax.memory`)."""
    p.add_argument("--memory-budget", default=None, metavar="GiB",
                   help="memory this run may use: lowers the vote chunk (and the attack batch) to fit "
                        "(default: no limit beyond the given sizes)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype of the model (float32; bfloat16 only if its top-1 agrees with "
                        "float32 on >= 99%% of noisy samples of the first images)")


def apply_memory_args(args, classifier, data, chunk: int, sigmas=(), batch: int = 1, points: int = 1,
                      batch_images: int = 1):
    """The classifier in ``--dtype`` (behind :func:`rsjax.memory.cast_checked`) and the vote
    chunk and batch that fit ``--memory-budget`` (:func:`rsjax.memory.plan`; unchanged without a
    budget). Returns (classifier, chunk, batch, settings): ``settings`` holds what changes the
    numbers ('dtype' when not float32, the derived 'chunk_size') for the run's configuration."""
    from rsjax.memory import AGREEMENT_IMAGES, cast_checked, parse_budget, plan

    settings: dict = {}
    budget = parse_budget(args.memory_budget)
    if budget is not None:
        p = plan(arch=classifier.spec.name, budget=budget, vote_chunk=chunk, attack_batch=batch,
                 data_bytes=int(np.asarray(data.images).nbytes), points=points, dtype=args.dtype,
                 batch_images=batch_images)
        if p.binds:
            log(f"memory budget {p.budget_bytes / 2**30:.3g} GiB: vote chunk {p.vote_chunk}, batch {p.attack_batch}")
        chunk, batch = p.vote_chunk, p.attack_batch
    if args.dtype != "float32":
        sig = tuple(s for s in sigmas if s is not None)
        classifier, check = cast_checked(classifier, args.dtype, data.images[:AGREEMENT_IMAGES], sig,
                                         name=classifier.spec.name, seed=args.seed,
                                         batch_size=min(32, chunk))
        log(f"{args.dtype}: top-1 agreement with float32 {check['agreement']:.2%} (checked)")
        settings["dtype"] = args.dtype
        settings["dtype_agreement"] = check["agreement"]
    return classifier, chunk, batch, settings

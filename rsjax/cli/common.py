"""Helpers shared by the subcommands."""
from __future__ import annotations

import json
import sys
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

"""``rsjax evaluate``: top-1 accuracy of a checkpoint's base classifier on a dataset.

``--json`` prints one object: ``accuracy``, ``n_images``, ``n_correct``, ``data``, ``checkpoint``
and the checkpoint's ``metadata``. Later options (e.g. smoothing) add their own argument group in
:func:`add_arguments` and their own fields to the dict built by :func:`evaluate`.
"""
from __future__ import annotations

import argparse

from rsjax.cli.common import add_data_args, emit_json, log


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy of a checkpoint on a dataset",
        description="Load an rsjax checkpoint and print its top-1 accuracy on --data.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rsjax evaluate``."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="rsjax checkpoint")
    add_data_args(p)
    p.add_argument("--batch-size", type=int, default=1000, help="images per compiled batch (1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def evaluate(args: argparse.Namespace) -> dict:
    """Load the checkpoint and data named by ``args`` and return the result dict."""
    from rsjax.classifier import Classifier
    from rsjax.data import load_dataset
    from rsjax.errors import InputError, check_int_at_least

    check_int_at_least("--batch-size", args.batch_size, 1)
    classifier = Classifier.from_checkpoint(args.checkpoint)
    height, width, channels = classifier.input_shape
    data = load_dataset(args.data, data_dir=args.data_dir, limit=args.limit, image_size=height)
    if data.image_shape != classifier.input_shape:
        raise InputError(f"data {data.spec!r} has images of shape {data.image_shape}, checkpoint "
                         f"{args.checkpoint} ({classifier.spec.name}) needs {classifier.input_shape}")
    if data.labels.max(initial=0) >= classifier.num_classes:
        raise InputError(f"data {data.spec!r} has label {int(data.labels.max())} but "
                         f"{classifier.spec.name} has {classifier.num_classes} classes")
    predictions = classifier.predict(data.images, batch_size=min(args.batch_size, len(data)))
    n_correct = int((predictions == data.labels).sum())
    return {
        "accuracy": n_correct / len(data),
        "n_images": len(data),
        "n_correct": n_correct,
        "data": data.spec,
        "checkpoint": str(args.checkpoint),
        "metadata": dict(classifier.metadata or {}),
    }


def run(args: argparse.Namespace) -> int:
    result = evaluate(args)
    if args.json:
        emit_json(result)
    else:
        meta = result["metadata"]
        log(f"{meta.get('arch', '?')} ({meta.get('recipe', '?')}) on {result['data']}")
        print(f"accuracy: {result['accuracy']:.4f} ({result['n_correct']}/{result['n_images']})")
    return 0

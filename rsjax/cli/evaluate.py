"""``rsjax evaluate``: top-1 accuracy of a checkpoint's base classifier on a dataset and, with
``--sigma S --n N [--alpha A]``, of the practical smoothed classifier g_{σ,n} (plurality vote of n
noisy copies, lowest-index ties) and of Cohen's PREDICT (abstain when the two-sided binomial test
of the top two counts has p-value > α; abstentions count as errors). Beware: with n = 10 and
α = 0.001 PREDICT always abstains (10/10 gives p ≈ 0.002).

``--json`` prints one object: ``accuracy``, ``n_images``, ``n_correct``, ``data``, ``checkpoint``
and the checkpoint's ``metadata``. Later options (e.g. smoothing) add their own argument group in
:func:`add_arguments` and their own fields to the dict built by :func:`evaluate`.
"""
from __future__ import annotations

import argparse

from rsjax.cli.common import add_data_args, emit_json, load_data_for, log


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
    rs = p.add_argument_group("randomized smoothing (optional)")
    rs.add_argument("--sigma", type=float, default=None, help="noise level σ of g_{σ,n} (pixel space [0,1])")
    rs.add_argument("--n", type=int, default=None, help="noise samples per image (needs --sigma)")
    rs.add_argument("--alpha", type=float, default=0.001, help="PREDICT's test level α (0.001)")
    rs.add_argument("--seed", type=int, default=0, help="seed of the noise (image i uses fold_in(seed, i))")


def evaluate(args: argparse.Namespace) -> dict:
    """Load the checkpoint and data named by ``args`` and return the result dict."""
    from rsjax.classifier import Classifier
    from rsjax.errors import InputError, check_int_at_least

    check_int_at_least("--batch-size", args.batch_size, 1)
    classifier = Classifier.from_checkpoint(args.checkpoint)
    data = load_data_for(args, classifier)
    if data.labels.max(initial=0) >= classifier.num_classes:
        raise InputError(f"data {data.spec!r} has label {int(data.labels.max())} but "
                         f"{classifier.spec.name} has {classifier.num_classes} classes")
    predictions = classifier.predict(data.images, batch_size=min(args.batch_size, len(data)))
    n_correct = int((predictions == data.labels).sum())
    result = {
        "accuracy": n_correct / len(data),
        "n_images": len(data),
        "n_correct": n_correct,
        "data": data.spec,
        "checkpoint": str(args.checkpoint),
        "metadata": dict(classifier.metadata or {}),
    }
    if args.sigma is not None or args.n is not None:
        from rsjax.errors import check_open_unit, check_positive
        from rsjax.smoothing import evaluate_smoothed

        if args.sigma is None or args.n is None:
            raise InputError("randomized smoothing needs both --sigma and --n "
                             f"(got --sigma {args.sigma}, --n {args.n})")
        check_positive("--sigma", args.sigma)
        check_int_at_least("--n", args.n, 1)
        check_open_unit("--alpha", args.alpha)
        log(f"smoothing: sigma={args.sigma} n={args.n} on {len(data)} images")
        result["smoothed"] = evaluate_smoothed(classifier, data.images, data.labels, args.sigma,
                                               args.n, args.alpha, seed=args.seed)
    return result


def run(args: argparse.Namespace) -> int:
    result = evaluate(args)
    if args.json:
        emit_json(result)
    else:
        meta = result["metadata"]
        log(f"{meta.get('arch', '?')} ({meta.get('recipe', '?')}) on {result['data']}")
        print(f"accuracy: {result['accuracy']:.4f} ({result['n_correct']}/{result['n_images']})")
        if "smoothed" in result:
            sm = result["smoothed"]
            print(f"smoothed accuracy g_(sigma={sm['sigma']}, n={sm['n']}): {sm['smoothed_accuracy']:.4f}")
            print(f"PREDICT accuracy (alpha={sm['alpha']}): {sm['predict_accuracy']:.4f}, "
                  f"abstention rate {sm['abstention_rate']:.4f}")
    return 0

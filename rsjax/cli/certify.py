"""``rsjax certify``: Cohen's CERTIFY on each image of a data set, written as Cohen's log
(``idx label predict radius correct time``, see :mod:`rsjax.certification`), with a summary
(certified accuracy at a few radii, abstention rate, seconds per image)."""
from __future__ import annotations

import argparse

from rsjax.cli.common import add_data_args, emit_json, load_data_for, log


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "certify",
        help="certified radii of the smoothed classifier (Cohen's CERTIFY)",
        description="For each image: n0 noisy samples pick the class c_A, n fresh samples give a "
        "one-sided Clopper-Pearson lower bound p_A of P[f(x+sigma N) = c_A]; abstain if p_A < 1/2, "
        "else certify the L2 radius sigma * Phi^-1(p_A).",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="rsjax checkpoint")
    add_data_args(p)
    p.add_argument("--sigma", type=float, required=True, help="noise level in [0,1] pixel units")
    p.add_argument("--n0", type=int, default=100, help="selection samples (100)")
    p.add_argument("--n", type=int, default=100_000, help="estimation samples (100000)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability (0.001)")
    p.add_argument("--seed", type=int, default=0, help="root seed; image idx uses fold_in(seed, idx)")
    p.add_argument("--batch-size", type=int, default=1, help="images per compiled call (1)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="noisy samples per model call (default 1024; smaller for big models)")
    p.add_argument("--out", required=True, metavar="LOG", help="tab-separated per-image log to write")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rsjax.certification import certify_dataset, summarize, write_certify_log
    from rsjax.classifier import Classifier
    from rsjax.errors import check_int_at_least, check_open_unit, check_positive
    from rsjax.smoothing import DEFAULT_CHUNK_SIZE

    check_positive("--sigma", args.sigma)
    check_int_at_least("--n0", args.n0, 1)
    check_int_at_least("--n", args.n, 1)
    check_open_unit("--alpha", args.alpha)
    check_int_at_least("--batch-size", args.batch_size, 1)
    chunk = DEFAULT_CHUNK_SIZE if args.chunk_size is None else check_int_at_least("--chunk-size", args.chunk_size, 1)
    classifier = Classifier.from_checkpoint(args.checkpoint)
    data = load_data_for(args, classifier)
    log(f"certify {classifier.spec.name} on {len(data)} images of {data.spec}: sigma={args.sigma} "
        f"n0={args.n0} n={args.n} alpha={args.alpha} -> {args.out}")
    rows = certify_dataset(classifier, data.images, data.labels, args.sigma, args.n0, args.n, args.alpha,
                           seed=args.seed, batch_size=args.batch_size, chunk_size=chunk,
                           image_ids=data.ids)
    done = write_certify_log(args.out, rows)
    summary = {"checkpoint": str(args.checkpoint), "data": data.spec, "sigma": args.sigma, "n0": args.n0,
               "n": args.n, "alpha": args.alpha, "seed": args.seed, "log": str(args.out), **summarize(done)}
    if args.json:
        emit_json(summary)
    else:
        accs = ", ".join(f"r={r}: {a:.3f}" for r, a in summary["certified_accuracy"].items())
        print(f"certified accuracy {accs}; abstained {summary['abstention_rate']:.3f}; "
              f"{summary['seconds_per_image']:.3f} s/image; log {args.out}")
    return 0

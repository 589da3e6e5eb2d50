"""``rsjax attack``: run a decision-based attack (HSJA, SurFree, RayS) on a checkpoint's
classifier, plain or randomized-smoothed, and report per-image and summary distortions.

Without ``--sigma`` the oracle is the base classifier f; with ``--sigma S --n N`` it is the
practical smoothed classifier g_{S,N} (``rsjax.oracle.SmoothedOracle``) with ``--criterion
label`` (the voted label differs from the true one) or ``level`` (at least ceil(N * P_a) of the
N noisy decisions are wrong, ``--pa`` required). Every query counts, including the check of the
clean image (query 0) and the start search; ``evaluations`` counts base-model calls.

``--json`` prints one object ``{summary: {...}, images: [...]}`` on stdout; ``--out FILE`` appends
one JSON record per image to a resumable JSONL store (``rsjax.results.RecordStore``).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from rsjax.cli.common import add_data_args, emit_json, load_data_for, log


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "attack",
        help="decision-based attack (hsja | surfree | rays) on a plain or smoothed classifier",
        description="Attack the images of --data with a decision-based black-box attack under a "
                    "query budget, against the base classifier or its randomized smoothing.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rsjax attack``."""
    from rsjax.attacks import ATTACKS

    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="rsjax checkpoint")
    add_data_args(p)
    p.add_argument("--attack", required=True, choices=ATTACKS, help="attack to run")
    p.add_argument("--queries", type=int, required=True, metavar="Q", help="query budget per image")
    g = p.add_argument_group("randomized smoothing (omit --sigma to attack the base classifier)")
    g.add_argument("--sigma", type=float, default=None, help="noise level sigma in [0,1] pixel units")
    g.add_argument("--n", type=int, default=None, help="noisy samples per query (votes)")
    g.add_argument("--criterion", choices=("label", "level"), default="label",
                   help="label: voted label != y; level: >= ceil(n*P_a) wrong votes (default label)")
    g.add_argument("--pa", type=float, default=None, metavar="P", help="level P_a for --criterion level")
    p.add_argument("--seed", type=int, default=0, help="root seed; image i uses fold_in(seed, i) (0)")
    p.add_argument("--batch-size", type=int, default=64, help="images attacked together (64)")
    p.add_argument("--out", default=None, metavar="RECORDS.jsonl", help="append one record per image")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_oracle(args: argparse.Namespace, classifier):
    """ModelOracle, or SmoothedOracle when --sigma is given (with its checks)."""
    from rsjax.errors import InputError
    from rsjax.oracle import ModelOracle, SmoothedOracle

    if args.sigma is None:
        for flag, value in (("--n", args.n), ("--pa", args.pa)):
            if value is not None:
                raise InputError(f"{flag}={value} needs --sigma (randomized smoothing)")
        if args.criterion != "label":
            raise InputError(f"--criterion {args.criterion} needs --sigma (randomized smoothing)")
        return ModelOracle(classifier.logits_fn, classifier.num_classes, name=classifier.spec.name)
    if args.n is None:
        raise InputError("--sigma needs --n (number of noisy samples per query)")
    return SmoothedOracle(classifier.logits_fn, classifier.num_classes, args.sigma, args.n,
                          criterion=args.criterion, p_a=args.pa)


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def attack(args: argparse.Namespace) -> dict:
    """Run the attack named by ``args``; return ``{summary, images}`` (JSON-ready)."""
    from rsjax.attacks import get_attack
    from rsjax.classifier import Classifier
    from rsjax.errors import InputError, check_int_at_least

    check_int_at_least("--queries", args.queries, 1)
    check_int_at_least("--batch-size", args.batch_size, 1)
    if args.limit is not None:
        check_int_at_least("--limit", args.limit, 1)
    classifier = Classifier.from_checkpoint(args.checkpoint)
    oracle = build_oracle(args, classifier)
    data = load_data_for(args, classifier)
    if len(data) == 0:
        raise InputError(f"data {data.spec!r} has no images")
    atk = get_attack(args.attack)
    ids = data.ids
    log(f"{args.attack} on {len(data)} images of {data.spec}, {args.queries} queries, oracle {oracle.name}")
    t0 = time.perf_counter()
    res = atk.run(oracle, data.images, data.labels, args.seed, args.queries, image_ids=ids,
                  batch_size=args.batch_size, progress=lambda d, n: log(f"  {d}/{n} images done"))
    wall = time.perf_counter() - t0
    summary = res.summary()
    summary.update({
        "wall_s": wall, "wall_s_per_image": wall / len(data), "data": data.spec,
        "checkpoint": str(args.checkpoint), "arch": classifier.spec.name, "oracle": oracle.name,
        "sigma": args.sigma, "n": args.n, "criterion": args.criterion if args.sigma is not None else None,
        "p_a": args.pa, "seed": args.seed, "config": res.config,
    })
    for k in list(summary):
        if isinstance(summary[k], float):
            summary[k] = _finite(summary[k])
    images = [
        {"index": int(data.ids[i]), "label": int(data.labels[i]), "status": str(res.status[i]),
         "success": bool(res.success[i]), "l2": _finite(res.l2[i]), "linf": _finite(res.linf[i]),
         "queries": int(res.queries[i]), "evaluations": int(res.evaluations[i])}
        for i in range(len(data))
    ]
    return {"summary": summary, "images": images}


def _write_records(path: str, out: dict) -> int:
    from rsjax.results import RecordStore, record_key

    s = out["summary"]
    setting = {"arch": s["arch"], "checkpoint": s["checkpoint"], "data": s["data"], "attack": s["attack"],
               "queries": s["max_queries"], "sigma": s["sigma"], "n": s["n"], "criterion": s["criterion"],
               "p_a": s["p_a"], "seed": s["seed"]}
    records = [{"key": record_key(**setting, image=im["index"]), **setting, **im} for im in out["images"]]
    return RecordStore(path).append(records)


def run(args: argparse.Namespace) -> int:
    out = attack(args)
    if args.out:
        n = _write_records(args.out, out)
        log(f"{n} new records appended to {args.out}")
    if args.json:
        emit_json(out)
        return 0
    s = out["summary"]
    for im in out["images"]:
        l2 = "-" if im["l2"] is None else f"{im['l2']:.4f}"
        linf = "-" if im["linf"] is None else f"{im['linf']:.5f}"
        print(f"image {im['index']:5d} label {im['label']:3d} {im['status']:13s} l2 {l2:>8s} "
              f"linf {linf:>8s} queries {im['queries']:6d} evaluations {im['evaluations']:9d}")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"{s['attack']} vs {s['oracle']}: {s['n_attacked']} attacked, {s['n_misclassified']} misclassified, "
          f"{s['n_no_start']} without start; success rate {fmt(s['success_rate'], '.3f')}; "
          f"median L2 {fmt(s['median_l2'], '.4f')}, mean L2 {fmt(s['mean_l2'], '.4f')}; "
          f"max queries used {s['max_queries_used']}/{s['max_queries']}; "
          f"{fmt(s['wall_s_per_image'], '.3f')} s/image")
    return 0

"""``rsjax attack``: run a decision-based attack (HSJA, SurFree, RayS) on a checkpoint's
classifier, plain or randomized-smoothed, and report per-image and summary distortions.

Without ``--sigma`` the oracle is the base classifier f; with ``--sigma S --n N`` it is the
practical smoothed classifier g_{S,N} (``rsjax.oracle.SmoothedOracle``) with ``--criterion
label`` (the voted label differs from the true one) or ``level`` (at least ceil(N * P_a) of the
N noisy decisions are wrong, ``--pa`` required). Every query counts, including the check of the
clean image (query 0) and the start search; ``evaluations`` counts base-model calls.

``--json`` prints one object ``{summary: {...}, images: [...]}`` on stdout; ``--out FILE`` appends
one JSON record per image to a resumable JSONL store (``rsjax.results.RecordStore``) as each batch
of ``--batch-size`` images finishes, with the run's configuration (checkpoint digest, data,
attack and its options, queries, smoothing, seed, batch size) in the sidecar
``FILE.config.json`` (:func:`rsjax.results.bind_results_file`). Rerunning the same command on a
killed run's file keeps its records and attacks only the batches with images missing; another
configuration on the same file is refused (exit 2). Image i's randomness derives from
fold_in(seed, i) and the batches are those of an uninterrupted run, so the records are the same.

Against a smoothed classifier an attack's output answered "adversarial" once, which is not an
adversarial example of the random classifier g_{S,N}. ``--verify-pa P [P ...]`` verifies each
output of an attacked image as the sweep does (:mod:`rsjax.verify`): the verified distortion is
that of the nearest point on the ray x_o + t (x_a - x_o), t >= 1, whose level -- the probability
that one call of g_{S,N} answers a label other than the true one -- a sequential Clopper-Pearson
test (at most ``--verify-calls`` calls a point) has shown to be >= P; inf when no point up to the
[0,1] box passes. The evaluator's calls are not charged to the attack, its keys derive from
``--seed`` (stream 6, as the sweep's) and the image index, so a rerun or a resumed run gives
the same numbers. Per image: ``verified`` [{p_a, verified, l2, linf, level, level_low,
level_high, level_calls, calls}]; the summary adds each P's verified count and median verified
distortion with its 95 % bootstrap interval (unverified images count as inf).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from rsjax.cli.common import (add_data_args, add_memory_args, apply_memory_args, check_writable, emit_json,
                              load_data_for, log, parse_option, run_config)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "attack",
        help="decision-based attack (hsja | surfree | rays, or the noise-aware psj | rays_na | surfree_na) on a plain or smoothed classifier",
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
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="one config field of the attack (repeatable; a Python literal), e.g. max_probe_rms=0.5")
    g = p.add_argument_group("randomized smoothing (omit --sigma to attack the base classifier)")
    g.add_argument("--sigma", type=float, default=None, help="noise level sigma in [0,1] pixel units")
    g.add_argument("--n", type=int, default=None, help="noisy samples per query (votes)")
    g.add_argument("--criterion", choices=("label", "level"), default="label",
                   help="label: voted label != y; level: >= ceil(n*P_a) wrong votes (default label)")
    g.add_argument("--pa", type=float, default=None, metavar="P", help="level P_a for --criterion level")
    g.add_argument("--verify-pa", type=float, nargs="+", default=None, metavar="P",
                   help="verify each output: distortion of the nearest point on its ray whose level (P[g's "
                        "label != true label]) is shown >= P, for each P given (needs --sigma)")
    g.add_argument("--verify-calls", type=int, default=100, metavar="M",
                   help="most calls of g spent testing one point when verifying (100)")
    p.add_argument("--seed", type=int, default=0, help="root seed; image i uses fold_in(seed, i) (0)")
    p.add_argument("--batch-size", type=int, default=64, help="images attacked together (64)")
    p.add_argument("--out", default=None, metavar="RECORDS.jsonl",
                   help="append one record per image as batches finish; a file of the same configuration "
                        "is resumed (configuration in RECORDS.jsonl.config.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_memory_args(p)


def build_oracle(args: argparse.Namespace, classifier, chunk_size: int = 1024):
    """ModelOracle, or SmoothedOracle when --sigma is given (with its checks)."""
    from rsjax.errors import InputError
    from rsjax.oracle import ModelOracle, SmoothedOracle

    if args.sigma is None:
        for flag, value in (("--n", args.n), ("--pa", args.pa)):
            if value is not None:
                raise InputError(f"{flag}={value} needs --sigma (randomized smoothing)")
        if args.criterion != "label":
            raise InputError(f"--criterion {args.criterion} needs --sigma (randomized smoothing)")
        if args.verify_pa is not None:
            raise InputError(f"--verify-pa {' '.join(map(str, args.verify_pa))} needs --sigma: against the "
                             "base classifier every reported output is already adversarial")
        return ModelOracle(classifier.logits_fn, classifier.num_classes, name=classifier.spec.name)
    if args.n is None:
        raise InputError("--sigma needs --n (number of noisy samples per query)")
    return SmoothedOracle(classifier.logits_fn, classifier.num_classes, args.sigma, args.n,
                          criterion=args.criterion, p_a=args.pa, chunk_size=chunk_size)


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


#: the per-image fields of ``--json``'s ``images`` and of each ``--out`` record
IMAGE_FIELDS = ("index", "label", "status", "success", "l2", "linf", "queries", "evaluations")


def check_verify_args(args: argparse.Namespace) -> None:
    """--verify-pa values in (0, 1), distinct; --verify-calls >= 1."""
    from rsjax.errors import InputError, check_int_at_least, check_open_unit

    check_int_at_least("--verify-calls", args.verify_calls, 1)
    if args.verify_pa is None:
        return
    for p in args.verify_pa:
        check_open_unit("--verify-pa", p)
    if len(set(args.verify_pa)) != len(args.verify_pa):
        raise InputError(f"--verify-pa {' '.join(map(str, args.verify_pa))}: a level is repeated")


def verify_rows(args: argparse.Namespace, oracle, x, res, labels, ids) -> list[list[dict]]:
    """Per image, one dict per --verify-pa level: the verification (:func:`rsjax.verify.verify_rays`,
    label criterion, reference = the true label) of the output of each attacked image; images
    not attacked, or without an adversarial output, are not verified (l2/linf None = inf).
    Items of one image share their calls' randomness (common random numbers along the ray)."""
    from rsjax.study.tasks import STREAM_VERIFY, stream_key
    from rsjax.verify import VerifyConfig, oracle_decide, verify_rays

    pas = [float(p) for p in args.verify_pa]
    rows = [[{"p_a": p, "verified": False, "l2": None, "linf": None, "level": None, "level_low": None,
              "level_high": None, "level_calls": 0, "calls": 0} for p in pas] for _ in range(len(ids))]
    ok = np.flatnonzero((res.status == "attacked") & res.success)
    if len(ok) == 0:
        return rows
    decide, deterministic = oracle_decide(oracle)
    item = np.repeat(ok, len(pas))
    v = verify_rays(decide, np.asarray(x)[item], res.x_adv[item], np.asarray(labels)[item],
                    np.tile(pas, len(ok)), np.asarray(ids)[item], stream_key(args.seed, STREAM_VERIFY),
                    VerifyConfig(calls=args.verify_calls), deterministic)
    for j, (i, k) in enumerate(zip(item, np.tile(np.arange(len(pas)), len(ok)))):
        rows[i][k].update({"verified": bool(v.verified[j]), "l2": _finite(v.l2[j]), "linf": _finite(v.linf[j]),
                           "level": float(v.level[j]), "level_low": float(v.level_low[j]),
                           "level_high": float(v.level_high[j]), "level_calls": int(v.level_calls[j]),
                           "calls": int(v.calls[j])})
    return rows


def summarize_verified(images: list[dict], pas: list[float]) -> list[dict]:
    """Per level: attacked images, how many verified, the median verified L2 / L-inf over the
    attacked images (unverified = inf) with its 95 % bootstrap interval (None = inf / undefined)."""
    from rsjax.intervals import median_interval

    att = [im for im in images if im["status"] == "attacked"]
    out = []
    for k, p in enumerate(pas):
        row = {"p_a": p, "n_attacked": len(att), "n_verified": sum(im["verified"][k]["verified"] for im in att)}
        for norm in ("l2", "linf"):
            d = np.array([np.inf if im["verified"][k][norm] is None else im["verified"][k][norm] for im in att])
            iv = median_interval(d)
            row.update({f"median_{norm}": _finite(iv.estimate), f"median_{norm}_low": _finite(iv.low),
                        f"median_{norm}_high": _finite(iv.high)})
        out.append(row)
    return out


def image_rows(res, ids, labels) -> list[dict]:
    """The per-image dicts (IMAGE_FIELDS) of an AttackResult on images ``ids`` with ``labels``."""
    return [{"index": int(ids[i]), "label": int(labels[i]), "status": str(res.status[i]),
             "success": bool(res.success[i]), "l2": _finite(res.l2[i]), "linf": _finite(res.linf[i]),
             "queries": int(res.queries[i]), "evaluations": int(res.evaluations[i])}
            for i in range(len(ids))]


def summarize_images(name: str, images: list[dict], max_queries: int, config: dict) -> dict:
    """``AttackResult.summary()`` of per-image dicts (resumed ones included): the same numbers
    as the summary of one uninterrupted run (l2/linf None there stand for inf)."""
    from rsjax.attacks.common import AttackResult

    n = len(images)
    col = lambda k, dtype: np.array([im[k] for im in images], dtype)  # noqa: E731
    dist = lambda k: np.array([np.inf if im[k] is None else im[k] for im in images], np.float64)  # noqa: E731
    empty = np.zeros((n, 0))
    return AttackResult(
        attack=name, image_ids=col("index", np.int64), x_adv=empty, l2=dist("l2"), linf=dist("linf"),
        success=col("success", bool), status=col("status", str).astype(str), queries=col("queries", np.int64),
        evaluations=col("evaluations", np.int64), steps=np.zeros(n, np.int64),
        trace_queries=empty.astype(np.int64), trace_l2=empty, trace_linf=empty, max_queries=max_queries,
        config=config).summary()


def open_store(path, config: dict):
    """The RecordStore ``path`` bound to ``config`` (:func:`rsjax.results.bind_results_file`):
    records already there are kept, a torn last line is cut, another configuration is refused.
    Nothing is changed before the configuration is checked."""
    from rsjax.errors import InputError
    from rsjax.results import RecordStore, bind_results_file, read_records

    try:
        existing = read_records(path) if path.is_file() else []
        if any("key" not in r for r in existing):
            raise ValueError("a line has no 'key'")
    except (ValueError, AttributeError, TypeError) as e:
        raise InputError(f"{path} exists and is not a JSONL records file ({e}); "
                         f"choose another --out or delete it") from None
    bind_results_file(path, config, has_results=bool(existing))
    return RecordStore(path)


def attack_missing(args: argparse.Namespace, atk, oracle, data, done: dict, write) -> None:
    """Attack the batches (of ``--batch-size`` consecutive images of ``data``, as in an
    uninterrupted run) that hold an image not in ``done`` (index -> image dict); after each batch
    its new image dicts go to ``write`` (appended to --out) and into ``done``."""
    ids = [int(i) for i in data.ids]
    for s in range(0, len(ids), args.batch_size):
        batch = slice(s, s + args.batch_size)
        if all(i in done for i in ids[batch]):
            continue
        base = len(done)
        res = atk.run(oracle, data.images[batch], data.labels[batch], args.seed, args.queries,
                      image_ids=data.ids[batch], batch_size=args.batch_size,
                      progress=lambda d, n, base=base: log(f"  {base + d}/{len(ids)} images done"))
        rows = image_rows(res, data.ids[batch], data.labels[batch])
        if args.verify_pa is not None:
            for im, ver in zip(rows, verify_rows(args, oracle, data.images[batch], res, data.labels[batch],
                                                 data.ids[batch])):
                im["verified"] = ver
        new = [im for im in rows if im["index"] not in done]
        write(new)
        done.update((im["index"], im) for im in new)


def attack(args: argparse.Namespace) -> dict:
    """Run the attack named by ``args``; return ``{summary, images}`` (JSON-ready). With
    ``--out``, images already recorded there (same configuration) are read back, not attacked
    again, and each finished batch's records are appended (flushed) before the next starts."""
    import dataclasses

    from rsjax.attacks import get_attack
    from rsjax.classifier import Classifier
    from rsjax.errors import InputError, check_int_at_least
    from rsjax.results import config_hash, record_key

    check_int_at_least("--queries", args.queries, 1)
    check_int_at_least("--batch-size", args.batch_size, 1)
    check_verify_args(args)
    if args.limit is not None:
        check_int_at_least("--limit", args.limit, 1)
    out_path = check_writable(args.out) if args.out else None
    atk = get_attack(args.attack, **dict(parse_option(o) for o in args.option))  # bad fields named before any work
    classifier = Classifier.from_checkpoint(args.checkpoint)
    build_oracle(args, classifier)  # checks the flags before the data is loaded
    data = load_data_for(args, classifier)
    if len(data) == 0:
        raise InputError(f"data {data.spec!r} has no images")
    chunk = 1024  # SmoothedOracle's default vote chunk
    classifier, chunk, args.batch_size, extra = apply_memory_args(
        args, classifier, data, chunk, sigmas=(args.sigma,), batch=args.batch_size,
        points=max(16, int(getattr(atk.config, "probe_batch", 0) or 0)))
    if args.memory_budget is not None:
        extra["chunk_size"] = chunk
    oracle = build_oracle(args, classifier, chunk)
    criterion = args.criterion if args.sigma is not None else None
    config = run_config(args, classifier, data, attack=args.attack, attack_options=dataclasses.asdict(atk.config),
                        queries=args.queries, sigma=args.sigma, n=args.n, criterion=criterion, p_a=args.pa,
                        seed=args.seed, batch_size=args.batch_size, **extra)
    fields = IMAGE_FIELDS
    if args.verify_pa is not None:
        config.update(verify_pa=[float(p) for p in args.verify_pa], verify_calls=args.verify_calls)
        fields = IMAGE_FIELDS + ("verified",)
    setting = {"arch": classifier.spec.name, "checkpoint": str(args.checkpoint),
               "checkpoint_sha256": config["checkpoint_sha256"], "data": data.spec, "attack": args.attack,
               "queries": args.queries, "sigma": args.sigma, "n": args.n, "criterion": criterion,
               "p_a": args.pa, "seed": args.seed}
    tag = config_hash(config)
    key = lambda index: record_key(config=tag, image=index)  # noqa: E731
    store = open_store(out_path, config) if out_path else None
    ids = [int(i) for i in data.ids]
    done = {}
    if store is not None:
        by_key = {r["key"]: r for r in store}
        done = {i: {k: by_key[key(i)][k] for k in fields} for i in ids if key(i) in by_key}
    resumed = len(done)
    if args.sigma is not None and args.verify_pa is None:
        log("note: distortions are raw (a point g answered 'adversarial' once, not an adversarial example of "
            "the random g); --verify-pa 0.5 reports verified ones")
    log(f"{args.attack} on {len(data)} images of {data.spec}, {args.queries} queries, oracle {oracle.name}"
        + (f" (resuming: {resumed} already in {args.out})" if resumed else ""))

    def write(images: list[dict]) -> None:
        if store is not None:
            store.append([{"key": key(im["index"]), **setting, **im} for im in images])

    t0 = time.perf_counter()
    attack_missing(args, atk, oracle, data, done, write)
    wall = time.perf_counter() - t0
    images = [done[i] for i in ids]
    summary = summarize_images(atk.name, images, args.queries, dataclasses.asdict(atk.config))
    computed = len(ids) - resumed
    summary.update({
        "wall_s": wall, "wall_s_per_image": wall / computed if computed else None, "n_resumed": resumed,
        "data": data.spec, "checkpoint": str(args.checkpoint), "arch": classifier.spec.name,
        "oracle": oracle.name, "sigma": args.sigma, "n": args.n, "criterion": criterion, "p_a": args.pa,
        "seed": args.seed, "config": dataclasses.asdict(atk.config),
    })
    if args.verify_pa is not None:
        summary["verified"] = summarize_verified(images, [float(p) for p in args.verify_pa])
        summary["verify_calls"] = args.verify_calls
    for k in list(summary):
        if isinstance(summary[k], float):
            summary[k] = _finite(summary[k])
    return {"summary": summary, "images": images}


def run(args: argparse.Namespace) -> int:
    out = attack(args)
    if args.out:
        s = out["summary"]
        log(f"{s['n_images'] - s['n_resumed']} new records appended to {args.out} ({s['n_resumed']} kept)")
    if args.json:
        emit_json(out)
        return 0
    s = out["summary"]
    for im in out["images"]:
        l2 = "-" if im["l2"] is None else f"{im['l2']:.4f}"
        linf = "-" if im["linf"] is None else f"{im['linf']:.5f}"
        ver = "".join(f" verified@{v['p_a']:g} l2 {'-' if v['l2'] is None else format(v['l2'], '.4f')}"
                      for v in im.get("verified", []))
        print(f"image {im['index']:5d} label {im['label']:3d} {im['status']:13s} l2 {l2:>8s} "
              f"linf {linf:>8s} queries {im['queries']:6d} evaluations {im['evaluations']:9d}{ver}")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"{s['attack']} vs {s['oracle']}: {s['n_attacked']} attacked, {s['n_misclassified']} misclassified, "
          f"{s['n_no_start']} without start; success rate {fmt(s['success_rate'], '.3f')}; "
          f"median L2 {fmt(s['median_l2'], '.4f')}, mean L2 {fmt(s['mean_l2'], '.4f')}; "
          f"max queries used {s['max_queries_used']}/{s['max_queries']}; "
          f"{fmt(s['wall_s_per_image'], '.3f')} s/image")
    for v in s.get("verified", []):
        print(f"verified at P_a = {v['p_a']:g}: {v['n_verified']}/{v['n_attacked']} attacked images; median "
              f"verified L2 {fmt(v['median_l2'], '.4f')} [95 % {fmt(v['median_l2_low'], '.4f')}, "
              f"{fmt(v['median_l2_high'], '.4f')}] (unverified = inf, shown -)")
    return 0

"""``rsjax certify``: Cohen's CERTIFY on each image of a data set, written as Cohen's log
(``idx label predict radius correct time``, see :mod:`rsjax.certification`), with a summary
(certified accuracy at a few radii, abstention rate, seconds per image).

Resume: the log is written batch by batch (flushed and fsynced), and its configuration
(checkpoint digest, data, sigma, n0, n, alpha, seed, batch and chunk sizes) goes to the sidecar
``LOG.config.json`` (:func:`rsjax.results.bind_results_file`), so the log itself stays
byte-compatible with locuslab/smoothing's. Rerunning the same command on a killed run's log
cuts a torn last line, keeps the rows already written and computes only the images missing;
another configuration on the same log is refused (exit 2). Images are processed in the batches
of an uninterrupted run (batch k = images k*B..(k+1)*B-1 of the selection) and image ``idx``
draws its noise from ``fold_in(key(seed), idx)``, so a resumed log has the same rows (all but
``time``) as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from rsjax.cli.common import (add_data_args, add_memory_args, apply_memory_args, check_writable, emit_json,
                              load_data_for, log, run_config)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "certify",
        help="certified radii of the smoothed classifier (Cohen's CERTIFY)",
        description="For each image: n0 noisy samples pick the class c_A, n fresh samples give a "
        "one-sided Clopper-Pearson lower bound p_A of P[f(x+sigma N) = c_A]; abstain if p_A < 1/2, "
        "else certify the L2 radius sigma * Phi^-1(p_A). The log is written as images finish; "
        "rerunning the same command on it resumes (its configuration is kept in LOG.config.json).",
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
    p.add_argument("--out", required=True, metavar="LOG",
                   help="tab-separated per-image log; an existing log of the same configuration is resumed")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    add_memory_args(p)
    p.set_defaults(func=run)


def _parse_row(path: Path, lineno: int, line: str):
    """One log line as a CertifyRow; InputError naming ``path:lineno`` if malformed."""
    from rsjax.certification import LOG_HEADER, CertifyRow
    from rsjax.errors import InputError

    parts = line.split("\t")
    try:
        if len(parts) != len(LOG_HEADER):
            raise ValueError(f"{len(parts)} fields")
        idx, label, predict, radius, correct, seconds = parts
        return CertifyRow(int(idx), int(label), int(predict), float(radius), int(correct), float(seconds))
    except ValueError:
        raise InputError(f"{path}:{lineno}: not a row of a certify log "
                         f"({len(LOG_HEADER)} tab-separated fields {' '.join(LOG_HEADER)}): {line!r}") from None


def read_log_rows(path: Path) -> list:
    """The complete rows already in the log ``path`` (none if it is absent or empty), without
    changing the file; a torn last line (no newline) is ignored. InputError if ``path`` is not a
    certify log."""
    from rsjax.certification import LOG_HEADER
    from rsjax.errors import InputError

    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace").splitlines()
    if not lines:
        return []
    if lines[0].split("\t") != list(LOG_HEADER):
        raise InputError(f"{path} exists and is not a certify log (first line {lines[0][:80]!r}, expected "
                         f"{chr(9).join(LOG_HEADER)!r}); choose another --out or delete it")
    return [_parse_row(path, i, line) for i, line in enumerate(lines[1:], start=2) if line.strip()]


def prepare_log(path: Path) -> None:
    """Cut a torn last line off the log and write the header if the log is empty or absent."""
    from rsjax.certification import LOG_HEADER

    data = path.read_bytes() if path.is_file() else b""
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b" if path.is_file() else "wb") as f:
        f.truncate(cut)
        if cut == 0:
            f.write(("\t".join(LOG_HEADER) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def append_rows(path: Path, rows) -> None:
    """Append the rows' lines to the log in one write, flushed and fsynced."""
    if rows:
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(row.line() + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())


def rows_by_idx(rows, ids) -> dict:
    """idx -> the first row of that idx, for the idx in ``ids`` only."""
    wanted = {int(i) for i in ids}
    out: dict = {}
    for row in rows:
        if row.idx in wanted:
            out.setdefault(row.idx, row)
    return out


def certify_missing(args, classifier, data, chunk: int, done: dict, out: Path) -> int:
    """CERTIFY the batches (of ``--batch-size`` consecutive images of ``data``) that hold an
    image not in ``done`` (idx -> row), append their new rows to ``out`` batch by batch and add
    them to ``done``; returns the number of images computed."""
    from rsjax.certification import certify_dataset

    computed = 0
    ids = [int(i) for i in data.ids]
    for s in range(0, len(ids), args.batch_size):
        batch = slice(s, s + args.batch_size)
        if all(i in done for i in ids[batch]):
            continue
        rows = certify_dataset(classifier, data.images[batch], data.labels[batch], args.sigma, args.n0, args.n,
                               args.alpha, seed=args.seed, batch_size=args.batch_size, chunk_size=chunk,
                               image_ids=data.ids[batch])
        new = [r for r in rows if r.idx not in done]
        append_rows(out, new)
        done.update((r.idx, r) for r in new)
        computed += len(new)
    return computed


def run(args: argparse.Namespace) -> int:
    from rsjax.certification import summarize
    from rsjax.classifier import Classifier
    from rsjax.errors import check_int_at_least, check_open_unit, check_positive
    from rsjax.results import bind_results_file
    from rsjax.smoothing import DEFAULT_CHUNK_SIZE

    check_positive("--sigma", args.sigma)
    check_int_at_least("--n0", args.n0, 1)
    check_int_at_least("--n", args.n, 1)
    check_open_unit("--alpha", args.alpha)
    check_int_at_least("--batch-size", args.batch_size, 1)
    chunk = DEFAULT_CHUNK_SIZE if args.chunk_size is None else check_int_at_least("--chunk-size", args.chunk_size, 1)
    out = check_writable(args.out)
    classifier = Classifier.from_checkpoint(args.checkpoint)
    data = load_data_for(args, classifier)
    classifier, chunk, _, extra = apply_memory_args(args, classifier, data, chunk, sigmas=(args.sigma,),
                                                    batch_images=args.batch_size)
    config = run_config(args, classifier, data, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                        seed=args.seed, batch_size=args.batch_size, chunk_size=chunk, **extra)
    existing = read_log_rows(out)
    bind_results_file(out, config, has_results=bool(existing))
    prepare_log(out)
    done = rows_by_idx(existing, data.ids)
    resumed = len(done)
    log(f"certify {classifier.spec.name} on {len(data)} images of {data.spec}: sigma={args.sigma} "
        f"n0={args.n0} n={args.n} alpha={args.alpha} -> {args.out}"
        + (f" (resuming: {resumed} already in the log)" if resumed else ""))
    certify_missing(args, classifier, data, chunk, done, out)
    # the summary is a function of the log as written (rows read back), resumed or not
    final = rows_by_idx(read_log_rows(out), data.ids)
    rows = [final[int(i)] for i in data.ids]
    summary = {"checkpoint": str(args.checkpoint), "data": data.spec, "sigma": args.sigma, "n0": args.n0,
               "n": args.n, "alpha": args.alpha, "seed": args.seed, "log": str(args.out),
               "resumed": resumed, **summarize(rows)}
    if args.json:
        emit_json(summary)
    else:
        accs = ", ".join(f"r={r}: {a:.3f}" for r, a in summary["certified_accuracy"].items())
        print(f"certified accuracy {accs}; abstained {summary['abstention_rate']:.3f}; "
              f"{summary['seconds_per_image']:.3f} s/image; log {args.out}")
    return 0

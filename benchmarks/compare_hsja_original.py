"""rsjax HSJA next to the authors' own HopSkipJump code on the same images, model and budget.

The authors' numpy implementation (Jianbo-Lab/HSJA, file ``hsja.py``) is not part of rsjax:
pass the path of your checkout's ``hsja.py`` with ``--original``. It is imported unmodified and
run one image at a time, as its ``main.py`` does, against the same converted CIFAR-10 ResNet-20
(rsjax's jitted forward pass stands in for the Keras model: the attack only sees labels). Every
row given to the model counts as one query (the clean-image check, the start search and every
probe); the run stops when the next call would exceed ``--queries``. The distortion "at q
queries" of the original is the L2 of its current boundary point after the last binary search
completed within q queries -- the same reading rsjax's trace gives.

It prints, for each seed, the median L2 at 500 / 1,000 / 2,000 queries of both codes over the
images of ``bench_attacks.py`` (first ``--per-class`` correct images of each class), and the
geometric mean of the per-image ratio rsjax / original with its standard error: the paired
comparison, much less noisy than the medians (which move by 10-15 % from one seed to the next).

    .venv/bin/python benchmarks/compare_hsja_original.py --original /path/to/HSJA/hsja.py --seeds 0 1
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attacks import MILESTONES, SHARED, TARGETS, get_checkpoint, pick_images  # noqa: E402
from rsjax.xla_options import jit  # noqa: E402


class _BudgetReached(Exception):
    pass


class _CountingModel:
    """``predict`` of the original's model interface on rsjax's jitted forward, counting rows."""

    def __init__(self, forward, budget: int):
        self.forward, self.budget, self.queries = forward, budget, 0

    def predict(self, images):
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[None]
        if self.queries + len(images) > self.budget:
            raise _BudgetReached
        self.queries += len(images)
        return np.concatenate([np.asarray(self.forward(images[i:i + 512])) for i in range(0, len(images), 512)])


def run_original(module, forward, x: np.ndarray, budget: int, seed: int) -> dict[int, float]:
    """Best L2 after each completed binary search of the original, read at the milestones."""
    np.random.seed(seed)
    model = _CountingModel(forward, budget)
    trace: list[tuple[int, float]] = []
    search = module.binary_search_batch

    def traced(*args, **kwargs):
        out, dist = search(*args, **kwargs)
        trace.append((model.queries, float(np.linalg.norm(out - x))))
        return out, dist

    module.binary_search_batch = traced
    try:
        module.hsja(model, x.astype(np.float64), num_iterations=10**6, verbose=False)
    except _BudgetReached:
        pass
    finally:
        module.binary_search_batch = search
    return {q: min([d for qq, d in trace if qq <= q], default=np.inf) for q in MILESTONES if q <= budget}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--original", required=True, help="path to Jianbo-Lab/HSJA's hsja.py")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--data", default=str(SHARED / "data/cifar10/test_jpeg.npz"))
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--batch-size", type=int, default=80)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if not Path(args.original).is_file():
        sys.exit(f"--original {args.original}: no such file (clone https://github.com/Jianbo-Lab/HSJA)")
    if not Path(args.data).exists():
        print(f"{args.data} not found: skipped")
        return 0
    if args.workdir is None:
        import tempfile

        args.workdir = str(Path(tempfile.gettempdir()) / "rsjax_bench")
    spec = importlib.util.spec_from_file_location("hsja_original", args.original)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    import jax

    from rsjax.attacks import get_attack
    from rsjax.classifier import Classifier
    from rsjax.data import load_dataset
    from rsjax.oracle import ModelOracle

    clf = Classifier.from_checkpoint(get_checkpoint(args))
    data = load_dataset(f"npz:{args.data}")
    idx = pick_images(clf, data.images, data.labels, args.per_class)
    x, y = data.images[idx], data.labels[idx]
    forward = jit(clf.logits_fn)
    oracle = ModelOracle(clf.logits_fn, clf.num_classes, name=clf.spec.name)
    qs = [q for q in MILESTONES if q <= args.queries]
    out = {"images": idx.tolist(), "seeds": {}}
    for seed in args.seeds:
        t = time.perf_counter()
        ours = get_attack("hsja").run(oracle, x, y, seed, args.queries, image_ids=idx, batch_size=args.batch_size)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs = [run_original(module, forward, x[i], args.queries, seed * 1_000_003 + int(idx[i])) for i in range(len(idx))]
        t_theirs = time.perf_counter() - t
        row = {"wall_s": {"rsjax": t_ours, "original": t_theirs}}
        print(f"\nseed {seed}: {len(idx)} images, {args.queries} queries; wall rsjax {t_ours:.0f} s (batch "
              f"{args.batch_size}), original {t_theirs:.0f} s (one image at a time)")
        print("| queries | rsjax median L2 | original median L2 | issue's target | geo-mean ratio rsjax/original (± s.e.) | rsjax worse on |")
        print("|---|---|---|---|---|---|")
        for k, q in enumerate(qs):
            a = ours.distortion_at(q, "l2")
            b = np.array([r[q] for r in theirs])
            ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
            lr = np.log(a[ok] / b[ok])
            gm, se = float(np.exp(lr.mean())), float(np.exp(lr.std(ddof=1) / np.sqrt(ok.sum())))
            row[q] = {"rsjax": float(np.median(a)), "original": float(np.median(b)), "geo_ratio": gm, "se_factor": se,
                      "rsjax_worse": float((a[ok] > b[ok]).mean()), "rsjax_l2": a.tolist(), "original_l2": b.tolist()}
            print(f"| {q} | {np.median(a):.3f} | {np.median(b):.3f} | {TARGETS['hsja']['l2'][k]:.2f} | "
                  f"{gm:.3f} (×/÷ {se:.3f}) | {(a[ok] > b[ok]).mean():.0%} of images |")
        out["seeds"][seed] = row
    if len(args.seeds) > 1:
        print("\nmean over seeds of the median L2: " + ", ".join(
            f"q={q}: rsjax {np.mean([out['seeds'][s][q]['rsjax'] for s in args.seeds]):.3f}, original "
            f"{np.mean([out['seeds'][s][q]['original'] for s in args.seeds]):.3f}" for q in qs))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

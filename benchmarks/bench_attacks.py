"""Faithfulness and speed of rsjax's decision-based attacks on a real model.

Default: the converted CIFAR-10 ResNet-20 (``rsjax convert --arch cifar_resnet20 --weights
../shared/data/cifar10/resnet20-12fca82f.th``; converted on the fly into --workdir when
--checkpoint is not given), the first ``--per-class`` correctly classified images of each class
of ``../shared/data/cifar10/test_jpeg.npz`` (10 x 8 = 80 by default), no randomized smoothing.

For each attack it prints the median L2 (and L-inf for RayS) distortion reached within 500 /
1,000 / 2,000 queries (every query counted, clean-image check and start search included; read
from the best-distortion trace of one run of --queries), the wall time per image (batch wall
time / images, compilation excluded by an identical untimed warm-up run), and the model
evaluations per second inside the attack next to the raw jitted forward pass of the same model
on a batch of the attack's typical size.

Targets (authors' implementations on such images): HSJA 0.72 / 0.26 / 0.15,
SurFree 0.55 / 0.45 / 0.40, RayS L2 0.66 / 0.40 / 0.28 and L-inf 0.0120 / 0.0073 / 0.0052.

    .venv/bin/python benchmarks/bench_attacks.py [--attacks hsja rays] [--per-class 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RSJAX_SHARED", REPO.parent / "shared"))
TARGETS = {
    "hsja": {"l2": (0.72, 0.26, 0.15)},
    "surfree": {"l2": (0.55, 0.45, 0.40)},
    "rays": {"l2": (0.66, 0.40, 0.28), "linf": (0.0120, 0.0073, 0.0052)},
}
MILESTONES = (500, 1000, 2000)


def get_checkpoint(args) -> str:
    if args.checkpoint:
        return args.checkpoint
    out = Path(args.workdir) / "cifar_resnet20.ckpt"
    if not out.exists():
        weights = SHARED / "data/cifar10/resnet20-12fca82f.th"
        if not weights.exists():
            sys.exit(f"no --checkpoint and no {weights}: nothing to benchmark")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(REPO / ".venv/bin/rsjax"), "convert", "--arch", "cifar_resnet20", "--weights",
                        str(weights), "--out", str(out)], check=True)
    return str(out)


def pick_images(classifier, images, labels, per_class: int):
    """First ``per_class`` correctly classified images of each class (in test-set order)."""
    chosen = []
    need = {c: per_class for c in range(classifier.num_classes)}
    for lo in range(0, len(images), 1000):
        pred = classifier.predict(images[lo : lo + 1000], batch_size=1000)
        for i in np.flatnonzero(pred == labels[lo : lo + 1000]) + lo:
            c = int(labels[i])
            if need[c] > 0:
                need[c] -= 1
                chosen.append(i)
        if not any(need.values()):
            break
    return np.sort(np.array(chosen))


def load_problem(args):
    """(classifier, image indices, images, labels, ModelOracle) of ``args`` (``--checkpoint`` /
    ``--workdir``, ``--data``, ``--per-class``), or None (after saying so) when the data is absent."""
    from rsjax.classifier import Classifier
    from rsjax.data import load_dataset
    from rsjax.oracle import ModelOracle

    if not Path(args.data).exists():
        print(f"{args.data} not found: skipped")
        return None
    classifier = Classifier.from_checkpoint(get_checkpoint(args))
    data = load_dataset(f"npz:{args.data}")
    idx = pick_images(classifier, data.images, data.labels, args.per_class)
    oracle = ModelOracle(classifier.logits_fn, classifier.num_classes, name=classifier.spec.name)
    return classifier, idx, data.images[idx], data.labels[idx], oracle


def raw_forward_rate(classifier, batch: int, repeats: int = 5) -> float:
    """Jitted forward passes per second on batches of ``batch`` images (after warm-up)."""
    import jax
    import jax.numpy as jnp

    from rsjax.xla_options import jit

    f = jit(classifier.logits_fn)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, *classifier.input_shape)), jnp.float32)
    f(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        f(x).block_until_ready()
    return batch * repeats / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rsjax_bench"))
    p.add_argument("--data", default=str(SHARED / "data/cifar10/test_jpeg.npz"))
    p.add_argument("--attacks", nargs="+", default=["hsja", "rays", "surfree"])
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=80)
    p.add_argument("--warmup-queries", type=int, default=0,
                   help="budget of the untimed warm-up run on the same batch; 0 (default): the full "
                        "budget and seed, so every program the timed run needs (one per batch bucket "
                        "the driver compacts to as images finish) is compiled; a small budget "
                        "compiles only the full-batch bucket")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="write all numbers to this JSON file")
    args = p.parse_args(argv)

    import jax

    from rsjax.attacks import get_attack

    problem = load_problem(args)
    if problem is None:
        return 0
    classifier, idx, x, y, oracle = problem
    print(f"model {classifier.spec.name}, {len(idx)} correctly classified images "
          f"(classes {np.bincount(y, minlength=classifier.num_classes).tolist()}), "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(os.sched_getaffinity(0))} of "
          f"{os.cpu_count()} CPUs usable, load average {os.getloadavg()[0]:.2f}")

    results = {"images": idx.tolist(), "attacks": {}}
    for name in args.attacks:
        try:
            attack = get_attack(name)
        except ImportError as e:
            print(f"{name}: not available ({e})")
            continue
        t = time.perf_counter()
        warm_q = args.warmup_queries or args.queries
        attack.run(oracle, x, y, args.seed, warm_q, image_ids=idx, batch_size=args.batch_size)
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        res = attack.run(oracle, x, y, args.seed, args.queries, image_ids=idx, batch_size=args.batch_size)
        wall = time.perf_counter() - t
        att = res.status == "attacked"
        row = {"compile_s": compile_s, "wall_s": wall, "wall_s_per_image": wall / len(idx),
               "n_attacked": int(att.sum()), "status": {s: int((res.status == s).sum()) for s in set(res.status)},
               "max_queries_used": int(res.queries.max()), "evaluations": int(res.evaluations.sum()),
               "evals_per_s": float(res.evaluations.sum() / wall)}
        for norm in ("l2", "linf"):
            row[f"median_{norm}"] = {q: float(np.median(res.distortion_at(q, norm)[att])) for q in MILESTONES
                                     if q <= args.queries}
        row["per_image"] = {str(q): {norm: res.distortion_at(q, norm).tolist() for norm in ("l2", "linf")}
                            for q in MILESTONES if q <= args.queries}
        results["attacks"][name] = row
        print(f"\n{name}: {len(idx)} images, {args.queries} queries, wall {wall:.1f} s "
              f"({wall / len(idx):.3f} s/image; compile+warm-up {compile_s:.1f} s), statuses {row['status']}, "
              f"max queries used {row['max_queries_used']}")
        print(f"  {'queries':>8s} {'median L2':>10s} {'target':>8s} {'ratio':>6s} {'median Linf':>12s} {'target':>8s} {'ratio':>6s}")
        for k, q in enumerate(MILESTONES):
            if q > args.queries:
                continue
            l2, li = row["median_l2"][q], row["median_linf"][q]
            tl2 = TARGETS.get(name, {}).get("l2", (np.nan,) * 3)[k]
            tli = TARGETS.get(name, {}).get("linf", (np.nan,) * 3)[k]
            print(f"  {q:8d} {l2:10.4f} {tl2:8.4f} {l2 / tl2:6.2f} {li:12.5f} {tli:8.4f} {li / tli:6.2f}")
    # raw forward at the attacks' own call sizes: B (one query per image) and 50 B (HSJA probes)
    rates = {bs: raw_forward_rate(classifier, bs) for bs in (args.batch_size, 50 * args.batch_size)}
    results["raw_forward_per_s"] = rates
    print("\nraw jitted forward: " + ", ".join(f"{r:,.0f} images/s at batch {bs}" for bs, r in rates.items()))
    rate = max(rates.values())
    for name, row in results["attacks"].items():
        print(f"  {name}: {row['evals_per_s']:,.0f} evaluations/s inside the attack = "
              f"{row['evals_per_s'] / rate:.0%} of the best raw forward rate (same shared machine, "
              f"measured minutes apart: indicative only)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

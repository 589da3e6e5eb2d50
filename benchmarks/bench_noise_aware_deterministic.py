"""What the noise-aware attacks cost when there is no noise (issue 16): each noise-aware attack
beside its plain version on the deterministic CIFAR-10 ResNet-20, same images, same budget.

Images: the first ``--per-class`` correctly classified test images of each class (10 x 8 = 80 by
default, as ``bench_attacks.py``), no randomized smoothing (``ModelOracle``), seed 0, 1,000
queries, batch 80. The noise-aware attacks end on a boundary *estimate* (their last probabilistic
bisection), which on a deterministic model may sit a grid cell on the clean side, so every final
output -- plain and noise-aware alike -- is verified by the same evaluator
(``rsjax.verify.verify_attack``: the point itself when adversarial, else the nearest adversarial
point outward on its ray x_o + t (x_a - x_o), t >= 1, to 1 %). Reported: the median verified
distortion of each attack (L2; L-inf too for the RayS pair, RayS's own metric), and the ratio
noise-aware / plain of the medians with a paired bootstrap 95 % interval over images (an image
never verified counts as infinite distortion). The issue's requirement: ratio <= 1.10.

Wall times are per image for the batch of 80, compilation included (one run each; no warm-up:
the point here is distortion, ``bench_attacks.py`` times the plain attacks warm).

    .venv/bin/python benchmarks/bench_noise_aware_deterministic.py [--checkpoint R20.ckpt]
        [--per-class 8] [--queries 1000] [--pairs psj rays_na surfree_na] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attacks import SHARED, load_problem  # noqa: E402

PAIRS = {"psj": "hsja", "rays_na": "rays", "surfree_na": "surfree"}


def median_ratio_interval(num: np.ndarray, den: np.ndarray, reps: int = 2000, seed: int = 0):
    """median(num) / median(den) and its paired percentile-bootstrap 95 % interval (images
    resampled together; inf medians give inf ratios)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(reps, len(num)))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.median(num[idx], axis=1) / np.median(den[idx], axis=1)
        point = np.median(num) / np.median(den)
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="converted ResNet-20 (else converted into --workdir)")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rsjax_bench"))
    p.add_argument("--data", default=str(SHARED / "data/cifar10/test_jpeg.npz"))
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    import jax

    from rsjax.attacks import get_attack
    from rsjax.verify import verify_attack

    problem = load_problem(args)
    if problem is None:
        return 0
    classifier, idx, x, y, oracle = problem
    print(f"model {classifier.spec.name}, {len(idx)} correctly classified images, {args.queries} queries, "
          f"seed {args.seed}, jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f}")

    out = {"images": idx.tolist(), "queries": args.queries, "seed": args.seed, "attacks": {}, "pairs": {}}
    dist = {}
    for na in args.pairs:
        for name in (PAIRS[na], na):
            if name in dist:
                continue
            t = time.perf_counter()
            res = get_attack(name).run(oracle, x, y, args.seed, args.queries, image_ids=idx,
                                       batch_size=args.batch_size)
            wall = time.perf_counter() - t
            ver = verify_attack(oracle, x, res.x_adv, y, 0.5, jax.random.key(101), image_ids=idx)
            dist[name] = {"l2": ver.l2, "linf": ver.linf}
            raw_adv = int((res.status == "attacked").sum())
            out["attacks"][name] = {
                "wall_s_per_image_with_compile": wall / len(idx), "max_queries_used": int(res.queries.max()),
                "statuses": {s: int((res.status == s).sum()) for s in set(res.status)},
                "verified": int(ver.verified.sum()), "raw_l2": res.l2.tolist(),
                "verified_l2": ver.l2.tolist(), "verified_linf": ver.linf.tolist(),
                "median_verified_l2": float(np.median(ver.l2)), "median_verified_linf": float(np.median(ver.linf))}
            print(f"{name:11s} wall {wall / len(idx):6.3f} s/image (compile included), attacked {raw_adv}/{len(idx)}, "
                  f"verified {int(ver.verified.sum())}/{len(idx)}, max queries {int(res.queries.max())}, "
                  f"median verified L2 {np.median(ver.l2):.4f}  Linf {np.median(ver.linf):.5f}", flush=True)
    print(f"\n| pair | metric | plain median | noise-aware median | ratio [95 % bootstrap] | <= 1.10 |")
    print("|---|---|---|---|---|---|")
    for na in args.pairs:
        plain = PAIRS[na]
        for norm in (("l2", "linf") if na == "rays_na" else ("l2",)):
            r, lo, hi = median_ratio_interval(dist[na][norm], dist[plain][norm])
            out["pairs"][f"{na}/{plain}/{norm}"] = {"ratio": r, "low": lo, "high": hi}
            print(f"| {plain} -> {na} | {norm} | {np.median(dist[plain][norm]):.4f} | {np.median(dist[na][norm]):.4f} "
                  f"| {r:.3f} [{lo:.3f}, {hi:.3f}] | {'yes' if r <= 1.10 else 'NO'} |")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

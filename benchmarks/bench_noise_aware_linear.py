"""Noise-aware attacks beside their plain versions on the exact linear classifier under RS
(issue 16): verified distortion after a query budget, divided by eq. (6)'s exact level-P_a
distance, on the same images.

The problem is ``linear_rs_problem`` of ``tests/test_noise_aware.py`` (f(x) = [w.x + b > 0],
||w|| = 1, images at L2 distance ``r_o`` in [0.3, 0.45] inside class 0, 6x6 -- 8x8 with w in
SurFree's DCT subspace for the SurFree pair), g_{sigma,n} with sigma = 0.25 and the label
criterion. Every output is verified (rsjax.verify.verify_attack, P_a = 1/2, ``--verify-calls``
calls a tested point) and divided by eq. (6) (in L-inf for RayS: times ||w||_2 / ||w||_1).

The row "verifier floor" verifies the ideal output (the level-1/2 point itself, along w): the
evaluator accepts only points whose level it has shown to be >= 1/2, so even a perfect attack is
reported above 1 (by the test's tolerance; it shrinks with ``--verify-calls``).

    .venv/bin/python benchmarks/bench_noise_aware_linear.py --n 1 10 --images 8 --seeds 0 1

Several ``--queries`` give the budget curve (each budget is a separate run of the attack, as a
user with that budget would run it; the verifier floor does not depend on the budget).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PAIRS = {"psj": "hsja", "rays_na": "rays", "surfree_na": "surfree"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1, 10])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--queries", type=int, nargs="+", default=[1000])
    p.add_argument("--attacks", nargs="+", default=list(PAIRS))
    p.add_argument("--verify-calls", type=int, default=800)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    import jax

    from rsjax.attacks import get_attack
    from rsjax.models.linear import linear_logits_fn
    from rsjax.oracle import SmoothedOracle
    from rsjax.verify import VerifyConfig, verify_attack
    from test_noise_aware import SIGMA, exact_level_distance, linear_rs_problem, metric_of

    cfg = VerifyConfig(calls=args.verify_calls)
    out: dict = {}
    print(f"{args.images} images x seeds {args.seeds}, queries {args.queries}, sigma {SIGMA}, P_a = 1/2, "
          f"verifier {args.verify_calls} calls a point")
    print("| n | attack | queries | median verified / eq. (6) | quartiles | max | within 10 % | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.n:
        for na in args.attacks:
            runs = [(name, q) for name in (na, PAIRS[na]) for q in args.queries] + [("verifier floor", None)]
            for name, queries in runs:
                ratios, wall = [], 0.0
                for seed in args.seeds:
                    x, y, w, b, r = linear_rs_problem(na, r_o=np.linspace(0.3, 0.45, args.images), seed=seed)
                    exact = exact_level_distance(na, r, w, n)
                    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, n)
                    if name == "verifier floor":  # the closest level-1/2 point: along w (L2), sign(w) (L-inf)
                        u = w if metric_of(na) == "l2" else np.sign(w)
                        x_adv = (x + exact[:, None, None, None] * u[None]).astype(np.float32)
                    else:
                        t = time.perf_counter()
                        x_adv = get_attack(name).run(oracle, x, y, seed, queries, check_clean=False).x_adv
                        wall += time.perf_counter() - t
                    ver = verify_attack(oracle, x, x_adv, y, 0.5, jax.random.key(101), config=cfg)
                    ratios.append((ver.linf if metric_of(na) == "linf" else ver.l2) / exact)
                ratio = np.concatenate(ratios)
                q1, q3 = np.quantile(ratio, [0.25, 0.75])
                out[f"n={n},{na},{name}" + (f",{queries}" if queries else "")] = ratio.tolist()
                print(f"| {n} | {name} | {queries or '-'} | {np.median(ratio):.3f} | {q1:.3f} - {q3:.3f} | {ratio.max():.3f} | "
                      f"{(ratio <= 1.1).mean():.0%} | {wall:.0f} |", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

The column "exact" is what a verifier with infinitely many calls would report, in closed form:
along the evaluator's ray x(t) = clip(x + t (x_adv - x)), t >= 1, the first t whose margin
w.x(t) + b reaches the level-1/2 margin of eq. (6) (the level of g_{sigma,n} depends on x only
through the margin, monotonically), so the ratio separates the attack's output from the
verifier's tolerance (the ideal output's exact ratio is 1).

``--noise-free`` adds, for every attack and budget, a run against the *deterministic* classifier
whose boundary is g_{sigma,n}'s level-1/2 set, f_T(x) = [w.x + b > T] with T = sigma
Phi^{-1}(1 - t) of eq. (6) (a plain ``ModelOracle``; one answer = the exact level test), read
with the exact column: what the attack's search achieves when every answer is free of noise,
i.e. the best any noise-aware variant of that search can do at that budget. Its output is
verified against g_{sigma,n} like every other (the verified column: what the issue's measurement
reports for a search whose every answer was exact).

    .venv/bin/python benchmarks/bench_noise_aware_linear.py --n 1 10 --images 8 --seeds 0 1

``--set KEY=VALUE`` (repeatable) overrides a config field of the noise-aware attacks only (the
plain ones keep their defaults; a row's name then carries the settings), to measure a variant on
the same problem and images as the defaults, e.g. ``--attacks psj --set max_probe_rms=0.5``.

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


def parse_overrides(items: list[str]) -> dict:
    """``["grid=1024", "opposite=0.0"]`` -> ``{"grid": 1024, "opposite": 0.0}`` (values read as
    Python literals by :func:`rsjax.cli.common.parse_option`)."""
    from rsjax.cli.common import parse_option

    return dict(parse_option(item, "--set") for item in items)


def exact_ray_distortion(x, x_adv, w, b, r, exact_l2, metric: str, t_max: float = 1e6,
                         steps: int = 20_000) -> np.ndarray:
    """Per image: the distortion (L2 or L-inf) of the first point of the clipped ray
    clip(x + t (x_adv - x)), t in [1, t_max], whose margin reaches -r + exact_l2 (the level-1/2
    margin: eq. (6)'s distance along w raises the margin by exactly that much), found on a
    geometric grid of ``steps`` values of t refined by bisection; inf if the ray never reaches it."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    v = np.asarray(x_adv, np.float64).reshape(len(x), -1) - x
    wf = np.asarray(w, np.float64).ravel()
    target = -np.asarray(r, np.float64) + np.asarray(exact_l2, np.float64)
    out = np.full(len(x), np.inf)
    ts = np.geomspace(1.0, t_max, steps)
    for i in range(len(x)):
        if not np.any(v[i]):
            continue

        def point(t):
            return np.clip(x[i] + np.multiply.outer(t, v[i]), 0, 1)

        hit = np.flatnonzero(point(ts) @ wf + b >= target[i])
        if not len(hit):
            continue
        lo, hi = (ts[hit[0] - 1], ts[hit[0]]) if hit[0] else (1.0, 1.0)
        for _ in range(60 if hit[0] else 0):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if point(mid) @ wf + b >= target[i] else (mid, hi)
        delta = point(hi) - x[i]
        out[i] = np.abs(delta).max() if metric == "linf" else np.linalg.norm(delta)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1, 10])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--queries", type=int, nargs="+", default=[1000])
    p.add_argument("--attacks", nargs="+", default=list(PAIRS))
    p.add_argument("--verify-calls", type=int, default=800)
    p.add_argument("--noise-free", action="store_true",
                   help="also attack the deterministic classifier whose boundary is the level-1/2 set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config field of the noise-aware attacks (repeatable); the plain ones keep their defaults")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    tag = " (" + ", ".join(f"{k}={v!r}" for k, v in overrides.items()) + ")" if overrides else ""

    import jax

    from rsjax.attacks import get_attack
    from rsjax.models.linear import linear_logits_fn
    from rsjax.oracle import ModelOracle, SmoothedOracle
    from rsjax.theory import distortion_lower_bound
    from rsjax.verify import VerifyConfig, verify_attack
    from test_noise_aware import SIGMA, exact_level_distance, linear_rs_problem, metric_of

    cfg = VerifyConfig(calls=args.verify_calls)
    out: dict = {}
    print(f"{args.images} images x seeds {args.seeds}, queries {args.queries}, sigma {SIGMA}, P_a = 1/2, "
          f"verifier {args.verify_calls} calls a point")
    print("| n | attack | queries | median verified / eq. (6) | quartiles | max | within 10 % | exact: median | exact: within 10 % | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for na in args.attacks:  # an unknown field is refused before anything runs
        get_attack(na, **overrides)
    for n in args.n:
        for na in args.attacks:
            runs = [(name, q) for name in (na, PAIRS[na]) for q in args.queries] + [("verifier floor", None)]
            if args.noise_free:
                runs += [(name + ", noise-free", q) for name in (na, PAIRS[na]) for q in args.queries]
            for name, queries in runs:
                noise_free = name.endswith(", noise-free")
                ratios, exact_ratios, wall = [], [], 0.0
                for seed in args.seeds:
                    x, y, w, b, r = linear_rs_problem(na, r_o=np.linspace(0.3, 0.45, args.images), seed=seed)
                    exact = exact_level_distance(na, r, w, n)
                    exact_l2 = distortion_lower_bound(r, SIGMA, n, 0.5)
                    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, n)
                    if name == "verifier floor":  # the closest level-1/2 point: along w (L2), sign(w) (L-inf)
                        u = w if metric_of(na) == "l2" else np.sign(w)
                        x_adv = (x + exact[:, None, None, None] * u[None]).astype(np.float32)
                    else:
                        if noise_free:  # f_T: its boundary is the level-1/2 set (margin -r + exact_l2)
                            level_margin = float(np.median(exact_l2 - r))
                            attacked = ModelOracle(linear_logits_fn(w, b - level_margin), 2)
                        else:
                            attacked = oracle
                        t = time.perf_counter()
                        attack = name.split(",")[0]
                        x_adv = get_attack(attack, **(overrides if attack == na else {})).run(
                            attacked, x, y, seed, queries, check_clean=False).x_adv
                        wall += time.perf_counter() - t
                    exact_ratios.append(exact_ray_distortion(x, x_adv, w, b, r, exact_l2, metric_of(na)) / exact)
                    # every output, noise-free ones too, verified against g_{sigma,n} itself
                    ver = verify_attack(oracle, x, x_adv, y, 0.5, jax.random.key(101), config=cfg)
                    ratios.append((ver.linf if metric_of(na) == "linf" else ver.l2) / exact)
                exact_ratio = np.concatenate(exact_ratios)
                shown = name.replace(na, na + tag, 1) if name.startswith(na) else name
                key = f"n={n},{na},{shown}" + (f",{queries}" if queries else "")
                out[key + ",exact"] = exact_ratio.tolist()
                ratio = np.concatenate(ratios)
                out[key] = ratio.tolist()
                q1, q3 = np.quantile(ratio, [0.25, 0.75])
                verified_cells = (f"{np.median(ratio):.3f} | {q1:.3f} - {q3:.3f} | {ratio.max():.3f} | "
                                  f"{(ratio <= 1.1).mean():.0%}")
                print(f"| {n} | {shown} | {queries or '-'} | {verified_cells} | {np.median(exact_ratio):.3f} | "
                      f"{(exact_ratio <= 1.1).mean():.0%} | {wall:.0f} |", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What the evaluator costs next to the attacks, from a sweep directory's own records.

    python benchmarks/verification_cost.py runs/sweep-default-<hash>

Every attack record carries the wall time of its batch split into ``attack_seconds`` (the
attack itself) and ``verify_seconds`` (the evaluator: clean-image level tests and ray searches
at every P_a of the run), per image, plus the evaluator's calls (``verification_calls``, each a
full n-sample vote) and the attack's base-model evaluations. The table groups the attack runs by
(criterion, n) and prints the totals and the ratio verification / attack, in seconds and in
base-model evaluations (calls x n for the evaluator, with early-stopped votes counted as n: an
upper bound).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from rsjax.report import load_run

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    run = load_run(argv[0])
    # one attack run = (model, sigma, n, criterion, attack, k); its records share the batch times
    runs: dict[tuple, dict] = {}
    calls: dict[tuple, float] = defaultdict(float)
    for r in run["records"]:
        key = (r["model"], r["sigma"], r["n"], r["criterion"], r["attack"], r.get("k_wrong"), r["image"])
        runs[key] = r
        calls[key] += r.get("verification_calls", 0)
    agg: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0])
    for key, r in runs.items():
        a = agg[(r["criterion"], r["n"])]
        n = r["n"] or 1
        a[0] += r.get("attack_seconds", 0.0)
        a[1] += r.get("verify_seconds", 0.0)
        a[2] += r["evaluations"]
        a[3] += calls[key] * n
        a[4] += 1
    print("| criterion | n | image-runs | attack s | evaluator s | ratio (time) | attack evaluations | "
          "evaluator evaluations (<=) | ratio (evaluations) |")
    print("|---|---|---|---|---|---|---|---|---|")
    tot = [0.0, 0.0, 0.0, 0.0]
    for (crit, n), (ta, tv, ea, ev, cnt) in sorted(agg.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        print(f"| {crit} | {n if n is not None else '–'} | {cnt} | {ta:.1f} | {tv:.1f} | "
              f"{tv / ta if ta else float('nan'):.2f} | {ea:.3g} | {ev:.3g} | {ev / ea if ea else float('nan'):.2f} |")
        for i, v in enumerate((ta, tv, ea, ev)):
            tot[i] += v
    print(f"| all | | | {tot[0]:.1f} | {tot[1]:.1f} | {tot[1] / tot[0]:.2f} | {tot[2]:.3g} | {tot[3]:.3g} | "
          f"{tot[3] / tot[2]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

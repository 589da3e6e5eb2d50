"""Paired comparison of one attack between two sweep run directories that attacked the same images
with the same model (e.g. an attack's defaults against a variant set by ``--attack-option``).

For each setting (model, sigma, n, P_a; label criterion) and the images both runs attacked, with
x_i = run A's verified L2 and y_i = run B's (inf when the evaluator never verified the output):

* verified counts in each run;
* the median per-image ratio y_i / x_i over the images both verified, with its 95 % bootstrap
  interval (``rsjax.intervals``, over images);
* the paired difference of means (B - A) over those images, its 95 % interval and the verdict
  "B lower" (``holds``: the interval lies below 0), ``reversed`` (above 0) or ``undecided``;
* how many images B has lower / higher / equal.

The runs must be the same experiment apart from the attack: the same attacked images
(``images.json``) and, per image and setting, the same reference label, CERTIFY radius and clean
level on the compared records; otherwise the script exits with status 2 naming the difference.

    python experiments/compare_runs.py runs/na-default runs/na-variant --attack psj
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

IMAGE_FIELDS = ("reference", "radius", "clean_level")
#: record statuses of an attacked image: its output verified, or not ("unverified": inf)
ATTACKED = ("attacked", "unverified")
#: rsjax.intervals.verdict of the claim "B - A > 0", in this table's words
VERDICTS = {"holds": "B higher", "reversed": "B lower", "undecided": "undecided"}


class CompareError(ValueError):
    """The two runs are not the same experiment on the compared records."""


def _records(run: Path, attack: str) -> dict[tuple, dict]:
    from rsjax.results import read_records

    path = run / "records.jsonl"
    if not path.exists():
        raise CompareError(f"{run} has no records.jsonl: not a sweep run directory")
    return {(r["model"], r["sigma"], r["n"], r["p_a"], r["image"]): r for r in read_records(path)
            if r.get("attack") == attack and r.get("criterion", "label") == "label" and r.get("status") in ATTACKED}


def _verified(r: dict) -> float:
    v = r.get("verified_l2")
    return math.inf if v is None else float(v)


def compare(run_a: Path, run_b: Path, attack: str) -> list[dict]:
    """One row per setting (see the module docstring)."""
    from rsjax.intervals import median_interval, paired_difference_interval, verdict

    run_a, run_b = Path(run_a), Path(run_b)
    ia, ib = run_a / "images.json", run_b / "images.json"
    if ia.exists() and ib.exists():
        a_img, b_img = json.loads(ia.read_text())["attacked"], json.loads(ib.read_text())["attacked"]
        if a_img != b_img:
            raise CompareError(f"the runs attacked other images ({len(a_img)} vs {len(b_img)}; first "
                               f"{a_img[:3]} vs {b_img[:3]}): same --images and --seed needed")
    ra, rb = _records(run_a, attack), _records(run_b, attack)
    common = sorted(set(ra) & set(rb))
    if not common:
        raise CompareError(f"no image was attacked by {attack!r} in both {run_a} and {run_b}")
    for k in common:
        for f in IMAGE_FIELDS:
            if ra[k].get(f) != rb[k].get(f):
                raise CompareError(f"{attack} record {k}: field {f!r} is {ra[k].get(f)!r} in {run_a}, "
                                   f"{rb[k].get(f)!r} in {run_b}: not the same model or data")
    rows = []
    for setting in sorted({k[:4] for k in common}):
        keys = [k for k in common if k[:4] == setting]
        x = np.array([_verified(ra[k]) for k in keys])
        y = np.array([_verified(rb[k]) for k in keys])
        both = np.isfinite(x) & np.isfinite(y)
        xb, yb = x[both], y[both]
        row = {"model": setting[0], "sigma": setting[1], "n": setting[2], "p_a": setting[3], "images": len(keys),
               "verified_a": int(np.isfinite(x).sum()), "verified_b": int(np.isfinite(y).sum()),
               "both": int(both.sum()), "b_lower": int((yb < xb).sum()), "b_higher": int((yb > xb).sum()),
               "equal": int((yb == xb).sum())}
        if both.sum() >= 3:
            ratio = median_interval(yb / xb)
            diff = paired_difference_interval(yb, xb)
            row.update(median_ratio=ratio.estimate, median_ratio_low=ratio.low, median_ratio_high=ratio.high,
                       mean_a=float(xb.mean()), mean_b=float(yb.mean()), diff=diff.estimate, diff_low=diff.low,
                       diff_high=diff.high, verdict=VERDICTS[verdict(diff)])
        rows.append(row)
    return rows


def to_markdown(rows: list[dict], attack: str) -> str:
    out = [f"| {attack}: model, sigma, n | verified A / B (of) | median ratio B / A [95 %] | mean A -> B | "
           f"mean B - A [95 %] | B lower / higher / equal |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "median_ratio" in r:
            ratio = f"{r['median_ratio']:.3f} [{r['median_ratio_low']:.3f}, {r['median_ratio_high']:.3f}]"
            means = f"{r['mean_a']:.2f} -> {r['mean_b']:.2f}"
            diff = f"{r['diff']:.2f} [{r['diff_low']:.2f}, {r['diff_high']:.2f}] ({r['verdict']})"
        else:
            ratio = means = diff = "- (fewer than 3 images verified by both)"
        out.append(f"| {r['model']}, {r['sigma']:g}, {r['n']} | {r['verified_a']} / {r['verified_b']} ({r['images']}) "
                   f"| {ratio} | {means} | {diff} | {r['b_lower']} / {r['b_higher']} / {r['equal']} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--attack", required=True, help="the attack compared (a name in both runs' records)")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        rows = compare(args.run_a, args.run_b, args.attack)
    except CompareError as e:
        print(f"compare_runs: error: {e}", file=sys.stderr)
        return 2
    print(to_markdown(rows, args.attack), end="")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The paper's findings, tested on a sweep's verified distortions with 95 % bootstrap intervals.

Maho, Furon and Le Merrer (ICASSP 2022) state five findings; each is turned into comparisons
between settings measured on the same images (paired bootstrap of the mean difference of
verified L2 distortions over the images with a verified adversarial in both settings, or an
interval on one setting's statistic), and each comparison gets a verdict from
:func:`rsjax.intervals.verdict` ('holds' / 'reversed' / 'undecided'):

1. ``ratio_ge_30`` — distortions are at least 30x the certified radius: per RS setting, the
   bootstrap interval of the median per-image ratio verified distortion / radius vs 30.
2. ``fewer_n_larger`` — fewer samples n make attacks worse (larger distortions): per (model,
   sigma, P_a, criterion, attack), smallest n minus largest n.
3. ``sigma_no_robustness`` — a larger sigma costs accuracy without adding practical robustness:
   per (model, n, P_a, criterion, attack) with two sigmas, small-sigma distortion minus
   large-sigma distortion (holds: the larger sigma does not give larger distortions).
4. ``rays_least_affected`` — RayS is the least affected attack: per RS setting, every other
   attack's distortion minus RayS's (holds when RayS's is smaller than each other's).
5. ``randtrain_rays_weaker`` — on RayS the noise-trained model under RS is less robust than the
   plain model without RS: standard no-RS minus randtrain under RS.

Only settings of the deployed classifier (criterion 'label') are compared when the sweep has
them; a sweep run with 'level' only is compared on 'level'.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from rsjax.intervals import median_interval, paired_difference_interval, verdict

FINDINGS = {
    "ratio_ge_30": "distortion >= 30x the certified radius (median per image)",
    "fewer_n_larger": "fewer samples n -> larger distortions",
    "sigma_no_robustness": "larger sigma -> no larger distortions (accuracy lost, no practical robustness)",
    "rays_least_affected": "RayS has the smallest distortion under RS",
    "randtrain_rays_weaker": "RayS: RandTrain under RS less robust than the standard model without RS",
}


def _verified(records: Sequence[Mapping]) -> dict[tuple, dict[int, float]]:
    """setting (model, sigma, n, p_a, criterion, attack) -> {image: verified L2} (successes)."""
    out: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.get("success") and r.get("verified_l2") is not None:
            key = (r["model"], r["sigma"], r["n"], r["p_a"], r["criterion"], r["attack"])
            out[key][int(r["image"])] = float(r["verified_l2"])
    return out


def _compare(finding: str, what: str, a: dict[int, float], b: dict[int, float], confidence: float) -> dict:
    """Row for the claim mean(a - b) > 0 over the images present in both."""
    common = sorted(set(a) & set(b))
    iv = paired_difference_interval(np.array([a[i] for i in common]), np.array([b[i] for i in common]), confidence)
    return {"finding": finding, "comparison": what, "images": iv.size, "estimate": iv.estimate, "low": iv.low,
            "high": iv.high, "verdict": verdict(iv)}


def _rs_criterion(keys) -> str:
    crits = {k[4] for k in keys if k[4] != "none"}
    return "label" if "label" in crits else "level"


def comparisons(records: Sequence[Mapping], confidence: float = 0.95) -> list[dict]:
    """Every comparison of the five findings (module docstring) that the records support."""
    ver = _verified(records)
    crit = _rs_criterion(ver)
    rs = {k: v for k, v in ver.items() if k[4] == crit}
    rows = _ratio_rows(records, crit, confidence)
    rows += _extremes_rows(rs, "fewer_n_larger", 2, confidence)
    rows += _extremes_rows(rs, "sigma_no_robustness", 1, confidence)
    rows += _rays_rows(rs, confidence)
    rows += _randtrain_rows(ver, rs, confidence)
    return rows


def _ratio_rows(records, crit: str, confidence: float) -> list[dict]:
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r["criterion"] == crit and r.get("success") and r.get("verified_l2") is not None and (r.get("radius") or 0) > 0:
            groups[(r["model"], r["sigma"], r["n"], r["p_a"], r["attack"])].append(r["verified_l2"] / r["radius"])
    rows = []
    for k in sorted(groups, key=str):
        v = np.array(groups[k]) - 30.0
        iv = median_interval(v, confidence)
        rows.append({"finding": "ratio_ge_30", "comparison": f"{k[0]} σ={k[1]:g} n={k[2]} P_a={k[3]} {k[4]}: "
                     "median ratio - 30", "images": iv.size, "estimate": iv.estimate, "low": iv.low,
                     "high": iv.high, "verdict": verdict(iv)})
    return rows


def _extremes_rows(rs: dict, finding: str, axis: int, confidence: float) -> list[dict]:
    """For every group of settings equal in all fields but field ``axis`` (2: n, 1: sigma) with
    at least two values of it: the comparison smallest value minus largest value."""
    by: dict[tuple, dict] = defaultdict(dict)
    for key, v in rs.items():
        by[key[:axis] + key[axis + 1:]][key[axis]] = v
    rows = []
    for rest, per in sorted(by.items(), key=lambda kv: str(kv[0])):
        if len(per) < 2:
            continue
        lo, hi = min(per), max(per)
        rows.append(_compare(finding, _label(rest, axis, lo, hi), per[lo], per[hi], confidence))
    return rows


def _label(rest: tuple, axis: int, lo, hi) -> str:
    """'standard σ=0.55 P_a=0.5 hsja: n=1 - n=10' (axis 2) or 'standard n=1 P_a=0.5 hsja: σ=0.55 - σ=0.8'."""
    if axis == 2:
        m, s, pa, _, a = rest
        return f"{m} σ={s:g} P_a={pa} {a}: n={lo} - n={hi}"
    m, n, pa, _, a = rest
    return f"{m} n={n} P_a={pa} {a}: σ={lo:g} - σ={hi:g}"


def _rays_rows(rs: dict, confidence: float) -> list[dict]:
    rows = []
    for (m, s, n, pa, c, a), v in sorted(rs.items(), key=lambda kv: str(kv[0])):
        if a != "rays":
            continue
        for other in ("hsja", "surfree"):
            o = rs.get((m, s, n, pa, c, other))
            if o is not None:
                rows.append(_compare("rays_least_affected", f"{m} σ={s:g} n={n} P_a={pa}: {other} - rays",
                                     o, v, confidence))
    return rows


def _randtrain_rows(ver: dict, rs: dict, confidence: float) -> list[dict]:
    base = ver.get(("standard", None, None, None, "none", "rays"))
    if base is None:
        return []
    return [_compare("randtrain_rays_weaker", f"standard no-RS - randtrain σ={s:g} n={n} P_a={pa}", base, v,
                     confidence)
            for (m, s, n, pa, c, a), v in sorted(rs.items(), key=lambda kv: str(kv[0]))
            if m == "randtrain" and a == "rays"]


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per finding: how many comparisons hold, are reversed, are undecided, and the overall
    reading ('holds' if every decided comparison holds and at least one does, 'reversed' if
    every decided one is reversed, 'mixed' if both occur, 'undecided' if none is decided)."""
    out = []
    for f, text in FINDINGS.items():
        v = [r["verdict"] for r in rows if r["finding"] == f]
        h, rv, u = v.count("holds"), v.count("reversed"), v.count("undecided")
        overall = ("undecided" if h + rv == 0 else "holds" if rv == 0 else "reversed" if h == 0 else "mixed")
        out.append({"finding": f, "statement": text, "comparisons": len(v), "holds": h, "reversed": rv,
                    "undecided": u, "overall": overall if v else "not measured"})
    return out

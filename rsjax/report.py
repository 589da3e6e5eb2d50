"""Summaries, tables, figures and ``report.md`` of a sweep directory, from its records alone
(re-drawable without re-running anything: ``python experiments/report.py OUT``).

Inputs (written by :mod:`rsjax.study`): ``config.json``, ``records*.jsonl`` (attack records),
``certify*.jsonl``, ``accuracy.jsonl``, optionally ``models.json`` and ``runs.jsonl``.

Definitions used in every table and figure:

* distortion statistics (mean / median L2) are over the images with a known adversarial point
  (status 'attacked', or 'misclassified' with distortion 0: the clean image itself was already
  answered adversarial by the random oracle); ``success_rate`` = that count / images;
* accuracy of a setting (Fig. 5's x axis) = accuracy of g_{sigma,n} at the same (model, sigma,
  n) on the evaluation images (accuracy of f for the no-RS baseline);
* distortion / certified radius: per image, L2 distortion of the attack divided by the CERTIFY
  radius of that image at the same sigma; images with radius 0 (CERTIFY abstained) are left out
  of the ratio and counted separately.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rsjax.errors import InputError

SUMMARY_COLUMNS = [
    "model", "sigma", "n", "p_a", "criterion", "k_wrong", "attack", "reference_kind", "images", "attacked",
    "successes", "success_rate", "misclassified", "no_start", "unverified", "smoothed_abstain", "smoothed_wrong",
    "success_rate_low", "success_rate_high", "median_l2_all", "median_l2_all_low", "median_l2_all_high",
    "mean_l2", "mean_l2_low", "mean_l2_high", "median_l2", "median_l2_low", "median_l2_high",
    "raw_mean_l2", "raw_mean_l2_low", "raw_mean_l2_high", "raw_median_l2", "raw_median_l2_low", "raw_median_l2_high",
    "mean_linf", "raw_mean_linf", "mean_raw_level", "mean_verified_level",
    "mean_queries", "max_queries_used", "mean_evaluations", "mean_verification_calls", "accuracy",
    "mean_radius", "median_ratio", "median_ratio_low", "median_ratio_high",
    "ratio_of_means", "ratio_of_means_low", "ratio_of_means_high", "ratio_images", "frac_ratio_ge_30",
    "frac_inside_radius", "raw_frac_inside_radius",
]

# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _read_jsonl(paths: Iterable[Path]) -> list[dict]:
    from rsjax.results import read_records

    seen, out = set(), []
    for p in sorted(paths):
        for r in read_records(p):
            if r.get("key") in seen:
                continue
            seen.add(r.get("key"))
            out.append(r)
    return out


def _in_image_order(records: list[dict], order: Sequence[int] | None) -> list[dict]:
    """``records`` stably sorted by the position of their image in ``order`` (unchanged
    without one)."""
    if not order:
        return records
    pos = {int(i): k for k, i in enumerate(order)}
    return sorted(records, key=lambda r: pos.get(r.get("image"), len(pos)))


def load_run(out: str | os.PathLike) -> dict:
    """All results of a sweep directory: config, attack records, certify and accuracy records,
    models info and run log (missing optional files give empty values)."""
    out = Path(out)
    if not (out / "config.json").is_file():
        raise InputError(f"{out} is not a sweep directory (no config.json)")

    def opt_json(name):
        p = out / name
        return json.loads(p.read_text()) if p.is_file() else {}

    runs = []
    if (out / "runs.jsonl").is_file():
        runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    # a multi-process run's files hold each process's images: put the records back in the
    # order of images.json (stable, so a 1-process run's order is kept) so that every
    # statistic, bootstrap intervals included, equals the 1-process run's
    images = opt_json("images.json")
    return {
        "dir": out,
        "config": json.loads((out / "config.json").read_text()),
        "env": opt_json("env.json"),
        "models": opt_json("models.json"),
        "records": _in_image_order(_read_jsonl(out.glob("records*.jsonl")), images.get("attacked")),
        "certify": _in_image_order(_read_jsonl(out.glob("certify*.jsonl")), images.get("certified")),
        "accuracy": _read_jsonl(out.glob("accuracy*.jsonl")),
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def setting_of(r: Mapping[str, Any]) -> tuple:
    """(model, sigma, n, p_a, criterion, attack) of a record."""
    return (r["model"], r["sigma"], r["n"], r["p_a"], r["criterion"], r["attack"])


def accuracy_lookup(accuracy: Sequence[Mapping]) -> dict:
    """(model, sigma, n) -> accuracy (sigma = n = None: the base classifier)."""
    return {(a["model"], a["sigma"], a["n"]): a["accuracy"] for a in accuracy}


def verified_distortion(r: Mapping[str, Any]) -> float | None:
    """The verified L2 distortion of a record (0 for 'misclassified'; None when no verified
    adversarial is known)."""
    if not r.get("success"):
        return None
    return r.get("verified_l2")


def distortion_ratios(records: Sequence[Mapping]) -> list[dict]:
    """Per attack record under RS with a verified adversarial and a positive certified radius:
    the ratio verified L2 / radius (one dict per image x setting)."""
    out = []
    for r in records:
        v = verified_distortion(r)
        if r["criterion"] == "none" or v is None or not r.get("radius") or r["radius"] <= 0:
            continue
        out.append({**{k: r[k] for k in ("model", "sigma", "n", "p_a", "criterion", "attack", "image")},
                    "l2": v, "radius": r["radius"], "ratio": v / r["radius"]})
    return out


def _sort_key(s: tuple) -> tuple:
    model, sigma, n, pa, crit, attack = s
    return (model, -1 if sigma is None else sigma, -1 if n is None else n, -1 if pa is None else pa, crit, attack)


def _with_interval(row: dict, name: str, iv) -> None:
    row[name], row[name + "_low"], row[name + "_high"] = iv.estimate, iv.low, iv.high


def summary_row(rs: Sequence[Mapping], accuracy: float, confidence: float = 0.95) -> dict:
    """Statistics of one setting's records (:data:`SUMMARY_COLUMNS`): verified distortions over
    the images with a verified adversarial (0 for those already of level P_a at x_o), the
    attacker's raw distortions over the images it attacked, 95 % bootstrap intervals over images,
    and the ratios to the certified radius (median per image, and mean / mean)."""
    from rsjax.intervals import mean_interval, median_interval, ratio_of_means_interval

    first = rs[0]
    status = [r["status"] for r in rs]
    ok = [r for r in rs if verified_distortion(r) is not None]
    ver = np.array([verified_distortion(r) for r in ok], float)
    raw_recs = [r for r in rs if r.get("attack_status", r["status"]) == "attacked" and r.get("l2") is not None]
    raw = np.array([r["l2"] for r in raw_recs], float)
    rs_crit = first["criterion"] != "none"
    with_radius = [r for r in ok if rs_crit and r.get("radius") and r["radius"] > 0]
    num = np.array([verified_distortion(r) for r in with_radius], float)
    den = np.array([r["radius"] for r in with_radius], float)
    raw_radius = [r for r in raw_recs if rs_crit and r.get("radius") and r["radius"] > 0]
    radii = [r["radius"] for r in rs if r.get("radius") is not None]
    row = {k: first.get(k) for k in ("model", "sigma", "n", "p_a", "criterion", "k_wrong", "attack",
                                      "reference_kind")}
    row.update(images=len(rs), attacked=sum(s == "attacked" for s in status), successes=len(ok),
               success_rate=len(ok) / len(rs),
               **{s: sum(x == s for x in status) for s in ("misclassified", "no_start", "unverified",
                                                            "smoothed_abstain", "smoothed_wrong")})
    from rsjax.oracle import clopper_pearson_interval

    lo, hi = clopper_pearson_interval(len(ok), len(rs), confidence)
    row.update(success_rate_low=float(lo), success_rate_high=float(hi))
    # over every image the attacker was given (not the smoothed_* ones), failures counted as +inf
    given = [r for r in rs if not str(r["status"]).startswith("smoothed")]
    every = np.array([verified_distortion(r) if verified_distortion(r) is not None else np.inf for r in given])
    _with_interval(row, "median_l2_all", median_interval(every, confidence))
    _with_interval(row, "mean_l2", mean_interval(ver, confidence))
    _with_interval(row, "median_l2", median_interval(ver, confidence))
    _with_interval(row, "raw_mean_l2", mean_interval(raw, confidence))
    _with_interval(row, "raw_median_l2", median_interval(raw, confidence))
    _with_interval(row, "median_ratio", median_interval(num / den if len(num) else num, confidence))
    _with_interval(row, "ratio_of_means", ratio_of_means_interval(num, den, confidence))
    levels = [r["raw_level"] for r in raw_recs if r.get("raw_level") is not None]
    vlevels = [r["verified_level"] for r in ok if r.get("verified_level") is not None]
    row.update(
        mean_linf=float(np.mean([r["verified_linf"] for r in ok])) if ok else math.nan,
        raw_mean_linf=float(np.mean([r["linf"] for r in raw_recs])) if raw_recs else math.nan,
        mean_raw_level=float(np.mean(levels)) if levels else math.nan,
        mean_verified_level=float(np.mean(vlevels)) if vlevels else math.nan,
        mean_queries=float(np.mean([r["queries"] for r in rs])),
        max_queries_used=int(max(r["queries"] for r in rs)),
        mean_evaluations=float(np.mean([r["evaluations"] for r in rs])),
        mean_verification_calls=float(np.mean([r.get("verification_calls", 0) for r in rs])),
        accuracy=accuracy, mean_radius=float(np.mean(radii)) if radii else math.nan,
        ratio_images=len(num), frac_ratio_ge_30=float(np.mean(num / den >= 30)) if len(num) else math.nan,
        frac_inside_radius=float(np.mean(num < den)) if len(num) else math.nan,
        raw_frac_inside_radius=(float(np.mean([r["l2"] < r["radius"] for r in raw_radius]))
                                if raw_radius else math.nan),
    )
    return row


def summary_rows(run: Mapping[str, Any]) -> list[dict]:
    """One row per setting with the statistics of :data:`SUMMARY_COLUMNS`."""
    acc = accuracy_lookup(run["accuracy"])
    conf = float(run["config"].get("interval_confidence", 0.95))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in run["records"]:
        groups[setting_of(r)].append(r)
    rows = []
    for s in sorted(groups, key=_sort_key):
        model, sigma, n, pa, crit, attack = s
        a = acc.get((model, sigma, n) if crit != "none" else (model, None, None), math.nan)
        rows.append(summary_row(groups[s], a, conf))
    return rows


def write_summary_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SUMMARY_COLUMNS})


def accuracy_table(run: Mapping[str, Any]) -> list[dict]:
    """Per model: clean accuracy and, per (sigma, n), accuracy of g_{sigma,n}, PREDICT accuracy,
    abstention rate and the drop (clean - RS)."""
    acc = accuracy_lookup(run["accuracy"])
    rows = []
    for a in sorted(run["accuracy"], key=lambda a: (a["model"], a["sigma"] or -1, a["n"] or -1)):
        clean = acc.get((a["model"], None, None))
        rows.append({**{k: a.get(k) for k in ("model", "sigma", "n", "num_images", "accuracy", "predict_accuracy",
                                               "abstention_rate")},
                     "drop": None if (a["sigma"] is None or clean is None) else clean - a["accuracy"]})
    return rows


def certified_curves(run: Mapping[str, Any]) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]:
    """(model, sigma) -> (radii, correct) arrays of the certification records."""
    cur: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for c in run["certify"]:
        r, ok = cur[(c["model"], c["sigma"])]
        r.append(c["radius"])
        ok.append(bool(c["correct"]))
    return {k: (np.array(v[0], float), np.array(v[1], bool)) for k, v in sorted(cur.items())}


def ratio_table(run: Mapping[str, Any]) -> list[dict]:
    """Per (model, sigma, n, P_a, criterion, attack): quantiles of verified distortion /
    certified radius."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in distortion_ratios(run["records"]):
        groups[(r["model"], r["sigma"], r["n"], r["p_a"], r["criterion"], r["attack"])].append(r["ratio"])
    rows = []
    for k in sorted(groups, key=lambda k: (k[0], k[1], k[2], -1 if k[3] is None else k[3], k[4], k[5])):
        v = np.array(groups[k])
        rows.append({"model": k[0], "sigma": k[1], "n": k[2], "p_a": k[3], "criterion": k[4], "attack": k[5],
                     "images": len(v),
                     "min": float(v.min()), "q10": float(np.quantile(v, 0.1)), "median": float(np.median(v)),
                     "mean": float(v.mean()), "frac_ge_30": float(np.mean(v >= 30))})
    return rows


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


MARKERS = {"standard": "o", "randtrain": "s", "advtrain": "^"}


def _marker(model: str, models: Sequence[str]) -> str:
    extra = ["D", "v", "P", "X", "*"]
    return MARKERS.get(model, extra[models.index(model) % len(extra)])


def plot_distortion_vs_accuracy(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Fig. 5: mean verified L2 distortion (95 % bootstrap interval as an error bar) vs accuracy,
    one panel per attack, one point per (model, sigma, n, P_a) of the deployed-classifier
    attacks (criterion 'label'; all rows when the sweep ran 'level' only) and the no-RS rows;
    marker = model, colour = n (grey: no RS), filled = P_a 0.5, hollow = P_a 0.8."""
    plt = _plt()
    if any(r["criterion"] == "label" for r in rows):
        rows = [r for r in rows if r["criterion"] in ("label", "none")]
    attacks = sorted({r["attack"] for r in rows})
    models = sorted({r["model"] for r in rows})
    ns = sorted({r["n"] for r in rows if r["n"] is not None})
    cmap = plt.get_cmap("viridis")
    colour = {n: cmap(i / max(1, len(ns) - 1) * 0.9) for i, n in enumerate(ns)}
    fig, axes = plt.subplots(1, max(1, len(attacks)), figsize=(4.2 * max(1, len(attacks)), 3.8), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for r in rows:
            if r["attack"] != attack or not np.isfinite(r["mean_l2"]) or not np.isfinite(r["accuracy"]):
                continue
            c = "0.5" if r["n"] is None else colour[r["n"]]
            hollow = r["p_a"] is not None and r["p_a"] > 0.5
            if np.isfinite(r.get("mean_l2_low", np.nan)) and np.isfinite(r.get("mean_l2_high", np.nan)):
                ax.errorbar(r["accuracy"], r["mean_l2"], yerr=[[r["mean_l2"] - r["mean_l2_low"]],
                                                               [r["mean_l2_high"] - r["mean_l2"]]],
                            color=c, lw=0.8, capsize=2, zorder=1)
            ax.scatter(r["accuracy"], r["mean_l2"], marker=_marker(r["model"], models), s=46,
                       facecolors="none" if hollow else c, edgecolors=c, linewidths=1.4, zorder=2)
            if r["sigma"] is not None and (r["p_a"] is None or r["p_a"] <= 0.5):
                ax.annotate(f"σ={r['sigma']:g}", (r["accuracy"], r["mean_l2"]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points", color="0.35")
        ax.set_title(attack)
        ax.set_xlabel("accuracy (g_{σ,n}; f without RS)")
        ax.set_ylabel("mean verified L2 distortion")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=_marker(m, models), ls="", color="k", mfc="none", label=m) for m in models]
    handles += [plt.Line2D([], [], marker="o", ls="", color="0.5", label="no RS")]
    handles += [plt.Line2D([], [], marker="o", ls="", color=colour[n], label=f"n={n}") for n in ns]
    handles += [plt.Line2D([], [], marker="o", ls="", color="k", mfc="none", label="P_a=0.8 (hollow)")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_certified(run: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Fig. 4: certified accuracy vs radius, one curve per (model, sigma)."""
    from rsjax.plots import plot_certified_accuracy

    plt = _plt()
    curves = certified_curves(run)
    if not curves:
        raise InputError("no certification records to plot")
    fig = plot_certified_accuracy({f"{m} σ={s:g}": v for (m, s), v in curves.items()}, path)
    plt.close(fig)


def plot_ratios(run: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Per-image verified distortion / certified radius (log scale), one column per setting, one
    panel per attack; dashed line at 30 (the paper's 'at least 30x'), dotted at 1 (the radius)."""
    plt = _plt()
    ratios = distortion_ratios(run["records"])
    if not ratios:
        raise InputError("no attack record with a positive certified radius to plot")
    attacks = sorted({r["attack"] for r in ratios})
    columns = max(len({(r["model"], r["sigma"], r["n"], r["p_a"], r["criterion"]) for r in ratios
                       if r["attack"] == a}) for a in attacks)
    # one panel per attack, stacked, each wide enough for its columns' labels
    fig, axes = plt.subplots(len(attacks), 1, figsize=(max(6.0, 0.32 * columns + 1.5), 3.6 * len(attacks)),
                             squeeze=False)
    for ax, attack in zip(axes[:, 0], attacks):
        groups: dict[tuple, list[float]] = defaultdict(list)
        for r in ratios:
            if r["attack"] == attack:
                groups[(r["model"], r["sigma"], r["n"], -1 if r["p_a"] is None else r["p_a"],
                        r["criterion"])].append(r["ratio"])
        keys = sorted(groups)
        rng = np.random.default_rng(0)
        for i, k in enumerate(keys):
            v = np.array(groups[k])
            ax.scatter(i + rng.uniform(-0.2, 0.2, len(v)), v, s=6, alpha=0.5)
            ax.plot([i - 0.3, i + 0.3], [np.median(v)] * 2, color="k", lw=1.5)
        ax.axhline(30, ls="--", color="r", lw=1, label="30×")
        ax.set_yscale("log")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{m[:4]} σ={s:g}\nn={n}" + ("" if pa < 0 else f" P={pa:g}") + f" {c[:3]}"
                            for m, s, n, pa, c in keys], rotation=90, fontsize=6)
        ax.axhline(1, ls=":", color="k", lw=1)
        ax.set_ylabel("verified L2 distortion / certified radius")
        ax.set_title(attack)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------
def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def wall_time(run: Mapping[str, Any]) -> dict:
    """Sum of the wall times of the (possibly interrupted and resumed) runs that finished or
    stopped cleanly, and their count; a multi-process run counts by its process 0 (its wall
    time includes the wait for the others), ``processes`` being the most processes of one start."""
    events = [r for r in run["runs"] if r.get("process", 0) == 0]
    ends = [r for r in events if r.get("event") in ("finish", "stopped")]
    return {"runs": len([r for r in events if r.get("event") == "start"]),
            "wall_s": float(sum(r.get("wall_s", 0.0) for r in ends)),
            "processes": max([int(r.get("processes", 1)) for r in events] or [1])}


def sigma_drops(run: Mapping[str, Any], model: str = "standard") -> list[dict]:
    """Accuracy drop of g_{sigma,n} (largest n evaluated) relative to f, per sigma, for
    ``model`` (the paper's criterion for choosing the sigma grid)."""
    acc = run["accuracy"]
    clean = accuracy_lookup(acc).get((model, None, None))
    by_sigma: dict[float, dict] = {}
    for a in acc:
        if a["model"] == model and a["sigma"] is not None:
            if a["sigma"] not in by_sigma or a["n"] > by_sigma[a["sigma"]]["n"]:
                by_sigma[a["sigma"]] = a
    return [{"model": model, "sigma": s, "n": a["n"], "clean": clean, "rs_accuracy": a["accuracy"],
             "drop": None if clean is None else clean - a["accuracy"]} for s, a in sorted(by_sigma.items())]


def _csv(rows: Sequence[Mapping], columns: Sequence[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def _protocol_section(run: Mapping[str, Any]) -> list[str]:
    """What was measured: criterion actually used, reference label, P_a, m, certification n."""
    from rsjax.theory import max_certified_radius

    cfg = run["config"]
    crits = sorted({r["criterion"] for r in run["records"]} - {"none"})
    notes = {"label": "`label`: the attacker sees the deployed g_(σ,n) (one call = one plurality vote of n "
                      "noisy copies, compared with the reference label)",
             "level": "`level`: the paper's shortcut (a query counts as adversarial when at least ceil(n·P_a) "
                      "of its n micro-decisions are wrong)"}
    ref = cfg.get("reference", "true")
    ref_text = (f"g_σ(x_o) from Cohen's PREDICT with n = {cfg.get('reference_n')}, α = {cfg.get('reference_alpha')} "
                "(images on which it abstains or errs are not attacked: statuses `smoothed_abstain`, "
                "`smoothed_wrong`)" if ref == "smoothed" else "the true label y (`--reference true`)")
    n_cert, alpha = cfg.get("certify_n"), cfg.get("certify_alpha")
    cap = max_certified_radius(int(n_cert), float(alpha)) if n_cert else None
    wt = wall_time(run)
    return [
        f"# rsjax sweep report — preset `{cfg.get('preset')}`", "",
        f"Data `{cfg.get('data')}`, architecture `{cfg.get('arch')}`, seed {cfg.get('seed')}; "
        f"{cfg.get('n_images')} images, {cfg.get('max_queries')} queries per image and attack.", "",
        "- Attacker's criterion: " + ("; ".join(notes[c] for c in crits) if crits else "none (no RS)") + ".",
        f"- Reference label (eq. 4): {ref_text}.",
        f"- Verified distortion: the evaluator (its calls never charged to the attack) tests the level "
        f"P[g_(σ,n)(x) ≠ reference] ≥ P_a with at most m = {cfg.get('verify_calls')} calls per point "
        f"(sequential Clopper–Pearson test, error ≤ {1 - float(cfg.get('verify_confidence', 0.95)):.2g}), first at "
        f"the clean image (reaching P_a there: status `misclassified`, distortion 0), then at the attack's output "
        f"x_a and, if it falls short, along x_o + t (x_a − x_o), t ≥ 1, to the smallest accepted t "
        f"(relative bracket {cfg.get('verify_rel_tol')}); outputs whose ray never reaches P_a are `unverified`.",
        f"- Levels P_a: {', '.join(f'{p:g}' for p in cfg.get('pas', []))}.",
        f"- CERTIFY: n0 = {cfg.get('certify_n0')}, n = {n_cert}, α = {alpha} "
        + (f"(largest certifiable radius {cap:.3g} σ)." if cap is not None else "."),
        f"- Intervals: {100 * float(cfg.get('interval_confidence', 0.95)):g} % bootstrap over images (BCa).", "",
        f"Wall time: {wt['wall_s']:.0f} s over {wt['runs']} start(s) of the sweep "
        + (f"as {wt['processes']} processes " if wt["processes"] > 1 else "")
        + f"(device(s): {', '.join(run['env'].get('devices', [])) or '?'}).", ""]


def _models_section(run: Mapping[str, Any]) -> list[str]:
    if not run["models"]:
        return []
    mrows = []
    for name, info in run["models"].items():
        meta = info.get("metadata", {})
        mrows.append({"model": name, "recipe": meta.get("recipe"), "settings": json.dumps(meta.get("recipe_settings")),
                      "epochs": meta.get("epochs"), "test_accuracy (training log)": meta.get("test_accuracy"),
                      "trained now": info.get("trained_now"), "train s": info.get("train_seconds")})
    return ["## Models", "", markdown_table(mrows, list(mrows[0])), ""]


def _accuracy_section(run: Mapping[str, Any]) -> list[str]:
    md = []
    drops = sigma_drops(run)
    if drops:
        md += ["## σ grid: accuracy drop of the standard model", "",
               markdown_table(drops, ["sigma", "n", "clean", "rs_accuracy", "drop"]), ""]
    acc_rows = accuracy_table(run)
    if acc_rows:
        md += ["## Accuracy (clean f, practical g_(σ,n), PREDICT)", "",
               markdown_table(acc_rows, ["model", "sigma", "n", "num_images", "accuracy", "drop", "predict_accuracy",
                                         "abstention_rate"]), ""]
    return md


def _certified_section(run: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    from rsjax.smoothing import certified_accuracy

    if not run["certify"]:
        return []
    md = ["## Certified accuracy (Fig. 4)", ""]
    crow = []
    for (m, s), (radii, ok) in certified_curves(run).items():
        grid = [0.0, 0.25 * s, 0.5 * s, s, 2 * s]
        ca = certified_accuracy(radii, ok, grid)
        crow.append({"model": m, "sigma": s, "images": len(radii), **{f"r={g:.3g}": v for g, v in zip(grid, ca)},
                     "median radius (correct)": float(np.median(radii[ok])) if ok.any() else None})
    for s in sorted({r["sigma"] for r in crow}):  # different sigmas, different grids
        sub = [r for r in crow if r["sigma"] == s]
        md += [markdown_table(sub, list(sub[0])), ""]
    if "fig4" in figs:
        md += [f"![certified accuracy]({figs['fig4']})", ""]
    return md


ATTACK_TABLE = ["model", "sigma", "n", "p_a", "criterion", "attack", "images", "success_rate", "misclassified",
                "unverified", "smoothed_wrong", "smoothed_abstain", "mean_l2", "mean_l2_low", "mean_l2_high",
                "median_l2", "median_l2_all", "raw_mean_l2", "mean_raw_level", "accuracy", "mean_queries", "max_queries_used",
                "mean_verification_calls", "median_ratio", "ratio_of_means", "frac_inside_radius",
                "raw_frac_inside_radius"]


def _attacks_section(rows: Sequence[Mapping], ratios: Sequence[Mapping], figs: Mapping[str, str]) -> list[str]:
    md = []
    if rows:
        md += ["## Attacks: one row per setting (Fig. 5)", "",
               "`mean_l2` [`_low`, `_high`]: mean verified L2 distortion over the images with a verified "
               "adversarial (0 for `misclassified`), with its bootstrap interval; `raw_mean_l2`: the attacker's "
               "own distortion of its output; `mean_raw_level`: the measured level at those outputs; "
               "`median_l2_all`: median over every image given to the attacker, a failure (`unverified`, "
               "`no_start`) counting as +∞ (∞ when half of them fail); "
               "`accuracy`: g_(σ,n) at the same (model, σ, n) (f for no-RS rows); `mean_queries` / "
               "`max_queries_used`: queries the attack spent; `median_ratio`: median per image of verified "
               "distortion ÷ certified radius; `ratio_of_means`: mean distortion ÷ mean radius (Fig. 4/5 "
               "reading); `frac_inside_radius`: verified distortions below the certified radius "
               "(`raw_`: the attacker's).", "",
               markdown_table(rows, ATTACK_TABLE), ""]
        if "fig5" in figs:
            md += [f"![distortion vs accuracy]({figs['fig5']})", ""]
    if ratios:
        md += ["## Verified distortion ÷ certified radius (per image)", "",
               markdown_table(ratios, ["model", "sigma", "n", "p_a", "criterion", "attack", "images", "min", "q10",
                                       "median", "mean", "frac_ge_30"]), ""]
        if "ratio" in figs:
            md += [f"![distortion over radius]({figs['ratio']})", ""]
    return md


def _findings_section(summary: Sequence[Mapping], comps: Sequence[Mapping]) -> list[str]:
    if not comps:
        return []
    return ["## The paper's findings, from the verified distortions", "",
            "Each comparison is a paired 95 % bootstrap interval of a mean difference of verified distortions "
            "on the same images (or of the median ratio − 30); `holds` / `reversed`: the interval excludes 0 "
            "on the claimed / the opposite side; `undecided`: it contains 0. Details in `findings.csv`.", "",
            markdown_table(summary, ["finding", "statement", "comparisons", "holds", "reversed", "undecided",
                                     "overall"]), ""]


FINDINGS_COLUMNS = ["finding", "comparison", "images", "estimate", "low", "high", "verdict"]


def write_report(out: str | os.PathLike) -> dict:
    """Write ``summary.csv``, ``distortion_over_radius.csv``, ``findings.csv``, the figures and
    ``report.md`` into ``out``; returns what was written."""
    from rsjax.findings import comparisons, summarize

    run = load_run(out)
    out = Path(out)
    rows = summary_rows(run)
    write_summary_csv(rows, out / "summary.csv")
    figs = {}
    if rows:
        plot_distortion_vs_accuracy(rows, out / "fig5_distortion_vs_accuracy.png")
        figs["fig5"] = "fig5_distortion_vs_accuracy.png"
    if run["certify"]:
        plot_certified(run, out / "fig4_certified_accuracy.png")
        figs["fig4"] = "fig4_certified_accuracy.png"
    if distortion_ratios(run["records"]):
        plot_ratios(run, out / "distortion_over_radius.png")
        figs["ratio"] = "distortion_over_radius.png"
    ratios = ratio_table(run)
    _csv(ratios, ["model", "sigma", "n", "p_a", "criterion", "attack", "images", "min", "q10", "median", "mean",
                  "frac_ge_30"], out / "distortion_over_radius.csv")
    comps = comparisons(run["records"], float(run["config"].get("interval_confidence", 0.95)))
    _csv(comps, FINDINGS_COLUMNS, out / "findings.csv")
    md = (_protocol_section(run) + _models_section(run) + _accuracy_section(run) + _certified_section(run, figs)
          + _findings_section(summarize(comps), comps) + _attacks_section(rows, ratios, figs))
    (out / "report.md").write_text("\n".join(md) + "\n")
    return {"summary": out / "summary.csv", "report": out / "report.md", "findings": out / "findings.csv",
            "figures": figs}

"""Summaries, tables, figures and ``report.md`` of a sweep directory, from its records alone
(re-drawable without re-running anything: ``python experiments/report.py OUT``).

Inputs (written by :mod:`rsjax.sweep`): ``config.json``, ``records*.jsonl`` (attack records),
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
    "model", "sigma", "n", "p_a", "criterion", "k_wrong", "attack", "images", "successes", "success_rate",
    "misclassified", "no_start", "mean_l2", "median_l2", "mean_linf", "mean_queries", "mean_evaluations",
    "accuracy", "mean_level", "mean_radius", "median_ratio", "min_ratio", "ratio_images", "frac_ratio_ge_30",
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
    return {
        "dir": out,
        "config": json.loads((out / "config.json").read_text()),
        "env": opt_json("env.json"),
        "models": opt_json("models.json"),
        "records": _read_jsonl(out.glob("records*.jsonl")),
        "certify": _read_jsonl(out.glob("certify*.jsonl")),
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


def distortion_ratios(records: Sequence[Mapping]) -> list[dict]:
    """Per attack record under RS with a known adversarial and a positive certified radius:
    the ratio l2 / radius (one dict per image x setting)."""
    out = []
    for r in records:
        if r["criterion"] == "none" or not r["success"] or r.get("radius") is None:
            continue
        if r["radius"] <= 0 or r["l2"] is None:
            continue
        out.append({**{k: r[k] for k in ("model", "sigma", "n", "p_a", "attack", "image")},
                    "l2": r["l2"], "radius": r["radius"], "ratio": r["l2"] / r["radius"]})
    return out


def _sort_key(s: tuple) -> tuple:
    model, sigma, n, pa, crit, attack = s
    return (model, -1 if sigma is None else sigma, -1 if n is None else n, -1 if pa is None else pa, attack)


def summary_rows(run: Mapping[str, Any]) -> list[dict]:
    """One row per setting with the statistics of :data:`SUMMARY_COLUMNS`."""
    acc = accuracy_lookup(run["accuracy"])
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in run["records"]:
        groups[setting_of(r)].append(r)
    rows = []
    for s in sorted(groups, key=_sort_key):
        rs = groups[s]
        model, sigma, n, pa, crit, attack = s
        ok = [r for r in rs if r["success"] and r["l2"] is not None]
        l2 = np.array([r["l2"] for r in ok], float)
        linf = np.array([r["linf"] for r in ok], float)
        ratios = [r["l2"] / r["radius"] for r in ok if r.get("radius") and r["radius"] > 0 and crit != "none"]
        radii = [r["radius"] for r in rs if r.get("radius") is not None]
        levels = [r["level"] for r in ok if r.get("level") is not None]
        rows.append({
            "model": model, "sigma": sigma, "n": n, "p_a": pa, "criterion": crit, "k_wrong": rs[0].get("k_wrong"),
            "attack": attack, "images": len(rs), "successes": len(ok), "success_rate": len(ok) / len(rs),
            "misclassified": sum(r["status"] == "misclassified" for r in rs),
            "no_start": sum(r["status"] == "no_start" for r in rs),
            "mean_l2": float(l2.mean()) if len(l2) else math.nan,
            "median_l2": float(np.median(l2)) if len(l2) else math.nan,
            "mean_linf": float(linf.mean()) if len(linf) else math.nan,
            "mean_queries": float(np.mean([r["queries"] for r in rs])),
            "mean_evaluations": float(np.mean([r["evaluations"] for r in rs])),
            "accuracy": acc.get((model, sigma, n) if crit != "none" else (model, None, None), math.nan),
            "mean_level": float(np.mean(levels)) if levels else math.nan,
            "mean_radius": float(np.mean(radii)) if radii else math.nan,
            "median_ratio": float(np.median(ratios)) if ratios else math.nan,
            "min_ratio": float(np.min(ratios)) if ratios else math.nan,
            "ratio_images": len(ratios),
            "frac_ratio_ge_30": float(np.mean(np.array(ratios) >= 30)) if ratios else math.nan,
        })
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
    """Per (model, sigma, n, P_a, attack): quantiles of distortion / certified radius."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in distortion_ratios(run["records"]):
        groups[(r["model"], r["sigma"], r["n"], r["p_a"], r["attack"])].append(r["ratio"])
    rows = []
    for k in sorted(groups, key=lambda k: (k[0], k[1], k[2], -1 if k[3] is None else k[3], k[4])):
        v = np.array(groups[k])
        rows.append({"model": k[0], "sigma": k[1], "n": k[2], "p_a": k[3], "attack": k[4], "images": len(v),
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
    """Fig. 5: mean L2 distortion vs accuracy, one panel per attack, one point per
    (model, sigma, n, P_a); marker = model, colour = n (grey: no RS), filled = P_a 0.5 or n = 1,
    hollow = P_a 0.8 (other P_a: small)."""
    plt = _plt()
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
            ax.scatter(r["accuracy"], r["mean_l2"], marker=_marker(r["model"], models), s=46,
                       facecolors="none" if hollow else c, edgecolors=c, linewidths=1.4)
            if r["sigma"] is not None and (r["p_a"] is None or r["p_a"] <= 0.5):
                ax.annotate(f"σ={r['sigma']:g}", (r["accuracy"], r["mean_l2"]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points", color="0.35")
        ax.set_title(attack)
        ax.set_xlabel("accuracy (g_{σ,n}; f without RS)")
        ax.set_ylabel("mean L2 distortion")
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
    """Per-image distortion / certified radius (log scale), one column per setting, one panel per
    attack; dashed line at 30 (the paper's 'at least 30x')."""
    plt = _plt()
    ratios = distortion_ratios(run["records"])
    if not ratios:
        raise InputError("no attack record with a positive certified radius to plot")
    attacks = sorted({r["attack"] for r in ratios})
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.6 * len(attacks), 4.0), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        groups: dict[tuple, list[float]] = defaultdict(list)
        for r in ratios:
            if r["attack"] == attack:
                groups[(r["model"], r["sigma"], r["n"], -1 if r["p_a"] is None else r["p_a"])].append(r["ratio"])
        keys = sorted(groups)
        rng = np.random.default_rng(0)
        for i, k in enumerate(keys):
            v = np.array(groups[k])
            ax.scatter(i + rng.uniform(-0.2, 0.2, len(v)), v, s=6, alpha=0.5)
            ax.plot([i - 0.3, i + 0.3], [np.median(v)] * 2, color="k", lw=1.5)
        ax.axhline(30, ls="--", color="r", lw=1, label="30×")
        ax.set_yscale("log")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{m[:4]} σ={s:g}\nn={n}" + ("" if pa < 0 else f" P={pa:g}") for m, s, n, pa in keys],
                           rotation=90, fontsize=6)
        ax.set_ylabel("L2 distortion / certified radius")
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
    stopped cleanly, and their count."""
    ends = [r for r in run["runs"] if r.get("event") in ("finish", "stopped")]
    return {"runs": len([r for r in run["runs"] if r.get("event") == "start"]),
            "wall_s": float(sum(r.get("wall_s", 0.0) for r in ends))}


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


def write_report(out: str | os.PathLike) -> dict:
    """Write ``summary.csv``, the figures and ``report.md`` into ``out``; returns what was written."""
    run = load_run(out)
    out = Path(out)
    rows = summary_rows(run)
    written = {}
    write_summary_csv(rows, out / "summary.csv")
    written["summary"] = out / "summary.csv"
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
    with open(out / "distortion_over_radius.csv", "w", newline="") as f:
        cols = ["model", "sigma", "n", "p_a", "attack", "images", "min", "q10", "median", "mean", "frac_ge_30"]
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in ratios:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})
    cfg = run["config"]
    wt = wall_time(run)
    md = [f"# rsjax sweep report — preset `{cfg.get('preset')}`", ""]
    md.append(f"Data `{cfg.get('data')}`, architecture `{cfg.get('arch')}`, seed {cfg.get('seed')}; "
              f"{cfg.get('n_images')} attacked images, {cfg.get('max_queries')} queries per image, "
              f"criterion `{cfg.get('criterion')}` (a query counts as adversarial when at least "
              f"ceil(n·P_a) of its n micro-decisions are wrong — the paper's shortcut) ; "
              f"CERTIFY n0={cfg.get('certify_n0')}, n={cfg.get('certify_n')}, α={cfg.get('certify_alpha')}; "
              f"level reached from {cfg.get('level_calls')} calls of g_(σ,n).")
    md.append("")
    md.append(f"Wall time: {wt['wall_s']:.0f} s over {wt['runs']} start(s) of the sweep "
              f"(device(s): {', '.join(run['env'].get('devices', [])) or '?'}).")
    md.append("")
    if run["models"]:
        md += ["## Models", ""]
        mrows = []
        for name, info in run["models"].items():
            meta = info.get("metadata", {})
            mrows.append({"model": name, "recipe": meta.get("recipe"), "settings": json.dumps(meta.get("recipe_settings")),
                          "epochs": meta.get("epochs"), "test_accuracy (training log)": meta.get("test_accuracy"),
                          "trained now": info.get("trained_now"), "train s": info.get("train_seconds")})
        md += [markdown_table(mrows, list(mrows[0])), ""]
    drops = sigma_drops(run)
    if drops:
        md += ["## σ grid: accuracy drop of the standard model", "",
               markdown_table(drops, ["sigma", "n", "clean", "rs_accuracy", "drop"]), ""]
    acc_rows = accuracy_table(run)
    if acc_rows:
        md += ["## Accuracy (clean f, practical g_(σ,n), PREDICT)", "",
               markdown_table(acc_rows, ["model", "sigma", "n", "num_images", "accuracy", "drop", "predict_accuracy",
                                         "abstention_rate"]), ""]
    if run["certify"]:
        md += ["## Certified accuracy (Fig. 4)", ""]
        crow = []
        for (m, s), (radii, ok) in certified_curves(run).items():
            from rsjax.smoothing import certified_accuracy

            grid = [0.0, 0.25 * s, 0.5 * s, s, 2 * s]
            ca = certified_accuracy(radii, ok, grid)
            crow.append({"model": m, "sigma": s, "images": len(radii), **{f"r={g:.3g}": v for g, v in zip(grid, ca)},
                         "median radius (correct)": float(np.median(radii[ok])) if ok.any() else None})
        # different sigmas have different grids: one table per sigma
        for s in sorted({r["sigma"] for r in crow}):
            sub = [r for r in crow if r["sigma"] == s]
            md += [markdown_table(sub, list(sub[0])), ""]
        if "fig4" in figs:
            md += [f"![certified accuracy]({figs['fig4']})", ""]
    if rows:
        md += ["## Attacks: one row per setting (Fig. 5)", "",
               "Mean/median L2 over images with a known adversarial point; `accuracy` is that of "
               "g_(σ,n) at the same (model, σ, n) (f for the no-RS rows); `mean_level` is the "
               "estimated P[g_(σ,n)(x_a) ≠ y] at the returned points.", "",
               markdown_table(rows, ["model", "sigma", "n", "p_a", "attack", "images", "success_rate",
                                     "mean_l2", "median_l2", "accuracy", "mean_level", "mean_evaluations",
                                     "median_ratio"]), ""]
        if "fig5" in figs:
            md += [f"![distortion vs accuracy]({figs['fig5']})", ""]
    if ratios:
        md += ["## Practical distortion ÷ certified radius (per image)", "",
               markdown_table(ratios, ["model", "sigma", "n", "p_a", "attack", "images", "min", "q10", "median",
                                       "mean", "frac_ge_30"]), ""]
        if "ratio" in figs:
            md += [f"![distortion over radius]({figs['ratio']})", ""]
    (out / "report.md").write_text("\n".join(md) + "\n")
    written["report"] = out / "report.md"
    written["figures"] = figs
    return written

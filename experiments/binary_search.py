"""Fig. 3 of Maho et al. (ICASSP 2022): distribution over repeated runs of the output of a binary
search on the segment [x_o, x_end] against the practical classifier g_{sigma,n} (fresh noise at
every query), for several n, next to the deterministic output against f.

x_end = x_o + t_end (x_a - x_o), x_a the white-box minimal-L2 adversarial of f (DDN); the search
bisects the blend factor --iterations times and returns the adversarial end, as the attacks do
(rsjax.analysis.binary_search_outputs). Reference lines: the output against f (the boundary of f
on the segment), the boundary of g_sigma on the segment (first grid point where the plurality of
--n-ref votes is not y) and the certified radius R of x_o.

    python experiments/binary_search.py --out runs/fig3
Writes binary_search.png, binary_search.json (every output distance, per image and n) and
binary_search.csv (one row per image x n: mean, std, quantiles, fraction of outputs inside the
certified radius and before the boundary of g_sigma).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import figure_common as F  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rsjax import analysis as A  # noqa: E402
from rsjax.smoothing import certify  # noqa: E402
from rsjax.whitebox import minimal_l2_adversarial  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    F.add_common_args(p)
    p.set_defaults(images=3)
    p.add_argument("--n-list", default="1,5,10,50,100", help="numbers of noise samples n")
    p.add_argument("--repeats", type=int, default=200, help="independent binary searches per n")
    p.add_argument("--iterations", type=int, default=20, help="bisection rounds")
    p.add_argument("--t-end", type=float, default=2.0, help="x_end = x_o + t_end (x_a - x_o)")
    p.add_argument("--p-a", type=float, default=None,
                   help="use the authors' level-P_a shortcut (>= ceil(n P_a) wrong votes) instead "
                        "of the plurality decision")
    p.add_argument("--n-ref", type=int, default=2000, help="votes per grid point for the g_sigma boundary")
    p.add_argument("--grid", type=int, default=81, help="grid points on the segment for the g_sigma boundary")
    p.add_argument("--certify-n", type=int, default=10000)
    p.add_argument("--alpha", type=float, default=0.001)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out, clf, data, ids = F.prepare(args)
    ns = F.parse_list(args.n_list, int)
    sigma, k, fn = args.sigma, clf.num_classes, clf.logits_fn
    root = jax.random.key(args.seed)
    x, y = data.images[ids], data.labels[ids].astype(np.int64)
    wb = minimal_l2_adversarial(fn, x, y)
    cert = certify(fn, x, A.fold_keys(jax.random.fold_in(root, 0), np.asarray(ids)), sigma, 100,
                   args.certify_n, args.alpha, k)
    results, rows = [], []
    for j, i in enumerate(ids):
        if not wb.success[j]:
            print(f"image {i}: DDN found no adversarial of f; skipped")
            continue
        key = jax.random.fold_in(jax.random.fold_in(root, 1), i)
        x_o, yy = x[j], int(y[j])
        x_end = x_o + np.float32(args.t_end) * (wb.x_adv[j] - x_o)
        length = float(np.linalg.norm((x_end - x_o).astype(np.float64)))
        grid = np.linspace(0.0, 1.0, args.grid)
        freq = A.class_frequencies(fn, A.points_along(x_o, x_end, grid), jax.random.fold_in(key, 0),
                                   sigma, args.n_ref, k)
        off = np.nonzero(freq.argmax(axis=1) != yy)[0]
        a_gs = float(0.5 * (grid[off[0] - 1] + grid[off[0]])) if len(off) and off[0] > 0 else float("nan")
        a_f = float(A.binary_search_outputs(fn, x_o, x_end, yy, key, sigma, None, 1, args.iterations, k)[0])
        radius = float(cert.radii[j]) if cert.predictions[j] == yy else 0.0
        per_n = []
        for n in ns:
            a = A.binary_search_outputs(fn, x_o, x_end, yy, jax.random.fold_in(key, 1000 + n), sigma, n,
                                        args.repeats, args.iterations, k, p_a=args.p_a)
            dist = a * length
            e = {"n": n, "distances": dist, "mean": float(dist.mean()), "std": float(dist.std()),
                 "q05": float(np.quantile(dist, 0.05)), "median": float(np.median(dist)),
                 "q95": float(np.quantile(dist, 0.95)),
                 "frac_inside_certified_radius": float(np.mean(dist < radius)),
                 "frac_before_g_sigma_boundary": float(np.mean(dist < a_gs * length))}
            per_n.append(e)
            rows.append({"image_id": i, "n": n, **{kk: e[kk] for kk in e if kk not in ("n", "distances")},
                         "distance_f": a_f * length, "distance_g_sigma": a_gs * length,
                         "certified_radius": radius})
        results.append({"image_id": i, "label": yy, "segment_length": length,
                        "distance_f": a_f * length, "distance_g_sigma": a_gs * length,
                        "certified_radius": radius, "per_n": per_n})
    summary = {"figure": "distribution of the binary-search output against g_{sigma,n}",
               "model": F.model_info(args, clf), "data": args.data, "sigma": sigma, "ns": ns,
               "repeats": args.repeats, "iterations": args.iterations, "t_end": args.t_end,
               "decision": ("plurality != y" if args.p_a is None
                            else f">= ceil(n*{args.p_a}) wrong micro-decisions (authors' shortcut)"),
               "seed": args.seed, "images": results, "seconds": time.perf_counter() - t0}
    F.write_json(out / "binary_search.json", summary)
    if rows:
        with open(out / "binary_search.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot(summary, out / "binary_search.png")
    for r in results:
        print(f"image {r['image_id']}: f -> {r['distance_f']:.3f}, boundary of g_sigma at "
              f"{r['distance_g_sigma']:.3f}, certified R = {r['certified_radius']:.3f}")
        for e in r["per_n"]:
            print(f"  n={e['n']:4d}: mean {e['mean']:.3f} +- {e['std']:.3f} (5-95 %: {e['q05']:.3f}-"
                  f"{e['q95']:.3f}); {100 * e['frac_inside_certified_radius']:.0f} % inside R, "
                  f"{100 * e['frac_before_g_sigma_boundary']:.0f} % before the g_sigma boundary")
    print(f"wrote {out / 'binary_search.png'}, .json, .csv in {summary['seconds']:.0f} s")
    return summary


def plot(summary: dict, path: Path) -> None:
    plt = F.matplotlib_pyplot()
    imgs = summary["images"]
    m = max(len(imgs), 1)
    fig, axes = plt.subplots(1, m, figsize=(5 * m, 0.45 * len(summary["ns"]) + 2.8), squeeze=False)
    for ax, r in zip(axes[0], imgs):
        data = [np.asarray(e["distances"]) for e in r["per_n"]]
        pos = np.arange(1, len(data) + 1)
        ax.violinplot(data, positions=pos, orientation="horizontal", showmedians=True, widths=0.8)
        ax.set_yticks(pos)
        ax.set_yticklabels([f"n={e['n']}" for e in r["per_n"]])
        ax.axvline(r["distance_f"], color="k", ls="--", lw=1.2, label="output vs f")
        if np.isfinite(r["distance_g_sigma"] or np.nan):
            ax.axvline(r["distance_g_sigma"], color="gray", ls="-.", lw=1.2, label="boundary of g_sigma")
        ax.axvline(r["certified_radius"], color="g", lw=2, label="certified R")
        ax.set_xlim(0, r["segment_length"])
        ax.set_xlabel("||output - x_o|| (on the segment [x_o, x_end])")
        ax.set_title(f"image {r['image_id']}, sigma={summary['sigma']}, {summary['repeats']} runs", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

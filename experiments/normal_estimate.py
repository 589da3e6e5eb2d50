"""The normal-vector estimate of HopSkipJump at a boundary point, with vs without RS, as a function
of the probe radius delta (Maho et al., ICASSP 2022: "they correlate well when the probe noise is
larger than sigma").

For each image: x_a the white-box minimal-L2 adversarial of f (DDN); x_b a point of the boundary of
g_sigma on the line x_o -> x_a (bisection with --n-boundary common-random-number votes); then for
each delta, --repeats independent sets of --probes probes x_b + delta u_j (u_j uniform on the unit
sphere, clipped to [0,1] as HSJA does), each decided by f and by one call of g_{sigma,n}; HSJA's
estimate u_hat = mean_j (phi_j - mean phi) u_j with both decision sets on the *same* probes
(rsjax.analysis.normal_estimate_cosines). Plotted: cos(u_hat_f, u_hat_RS) (same probes: it
measures how much the two decision sets agree); cos(u_hat_f, u_hat_f') (f on an independent probe
set: how reproducible f's own estimate is); and the cosine of each
with a reference normal of the boundary of g_sigma at x_b (Stein estimate of -grad pi_y(x_b), from
--stein-samples Gaussian samples; rsjax.analysis.stein_normal).

    python experiments/normal_estimate.py --out runs/normal
Writes normal_estimate.png, normal_estimate.json (cosines per image, n, delta, repeat) and
normal_estimate.csv (means per n and delta).
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
from rsjax.errors import InputError  # noqa: E402
from rsjax.whitebox import minimal_l2_adversarial  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    F.add_common_args(p)
    p.set_defaults(images=3)
    p.add_argument("--deltas", default="0.1,0.25,0.5,1,2,4,8",
                   help="probe radii, in units of sigma")
    p.add_argument("--probes", type=int, default=500,
                   help="probes per estimate (HSJA: 100 at its first iteration, growing as 100 sqrt(t))")
    p.add_argument("--repeats", type=int, default=8, help="independent probe sets per delta")
    p.add_argument("--n-list", default="1,10,100", help="n of g_{sigma,n} in the RS estimate")
    p.add_argument("--n-boundary", type=int, default=2000, help="votes to locate the boundary of g_sigma")
    p.add_argument("--stein-samples", type=int, default=20000, help="samples of the reference normal")
    p.add_argument("--no-clip", action="store_true", help="do not clip the probes to [0,1]")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out, clf, data, ids = F.prepare(args)
    ns = F.parse_list(args.n_list, int)
    rel = np.asarray(F.parse_list(args.deltas, float))
    sigma, k, fn = args.sigma, clf.num_classes, clf.logits_fn
    deltas = rel * sigma
    root = jax.random.key(args.seed)
    x, y = data.images[ids], data.labels[ids].astype(np.int64)
    wb = minimal_l2_adversarial(fn, x, y)
    results = []
    for j, i in enumerate(ids):
        key = jax.random.fold_in(jax.random.fold_in(root, 1), i)
        yy = int(y[j])
        if not wb.success[j]:
            print(f"image {i}: DDN found no adversarial of f; skipped")
            continue
        try:
            x_b, t_b = A.smoothed_boundary_point(fn, x[j], wb.x_adv[j], yy, jax.random.fold_in(key, 0),
                                                 sigma, args.n_boundary, k, t_max=4.0)
        except InputError as e:
            print(f"image {i}: {e}; skipped")
            continue
        ref = A.stein_normal(fn, x_b, yy, jax.random.fold_in(key, 1), sigma, args.stein_samples)
        direction = (wb.x_adv[j] - x[j]).ravel()
        per_n = []
        for n in ns:
            ne = A.normal_estimate_cosines(fn, x_b, yy, jax.random.fold_in(key, 100 + n), deltas,
                                           args.probes, args.repeats, sigma, n, k, reference=ref,
                                           clip=not args.no_clip)
            per_n.append({"n": n, "cos_f_rs": ne.cos_f_rs, "cos_f_f": ne.cos_f_f, "cos_f_ref": ne.cos_f_ref,
                          "cos_rs_ref": ne.cos_rs_ref, "frac_adv_f": ne.frac_adv_f,
                          "frac_adv_rs": ne.frac_adv_rs})
        results.append({"image_id": i, "label": yy, "distance_f": float(wb.l2[j]),
                        "distance_x_b": float(t_b * wb.l2[j]),
                        "cos_reference_vs_whitebox_direction": float(A.cosine(ref.ravel(), direction)),
                        "per_n": per_n})
    rows = []
    for q, n in enumerate(ns):
        for d_i, d in enumerate(deltas):
            def mean_of(name):
                v = [np.asarray(r["per_n"][q][name])[d_i] for r in results]
                return float(np.mean(v)) if v else float("nan")
            rows.append({"n": n, "delta": float(d), "delta_over_sigma": float(rel[d_i]),
                         "cos_f_rs": mean_of("cos_f_rs"), "cos_f_f": mean_of("cos_f_f"),
                         "cos_f_ref": mean_of("cos_f_ref"),
                         "cos_rs_ref": mean_of("cos_rs_ref"), "frac_adv_f": mean_of("frac_adv_f"),
                         "frac_adv_rs": mean_of("frac_adv_rs")})
    summary = {"figure": "cosine of HSJA normal estimates at x_b on the boundary of g_sigma, f vs g_{sigma,n}",
               "model": F.model_info(args, clf), "data": args.data, "sigma": sigma, "ns": ns,
               "deltas": deltas, "deltas_over_sigma": rel, "probes": args.probes, "repeats": args.repeats,
               "n_boundary": args.n_boundary, "stein_samples": args.stein_samples,
               "clip": not args.no_clip, "seed": args.seed, "means": rows, "images": results,
               "seconds": time.perf_counter() - t0}
    F.write_json(out / "normal_estimate.json", summary)
    if rows:
        with open(out / "normal_estimate.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot(summary, out / "normal_estimate.png")
    print(f"{len(results)} images, sigma={sigma}, {args.probes} probes, {args.repeats} repeats; "
          "mean cosines (f vs RS | f vs f' | f vs ref | RS vs ref):")
    for r in rows:
        print(f"  n={r['n']:4d} delta={r['delta_over_sigma']:5.2f} sigma: {r['cos_f_rs']:+.3f} | {r['cos_f_f']:+.3f} | "
              f"{r['cos_f_ref']:+.3f} | {r['cos_rs_ref']:+.3f}   (adversarial probes: f "
              f"{100 * r['frac_adv_f']:.0f} %, RS {100 * r['frac_adv_rs']:.0f} %)")
    print(f"wrote {out / 'normal_estimate.png'}, .json, .csv in {summary['seconds']:.0f} s")
    return summary


def plot(summary: dict, path: Path) -> None:
    plt = F.matplotlib_pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rel = np.asarray(summary["deltas_over_sigma"])
    for q, (c, n) in enumerate(zip(colors, summary["ns"])):
        def stack(name):
            v = [np.asarray(r["per_n"][q][name], dtype=float) for r in summary["images"]]
            return np.concatenate(v, axis=1) if v else np.full((len(rel), 1), np.nan)
        for name, style, lab in (("cos_f_rs", "-o", f"cos(f, RS) n={n}"),
                                 ("cos_rs_ref", "--s", f"cos(RS, ref) n={n}")):
            v = stack(name)
            m = np.nanmean(v, axis=1)
            se = np.nanstd(v, axis=1) / np.sqrt(max(v.shape[1], 1))
            ax[0].errorbar(rel, m, yerr=2 * se, fmt=style, color=c, ms=4, lw=1.2, capsize=2, label=lab)
        ax[1].plot(rel, np.nanmean(stack("frac_adv_rs"), axis=1), "-o", color=c, ms=4, label=f"RS n={n}")
    if summary["images"]:
        v = np.concatenate([np.asarray(r["per_n"][0]["cos_f_ref"], float) for r in summary["images"]], axis=1)
        ax[0].plot(rel, np.nanmean(v, axis=1), ":k^", ms=4, label="cos(f, ref)")
        v = np.concatenate([np.asarray(r["per_n"][0]["cos_f_f"], float) for r in summary["images"]], axis=1)
        ax[0].plot(rel, np.nanmean(v, axis=1), "-.kv", ms=4, label="cos(f, f') (independent probes)")
        v = np.concatenate([np.asarray(r["per_n"][0]["frac_adv_f"], float) for r in summary["images"]], axis=1)
        ax[1].plot(rel, np.nanmean(v, axis=1), ":k^", ms=4, label="f")
    for a in ax:
        a.set_xscale("log")
        a.axvline(1.0, color="gray", lw=0.8)
        a.set_xlabel("probe radius delta / sigma")
    ax[0].set_ylabel("mean cosine similarity")
    ax[0].set_title(f"HSJA normal estimates at x_b on the boundary of g_sigma (sigma={summary['sigma']}, "
                    f"{summary['probes']} probes)", fontsize=9)
    ax[0].legend(fontsize=7)
    ax[1].set_ylabel("fraction of probes adversarial")
    ax[1].set_ylim(-0.02, 1.02)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

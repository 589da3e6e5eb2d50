"""Fig. 1 of Maho et al. (ICASSP 2022): P[g_{sigma,n}(x_t) != y] along x_t = x_o + t (x_a - x_o),
x_a the white-box minimal-L2 adversarial of f (DDN, rsjax.whitebox), for several n.

Also plotted: pi_y(x_t) (Monte Carlo, --n-pi samples), the law of one vote of n i.i.d.
micro-decisions with the estimated class probabilities pi(x_t) (dashed; for two classes it is
P[Bin(n, 1 - pi_y) >= n~], also stored), the certified radius R of x_o (Cohen's CERTIFY), the
boundary of f (t = 1), the boundary of g_sigma (first t where the argmax of the --n-pi votes is
not y) and, for each n, the eq.(5)
level threshold of rsjax.theory (where pi_y(x_t) falls below 1 - I^{-1}_{P_a}(n~, n - n~ + 1)).
The x-axis is the distance ||x_t - x_o|| = t ||x_a - x_o||.

    python experiments/along_direction.py --out runs/fig1
Writes along_direction.png, along_direction.json (every plotted number, per image).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import figure_common as F  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rsjax import analysis as A  # noqa: E402
from rsjax.smoothing import certify  # noqa: E402
from rsjax.theory import level_threshold  # noqa: E402
from rsjax.whitebox import minimal_l2_adversarial  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    F.add_common_args(p)
    p.add_argument("--n-list", default="1,10,100", help="numbers of noise samples n of g_{sigma,n}")
    p.add_argument("--repeats", type=int, default=200, help="calls of g_{sigma,n} per point")
    p.add_argument("--t-max", type=float, default=2.5, help="largest t (x_a is t = 1)")
    p.add_argument("--t-steps", type=int, default=41, help="points on [0, t-max]")
    p.add_argument("--n-pi", type=int, default=10000, help="samples for the estimate of pi_y(x_t)")
    p.add_argument("--p-a", type=float, default=0.5, help="level P_a of the eq.(5) thresholds")
    p.add_argument("--certify-n0", type=int, default=100)
    p.add_argument("--certify-n", type=int, default=10000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--ddn-steps", type=int, default=200)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out, clf, data, ids = F.prepare(args)
    ns = F.parse_list(args.n_list, int)
    sigma, k = args.sigma, clf.num_classes
    fn = clf.logits_fn
    root = jax.random.key(args.seed)
    x, y = data.images[ids], data.labels[ids].astype(np.int64)
    wb = minimal_l2_adversarial(fn, x, y, steps=args.ddn_steps)
    keys = A.fold_keys(jax.random.fold_in(root, 0), np.asarray(ids))
    cert = certify(fn, x, keys, sigma, args.certify_n0, args.certify_n, args.alpha, k)
    ts = np.linspace(0.0, args.t_max, args.t_steps)
    results = []
    for j, i in enumerate(ids):
        if not wb.success[j]:
            print(f"image {i}: DDN found no adversarial of f; skipped")
            continue
        key = jax.random.fold_in(jax.random.fold_in(root, 1), i)
        x_o, x_a, yy = x[j], wb.x_adv[j], int(y[j])
        dist = float(wb.l2[j])
        pts = A.points_along(x_o, x_a, ts)
        f_labels = A.labels_of(fn, pts)
        rival = int(A.labels_of(fn, x_a[None])[0])
        freq = A.class_frequencies(fn, pts, jax.random.fold_in(key, 0), sigma, args.n_pi, k)
        pi = freq[:, yy]
        gs_labels = freq.argmax(axis=1)
        off = np.nonzero(gs_labels != yy)[0]
        t_gs = float(0.5 * (ts[off[0] - 1] + ts[off[0]])) if len(off) and off[0] > 0 else float("nan")
        per_n = []
        for n in ns:
            prob = A.prob_adversarial(fn, pts, yy, jax.random.fold_in(key, 1000 + n), sigma, n,
                                      args.repeats, k)
            pred = A.multinomial_vote_probability(freq, yy, n, seed=args.seed)
            pred2 = A.binary_vote_probability(pi, n, loses_ties=yy > rival)
            thr = level_threshold(n, args.p_a)
            per_n.append({
                "n": n, "prob_adversarial": prob, "stderr": A.binomial_stderr(prob, args.repeats),
                "vote_prediction": pred, "two_class_prediction": pred2, "eq5_threshold_pi": thr,
                "t_eq5": A.first_crossing(ts, pi, thr),
                "t_prob_half": A.first_crossing(ts, prob, 0.5, decreasing=False),
                "t_prob_pa": A.first_crossing(ts, prob, args.p_a, decreasing=False),
            })
        radius = float(cert.radii[j]) if cert.predictions[j] == yy else 0.0
        results.append({"image_id": i, "label": yy, "rival_label": rival, "distance_f": dist,
                        "certified_radius": radius, "certified_prediction": int(cert.predictions[j]),
                        "ts": ts, "distances": ts * dist, "f_labels": f_labels, "pi_y": pi,
                        "g_sigma_labels": gs_labels, "pi_top_other": np.where(
                            np.arange(k)[None] == yy, -1.0, freq).max(axis=1),
                        "t_boundary_g_sigma": t_gs, "per_n": per_n})
    summary = {"figure": "P[g_{sigma,n}(x_o + t (x_a - x_o)) != y] along the white-box direction",
               "model": F.model_info(args, clf), "data": args.data, "sigma": sigma, "ns": ns,
               "repeats": args.repeats, "n_pi": args.n_pi, "p_a": args.p_a, "seed": args.seed,
               "decision": "plurality != y (ties to the lowest class index)",
               "certify": {"n0": args.certify_n0, "n": args.certify_n, "alpha": args.alpha},
               "images": results, "seconds": time.perf_counter() - t0}
    F.write_json(out / "along_direction.json", summary)
    plot(summary, out / "along_direction.png")
    for r in results:
        ratio = r["distance_f"] / r["certified_radius"] if r["certified_radius"] > 0 else float("inf")
        print(f"image {r['image_id']} (y={r['label']}): ||x_a - x_o|| = {r['distance_f']:.3f}, "
              f"certified R = {r['certified_radius']:.3f} (ratio {ratio:.1f}), boundary of g_sigma at "
              f"{r['t_boundary_g_sigma'] * r['distance_f']:.3f}")
        for e in r["per_n"]:
            print(f"  n={e['n']:4d}: P[adv] = 0.5 at distance {e['t_prob_half'] * r['distance_f']:.3f}, "
                  f"= P_a={args.p_a} at {e['t_prob_pa'] * r['distance_f']:.3f}; eq.(5) threshold "
                  f"pi_y <= {e['eq5_threshold_pi']:.3f} at {e['t_eq5'] * r['distance_f']:.3f}; "
                  f"P[adv] at x_a = {np.interp(1.0, r['ts'], e['prob_adversarial']):.2f}")
    print(f"wrote {out / 'along_direction.png'} and .json in {summary['seconds']:.0f} s")
    return summary


def plot(summary: dict, path: Path) -> None:
    plt = F.matplotlib_pyplot()
    imgs = summary["images"]
    fig, axes = plt.subplots(1, max(len(imgs), 1), figsize=(6.5 * max(len(imgs), 1), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, r in zip(axes[0], imgs):
        dist = np.asarray(r["distances"])
        for c, e in zip(colors, r["per_n"]):
            prob = np.asarray(e["prob_adversarial"])
            ax.plot(dist, prob, "-", color=c, label=f"n={e['n']}")
            ax.fill_between(dist, prob - 2 * np.asarray(e["stderr"]), prob + 2 * np.asarray(e["stderr"]),
                            color=c, alpha=0.15, lw=0)
            ax.plot(dist, e["vote_prediction"], "--", color=c, lw=0.8)
            if np.isfinite(e["t_eq5"]):
                ax.axvline(e["t_eq5"] * r["distance_f"], color=c, ls=":", lw=1)
        ax.plot(dist, 1 - np.asarray(r["pi_y"]), "k-", lw=0.8, alpha=0.6, label="1 - pi_y (n=1 limit)")
        ax.axvline(r["certified_radius"], color="g", lw=2, label=f"certified R={r['certified_radius']:.2f}")
        ax.axvline(r["distance_f"], color="k", ls="--", lw=1, label=f"boundary of f ({r['distance_f']:.2f})")
        if np.isfinite(r["t_boundary_g_sigma"]):
            ax.axvline(r["t_boundary_g_sigma"] * r["distance_f"], color="gray", ls="-.", lw=1,
                       label="boundary of g_sigma")
        ax.set_xlabel("||x_t - x_o||  (x_t on the line x_o -> x_a)")
        ax.set_ylabel("P[g_{sigma,n}(x_t) != y]")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"image {r['image_id']}, sigma={summary['sigma']} "
                     f"(dashed: vote law from pi(x_t); dotted: eq.(5), P_a={summary['p_a']})", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

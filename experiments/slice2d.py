"""Fig. 2 of Maho et al. (ICASSP 2022): a 2-D slice of input space x_o + a u + b v around an image
(u, v orthonormal; random by default, or u along the white-box adversarial direction with
--directions adversarial), with the label of every grid point given by f, by g_sigma (one vote of
--n-large samples, a proxy of the smoothed classifier) and by one draw of g_{sigma,n} for each
small n in --n-small (fresh noise at every grid point). The certified radius R of x_o (Cohen's
CERTIFY) is drawn as a circle: the certified L2 ball meets the plane in that disc.

    python experiments/slice2d.py --out runs/fig2
Writes slice2d.png, slice2d.npz (coords, directions, label grids) and slice2d.json (settings and
per-panel statistics: fraction of grid points whose label differs from f and from g_sigma,
radius of the largest disc around x_o with label y).
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
from rsjax.whitebox import minimal_l2_adversarial  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    F.add_common_args(p)
    p.add_argument("--directions", choices=("random", "adversarial"), default="random",
                   help="random: two random orthonormal directions; adversarial: u = unit(x_a - x_o)")
    p.add_argument("--resolution", type=int, default=51, help="grid points per axis")
    p.add_argument("--extent", type=float, default=None,
                   help="half-width of the slice in L2 units; default: 2x the nearest boundary of f "
                        "along +-u, +-v")
    p.add_argument("--n-large", type=int, default=500, help="samples of the g_sigma panel")
    p.add_argument("--n-small", default="1,10", help="n of the one-draw g_{sigma,n} panels")
    p.add_argument("--certify-n", type=int, default=10000)
    p.add_argument("--alpha", type=float, default=0.001)
    return p.parse_args(argv)


def auto_extent(fn, x_o, y, dirs, t_max: float = 20.0, steps: int = 400) -> float:
    """2x the smallest distance at which f's label leaves y along +-u or +-v (grid scan)."""
    ts = np.linspace(0.0, t_max, steps + 1)[1:]
    best = np.inf
    for d in dirs:
        for s in (1.0, -1.0):
            lab = A.labels_of(fn, x_o[None] + (s * ts).astype(np.float32).reshape(-1, 1, 1, 1) * d[None])
            off = np.nonzero(lab != y)[0]
            if len(off):
                best = min(best, ts[off[0]])
    return float(2.0 * best) if np.isfinite(best) else 10.0


def disc_radius(labels: np.ndarray, coords: np.ndarray, y: int) -> float:
    """Radius of the largest disc centred at the origin whose grid points all have label y."""
    b, a = np.meshgrid(coords, coords, indexing="ij")
    r = np.hypot(a, b)
    wrong = labels != y
    return float(r[wrong].min()) if wrong.any() else float(r.max())


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out, clf, data, (i,) = F.prepare(args, count=1)
    small = F.parse_list(args.n_small, int)
    sigma, k, fn = args.sigma, clf.num_classes, clf.logits_fn
    root = jax.random.fold_in(jax.random.key(args.seed), i)
    x_o, y = data.images[i], int(data.labels[i])
    first, dist_f = None, None
    if args.directions == "adversarial":
        wb = minimal_l2_adversarial(fn, x_o[None], np.array([y]))
        if wb.success[0]:
            first, dist_f = wb.x_adv[0] - x_o, float(wb.l2[0])
    dirs = A.orthonormal_directions(jax.random.fold_in(root, 0), x_o.shape, 2, first=first)
    extent = args.extent if args.extent else auto_extent(fn, x_o, y, dirs)
    coords = np.linspace(-extent, extent, args.resolution).astype(np.float32)
    pts = A.slice_points(x_o, dirs[0], dirs[1], coords)
    shape = (args.resolution, args.resolution)
    panels = {"f": A.labels_of(fn, pts).reshape(shape)}
    lab, top = A.smoothed_labels(fn, pts, jax.random.fold_in(root, 1), sigma, args.n_large, k)
    panels[f"g_sigma (n={args.n_large})"] = lab.reshape(shape)
    top_freq = top.reshape(shape)
    for n in small:
        lab, _ = A.smoothed_labels(fn, pts, jax.random.fold_in(root, 100 + n), sigma, n, k)
        panels[f"g_sigma,n (n={n}, one draw)"] = lab.reshape(shape)
    cert = certify(fn, x_o[None], A.fold_keys(jax.random.fold_in(root, 2), [0]), sigma, 100,
                   args.certify_n, args.alpha, k)
    radius = float(cert.radii[0]) if cert.predictions[0] == y else 0.0
    ref_f, ref_g = panels["f"], panels[f"g_sigma (n={args.n_large})"]
    stats = {name: {"frac_differs_from_f": float(np.mean(v != ref_f)),
                    "frac_differs_from_g_sigma": float(np.mean(v != ref_g)),
                    "frac_label_y": float(np.mean(v == y)),
                    "clean_disc_radius": disc_radius(v, coords, y)} for name, v in panels.items()}
    summary = {"figure": "2-D slice of input space, labels with and without RS",
               "model": F.model_info(args, clf), "data": args.data, "image_id": i, "label": y,
               "class_names": list(data.class_names), "sigma": sigma, "directions": args.directions,
               "distance_f_along_u": dist_f, "extent": extent, "resolution": args.resolution,
               "n_large": args.n_large, "n_small": small, "certified_radius": radius,
               "seed": args.seed, "panels": stats, "seconds": time.perf_counter() - t0}
    np.savez_compressed(out / "slice2d.npz", coords=coords, directions=dirs, x_o=x_o,
                        top_frequency_g_sigma=top_freq, panel_names=np.array(list(panels)),
                        **{f"labels_{j}": v for j, v in enumerate(panels.values())})
    F.write_json(out / "slice2d.json", summary)
    plot(summary, panels, coords, out / "slice2d.png")
    print(f"image {i} (y={y}, {data.class_names[y]}), sigma={sigma}, slice half-width {extent:.2f}, "
          f"certified R = {radius:.3f}")
    for name, s in stats.items():
        print(f"  {name:28s}: {100 * s['frac_differs_from_f']:5.1f} % of points differ from f, "
              f"{100 * s['frac_differs_from_g_sigma']:5.1f} % from g_sigma; label-y disc radius "
              f"{s['clean_disc_radius']:.2f}")
    print(f"wrote {out / 'slice2d.png'}, .npz, .json in {summary['seconds']:.0f} s")
    return summary


def plot(summary: dict, panels: dict, coords: np.ndarray, path: Path) -> None:
    plt = F.matplotlib_pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Circle, Patch

    names = summary["class_names"]
    cmap = ListedColormap(plt.get_cmap("tab10").colors[:len(names)] if len(names) <= 10
                          else plt.get_cmap("tab20").colors[:len(names)])
    m = len(panels)
    fig, axes = plt.subplots(1, m, figsize=(3.6 * m + 1.5, 3.9), squeeze=False)
    ext = [coords[0], coords[-1], coords[0], coords[-1]]
    present = sorted(set(np.concatenate([np.unique(v) for v in panels.values()]).tolist()))
    for ax, (name, lab) in zip(axes[0], panels.items()):
        ax.imshow(lab, origin="lower", extent=ext, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5,
                  interpolation="nearest")
        ax.plot([0], [0], "k+", ms=10)
        if summary["certified_radius"] > 0:
            ax.add_patch(Circle((0, 0), summary["certified_radius"], fill=False, ec="k", lw=1.2))
        if summary["distance_f_along_u"]:
            ax.plot([summary["distance_f_along_u"]], [0], "kx", ms=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("a (along u)")
    axes[0][0].set_ylabel("b (along v)")
    handles = [Patch(color=cmap(c), label=f"{c}: {names[c]}") for c in present]
    fig.legend(handles=handles, loc="center right", fontsize=7, title="label")
    fig.suptitle(f"image {summary['image_id']} (y={summary['label']}), sigma={summary['sigma']}, "
                 f"{summary['directions']} directions; circle: certified R={summary['certified_radius']:.2f}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / (3.6 * m + 1.5), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

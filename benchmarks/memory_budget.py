"""Peak resident memory of the study's votes under a memory budget (issue 17).

    python benchmarks/memory_budget.py                  # the three rows of benchmarks/RESULTS.md
    python benchmarks/memory_budget.py --rows mnv2-100  # one of them

Each row runs in its own subprocess (so ``ru_maxrss`` is that run's peak): it loads the model,
the images, derives the vote chunk from the budget (:func:`rsjax.memory.plan`, with the sweep's
vote chunk 2048 and attack batch 64 as the values it may lower), then spends

* the study oracle's votes: :func:`rsjax.study.oracle.scheduled_vote_counts` (the engine of
  :class:`~rsjax.study.oracle.ParamOracle`, variables as an argument, no early stop) on blocks
  of exactly the derived chunk, n votes per image; and
* Cohen's CERTIFY (:func:`rsjax.smoothing.certify`, n0 = 100 and n) with the derived chunk,

and reports the peak RSS against the budget. Weights: the shared MobileNetV2 (TFLite) and
ResNet-20 (PyTorch) converted to rsjax checkpoints when ``../shared`` and their converters are
there, else random initial weights (memory does not depend on the weights); images: the shared
ImageNet val / CIFAR-10 test images when present, else uniform noise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RSJAX_SHARED", ROOT.parent / "shared")) / "data"  # ../shared beside the repo
sys.path.insert(0, str(ROOT))

#: name -> (arch, budget GiB, n votes per image, images, shared weights, converter arch, data spec)
ROWS = {
    "mnv2-100": ("mobilenet_v2", 4.0, 100, 2),
    "mnv2-1000": ("mobilenet_v2", 4.0, 1000, 2),
    "r20-10000": ("cifar_resnet20", 2.0, 10_000, 2),
}
WEIGHTS = {"mobilenet_v2": "imagenet/mobilenet_v2_1.0_224_quant.tflite", "cifar_resnet20": "cifar10/resnet20-12fca82f.th"}
DATA = {"mobilenet_v2": ("imagefolder:{}/imagenet/val1300", 224), "cifar_resnet20": ("npz:{}/cifar10/test_jpeg.npz", None)}


def _checkpoint(arch: str, cache: Path) -> str | None:
    src = SHARED / WEIGHTS.get(arch, "-")
    if arch not in WEIGHTS or not src.is_file():
        return None
    out = cache / f"{arch}-{src.stem}.ckpt"
    if not out.is_file():
        from rsjax.cli import main as cli

        try:
            if cli(["convert", "--arch", arch, "--weights", str(src), "--out", str(out)]) != 0:
                return None
        except Exception as e:  # a converter's optional dependency (torch, tflite) missing
            print(f"memory_budget: cannot convert {src}: {e}; random weights", file=sys.stderr)
            return None
    return str(out)


def worker(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rsjax import Classifier, get_model_spec
    from rsjax.memory import GiB, peak_memory, plan
    from rsjax.smoothing import certify
    from rsjax.study.oracle import apply_fn, scheduled_vote_counts
    from rsjax.xla_options import jit

    from rsjax.cache import enable_compilation_cache

    enable_compilation_cache(Path(args.cache))  # the rows share compiled programs
    arch = args.arch
    spec = get_model_spec(arch)
    ckpt = _checkpoint(arch, Path(args.cache)) if not args.random_weights else None
    clf = (Classifier.from_checkpoint(ckpt) if ckpt else
           Classifier(spec, spec.init(jax.random.PRNGKey(0))))
    data_spec, size = DATA.get(arch, (None, None))
    images = None
    if data_spec and (SHARED / WEIGHTS[arch]).parent.is_dir():
        from rsjax.data import load_dataset

        try:
            images = load_dataset(data_spec.format(SHARED), limit=args.images, image_size=size).images
        except Exception as e:
            print(f"memory_budget: no shared images ({e}); uniform noise", file=sys.stderr)
    if images is None:
        images = np.random.default_rng(0).uniform(size=(args.images, *spec.input_shape)).astype(np.float32)
    images = np.asarray(images[:args.images], np.float32)
    budget = None if args.budget is None else int(args.budget * GiB)
    t0 = time.perf_counter()
    p = plan(arch=arch, budget=budget, vote_chunk=args.vote_chunk, attack_batch=64, data_bytes=images.nbytes,
             points=50, dtype="float32")
    plan_s = time.perf_counter() - t0
    chunk = p.vote_chunk
    rss_after_plan = peak_memory()["peak_rss_bytes"]

    f = apply_fn(clf)
    from rsjax.smoothing import split_rows

    eval_rows = split_rows(clf.forward_block, chunk)

    @jit
    def oracle_votes(variables, x, keys, sigma, n):
        return scheduled_vote_counts(lambda z: f(variables, z), x, keys, sigma, n, clf.num_classes,
                                     chunk_size=chunk, eval_rows=eval_rows).counts

    x = jnp.asarray(images)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i))(jnp.arange(len(images), dtype=jnp.uint32))
    t1 = time.perf_counter()
    counts = np.asarray(oracle_votes(clf.variables, x, keys, jnp.float32(args.sigma), jnp.int32(args.n)))
    oracle_s = time.perf_counter() - t1
    rss_after_oracle = peak_memory()["peak_rss_bytes"]
    assert (counts.sum(-1) == args.n).all()
    t2 = time.perf_counter()
    res = certify(clf.logits_fn, images, keys, args.sigma, 100, args.n, 0.001, clf.num_classes, chunk_size=chunk)
    certify_s = time.perf_counter() - t2
    evals = len(images) * (args.n + 100 + args.n)
    peak = peak_memory()
    return {"arch": arch, "weights": "shared" if ckpt else "random", "images": len(images),
            "image_shape": list(spec.input_shape), "n": args.n, "sigma": args.sigma,
            "budget_gib": p.budget_bytes / GiB, "vote_chunk": chunk, "eval_rows": eval_rows,
            "estimated_peak_gib": p.estimated_peak_bytes / GiB, "plan": p.to_dict(), "plan_s": plan_s,
            "rss_after_plan_gib": rss_after_plan / GiB, "rss_after_oracle_gib": rss_after_oracle / GiB,
            "oracle_s": oracle_s, "certify_s": certify_s,
            "evaluations": evals, "votes_per_s": evals / (oracle_s + certify_s),
            "peak_rss_gib": peak["peak_rss_bytes"] / GiB, "under_budget": peak["peak_rss_bytes"] <= p.budget_bytes,
            "certified": int((res.predictions >= 0).sum()),
            "backend": jax.default_backend(), "jax": jax.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "rsjax-memory-bench"))
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=None, help="budget in GiB for --worker (None: default)")
    ap.add_argument("--n", type=int, default=100, help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--vote-chunk", type=int, default=2048, help="the configured chunk the plan may lower")
    args = ap.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = []
    for name in args.rows:
        arch, budget, n, k = ROWS[name]
        cmd = [sys.executable, __file__, "--worker", "--arch", arch, "--budget", str(budget), "--n", str(n),
               "--images", str(k), "--cache", args.cache, "--sigma", str(args.sigma),
               "--vote-chunk", str(args.vote_chunk)] + (["--random-weights"] if args.random_weights else [])
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["name"], row["wall_s"] = name, time.perf_counter() - t0
        rows.append(row)
        (Path(args.cache) / f"row-{name}.json").write_text(json.dumps(row, indent=2) + "\n")
        print(f"{name}: done in {row['wall_s']:.0f} s", file=sys.stderr, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average (1 min) {load:.1f}; {os.cpu_count()} CPUs; jax {rows[0]['jax'] if rows else '?'}")
    print("| run | model | images x n | budget | vote chunk | estimated peak | peak RSS | under budget "
          "| votes time (oracle + certify) | votes/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['arch']} ({r['weights']} weights) | {r['images']} x {r['n']:,} | "
              f"{r['budget_gib']:.1f} GiB | {r['vote_chunk']} | {r['estimated_peak_gib']:.2f} GiB | "
              f"{r['peak_rss_gib']:.2f} GiB | {'yes' if r['under_budget'] else 'NO'} | "
              f"{r['oracle_s']:.1f} + {r['certify_s']:.1f} s | {r['votes_per_s']:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["under_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

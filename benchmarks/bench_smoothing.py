"""Throughput of randomized-smoothing votes vs the raw jitted forward pass, CERTIFY time per image,
and how often the forward pass's float dependence on batch shape changes a vote.

    python benchmarks/bench_smoothing.py throughput --model fmnist_mlp
    python benchmarks/bench_smoothing.py throughput --model cifar_resnet20 \
        --weights ../shared/data/cifar10/resnet20-12fca82f.th --max-evals 30000
    python benchmarks/bench_smoothing.py certify --model cifar_resnet20 \
        --weights ../shared/data/cifar10/resnet20-12fca82f.th --n 10000 --chunk-sizes 128 256 512
    python benchmarks/bench_smoothing.py batch-dependence --model cifar_resnet20 --weights ...

Each prints a markdown table. Times are the best of ``--reps`` runs after a warm-up call (so
compilation is excluded and contention from other processes is filtered as well as possible); the
1-minute load average is printed with each table because shared machines inflate wall times.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if "--single-thread" in sys.argv:  # must precede the jax import: one XLA CPU thread, CPU time = work
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsjax import Classifier, get_model_spec  # noqa: E402
from rsjax.smoothing import certify, noisy_copies, sample_noise, votes  # noqa: E402
from rsjax.xla_options import jit  # noqa: E402


def load_classifier(model: str, weights: str | None) -> Classifier:
    spec = get_model_spec(model)
    if weights is None:
        return Classifier(spec, spec.init(jax.random.key(0)), {"arch": model, "recipe": "random-init"})
    if weights.endswith((".th", ".pth", ".pt", ".safetensors")):
        from rsjax.models.convert import convert_file

        out = os.path.join(tempfile.mkdtemp(), f"{model}.ckpt")
        convert_file(model, weights, out)
        weights = out
    return Classifier.from_checkpoint(weights)


def best_time(fn, reps: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def load_note() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def point_keys(ids) -> jax.Array:
    root = jax.random.key(0)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(ids, jnp.uint32))


def raw_forward(clf: Classifier, batch_sizes, reps: int) -> dict[int, float]:
    """Images/s of jit(logits_fn) on a fixed input, per batch size."""
    f = jit(clf.logits_fn)
    out = {}
    for bs in batch_sizes:
        x = jnp.asarray(np.random.default_rng(0).uniform(size=(bs, *clf.input_shape)), jnp.float32)
        out[bs] = bs / best_time(lambda: f(x), reps)
    return out


def forward_with_noise(clf: Classifier, bs: int, reps: int, noise: str) -> float:
    """Images/s of fresh noise generation (one key per sample) + forward, fused in one jit: the
    floor of any Monte Carlo vote."""
    shape = clf.input_shape

    @jit
    def step(x, key):
        ks = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(bs, dtype=jnp.uint32))
        z = jax.vmap(lambda k: sample_noise(k, shape, noise))(ks)
        return jnp.argmax(clf.logits_fn(x[None] + 0.25 * z), -1)

    x = jnp.full(shape, 0.5, jnp.float32)
    return bs / best_time(lambda: step(x, jax.random.key(1)), reps)


def cmd_throughput(args) -> None:
    clf = load_classifier(args.model, args.weights)
    raw = raw_forward(clf, args.raw_batch_sizes, args.reps)
    best_bs = max(raw, key=raw.get)
    chunk = args.chunk_size or best_bs
    noisy = {impl: forward_with_noise(clf, chunk, args.reps, impl) for impl in ("hash", "threefry")}
    print(f"\n### {args.model} ({clf.metadata.get('recipe', 'weights') if clf.metadata else ''}) — {load_note()}")
    print("\nraw jitted forward (images/s): " + ", ".join(f"batch {b}: {v:,.0f}" for b, v in raw.items())
          + f" -> best {raw[best_bs]:,.0f} at batch {best_bs}")
    print(f"noise + forward fused, batch {chunk} (images/s): hash {noisy['hash']:,.0f}, "
          f"threefry {noisy['threefry']:,.0f}\n")
    print(f"votes, chunk_size={chunk}, noise=hash: model evaluations/s, wall clock (% of the raw forward at "
          f"batch {best_bs} timed interleaved with it):\n")
    rng = np.random.default_rng(0)
    f = jit(clf.logits_fn)
    xr = jnp.asarray(rng.uniform(size=(best_bs, *clf.input_shape)), jnp.float32)
    rows_wall, rows_cpu = [], []
    for b in args.bs:
        cells_wall, cells_cpu = [], []
        x = rng.uniform(size=(b, *clf.input_shape)).astype(np.float32)
        keys = point_keys(range(b))
        for n in args.ns:
            if b * n > args.max_evals:
                cells_wall.append("skipped")
                cells_cpu.append("skipped")
                continue
            call = lambda: votes(clf.logits_fn, x, keys, 0.25, n, clf.num_classes, chunk_size=chunk).counts
            call()
            raw_call = lambda: jax.block_until_ready(f(xr))
            raw_call()
            tv, tr, cv, cr = [], [], [], []
            for _ in range(max(1, min(args.reps, int(args.max_evals // (b * n))))):  # interleaved
                for fn, wall, cpu in ((raw_call, tr, cr), (call, tv, cv)):
                    t, c = time.perf_counter(), time.process_time()
                    fn()
                    wall.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
            rate, raw_now = b * n / min(tv), best_bs / min(tr)
            cells_wall.append(f"{rate:,.0f} ({100 * rate / raw_now:.0f} %)")
            cpu_rate, cpu_raw = b * n / min(cv), best_bs / min(cr)
            cells_cpu.append(f"{cpu_rate:,.0f} ({100 * cpu_rate / cpu_raw:.0f} %)")
        rows_wall.append(f"| {b} | " + " | ".join(cells_wall) + " |")
        rows_cpu.append(f"| {b} | " + " | ".join(cells_cpu) + " |")
        print(rows_wall[-1], "   cpu-time:", rows_cpu[-1], file=sys.stderr, flush=True)
    header = "| B \\ n | " + " | ".join(str(n) for n in args.ns) + " |\n|---|" + "---|" * len(args.ns)
    print(header)
    print("\n".join(rows_wall))
    print(f"\nsame, per CPU-second of this process (evaluations / process CPU time; % of raw per CPU-second)"
          " -- less sensitive to other processes on a shared machine:\n")
    print(header)
    print("\n".join(rows_cpu))


def cmd_certify(args) -> None:
    clf = load_classifier(args.model, args.weights)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.images, *clf.input_shape)).astype(np.float32)
    if args.cifar_images:
        x = np.load(args.cifar_images)["images"][: args.images].astype(np.float32) / 255
    print(f"\n### CERTIFY per image, {args.model}, n0=100, n={args.n}, batch of 1 image — {load_note()}\n")
    print("| chunk_size | noise | s / image (best of reps) | evaluations/s |")
    print("|---|---|---|---|")
    for cs in args.chunk_sizes:
        for noise in args.noises:
            def run_one(i):
                return certify(clf.logits_fn, x[i:i + 1], point_keys([i]), 0.25, 100, args.n, 0.001,
                               clf.num_classes, chunk_size=cs, noise=noise).radii
            run_one(0)  # compile
            per_image = []
            for i in range(args.images):
                t = time.perf_counter()
                run_one(i)
                per_image.append(time.perf_counter() - t)
            s = min(per_image)
            print(f"| {cs} | {noise} | {s:.2f} (mean {np.mean(per_image):.2f}) | {(args.n + 100) / s:,.0f} |",
                  flush=True)


def cmd_batch_dependence(args) -> None:
    """Same noisy inputs, labelled in different batch shapes: how many micro-decisions flip, and
    how many voted labels differ between batchings of votes()."""
    clf = load_classifier(args.model, args.weights)
    if args.cifar_images:
        x = np.load(args.cifar_images)["images"][: args.images].astype(np.float32) / 255
    elif args.model.startswith("fmnist"):
        from rsjax.data import load_dataset

        x = load_dataset("fashion-mnist:test", limit=args.images).images
    else:
        x = np.random.default_rng(0).uniform(size=(args.images, *clf.input_shape)).astype(np.float32)
    n, sigma = args.n, args.sigma
    f = jit(clf.logits_fn)
    flips = total = 0
    make_copies = jit(lambda xi, k: noisy_copies(xi, k, sigma, args.direct))
    for i in range(len(x)):
        copies = make_copies(jnp.asarray(x[i]), point_keys([i])[0])
        big = np.asarray(jnp.argmax(f(copies), -1))
        small = np.concatenate([np.asarray(jnp.argmax(f(copies[s:s + 7]), -1)) for s in range(0, len(copies), 7)])
        flips += int((big != small).sum())
        total += len(big)
    keys = point_keys(range(len(x)))
    ref = votes(clf.logits_fn, x, keys, sigma, n, clf.num_classes, chunk_size=1024).counts
    alt = np.concatenate([votes(clf.logits_fn, x[i:i + 1], keys[i:i + 1], sigma, n, clf.num_classes,
                                chunk_size=250).counts for i in range(len(x))])
    diff = np.abs(ref - alt).sum() // 2
    labels_differ = int((ref.argmax(1) != alt.argmax(1)).sum())
    print(f"\n### batch-shape dependence, {args.model}, sigma={sigma} — {load_note()}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| micro-decisions that differ, same noisy input at batch {args.direct} vs batch 7 | "
          f"{flips} / {total} ({100 * flips / total:.4f} %) |")
    print(f"| votes(): counts moved, {len(x)} images x n={n}, one batch chunk 1024 vs one image chunk 250 | "
          f">= {diff} / {ref.sum()} ({100 * diff / ref.sum():.4f} %) |")
    print(f"| voted labels that differ between those two runs | {labels_differ} / {len(x)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("throughput", "certify", "batch-dependence"):
        s = sub.add_parser(name)
        s.add_argument("--model", default="fmnist_mlp")
        s.add_argument("--weights", default=None, help="rsjax checkpoint or PyTorch weights (converted)")
        s.add_argument("--reps", type=int, default=3)
        s.add_argument("--cifar-images", default=None, help="npz with images uint8 (e.g. test_first20_lossless)")
        s.add_argument("--images", type=int, default=3)
        s.add_argument("--n", type=int, default=10_000)
        s.add_argument("--sigma", type=float, default=0.25)
        s.add_argument("--single-thread", action="store_true",
                       help="one XLA CPU thread (robust CPU-time ratios on a shared machine)")
    t = sub.choices["throughput"]
    t.add_argument("--ns", type=int, nargs="+", default=[10, 100, 1000])
    t.add_argument("--bs", type=int, nargs="+", default=[1, 16, 128])
    t.add_argument("--raw-batch-sizes", type=int, nargs="+", default=None)
    t.add_argument("--chunk-size", type=int, default=None, help="default: the best raw batch size")
    t.add_argument("--max-evals", type=float, default=2e6, help="skip cells with more model evaluations")
    c = sub.choices["certify"]
    c.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 512, 1024])
    c.add_argument("--noises", nargs="+", default=["hash"])
    d = sub.choices["batch-dependence"]
    d.add_argument("--direct", type=int, default=1024, help="noisy copies per image for the direct check")
    args = p.parse_args()
    if getattr(args, "raw_batch_sizes", None) is None and args.cmd == "throughput":
        args.raw_batch_sizes = [256, 1024, 4096] if args.model.startswith("fmnist_mlp") else [64, 128, 256, 512]
    {"throughput": cmd_throughput, "certify": cmd_certify, "batch-dependence": cmd_batch_dependence}[args.cmd](args)


if __name__ == "__main__":
    main()

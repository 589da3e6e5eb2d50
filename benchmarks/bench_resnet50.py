"""ResNet-50 forward throughput (float32 vs bfloat16) and bfloat16/float32 argmax agreement.

Meant for a GPU (issue 3): prints a markdown table of images/s for each dtype and batch size, and
the fraction of images on which the bfloat16 model's top-1 class equals the float32 model's, on
uniform random images and on real ImageNet validation images (``../shared/data/imagenet/val1300``
when present, resized/center-cropped to 224 by :func:`rsjax.data.load_dataset`).

bfloat16 mode casts the input and every variable (weights and BatchNorm statistics) to bfloat16,
so convs, BN and the pooling run in bfloat16; logits are compared in float32.

Weights: ``--weights FILE`` converts a torchvision ResNet-50 state_dict (.pth or .safetensors);
without it the model has random weights (Flax init, BN statistics randomized), which is enough for
throughput but makes the agreement figure a statement about numerics only, not about a trained
net's decisions -- the table says which was used.

Without a GPU the script refuses to run unless ``--allow-cpu`` (smoke test with tiny sizes)::

    python benchmarks/bench_resnet50.py                                   # on a GPU machine
    python benchmarks/bench_resnet50.py --weights resnet50.pth --append-results benchmarks/RESULTS.md
    python benchmarks/bench_resnet50.py --allow-cpu --batch-sizes 2 --n-agree 4 --iters 1 --repeats 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.models import get_model_spec

ARCH = "resnet50"
DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet" / "val1300"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="64,128,256,512,1024", help="comma-separated")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    p.add_argument("--iters", type=int, default=20, help="forward passes per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per setting (median reported)")
    p.add_argument("--weights", default=None, help="torchvision resnet50 .pth/.safetensors (else random)")
    p.add_argument("--real-images", default=str(DEFAULT_REAL), help="imagefolder dir (labels.txt + images/)")
    p.add_argument("--n-agree", type=int, default=1024, help="images per agreement measurement")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test only)")
    p.add_argument("--append-results", default=None, help="append the markdown section to this file")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def random_variables(seed: int) -> dict:
    """Flax init, then BN running statistics randomized (mean ~ N(0, 0.2^2), var ~ U(0.5, 2))."""
    spec = get_model_spec(ARCH)
    variables = jax.tree_util.tree_map(np.asarray, jax.jit(spec.init)(jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
    new = []
    for path, a in leaves:
        name = jax.tree_util.keystr(path)
        if name.endswith("['mean']"):
            new.append(rng.normal(0, 0.2, a.shape).astype(np.float32))
        else:
            new.append(rng.uniform(0.5, 2.0, a.shape).astype(np.float32))
    variables["batch_stats"] = jax.tree_util.tree_unflatten(treedef, new)
    return variables


def load_variables(args) -> tuple[dict, str]:
    if args.weights:
        from rsjax.models.convert import convert_state_dict, load_state_dict

        return convert_state_dict(ARCH, load_state_dict(args.weights)), f"converted {Path(args.weights).name}"
    return random_variables(args.seed), "random (Flax init, randomized BN statistics)"


def cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def time_forward(forward, variables, batch: int, dtype, iters: int, repeats: int, seed: int):
    """(compile seconds, median images/s over ``repeats`` timings of ``iters`` forward passes)."""
    x = jax.random.uniform(jax.random.PRNGKey(seed), (batch, 224, 224, 3), dtype=jnp.float32).astype(dtype)
    t0 = time.perf_counter()
    forward(variables, x).block_until_ready()
    compile_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            y = forward(variables, x)
        y.block_until_ready()
        rates.append(batch * iters / (time.perf_counter() - t0))
    return compile_s, statistics.median(rates)


def logits_in_batches(forward, variables, images: np.ndarray, dtype, batch: int = 128) -> np.ndarray:
    out = []
    batch = min(batch, len(images))
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        n = len(chunk)
        if n < batch:  # pad to one static shape
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        y = forward(variables, jnp.asarray(chunk).astype(dtype))
        out.append(np.asarray(y.astype(jnp.float32))[:n])
    return np.concatenate(out)


def agreement(forward, v32, v16, images: np.ndarray, labels: np.ndarray | None) -> dict:
    l32 = logits_in_batches(forward, v32, images, jnp.float32)
    l16 = logits_in_batches(forward, v16, images, jnp.bfloat16)
    row = {
        "n": len(images),
        "top1_agree": float((l32.argmax(1) == l16.argmax(1)).mean()),
        "max_abs_dlogit": float(np.abs(l32 - l16).max()),
        "logit_scale": float(np.abs(l32).max()),
    }
    if labels is not None:
        row["acc_f32"] = float((l32.argmax(1) == labels).mean())
        row["acc_bf16"] = float((l16.argmax(1) == labels).mean())
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    device = jax.devices()[0]
    if device.platform != "gpu" and not args.allow_cpu:
        print(f"bench_resnet50: no GPU (jax sees {device.platform}: {device.device_kind}); this benchmark"
              " is for GPUs. Use --allow-cpu for a smoke run with small --batch-sizes.", file=sys.stderr)
        return 2
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    dtypes = [jnp.dtype(d) for d in args.dtypes.split(",")]
    variables, weights_desc = load_variables(args)
    module = get_model_spec(ARCH).module()
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False))

    lines = [
        f"## ResNet-50 forward ({device.device_kind}, jax {jax.__version__})",
        "",
        f"Weights: {weights_desc}. Throughput: median of {args.repeats} timings of {args.iters}"
        " forward passes on random 224x224x3 inputs (compile excluded).",
        "",
        "| dtype | batch | images/s | compile s |",
        "|---|---:|---:|---:|",
    ]
    for dtype in dtypes:
        v = jax.device_put(cast(variables, dtype))
        for batch in batch_sizes:
            try:
                compile_s, rate = time_forward(forward, v, batch, dtype, args.iters, args.repeats, args.seed)
                lines.append(f"| {dtype.name} | {batch} | {rate:,.0f} | {compile_s:.1f} |")
            except Exception as e:  # e.g. out of memory at the largest batch
                lines.append(f"| {dtype.name} | {batch} | failed: {type(e).__name__} | |")
            print(lines[-1], file=sys.stderr, flush=True)

    v32, v16 = jax.device_put(cast(variables, jnp.float32)), jax.device_put(cast(variables, jnp.bfloat16))
    rng = np.random.default_rng(args.seed)
    rows = [("random uniform [0,1]", agreement(
        forward, v32, v16, rng.random((args.n_agree, 224, 224, 3), dtype=np.float32), None))]
    if Path(args.real_images).is_dir():
        from rsjax.data import load_dataset

        data = load_dataset(f"imagefolder:{args.real_images}", limit=args.n_agree, image_size=224)
        labels = data.labels if args.weights else None  # accuracy is meaningless for random weights
        rows.append((f"real: {Path(args.real_images).name}", agreement(forward, v32, v16, data.images, labels)))
    else:
        print(f"bench_resnet50: no real images at {args.real_images}; agreement on random inputs only",
              file=sys.stderr)
    lines += [
        "",
        "bfloat16 vs float32 top-1 agreement:",
        "",
        "| images | n | top-1 agreement | max abs dlogit | max abs logit | acc f32 | acc bf16 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        acc = (f"{r['acc_f32']:.3f} | {r['acc_bf16']:.3f}" if "acc_f32" in r else "- | -")
        lines.append(f"| {name} | {r['n']} | {r['top1_agree']:.4f} | {r['max_abs_dlogit']:.3g}"
                     f" | {r['logit_scale']:.3g} | {acc} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append_results:
        with open(args.append_results, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

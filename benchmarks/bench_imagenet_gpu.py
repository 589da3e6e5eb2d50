"""GPU preset pieces for ImageNet models: RS sampling throughput, fraction of peak FLOP rate, and
bfloat16-vs-float32 argmax agreement, for ResNet-50 and MobileNetV2.

Only meaningful on a GPU (or TPU). The script detects the JAX backend and says so: on CPU it
prints a notice and, unless ``--force``, runs a tiny smoke configuration (small n, small images)
that checks the code path and whose numbers mean nothing.

What is measured, per model x dtype (float32, bfloat16):

* **RS sampling throughput**: ``rsjax.smoothing.votes`` (the same jitted program the sweep uses:
  noise generation + model + vote counting, chunked) on B images x n noise samples; images/s =
  B * n / wall time of the compiled call (median of ``--repeats``, after one warm-up call).
* **Implied fraction of peak**: FLOPs per image (XLA's cost analysis of a batch-1 forward; falls
  back to the analytic count: ResNet-50 8.2 GFLOP, MobileNetV2 0.60 GFLOP, 1 MAC = 2 FLOP) x
  images/s / the device's peak (``PEAK_TFLOPS`` by device kind, or ``--peak-tflops``). For
  float32 the dense TF32 tensor-core peak is used when XLA may use TF32 (JAX's default matmul
  precision on Ampere and later), the plain FP32 peak is reported as well.
* **bf16 vs f32 agreement**: fraction of images whose argmax agrees, on clean images and on
  noisy copies (sigma ``--sigma``), and of the smoothed (plurality) labels with the same keys.
  The issue's bar for the GPU preset is >= 99.5 %.

Weights: ResNet-50 random (``--resnet50-checkpoint`` for a converted torchvision file), MobileNetV2
converted in memory from ``../shared/data/imagenet/mobilenet_v2_1.0_224_quant.tflite`` when present
(random otherwise). Images: the val1300 folder when present (random uniform otherwise).

    .venv/bin/python benchmarks/bench_imagenet_gpu.py [--models resnet50,mobilenet_v2] [--n 100]
        [--batch 64] [--chunk-size 1024] [--json OUT.json] [--force]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rsjax.classifier import Classifier  # noqa: E402
from rsjax.models import get_model_spec  # noqa: E402
from rsjax.smoothing import votes  # noqa: E402

SHARED_IMAGENET = REPO.parent / "shared" / "data" / "imagenet"
#: Dense peak TFLOP/s (no sparsity) by substring of ``device.device_kind``: (bf16, tf32, fp32).
#: From NVIDIA's data sheets (SXM parts); H200 has the H100 SXM's compute.
PEAK_TFLOPS = {
    "H200": (989.0, 494.0, 67.0),
    "H100": (989.0, 494.0, 67.0),  # SXM; the PCIe card is ~756 / 378 / 51
    "A100": (312.0, 156.0, 19.5),
    "L4": (121.0, 60.0, 30.3),
    "V100": (125.0, 125.0, 15.7),  # fp16 tensor cores; no bf16/tf32
}
#: Analytic forward FLOPs per 224x224 image (2 x multiply-accumulates).
ANALYTIC_GFLOPS = {"resnet50": 8.2, "mobilenet_v2": 0.60}


def backend_info() -> dict:
    d = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": getattr(d, "device_kind", str(d)),
            "n_devices": jax.device_count(), "jax_version": jax.__version__}


def peak_for(kind: str, override: float | None) -> tuple[float, float, float] | None:
    if override is not None:
        return (override, override, override)
    for key, peaks in PEAK_TFLOPS.items():
        if key.lower() in kind.lower():
            return peaks
    return None


def load_variables(arch: str, resnet50_checkpoint: str | None) -> tuple[dict, str]:
    """Weights for ``arch`` and where they came from."""
    if arch == "resnet50" and resnet50_checkpoint:
        return Classifier.from_checkpoint(resnet50_checkpoint, arch="resnet50").variables, resnet50_checkpoint
    tflite = SHARED_IMAGENET / "mobilenet_v2_1.0_224_quant.tflite"
    if arch == "mobilenet_v2" and tflite.is_file():
        try:
            from rsjax.models.tflite_import import convert_mobilenet_v2, read_tflite

            return convert_mobilenet_v2(read_tflite(tflite)), str(tflite)
        except Exception as e:  # tflite package missing: fall back to random weights
            print(f"note: cannot convert {tflite} ({e}); random weights", file=sys.stderr)
    return get_model_spec(arch).init(jax.random.PRNGKey(0)), "random"


def load_images(count: int, size: int) -> tuple[np.ndarray, str]:
    folder = SHARED_IMAGENET / "val1300"
    if (folder / "labels.txt").is_file():
        from rsjax.data import load_dataset

        return load_dataset(f"imagefolder:{folder}", limit=count, image_size=size).images, str(folder)
    return np.asarray(jax.random.uniform(jax.random.PRNGKey(7), (count, size, size, 3))), "random"


def make_logits_fn(arch: str, variables: dict, dtype) -> callable:
    """x (float32, [0,1]) -> float32 logits, with weights and activations in ``dtype``."""
    module = get_model_spec(arch).build()
    cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)

    def logits(x):
        return module.apply(cast, x.astype(dtype), train=False).astype(jnp.float32)

    return logits


def flops_per_image(fn, size: int, arch: str) -> tuple[float, str]:
    """XLA's FLOP count of a batch-1 forward; the analytic count when unavailable."""
    try:
        cost = jax.jit(fn).lower(jnp.zeros((1, size, size, 3), jnp.float32)).compile().cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        flops = float(cost.get("flops", 0.0))
        if flops > 0:
            return flops, "xla_cost_analysis"
    except Exception:  # cost analysis is not implemented on every backend/version
        pass
    return ANALYTIC_GFLOPS[arch] * 1e9 * (size / 224) ** 2, "analytic"


def time_votes(fn, x: np.ndarray, sigma: float, n: int, num_classes: int, chunk: int, repeats: int) -> dict:
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(len(x)))
    t0 = time.perf_counter()
    first = votes(fn, x, keys, sigma, n, num_classes, chunk_size=chunk)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = votes(fn, x, keys, sigma, n, num_classes, chunk_size=chunk)
        times.append(time.perf_counter() - t0)
    wall = statistics.median(times)
    assert int(res.evaluations.sum()) == len(x) * n
    return {"images_per_s": len(x) * n / wall, "seconds": wall, "first_call_seconds": compile_s,
            "counts": np.asarray(first.counts)}


def noisy_agreement(f32, b16, x: np.ndarray, sigma: float, copies: int, batch: int) -> tuple[float, float]:
    """argmax agreement of the two functions on clean images and on ``copies`` noisy copies each."""
    jf, jb = jax.jit(f32), jax.jit(b16)
    clean = float(np.mean(np.asarray(jf(x)).argmax(-1) == np.asarray(jb(x)).argmax(-1)))
    agree, total = 0, 0
    for c in range(copies):
        for s in range(0, len(x), batch):
            xb = x[s: s + batch]
            noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(11), c * len(x) + s), xb.shape)
            xn = jnp.asarray(xb) + sigma * noise
            agree += int(np.sum(np.asarray(jf(xn)).argmax(-1) == np.asarray(jb(xn)).argmax(-1)))
            total += len(xb)
    return clean, agree / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--n", type=int, default=100, help="noise samples per image")
    ap.add_argument("--batch", type=int, default=64, help="images per votes() call")
    ap.add_argument("--chunk-size", type=int, default=1024, help="noisy copies per model call")
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--agreement-images", type=int, default=1000)
    ap.add_argument("--agreement-copies", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak")
    ap.add_argument("--resnet50-checkpoint", default=None)
    ap.add_argument("--force", action="store_true", help="run the full configuration even on CPU")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)

    info = backend_info()
    on_accelerator = info["backend"] in ("gpu", "cuda", "rocm", "tpu")
    print(f"backend {info['backend']} ({info['device_kind']}, {info['n_devices']} device(s)), jax {info['jax_version']}")
    if not on_accelerator:
        print("NOTICE: no GPU/TPU backend. These numbers are NOT meaningful for the GPU preset"
              + ("" if args.force else "; running a tiny smoke configuration (pass --force for the full one)."))
        if not args.force:
            args.n, args.batch, args.chunk_size, args.image_size = 4, 2, 8, 64
            args.agreement_images, args.agreement_copies, args.repeats = 4, 1, 1
    peaks = peak_for(info["device_kind"], args.peak_tflops)
    results = {**info, "meaningful": on_accelerator, "config": {k: v for k, v in vars(args).items() if k != "json"},
               "models": {}}
    header = (f"{'model':<13} {'dtype':<9} {'images/s':>10} {'GFLOP/img':>10} {'TFLOP/s':>8} "
              f"{'% peak':>8} {'compile s':>9}")
    print(header)
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = get_model_spec(arch)
        variables, source = load_variables(arch, args.resnet50_checkpoint)
        images, image_source = load_images(max(args.batch, args.agreement_images), args.image_size)
        x = images[: args.batch]
        entry = {"weights": source, "images": image_source, "dtypes": {}}
        fns = {name: make_logits_fn(arch, variables, dt)
               for name, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16))}
        counts = {}
        for name, fn in fns.items():
            flops, how = flops_per_image(fn, args.image_size, arch)
            r = time_votes(fn, x, args.sigma, args.n, spec.num_classes, args.chunk_size, args.repeats)
            counts[name] = r.pop("counts")
            tflops = flops * r["images_per_s"] / 1e12
            row = {**r, "gflop_per_image": flops / 1e9, "flops_source": how, "achieved_tflops": tflops}
            if peaks is not None:
                bf16_peak, tf32_peak, fp32_peak = peaks
                peak = bf16_peak if name == "bfloat16" else tf32_peak
                row["peak_tflops"] = peak
                row["fraction_of_peak"] = tflops / peak
                if name == "float32":
                    row["fraction_of_fp32_non_tensor_peak"] = tflops / fp32_peak
            entry["dtypes"][name] = row
            frac = f"{100 * row['fraction_of_peak']:7.2f}%" if "fraction_of_peak" in row else "     n/a"
            print(f"{arch:<13} {name:<9} {r['images_per_s']:10.1f} {flops / 1e9:10.3f} {tflops:8.2f} {frac} "
                  f"{r['first_call_seconds']:9.1f}", flush=True)
        agree_images = images[: args.agreement_images]
        clean, noisy = noisy_agreement(fns["float32"], fns["bfloat16"], agree_images, args.sigma,
                                       args.agreement_copies, max(1, min(args.batch, 256)))
        vote_agree = float(np.mean(counts["float32"].argmax(-1) == counts["bfloat16"].argmax(-1)))
        entry["bf16_vs_f32"] = {"clean_argmax_agreement": clean, "noisy_argmax_agreement": noisy,
                                "smoothed_label_agreement": vote_agree, "n_images": len(agree_images),
                                "noisy_copies": args.agreement_copies, "sigma": args.sigma,
                                "meets_99_5": bool(min(clean, noisy) >= 0.995)}
        print(f"{arch:<13} bf16 vs f32 argmax agreement: clean {clean:.2%}, noisy (sigma {args.sigma}) "
              f"{noisy:.2%}, smoothed labels {vote_agree:.2%} [{len(agree_images)} images]", flush=True)
        results["models"][arch] = entry
    if not on_accelerator:
        print("NOTICE: backend is not a GPU/TPU; do not record these numbers as GPU results.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

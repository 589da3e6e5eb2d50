"""Rebuild the CIFAR-10 models of issue 15 from ../shared: the converted ResNet-20 and its
RandTrain / AdvTrain fine-tunings, make-style.

Steps (D = --out, S = ../shared/data/cifar10; each a CLI run as a user would type it)::

    resnet20        rsjax convert --arch cifar_resnet20 --weights S/resnet20-12fca82f.th --out D/resnet20.ckpt
    r20_gauss_0.12  rsjax train --init D/resnet20.ckpt --dataset imagefolder:S/train_jpeg
                        --eval-data npz:S/test_jpeg.npz --eval-per-class 100 --augment flip-crop
                        --optimizer sgd --lr 0.01 --weight-decay 1e-4 --batch-size 128 --epochs E
                        --recipe gaussian --sigma 0.12 --out D/r20_gauss_0.12.ckpt
    r20_gauss_0.25  ... --recipe gaussian --sigma 0.25
    r20_gauss_0.5   ... --recipe gaussian --sigma 0.5
    r20_pgd_0.5     ... --recipe pgd --eps 0.5 (7 steps of 2.5 eps / 7, random start)

A complete checkpoint is skipped (``--force`` redoes it), an interrupted one (``CKPT.resume``
present) is resumed by rerunning its command, bit-identically to an uninterrupted run. Converting
needs PyTorch (``pip install 'rsjax[torch]'``); nothing else does. The script first prints the
plan (each step's state and command) and an estimate of the time of one epoch per recipe: the
mean time of ``--time-batches`` training steps after compilation, times the steps per epoch, plus
one timed evaluation pass (twice for RandTrain: clean and noisy).

    python experiments/train_cifar.py [--out runs/cifar-models] [--epochs E] [--limit K]
        [--models NAME ...] [--plan-only] [--force] [--time-batches N] [--shared DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RSJAX_SHARED", REPO.parent / "shared"))
CLI = [sys.executable, "-c", "import sys; from rsjax.cli import main; sys.exit(main())"]
ARCH = "cifar_resnet20"
N_TRAIN = 50_000  # CIFAR-10 training images
#: fine-tuning settings shared by every model (SGD with Nesterov momentum 0.9, cosine decay)
FINETUNE = {"--optimizer": "sgd", "--lr": "0.01", "--weight-decay": "1e-4", "--batch-size": "128",
            "--augment": "flip-crop", "--seed": "0"}


@dataclass(frozen=True)
class Model:
    """One fine-tuned model: its name (checkpoint ``<name>.ckpt``) and recipe options."""

    name: str
    recipe: str
    options: tuple[str, ...]


MODELS = (
    Model("r20_gauss_0.12", "gaussian", ("--sigma", "0.12")),
    Model("r20_gauss_0.25", "gaussian", ("--sigma", "0.25")),
    Model("r20_gauss_0.5", "gaussian", ("--sigma", "0.5")),
    Model("r20_pgd_0.5", "pgd", ("--eps", "0.5")),
)


def cifar_paths(shared: Path) -> dict[str, Path]:
    """The ../shared inputs: PyTorch weights, training image folder, test npz."""
    root = shared / "data" / "cifar10"
    return {"weights": root / "resnet20-12fca82f.th", "train": root / "train_jpeg",
            "test": root / "test_jpeg.npz"}


def convert_command(paths: dict[str, Path], base: Path) -> list[str]:
    return ["convert", "--arch", ARCH, "--weights", str(paths["weights"]), "--out", str(base)]


def train_command(model: Model, paths: dict[str, Path], base: Path, out_dir: Path, args) -> list[str]:
    """The ``rsjax train`` arguments of ``model`` (``--limit K``: the first ceil(K/10) images of each
    class, the training files being sorted by class)."""
    cmd = ["train", "--init", str(base), "--dataset", f"imagefolder:{paths['train']}",
           "--eval-data", f"npz:{paths['test']}", "--eval-per-class", str(args.eval_per_class),
           "--recipe", model.recipe, *model.options, "--epochs", str(args.epochs)]
    for flag, value in FINETUNE.items():
        cmd += [flag, value]
    if args.limit is not None:
        cmd += ["--per-class", str(math.ceil(args.limit / 10))]
    return cmd + ["--no-progress", "--out", str(out_dir / f"{model.name}.ckpt")]


def checkpoint_state(ckpt: Path, epochs: int | None = None, n_train: int | None = None) -> str:
    """``missing``, ``interrupted after k/E epochs`` (``CKPT.resume`` present) or ``complete``
    (with its epochs and training-set size, and a note when they are not the requested ones)."""
    from rsjax.checkpoints import read_checkpoint_header
    from rsjax.train import resume_state_path

    resume = resume_state_path(ckpt)
    if resume.is_file():
        meta = read_checkpoint_header(resume)["metadata"]
        return f"interrupted after {meta['epochs_done']}/{meta['fingerprint']['epochs']} epochs: resume"
    if not ckpt.is_file():
        return "missing"
    meta = read_checkpoint_header(ckpt)["metadata"]
    if "epochs" not in meta:
        return "complete"
    state = f"complete ({meta.get('epochs_done')} epochs on {meta.get('n_train')} images)"
    if (epochs, n_train) not in ((None, None), (meta.get("epochs_done"), meta.get("n_train"))):
        state += f", not the requested {epochs} epochs on {n_train} images (--force redoes it)"
    return state


def print_plan(steps: list[tuple[str, Path, list[str]]], force: bool, epochs: int, n_train: int) -> None:
    """Each step's state (:func:`checkpoint_state`), what will happen to it, and its command."""
    print("plan:")
    for name, ckpt, cmd in steps:
        state = checkpoint_state(ckpt) if name == "resnet20" else checkpoint_state(ckpt, epochs, n_train)
        action = "redo (--force)" if force and state.startswith("complete") else (
            "skip" if state.startswith("complete") else "run")
        print(f"  {name:<15} {state}; {action}\n      rsjax {' '.join(cmd)}")


# ----------------------------------------------------------------------------- time estimate


def time_train_steps(recipe: str, options: dict, batches: int, batch_size: int = 128) -> tuple[float, float]:
    """(seconds of the first step, i.e. compilation, mean seconds of the next ``batches`` steps)
    of ResNet-20 fine-tuning with ``recipe`` on random 32x32 images, the jitted step of
    :mod:`rsjax.train` with the script's settings."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rsjax.models import get_model_spec
    from rsjax.train import TrainConfig, init_train_state, make_optimizer, make_train_step, resolve_config

    config = resolve_config(TrainConfig(ARCH, recipe=recipe, optimizer="sgd", learning_rate=0.01,
                                        weight_decay=1e-4, batch_size=batch_size, augment="flip-crop",
                                        **options))
    spec = get_model_spec(ARCH)
    tx = make_optimizer(config, N_TRAIN // batch_size)
    state = init_train_state(spec, tx, config)
    step = make_train_step(spec, tx, config)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (batch_size, *spec.input_shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32))
    times = []
    for i in range(batches + 1):
        t0 = time.perf_counter()
        state, metrics = step(state, x, y, jax.random.PRNGKey(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return times[0], float(np.mean(times[1:]))


def time_evaluation(n_eval: int, batch_size: int = 1000) -> float:
    """Seconds of one clean evaluation pass over ``n_eval`` images (after compilation)."""
    import jax
    import numpy as np

    from rsjax.models import get_model_spec
    from rsjax.train import evaluate_accuracy, make_predict_fn

    spec = get_model_spec(ARCH)
    variables = spec.init(jax.random.PRNGKey(0))
    predict = make_predict_fn(spec)
    x = np.random.default_rng(0).uniform(0, 1, (n_eval, *spec.input_shape)).astype(np.float32)
    y = np.zeros(n_eval, np.int64)
    evaluate_accuracy(spec, variables, x[:batch_size], y[:batch_size], batch_size, predict_fn=predict)
    t0 = time.perf_counter()
    evaluate_accuracy(spec, variables, x, y, batch_size, predict_fn=predict)
    return time.perf_counter() - t0


def print_estimates(args, n_train: int) -> dict[str, float]:
    """Print and return the estimated seconds per epoch of each recipe in the plan."""
    steps = n_train // 128
    n_eval = 10 * args.eval_per_class
    eval_s = time_evaluation(n_eval)
    print(f"time estimate ({args.time_batches} timed batches of 128 after compilation; {steps} steps per epoch"
          f" on {n_train} images; evaluation on {n_eval} images {eval_s:.1f} s):")
    estimates = {}
    for recipe, options in (("gaussian", {"sigma": 0.25}), ("pgd", {"eps": 0.5})):
        if not any(m.recipe == recipe for m in selected_models(args)):
            continue
        first, per_step = time_train_steps(recipe, options, args.time_batches)
        epoch = per_step * steps + eval_s * (2 if recipe == "gaussian" else 1)
        estimates[recipe] = epoch
        extra = " (pgd: 7 attack steps per batch)" if recipe == "pgd" else ""
        print(f"  {recipe:<8} {per_step:.3f} s/step (first step with compilation {first:.1f} s){extra}:"
              f" {epoch / 60:.1f} min per epoch, {epoch * args.epochs / 3600:.2f} h for {args.epochs} epochs")
    return estimates


# ----------------------------------------------------------------------------- running


def selected_models(args) -> list[Model]:
    return [m for m in MODELS if not args.models or m.name in args.models]


def run_step(name: str, cmd: list[str]) -> float:
    """Run ``rsjax <cmd>`` (stderr passes through); return its wall seconds."""
    print(f"[{name}] rsjax {' '.join(cmd)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(CLI + cmd, check=True)
    return time.perf_counter() - started


SUMMARY_COLUMNS = ("epochs", "images", "test acc", "noisy acc", "PGD acc", "train s")


def summary_row(name: str, ckpt: Path) -> str:
    """One line of the final table: epochs, training images, test accuracy (clean, under the
    model's noise, under 20-step PGD at its eps) and training seconds, from the metadata."""
    from rsjax.checkpoints import read_checkpoint_header

    meta = read_checkpoint_header(ckpt)["metadata"] if ckpt.is_file() else {}
    accuracies = [meta.get("test_accuracy"), meta.get("test_accuracy_noisy"),
                  meta.get("test_robust_accuracy", {}).get("accuracy")]
    seconds = meta.get("train_seconds")
    cells = [str(meta.get("epochs_done", "-")), str(meta.get("n_train", "-"))]
    cells += ["-" if a is None else f"{a:.4f}" for a in accuracies]
    cells.append("-" if seconds is None else f"{seconds:.0f}")
    return f"{name:<15}" + "".join(f"{c:>10}" for c in cells)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/cifar-models", help="output directory (runs/cifar-models)")
    p.add_argument("--shared", default=str(SHARED), help="the shared folder (../shared, $RSJAX_SHARED)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per model (10)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on K images only: the first ceil(K/10) of each class")
    p.add_argument("--eval-per-class", type=int, default=100,
                   help="evaluate each epoch on the first K test images of each class (100)")
    p.add_argument("--models", nargs="+", choices=[m.name for m in MODELS], default=None,
                   help="only these fine-tunings (default: all)")
    p.add_argument("--time-batches", type=int, default=3,
                   help="training steps timed per recipe for the estimate (0: no estimate)")
    p.add_argument("--plan-only", action="store_true", help="print the plan and the estimate, run nothing")
    p.add_argument("--force", action="store_true", help="redo complete fine-tunings (not the conversion)")
    args = p.parse_args(argv)
    for name in ("epochs", "eval_per_class", "time_batches"):
        if getattr(args, name) < (0 if name == "time_batches" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'time_batches' else 1}")
    if args.limit is not None and args.limit < 10:
        p.error("--limit must be >= 10 (one image per class)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = cifar_paths(Path(args.shared))
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        print(f"error: missing inputs {missing} (the shared folder is {args.shared}; --shared)", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    base = out_dir / "resnet20.ckpt"
    steps = [("resnet20", base, convert_command(paths, base))]
    steps += [(m.name, out_dir / f"{m.name}.ckpt", train_command(m, paths, base, out_dir, args))
              for m in selected_models(args)]
    n_train = N_TRAIN if args.limit is None else 10 * math.ceil(args.limit / 10)
    print_plan(steps, args.force, args.epochs, n_train)
    if args.time_batches:
        print_estimates(args, n_train)
    if args.plan_only:
        return 0

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ckpt, cmd in steps:
        state = checkpoint_state(ckpt)
        if state.startswith("complete") and not (args.force and name != "resnet20"):
            print(f"[{name}] {state}: skipped", file=sys.stderr)
            continue
        if name == "resnet20" and importlib.util.find_spec("torch") is None:
            print(f"error: converting {paths['weights']} needs PyTorch: pip install 'rsjax[torch]'",
                  file=sys.stderr)
            return 2
        run_step(name, cmd)

    print(f"\n{'model':<15}" + "".join(f"{h:>10}" for h in SUMMARY_COLUMNS))
    for name, ckpt, _ in steps[1:]:
        print(summary_row(name, ckpt))
    return 0


if __name__ == "__main__":
    sys.exit(main())

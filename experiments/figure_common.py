"""Shared plumbing of the analysis-figure scripts (along_direction, slice2d, binary_search,
normal_estimate): common arguments, the model (a checkpoint, or a quick standard fmnist_mlp
trained once and cached), the images, and writing the data behind each figure."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rsjax.classifier import Classifier  # noqa: E402
from rsjax.data import Dataset, load_dataset  # noqa: E402
from rsjax.errors import InputError  # noqa: E402


def add_common_args(p: argparse.ArgumentParser, *, sigma: float = 0.25) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="model checkpoint (rsjax format); default: a quick standard fmnist_mlp, "
                        "trained once and cached in --cache-dir")
    p.add_argument("--data", default="fashion-mnist:test", help="dataset spec of the images to analyse")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (default: system data set)")
    p.add_argument("--out", required=True, help="output directory (PNG + data files)")
    p.add_argument("--seed", type=int, default=0, help="root seed of every random draw")
    p.add_argument("--sigma", type=float, default=sigma, help="RS noise level (pixel space [0,1])")
    p.add_argument("--image-index", type=int, default=0,
                   help="start index in the data set; the first correctly classified images from "
                        "there are used")
    p.add_argument("--images", type=int, default=1, help="number of images")
    p.add_argument("--train-epochs", type=int, default=3, help="epochs of the quick default model")
    p.add_argument("--train-limit", type=int, default=None, help="training images of the quick model")
    p.add_argument("--cache-dir", default=str(REPO / "cache" / "figures"),
                   help="where the quick default model is cached")


def get_classifier(args: argparse.Namespace) -> Classifier:
    """``--checkpoint`` if given, else the cached quick standard fmnist_mlp (trained here with
    :func:`rsjax.train.train` on fashion-mnist:train the first time)."""
    if args.checkpoint:
        return Classifier.from_checkpoint(args.checkpoint)
    from rsjax.train import TrainConfig, train

    tag = f"fmnist_mlp_standard_e{args.train_epochs}_s{args.seed}_n{args.train_limit or 'all'}"
    path = Path(args.cache_dir) / f"{tag}.ckpt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        data = load_dataset("fashion-mnist:train", data_dir=args.data_dir, limit=args.train_limit)
        t0 = time.perf_counter()
        print(f"training the quick default model ({tag}) ...", flush=True)
        train(TrainConfig(arch="fmnist_mlp", recipe="standard", epochs=args.train_epochs, seed=args.seed),
              data, out=path, progress=False, log=lambda m: print("  " + m, flush=True))
        print(f"  trained in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return Classifier.from_checkpoint(str(path))


def load_images(args: argparse.Namespace) -> Dataset:
    return load_dataset(args.data, data_dir=args.data_dir)


def pick_images(clf: Classifier, data: Dataset, start: int, count: int,
                scan: int = 2000) -> list[int]:
    """Indices of the first ``count`` images from ``start`` that f classifies correctly."""
    if count < 1:
        raise InputError(f"--images must be >= 1, got {count}")
    end = min(len(data), start + scan)
    if start < 0 or start >= len(data):
        raise InputError(f"--image-index {start} out of range [0, {len(data)})")
    pred = clf.predict(data.images[start:end])
    ok = np.nonzero(pred == data.labels[start:end])[0] + start
    if len(ok) < count:
        raise InputError(f"only {len(ok)} correctly classified images in [{start}, {end}); need {count}")
    return [int(i) for i in ok[:count]]


def prepare(args: argparse.Namespace, count: int | None = None) -> tuple[Path, Classifier, Dataset, list[int]]:
    """What every figure script starts from: its output directory, the classifier, the test data
    and the indices of ``count`` (default ``args.images``) correctly classified images from
    ``args.image_index`` on."""
    out = out_dir(args)
    clf = get_classifier(args)
    data = load_images(args)
    ids = pick_images(clf, data, args.image_index, args.images if count is None else count)
    return out, clf, data, ids


def parse_list(text: str, cast=float) -> list:
    try:
        return [cast(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"expected a comma-separated list, got {text!r}") from None


def _jsonable(o: Any):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def write_json(path: Path, obj: dict) -> None:
    """JSON with numpy values converted; NaN/inf written as null."""
    path.write_text(json.dumps(_jsonable(obj), indent=1) + "\n")


def model_info(args: argparse.Namespace, clf: Classifier) -> dict:
    meta = dict(clf.metadata or {})
    return {"checkpoint": args.checkpoint, "arch": clf.spec.name, "recipe": meta.get("recipe"),
            "epochs": meta.get("epochs_done", meta.get("epochs")), "train_seed": meta.get("seed")}


def out_dir(args: argparse.Namespace) -> Path:
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    return d


def matplotlib_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

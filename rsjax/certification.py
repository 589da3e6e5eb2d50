"""CERTIFY over a data set and Cohen's per-image log.

Log format (tab-separated, one header line, as locuslab/smoothing's ``certify.py``):
``idx label predict radius correct time`` with ``predict = -1`` and ``radius = 0`` on abstention,
``correct`` = 1 iff predict == label, ``time`` the wall seconds spent on that image (a float,
where Cohen writes a ``timedelta`` string; for a batch, the batch time divided by its size).
Image ``idx`` uses the key ``fold_in(key(seed), idx)``, so a row does not depend on the batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import DataError, InputError, check_int_at_least
from rsjax.smoothing import DEFAULT_CHUNK_SIZE, certified_accuracy, certify

LOG_HEADER = ("idx", "label", "predict", "radius", "correct", "time")


@dataclass(frozen=True)
class CertifyRow:
    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float

    def line(self) -> str:
        return f"{self.idx}\t{self.label}\t{self.predict}\t{self.radius:.6f}\t{self.correct}\t{self.time:.4f}"


def certify_dataset(classifier, images, labels, sigma: float, n0: int, n: int, alpha: float, *,
                    seed: int = 0, batch_size: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    noise: str = "hash", start_index: int = 0,
                    image_ids=None) -> Iterator[CertifyRow]:
    """Yield one :class:`CertifyRow` per image (CERTIFY(x, n0, n, alpha) of
    ``rsjax.smoothing.certify``), ``batch_size`` images per compiled call. Image i's index
    (its ``idx`` and its key ``fold_in(key(seed), idx)``) is ``image_ids[i]`` when given,
    else ``start_index + i``."""
    check_int_at_least("batch_size", batch_size, 1)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    classifier.check_input(images)
    all_ids = (np.arange(len(images), dtype=np.int64) + start_index if image_ids is None
               else np.asarray(image_ids, np.int64))
    if all_ids.shape != (len(images),):
        raise InputError(f"image_ids must be [N]={len(images)} ints, got shape {all_ids.shape}")
    root = jax.random.key(seed)
    for s in range(0, len(images), batch_size):
        ids = all_ids[s:s + batch_size]
        keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(ids, jnp.uint32))
        res = certify(classifier.logits_fn, images[s:s + len(ids)], keys, sigma, n0, n, alpha,
                      classifier.num_classes, chunk_size=chunk_size, noise=noise)
        for j, idx in enumerate(ids):
            lab, pred = int(labels[s + j]), int(res.predictions[j])
            yield CertifyRow(int(idx), lab, pred, float(res.radii[j]), int(pred == lab), float(res.seconds[j]))


def write_certify_log(path: str | os.PathLike, rows) -> list[CertifyRow]:
    """Write the header and the rows (flushing each line, so a long run can be followed)."""
    done = []
    with open(path, "w") as f:
        f.write("\t".join(LOG_HEADER) + "\n")
        for row in rows:
            f.write(row.line() + "\n")
            f.flush()
            done.append(row)
    return done


def read_certify_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a certify log (ours or Cohen's: a ``time`` given as H:MM:SS.ss is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"certify log {path} does not exist")
    lines = path.read_text().splitlines()
    if not lines or lines[0].split("\t") != list(LOG_HEADER):
        expected = "\t".join(LOG_HEADER)
        raise DataError(f"{path} is not a certify log: first line must be {expected!r}")
    cols: dict[str, list] = {k: [] for k in LOG_HEADER}
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != len(LOG_HEADER):
            raise DataError(f"{path}:{lineno}: expected {len(LOG_HEADER)} tab-separated fields, got {line!r}")
        for k, v in zip(LOG_HEADER, parts):
            cols[k].append(v)
    def seconds(v: str) -> float:
        if ":" in v:
            h, m, s = v.split(":")
            return 3600 * float(h) + 60 * float(m) + float(s)
        return float(v)
    return {
        "idx": np.array(cols["idx"], np.int64), "label": np.array(cols["label"], np.int64),
        "predict": np.array(cols["predict"], np.int64), "radius": np.array(cols["radius"], np.float64),
        "correct": np.array(cols["correct"], np.int64).astype(bool),
        "time": np.array([seconds(v) for v in cols["time"]], np.float64),
    }


def summarize(rows: list[CertifyRow], radii_grid=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)) -> dict:
    """Certified accuracy at each grid radius, abstention rate, mean seconds per image."""
    radius = np.array([r.radius for r in rows])
    correct = np.array([bool(r.correct) for r in rows])
    acc = certified_accuracy(radius, correct, radii_grid) if rows else np.zeros(len(radii_grid))
    return {
        "num_images": len(rows),
        "certified_accuracy": {f"{r:g}": float(a) for r, a in zip(radii_grid, acc)},
        "abstention_rate": float(np.mean([r.predict == -1 for r in rows])) if rows else float("nan"),
        "mean_radius_correct": float(radius[correct].mean()) if correct.any() else 0.0,
        "seconds_per_image": float(np.mean([r.time for r in rows])) if rows else float("nan"),
    }

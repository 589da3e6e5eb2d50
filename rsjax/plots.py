"""Figures drawn from results only (logs, records), never by running models.

:func:`plot_certified_accuracy` — certified accuracy vs radius (Cohen et al. 2019, Fig. 4 of
Maho et al. 2022) for several runs.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from rsjax.errors import InputError


def certified_accuracy_curve(radii, correct, max_radius: float | None = None, points: int = 400):
    """(grid, accuracy): the step curve r -> fraction correct with certified radius >= r."""
    from rsjax.smoothing import certified_accuracy  # here: importing rsjax.plots needs no JAX

    radii = np.asarray(radii, np.float64)
    top = max_radius if max_radius is not None else (float(radii.max()) * 1.05 if radii.size and radii.max() > 0 else 1.0)
    grid = np.linspace(0.0, top, points)
    return grid, certified_accuracy(radii, correct, grid)


def plot_certified_accuracy(runs: Mapping[str, tuple[Sequence[float], Sequence[bool]]], path=None, *,
                            max_radius: float | None = None, ax=None, title: str | None = None):
    """One curve per run: ``runs[label] = (radii, correct)`` (e.g. the ``radius`` and ``correct``
    columns of :func:`rsjax.certification.read_certify_log`). Saves to ``path`` if given; returns the
    matplotlib Figure."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not runs:
        raise InputError("plot_certified_accuracy needs at least one run, got an empty mapping")
    if max_radius is None:
        max_radius = max((float(np.max(r)) if len(r) else 0.0) for r, _ in runs.values()) * 1.05 or 1.0
    fig = ax.figure if ax is not None else plt.figure(figsize=(5, 3.5))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    for label, (radii, correct) in runs.items():
        grid, acc = certified_accuracy_curve(radii, correct, max_radius)
        ax.plot(grid, acc, label=label, drawstyle="steps-post")
    ax.set_xlabel("L2 radius r (pixels in [0,1])")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max_radius)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig

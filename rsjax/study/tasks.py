"""The study's work list: the reported settings and the attack runs of a configuration
(:func:`enumerate_runs`), the attacked images (:func:`select_images`), their fixed batches, and
the keys of every kind of randomness.

Randomness: stream s of image i uses ``fold_in(fold_in(key(seed), s), image_id)`` (s = 1
accuracy, 2 certification, 3 attacks, 5 reference label, 6 the evaluator's calls), so every
number depends on (seed, image, setting) only, never on batch composition, resumption or
device count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import InputError
from rsjax.study.config import SweepConfig

STREAM_ACCURACY, STREAM_CERTIFY, STREAM_ATTACK, STREAM_REFERENCE, STREAM_VERIFY = 1, 2, 3, 5, 6


@dataclass(frozen=True)
class Setting:
    """One reported setting (a record's identity): ``sigma``/``n``/``p_a`` are None for the
    no-RS baseline (criterion 'none'). ``p_a`` is the level at which the attack's outputs are
    verified (eq. (4)); with criterion 'level' it is also the attacker's shortcut level."""

    model: str
    sigma: float | None
    n: int | None
    p_a: float | None
    criterion: str
    attack: str

    @property
    def k_wrong(self) -> int | None:
        """Wrong micro-decisions that make a query adversarial ('level'): ceil(n * P_a)
        (:meth:`rsjax.criterion.Criterion.k_wrong`; 1 for n = 1)."""
        from rsjax.criterion import Criterion

        return Criterion("level", self.p_a).k_wrong(self.n) if self.criterion == "level" else None

    def fields(self) -> dict:
        return {"model": self.model, "sigma": self.sigma, "n": self.n, "p_a": self.p_a,
                "criterion": self.criterion, "attack": self.attack}

    def label(self) -> str:
        if self.criterion == "none":
            return f"{self.model} no-RS {self.attack}"
        pa = "" if self.p_a is None else f" Pa={self.p_a:g}"
        return f"{self.model} s={self.sigma:g} n={self.n}{pa} {self.criterion} {self.attack}"


@dataclass(frozen=True)
class AttackRun:
    """One attack run and the settings its outputs are verified at: the attacker sees the oracle
    of ``criterion`` ('none': f; 'label': the deployed g_{sigma,n}; 'level': the shortcut with
    ``k_wrong``); every output is verified at each level of ``pas`` (one :class:`Setting` each).
    A 'label' run is verified at every P_a of the grid, so P_a does not multiply attack runs."""

    model: str
    sigma: float | None
    n: int | None
    criterion: str
    attack: str
    k_wrong: int | None
    pas: tuple

    def settings(self) -> list[Setting]:
        return [Setting(self.model, self.sigma, self.n, pa, self.criterion, self.attack) for pa in self.pas]

    def label(self) -> str:
        if self.criterion == "none":
            return f"{self.model} no-RS {self.attack}"
        k = "" if self.k_wrong is None else f" k={self.k_wrong}"
        return f"{self.model} s={self.sigma:g} n={self.n} {self.criterion}{k} {self.attack}"


def _level_runs(model: str, sigma: float, n: int, pas: Sequence[float], attack: str) -> list[AttackRun]:
    """'level' runs at (sigma, n): one per distinct k = ceil(n P_a) (n = 1: k = 1 for every P_a,
    so one run verified at every P_a)."""
    by_k: dict[int, list[float]] = {}
    for pa in pas:
        by_k.setdefault(Setting(model, sigma, n, pa, "level", attack).k_wrong, []).append(float(pa))
    return [AttackRun(model, sigma, n, "level", attack, k, tuple(v)) for k, v in by_k.items()]


def enumerate_runs(config: SweepConfig) -> list[AttackRun]:
    """Every attack run of the sweep, in run order: per model the baselines, then per sigma and n
    the runs of ``criterion`` and, with criterion 'label', the 'level' shortcut runs at
    ``level_ns`` (the paper's simulation, kept for comparison)."""
    out: list[AttackRun] = []
    pas = tuple(float(p) for p in config.pas)
    for m in config.models:
        if config.baseline:
            out += [AttackRun(m.name, None, None, "none", a, None, (None,)) for a in config.attacks]
        for s in config.model_sigmas(m):
            s = float(s)
            for n in sorted(set(config.ns) | (set(config.level_ns) if config.criterion == "label" else set())):
                for a in config.attacks:
                    if config.criterion == "label" and n in config.ns:
                        out.append(AttackRun(m.name, s, int(n), "label", a, None, pas))
                    if config.criterion == "level" or n in config.level_ns:
                        out += _level_runs(m.name, s, int(n), pas, a)
    return out


def enumerate_settings(config: SweepConfig) -> list[Setting]:
    """Every reported setting of the sweep (the settings of :func:`enumerate_runs`, in order)."""
    return [st for run in enumerate_runs(config) for st in run.settings()]


def attack_record_key(setting: Setting, image: int) -> str:
    from rsjax.results import record_key

    return record_key(kind="attack", image=int(image), **setting.fields())


def stream_key(seed: int, stream: int) -> jax.Array:
    """``fold_in(key(seed), stream)``: the root of one kind of randomness."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def image_keys(root: jax.Array, ids) -> jax.Array:
    """Per-image keys ``fold_in(root, image_id)`` of a stream (:func:`rsjax.oracle.image_keys`)."""
    from rsjax.oracle import image_keys as _keys

    return _keys(root, jnp.asarray(np.asarray(ids, np.int64)))


def permutation(n_total: int, seed: int) -> np.ndarray:
    """The seeded random order of the test set (numpy ``default_rng(seed)``)."""
    return np.random.default_rng(seed).permutation(n_total)


def select_images(correct: Mapping[str, np.ndarray], order: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` test indices of ``order`` that every model classifies correctly
    (``correct[name]`` [N] bool over the test set)."""
    ok = np.logical_and.reduce([np.asarray(c, bool) for c in correct.values()])
    chosen = order[ok[order]][:k]
    if len(chosen) < k:
        raise InputError(f"only {len(chosen)} test images are classified correctly by every model; "
                         f"asked for {k}")
    return chosen.astype(np.int64)


def process_slice(ids: np.ndarray, index: int | None = None, count: int | None = None) -> np.ndarray:
    """Images of this process in a multi-host run: ``ids[index::count]`` (all when one process)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return np.asarray(ids)[index::count]


def batches(ids: np.ndarray, size: int) -> list[np.ndarray]:
    """Fixed consecutive batches of the image list: a resumed run rebuilds exactly the same
    batches (same composition, hence bit-identical results)."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def certify_share(certify_ids: np.ndarray, attacked: np.ndarray, index: int | None = None,
                  count: int | None = None) -> np.ndarray:
    """Certified images of this process, in ``certify_ids`` order: its attacked images
    (:func:`process_slice` of ``attacked``, whose records carry their radius) and every
    ``count``-th of the other certified images. The shares of the processes are disjoint and
    cover ``certify_ids`` (all of it when one process)."""
    certify_ids, attacked = np.asarray(certify_ids), np.asarray(attacked)
    others = certify_ids[~np.isin(certify_ids, attacked)]
    mine = np.concatenate([process_slice(attacked, index, count), process_slice(others, index, count)])
    return certify_ids[np.isin(certify_ids, mine)]

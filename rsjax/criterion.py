"""What makes a point adversarial: one :class:`Criterion` used by the oracles
(:mod:`rsjax.oracle`, the study's :class:`rsjax.study.oracle.ParamOracle`), the study's records and
the analysis (:mod:`rsjax.analysis`), after foolbox 3's criterion objects.

A criterion is data (``kind``, ``p_a``, ``reference``, the abstention rule) with the decision of
one call from its vote counts (:meth:`Criterion.is_adversarial`) and the exact early-stopping rule
of that decision (:meth:`Criterion.stop_rule`):

* ``'none'``: no randomized smoothing; the scores are f's logits (or one sample's one-hot
  counts): adversarial iff their argmax (lowest index on ties) differs from the reference label;
* ``'label'``: the attacker sees the voted label of g_{sigma,n}: adversarial iff the plurality
  (lowest index on ties) differs from the reference; with ``abstain_alpha`` set, Cohen's PREDICT
  abstains when the two-sided binomial test of the top two counts has p-value > alpha (the table
  of :func:`rsjax.smoothing.predict_min_top_count`, the one PREDICT), and an abstention is a
  success only with ``abstain_is_success``;
* ``'level'``: the authors' shortcut for level P_a: adversarial iff at least
  k = ceil(n P_a) (:func:`rsjax.theory.level_wrong_count`) of the n micro-decisions differ from
  the reference.

``reference`` says what the reference label is: ``'true'`` (the image's label) or
``'smoothed'`` (g_sigma(x_o), estimated by PREDICT: :func:`smoothed_reference`). Every method
takes the reference labels as an argument; the field is the record of which ones were meant.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import InputError

#: every kind of criterion; the smoothed ones (:data:`CRITERIA`) vote over n samples
KINDS = ("none", "label", "level")
CRITERIA = ("label", "level")
REFERENCES = ("smoothed", "true")
#: status of an image's reference label (:func:`smoothed_reference`)
REFERENCE_OK, REFERENCE_ABSTAIN, REFERENCE_WRONG = "ok", "smoothed_abstain", "smoothed_wrong"
#: one sentence per kind: what counts as adversarial (the study's records, ``criterion_note``)
NOTES = {
    "none": "no randomized smoothing: the oracle is the base classifier f (adversarial iff f(x) != y)",
    "level": "the authors' shortcut: a query counts as adversarial when at least k = ceil(n * P_a) "
             "of its n micro-decisions f(x + sigma N_j) differ from the true label",
    "label": "the voted label of g_{sigma,n} (plurality, lowest-index ties) differs from the reference label "
             "(one call, one answer: the deployed classifier)",
}


@lru_cache(maxsize=32)
def _abstention_table(n: int, alpha: float) -> np.ndarray:
    from rsjax.smoothing import predict_min_top_count

    table = predict_min_top_count(n, alpha)
    table.setflags(write=False)
    return table


@dataclass(frozen=True)
class Criterion:
    """The success criterion of a decision-based attack (see module docstring). Validated on
    construction (:class:`rsjax.errors.InputError`); ``p_a`` may be left out of a 'level'
    criterion whose k is given at each call (the study's traced k)."""

    kind: str = "label"
    p_a: float | None = None
    reference: str = "true"
    abstain_alpha: float | None = None
    abstain_is_success: bool = False

    def __post_init__(self):
        from rsjax.errors import check_open_unit

        if self.kind not in KINDS:
            raise InputError(f"criterion must be one of {CRITERIA} (or 'none' for no smoothing), got {self.kind!r}")
        if self.reference not in REFERENCES:
            raise InputError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.p_a is not None:
            if self.kind != "level":
                raise InputError(f"p_a={self.p_a!r} is only used with criterion='level'")
            object.__setattr__(self, "p_a", float(check_open_unit("p_a", self.p_a)))
        if self.abstain_alpha is not None:
            if self.kind != "label":
                raise InputError(f"abstain_alpha={self.abstain_alpha!r} applies to criterion 'label' only")
            object.__setattr__(self, "abstain_alpha", float(check_open_unit("abstain_alpha", self.abstain_alpha)))
        object.__setattr__(self, "abstain_is_success", bool(self.abstain_is_success))

    @property
    def smoothed(self) -> bool:
        """True for the criteria over votes of g_{sigma,n} ('label', 'level')."""
        return self.kind != "none"

    def k_wrong(self, n: int) -> int | None:
        """'level': the wrong micro-decisions out of n that make a call adversarial, ceil(n P_a);
        None for the other kinds."""
        from rsjax.theory import level_wrong_count

        if self.kind != "level":
            return None
        if self.p_a is None:
            raise InputError("criterion 'level' needs p_a (the level P_a in (0, 1)), got None")
        return level_wrong_count(int(n), self.p_a)

    def abstention_table(self, n: int) -> np.ndarray | None:
        """PREDICT's table t[m], m = n_A + n_B <= n (abstain iff n_A < t[m]), or None when this
        criterion does not abstain."""
        return None if self.abstain_alpha is None else _abstention_table(int(n), self.abstain_alpha)

    def _n(self, counts, n) -> int:
        """The number of samples of a call: ``n`` if given, else read from concrete counts."""
        if n is not None:
            return int(n)
        totals = np.asarray(counts).sum(axis=-1)
        if totals.size and np.any(totals != totals.flat[0]):
            raise InputError("counts of calls with different n: pass n (or k_wrong)")
        return int(totals.flat[0]) if totals.size else 0

    def is_adversarial(self, counts, reference, *, n: int | None = None, k_wrong=None) -> jax.Array:
        """The decision of one call per row: ``counts`` [M, K] (vote counts; for 'none' the
        logits or scores), ``reference`` [M] labels -> [M] bool (a jax array; jit-compatible when
        ``n`` or ``k_wrong`` is given, which may be traced). ``n``: the call's nominal number of
        samples (sets k for 'level' and PREDICT's table; read from the counts when left out)."""
        counts = jnp.asarray(counts)
        reference = jnp.asarray(reference)
        if self.kind == "level":
            k = self.k_wrong(self._n(counts, n)) if k_wrong is None else k_wrong
            ny = jnp.take_along_axis(counts, reference[:, None], axis=-1)[:, 0]
            return (jnp.sum(counts, axis=-1) - ny) >= k
        adv = jnp.argmax(counts, axis=-1) != reference
        if self.abstain_alpha is not None:  # PREDICT's abstention
            table = jnp.asarray(self.abstention_table(self._n(counts, n)))
            top2 = jax.lax.top_k(counts, 2)[0]
            abstain = top2[:, 0] < table[top2[:, 0] + top2[:, 1]]
            adv = jnp.where(abstain, self.abstain_is_success, adv)
        return adv

    def stop_rule(self, reference, *, n: int | None = None, k_wrong=None) -> Callable | None:
        """The exact early-stopping rule ``stop(counts, remaining) -> [M] bool`` of
        :meth:`is_adversarial`: True where the decision can no longer change whatever the
        remaining samples give (:func:`rsjax.smoothing.wrong_count_decided`,
        :func:`rsjax.smoothing.label_vs_reference_decided`). None when every sample is needed
        (PREDICT's abstention test) or there are no votes ('none')."""
        from rsjax.smoothing import label_vs_reference_decided, wrong_count_decided

        if self.kind == "none" or self.abstain_alpha is not None:
            return None
        if self.kind == "level":
            k = self.k_wrong(n) if k_wrong is None else k_wrong
            return lambda counts, remaining: wrong_count_decided(counts, remaining, reference, k)
        return lambda counts, remaining: label_vs_reference_decided(counts, remaining, reference)

    def as_label(self) -> "Criterion":
        """The 'label' criterion with the same reference and abstention rule (a 'level' one has
        none): what one call of the deployed g_{sigma,n} answers."""
        if self.kind == "label":
            return self
        return Criterion("label", reference=self.reference)

    @property
    def note(self) -> str:
        """One sentence: what counts as adversarial (:data:`NOTES`)."""
        return NOTES[self.kind]

    def describe(self) -> str:
        """Short text: 'label', 'level,Pa=0.8', ..."""
        return self.kind + (f",Pa={self.p_a:g}" if self.p_a is not None else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Criterion":
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown criterion fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


def as_criterion(criterion: "str | Criterion", **kw) -> Criterion:
    """A :class:`Criterion` from itself or from its kind and fields ``kw``."""
    if isinstance(criterion, Criterion):
        if kw:
            raise InputError(f"give the criterion's fields {sorted(kw)} in the Criterion, not beside it")
        return criterion
    return Criterion(criterion, **kw)


def smoothed_reference(counts, labels, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The 'smoothed' reference label g_sigma(x_o) by Cohen's PREDICT
    (:func:`rsjax.smoothing.predict_from_counts`) from full vote counts [B, K], and each image's
    status against its true label ``labels`` [B]: 'ok' (PREDICT gives the label),
    'smoothed_abstain' or 'smoothed_wrong'. Returns (predictions [B], statuses [B] object)."""
    from rsjax.smoothing import ABSTAIN, predict_from_counts

    pred = np.atleast_1d(predict_from_counts(np.asarray(counts), alpha))
    labels = np.asarray(labels)
    status = np.where(pred == labels, REFERENCE_OK,
                      np.where(pred == ABSTAIN, REFERENCE_ABSTAIN, REFERENCE_WRONG)).astype(object)
    return pred, status

"""Decision oracles: what a decision-based attack may ask ("is this point adversarial for
image i?"), with the cost of each answer in base-model evaluations.

Contract shared by every oracle (the attacks rely on nothing else):

* ``oracle.decide(x, y, keys) -> OracleAnswer`` is pure and jit/vmap-compatible.
  ``x``: [M, H, W, C] query points in [0,1]; ``y``: [M] int true labels; ``keys``: [M] PRNG
  keys, one per query, the query's own randomness (a deterministic oracle ignores them).
  It returns ``adversarial`` [M] bool and ``evaluations`` [M] int32 (base-model calls spent).
* Optional: an oracle with ``accepts_active = True`` also takes ``decide(x, y, keys, active)``
  with ``active`` [M] bool; rows with ``active`` False are not asked (their answers and
  evaluations are ignored by the caller) and the oracle may skip their work: the smoothed oracle
  gives them n = 0 samples, so an attack's masked or beyond-budget probes cost nothing.
* Randomness of query number q of image i is ``query_key(image_key_i, q)`` with
  ``image_key_i = fold_in(seed_key, image_id)``: it depends on (seed, image id, query index)
  only, never on batch position or on which other images share the batch.
* Query counting and budgets live in the caller (attack state), which knows each image's
  query index; one call of ``decide`` on one point is one query.

Oracles here: :class:`ModelOracle` (the plain f), :class:`SmoothedOracle` (g_{sigma,n} with the
'label' or 'level' criterion, explicit abstention semantics, exact early stopping).
:func:`level_of` estimates the level P[g_{sigma,n}(x_a) != y] reached by an adversarial point;
:class:`CountingOracle` is a host-side wrapper with per-image query/evaluation counters and
budgets for users outside the attacks.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.criterion import CRITERIA, Criterion  # noqa: F401  (CRITERIA: the smoothed oracle's kinds)
from rsjax.errors import RsjaxError
from rsjax.xla_options import jit


class BudgetError(RsjaxError):
    """A query would exceed an image's query or evaluation budget (nothing was evaluated)."""


class OracleAnswer(NamedTuple):
    adversarial: jax.Array  # [M] bool
    evaluations: jax.Array  # [M] int32 base-model evaluations spent on each query


@runtime_checkable
class Oracle(Protocol):
    """A decision oracle (see module docstring)."""

    name: str
    num_classes: int

    def decide(self, x: jax.Array, y: jax.Array, keys: jax.Array) -> OracleAnswer: ...

    def max_evaluations_per_query(self) -> int: ...


def image_keys(seed_key: jax.Array, image_ids: jax.Array) -> jax.Array:
    """Per-image keys ``fold_in(seed_key, image_id)`` ([B] keys from [B] ids)."""
    return jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(jnp.asarray(image_ids, jnp.uint32))


def query_key(image_key: jax.Array, query_index: jax.Array) -> jax.Array:
    """Key of query number ``query_index`` of one image: ``fold_in(image_key, query_index)``."""
    return jax.random.fold_in(image_key, query_index)


def query_keys(image_keys_: jax.Array, query_index: jax.Array) -> jax.Array:
    """Broadcast :func:`query_key` over images [B] and query indices [B, P] -> keys [B, P]."""
    return jax.vmap(lambda k, q: jax.vmap(lambda qi: query_key(k, qi))(q))(image_keys_, query_index)


class ModelOracle:
    """Deterministic oracle of the plain classifier f: adversarial iff argmax f(x) != y.

    Ties in the logits resolve to the lowest class index (``jnp.argmax``)."""

    def __init__(self, logits_fn: Callable[[jax.Array], jax.Array], num_classes: int, name: str = "model"):
        self.logits_fn = logits_fn
        self.num_classes = num_classes
        self.name = name

    criterion = Criterion("none")

    def decide(self, x: jax.Array, y: jax.Array, keys: jax.Array | None = None) -> OracleAnswer:
        adv = self.criterion.is_adversarial(self.logits_fn(x), y)
        return OracleAnswer(adv, jnp.ones(adv.shape, jnp.int32))

    def max_evaluations_per_query(self) -> int:
        return 1


# ---------------------------------------------------------------------------------------------
# Smoothed oracle over the practical classifier g_{sigma,n}
# ---------------------------------------------------------------------------------------------
class SmoothedOracle:
    """Oracle over g_{sigma,n}: each query draws n noisy copies of the point (sample j with key
    ``fold_in(query_key, j)``) and votes (``rsjax.smoothing.vote_counts``).

    Success criterion (:class:`rsjax.criterion.Criterion`, given whole or by its kind and the
    keywords ``p_a``, ``abstain_alpha``, ``abstain_is_success``):

    * ``'label'``: the attacker sees only the voted label; adversarial iff plurality label != y
      (ties to the lowest class index). With ``abstain_alpha`` set, Cohen's PREDICT abstains when
      the two-sided binomial test of the top two counts has p-value > alpha; an abstention is
      **not** a success unless ``abstain_is_success=True``.
    * ``'level'``: the authors' shortcut for level P_a: adversarial iff at least
      ceil(n * P_a) of the n micro-decisions are != y (``p_a`` required; no abstention).

    ``early_stop`` (default on, exact): a query stops drawing samples as soon as its answer is
    decided (label: y is the sure winner or can no longer win; level: the wrong count is reached
    or out of reach); ``evaluations`` is the number of samples actually drawn. It is off when an
    abstention test is configured (that needs all n counts).

    ``chunk_size`` samples (of all the query's points) are assigned per step of the vote and
    evaluated in model calls of ``eval_rows`` rows, only as many calls as the assigned samples
    need (default :func:`rsjax.smoothing.default_eval_rows`: on a CPU the model's block or 256
    rows), so a query with few active points does not pay for a full chunk.
    """

    def __init__(
        self,
        logits_fn: Callable[[jax.Array], jax.Array],
        num_classes: int,
        sigma: float,
        n: int,
        criterion: "str | Criterion" = "label",
        p_a: float | None = None,
        abstain_alpha: float | None = None,
        abstain_is_success: bool = False,
        early_stop: bool = True,
        chunk_size: int = 1024,
        noise: str = "hash",
        clip: bool = False,
        name: str | None = None,
        eval_rows: int | None = None,
    ):
        from rsjax.criterion import as_criterion
        from rsjax.errors import InputError, check_int_at_least, check_positive
        from rsjax.smoothing import NOISE_IMPLS

        self.logits_fn = logits_fn
        self.num_classes = check_int_at_least("num_classes", num_classes, 2)
        self.sigma = float(check_positive("sigma", sigma))
        self.n = check_int_at_least("n", n, 1)
        extra = {k: v for k, v in (("p_a", p_a), ("abstain_alpha", abstain_alpha)) if v is not None}
        if abstain_is_success:
            extra["abstain_is_success"] = True
        self.criterion = as_criterion(criterion, **extra)
        if not self.criterion.smoothed:
            raise InputError(f"a SmoothedOracle needs a criterion among {CRITERIA}, got {self.criterion.kind!r}")
        self.chunk_size = check_int_at_least("chunk_size", chunk_size, 1)
        self.eval_rows = None if eval_rows is None else check_int_at_least("eval_rows", eval_rows, 1)
        if noise not in NOISE_IMPLS:
            raise InputError(f"noise implementation must be one of {NOISE_IMPLS}, got {noise!r}")
        self.noise, self.clip = noise, bool(clip)
        self.k_wrong = self.criterion.k_wrong(self.n)  # validates a 'level' criterion's p_a
        self.criterion.abstention_table(self.n)  # PREDICT's table, built (and cached) once
        self.early_stop = bool(early_stop) and self.criterion.abstain_alpha is None  # PREDICT needs all n
        self.name = name or f"rs[sigma={self.sigma:g},n={self.n},{self.criterion.describe()}]"

    @property
    def p_a(self) -> float | None:
        return self.criterion.p_a

    @property
    def abstain_alpha(self) -> float | None:
        return self.criterion.abstain_alpha

    @property
    def abstain_is_success(self) -> bool:
        return self.criterion.abstain_is_success

    def max_evaluations_per_query(self) -> int:
        return self.n

    def _stop_rule(self, y: jax.Array):
        return self.criterion.stop_rule(y, n=self.n) if self.early_stop else None

    accepts_active = True

    def decide(self, x: jax.Array, y: jax.Array, keys: jax.Array, active: jax.Array | None = None) -> OracleAnswer:
        """Answers for the points x [M]; rows with ``active`` [M] False draw no samples (n = 0):
        their answer is meaningless and their evaluations are 0."""
        from rsjax.smoothing import vote_counts

        y = jnp.asarray(y, jnp.int32)
        n = self.n if active is None else jnp.where(active, self.n, 0)
        res = vote_counts(self.logits_fn, x, keys, self.sigma, n, self.num_classes,
                          chunk_size=self.chunk_size, clip=self.clip, noise=self.noise,
                          stop=self._stop_rule(y), eval_rows=self.eval_rows)
        adv = self.criterion.is_adversarial(res.counts, y, n=self.n)
        return OracleAnswer(adv, res.evaluations.astype(jnp.int32))

    def as_label_oracle(self) -> "SmoothedOracle":
        """The same g_{sigma,n} with the 'label' criterion (used by :func:`level_of`)."""
        if self.criterion.kind == "label":
            return self
        return SmoothedOracle(self.logits_fn, self.num_classes, self.sigma, self.n, self.criterion.as_label(),
                              chunk_size=self.chunk_size, noise=self.noise, clip=self.clip,
                              eval_rows=self.eval_rows)


class OracleCache:
    """Values computed per oracle *object* (identity, whatever its ``__eq__``; unhashable oracles
    are fine) that never keep the oracle alive: an oracle's entries are dropped when it is
    garbage-collected (``weakref.finalize``). ``make(ref)`` builds a value; it must reach the
    oracle through ``ref()`` only (a weak reference), since a value holding the oracle would keep
    it alive. An oracle that takes no weak references is held, and cached, for good."""

    def __init__(self):
        self._entries: dict[int, tuple[Callable[[], Any], dict]] = {}

    def get(self, oracle, key, make: Callable[[Callable[[], Any]], Any]) -> Any:
        """The value of ``key`` for ``oracle``, built by ``make(ref)`` on first use."""
        oid = id(oracle)
        entry = self._entries.get(oid)
        if entry is None or entry[0]() is not oracle:
            try:
                ref = weakref.ref(oracle)
                weakref.finalize(oracle, self._entries.pop, oid, None)
            except TypeError:  # no __weakref__ slot
                ref = lambda: oracle  # noqa: E731
            entry = (ref, {})
            self._entries[oid] = entry
        values = entry[1]
        if key not in values:
            values[key] = make(entry[0])
        return values[key]

    def __len__(self) -> int:
        return len(self._entries)


_DECIDE_JIT = OracleCache()


def jitted_decide(oracle: Oracle) -> Callable:
    """``jax.jit(oracle.decide)``, cached per oracle object (the cache does not keep it alive)."""
    def make(ref):
        def decide(*args, **kwargs):
            return ref().decide(*args, **kwargs)

        return jit(decide)

    return _DECIDE_JIT.get(oracle, "decide", make)


def decide_padded(oracle: Oracle, x, y, keys) -> tuple:
    """Host call of ``oracle.decide`` on M points padded to a power-of-two bucket (one compiled
    program per bucket); returns numpy (adversarial [M], evaluations [M])."""
    from rsjax.smoothing import batch_bucket

    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.int32)
    m = x.shape[0]
    size = batch_bucket(m)
    if size > m:
        x = jnp.concatenate([x, jnp.repeat(x[:1], size - m, axis=0)])
        y = jnp.concatenate([y, jnp.repeat(y[:1], size - m)])
        keys = jnp.concatenate([keys, jnp.repeat(keys[:1], size - m, axis=0)])
    ans = jitted_decide(oracle)(x, y, keys)
    return np.asarray(ans.adversarial)[:m], np.asarray(ans.evaluations)[:m]


class LevelEstimate(NamedTuple):
    level: np.ndarray  # [B] fraction of the m calls where g_{sigma,n}(x_a) != y
    low: np.ndarray  # [B] Clopper-Pearson lower end
    high: np.ndarray  # [B] Clopper-Pearson upper end
    calls: int
    evaluations: np.ndarray  # [B] base-model evaluations spent


def clopper_pearson_interval(k, m, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided exact (Clopper-Pearson) interval for a binomial proportion with k successes out
    of m (scalars or arrays, m >= 1): [Beta.ppf(a/2, k, m-k+1), Beta.ppf(1-a/2, k+1, m-k)],
    a = 1 - confidence; each end is also the one-sided bound at level a/2."""
    from scipy import stats

    k = np.asarray(k, np.float64)
    m = np.asarray(m, np.float64)
    a = 1.0 - confidence
    low = np.where(k > 0, stats.beta.ppf(a / 2, np.maximum(k, 1), m - k + 1), 0.0)
    high = np.where(k < m, stats.beta.ppf(1 - a / 2, k + 1, np.maximum(m - k, 1)), 1.0)
    return low, high


def level_of(oracle: "SmoothedOracle", x_adv, y, key: jax.Array, calls: int = 100,
             confidence: float = 0.95, image_ids=None) -> LevelEstimate:
    """Estimate the level actually reached, P[g_{sigma,n}(x_a) != y] (eq. (4)), from ``calls``
    independent calls of g_{sigma,n} on each x_a [B,H,W,C]: call c of image i uses the key
    ``fold_in(fold_in(key, image_id_i), c)`` (fresh noise per call). Whatever the oracle's
    criterion, the label criterion (and the oracle's abstention setting) is evaluated; returns the
    empirical level with a Clopper-Pearson interval at ``confidence``."""
    from rsjax.errors import check_int_at_least, check_open_unit

    check_int_at_least("calls", calls, 1)
    check_open_unit("confidence", confidence)
    label_oracle = oracle.as_label_oracle()
    x_adv = np.asarray(x_adv, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    b = x_adv.shape[0]
    ids = np.arange(b) if image_ids is None else np.asarray(image_ids)
    ikeys = image_keys(key, ids)
    call_keys = query_keys(ikeys, jnp.broadcast_to(jnp.arange(calls, dtype=jnp.uint32), (b, calls)))
    flat_keys = call_keys.reshape((b * calls,) + call_keys.shape[2:])
    adv, evals = decide_padded(label_oracle, np.repeat(x_adv, calls, axis=0), np.repeat(y, calls), flat_keys)
    k = adv.reshape(b, calls).sum(axis=1)
    low, high = clopper_pearson_interval(k, calls, confidence)
    return LevelEstimate(k / calls, low, high, calls, evals.reshape(b, calls).sum(axis=1))


# ---------------------------------------------------------------------------------------------
# Host-side query accounting for users outside the attacks
# ---------------------------------------------------------------------------------------------
class CountingOracle:
    """Host wrapper of an oracle that counts, per image id, the queries and base-model
    evaluations, derives query q of image i's key as ``query_key(fold_in(seed_key, i), q)``
    (the attacks' convention) and enforces budgets that are never exceeded: a call that could
    exceed an image's query budget, or its evaluation budget in the worst case
    (queries x ``max_evaluations_per_query``), is refused whole with ``BudgetError`` before
    anything is evaluated."""

    def __init__(self, oracle: Oracle, seed_key: jax.Array, max_queries: int | None = None,
                 max_evaluations: int | None = None):
        from rsjax.errors import check_int_at_least

        self.oracle = oracle
        self.seed_key = seed_key
        self.max_queries = None if max_queries is None else check_int_at_least("max_queries", max_queries, 0)
        self.max_evaluations = (None if max_evaluations is None
                                else check_int_at_least("max_evaluations", max_evaluations, 0))
        self.queries: dict[int, int] = {}
        self.evaluations: dict[int, int] = {}

    def remaining_queries(self, image_id: int) -> int | None:
        return None if self.max_queries is None else self.max_queries - self.queries.get(image_id, 0)

    def __call__(self, x, y, image_ids) -> np.ndarray:
        """Ask about points x [M,H,W,C] of images ``image_ids`` [M] (true labels y [M]);
        returns adversarial [M] bool and updates the counters."""
        ids = np.asarray(image_ids, np.int64).reshape(-1)
        y = np.broadcast_to(np.asarray(y), ids.shape)
        uniq, per = np.unique(ids, return_counts=True)
        worst = self.oracle.max_evaluations_per_query()
        for i, c in zip(uniq.tolist(), per.tolist()):
            q, e = self.queries.get(i, 0), self.evaluations.get(i, 0)
            if self.max_queries is not None and q + c > self.max_queries:
                raise BudgetError(f"image {i}: {c} more queries would exceed max_queries="
                                  f"{self.max_queries} ({q} used)")
            if self.max_evaluations is not None and e + c * worst > self.max_evaluations:
                raise BudgetError(f"image {i}: {c} queries may cost up to {c * worst} evaluations, over "
                                  f"max_evaluations={self.max_evaluations} ({e} used)")
        # query index of each point: the image's count so far + its rank within this call
        qidx = np.empty(len(ids), np.int64)
        seen: dict[int, int] = {}
        for t, i in enumerate(ids.tolist()):
            qidx[t] = self.queries.get(i, 0) + seen.get(i, 0)
            seen[i] = seen.get(i, 0) + 1
        ikeys = image_keys(self.seed_key, ids)
        keys = jax.vmap(query_key)(ikeys, jnp.asarray(qidx, jnp.uint32))
        adv, evals = decide_padded(self.oracle, x, y, keys)
        for t, i in enumerate(ids.tolist()):
            self.queries[i] = self.queries.get(i, 0) + 1
            self.evaluations[i] = self.evaluations.get(i, 0) + int(evals[t])
        return adv

"""Shared machinery of the decision-based attacks: batched state, exact query accounting,
batched binary search, and the host driver that runs jitted chunks of steps.

API (what ``hsja.py``, ``rays.py`` and ``surfree.py`` build on)
--------------------------------------------------------------
An attack subclasses :class:`DecisionAttack`, holds a frozen dataclass ``config`` of its
published defaults (``Attack(**overrides)``), and implements two pure, jit-traceable methods
over a batch of B images (every array has a leading image axis):

* ``init(oracle, env, core, active) -> (core, extra)`` — find a starting point for the images
  with ``active`` True (they are correctly classified; the driver has already spent query 0 on
  the clean image). It must set ``core.found`` / ``core.best_*`` (use :func:`update_best`) and
  return the attack's own state ``extra`` (any PyTree of arrays with leading axis B, typically
  a NamedTuple). An image whose start search fails keeps ``found`` False (status 'no_start').
  (An attack whose steps find the start themselves, like RayS, sets the class attribute
  ``start_in_init = False``; its ``init`` only builds ``extra``.)
* ``step(oracle, env, core, extra, active) -> (core, extra)`` — one iteration for the images
  with ``active`` True; inactive rows must be left unchanged (all queries go through
  :func:`query` / :func:`query_one` with a mask that includes ``active``).
  ``core.steps`` is the number of completed steps (0 during the first step): derive the step's
  randomness with ``attack_keys(env.image_keys, core.steps + 1)``. The step may set
  ``core.done`` for images it considers finished (e.g. iteration cap reached).

The driver (:meth:`DecisionAttack.run`) does the rest: per-image keys
``image_key = fold_in(key, image_id)``; query 0 on the clean image (status 'misclassified' if
already adversarial: distortion 0, no attack); ``init`` once; then a host loop calling a jitted
chunk of ``config.chunk_steps`` steps (``lax.scan``) until every image is done. After each step
an image is marked done when its budget is spent or when the step spent no query (so every loop
is bounded by ``max_queries`` steps). Between chunks finished images are harvested and the batch
is compacted to the next power-of-two bucket (static shapes, at most log2(B)+1 compiled shapes).
The two compiled programs are :meth:`DecisionAttack.start_batch` and :meth:`DecisionAttack.advance`
(jitted by :meth:`DecisionAttack.programs`); ``run(..., programs=...)`` accepts other compilations
of them (the sweep runs each batch on several devices that way).

Randomness (never depends on which images share the batch)
    * oracle randomness of query q of image i: ``rsjax.oracle.query_key(image_key_i, q)``,
      q = 0, 1, 2, ... its running query count (see :func:`query`);
    * attack randomness: ``attack_keys(image_keys, tag)`` =
      ``fold_in(fold_in(image_key, ATTACK_STREAM), tag)`` with ``ATTACK_STREAM = 2**32 - 1``
      (a query index that is never reached), tag 0 for ``init`` and t >= 1 for step t.

Query accounting (:func:`query`)
    Given candidate points [B, P, ...] and a mask [B, P], the masked probes of image i receive
    consecutive query indices starting at ``core.queries[i]``; those with index >=
    ``env.max_queries`` are NOT sent (``sent`` False, ``adversarial`` False) so the budget is
    never exceeded, exactly. ``core.queries`` grows by the number sent, ``core.evaluations`` by
    the base-model evaluations the oracle reports. The oracle runs on all B*P points (static
    shapes) but unsent answers are discarded; a call where nothing is sent is skipped.
    A step must cope with unsent probes: :func:`binary_search` only moves a bound on a sent
    answer, so its output is always the last point answered adversarial.

Results (:class:`AttackResult`, numpy, one row per image)
    x_adv (the clean image when no adversarial was found), l2, linf (0 for 'misclassified',
    inf for 'no_start'), success (an adversarial point is known: True for 'misclassified' and
    'attacked'), status ('attacked' | 'misclassified' | 'no_start'), queries, evaluations,
    steps, and the trace of the best distortion vs queries: ``trace_queries`` [B, T]
    (queries spent when the best was recorded, padded with a huge value), ``trace_l2``,
    ``trace_linf``; ``distortion_at(q, norm='l2')`` gives the best distortion reached within q
    queries (inf if none). The trace is recorded after ``init`` and after every step, i.e. a
    step's improvement is attributed to the query count at the end of that step (conservative).
    Which distance "best" minimises is ``DecisionAttack.metric`` ('l2', or 'linf' for RayS);
    the other norm is that of the same point.

Abstention: an oracle answers only adversarial or not; how a smoothed oracle maps an
abstention is its business (see rsjax.oracle). The attack never sees labels.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import InputError
from rsjax.geometry import (bcast, clip01, flat, halving_sum, keep_better, l2_norm, linf_norm, safe_normalize,
                            tree_sum)
from rsjax.oracle import Oracle, image_keys as _image_keys, query_keys
from rsjax.xla_options import jit

ATTACK_STREAM = 0xFFFFFFFF
TRACE_PAD = np.iinfo(np.int64).max
STATUS_ATTACKED = "attacked"
STATUS_MISCLASSIFIED = "misclassified"
STATUS_NO_START = "no_start"


# --------------------------------------------------------------------------- state

class AttackEnv(NamedTuple):
    """What does not change during a batch's attack."""

    x: jax.Array  # [B, H, W, C] clean images in [0,1]
    y: jax.Array  # [B] int32 true labels
    image_keys: jax.Array  # [B] keys fold_in(seed_key, image_id)
    valid: jax.Array  # [B] bool, False for bucket padding rows
    max_queries: jax.Array  # int32 scalar budget per image


class AttackCore(NamedTuple):
    """Per-image bookkeeping shared by every attack."""

    queries: jax.Array  # [B] int32 queries spent (also the index of the next query)
    evaluations: jax.Array  # [B] int32 base-model evaluations spent
    best_x: jax.Array  # [B, H, W, C] best adversarial point found (x when none)
    best_l2: jax.Array  # [B] float32 its L2 distance to x (inf when none)
    best_linf: jax.Array  # [B] float32 its L-inf distance to x (inf when none)
    found: jax.Array  # [B] bool an adversarial point is known
    misclassified: jax.Array  # [B] bool the clean image itself was adversarial
    done: jax.Array  # [B] bool finished (budget spent, converged, failed, or padding)
    steps: jax.Array  # [B] int32 completed steps


def initial_core(env: AttackEnv) -> AttackCore:
    """Fresh bookkeeping: nothing spent, nothing found; padding rows are done."""
    b = env.x.shape[0]
    inf = jnp.full((b,), jnp.inf, jnp.float32)
    zeros = jnp.zeros((b,), jnp.int32)
    return AttackCore(zeros, zeros, env.x, inf, inf, jnp.zeros((b,), bool), jnp.zeros((b,), bool),
                      ~env.valid, zeros)


# --------------------------------------------------------------------------- small math
# (the batched geometry helpers live in rsjax/geometry.py; re-exported here for the attacks)

def attack_keys(image_keys: jax.Array, tag: jax.Array | int) -> jax.Array:
    """Attack randomness of each image: fold_in(fold_in(image_key, ATTACK_STREAM), tag) -> [B]."""
    tag = jnp.broadcast_to(jnp.asarray(tag, jnp.uint32), (image_keys.shape[0],))
    return jax.vmap(lambda k, t: jax.random.fold_in(jax.random.fold_in(k, ATTACK_STREAM), t))(
        image_keys, tag)


def where_rows(mask: jax.Array, a: Any, b: Any) -> Any:
    """PyTree select by a [B] row mask: rows of ``a`` where mask else rows of ``b``."""
    return jax.tree.map(lambda u, v: jnp.where(bcast(mask, u), u, v), a, b)


# --------------------------------------------------------------------------- queries

class QueryOutcome(NamedTuple):
    adversarial: jax.Array  # [B, P] bool (False where not sent)
    sent: jax.Array  # [B, P] bool (probe was within budget and asked)
    core: AttackCore  # counters updated


def query(oracle: Oracle, env: AttackEnv, core: AttackCore, points: jax.Array, mask: jax.Array) -> QueryOutcome:
    """Ask the oracle about candidate points [B, P, H, W, C] where ``mask`` [B, P] is True.

    Masked probes of image i get query indices core.queries[i], core.queries[i]+1, ... in
    row-major order; probes whose index would reach env.max_queries are not sent. Points are
    clipped to [0,1] before being asked. Returns answers, sent mask, and updated counters."""
    b, p = mask.shape
    mask = mask & bcast(env.valid & ~core.done, mask)
    order = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1  # [B, P] rank among this row's probes
    index = core.queries[:, None] + order
    sent = mask & (index < env.max_queries)

    def ask(_):
        keys = query_keys(env.image_keys, jnp.where(sent, index, 0).astype(jnp.uint32))
        pts = clip01(points.reshape((b * p,) + points.shape[2:]))
        flat_keys = keys.reshape((b * p,) + keys.shape[2:])
        if getattr(oracle, "accepts_active", False):  # unsent probes cost no evaluations
            ans = oracle.decide(pts, jnp.repeat(env.y, p), flat_keys, sent.reshape(b * p))
        else:
            ans = oracle.decide(pts, jnp.repeat(env.y, p), flat_keys)
        return ans.adversarial.reshape(b, p), ans.evaluations.reshape(b, p).astype(jnp.int32)

    def skip(_):
        return jnp.zeros((b, p), bool), jnp.zeros((b, p), jnp.int32)

    adv, evals = jax.lax.cond(jnp.any(sent), ask, skip, None)
    adv = adv & sent
    core = core._replace(
        queries=core.queries + jnp.sum(sent, axis=1, dtype=jnp.int32),
        evaluations=core.evaluations + jnp.sum(jnp.where(sent, evals, 0), axis=1, dtype=jnp.int32),
    )
    return QueryOutcome(adv, sent, core)


def query_one(oracle: Oracle, env: AttackEnv, core: AttackCore, points: jax.Array, mask: jax.Array) -> QueryOutcome:
    """:func:`query` for one point per image: points [B, H, W, C], mask [B] -> answers [B]."""
    out = query(oracle, env, core, points[:, None], mask[:, None])
    return QueryOutcome(out.adversarial[:, 0], out.sent[:, 0], out.core)


def remaining(env: AttackEnv, core: AttackCore) -> jax.Array:
    """Queries left per image, >= 0: [B] int32."""
    return jnp.maximum(env.max_queries - core.queries, 0)


def update_best(env: AttackEnv, core: AttackCore, candidate: jax.Array, ok: jax.Array,
                metric: str = "l2") -> AttackCore:
    """Keep ``candidate`` [B, ...] as best where ``ok`` [B] and it is closer to x than the best
    so far in ``metric`` ('l2' or 'linf'); sets ``found``."""
    d = candidate - env.x
    l2, linf = l2_norm(d), linf_norm(d)
    new = l2 if metric == "l2" else linf
    old = core.best_l2 if metric == "l2" else core.best_linf
    return replace_best(core, ok & (new < old), candidate, l2, linf, ok)


def replace_best(core: AttackCore, better: jax.Array, candidate: jax.Array, l2: jax.Array, linf: jax.Array,
                 ok: jax.Array) -> AttackCore:
    """``core`` with ``candidate`` [B, ...] (distances ``l2``, ``linf`` [B]) as best point where
    ``better`` [B] (:func:`rsjax.geometry.keep_better`), and ``found`` set where ``ok``."""
    best_x, best_l2, best_linf = keep_better(better, candidate, core.best_x, (l2, core.best_l2),
                                             (linf, core.best_linf))
    return core._replace(best_x=best_x, best_l2=best_l2, best_linf=best_linf, found=core.found | ok)


def binary_search(oracle: Oracle, env: AttackEnv, core: AttackCore, x_in: jax.Array, x_out: jax.Array,
                  mask: jax.Array, threshold: jax.Array | float, max_iterations: int,
                  high: jax.Array | None = None) -> tuple[jax.Array, jax.Array, AttackCore]:
    """Bisect the blend factor a of p(a) = (1 - a) x_in + a x_out, a in [0, high], where
    p(high) is adversarial and x_in is not: while (high - low) > threshold (per image),
    query p(mid) and move ``high`` to mid on an adversarial answer, ``low`` on a
    non-adversarial one. Unsent probes (budget) move nothing and stop that image's search.
    At most ``max_iterations`` rounds (all images in parallel, one query each per round).

    Returns (p(high) [B, ...], high [B], core). ``mask`` [B] selects the images searched."""
    b = mask.shape[0]
    thr = jnp.broadcast_to(jnp.asarray(threshold, jnp.float32), (b,))
    hi0 = jnp.ones((b,), jnp.float32) if high is None else jnp.asarray(high, jnp.float32)
    lo0 = jnp.zeros((b,), jnp.float32)

    def blend(a):
        return (1.0 - bcast(a, x_in)) * x_in + bcast(a, x_in) * x_out

    def searching(lo, hi, live):
        return live & ((hi - lo) > thr)

    def cond(c):
        i, lo, hi, live, _ = c
        return (i < max_iterations) & jnp.any(searching(lo, hi, live))

    def body(c):
        i, lo, hi, live, core_ = c
        want = searching(lo, hi, live)
        mid = 0.5 * (lo + hi)
        out = query_one(oracle, env, core_, blend(mid), want)
        hi = jnp.where(out.adversarial, mid, hi)
        lo = jnp.where(out.sent & ~out.adversarial, mid, lo)
        live = live & ~(want & ~out.sent)  # out of budget: stop
        return i + 1, lo, hi, live, out.core

    _, lo, hi, _, core = jax.lax.while_loop(cond, body, (0, lo0, hi0, mask, core))
    return blend(hi), hi, core


def iterations_for(threshold: float, span: float = 1.0) -> int:
    """Rounds a bisection of ``span`` needs to get below ``threshold`` (a static bound)."""
    return max(1, int(math.ceil(math.log2(max(span / threshold, 1.0)))) + 1)


# --------------------------------------------------------------------------- results

@dataclass
class AttackResult:
    """Per-image outcome of an attack (numpy arrays, one row per image, in input order)."""

    attack: str
    image_ids: np.ndarray  # [B] int64
    x_adv: np.ndarray  # [B, H, W, C] float32
    l2: np.ndarray  # [B] float64
    linf: np.ndarray  # [B] float64
    success: np.ndarray  # [B] bool
    status: np.ndarray  # [B] str
    queries: np.ndarray  # [B] int64
    evaluations: np.ndarray  # [B] int64
    steps: np.ndarray  # [B] int64
    trace_queries: np.ndarray  # [B, T] int64 (TRACE_PAD after the end)
    trace_l2: np.ndarray  # [B, T] float64
    trace_linf: np.ndarray  # [B, T] float64
    max_queries: int
    config: dict

    def __len__(self) -> int:
        return len(self.l2)

    def distortion_at(self, queries: int, norm: str = "l2") -> np.ndarray:
        """Best distortion (``norm`` 'l2' or 'linf') reached within ``queries`` queries: [B]
        (0 for misclassified images, inf where no adversarial was known by then)."""
        if norm not in ("l2", "linf"):
            raise InputError(f"norm must be 'l2' or 'linf', got {norm!r}")
        tr = self.trace_l2 if norm == "l2" else self.trace_linf
        ok = self.trace_queries <= queries
        return np.where(ok, tr, np.inf).min(axis=1, initial=np.inf)

    @property
    def attacked(self) -> np.ndarray:
        return self.status == STATUS_ATTACKED

    def summary(self) -> dict:
        """Aggregates over the attacked images (misclassified and no_start excluded from the
        distortion statistics; no_start counts as a failure in success_rate)."""
        att = self.attacked
        tried = att | (self.status == STATUS_NO_START)
        l2 = self.l2[att & self.success]
        linf = self.linf[att & self.success]
        return {
            "attack": self.attack,
            "n_images": int(len(self)),
            "n_attacked": int(att.sum()),
            "n_misclassified": int((self.status == STATUS_MISCLASSIFIED).sum()),
            "n_no_start": int((self.status == STATUS_NO_START).sum()),
            "success_rate": float(self.success[tried].mean()) if tried.any() else float("nan"),
            "median_l2": float(np.median(l2)) if len(l2) else float("nan"),
            "mean_l2": float(np.mean(l2)) if len(l2) else float("nan"),
            "median_linf": float(np.median(linf)) if len(linf) else float("nan"),
            "mean_linf": float(np.mean(linf)) if len(linf) else float("nan"),
            "max_queries": int(self.max_queries),
            "max_queries_used": int(self.queries.max()) if len(self) else 0,
            "mean_queries": float(self.queries.mean()) if len(self) else float("nan"),
            "total_evaluations": int(self.evaluations.sum()),
        }


# --------------------------------------------------------------------------- driver

def _bucket(n: int, cap: int) -> int:
    return min(cap, 1 << max(0, (n - 1).bit_length()))


class DecisionAttack:
    """Base class: subclasses set ``name``, ``Config`` (a frozen dataclass with a
    ``chunk_steps`` field) and ``metric``, and implement ``init`` and ``step`` (see module
    docstring)."""

    name: str = "attack"
    metric: str = "l2"
    Config: type = None  # type: ignore[assignment]
    #: True when ``init`` finds the starting point (an image without one after ``init`` is
    #: 'no_start'); False when steps search for it (RayS): then only the budget ends the search.
    start_in_init: bool = True
    #: Fields of the ``extra`` NamedTuple that ``step`` provably never changes on inactive
    #: rows: the driver then skips its defensive row select on them (for large per-image
    #: buffers, e.g. SurFree's [B, n_ortho, D] direction history, that select is a full copy
    #: per step).
    inactive_rows_kept: tuple[str, ...] = ()

    def __init__(self, **overrides: Any):
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise InputError(f"{self.name}: unknown option(s) {unknown}; known: {sorted(fields)}")
        self.config = self.Config(**overrides)
        self.check_config()
        from rsjax.oracle import OracleCache

        self._compiled = OracleCache()  # oracle -> {check_clean: (start, chunk)}; never keeps an oracle alive

    def check_config(self) -> None:
        """Validate ``self.config`` (raise InputError naming the bad value)."""
        if not isinstance(self.config.chunk_steps, int) or self.config.chunk_steps < 1:
            raise InputError(f"chunk_steps must be an integer >= 1, got {self.config.chunk_steps!r}")

    # -- to implement
    def init(self, oracle: Oracle, env: AttackEnv, core: AttackCore, active: jax.Array):
        raise NotImplementedError

    def step(self, oracle: Oracle, env: AttackEnv, core: AttackCore, extra: Any, active: jax.Array):
        raise NotImplementedError

    # -- the two programs the driver compiles (pure, traceable; public so that an executor,
    #    e.g. the sweep's multi-device one, can compile and place them itself)
    def start_batch(self, oracle: Oracle, env: AttackEnv, check_clean: bool = True):
        """Query 0 on the clean images (misclassified ones are done), then ``init``:
        -> (core, extra). With ``check_clean`` False no clean query is made and every image is
        attacked (the evaluator has already measured the clean images' level: against a random
        classifier one lucky answer at x_o does not make it adversarial)."""
        core = initial_core(env)
        if check_clean:
            out = query_one(oracle, env, core, env.x, env.valid)
            core = out.core
            mis = out.adversarial
            core = core._replace(
                misclassified=mis, found=mis,
                best_l2=jnp.where(mis, 0.0, core.best_l2), best_linf=jnp.where(mis, 0.0, core.best_linf),
                done=core.done | mis)
        active = env.valid & ~core.done
        core, extra = self.init(oracle, env, core, active)
        spent = core.queries >= env.max_queries
        no_start = ~core.found if self.start_in_init else jnp.zeros_like(core.found)
        core = core._replace(done=core.done | no_start | spent)
        return core, extra

    def advance(self, oracle: Oracle, env: AttackEnv, core: AttackCore, extra: Any):
        """``config.chunk_steps`` steps (``lax.scan``) of the images not done, with the driver's
        bookkeeping (step count, done on budget / stall / no start): -> (core, extra, trace) where
        trace = (active, queries, best_l2, best_linf), each [chunk_steps, B]."""
        def one(carry, _):
            core, extra = carry
            active = env.valid & ~core.done
            new_core, new_extra = self.step(oracle, env, core, extra, active)
            new_core = new_core._replace(steps=new_core.steps + active.astype(jnp.int32))
            kept = {f: getattr(new_extra, f) for f in self.inactive_rows_kept}
            new_core, new_extra = where_rows(active, (new_core, new_extra), (core, extra))
            if kept:  # the step already leaves these unchanged on inactive rows: no full copy
                new_extra = new_extra._replace(**kept)
            stalled = new_core.queries == core.queries
            finished = (new_core.queries >= env.max_queries) | stalled
            if self.start_in_init:
                finished = finished | ~new_core.found
            new_core = new_core._replace(done=new_core.done | (active & finished))
            return (new_core, new_extra), (active, new_core.queries, new_core.best_l2, new_core.best_linf)

        (core, extra), trace = jax.lax.scan(one, (core, extra), None, length=self.config.chunk_steps)
        return core, extra, trace

    def programs(self, oracle: Oracle, check_clean: bool = True) -> tuple[Callable, Callable]:
        """Jitted ``(start(env), chunk(env, core, extra))`` of :meth:`start_batch` and
        :meth:`advance` for ``oracle`` (cached per oracle object and ``check_clean``; the programs
        reach the oracle through a weak reference: the cache does not keep it alive)."""
        def make(ref):
            start = jit(lambda env: self.start_batch(ref(), env, check_clean))
            chunk = jit(lambda env, core, extra: self.advance(ref(), env, core, extra))
            return start, chunk

        return self._compiled.get(oracle, check_clean, make)

    # -- host driver
    def run(self, oracle: Oracle, x, y, key, max_queries: int, image_ids=None,
            batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
            programs: Callable[[Oracle], tuple[Callable, Callable]] | None = None,
            check_clean: bool = True) -> AttackResult:
        """Attack each image of x [B, H, W, C] (in [0,1]) with true labels y [B] under a budget
        of ``max_queries`` oracle queries per image (query 0 checks the clean image).

        ``key``: a PRNG key or an int seed; image i's randomness derives from
        fold_in(key, image_ids[i]) only. ``batch_size``: images advanced together (default
        all, at most 256). ``progress(done, total)`` is called as images finish.
        ``programs(oracle) -> (start, chunk)`` replaces :meth:`programs` (same signatures; e.g.
        programs that run each batch on several devices; they decide themselves whether the
        clean image is queried). ``check_clean`` False: no query 0 on the clean image, every
        image is attacked (:meth:`start_batch`)."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y)
        if x.ndim != 4:
            raise InputError(f"x must be [B, H, W, C], got shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise InputError(f"y must be [B]={x.shape[0]} labels, got shape {y.shape}")
        if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
            raise InputError(f"x must lie in [0,1], got range [{x.min()}, {x.max()}]")
        if isinstance(max_queries, bool) or not isinstance(max_queries, (int, np.integer)) or max_queries < 1:
            raise InputError(f"max_queries must be an integer >= 1, got {max_queries!r}")
        if not 0 <= y.min(initial=0) or y.max(initial=0) >= oracle.num_classes:
            raise InputError(f"labels must lie in [0, {oracle.num_classes}), got {y.min()}..{y.max()}")
        n = x.shape[0]
        ids = np.arange(n, dtype=np.int64) if image_ids is None else np.asarray(image_ids, np.int64)
        if ids.shape != (n,):
            raise InputError(f"image_ids must be [B]={n} ints, got shape {ids.shape}")
        if len(np.unique(ids)) != n:
            raise InputError("image_ids must be distinct (they seed each image's randomness)")
        if isinstance(key, (int, np.integer)):
            key = jax.random.key(int(key))
        bs = min(n, 256) if batch_size is None else int(batch_size)
        if bs < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
        start, chunk = programs(oracle) if programs is not None else self.programs(oracle, check_clean)

        res = _Collector(x, self.metric)
        for lo in range(0, n, bs):
            rows = np.arange(lo, min(n, lo + bs))
            self._run_batch(start, chunk, x, y, ids, key, int(max_queries), rows, _bucket(len(rows), bs), res,
                            progress, n)
        return res.result(self.name, ids, int(max_queries), dataclasses.asdict(self.config))

    def _run_batch(self, start, chunk, x, y, ids, key, max_queries, rows, size, res, progress, total):
        pad = size - len(rows)
        sel = np.concatenate([rows, np.full(pad, rows[0])])
        env = AttackEnv(
            x=jnp.asarray(x[sel]), y=jnp.asarray(y[sel], jnp.int32),
            image_keys=_image_keys(key, jnp.asarray(ids[sel])),
            valid=jnp.asarray(np.arange(size) < len(rows)),
            max_queries=jnp.asarray(max_queries, jnp.int32))
        slot = np.where(np.arange(size) < len(rows), sel, -1)  # slot -> image row (-1 padding)
        core, extra = start(env)
        q, l2, linf = (np.asarray(a) for a in (core.queries, core.best_l2, core.best_linf))
        for s in np.flatnonzero(slot >= 0):
            res.add_trace(slot[s], q[s], l2[s], linf[s])
        for _ in range(max_queries + 2):  # each step spends >= 1 query or ends the image
            done = np.asarray(core.done)
            live = np.flatnonzero(~done & (slot >= 0))
            finished = np.flatnonzero(done & (slot >= 0))
            if len(finished):
                res.harvest(core, finished, slot)
                slot[finished] = -1
                if progress is not None:
                    progress(res.n_done, total)
            if len(live) == 0:
                return
            new_size = _bucket(len(live), size)
            if new_size < size:
                keep = np.concatenate([live, np.full(new_size - len(live), live[0])])
                padmask = np.arange(new_size) >= len(live)
                take = jnp.asarray(keep)
                core, extra = jax.tree.map(lambda a: a[take], (core, extra))
                env = env._replace(x=env.x[take], y=env.y[take], image_keys=env.image_keys[take],
                                   valid=env.valid[take] & jnp.asarray(~padmask))
                core = core._replace(done=core.done | jnp.asarray(padmask))
                slot = np.where(padmask, -1, slot[keep])
                size = new_size
            core, extra, (act, tq, tl2, tlinf) = chunk(env, core, extra)
            act, tq, tl2, tlinf = (np.asarray(a) for a in (act, tq, tl2, tlinf))
            for s in np.flatnonzero(slot >= 0):
                m = act[:, s]
                if m.any():
                    res.add_trace(slot[s], tq[m, s], tl2[m, s], tlinf[m, s])
        raise RuntimeError("attack driver exceeded its step bound (a step spent no query)")  # pragma: no cover


class _Collector:
    """Host-side accumulation of per-image results and traces."""

    def __init__(self, x: np.ndarray, metric: str):
        n = x.shape[0]
        self.x = x
        self.x_adv = x.copy()
        self.l2 = np.full(n, np.inf)
        self.linf = np.full(n, np.inf)
        self.found = np.zeros(n, bool)
        self.mis = np.zeros(n, bool)
        self.queries = np.zeros(n, np.int64)
        self.evals = np.zeros(n, np.int64)
        self.steps = np.zeros(n, np.int64)
        self.traces: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
        self.n_done = 0

    def add_trace(self, row, q, l2, linf) -> None:
        self.traces[row].append((np.atleast_1d(q), np.atleast_1d(l2), np.atleast_1d(linf)))

    def harvest(self, core: AttackCore, slots: np.ndarray, slot: np.ndarray) -> None:
        idx = jnp.asarray(slots)
        parts = jax.tree.map(lambda a: np.asarray(a[idx]), core)
        rows = slot[slots]
        self.x_adv[rows] = np.where(parts.found.reshape(-1, 1, 1, 1), parts.best_x, self.x[rows])
        self.l2[rows] = parts.best_l2
        self.linf[rows] = parts.best_linf
        self.found[rows] = parts.found
        self.mis[rows] = parts.misclassified
        self.queries[rows] = parts.queries
        self.evals[rows] = parts.evaluations
        self.steps[rows] = parts.steps
        self.n_done += len(rows)

    def result(self, name: str, ids: np.ndarray, max_queries: int, config: dict) -> AttackResult:
        n = len(ids)
        status = np.where(self.mis, STATUS_MISCLASSIFIED, np.where(self.found, STATUS_ATTACKED, STATUS_NO_START))
        cols = []
        for tr in self.traces:
            if tr:
                cols.append(tuple(np.concatenate(c) for c in zip(*tr)))
            else:
                cols.append((np.zeros(0, np.int64), np.zeros(0), np.zeros(0)))
        t = max([len(c[0]) for c in cols] + [1])
        tq = np.full((n, t), TRACE_PAD, np.int64)
        tl2 = np.full((n, t), np.inf)
        tli = np.full((n, t), np.inf)
        for i, (q, a, b) in enumerate(cols):
            tq[i, : len(q)] = q
            tl2[i, : len(q)] = a
            tli[i, : len(q)] = b
        return AttackResult(
            attack=name, image_ids=ids, x_adv=self.x_adv, l2=self.l2.astype(np.float64),
            linf=self.linf.astype(np.float64), success=self.found.copy(), status=status.astype(str),
            queries=self.queries, evaluations=self.evals, steps=self.steps,
            trace_queries=tq, trace_l2=tl2, trace_linf=tli, max_queries=max_queries, config=config)


__all__ = [
    "ATTACK_STREAM", "AttackEnv", "AttackCore", "AttackResult", "DecisionAttack", "QueryOutcome",
    "STATUS_ATTACKED", "STATUS_MISCLASSIFIED", "STATUS_NO_START",
    "attack_keys", "bcast", "binary_search", "clip01", "flat", "halving_sum", "initial_core", "iterations_for",
    "l2_norm", "linf_norm", "query", "query_one", "remaining", "safe_normalize", "tree_sum", "update_best",
    "where_rows",
]

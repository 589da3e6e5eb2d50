"""The study's oracle: the library's smoothed oracle (:mod:`rsjax.oracle`: same noise, same
decision and exact stop rules) with *traced* parameters and a per-point vote schedule.

The attacks' jitted programs take (model variables, sigma, n, k) as *arguments*
(:class:`ParamOracle`), so one compiled program per (attack, architecture, criterion, batch
size) serves every model, sigma, n and P_a of the sweep. Votes (:func:`scheduled_vote_counts`)
use the noise of :func:`rsjax.smoothing.vote_counts` and an exact early stop (the decision is
the one the full n-sample vote would give, with the same noise), checked after rounds that bring
each undecided point to 4, 8, 16, ... samples: ``evaluations`` counts the base-model evaluations
actually spent, and depends on the point's own votes only; ``queries * n`` is the nominal cost.
Every model call of an oracle query has a static shape that depends on the query's points per
image and ``vote_chunk`` only (:func:`model_block`), never on how many images share a device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rsjax.criterion import Criterion


def apply_fn(clf) -> Callable:
    """``(variables, x) -> logits`` of a :class:`rsjax.classifier.Classifier`'s architecture
    (the weights are an argument, not constants: one program serves every model)."""
    module = clf.spec.build()
    dtype = getattr(clf, "dtype", "float32")
    if dtype != "float32":  # variables already cast (Classifier.astype); inputs cast, logits float32
        dt = jnp.dtype(dtype)
        return lambda variables, x: module.apply(variables, x.astype(dt), train=False).astype(jnp.float32)
    return lambda variables, x: module.apply(variables, x, train=False)


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class OracleParams:
    """Runtime (traced) parameters of :class:`ParamOracle`: model variables, sigma, n, and k
    (the number of wrong micro-decisions that makes a point adversarial under 'level')."""

    variables: Any
    sigma: Any
    n: Any
    k: Any

    def tree_flatten(self):
        return (self.variables, self.sigma, self.n, self.k), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


class ParamOracle:
    """A decision oracle (contract of :mod:`rsjax.oracle`) whose numbers are traced values.

    ``kind``: the :class:`rsjax.criterion.Criterion` kind, 'none' (base classifier f: adversarial
    iff argmax f(x) != y, 1 evaluation), 'level' (adversarial iff #{j < n : f(x + sigma N_j) != y}
    >= k, k traced) or 'label' (adversarial iff the plurality of the n micro-decisions,
    lowest-index ties, is not y). Sample j of the query
    with key kq uses the noise key fold_in(kq, j) (the noise of :func:`rsjax.smoothing.vote_counts`),
    and the vote stops as soon as the answer is decided (exact: :func:`scheduled_vote_counts`).

    Shape invariance (what makes a sweep identical on 1 and 2 devices): ``rows`` is the number of
    images of the batch this oracle serves (a query of P points per image asks rows * P points);
    every model call is made on a block whose shape depends on P and ``chunk_size`` only
    (:func:`model_block`), never on how many images a device holds, and each point's vote
    schedule depends on its own votes only."""

    def __init__(self, apply_fn: Callable, params: OracleParams, num_classes: int, kind: str,
                 chunk_size: int = 2048, noise: str = "hash", rows: int | None = None,
                 eval_rows: int | None = None):
        self.criterion = Criterion(kind)  # validates the kind
        self.apply_fn = apply_fn
        self.params = params
        self.num_classes = num_classes
        self.kind = kind
        self.name = f"param-{kind}"
        self.chunk_size = chunk_size
        self.noise = noise
        self.rows = rows
        self.eval_rows = eval_rows

    def _eval_rows(self, block: int) -> int | None:
        """Rows per model call inside a block of ``block`` rows: the model's own CPU block
        (``eval_rows``, e.g. 32 for the CIFAR ResNets) when it splits the block, else None (one
        call). Static, so shapes still depend only on the kind of query."""
        from rsjax.smoothing import split_rows

        return split_rows(self.eval_rows, block)

    def _logits(self, x):
        return self.apply_fn(self.params.variables, x)

    def _points_per_image(self, m: int) -> int:
        return max(1, m // self.rows) if self.rows else m

    #: optional oracle contract (rsjax.oracle): rows with ``active`` False draw no samples
    accepts_active = True

    def decide(self, x, y, keys=None, active=None):
        """Answers for the points x [M]; rows with ``active`` [M] False (probes the caller will
        not send) draw no samples: their answer is meaningless and their evaluations 0."""
        from rsjax.oracle import OracleAnswer

        per_image = self._points_per_image(x.shape[0])
        if self.kind == "none":
            block = model_block(per_image, self.chunk_size, floor=1)
            block = self._eval_rows(block) or block
            adv = self.criterion.is_adversarial(blocked_apply(self._logits, x, block), y)
            return OracleAnswer(adv, jnp.ones(adv.shape, jnp.int32))
        p = self.params
        n = p.n if active is None else jnp.where(active, p.n, 0)
        chunk = model_block(per_image, self.chunk_size)
        res = scheduled_vote_counts(self._logits, x, keys, p.sigma, n, self.num_classes,
                                    chunk_size=chunk, noise=self.noise,
                                    stop=self.criterion.stop_rule(y, k_wrong=p.k), eval_rows=self._eval_rows(chunk))
        adv = self.criterion.is_adversarial(res.counts, y, k_wrong=p.k)
        return OracleAnswer(adv, res.evaluations.astype(jnp.int32))

    def max_evaluations_per_query(self) -> int:
        return 1 if self.kind == "none" else int(self.params.n)


#: images whose points share one model call (sets the block size: see :func:`model_block`)


IMAGES_PER_BLOCK = 16
#: samples each point gets in its first voting round (then doubled every round)
FIRST_ROUND = 4


def model_block(points_per_image: int, cap: int, floor: int = 128) -> int:
    """Static row count of every model call of an oracle query with ``points_per_image`` points
    per image: room for 4 samples of each point of ``IMAGES_PER_BLOCK`` images (next power of
    two), between ``floor`` and ``cap`` (the sweep's ``vote_chunk``). It depends on the kind of
    query (binary search: 1 point; HSJA's gradient estimate: its probe batch) and never on the
    number of images a device holds, so the model sees the same shapes whatever the device count
    (a forward pass in XLA may round differently for different batch sizes)."""
    want = 4 * (1 << max(0, (points_per_image * IMAGES_PER_BLOCK - 1).bit_length()))
    return int(max(1, min(cap, max(floor, want))))


def blocked_apply(fn: Callable[[jax.Array], jax.Array], x: jax.Array, block: int) -> jax.Array:
    """``fn(x)`` for x [M, ...] computed on zero-padded blocks of exactly ``block`` rows
    (:func:`rsjax.classifier.forward_in_blocks` with ``pad_small``): every call of ``fn`` has the
    same shape, so a row's output never depends on M."""
    from rsjax.classifier import forward_in_blocks

    return forward_in_blocks(fn, block, pad_small=True)(x)


def scheduled_vote_counts(logits_fn: Callable, x: jax.Array, keys: jax.Array, sigma, n, num_classes: int, *,
                          chunk_size: int, noise: str = "hash", stop: Callable | None = None,
                          first_round: int = FIRST_ROUND, eval_rows: int | None = None):
    """Votes with an exact early stop whose cost per point depends on that point alone.

    ``n``: a scalar or [M] (n_i = 0 skips point i). Same noise as
    :func:`rsjax.smoothing.vote_counts` (sample j of point i uses
    ``fold_in(keys[i], j)``), hence the same decisions; but the samples are spent in rounds:
    round r brings every undecided point to min(n, first_round * 2**r) samples, and ``stop`` is
    checked after each round. A point's evaluations are therefore fixed by its own votes
    (vote_counts shares each chunk among the active points, so a point's count there depends on
    how many other points are active, i.e. on the batch and on the device count). A round's
    samples are packed into chunks of exactly ``chunk_size`` rows (an inner loop), each evaluated
    in one model call or, with ``eval_rows``, in calls of that many rows up to its last filled
    slot (:func:`rsjax.smoothing.add_sample_votes`).
    Returns :class:`rsjax.smoothing.VoteResult` (counts [M, K], evaluations [M])."""
    from rsjax.smoothing import VoteResult, add_sample_votes

    m = x.shape[0]
    n = jnp.broadcast_to(jnp.asarray(n, jnp.int32), (m,))
    sigma = jnp.asarray(sigma, jnp.float32)
    slots = jnp.arange(chunk_size, dtype=jnp.int32)
    shift_cap = max(1, 30 - max(0, int(first_round).bit_length()))

    def live(done, decided):
        return (~decided) & (done < n)

    def round_cond(state):
        _, done, decided, _ = state
        return jnp.any(live(done, decided))

    def round_body(state):
        counts, done, decided, r = state
        target = jnp.where(r >= shift_cap, n, jnp.minimum(n, jnp.left_shift(jnp.int32(first_round), r)))
        want = jnp.where(live(done, decided), jnp.maximum(target - done, 0), 0)
        cum = jnp.cumsum(want)
        begin = cum - want
        total = cum[-1]

        def chunk_cond(c):
            return c[1] < total

        def chunk_body(c):
            counts_, base = c
            s = base + slots
            valid = s < total
            point = jnp.minimum(jnp.searchsorted(cum, s, side="right"), m - 1).astype(jnp.int32)
            sample = done[point] + s - begin[point]
            return (add_sample_votes(logits_fn, x, keys, sigma, counts_, point, sample, valid, noise=noise,
                                     eval_rows=eval_rows),
                    base + chunk_size)

        counts, _ = jax.lax.while_loop(chunk_cond, chunk_body, (counts, jnp.int32(0)))
        done = done + want
        if stop is not None:
            decided = decided | stop(counts, n - done)
        return counts, done, decided, r + 1

    init = (jnp.zeros((m, num_classes), jnp.int32), jnp.zeros((m,), jnp.int32), jnp.zeros((m,), bool),
            jnp.int32(0))
    counts, done, _, _ = jax.lax.while_loop(round_cond, round_body, init)
    return VoteResult(counts, done)

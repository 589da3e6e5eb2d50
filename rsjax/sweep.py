"""The paper's study as one resumable sweep: certified vs practical robustness of randomized
smoothing (Maho, Furon, Le Merrer, ICASSP 2022) over a grid of (model, sigma, n, P_a, attack).

Pipeline (``run_sweep``), every stage appending JSON lines to the output directory as it goes:

1. **models**: each :class:`ModelEntry` is a given checkpoint or is trained with
   :func:`rsjax.train.train` (recipes ``standard``, ``gaussian`` = RandTrain, ``pgd`` = AdvTrain)
   and cached in ``$RSJAX_CACHE`` (default ``~/.cache/rsjax``) under
   ``checkpoints/<arch>-<recipe>-<hash>.ckpt``, the hash being that of the resolved training
   configuration and training data spec: an identical request reuses the file.
2. **accuracy** (``accuracy.jsonl``): clean accuracy of each base classifier f and, per sigma
   and n in ``eval_ns``, the accuracy of the practical smoothed classifier g_{sigma,n}
   (plurality vote of n micro-decisions f(x + sigma N_j), lowest-index ties) and of Cohen's
   PREDICT at ``predict_alpha`` (abstentions count as errors), on ``eval_images`` test images.
3. **certification** (``certify.jsonl``): Cohen's CERTIFY(x, n0, n, alpha) at every (model, sigma)
   for the first ``certify_images`` images of the seeded permutation of the test set (and at
   least all attacked images): prediction and radius R = sigma Phi^{-1}(p_A_lower) per image.
   Certified accuracy at r = fraction of these images correctly classified with R >= r.
4. **reference** (``reference.jsonl``): the reference label of eq. (4), g_sigma(x_o), by Cohen's
   PREDICT with ``reference_n`` samples at ``reference_alpha`` for every attacked image and
   (model, sigma); ``reference='true'`` uses the true label instead (today's y, for comparison).
5. **attacks** (``records.jsonl``): the attacked images are the first ``n_images`` images of the
   seeded permutation that *every* model's base classifier f classifies correctly (so models
   are compared on the same images). Attack runs (:func:`enumerate_runs`): per model the no-RS
   baseline (oracle f) and per sigma and n the smoothed oracle with criterion

   * ``label`` (default; the deployed classifier): one query = one call of g_{sigma,n}, adversarial
     iff its plurality vote differs from the reference label; one run per (sigma, n, attack),
     verified at every P_a of ``pas``;
   * ``level`` (the authors' simulation shortcut, at ``level_ns`` for comparison, or everywhere
     with ``criterion='level'``): adversarial when at least k = ceil(n * P_a) of the n
     micro-decisions differ from the reference; one run per k, verified at its P_a.

   Each batch is measured by :func:`measure_batch` (the evaluator of :mod:`rsjax.verify`, whose
   calls are never charged to the attack): images with no smoothed reference are recorded
   apart (``smoothed_abstain`` / ``smoothed_wrong``); a clean image whose measured level reaches
   P_a is ``misclassified`` at distortion 0; the others are attacked and each output is
   verified at each P_a (ray search to the first point of level >= P_a). One record per image x
   setting (setting = run x P_a) holds the attacker's raw outcome (``l2``, ``linf``, queries,
   base-model evaluations, trace), the verified one (``verified_l2``, ``verified_linf``,
   ``verified_level`` with its Clopper-Pearson interval, ``verification_calls``), the reference
   (``reference``, ``reference_kind``) and the image's certified radius at the same sigma.

Randomness: one ``seed``. Stream s of image i uses ``fold_in(fold_in(key(seed), s), image_id)``
(s = 1 accuracy, 2 certification, 3 attacks, 5 reference label, 6 the evaluator's calls), so
every number depends on (seed, image, setting) only, never on batch composition, resumption or
device count.

Oracle with traced parameters: the attacks' jitted programs take (model variables, sigma, n, k)
as *arguments* (:class:`ParamOracle`), so one compiled program per (attack, architecture,
criterion, batch size) serves every model, sigma, n and P_a of the sweep; batch sizes are
restricted to a few buckets (powers of 4 below the batch size) by padding with finished rows.
Votes (:func:`scheduled_vote_counts`) use the noise of :func:`rsjax.smoothing.vote_counts` and
an exact early stop (the decision "adversarial or not" is the one the full n-sample vote would
give, with the same noise), checked after rounds that bring each undecided point to 4, 8, 16, ...
samples: ``evaluations`` counts the base-model evaluations actually spent, and depends on the
point's own votes only; ``queries * n`` is the nominal cost. Every model call of an oracle query
has a static shape that depends on the query's points per image and ``vote_chunk`` only
(:func:`model_block`), never on how many images share a device.

Scale-out (one host): the image batch of each attack is split over all visible devices of a 1-D
mesh ``Mesh(jax.devices(), ('batch',))``: each device runs the same single-device program on its
contiguous block of rows (parameters copied once per device), dispatched asynchronously
(:class:`AttackPrograms`; not ``jax.shard_map``, whose SPMD-compiled program rounds differently
from the single-device one). Every device holds at least 2 rows, and a 1-row batch runs on one
device (XLA CPU compiles 1-row arrays differently). Every per-image output (points, distortions,
queries, evaluations, statuses, traces) is bit-identical with 1 and 2 devices (tested with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``).

Multi-host (documented, not tested here): start one process per host with
``jax.distributed.initialize(coordinator_address, num_processes, process_id)`` before anything
else; each process then attacks the images ``ids[process_index::process_count]`` of every
setting on a mesh of its ``jax.local_devices()`` and writes its own
``records.p<process_index>.jsonl`` and ``certify.p<process_index>.jsonl`` (every process
certifies the whole certification set: same keys, same numbers; the ``accuracy`` stage runs on
process 0 only); :mod:`rsjax.report` reads every ``records*.jsonl`` / ``certify*.jsonl`` file of
the directory and de-duplicates by key. Keys never collide
because images are disjoint, and the per-image randomness does not depend on the split.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.cache import cache_dir, enable_compilation_cache  # noqa: F401  (re-exported)
from rsjax.errors import InputError
from rsjax.xla_options import jit

STREAM_ACCURACY, STREAM_CERTIFY, STREAM_ATTACK, STREAM_REFERENCE, STREAM_VERIFY = 1, 2, 3, 5, 6
CRITERIA = ("level", "label")
REFERENCES = ("smoothed", "true")
STATUS_SMOOTHED_ABSTAIN, STATUS_SMOOTHED_WRONG, STATUS_UNVERIFIED = "smoothed_abstain", "smoothed_wrong", "unverified"
CRITERION_NOTES = {
    "none": "no randomized smoothing: the oracle is the base classifier f (adversarial iff f(x) != y)",
    "level": "the authors' shortcut: a query counts as adversarial when at least k = ceil(n * P_a) "
             "of its n micro-decisions f(x + sigma N_j) differ from the true label",
    "label": "the voted label of g_{sigma,n} (plurality, lowest-index ties) differs from the reference label "
             "(one call, one answer: the deployed classifier)",
}


# =============================================================================================
# Oracle with traced parameters
# =============================================================================================
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

    ``kind``: 'none' (base classifier f: adversarial iff argmax f(x) != y, 1 evaluation),
    'level' (adversarial iff #{j < n : f(x + sigma N_j) != y} >= k) or 'label' (adversarial iff
    the plurality of the n micro-decisions, lowest-index ties, is not y). Sample j of the query
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
        if kind not in ("none",) + CRITERIA:
            raise InputError(f"oracle kind must be one of none, {', '.join(CRITERIA)}; got {kind!r}")
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
        from rsjax.smoothing import label_vs_reference_decided, wrong_count_decided

        per_image = self._points_per_image(x.shape[0])
        if self.kind == "none":
            block = model_block(per_image, self.chunk_size, floor=1)
            block = self._eval_rows(block) or block
            adv = jnp.argmax(blocked_apply(self._logits, x, block), axis=-1) != y
            return OracleAnswer(adv, jnp.ones(adv.shape, jnp.int32))
        p = self.params
        if self.kind == "level":
            stop = lambda c, r: wrong_count_decided(c, r, y, p.k)  # noqa: E731
        else:
            stop = lambda c, r: label_vs_reference_decided(c, r, y)  # noqa: E731
        n = p.n if active is None else jnp.where(active, p.n, 0)
        chunk = model_block(per_image, self.chunk_size)
        res = scheduled_vote_counts(self._logits, x, keys, p.sigma, n, self.num_classes,
                                    chunk_size=chunk, noise=self.noise, stop=stop,
                                    eval_rows=self._eval_rows(chunk))
        ny = jnp.take_along_axis(res.counts, y[:, None], axis=-1)[:, 0]
        if self.kind == "level":
            adv = (jnp.sum(res.counts, axis=-1) - ny) >= p.k
        else:
            adv = jnp.argmax(res.counts, axis=-1) != y
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


class _Handle:
    """What :meth:`DecisionAttack.run` receives as 'oracle' when programs are injected: it only
    reads ``num_classes``; the programs close over nothing setting-specific."""

    def __init__(self, num_classes: int, params: OracleParams, kind: str):
        self.num_classes = num_classes
        self.params = params
        self.kind = kind
        self.name = f"param-{kind}"


def _allowed_sizes(full: int, ndev: int) -> list[int]:
    """Batch sizes compiled for a batch of ``full`` rows: the single-device buckets full, full/4,
    full/16, ..., 1; with ``ndev`` > 1 devices each bucket s >= 2 becomes ndev * max(2,
    ceil(s / ndev)) (every device holds at least 2 rows) and the 1-row bucket runs on one device,
    unsharded. Padding rows are finished rows (they cost oracle slots but no query).

    Why: XLA CPU generates different code for a 1-row array than for any B >= 2 (FMA contraction
    in the fused loops: measured, ``x + r * u`` differs in the last bit for B = 1 only), while the
    attacks' arithmetic is otherwise the same per row for every B >= 2 (tree sums instead of
    ``jnp.sum``, SurFree's two-row trick). A row therefore sees a 1-row program on 2 devices
    exactly when it does on 1 device: when it is the last live image of its batch."""
    sizes, s = set(), full
    while True:
        if s <= 1 or ndev == 1:
            sizes.add(int(s))
        else:
            sizes.add(ndev * max(2, int(math.ceil(s / ndev))))
        if s <= 1:
            break
        s = max(1, s // 4)
    return sorted(sizes)


def _pad_rows(tree, size: int):
    """Pad every leaf's leading axis to ``size`` by repeating row 0."""
    def pad(a):
        b = a.shape[0]
        if b == size:
            return a
        return jnp.concatenate([a, jnp.repeat(a[:1], size - b, axis=0)], axis=0)
    return jax.tree.map(pad, tree)


class AttackPrograms:
    """Compiled start/chunk programs of one attack for one (architecture, criterion), shared by
    every setting (parameters are arguments), data-parallel over the devices of ``mesh`` (a 1-D
    mesh, axis 'batch'; None: one device).

    Every device runs the *same* single-device program on its contiguous block of rows: the
    padded batch is split into ``ndev`` equal blocks, each block is put on its device and the
    jitted program is dispatched there (asynchronously, so the devices work in parallel), and the
    outputs are gathered on the first device. This replaces ``jax.shard_map``: the SPMD-partitioned
    program that shard_map compiles is not the single-device program (measured: XLA fuses it
    differently, and an HSJA step then differed in the last bit of 2 pixels), whereas one program
    compiled for the same shapes gives every row the same arithmetic on every device. With
    :func:`_allowed_sizes` (every device holds >= 2 rows, a 1-row batch runs on one device) and
    the shape-invariant oracle (:class:`ParamOracle`), the results are bit-identical on 1 and
    on several devices."""

    def __init__(self, attack, apply_fn: Callable, num_classes: int, kind: str, mesh=None,
                 chunk_size: int = 2048, noise: str = "hash", eval_rows: int | None = None,
                 check_clean: bool = True):
        self.attack = attack
        self.attack_num_classes = num_classes
        self.check_clean = check_clean
        self.kind = kind
        self.mesh = mesh
        self.devices = [None] if mesh is None else list(mesh.devices.flat)
        self.ndev = len(self.devices)
        self.full = None

        def oracle_of(params, env):
            return ParamOracle(apply_fn, params, num_classes, kind, chunk_size=chunk_size, noise=noise,
                               rows=env.x.shape[0], eval_rows=eval_rows)

        def start(params, env):
            return attack.start_batch(oracle_of(params, env), env, check_clean)

        def chunk(params, env, core, extra):
            return attack.advance(oracle_of(params, env), env, core, extra)

        self._start = jit(start)
        self._chunk = jit(chunk)

    def _size_for(self, b: int) -> int:
        if self.full is None or b > self.full:
            self.full = b
        for s in _allowed_sizes(self.full, self.ndev):
            if s >= b:
                return s
        return b  # pragma: no cover

    def functions(self, handle: _Handle):
        """(start, chunk) with the signatures :meth:`DecisionAttack.run` expects."""
        params = handle.params
        placed: dict[int, Any] = {}  # device index -> params on that device (moved once)

        def call(program, size: int, args, batch_axis_of_outputs):
            if self.ndev == 1:
                return program(params, *args)
            parts = self.ndev if size > 1 else 1
            per = size // parts
            outs = []
            for d in range(parts):
                dev = self.devices[d]
                if d not in placed:
                    placed[d] = jax.device_put(params, dev)
                block = jax.tree.map(lambda a: a[d * per:(d + 1) * per] if a.ndim else a, args)
                outs.append(program(placed[d], *jax.device_put(block, dev)))
            if parts == 1:
                return outs[0]
            dev0 = self.devices[0]
            outs = jax.device_put(outs, dev0)
            return tuple(jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=ax), *[o[i] for o in outs])
                         for i, ax in enumerate(batch_axis_of_outputs))

        def start(env):
            b = env.x.shape[0]
            size = self._size_for(b)
            if size != b:
                env = _pad_env(env, size)
            core, extra = call(self._start, size, (env,), (0, 0))
            return jax.tree.map(lambda a: a[:b], (core, extra))

        def chunk(env, core, extra):
            b = env.x.shape[0]
            size = self._size_for(b)
            if size != b:
                env = _pad_env(env, size)
                core = _pad_rows(core, size)
                core = core._replace(done=core.done.at[b:].set(True))
                extra = _pad_rows(extra, size)
            core, extra, trace = call(self._chunk, size, (env, core, extra), (0, 0, 1))
            core, extra = jax.tree.map(lambda a: a[:b], (core, extra))
            return core, extra, jax.tree.map(lambda a: a[:, :b], trace)

        return start, chunk


def _pad_env(env, size: int):
    b = env.x.shape[0]
    x, y, keys, valid = _pad_rows((env.x, env.y, env.image_keys, env.valid), size)
    return env._replace(x=x, y=y, image_keys=keys, valid=valid.at[b:].set(False))


def run_attack(programs: AttackPrograms, params: OracleParams, num_classes: int, x, y, ids, key,
               max_queries: int, batch_size: int):
    """Run ``programs.attack`` with the injected programs (``DecisionAttack.run`` does the host
    loop, budgets and bookkeeping); returns its :class:`AttackResult`."""
    attack = programs.attack
    handle = _Handle(num_classes, params, programs.kind)
    return attack.run(handle, x, y, key, max_queries, image_ids=ids, batch_size=batch_size,
                      programs=programs.functions)


def make_mesh(devices: Sequence | None = None):
    """1-D mesh with axis 'batch' over ``devices`` (default: all local devices)."""
    from jax.sharding import Mesh

    devs = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devs), ("batch",))


# =============================================================================================
# Configuration
# =============================================================================================
@dataclass(frozen=True)
class ModelEntry:
    """One model of the sweep: trained with ``recipe`` (and ``train`` overrides of
    :class:`rsjax.train.TrainConfig`) and cached, or loaded from ``checkpoint`` (its SHA-256 is
    part of the configuration, so a changed file is a changed configuration). ``sigmas``: the
    sigma grid of this model (None: the sweep's ``sigmas``)."""

    name: str
    recipe: str | None = "standard"
    train: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    sigmas: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines the sweep's numbers (written to ``config.json``; a different
    configuration in an existing output directory is refused). See the presets' docstrings for
    how the default grid was sized."""

    preset: str = "default"
    data: str = "fashion-mnist:test"
    train_data: str = "fashion-mnist:train"
    train_limit: int | None = None
    arch: str = "fmnist_mlp"
    models: tuple[ModelEntry, ...] = ()
    sigmas: tuple[float, ...] = (0.55, 0.8)
    ns: tuple[int, ...] = (1, 5, 10)
    pas: tuple[float, ...] = (0.5, 0.8)
    criterion: str = "label"
    level_ns: tuple[int, ...] = ()
    reference: str = "smoothed"
    reference_n: int = 1000
    reference_alpha: float = 0.001
    attacks: tuple[str, ...] = ("hsja", "surfree", "rays")
    attack_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    max_queries: int = 1000
    n_images: int = 50
    attack_batch: int = 64
    baseline: bool = True
    eval_images: int = 10_000
    eval_ns: tuple[int, ...] = (1, 10, 100)
    predict_alpha: float = 0.001
    certify_images: int = 500
    certify_n0: int = 100
    certify_n: int = 10_000
    certify_alpha: float = 0.001
    verify_calls: int = 100
    verify_confidence: float = 0.95
    verify_power: float = 0.95
    verify_rel_tol: float = 0.01
    interval_confidence: float = 0.95
    noise: str = "hash"
    vote_chunk: int = 2048
    seed: int = 0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def model_sigmas(self, entry: ModelEntry) -> tuple[float, ...]:
        return tuple(entry.sigmas) if entry.sigmas is not None else tuple(self.sigmas)

    def validate(self) -> "SweepConfig":
        from rsjax.attacks import ATTACKS
        from rsjax.errors import check_int_at_least, check_open_unit, check_positive

        if not self.models:
            raise InputError("the sweep needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise InputError(f"model names must be distinct, got {names}")
        for m in self.models:
            if m.checkpoint is None and m.recipe is None:
                raise InputError(f"model {m.name!r} needs a recipe or a checkpoint")
            for s in self.model_sigmas(m):
                check_positive(f"sigma of model {m.name!r}", s)
        for n in self.ns + self.eval_ns + self.level_ns:
            check_int_at_least("n", n, 1)
        if self.reference not in REFERENCES:
            raise InputError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        self.verify_config()
        for p in self.pas:
            check_open_unit("P_a", p)
        if self.criterion not in CRITERIA:
            raise InputError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        for a in self.attacks:
            if a not in ATTACKS:
                raise InputError(f"unknown attack {a!r}; known: {', '.join(ATTACKS)}")
        for name, v in (("max_queries", self.max_queries), ("n_images", self.n_images),
                        ("attack_batch", self.attack_batch), ("eval_images", self.eval_images),
                        ("certify_images", self.certify_images), ("certify_n0", self.certify_n0),
                        ("certify_n", self.certify_n), ("reference_n", self.reference_n)):
            check_int_at_least(name, v, 1)
        for name, v in (("predict_alpha", self.predict_alpha), ("certify_alpha", self.certify_alpha),
                        ("reference_alpha", self.reference_alpha),
                        ("interval_confidence", self.interval_confidence)):
            check_open_unit(name, v)
        return self

    def verify_config(self):
        """The evaluator's settings (:class:`rsjax.verify.VerifyConfig`)."""
        from rsjax.verify import VerifyConfig

        return VerifyConfig(calls=self.verify_calls, confidence=self.verify_confidence, power=self.verify_power,
                            rel_tol=self.verify_rel_tol).validate()


def fmnist_models(sigma_train: float, eps: float, epochs: int | None = None, pgd_epochs: int | None = None,
                  pgd_steps: int = 7, sigmas: Mapping[str, Sequence[float]] | None = None) -> tuple[ModelEntry, ...]:
    """The paper's three models on Fashion-MNIST: Standard, RandTrain (Gaussian noise
    sigma_train) and AdvTrain (L2 PGD of radius eps)."""
    sig = dict(sigmas or {})
    base = {} if epochs is None else {"epochs": epochs}
    adv = dict(base, eps=eps, pgd_steps=pgd_steps)
    if pgd_epochs is not None:
        adv["epochs"] = pgd_epochs
    return (
        ModelEntry("standard", "standard", dict(base), sigmas=_tup(sig.get("standard"))),
        ModelEntry("randtrain", "gaussian", dict(base, sigma=sigma_train), sigmas=_tup(sig.get("randtrain"))),
        ModelEntry("advtrain", "pgd", adv, sigmas=_tup(sig.get("advtrain"))),
    )


def _tup(v):
    return None if v is None else tuple(float(s) for s in v)


def preset(name: str) -> SweepConfig:
    """``default`` (<= 15 min on a 2-core CPU), ``smoke`` (about a minute, for tests) or
    ``full`` (the paper-sized grid: 200 images, 2,000 queries)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()


def _default() -> SweepConfig:
    """The embedded default (<= 15 min on a quiet 2-core CPU, checkpoints trained on the first run).

    How it was sized (measured on the shared 2-core machine, see the report):

    * sigma grid: accuracy of g_sigma (n = 100, 2,000 test images) of the standard MLP
      (clean 90.95 %) is 88.9 / 86.7 / 82.9 / 78.4 % at sigma = 0.5 / 0.6 / 0.7 / 0.8, so
      sigma = 0.55 gives the paper's small (~3 %) and sigma = 0.8 its large (~12 %) drop. (The
      MLP hardly notices small noise: at sigma = 0.25 the drop is 0.3 %.)
    * models: Standard at both sigmas; RandTrain trained at sigma = 0.8 and smoothed at 0.8 (as
      Cohen's noise-trained model is used at its training sigma); AdvTrain (L2 PGD, eps = 1,
      3 steps, 5 epochs to keep its training under a minute) at sigma = 0.55.
    * attack cost: ~0.1-0.3 ms per image-query of attack overhead plus ~15 us per base-model
      evaluation (MLP + hash noise, chunked votes). 50 images x 500 queries x n summed over
      n in (1, 5, 10) with both P_a = ~9 M evaluations per attack over the 4 (model, sigma)
      pairs; n = 100 (the paper's upper end) would alone cost ~10x the whole budget, so it is
      in the ``full`` preset only. Certification: n = 2,000 (max radius 2.6 sigma at
      alpha = 0.001) on 300 images; accuracies on 2,000 images with n in (1, 5, 10, 100).
    """
    return SweepConfig(
        preset="default",
        models=fmnist_models(sigma_train=0.8, eps=1.0, pgd_epochs=5, pgd_steps=3,
                             sigmas={"standard": (0.55, 0.8), "randtrain": (0.8,), "advtrain": (0.55,)}),
        sigmas=(0.55, 0.8),
        ns=(1, 5, 10),
        pas=(0.5, 0.8),
        criterion="label",
        level_ns=(10,),
        max_queries=500,
        n_images=50,
        eval_images=2000,
        eval_ns=(1, 5, 10, 100),
        certify_images=300,
        certify_n=10_000,
        verify_calls=100,
    )


def _smoke() -> SweepConfig:
    """Tiny grid for tests: two models trained for one epoch on 2,000 images, one sigma,
    n in {1, 5}, 4 images, 60 queries."""
    return SweepConfig(
        preset="smoke",
        train_limit=2000,
        models=(ModelEntry("standard", "standard", {"epochs": 1}),
                ModelEntry("randtrain", "gaussian", {"epochs": 1, "sigma": 0.25})),
        sigmas=(0.25,),
        ns=(1, 5),
        pas=(0.5, 0.8),
        criterion="label",
        level_ns=(5,),
        reference_n=100,
        attacks=("hsja", "surfree", "rays"),
        attack_options={"hsja": {"init_num_evals": 10, "probe_batch": 10}},
        max_queries=60,
        n_images=4,
        attack_batch=4,
        eval_images=200,
        eval_ns=(1, 5),
        certify_images=8,
        certify_n0=10,
        certify_n=100,
        verify_calls=20,
    )


def _full() -> SweepConfig:
    """The paper-sized grid: 200 images, 2,000 queries, n in {1, 10, 30, 100}, P_a in {0.5, 0.8},
    every model at both sigmas, CERTIFY with n = 100,000 (Cohen's reference) on 500 images.
    Hours on a CPU; meant for a GPU."""
    return SweepConfig(
        preset="full",
        models=fmnist_models(sigma_train=0.8, eps=1.0),
        sigmas=(0.55, 0.8),
        ns=(1, 10, 30, 100),
        pas=(0.5, 0.8),
        criterion="label",
        level_ns=(10,),
        max_queries=2000,
        n_images=200,
        attack_batch=128,
        eval_images=10_000,
        eval_ns=(1, 10, 30, 100, 1000),
        certify_images=500,
        certify_n=100_000,
        verify_calls=200,
    )


PRESETS: dict[str, Callable[[], SweepConfig]] = {"default": _default, "smoke": _smoke, "full": _full}


def with_checkpoints(config: SweepConfig, checkpoints: Mapping[str, str], sigmas: Sequence[float] | None = None) -> SweepConfig:
    """Replace the models by the given ``name -> checkpoint path`` (e.g. the converted CIFAR
    ResNet-20); the architecture is read from each checkpoint."""
    from rsjax.checkpoints import read_checkpoint_header

    models = []
    for name, path in checkpoints.items():
        header = read_checkpoint_header(path)
        models.append(ModelEntry(name, None, {}, str(Path(path).resolve()), header["sha256"],
                                 None if sigmas is None else tuple(sigmas)))
    arch = read_checkpoint_header(next(iter(checkpoints.values())))["arch"] if checkpoints else config.arch
    return dataclasses.replace(config, models=tuple(models), arch=arch)


def config_from_dict(d: Mapping[str, Any]) -> SweepConfig:
    """Inverse of :meth:`SweepConfig.to_dict` (for re-running or resuming from ``config.json``)."""
    d = dict(d)
    d["models"] = tuple(ModelEntry(**{**m, "sigmas": _tup(m.get("sigmas"))}) for m in d["models"])
    for k in ("sigmas", "ns", "pas", "attacks", "eval_ns", "level_ns"):
        d[k] = tuple(d[k])
    return SweepConfig(**d)


# =============================================================================================
# Models: train or reuse cached checkpoints
# =============================================================================================
def resolved_train_config(entry: ModelEntry, config: SweepConfig):
    from rsjax.train import TrainConfig, resolve_config

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(entry.train) - fields)
    if unknown:
        raise InputError(f"model {entry.name!r}: unknown training option(s) {unknown}")
    seed = entry.train.get("seed", config.seed)
    return resolve_config(TrainConfig(arch=config.arch, recipe=entry.recipe, **{**entry.train, "seed": seed}))


def cached_checkpoint_path(entry: ModelEntry, config: SweepConfig, root: Path | None = None) -> Path:
    """Cache file of a trained model: keyed by the resolved training configuration, the
    training data spec and limit."""
    from rsjax.results import config_hash

    tc = resolved_train_config(entry, config)
    key = config_hash({"train": dataclasses.asdict(tc), "data": config.train_data, "limit": config.train_limit})
    return (root or cache_dir()) / "checkpoints" / f"{tc.arch}-{tc.recipe}-{key}.ckpt"


def prepare_models(config: SweepConfig, log: Callable[[str], None], root: Path | None = None,
                   eval_data=None) -> tuple[dict, dict]:
    """Load or train every model. Returns (name -> Classifier, name -> info dict)."""
    from rsjax.classifier import Classifier
    from rsjax.checkpoints import read_checkpoint_header

    classifiers, info = {}, {}
    train_data = None
    for entry in config.models:
        if entry.checkpoint is not None:
            header = read_checkpoint_header(entry.checkpoint)
            if entry.checkpoint_sha256 and header["sha256"] != entry.checkpoint_sha256:
                raise InputError(f"checkpoint {entry.checkpoint} changed since this sweep's config was written")
            path, trained, seconds = Path(entry.checkpoint), False, 0.0
        else:
            path = cached_checkpoint_path(entry, config, root)
            trained, seconds = False, 0.0
            if not path.is_file():
                from rsjax.data import load_dataset
                from rsjax.train import train

                if train_data is None:
                    train_data = load_dataset(config.train_data, limit=config.train_limit)
                tc = resolved_train_config(entry, config)
                log(f"training {entry.name} ({tc.arch}, recipe {tc.recipe}, {tc.epochs} epochs) -> {path}")
                t0 = time.perf_counter()
                train(tc, train_data, eval_data, out=path, progress=False, log=log)
                seconds = time.perf_counter() - t0
                trained = True
            else:
                log(f"reusing cached checkpoint of {entry.name}: {path}")
        clf = Classifier.from_checkpoint(str(path))
        if tuple(clf.input_shape) != tuple(config_input_shape(config, clf)):
            raise InputError(f"model {entry.name!r} expects {clf.input_shape}")
        classifiers[entry.name] = clf
        meta = dict(clf.metadata or {})
        meta.pop("history", None)
        info[entry.name] = {"checkpoint": str(path), "trained_now": trained, "train_seconds": seconds,
                            "sha256": read_checkpoint_header(path)["sha256"], "metadata": meta}
    return classifiers, info


def config_input_shape(config: SweepConfig, clf) -> tuple:
    return clf.input_shape


# =============================================================================================
# Settings and keys
# =============================================================================================
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
        """Wrong micro-decisions that make a query adversarial ('level'): ceil(n * P_a), 1 for n = 1."""
        from rsjax.theory import level_wrong_count

        if self.criterion != "level":
            return None
        return 1 if self.n == 1 else level_wrong_count(self.n, self.p_a)

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


# =============================================================================================
# Image selection
# =============================================================================================
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


# =============================================================================================
# Stages
# =============================================================================================
def _apply_fn(clf) -> Callable:
    module = clf.spec.build()
    return lambda variables, x: module.apply(variables, x, train=False)


def accuracy_records(name: str, clf, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                     sigma: float | None, config: SweepConfig, base_pred: np.ndarray | None = None) -> list[dict]:
    """Accuracy of f (sigma None: one record, n None) or of g_{sigma,n} and PREDICT for each n of
    ``eval_ns`` (one record each) on the test images ``ids``."""
    from rsjax.results import record_key
    from rsjax.smoothing import ABSTAIN, votes

    t0 = time.perf_counter()
    if sigma is None:
        pred = clf.predict(images[ids]) if base_pred is None else base_pred[ids]
        return [{"key": record_key(kind="accuracy", model=name, sigma=None, n=None), "kind": "accuracy",
                 "model": name, "sigma": None, "n": None, "num_images": int(len(ids)),
                 "accuracy": float(np.mean(pred == labels[ids])), "seconds": time.perf_counter() - t0}]
    keys = _image_keys(stream_key(config.seed, STREAM_ACCURACY), ids)
    out = []
    for n in config.eval_ns:
        t1 = time.perf_counter()
        counts = []
        for lo in range(0, len(ids), 256):
            res = votes(clf.logits_fn, images[ids[lo:lo + 256]], keys[lo:lo + 256], sigma, n,
                        clf.num_classes, chunk_size=config.vote_chunk, noise=config.noise)
            counts.append(res.counts)
        counts = np.concatenate(counts)
        pred = counts.argmax(-1)
        predict = predict_labels(counts, n, config.predict_alpha)
        y = labels[ids]
        out.append({"key": record_key(kind="accuracy", model=name, sigma=float(sigma), n=int(n)),
                    "kind": "accuracy", "model": name, "sigma": float(sigma), "n": int(n),
                    "num_images": int(len(ids)), "accuracy": float(np.mean(pred == y)),
                    "predict_alpha": config.predict_alpha,
                    "predict_accuracy": float(np.mean(predict == y)),
                    "abstention_rate": float(np.mean(predict == ABSTAIN)),
                    "seconds": time.perf_counter() - t1})
    return out


def predict_labels(counts: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Cohen's PREDICT from full counts, vectorized: top class unless n_A < t[n_A + n_B]
    (:func:`rsjax.smoothing.predict_min_top_count`), then -1."""
    from rsjax.smoothing import ABSTAIN, predict_min_top_count

    table = predict_min_top_count(int(n), alpha)
    order = np.argsort(-counts, axis=-1, kind="stable")
    n_a = np.take_along_axis(counts, order[:, :1], -1)[:, 0]
    n_b = np.take_along_axis(counts, order[:, 1:2], -1)[:, 0]
    return np.where(n_a >= table[n_a + n_b], order[:, 0], ABSTAIN)


def _image_keys(root: jax.Array, ids) -> jax.Array:
    from rsjax.oracle import image_keys

    return image_keys(root, jnp.asarray(np.asarray(ids, np.int64)))


def certify_records(name: str, clf, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                    sigma: float, config: SweepConfig) -> list[dict]:
    """Cohen's CERTIFY at ``sigma`` for the images ``ids`` (one record per image)."""
    from rsjax.results import record_key
    from rsjax.smoothing import certify

    t0 = time.perf_counter()
    keys = _image_keys(stream_key(config.seed, STREAM_CERTIFY), ids)
    res = certify(clf.logits_fn, images[ids], keys, sigma, config.certify_n0, config.certify_n,
                  config.certify_alpha, clf.num_classes, chunk_size=config.vote_chunk, noise=config.noise)
    dt = (time.perf_counter() - t0) / max(len(ids), 1)
    return [{"key": record_key(kind="certify", model=name, sigma=float(sigma), image=int(i)),
             "kind": "certify", "model": name, "sigma": float(sigma), "image": int(i), "label": int(labels[i]),
             "prediction": int(p), "radius": float(r), "correct": bool(p == labels[i]),
             "n0": config.certify_n0, "n": config.certify_n, "alpha": config.certify_alpha, "seconds": dt}
            for i, p, r in zip(ids, res.predictions, res.radii)]


def reference_records(name: str, clf, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, sigma: float,
                      config: SweepConfig) -> list[dict]:
    """The reference label of eq. (4), g_sigma(x_o), estimated by Cohen's PREDICT with
    ``reference_n`` samples at ``reference_alpha`` for the images ``ids`` (one record each):
    status 'ok' (= the true label), 'smoothed_abstain' or 'smoothed_wrong'."""
    from rsjax.results import record_key
    from rsjax.smoothing import ABSTAIN, votes

    t0 = time.perf_counter()
    keys = _image_keys(stream_key(config.seed, STREAM_REFERENCE), ids)
    counts = []
    for lo in range(0, len(ids), 256):
        res = votes(clf.logits_fn, images[ids[lo:lo + 256]], keys[lo:lo + 256], sigma, config.reference_n,
                    clf.num_classes, chunk_size=config.vote_chunk, noise=config.noise)
        counts.append(np.asarray(res.counts))
    counts = np.concatenate(counts)
    pred = predict_labels(counts, config.reference_n, config.reference_alpha)
    dt = (time.perf_counter() - t0) / max(len(ids), 1)
    out = []
    for i, p, c in zip(ids, pred, counts):
        status = "ok" if p == labels[i] else (STATUS_SMOOTHED_ABSTAIN if p == ABSTAIN else STATUS_SMOOTHED_WRONG)
        out.append({"key": record_key(kind="reference", model=name, sigma=float(sigma), image=int(i)),
                    "kind": "reference", "model": name, "sigma": float(sigma), "image": int(i),
                    "label": int(labels[i]), "prediction": int(p), "status": status,
                    "top_count": int(c.max()), "n": config.reference_n, "alpha": config.reference_alpha,
                    "seconds": dt})
    return out


class VerifyPrograms:
    """The evaluator's ``decide`` for one (architecture, oracle kind), compiled once: one call of
    g_{sigma,n} ('label': plurality != reference) or of f ('none') per point, with the sweep's
    traced parameters (:class:`ParamOracle`), in blocks of a fixed number of points."""

    def __init__(self, apply_fn: Callable, num_classes: int, kind: str, chunk_size: int, noise: str,
                 eval_rows: int | None):
        def decide(params, x, y, keys, active):
            oracle = ParamOracle(apply_fn, params, num_classes, kind, chunk_size=chunk_size, noise=noise,
                                 eval_rows=eval_rows)
            return oracle.decide(x, y, keys, active).adversarial

        self.kind = kind
        self._fn = jit(decide)

    def decider(self, params: OracleParams):
        """``decide(points, refs, keys, active)`` of :data:`rsjax.verify.DecideFn` for ``params``."""
        def decide(pts, refs, keys, active):
            return np.asarray(self._fn(params, jnp.asarray(pts), jnp.asarray(refs, jnp.int32), keys,
                                       jnp.asarray(active)))
        return decide


L2_AT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass
class BatchOutcome:
    """Everything measured for one batch of images of one :class:`AttackRun` (host arrays over
    the batch's images ``ids``; ``clean[pa]`` and ``ver[pa]`` per verification level)."""

    ids: np.ndarray
    reference: np.ndarray  # [B] the label the criterion compared against
    reference_status: np.ndarray  # [B] 'ok', 'smoothed_abstain', 'smoothed_wrong'
    attacked: np.ndarray  # [B] bool: the attack ran on the image
    result: Any  # AttackResult over the attacked images (None if none)
    clean: dict  # pa -> dict of [B] arrays (level test at x_o), RS only
    ver: dict  # pa -> Verification over [B] (rows of unattacked images meaningless)
    seconds: float
    attack_seconds: float = 0.0  # wall time of the attack itself, per image of the batch
    verify_seconds: float = 0.0  # wall time of the evaluator (clean tests + ray searches), per image


def _record_base(setting: Setting, i: int, label: int, config: SweepConfig, seconds: float) -> dict:
    return {"key": attack_record_key(setting, i), "kind": "attack", **setting.fields(),
            "k_wrong": setting.k_wrong, "criterion_note": CRITERION_NOTES[setting.criterion],
            "reference_kind": config.reference if setting.criterion != "none" else "true",
            "image": int(i), "label": int(label), "max_queries": int(config.max_queries), "seconds": seconds}


TIMING_FIELDS = ("seconds", "attack_seconds", "verify_seconds")


def attack_records(run: AttackRun, out: BatchOutcome, labels: np.ndarray, certified: Mapping[int, dict] | None,
                   config: SweepConfig) -> list[dict]:
    """One record per image x setting of ``run`` (see the module docstring): the attacker's raw
    outcome (``status`` of the attack, ``l2``, ``linf``, queries, evaluations, trace) and the
    evaluator's verification at the setting's P_a (``verified_*``, ``verification_calls``).

    Final ``status``: 'smoothed_abstain' / 'smoothed_wrong' (not attacked: no reference label,
    or g_sigma already wrong), 'misclassified' (the clean image's measured level reaches P_a:
    verified distortion 0), 'attacked' (verified), 'unverified' (no point of the ray reached
    P_a), 'no_start' (the attack found no starting point). ``success`` = a verified adversarial
    (distortion 0 included) is known."""
    res = out.result
    checkpoints = sorted({max(1, int(round(f * config.max_queries))) for f in L2_AT_FRACTIONS})
    l2_at = {q: res.distortion_at(q, "l2") for q in checkpoints} if res is not None else {}
    row_of = {int(i): r for r, i in enumerate(res.image_ids)} if res is not None else {}
    recs = []
    for st in run.settings():
        for b, i in enumerate(out.ids):
            i = int(i)
            rec = _record_base(st, i, labels[i], config, out.seconds)
            rec.update(attack_seconds=out.attack_seconds, verify_seconds=out.verify_seconds)
            rec["reference"] = int(out.reference[b])
            cert = (certified or {}).get(i)
            rec.update(radius=None if cert is None else cert["radius"],
                       certify_prediction=None if cert is None else cert["prediction"],
                       certify=None if cert is None else {"n0": cert["n0"], "n": cert["n"], "alpha": cert["alpha"]})
            raw = {"l2": None, "linf": None, "queries": 0, "evaluations": 0, "steps": 0, "l2_at": None,
                   "attack_status": None}
            r = row_of.get(i)
            if r is not None:
                raw = {"l2": float(res.l2[r]), "linf": float(res.linf[r]), "queries": int(res.queries[r]),
                       "evaluations": int(res.evaluations[r]), "steps": int(res.steps[r]),
                       "l2_at": {str(q): float(v[r]) for q, v in l2_at.items()},
                       "attack_status": str(res.status[r])}
            rec.update(raw)
            rec.update(clean_level=None, clean_level_low=None, clean_level_high=None, clean_calls=0)
            if st.p_a in out.clean:
                c = out.clean[st.p_a]
                rec.update(clean_level=float(c["level"][b]), clean_level_low=float(c["level_low"][b]),
                           clean_level_high=float(c["level_high"][b]), clean_calls=int(c["calls"][b]))
            rec.update(_verified_fields(st, out, b, r, rec))
            recs.append(rec)
    return recs


def _verified_fields(st: Setting, out: BatchOutcome, b: int, r: int | None, rec: dict) -> dict:
    """Status, success and the verified_* fields of one record (see :func:`attack_records`)."""
    none = {"verified_l2": None, "verified_linf": None, "verified_level": None, "verified_level_low": None,
            "verified_level_high": None, "verified_t": None, "verify_tests": 0, "accept_level": None,
            "raw_level": None, "raw_level_calls": 0}
    calls = int(rec["clean_calls"])
    if out.reference_status[b] != "ok":
        return {**none, "status": str(out.reference_status[b]), "success": False, "verification_calls": calls}
    c = out.clean.get(st.p_a)
    if c is not None and c["accepted"][b]:
        return {**none, "status": "misclassified", "success": True, "verified_l2": 0.0, "verified_linf": 0.0,
                "verified_level": rec["clean_level"], "verified_level_low": rec["clean_level_low"],
                "verified_level_high": rec["clean_level_high"], "verified_t": 0.0, "verification_calls": calls}
    attack_status = rec["attack_status"]
    if r is None or attack_status == "no_start":
        return {**none, "status": "no_start", "success": False, "verification_calls": calls}
    if attack_status == "misclassified":  # deterministic f only (no RS): one call said so
        return {**none, "status": "misclassified", "success": True, "verified_l2": 0.0, "verified_linf": 0.0,
                "verified_level": 1.0, "verified_level_low": 1.0, "verified_level_high": 1.0,
                "verified_t": 0.0, "verification_calls": calls}
    v = out.ver[st.p_a]
    ok = bool(v.verified[b])
    return {"status": "attacked" if ok else STATUS_UNVERIFIED, "success": ok,
            "verified_l2": float(v.l2[b]) if ok else None, "verified_linf": float(v.linf[b]) if ok else None,
            "verified_level": float(v.level[b]), "verified_level_low": float(v.level_low[b]),
            "verified_level_high": float(v.level_high[b]), "verified_t": float(v.t[b]) if ok else None,
            "verify_tests": int(v.tests[b]), "accept_level": float(v.accept_level[b]),
            "raw_level": float(v.raw_level[b]), "raw_level_calls": int(v.raw_level_calls[b]),
            "verification_calls": calls + int(v.calls[b])}


def measure_batch(run: AttackRun, ids: np.ndarray, images: np.ndarray, labels: np.ndarray,
                  references: tuple[np.ndarray, np.ndarray], programs: "AttackPrograms", params: OracleParams,
                  decide: Callable, attack_root: jax.Array, verify_root: jax.Array, vcfg,
                  config: SweepConfig) -> BatchOutcome:
    """Attack and verify one batch of images for one run (the protocol of eq. (4)):

    1. images whose reference status is not 'ok' (PREDICT abstains, or g_sigma is wrong) are
       left out;
    2. under RS the evaluator tests each remaining clean image at every P_a of the run
       (:func:`rsjax.verify.level_at_points`); an image whose clean level reaches every P_a is
       not attacked (it is 'misclassified' at distortion 0 with its measured level);
    3. the attacker attacks the others against the reference label (under RS without the
       single clean query: the evaluator decided that);
    4. the evaluator verifies each output at each P_a (:func:`rsjax.verify.verify_rays`); its
       calls are its own, never charged to the attack's budget."""
    from rsjax.verify import level_at_points, verify_rays

    rs = run.criterion != "none"
    ref, ref_status = references
    ok = np.asarray(ref_status == "ok", bool)
    x = images[ids]
    clean: dict = {}
    todo = ok.copy()
    if rs:
        reached = np.ones(len(ids), bool)
        for pa in run.pas:
            sel = np.flatnonzero(ok)
            res = level_at_points(decide, x[sel], ref[sel], pa, ids[sel], verify_root, vcfg,
                                  interval_confidence=config.interval_confidence)
            full = {k: np.zeros(len(ids), v.dtype) for k, v in res.items()}
            for k, v in res.items():
                full[k][sel] = v
            clean[pa] = full
            reached &= full["accepted"]
        todo &= ~reached
    result = None
    sel = np.flatnonzero(todo)
    t_attack = time.perf_counter()
    if len(sel):
        result = run_attack(programs, params, programs.attack_num_classes, x[sel], ref[sel], ids[sel], attack_root,
                            config.max_queries, config.attack_batch)
    t_attack = time.perf_counter() - t_attack
    ver: dict = {}
    found = np.zeros(len(ids), bool)
    x_adv = x.copy()
    if result is not None:
        found[sel] = result.success
        x_adv[sel] = result.x_adv
    for pa in run.pas:
        need = found & ~(clean[pa]["accepted"] if pa in clean else np.zeros(len(ids), bool))
        idx = np.flatnonzero(need)
        v = verify_rays(decide, x[idx], x_adv[idx], ref[idx], 0.5 if pa is None else pa, ids[idx], verify_root,
                        vcfg, deterministic=not rs, interval_confidence=config.interval_confidence)
        ver[pa] = _scatter_verification(v, idx, len(ids))
    out = BatchOutcome(ids, ref, ref_status, todo, result, clean, ver, 0.0)
    out.attack_seconds = t_attack / len(ids)
    return out


def _scatter_verification(v, idx: np.ndarray, size: int):
    """A :class:`rsjax.verify.Verification` over ``size`` rows with ``v``'s rows at ``idx``
    (other rows: not verified, zero calls)."""
    fields = {}
    for name, a in v._asdict().items():
        fill = np.zeros((size,) + a.shape[1:], a.dtype)
        if name in ("l2", "linf"):
            fill[:] = np.inf
        if name == "t":
            fill[:] = np.nan
        fill[idx] = a
        fields[name] = fill
    return type(v)(**fields)


# =============================================================================================
# The sweep
# =============================================================================================
class _Progress:
    """tqdm bar on stderr over estimated cost units (base-model evaluations plus a per-query
    overhead), so its ETA is meaningful; the postfix counts tasks done / total."""

    def __init__(self, tasks: list[tuple[str, float, bool]], enabled: bool):
        from tqdm.auto import tqdm

        self.total_tasks = len(tasks)
        self.done_tasks = sum(1 for _, _, done in tasks if done)
        total = sum(c for _, c, _ in tasks)
        initial = sum(c for _, c, done in tasks if done)
        self.bar = tqdm(total=total, initial=initial, file=sys.stderr, disable=not enabled, unit="ev",
                        unit_scale=True, smoothing=0.05, mininterval=1.0, desc="sweep",
                        bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
        self._post()

    def _post(self, what: str = ""):
        self.bar.set_postfix_str(f"tasks {self.done_tasks}/{self.total_tasks} {what}")

    def start(self, what: str):
        self._post(what)

    def finish(self, cost: float):
        self.done_tasks += 1
        self.bar.update(cost)
        self._post()

    def close(self):
        self.bar.close()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_sweep(config: SweepConfig, out: str | os.PathLike, *, progress: bool = True,
              cache: str | os.PathLike | None = None, log: Callable[[str], None] = _log,
              write_report: bool = True, max_tasks: int | None = None) -> Path:
    """Run (or resume) the sweep of ``config`` into ``out`` (see module docstring).

    A finished record is never recomputed; a changed configuration in ``out`` raises InputError.
    ``max_tasks`` stops after that many newly computed tasks (for tests and partial runs)."""
    from rsjax.attacks import get_attack
    from rsjax.data import load_dataset
    from rsjax.results import RecordStore, dumps, environment_info, open_run_dir

    config.validate()
    wall0 = time.perf_counter()
    enable_compilation_cache(Path(cache) if cache is not None else None)
    out = open_run_dir(out, config.to_dict())
    env_path = out / "env.json"
    if not env_path.exists():
        env_path.write_text(json.dumps(json.loads(dumps(environment_info(config.seed))), indent=2) + "\n")
    runs = out / "runs.jsonl"
    with open(runs, "a") as f:
        f.write(dumps({"event": "start", "time": time.time(), "devices": [str(d) for d in jax.devices()]}) + "\n")

    data = load_dataset(config.data)
    classifiers, model_info = prepare_models(config, log, None if cache is None else Path(cache), data)
    (out / "models.json").write_text(json.dumps(json.loads(dumps(model_info)), indent=2) + "\n")
    images, labels = data.images, data.labels
    base_pred = {name: clf.predict(images) for name, clf in classifiers.items()}
    correct = {name: p == labels for name, p in base_pred.items()}
    order = permutation(len(labels), config.seed)
    attacked = select_images(correct, order, config.n_images)
    pos_last = int(np.flatnonzero(np.isin(order, attacked)).max())
    certify_ids = order[:max(config.certify_images, pos_last + 1)]
    eval_ids = order[:min(config.eval_images, len(order))]
    (out / "images.json").write_text(json.dumps({
        "attacked": attacked.tolist(), "certified": certify_ids.tolist(),
        "evaluated": {"count": int(len(eval_ids)), "first": eval_ids[:10].tolist()}}) + "\n")
    my_images = process_slice(attacked)
    suffix = "" if jax.process_count() == 1 else f".p{jax.process_index()}"
    lead = jax.process_index() == 0

    acc_store = RecordStore(out / "accuracy.jsonl")
    cert_store = RecordStore(out / f"certify{suffix}.jsonl")
    ref_store = RecordStore(out / f"reference{suffix}.jsonl")
    rec_store = RecordStore(out / f"records{suffix}.jsonl")
    from rsjax.results import record_key

    # ---- the task list (cost estimates drive the progress bar's ETA)
    tasks: list[tuple[str, float, bool, Callable[[], None]]] = []

    def add(label, cost, done, fn):
        tasks.append((label, float(cost), bool(done), fn))

    for m in config.models:
        clf = classifiers[m.name]
        if lead:
            add(f"accuracy {m.name}", len(eval_ids),
                record_key(kind="accuracy", model=m.name, sigma=None, n=None) in acc_store,
                partial(lambda name, c: acc_store.append(accuracy_records(name, c, images, labels, eval_ids, None,
                                                                          config, base_pred[name])), m.name, clf))
            for s in config.model_sigmas(m):
                done = all(record_key(kind="accuracy", model=m.name, sigma=float(s), n=int(n)) in acc_store
                           for n in config.eval_ns)
                add(f"RS accuracy {m.name} s={s:g}", len(eval_ids) * sum(config.eval_ns), done,
                    partial(lambda name, c, s_: acc_store.append(
                        accuracy_records(name, c, images, labels, eval_ids, s_, config)), m.name, clf, float(s)))
        for s in config.model_sigmas(m):
            for chunk in batches(certify_ids, 256):
                done = all(record_key(kind="certify", model=m.name, sigma=float(s), image=int(i)) in cert_store
                           for i in chunk)
                add(f"certify {m.name} s={s:g}", len(chunk) * (config.certify_n0 + config.certify_n),
                    done,
                    partial(lambda name, c, s_, ids_: cert_store.append(
                        certify_records(name, c, images, labels, ids_, s_, config)), m.name, clf, float(s), chunk))

    runs_ = enumerate_runs(config)
    mesh = make_mesh() if jax.local_device_count() > 1 else None
    attacks = {a: get_attack(a, **dict(config.attack_options.get(a, {}))) for a in config.attacks}
    programs: dict[tuple[str, str, str], AttackPrograms] = {}
    verifiers: dict[tuple[str, str], VerifyPrograms] = {}
    attack_root = stream_key(config.seed, STREAM_ATTACK)
    verify_root = stream_key(config.seed, STREAM_VERIFY)
    vcfg = config.verify_config()

    if config.reference == "smoothed":
        for m in config.models:
            for s in config.model_sigmas(m):
                done = all(record_key(kind="reference", model=m.name, sigma=float(s), image=int(i)) in ref_store
                           for i in my_images)
                add(f"reference {m.name} s={s:g}", len(my_images) * config.reference_n, done,
                    partial(lambda name, c, s_: ref_store.append(reference_records(
                        name, c, images, labels, my_images, s_, config)), m.name, classifiers[m.name], float(s)))

    def certified_of(name: str, sigma: float, ids) -> dict[int, dict]:
        want = {record_key(kind="certify", model=name, sigma=float(sigma), image=int(i)) for i in ids}
        return {r["image"]: r for r in cert_store if r["key"] in want}

    def references_of(run: AttackRun, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if run.criterion == "none" or config.reference == "true":
            return labels[ids].astype(np.int64), np.full(len(ids), "ok", dtype=object)
        want = {record_key(kind="reference", model=run.model, sigma=float(run.sigma), image=int(i)): int(i)
                for i in ids}
        got = {want[r["key"]]: r for r in ref_store if r["key"] in want}
        return (np.array([got[int(i)]["prediction"] for i in ids], np.int64),
                np.array([got[int(i)]["status"] for i in ids], dtype=object))

    def run_batch(run: AttackRun, ids: np.ndarray) -> None:
        clf = classifiers[run.model]
        kind = run.criterion
        rs = kind != "none"
        pkey = (run.attack, clf.spec.name, kind)
        if pkey not in programs:
            programs[pkey] = AttackPrograms(attacks[run.attack], _apply_fn(clf), clf.num_classes, kind, mesh,
                                            chunk_size=config.vote_chunk, noise=config.noise,
                                            eval_rows=clf.forward_block, check_clean=not rs)
        vkey = (clf.spec.name, "label" if rs else "none")
        if vkey not in verifiers:
            verifiers[vkey] = VerifyPrograms(_apply_fn(clf), clf.num_classes, vkey[1], config.vote_chunk,
                                             config.noise, clf.forward_block)
        params = OracleParams(clf.variables, jnp.float32(run.sigma or 1.0), jnp.int32(run.n or 1),
                              jnp.int32(run.k_wrong or 1))
        decide = verifiers[vkey].decider(params)
        t0 = time.perf_counter()
        out = measure_batch(run, ids, images, labels, references_of(run, ids), programs[pkey], params, decide,
                            attack_root, verify_root, vcfg, config)
        out.seconds = (time.perf_counter() - t0) / len(ids)
        out.verify_seconds = out.seconds - out.attack_seconds
        cert = certified_of(run.model, run.sigma, ids) if rs else None
        rec_store.append(attack_records(run, out, labels, cert, config))

    # attack tasks run cheapest first (stable order otherwise), so an interrupted sweep already
    # covers every model and sigma at small n; the order changes no number
    attack_tasks = []
    for run in runs_:
        for ids in batches(my_images, config.attack_batch):
            done = all(attack_record_key(st, i) in rec_store for st in run.settings() for i in ids)
            n = run.n or 1
            cost = len(ids) * config.max_queries * (0.5 * n + 20)
            if run.criterion != "none":
                cost += len(ids) * len(run.pas) * config.verify_calls * n * 3
            attack_tasks.append((f"{run.label()} [{len(ids)} images]", cost, done, partial(run_batch, run, ids)))
    for t in sorted(attack_tasks, key=lambda t: t[1]):
        add(*t)

    bar = _Progress([(t[0], t[1], t[2]) for t in tasks], progress)
    new, left = 0, sum(1 for t in tasks if not t[2])
    try:
        for label, cost, done, fn in tasks:
            if done:
                continue
            if max_tasks is not None and new >= max_tasks:
                break
            bar.start(label)
            fn()
            new += 1
            left -= 1
            bar.finish(cost)
    finally:
        bar.close()
    complete = left == 0
    with open(runs, "a") as f:
        f.write(dumps({"event": "finish" if complete else "stopped", "time": time.time(),
                       "wall_s": time.perf_counter() - wall0, "new_tasks": new, "tasks": len(tasks)}) + "\n")
    if write_report and complete and lead:
        from rsjax.report import write_report as _write

        _write(out)
    return out

"""The study's executor: compiled attack and evaluator programs shared by every setting, and
their data-parallel dispatch over the devices of one host.

Scale-out (one host): the image batch of each attack is split over all visible devices of a 1-D
mesh ``Mesh(jax.devices(), ('batch',))``: each device runs the same single-device program on its
contiguous block of rows (parameters copied once per device), dispatched asynchronously
(:class:`AttackPrograms`; not ``jax.shard_map``, whose SPMD-compiled program rounds differently
from the single-device one). Batch sizes are restricted to a few buckets (powers of 4 below the
batch size, :func:`_allowed_sizes`) by padding with finished rows; every device holds at least 2
rows, and a 1-row batch runs on one device (XLA CPU compiles 1-row arrays differently). Every
per-image output (points, distortions, queries, evaluations, statuses, traces) is bit-identical
with 1 and 2 devices (tested with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.study.oracle import OracleParams, ParamOracle
from rsjax.xla_options import jit


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

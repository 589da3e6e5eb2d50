"""Memory budget: how many rows a model call and how many images an attack batch may hold.

A sweep (or a CLI run) is given a budget in bytes (``--memory-budget GiB``; default
:func:`default_budget`: half the machine's RAM, or 90 % of the accelerator's memory). The
budget is split as

    budget >= runtime + data + parameters + model call (chunk rows) + attack state (batch images)

* **runtime**: :data:`RUNTIME_BYTES`, the interpreter, JAX, XLA and the compiled programs (a
  fixed allowance, measured in ``benchmarks/RESULTS.md``);
* **data**: the test images held in memory (float32), **parameters**: the model's variables;
* **model call**: XLA's own memory analysis of one vote block (noise drawn, model applied, votes
  added: :func:`rsjax.smoothing.add_sample_votes`) compiled for two row counts and fitted
  linearly (:func:`call_cost`), times :func:`safety` (XLA's temp figure leaves out allocator
  slack, the convolution libraries' scratch and the runtime's own buffers: on XLA:CPU the
  MobileNetV2's vote block was measured at ~4.4x the figure, :data:`CPU_SAFETY`);
* **attack state**: per attacked image, its oracle query (``points`` points of the image's size,
  HSJA's probe batch) plus the attack's own arrays, :func:`attack_image_bytes`.

:func:`plan` derives the vote chunk (the largest power of two, so shapes stay static and the
compile count bounded) and the attack batch. It only ever *lowers* the configured values: when
the budget does not bind, nothing changes (and a sweep's numbers stay those of its preset).

A smaller vote chunk does not change which noise a sample gets (sample j of point i always uses
``fold_in(key_i, j)``), but a model's logits for a row can differ in the last bits with the
number of rows of its call (XLA picks different kernels), so a vote on a near-tie can flip: the
derived chunk is therefore part of the configuration (``config.json``), and the plan goes to
``env.json``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import resource
import sys
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import numpy as np

from rsjax.errors import InputError

GiB = 1 << 30
#: the interpreter, JAX/XLA and compiled programs (RSS of a process that has compiled an attack
#: and a vote program, measured on XLA:CPU; ``benchmarks/RESULTS.md``)
RUNTIME_BYTES = int(0.75 * GiB)
#: multiplier on XLA's temp estimate of a model call (allocator slack, thread-local buffers)
#: on accelerators, and on XLA:CPU, where the measured resident growth of MobileNetV2's
#: 128-row vote block was 4.4x the estimate (ResNet-20's 0.8x; ``benchmarks/RESULTS.md``,
#: "Memory budget")
SAFETY, CPU_SAFETY = 1.5, 4.5


def safety() -> float:
    """:data:`CPU_SAFETY` on the CPU backend, else :data:`SAFETY`."""
    import jax

    return CPU_SAFETY if jax.default_backend() == "cpu" else SAFETY
#: share of the default budget of the machine's RAM (CPU) or of the accelerator's memory
CPU_FRACTION, DEVICE_FRACTION = 0.5, 0.9
#: largest vote chunk a plan proposes (the presets' own value is kept when smaller)
MAX_CHUNK = 1 << 16
DTYPES = ("float32", "bfloat16")


def parse_budget(gib, name: str = "--memory-budget") -> int | None:
    """Budget in bytes from a number of GiB (None: None, i.e. the default budget); InputError
    for a non-number, a value <= 0 or a non-finite value."""
    if gib is None:
        return None
    try:
        v = float(gib)
    except (TypeError, ValueError):
        raise InputError(f"{name} takes a size in GiB, got {gib!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive number of GiB, got {gib!r}")
    return int(v * GiB)


def check_dtype(dtype: str, name: str = "--dtype") -> str:
    if dtype not in DTYPES:
        raise InputError(f"{name} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[k] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            return int(text)
    return None


def machine_memory() -> int | None:
    """Bytes of RAM this process may use: MemTotal, or the cgroup's limit when smaller."""
    total = _meminfo().get("MemTotal")
    limit = _cgroup_limit()
    vals = [v for v in (total, limit) if v]
    return min(vals) if vals else None


def device_memory(device=None) -> int | None:
    """The accelerator's allocatable bytes (``memory_stats()['bytes_limit']``); None on the CPU
    or when the backend does not say."""
    import jax

    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:
        return None
    return stats.get("bytes_limit")


def default_budget(device=None) -> int:
    """:data:`DEVICE_FRACTION` of the accelerator's memory, or :data:`CPU_FRACTION` of the
    machine's RAM (MemTotal, or the cgroup's limit): a fixed figure per machine, so a rerun
    derives the same plan."""
    dev = device_memory(device)
    if dev:
        return int(DEVICE_FRACTION * dev)
    ram = machine_memory()
    if not ram:
        raise InputError("cannot read the machine's memory (/proc/meminfo); give --memory-budget")
    return int(CPU_FRACTION * ram)


def _vm_hwm() -> int | None:
    """``VmHWM`` of /proc/self/status in bytes (Linux): the peak resident set of this program
    since it was exec'ed. None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_memory() -> dict[str, Any]:
    """This process's peak resident memory and, on an accelerator, the device's peak bytes in
    use, for ``env.json``. On Linux the peak is ``VmHWM`` (this program's own high-water mark):
    ``ru_maxrss`` is not used there because a process started by fork + exec inherits its
    parent's maximum (a sweep started from a large Python process would report the parent's)."""
    import jax

    rss = _vm_hwm()
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = rss if sys.platform == "darwin" else rss * 1024
    out: dict[str, Any] = {"peak_rss_bytes": int(rss), "peak_rss_gib": round(rss / GiB, 3)}
    dev = jax.local_devices()[0]
    if dev.platform != "cpu":
        try:
            stats = dev.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
                out["device_peak_gib"] = round(stats["peak_bytes_in_use"] / GiB, 3)
        except Exception:
            pass
    return out


def tree_bytes(tree) -> int:
    import jax

    return int(sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree)))


@dataclass(frozen=True)
class CallCost:
    """Bytes of one vote block of ``rows`` rows: ``fixed + per_row * rows`` (XLA's temp estimate,
    arguments excluded)."""

    fixed: int
    per_row: int

    def bytes(self, rows: int) -> int:
        return int(self.fixed + self.per_row * rows)


@lru_cache(maxsize=64)
def block_bytes(arch: str, dtype: str, rows: int) -> int | None:
    """XLA's memory analysis (temp + output bytes) of one vote block of ``rows`` rows of ``arch``
    at ``dtype``: noise drawn, model applied, votes added (:func:`rsjax.smoothing.add_sample_votes`,
    one model call), compiled from abstract shapes (no weights needed). None when the backend
    gives no analysis."""
    import jax
    import jax.numpy as jnp

    from rsjax.models.registry import get_model_spec
    from rsjax.smoothing import add_sample_votes

    spec = get_model_spec(arch)
    module = spec.build()
    dt = jnp.dtype(dtype)
    shapes = jax.eval_shape(lambda: spec.init(jax.random.PRNGKey(0)))
    var_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dt if jnp.issubdtype(a.dtype, jnp.floating)
                                                           else a.dtype), shapes)
    points = 2

    def block(variables, x, keys, counts, point, sample, valid):
        def logits(z):
            return module.apply(variables, z.astype(dt), train=False).astype(jnp.float32)
        return add_sample_votes(logits, x, keys, jnp.float32(0.5), counts, point, sample, valid)

    args = (var_spec, jax.ShapeDtypeStruct((points, *spec.input_shape), jnp.float32),
            jax.eval_shape(lambda: jax.random.split(jax.random.PRNGKey(0), points)),
            jax.ShapeDtypeStruct((points, spec.num_classes), jnp.int32),
            jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.int32),
            jax.ShapeDtypeStruct((rows,), jnp.bool_))
    try:
        analysis = jax.jit(block).lower(*args).compile().memory_analysis()
    except Exception:  # pragma: no cover - a backend without the analysis
        return None
    if analysis is None:  # pragma: no cover
        return None
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


#: the two block sizes the linear fit of :func:`call_cost` compiles
FIT_ROWS = (4, 8)


def call_cost(arch: str, dtype: str = "float32") -> CallCost:
    """:class:`CallCost` of architecture ``arch`` at ``dtype``: :func:`block_bytes` at
    :data:`FIT_ROWS` rows fitted linearly (activations grow linearly with the rows). Cached per
    process. Without XLA's analysis: 64 input rows' worth per row (a rough allowance)."""
    check_dtype(dtype, "dtype")
    (r1, r2) = FIT_ROWS
    t1, t2 = block_bytes(arch, dtype, r1), block_bytes(arch, dtype, r2)
    if t1 is None or t2 is None:  # pragma: no cover
        from rsjax.models.registry import get_model_spec

        return CallCost(0, 4 * int(np.prod(get_model_spec(arch).input_shape)) * 64)
    per_row = max(1, int(math.ceil((t2 - t1) / (r2 - r1))))
    return CallCost(max(0, t1 - per_row * r1), per_row)


def attack_image_bytes(input_shape, points: int) -> int:
    """Bytes an attack holds per image: its oracle query of ``points`` points (and their
    per-point vote state, a few copies), plus the attack's own arrays (current point,
    direction, gradient estimate...: 32 images' worth)."""
    image = 4 * int(np.prod(input_shape))
    return image * (3 * points + 32)


def attack_points(config) -> int:
    """Points per image of the largest oracle query of the sweep's attacks (HSJA's probe
    batch; 16 for the others)."""
    from rsjax.attacks import get_attack

    points = 16
    for name in getattr(config, "attacks", ()):
        try:
            attack = get_attack(name, **dict(config.attack_options.get(name, {})))
        except Exception:  # pragma: no cover - validated elsewhere
            continue
        cfg = getattr(attack, "config", None)
        points = max(points, int(getattr(cfg, "probe_batch", 0) or 0))
    return points


def _pow2_floor(v: int) -> int:
    return 1 << (int(v).bit_length() - 1) if v >= 1 else 0


@dataclass(frozen=True)
class MemoryPlan:
    """What :func:`plan` derived (written to ``env.json``)."""

    budget_bytes: int
    budget_source: str  # 'given' or 'default'
    dtype: str
    arch: str
    fixed_bytes: int  # runtime + data + parameters
    call_fixed_bytes: int
    call_bytes_per_row: int
    safety: float  # multiplier on XLA's estimate of a model call
    vote_chunk: int
    attack_batch: int
    attack_bytes_per_image: int
    estimated_peak_bytes: int
    binds: bool  # whether the plan lowered a configured value

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["budget_gib"] = round(self.budget_bytes / GiB, 3)
        d["estimated_peak_gib"] = round(self.estimated_peak_bytes / GiB, 3)
        return d


def plan(*, arch: str, budget: int | None, vote_chunk: int, attack_batch: int = 1, data_bytes: int = 0,
         points: int = 16, dtype: str = "float32", batch_images: int = 256) -> MemoryPlan:
    """Derive the vote chunk and the attack batch that fit ``budget`` bytes (None: the
    :func:`default_budget`) for architecture ``arch``: the largest power-of-two chunk <=
    ``vote_chunk`` whose model call (times :func:`safety`) fits in at most half of what the
    runtime, the data (``data_bytes``), the parameters and a stage batch of ``batch_images``
    images leave, then the largest attack batch <= ``attack_batch`` whose state
    (:func:`attack_image_bytes` with ``points``) fits in the rest. Monotone in the budget.
    InputError (naming the budget) when not even a 1-row call and a 1-image attack fit."""
    from rsjax.models.registry import get_model_spec

    source = "given"
    if budget is None:
        budget, source = default_budget(), "default"
    if budget <= 0:
        raise InputError(f"the memory budget must be positive, got {budget / GiB:.3g} GiB")
    spec = get_model_spec(arch)
    import jax

    params = tree_bytes(jax.eval_shape(lambda: spec.init(jax.random.PRNGKey(0))))
    image = 4 * int(np.prod(spec.input_shape))
    fixed = RUNTIME_BYTES + int(data_bytes) + 2 * params + 2 * batch_images * image
    cost = call_cost(arch, dtype)
    factor = safety()
    per_image = attack_image_bytes(spec.input_shape, points)
    free = budget - fixed

    def call(rows: int) -> int:
        return int(factor * cost.bytes(rows))

    need_min = fixed + call(1) + per_image
    if free < call(1) + per_image:
        raise InputError(f"memory budget {budget / GiB:.3g} GiB is too small for {arch} ({dtype}): "
                         f"the runtime, data and parameters take {fixed / GiB:.3g} GiB and the smallest "
                         f"model call and attack batch need {need_min / GiB:.3g} GiB in all")
    chunk_cap = max(1, (free // 2 - factor * cost.fixed) // (factor * cost.per_row))
    chunk = int(min(vote_chunk, MAX_CHUNK, max(1, _pow2_floor(int(chunk_cap)))))
    while chunk > 1 and call(chunk) + per_image > free:  # pragma: no cover - guard
        chunk //= 2
    batch = int(max(1, min(attack_batch, (free - call(chunk)) // per_image)))
    peak = fixed + call(chunk) + batch * per_image
    return MemoryPlan(int(budget), source, dtype, arch, int(fixed), int(cost.fixed), int(cost.per_row), factor,
                      chunk, batch,
                      int(per_image), int(peak), chunk < vote_chunk or batch < attack_batch)


# ---------------------------------------------------------------------------------------------
# Lower precision behind an agreement check
# ---------------------------------------------------------------------------------------------
#: least top-1 agreement with float32, on noisy samples, for a lower-precision forward
MIN_AGREEMENT = 0.99
#: images and noise samples per sigma of the agreement check
AGREEMENT_IMAGES, AGREEMENT_SAMPLES = 16, 16


def _agreement_noise(seed: int, count: int, samples: int, shape: tuple):
    """N(0, I) of sample j of image i (keys ``fold_in(fold_in(seed, i), j)``), [count * samples, *shape]."""
    import jax
    import jax.numpy as jnp

    from rsjax.noise import sample_key, sample_noise

    @partial(jax.jit, static_argnums=(1, 2, 3))
    def draw(root, count, samples, shape):
        keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(count, dtype=jnp.uint32))
        z = jax.vmap(lambda k: jax.vmap(lambda j: sample_noise(sample_key(k, j), shape, "hash"))(
            jnp.arange(samples, dtype=jnp.uint32)))(keys)
        return z.reshape((count * samples, *shape))

    global _agreement_noise_jit
    if _agreement_noise_jit is None:
        _agreement_noise_jit = draw
    return np.asarray(_agreement_noise_jit(jax.random.PRNGKey(seed), count, samples, tuple(shape)))


_agreement_noise_jit = None


def dtype_agreement(reference, low, images, sigmas, samples: int = AGREEMENT_SAMPLES, seed: int = 0,
                    batch_size: int = 32) -> dict:
    """Top-1 agreement of classifier ``low`` with ``reference`` on ``samples`` noisy copies
    x + sigma N (the votes' noise convention) of each image of ``images`` at each sigma, and on
    the clean images. Returns {'agreement': the least over the sigmas (the clean images' without
    sigmas), 'per_sigma': {sigma: agreement}, 'clean': ..., 'evaluations': ...}."""
    x = np.asarray(images, np.float32)
    z = _agreement_noise(seed, len(x), samples, x.shape[1:])
    rep = np.repeat(x, samples, axis=0)
    sigmas = [float(s) for s in sigmas]
    # one array, one shape per classifier: a single compiled forward each
    every = np.concatenate([x] + [rep + np.float32(s) * z for s in sigmas])
    agree = reference.predict(every, batch_size) == low.predict(every, batch_size)
    clean = float(np.mean(agree[:len(x)]))
    per_sigma = {s: float(np.mean(agree[len(x) + i * len(rep): len(x) + (i + 1) * len(rep)]))
                 for i, s in enumerate(sigmas)}
    return {"agreement": min(per_sigma.values()) if per_sigma else clean, "per_sigma": per_sigma,
            "clean": clean, "images": int(len(x)), "samples_per_image": int(samples),
            "evaluations": int(len(every))}


def cast_checked(clf, dtype: str, images, sigmas, *, name: str = "model",
                 threshold: float = MIN_AGREEMENT, seed: int = 0, batch_size: int = 32):
    """``clf.astype(dtype)`` if its top-1 agreement with float32 on noisy samples of ``images``
    (:func:`dtype_agreement`) is at least ``threshold`` at every sigma; InputError otherwise.
    Returns (classifier, the check's dict or None for float32)."""
    check_dtype(dtype, "dtype")
    if dtype == "float32":
        return clf, None
    low = clf.astype(dtype)
    check = dtype_agreement(clf, low, images, sigmas, seed=seed, batch_size=batch_size)
    check.update(dtype=dtype, threshold=threshold, accepted=check["agreement"] >= threshold)
    if not check["accepted"]:
        raise InputError(f"{name} in {dtype} agrees with float32 on only {check['agreement']:.2%} of "
                         f"{check['images'] * check['samples_per_image']} noisy samples per sigma "
                         f"(need {threshold:.0%}; per sigma {check['per_sigma']}); use --dtype float32")
    return low, check


# ---------------------------------------------------------------------------------------------
# The sweep's plan
# ---------------------------------------------------------------------------------------------
def plan_sweep(config, budget: int | None, data_bytes: int | None = None):
    """The sweep ``config`` with its vote chunk and attack batch lowered to fit ``budget``
    bytes (None: :func:`default_budget`), and the :class:`MemoryPlan`. ``data_bytes``: the test
    images in memory (None: loaded once to measure). Nothing changes when the budget does not
    bind."""
    if data_bytes is None:
        from rsjax.data import load_dataset

        data = load_dataset(config.data)
        data_bytes = int(np.asarray(data.images).size) * 4
        del data
    p = plan(arch=config.arch, budget=budget, vote_chunk=config.vote_chunk, attack_batch=config.attack_batch,
             data_bytes=data_bytes, points=attack_points(config), dtype=config.dtype)
    if p.binds:
        config = dataclasses.replace(config, vote_chunk=p.vote_chunk, attack_batch=p.attack_batch)
    return config, p

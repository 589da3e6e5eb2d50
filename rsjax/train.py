"""Training with optax: standard, Gaussian-noise (RandTrain) and L2-PGD adversarial (AdvTrain).

Every recipe minimizes the mean softmax cross-entropy ``CE(f(x'), y)`` over minibatches, where the
training input ``x'`` depends on the recipe:

* ``standard``: ``x' = x``.
* ``gaussian`` (RandTrain, Cohen et al. 2019 Sec. 3.1): ``x' = x + sigma * N(0, I)``, a fresh draw
  on every batch, in [0,1] pixel space *before* the model's normalization, not clipped.
* ``pgd`` (AdvTrain, Madry et al. 2018): ``x' = PGD_L2(x; eps, steps, step_size)``, the inner
  maximization of ``max_{||d||_2 <= eps, x+d in [0,1]^d} CE(f(x+d), y)`` approximated by
  projected gradient ascent from a random start in the ball (see :func:`pgd_l2`). Defaults
  ``eps = 1.0``, ``steps = 7``, ``step_size = 2.5 * eps / steps`` (Madry's rule of thumb).

Determinism: one ``seed``. Initial weights use ``fold_in(key(seed), 0)`` (or come from
``init_variables``, fine-tuning); the shuffling of epoch e uses ``numpy.random.default_rng((seed, e))``;
the randomness of global step t (noise, PGD start, augmentation) uses
``fold_in(fold_in(key(seed), 1), t)``. Training drops the last incomplete batch (one static batch
shape, one compiled step); evaluation pads the last batch.

Checkpoints (see :mod:`rsjax.checkpoints`) are written after every epoch: ``out`` holds the latest
epoch and ``<out-stem>.best<suffix>`` the epoch of best held-out accuracy. Their metadata records
arch, dataset, recipe and its settings, optimizer settings, epochs, seed, test accuracy and the
per-epoch history.

Resuming (:mod:`rsjax.train_resume`): after every epoch ``<out>.resume`` (same file format, see
:func:`save_resume_state`) also holds the whole training state (weights, batch statistics,
optimizer state, step counter), the finished epoch count, the best score so far, the metadata and
a fingerprint of the run (the resolved :class:`TrainConfig`, SHA-256 of the training / evaluation
data and of the initial weights). Since every random draw is a function of (seed, epoch) or (seed, step), a run restarted
with the same ``out`` continues after the last finished epoch and ends with weights bit-identical
to an uninterrupted run. A resume state of another configuration is refused (InputError naming
each difference). The file is deleted once the final checkpoint is written.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from rsjax._version import __version__
from rsjax.data import Dataset
from rsjax.errors import InputError, check_int_at_least, check_positive
from rsjax.models import get_model_spec
from rsjax.models.registry import ModelSpec
# PGD and augmentation, and the resume state, live in their own modules; re-exported here
from rsjax.train_pgd import (CROP_PAD, LogitsFn, _pad, _padded_batches, augment_batch, pgd_l2,  # noqa: F401
                             pgd_robust_accuracy, project_l2_ball)
from rsjax.train_resume import (RESUME_KIND, TrainState, _flat_by_path, _resume, _tensor_mismatches,  # noqa: F401
                                array_digest, fingerprint_differences, load_resume_state, read_resume_metadata,
                                resume_state_path, run_fingerprint, save_resume_state)
from rsjax.xla_options import jit

RECIPES = ("standard", "gaussian", "pgd")
OPTIMIZERS = ("adam", "sgd")
AUGMENTATIONS = ("none", "flip", "flip-crop")

#: Fallbacks when neither the caller nor the architecture's ``defaults["train"]`` sets a value.
GLOBAL_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 128,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "augment": "none",
}


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. ``None`` fields take the architecture's defaults
    (``ModelSpec.defaults["train"]``), then :data:`GLOBAL_DEFAULTS`; see :func:`resolve_config`."""

    arch: str
    recipe: str = "standard"
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    augment: str | None = None
    sigma: float = 0.5
    eps: float = 1.0
    pgd_steps: int = 7
    pgd_step_size: float | None = None
    seed: int = 0
    eval_batch_size: int = 1000

    def recipe_settings(self) -> dict:
        """The settings that define the recipe (recorded in the checkpoint)."""
        if self.recipe == "gaussian":
            return {"sigma": self.sigma}
        if self.recipe == "pgd":
            return {"eps": self.eps, "pgd_steps": self.pgd_steps, "pgd_step_size": self.pgd_step_size,
                    "pgd_random_start": True}
        return {}


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill ``None`` fields from the architecture's training defaults, then the global ones,
    and validate every value (InputError naming the bad one)."""
    spec = get_model_spec(config.arch)
    arch_defaults = dict(spec.defaults.get("train", {}))
    updates = {}
    for name, fallback in GLOBAL_DEFAULTS.items():
        if getattr(config, name) is None:
            updates[name] = arch_defaults.get(name, fallback)
    config = dataclasses.replace(config, **updates)
    if config.recipe not in RECIPES:
        raise InputError(f"unknown training recipe {config.recipe!r}; known: {', '.join(RECIPES)}")
    if config.optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if config.augment not in AUGMENTATIONS:
        raise InputError(f"unknown augmentation {config.augment!r}; known: {', '.join(AUGMENTATIONS)}")
    check_int_at_least("epochs", config.epochs, 1)
    check_int_at_least("batch_size", config.batch_size, 1)
    check_int_at_least("eval_batch_size", config.eval_batch_size, 1)
    check_int_at_least("seed", config.seed, 0)
    check_positive("learning_rate", config.learning_rate)
    if not (isinstance(config.weight_decay, (int, float)) and config.weight_decay >= 0):
        raise InputError(f"weight_decay must be a number >= 0, got {config.weight_decay!r}")
    if not (isinstance(config.warmup_epochs, (int, float)) and 0 <= config.warmup_epochs < config.epochs):
        raise InputError(f"warmup_epochs must lie in [0, epochs), got {config.warmup_epochs!r}")
    if config.recipe == "gaussian":
        check_positive("sigma", config.sigma)
    if config.recipe == "pgd":
        check_positive("eps", config.eps)
        check_int_at_least("pgd_steps", config.pgd_steps, 1)
        step = config.pgd_step_size
        if step is None:
            config = dataclasses.replace(config, pgd_step_size=2.5 * config.eps / config.pgd_steps)
        else:
            check_positive("pgd_step_size", step)
    return config


# ----------------------------------------------------------------------------- state and steps


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(W) or SGD with Nesterov momentum 0.9 (weight decay added to the gradient), learning
    rate ``lr * warmup_then_cosine(t)``: linear warm-up over ``warmup_epochs``, then cosine decay
    to 0 at the last step."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if warmup > 0:
        schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total)
    else:
        schedule = optax.cosine_decay_schedule(config.learning_rate, total)
    if config.optimizer == "adam":
        if config.weight_decay > 0:
            return optax.adamw(schedule, weight_decay=config.weight_decay)
        return optax.adam(schedule)
    parts = []
    if config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.sgd(schedule, momentum=0.9, nesterov=True))
    return optax.chain(*parts)


def _split_variables(variables: Mapping[str, Any]) -> tuple[Any, Any]:
    return variables["params"], variables.get("batch_stats", {})


def _join_variables(params: Any, batch_stats: Any) -> dict:
    if batch_stats:
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation, config: TrainConfig):
    """The jitted ``(state, x, y, key) -> (state, metrics)`` of ``config.recipe``.

    BatchNorm models (``batch_stats``) run in training mode and carry the updated running
    statistics; the PGD inner loop also uses batch statistics but discards their update."""
    module = spec.build()
    has_bn = spec.has_batch_stats

    def forward_train(params, batch_stats, x):
        variables = _join_variables(params, batch_stats)
        if has_bn:
            logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
        return module.apply(variables, x, train=True), batch_stats

    def train_step(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array):
        k_aug, k_noise = jax.random.split(key)
        x = augment_batch(x, k_aug, config.augment)
        if config.recipe == "gaussian":
            x = x + config.sigma * jax.random.normal(k_noise, x.shape, x.dtype)
        elif config.recipe == "pgd":
            attack_logits = lambda z: forward_train(state.params, state.batch_stats, z)[0]  # noqa: E731
            x = pgd_l2(attack_logits, x, y, config.eps, config.pgd_steps, config.pgd_step_size, k_noise)

        def loss_fn(params):
            logits, new_stats = forward_train(params, state.batch_stats, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, new_stats)

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
        return TrainState(params, new_stats, opt_state, state.step + 1), metrics

    return jit(train_step, donate_argnums=(0,))


# ----------------------------------------------------------------------------- evaluation


def make_predict_fn(spec: ModelSpec) -> Callable:
    """Jitted ``(variables, x) -> argmax labels`` in inference mode; variables are arguments so
    one compiled program serves every epoch."""
    module = spec.build()
    return jit(lambda variables, x: jnp.argmax(module.apply(variables, x, train=False), -1))


def evaluate_accuracy(
    spec: ModelSpec,
    variables: Mapping[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 1000,
    noise_sigma: float | None = None,
    seed: int = 0,
    predict_fn: Callable | None = None,
) -> float:
    """Top-1 accuracy of the model on ``images`` (optionally plus ``noise_sigma * N(0, I)``, one
    draw per image from ``fold_in(key(seed), image index)``, not clipped). Batches are padded to
    ``batch_size`` so one program is compiled."""
    predict_fn = predict_fn or make_predict_fn(spec)
    batch_size = min(batch_size, len(images))
    root = jax.random.PRNGKey(seed)
    correct = 0
    for start, stop in _padded_batches(len(images), batch_size):
        x = _pad(np.asarray(images[start:stop], np.float32), batch_size)
        if noise_sigma is not None:
            x = x + noise_sigma * _noise_for(root, start, x.shape)
        pred = np.asarray(predict_fn(variables, jnp.asarray(x)))[: stop - start]
        correct += int(np.sum(pred == labels[start:stop]))
    return correct / len(images)


@partial(jit, static_argnums=(2,))
def _noise_batch(root: jax.Array, start: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    ids = start + jnp.arange(shape[0])
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(root, i), shape[1:]))(ids)


def _noise_for(root, start: int, shape) -> np.ndarray:
    return np.asarray(_noise_batch(root, jnp.asarray(start, jnp.uint32), tuple(shape)))


# ----------------------------------------------------------------------------- initial state


def check_init_variables(spec: ModelSpec, variables: Mapping[str, Any], source: str = "init_variables") -> None:
    """Raise InputError unless ``variables`` holds exactly the tensors (names, shapes, dtypes) of
    ``spec.init``, batch statistics included: fine-tuning needs weights of the same architecture."""
    expected = jax.eval_shape(lambda: spec.init(jax.random.PRNGKey(0)))
    problems = _tensor_mismatches(expected, dict(variables))
    if problems:
        raise InputError(f"{source} does not fit architecture {spec.name!r} (fine-tuning needs weights of "
                         f"the same architecture): {'; '.join(problems[:5])}")


def init_train_state(spec: ModelSpec, tx: optax.GradientTransformation, config: TrainConfig,
                     init_variables: Mapping[str, Any] | None = None) -> TrainState:
    """The state at step 0: weights and batch statistics from ``init_variables`` (checked by
    :func:`check_init_variables`) or ``spec.init(fold_in(key(seed), 0))``; ``tx.init(params)``."""
    if init_variables is not None:
        check_init_variables(spec, init_variables)
        variables = jax.tree_util.tree_map(jnp.asarray, dict(init_variables))
    else:
        variables = spec.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
    params, batch_stats = _split_variables(variables)
    return TrainState(params, batch_stats, tx.init(params), jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """Trained variables, the metadata written to the checkpoint, and where it was written."""

    variables: dict
    metadata: dict
    checkpoint: Path | None = None
    best_checkpoint: Path | None = None


def best_checkpoint_path(out: str | Path) -> Path:
    """``model.ckpt`` -> ``model.best.ckpt`` (the epoch of best held-out accuracy)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.best{out.suffix}")


def _check_data(spec: ModelSpec, data: Dataset, role: str) -> None:
    if tuple(data.image_shape) != tuple(spec.input_shape):
        raise InputError(
            f"{role} data {data.spec!r} has images of shape {data.image_shape}, architecture "
            f"{spec.name!r} needs {spec.input_shape}")
    if data.labels.max(initial=0) >= spec.num_classes:
        raise InputError(f"{role} data {data.spec!r} has label {int(data.labels.max())} but architecture "
                         f"{spec.name!r} has {spec.num_classes} classes")


def _initial_metadata(config: TrainConfig, train_data: Dataset, eval_data: Dataset | None,
                      init_variables: Mapping[str, Any] | None, init_source: str | None) -> dict:
    """The checkpoint metadata before the first epoch (see module docstring)."""
    return {
        "arch": config.arch,
        "dataset": train_data.spec,
        "eval_dataset": eval_data.spec if eval_data is not None else None,
        "n_train": len(train_data),
        "recipe": config.recipe,
        "recipe_settings": config.recipe_settings(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "warmup_epochs": config.warmup_epochs,
        "augment": config.augment,
        **({"crop_pad": CROP_PAD} if config.augment == "flip-crop" else {}),
        "seed": config.seed,
        "init": "random" if init_variables is None else (init_source or "checkpoint"),
        "rsjax_version": __version__,
        "jax_version": jax.__version__,
        "history": [],
    }


def _run_epoch(train_step: Callable, state: TrainState, train_data: Dataset, config: TrainConfig,
               epoch: int, step_root: jax.Array, progress: bool) -> tuple[TrainState, dict]:
    """One pass over ``permutation_(seed, epoch)`` of the data in ``n // batch_size`` full batches;
    batch i uses the key ``fold_in(step_root, epoch * steps_per_epoch + i)``. Returns the state
    and the mean train loss and accuracy over the batches."""
    n, batch_size = len(train_data), config.batch_size
    steps_per_epoch = n // batch_size
    images, labels = train_data.images, train_data.labels.astype(np.int32)
    order = np.random.default_rng((config.seed, epoch)).permutation(n)
    sums = {"loss": 0.0, "accuracy": 0.0}
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", file=sys.stderr,
               disable=not progress, leave=False, mininterval=1.0)
    pending = []
    for i in bar:
        idx = order[i * batch_size:(i + 1) * batch_size]
        key = jax.random.fold_in(step_root, epoch * steps_per_epoch + i)
        state, metrics = train_step(state, jnp.asarray(images[idx]), jnp.asarray(labels[idx]), key)
        pending.append(metrics)
        if len(pending) >= 50 or i == steps_per_epoch - 1:
            for m in jax.device_get(pending):
                sums["loss"] += float(m["loss"])
                sums["accuracy"] += float(m["accuracy"])
            pending = []
            bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
    bar.close()
    return state, {"train_loss": sums["loss"] / steps_per_epoch,
                   "train_accuracy": sums["accuracy"] / steps_per_epoch}


def _evaluate_epoch(spec: ModelSpec, variables: Mapping[str, Any], eval_data: Dataset,
                    config: TrainConfig, predict_fn: Callable) -> dict:
    """Held-out accuracy, and for RandTrain also under ``N(0, sigma^2)`` noise (seeded by ``seed``)."""
    record = {"test_accuracy": evaluate_accuracy(spec, variables, eval_data.images, eval_data.labels,
                                                 config.eval_batch_size, predict_fn=predict_fn)}
    if config.recipe == "gaussian":
        record["test_accuracy_noisy"] = evaluate_accuracy(
            spec, variables, eval_data.images, eval_data.labels, config.eval_batch_size,
            noise_sigma=config.sigma, seed=config.seed, predict_fn=predict_fn)
    return record


def format_epoch(record: Mapping[str, Any], config: TrainConfig) -> str:
    """The progress line of a finished epoch: its time, train loss and accuracy, held-out accuracy."""
    message = (f"epoch {record['epoch']}/{config.epochs}: {record['epoch_seconds']:.1f} s, "
               f"train loss {record['train_loss']:.4f}, train acc {record['train_accuracy']:.4f}")
    if "test_accuracy" in record:
        message += f", test acc {record['test_accuracy']:.4f}"
    if "test_accuracy_noisy" in record:
        message += f", test acc under N(0,{config.sigma}^2) {record['test_accuracy_noisy']:.4f}"
    return message + f" [{record['seconds']:.0f} s in all]"


# the training loop reads as one piece (set-up, resume, epochs, checkpoints); its parts are the
# helpers above (_run_epoch, _evaluate_epoch, _resume, _initial_metadata)
def train(
    config: TrainConfig,
    train_data: Dataset,
    eval_data: Dataset | None = None,
    out: str | Path | None = None,
    init_variables: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    resume: bool = True,
    init_source: str | None = None,
) -> TrainResult:
    """Train ``config.arch`` on ``train_data`` with ``config.recipe``; evaluate on ``eval_data``
    after each epoch and write checkpoints to ``out`` (see module docstring). ``init_variables``
    starts from given weights (fine-tuning; ``init_source`` names them in the metadata) instead of
    a fresh initialization. With ``out`` and ``resume``, an interrupted run of the same
    configuration is continued from ``<out>.resume``; ``resume=False`` starts over."""
    from rsjax.checkpoints import save_checkpoint

    config = resolve_config(config)
    spec = get_model_spec(config.arch)
    _check_data(spec, train_data, "training")
    if eval_data is not None:
        _check_data(spec, eval_data, "evaluation")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    n = len(train_data)
    if config.batch_size > n:
        config = dataclasses.replace(config, batch_size=n)
    tx = make_optimizer(config, n // config.batch_size)
    state = init_train_state(spec, tx, config, init_variables)
    metadata = _initial_metadata(config, train_data, eval_data, init_variables, init_source)
    out_path = Path(out) if out is not None else None
    best_path = best_checkpoint_path(out_path) if out_path is not None else None
    resume_path = resume_state_path(out_path) if out_path is not None else None
    fingerprint = run_fingerprint(config, train_data, eval_data, init_variables) if out_path is not None else None
    start_epoch, best_score = 0, -math.inf
    if resume_path is not None and resume_path.is_file():
        if resume:
            state, metadata, start_epoch, best_score = _resume(resume_path, state, fingerprint, log)
        else:
            log(f"ignoring the interrupted run in {resume_path} (no resume): starting over")
    train_step = make_train_step(spec, tx, config)
    predict_fn = make_predict_fn(spec)
    step_root = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)

    started = time.perf_counter() - metadata.get("train_seconds", 0.0)
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.perf_counter()
        state, record = _run_epoch(train_step, state, train_data, config, epoch, step_root, progress)
        variables = _join_variables(state.params, state.batch_stats)
        if eval_data is not None:
            record.update(_evaluate_epoch(spec, variables, eval_data, config, predict_fn))
        now = time.perf_counter()
        record = {"epoch": epoch + 1, **record, "epoch_seconds": now - epoch_started, "seconds": now - started}
        metadata["history"].append(record)
        metadata["epochs_done"] = epoch + 1
        metadata["train_seconds"] = record["seconds"]
        for key_name in ("test_accuracy", "test_accuracy_noisy"):
            if key_name in record:
                metadata[key_name] = record[key_name]
        if out_path is not None:
            host_variables = jax.device_get(variables)
            save_checkpoint(out_path, config.arch, host_variables, metadata)
            score = record.get("test_accuracy", -record["train_loss"])
            if score > best_score:
                best_score = score
                save_checkpoint(best_path, config.arch, host_variables, {**metadata, "best_epoch": epoch + 1})
            save_resume_state(resume_path, config.arch, state, {
                "fingerprint": fingerprint, "epochs_done": epoch + 1, "best_score": best_score,
                "run_metadata": metadata, "jax_version": jax.__version__})
        log(format_epoch(record, config))

    variables = jax.device_get(_join_variables(state.params, state.batch_stats))
    if config.recipe == "pgd" and eval_data is not None:
        k = min(1000, len(eval_data))
        robust = pgd_robust_accuracy(spec, variables, eval_data.images[:k], eval_data.labels[:k],
                                     eps=config.eps, steps=20)
        metadata["test_robust_accuracy"] = {"eps": config.eps, "pgd_steps": 20, "n_images": k,
                                            "accuracy": robust}
        log(f"robust accuracy (20-step PGD-L2, eps={config.eps}, first {k} test images): {robust:.4f}")
        if out_path is not None:
            save_checkpoint(out_path, config.arch, variables, metadata)
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    return TrainResult(variables, metadata, out_path, best_path)

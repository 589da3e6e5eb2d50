"""The study's models: each :class:`~rsjax.study.config.ModelEntry` is a given checkpoint, or is
trained with :func:`rsjax.train.train` and cached in ``$RSJAX_CACHE`` under
``checkpoints/<arch>-<recipe>-<hash>.ckpt`` (the hash of the resolved training configuration and
training data spec: an identical request reuses the file). A cached file with a ``.resume`` state
beside it is from a training run that was killed: the sweep continues that run instead of using
the partly trained weights."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from rsjax.cache import cache_dir
from rsjax.errors import InputError
from rsjax.study.config import ModelEntry, SweepConfig


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
            from rsjax.train import resume_state_path

            path = cached_checkpoint_path(entry, config, root)
            trained, seconds = False, 0.0
            # a checkpoint beside a resume state is an interrupted training run's last epoch, not
            # the model asked for: continue that run (train() resumes from the state)
            interrupted = path.is_file() and resume_state_path(path).is_file()
            if not path.is_file() or interrupted:
                from rsjax.data import load_dataset
                from rsjax.train import train

                if train_data is None:
                    train_data = load_dataset(config.train_data, limit=config.train_limit)
                tc = resolved_train_config(entry, config)
                verb = "resuming the interrupted training of" if interrupted else "training"
                log(f"{verb} {entry.name} ({tc.arch}, recipe {tc.recipe}, {tc.epochs} epochs) -> {path}")
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

"""The study as one module (compatibility): every public name of :mod:`rsjax.study` and its
submodules, for ``from rsjax import sweep`` / ``from rsjax.sweep import ...``. The code and the
protocol's description live in :mod:`rsjax.study` (``rsjax/study/``)."""
from __future__ import annotations

from rsjax.cache import cache_dir, enable_compilation_cache
from rsjax.study.config import (CRITERIA, PRESETS, REFERENCES, ModelEntry, SweepConfig, config_from_dict,
                                fmnist_models, preset, with_checkpoints)
from rsjax.study.executor import (AttackPrograms, VerifyPrograms, _allowed_sizes, _Handle, _pad_env,  # noqa: F401
                                  _pad_rows, make_mesh, run_attack)
from rsjax.study.models import cached_checkpoint_path, config_input_shape, prepare_models, resolved_train_config
from rsjax.study.oracle import (FIRST_ROUND, IMAGES_PER_BLOCK, OracleParams, ParamOracle, apply_fn, blocked_apply,
                                model_block, scheduled_vote_counts)
from rsjax.study.run import AttackStage, Study, Task, open_study, run_sweep, run_tasks
from rsjax.study.stages import (CRITERION_NOTES, L2_AT_FRACTIONS, STATUS_SMOOTHED_ABSTAIN, STATUS_SMOOTHED_WRONG,
                                STATUS_UNVERIFIED, TIMING_FIELDS, BatchOutcome, accuracy_records, attack_records,
                                certify_records, measure_batch, predict_labels, reference_records)
from rsjax.study.tasks import (STREAM_ACCURACY, STREAM_ATTACK, STREAM_CERTIFY, STREAM_REFERENCE, STREAM_VERIFY,
                               AttackRun, Setting, attack_record_key, batches, certify_share, enumerate_runs,
                               enumerate_settings, image_keys, permutation, process_slice, select_images, stream_key)

_apply_fn = apply_fn
_image_keys = image_keys

__all__ = [
    "cache_dir", "enable_compilation_cache",
    "CRITERIA", "PRESETS", "REFERENCES", "ModelEntry", "SweepConfig", "config_from_dict", "fmnist_models", "preset",
    "with_checkpoints",
    "AttackPrograms", "VerifyPrograms", "make_mesh", "run_attack",
    "cached_checkpoint_path", "config_input_shape", "prepare_models", "resolved_train_config",
    "FIRST_ROUND", "IMAGES_PER_BLOCK", "OracleParams", "ParamOracle", "apply_fn", "blocked_apply", "model_block",
    "scheduled_vote_counts",
    "AttackStage", "Study", "Task", "open_study", "run_sweep", "run_tasks",
    "CRITERION_NOTES", "L2_AT_FRACTIONS", "STATUS_SMOOTHED_ABSTAIN", "STATUS_SMOOTHED_WRONG", "STATUS_UNVERIFIED",
    "TIMING_FIELDS", "BatchOutcome", "accuracy_records", "attack_records", "certify_records", "measure_batch",
    "predict_labels", "reference_records",
    "STREAM_ACCURACY", "STREAM_ATTACK", "STREAM_CERTIFY", "STREAM_REFERENCE", "STREAM_VERIFY", "AttackRun",
    "Setting", "attack_record_key", "batches", "enumerate_runs", "enumerate_settings", "image_keys", "permutation",
    "process_slice", "certify_share", "select_images", "stream_key",
]

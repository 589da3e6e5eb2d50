"""rsjax: randomized smoothing under decision-based black-box attack, in JAX.

Data flow (each layer only calls the one below it)::

    data (load_dataset) -> models (registry, Classifier) -> noise + smoothing (votes, predict, certify)
        -> oracle (ModelOracle, SmoothedOracle: "is this point adversarial?" by a Criterion + costs)
        -> attacks (HSJA, SurFree, RayS; batched, jitted) -> results / sweep / report

The package root is light: ``import rsjax`` imports no JAX, Flax or attack code. Each public
name (``rsjax.SmoothedOracle``, ``rsjax.certify``, ``rsjax.HSJA``, ...) is imported from its
module on first use (:data:`_EXPORTS`), and so is each submodule (``rsjax.sweep``), so tools
that only read results (:mod:`rsjax.results`, :mod:`rsjax.report`) start fast.
See ``docs/architecture.md``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rsjax._version import __version__

#: public name -> the module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("RsjaxError", "InputError", "DataError", "CheckpointError"), "rsjax.errors"),
    **dict.fromkeys(("ModelSpec", "get_model_spec", "list_models", "register_model"), "rsjax.models"),
    "Classifier": "rsjax.classifier",
    "Criterion": "rsjax.criterion",
    **dict.fromkeys(("save_checkpoint", "load_checkpoint"), "rsjax.checkpoints"),
    **dict.fromkeys(("Dataset", "load_dataset"), "rsjax.data"),
    **dict.fromkeys(("Oracle", "OracleAnswer", "ModelOracle", "SmoothedOracle", "CountingOracle", "level_of",
                     "image_keys", "query_key", "query_keys"), "rsjax.oracle"),
    **dict.fromkeys(("votes", "vote_counts", "plurality", "predict_from_counts", "certify", "certified_accuracy",
                     "evaluate_smoothed"), "rsjax.smoothing"),
    **dict.fromkeys(("ATTACKS", "AttackResult", "DecisionAttack", "get_attack"), "rsjax.attacks"),
    "HSJA": "rsjax.attacks.hsja",
    "RayS": "rsjax.attacks.rays",
    "SurFree": "rsjax.attacks.surfree",
    "enable_compilation_cache": "rsjax.cache",
    **dict.fromkeys(("VerifyConfig", "Verification", "verify_attack", "verify_rays", "level_at_points",
                     "level_test_plan"), "rsjax.verify"),
}

#: submodules reachable as attributes of the package without importing them first
_SUBMODULES = frozenset((
    "analysis", "attacks", "cache", "certification", "checkpoints", "classifier", "cli", "criterion", "data", "errors",
    "findings", "geometry", "intervals", "models", "noise", "oracle", "plots", "report", "results", "smoothing", "study",
    "smoothadv", "sweep", "theory", "train", "verify", "whitebox", "xla_options",
))

__all__ = [
    "__version__",
    "RsjaxError", "InputError", "DataError", "CheckpointError",
    "ModelSpec", "get_model_spec", "list_models", "register_model", "Classifier",
    "save_checkpoint", "load_checkpoint", "Dataset", "load_dataset",
    "Criterion", "Oracle", "OracleAnswer", "ModelOracle", "SmoothedOracle", "CountingOracle", "level_of",
    "image_keys", "query_key", "query_keys",
    "votes", "vote_counts", "plurality", "predict_from_counts", "certify", "certified_accuracy",
    "evaluate_smoothed", "theory",
    "ATTACKS", "AttackResult", "DecisionAttack", "get_attack", "HSJA", "RayS", "SurFree",
    "enable_compilation_cache",
    "VerifyConfig", "Verification", "verify_attack", "verify_rays", "level_at_points", "level_test_plan",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from rsjax import theory
    from rsjax.attacks import ATTACKS, AttackResult, DecisionAttack, get_attack
    from rsjax.attacks.hsja import HSJA
    from rsjax.attacks.rays import RayS
    from rsjax.attacks.surfree import SurFree
    from rsjax.cache import enable_compilation_cache
    from rsjax.checkpoints import load_checkpoint, save_checkpoint
    from rsjax.classifier import Classifier
    from rsjax.criterion import Criterion
    from rsjax.data import Dataset, load_dataset
    from rsjax.errors import CheckpointError, DataError, InputError, RsjaxError
    from rsjax.models import ModelSpec, get_model_spec, list_models, register_model
    from rsjax.oracle import (CountingOracle, ModelOracle, Oracle, OracleAnswer, SmoothedOracle,
                              image_keys, level_of, query_key, query_keys)
    from rsjax.smoothing import (certified_accuracy, certify, evaluate_smoothed, plurality,
                                 predict_from_counts, vote_counts, votes)
    from rsjax.verify import (Verification, VerifyConfig, level_at_points, level_test_plan, verify_attack,
                              verify_rays)

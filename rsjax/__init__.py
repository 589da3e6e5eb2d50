"""rsjax: randomized smoothing under decision-based black-box attack, in JAX.

Data flow (each layer only calls the one below it)::

    data (load_dataset) -> models (registry, Classifier) -> smoothing (votes, predict, certify)
        -> oracle (ModelOracle, SmoothedOracle: "is this point adversarial?" + costs)
        -> attacks (HSJA, SurFree, RayS; batched, jitted) -> results / sweep / report
"""
from rsjax._version import __version__
from rsjax.errors import CheckpointError, DataError, InputError, RsjaxError
from rsjax.models import ModelSpec, get_model_spec, list_models, register_model
from rsjax.classifier import Classifier
from rsjax.checkpoints import load_checkpoint, save_checkpoint
from rsjax.data import Dataset, load_dataset
from rsjax.oracle import (CountingOracle, ModelOracle, Oracle, OracleAnswer, SmoothedOracle,
                          image_keys, level_of, query_key, query_keys)
from rsjax.smoothing import (certified_accuracy, certify, evaluate_smoothed, plurality,
                             predict_from_counts, vote_counts, votes)
from rsjax import theory
from rsjax.attacks import ATTACKS, AttackResult, DecisionAttack, get_attack
from rsjax.attacks.hsja import HSJA
from rsjax.attacks.rays import RayS
from rsjax.attacks.surfree import SurFree
from rsjax.cache import enable_compilation_cache

__all__ = [
    "__version__",
    "RsjaxError", "InputError", "DataError", "CheckpointError",
    "ModelSpec", "get_model_spec", "list_models", "register_model", "Classifier",
    "save_checkpoint", "load_checkpoint", "Dataset", "load_dataset",
    "Oracle", "OracleAnswer", "ModelOracle", "SmoothedOracle", "CountingOracle", "level_of",
    "image_keys", "query_key", "query_keys",
    "votes", "vote_counts", "plurality", "predict_from_counts", "certify", "certified_accuracy",
    "evaluate_smoothed", "theory",
    "ATTACKS", "AttackResult", "DecisionAttack", "get_attack", "HSJA", "RayS", "SurFree",
    "enable_compilation_cache",
]

"""rsjax: randomized smoothing under decision-based black-box attack, in JAX."""
from rsjax._version import __version__
from rsjax.errors import CheckpointError, DataError, InputError, RsjaxError
from rsjax.models import ModelSpec, get_model_spec, list_models, register_model
from rsjax.classifier import Classifier
from rsjax.oracle import ModelOracle, Oracle, OracleAnswer, image_keys, query_key, query_keys

__all__ = [
    "__version__",
    "RsjaxError", "InputError", "DataError", "CheckpointError",
    "ModelSpec", "get_model_spec", "list_models", "register_model",
    "Classifier",
    "Oracle", "OracleAnswer", "ModelOracle", "image_keys", "query_key", "query_keys",
]

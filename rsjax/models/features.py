"""Per-stage activations of a model that sows them into the ``intermediates`` collection
(the ResNets do: ``stem``, ``layer1``.., ``pool``), for layer-by-layer comparison with a reference
implementation."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax


def stage_features(
    module: nn.Module, variables: Mapping[str, Any], x: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Inference-mode ``(logits, {stage name: activation})`` of ``module`` on ``x``.

    Activations are NHWC (``pool`` is [N, C]); a stage called more than once keeps its last value.
    """
    logits, state = module.apply(variables, x, train=False, mutable=["intermediates"])
    sown = state.get("intermediates", {})
    return logits, {name: values[-1] for name, values in sown.items()}

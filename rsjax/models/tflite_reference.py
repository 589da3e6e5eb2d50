"""A reference interpreter of a TFLite graph (:class:`rsjax.models.tflite_import.TFLiteGraph`) in
float32 ``jax.lax`` ops, straight from the file: an independent check of the hand-written Flax
port (:func:`run_reference`). Re-exported by :mod:`rsjax.models.tflite_import`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from rsjax.errors import CheckpointError

if TYPE_CHECKING:
    from rsjax.models.tflite_import import TFLiteGraph, TFLiteTensor

REFERENCE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX")


def _fake_quant(x, t: TFLiteTensor):
    import jax.numpy as jnp

    if not t.is_quantized or t.dtype not in ("UINT8", "INT8"):
        return x
    info = np.iinfo(np.uint8 if t.dtype == "UINT8" else np.int8)
    s, z = float(t.scale[0]), float(t.zero_point[0])
    return (jnp.clip(jnp.round(x / s) + z, info.min, info.max) - z) * s


def run_reference(graph: TFLiteGraph, real_input, quantize_activations: bool = False,
                  keep: Sequence[int] = ()) -> tuple[Any, dict[int, Any]]:
    """Execute the graph op by op in float32 on ``real_input`` (what the file's input tensor means
    after dequantization, NHWC), straight from the file: its weight layouts, its ``SAME``/``VALID``
    padding strings (``jax.lax`` implements TF's convention), strides and fused activations. An
    independent check of the hand-written Flax port.

    ``quantize_activations=True`` rounds every op output to its uint8 grid (scale, zero point of
    the output tensor), an approximation of the integer model (TFLite's fixed-point rescaling is
    not reproduced bit for bit). Returns (the graph output before SOFTMAX, i.e. the 1001 logits,
    {tensor index: value} for the indices in ``keep``)."""
    import jax
    import jax.numpy as jnp

    values: dict[int, Any] = {graph.inputs[0]: jnp.asarray(real_input, jnp.float32)}
    kept: dict[int, Any] = {}
    logits = None

    def act(y, name):
        if name == "RELU6":
            return jnp.clip(y, 0.0, 6.0)
        if name == "RELU":
            return jnp.maximum(y, 0.0)
        if name in ("NONE", None):
            return y
        raise CheckpointError(f"reference interpreter: unsupported fused activation {name}")

    for op in graph.ops:
        if op.opcode not in REFERENCE_OPS:
            raise CheckpointError(f"reference interpreter: unsupported op {op.opcode} (#{op.index})")
        ins = [graph.tensor(i) for i in op.inputs if i >= 0]
        x = values.get(ins[0].index) if ins[0].data is None else jnp.asarray(ins[0].dequantize())
        o = op.options
        if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = jnp.asarray(ins[1].dequantize())
            b = jnp.asarray(ins[2].dequantize()) if len(ins) > 2 else 0.0
            if op.opcode == "CONV_2D":  # OHWI
                y = jax.lax.conv_general_dilated(x, w, o["strides"], o["padding"], rhs_dilation=o.get("dilation"),
                                                 dimension_numbers=("NHWC", "OHWI", "NHWC"))
            else:  # [1, kh, kw, C*m] -> HWIO with C groups
                c = x.shape[-1]
                y = jax.lax.conv_general_dilated(x, jnp.transpose(w, (1, 2, 0, 3)), o["strides"], o["padding"],
                                                 rhs_dilation=o.get("dilation"),
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
            y = act(y + b, o.get("activation"))
        elif op.opcode == "ADD":
            y = act(x + values[ins[1].index], o.get("activation"))
        elif op.opcode == "AVERAGE_POOL_2D":
            kh, kw = o["filter"]
            if o["padding"] != "VALID" and (kh, kw) != tuple(x.shape[1:3]):
                raise CheckpointError("reference interpreter: only global average pooling is supported")
            if (kh, kw) != tuple(x.shape[1:3]):
                raise CheckpointError("reference interpreter: only global average pooling is supported")
            y = act(jnp.mean(x, axis=(1, 2), keepdims=True), o.get("activation"))
        elif op.opcode == "RESHAPE":
            y = x.reshape(x.shape[0], -1)
        else:  # SOFTMAX: keep the logits, which are what rsjax models output
            logits = x
            y = jax.nn.softmax(x * o.get("beta", 1.0), axis=-1)
        out = graph.tensor(op.outputs[0])
        if quantize_activations and op.opcode != "SOFTMAX":
            y = _fake_quant(y, out)
        values[out.index] = y
        if out.index in keep:
            kept[out.index] = y
    if logits is None:
        logits = values[graph.outputs[0]]
    return logits, kept


def input_to_real(graph: TFLiteGraph, images01) -> Any:
    """[0,1] images -> the real values the file's input tensor stands for: ``s (255 x - z)`` for a
    uint8 input (the file's quantization), ``x`` itself for a float input."""
    t = graph.input
    if t.dtype == "FLOAT32" or not t.is_quantized:
        return images01
    return float(t.scale[0]) * (255.0 * images01 - float(t.zero_point[0]))

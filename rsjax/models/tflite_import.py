"""Read a TFLite flatbuffer without TensorFlow, dequantize its weights, map them onto Flax.

Reading (:func:`read_tflite`) uses the ``tflite`` PyPI package, a pure-Python parser generated
from the TFLite flatbuffer schema (``pip install 'rsjax[tflite]'``). Every tensor of the first
subgraph becomes a :class:`TFLiteTensor` (name, type, shape, quantization parameters, constant
data if it has a buffer) and every operator a :class:`TFLiteOp` (builtin name, input and output
tensor indices, and the options rsjax needs: padding, strides, fused activation, filter size).

Dequantization (:func:`dequantize`), as the TFLite quantization spec defines it:

    real = scale * (q - zero_point)

with one (scale, zero_point) per tensor, or one per slice along ``quantized_dimension`` for
per-axis (per-channel) quantization. INT32 biases have zero_point 0 and, by the spec,
``scale = input_scale * weight_scale`` (per channel for per-axis weights);
:func:`quantization_checks` verifies this invariant and that every dequantized tensor quantizes
back to exactly its stored integers.

A reference interpreter of the graph (:func:`run_reference`, in
:mod:`rsjax.models.tflite_reference`) checks the Flax port independently.

Mapping onto MobileNetV2 (:func:`convert_mobilenet_v2`): every CONV_2D / DEPTHWISE_CONV_2D is
named after the alias ``MobilenetV2/<layer>/weights_quant/...`` of its weight tensor (tensor names
are ``;``-joined lists of the TF ops fused into them, and the other aliases may mention other
layers), giving the Flax module path ``<layer>`` (``Conv``, ``expanded_conv_3/expand``,
``Logits/Conv2d_1c_1x1`` -> ``Logits``). Kernels are transposed to Flax's HWIO layout:

  =====================  =====================  =========================================
  TFLite op              TFLite weight layout   Flax kernel
  =====================  =====================  =========================================
  CONV_2D                [O, kh, kw, I]         ``nn.Conv`` [kh, kw, I, O]
  DEPTHWISE_CONV_2D      [1, kh, kw, C]         ``nn.Conv`` (groups = C) [kh, kw, 1, C]
  CONV_2D 1x1 (logits)   [1001, 1, 1, 1280]     ``nn.Dense`` [1280, 1000], row 0 dropped
  =====================  =====================  =========================================

The logits layer's row 0 (class "background") is dropped so that output i of the Flax model is
ImageNet class i in the standard sorted-wnid order (file output i + 1). Every missing, unexpected
or mis-shaped tensor is reported by name in one :class:`~rsjax.errors.CheckpointError`, and every
layer's stride, padding and fused activation are checked against what the Flax model computes.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rsjax.errors import CheckpointError, name_problems

_INSTALL_HINT = "reading .tflite files needs the `tflite` package: pip install 'rsjax[tflite]'"

# TFLite TensorType -> numpy dtype (the types a classifier's constants use).
_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT32": np.int32,
    "UINT8": np.uint8, "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "BOOL": np.bool_,
    "UINT32": np.uint32, "UINT16": np.uint16, "UINT64": np.uint64,
}
PADDING_NAMES = {0: "SAME", 1: "VALID"}
ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


def _tflite():
    try:
        import tflite  # noqa: F401
    except ImportError:
        raise CheckpointError(_INSTALL_HINT) from None
    return tflite


# ----------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class TFLiteTensor:
    """One tensor of the graph. ``data`` holds the stored constant (typed, reshaped) or None for
    activations; ``scale``/``zero_point`` are 1-D arrays (length 1 per-tensor, or the size of
    ``quantized_dimension`` per-axis), None when the tensor is not quantized."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0
    data: np.ndarray | None = field(default=None, repr=False)

    @property
    def aliases(self) -> list[str]:
        """The ``;``-separated names of the TF ops fused into this tensor."""
        return [a for a in self.name.split(";") if a]

    @property
    def is_quantized(self) -> bool:
        return self.scale is not None and len(self.scale) > 0

    @property
    def per_axis(self) -> bool:
        return self.is_quantized and len(self.scale) > 1

    def dequantize(self) -> np.ndarray:
        """The stored constant as float32 (see :func:`dequantize`)."""
        if self.data is None:
            raise CheckpointError(f"tensor {self.name!r} (#{self.index}) has no constant data")
        if not self.is_quantized:
            if not np.issubdtype(self.data.dtype, np.floating):
                raise CheckpointError(
                    f"tensor {self.name!r} (#{self.index}) is {self.dtype} without quantization "
                    f"parameters: cannot turn it into float weights")
            return self.data.astype(np.float32)
        return dequantize(self.data, self.scale, self.zero_point, self.quantized_dimension, self.name)


@dataclass(frozen=True)
class TFLiteOp:
    """One operator: builtin name, tensor indices in and out, and its parsed options."""

    index: int
    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TFLiteGraph:
    """The first subgraph of a TFLite model."""

    tensors: tuple[TFLiteTensor, ...]
    ops: tuple[TFLiteOp, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    version: int
    description: str
    source: str = ""
    sha256: str = ""

    def tensor(self, index: int) -> TFLiteTensor:
        return self.tensors[index]

    @property
    def input(self) -> TFLiteTensor:
        if len(self.inputs) != 1:
            raise CheckpointError(f"{self.source}: graph has {len(self.inputs)} inputs, expected 1")
        return self.tensors[self.inputs[0]]

    @property
    def output(self) -> TFLiteTensor:
        if len(self.outputs) != 1:
            raise CheckpointError(f"{self.source}: graph has {len(self.outputs)} outputs, expected 1")
        return self.tensors[self.outputs[0]]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.opcode] = counts.get(op.opcode, 0) + 1
        return counts


# ----------------------------------------------------------------------------- dequantization


def dequantize(q: np.ndarray, scale: Sequence[float] | np.ndarray, zero_point: Sequence[int] | np.ndarray,
               axis: int = 0, name: str = "tensor") -> np.ndarray:
    """``scale * (q - zero_point)`` as float32; per-tensor when ``scale`` has one entry, else
    per-axis along ``axis`` (``len(scale) == q.shape[axis]``). Computed in float64, then cast."""
    q = np.asarray(q)
    scale = np.asarray(scale, np.float64).reshape(-1)
    zp = np.zeros_like(scale) if zero_point is None or len(zero_point) == 0 else np.asarray(zero_point, np.float64).reshape(-1)
    if len(zp) == 1 and len(scale) > 1:
        zp = np.broadcast_to(zp, scale.shape)
    if len(scale) != len(zp):
        raise CheckpointError(f"{name}: {len(scale)} scales but {len(zp)} zero points")
    if len(scale) == 1:
        return (scale[0] * (q.astype(np.float64) - zp[0])).astype(np.float32)
    if not (0 <= axis < q.ndim) or q.shape[axis] != len(scale):
        raise CheckpointError(
            f"{name}: per-axis quantization with {len(scale)} scales along dimension {axis}, "
            f"but the tensor has shape {q.shape}")
    bshape = [1] * q.ndim
    bshape[axis] = len(scale)
    return (scale.reshape(bshape) * (q.astype(np.float64) - zp.reshape(bshape))).astype(np.float32)


def quantize(real: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, dtype) -> np.ndarray:
    """Inverse of :func:`dequantize`: ``round(real / scale) + zero_point`` clipped to ``dtype``."""
    scale = np.asarray(scale, np.float64).reshape(-1)
    zp = np.asarray(zero_point, np.float64).reshape(-1) if zero_point is not None and len(zero_point) else np.zeros(1)
    bshape = [1] * np.ndim(real)
    if len(scale) > 1:
        bshape[axis] = len(scale)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(real, np.float64) / scale.reshape(bshape)) + zp.reshape(bshape if len(zp) > 1 else [1] * np.ndim(real))
    return np.clip(q, info.min, info.max).astype(dtype)


# ----------------------------------------------------------------------------- reading


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _op_options(tfl, opcode: str, op) -> dict[str, Any]:
    table = op.BuiltinOptions()
    if table is None:
        return {}
    classes = {
        "CONV_2D": tfl.Conv2DOptions, "DEPTHWISE_CONV_2D": tfl.DepthwiseConv2DOptions,
        "AVERAGE_POOL_2D": tfl.Pool2DOptions, "MAX_POOL_2D": tfl.Pool2DOptions,
        "ADD": tfl.AddOptions, "FULLY_CONNECTED": tfl.FullyConnectedOptions,
        "SOFTMAX": tfl.SoftmaxOptions,
    }
    cls = classes.get(opcode)
    if cls is None:
        return {}
    o = cls()
    o.Init(table.Bytes, table.Pos)
    out: dict[str, Any] = {}
    if hasattr(o, "Padding"):
        out["padding"] = PADDING_NAMES.get(o.Padding(), str(o.Padding()))
    if hasattr(o, "StrideH"):
        out["strides"] = (int(o.StrideH()), int(o.StrideW()))
    if hasattr(o, "DilationHFactor"):
        out["dilation"] = (int(o.DilationHFactor()), int(o.DilationWFactor()))
    if hasattr(o, "FusedActivationFunction"):
        out["activation"] = ACTIVATION_NAMES.get(o.FusedActivationFunction(), str(o.FusedActivationFunction()))
    if hasattr(o, "DepthMultiplier"):
        out["depth_multiplier"] = int(o.DepthMultiplier())
    if hasattr(o, "FilterHeight"):
        out["filter"] = (int(o.FilterHeight()), int(o.FilterWidth()))
    if hasattr(o, "Beta"):
        out["beta"] = float(o.Beta())
    return out


def _buffer_bytes(model, buf: bytes, index: int) -> bytes | None:
    if index <= 0 or index >= model.BuffersLength():  # buffer 0 is the empty sentinel
        return None
    b = model.Buffers(index)
    offset = int(b.Offset()) if hasattr(b, "Offset") else 0
    if offset > 1:  # large models keep buffers after the flatbuffer (offset, size)
        return buf[offset: offset + int(b.Size())]
    if b.DataIsNone() or b.DataLength() == 0:
        return None
    return b.DataAsNumpy().tobytes()


def read_tflite(path: str | os.PathLike) -> TFLiteGraph:
    """Parse the TFLite file at ``path`` (first subgraph) into a :class:`TFLiteGraph`.

    Raises CheckpointError when the file is missing, not a TFLite flatbuffer, or holds a tensor
    whose constant data does not match its type and shape."""
    tfl = _tflite()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"TFLite file {path!r} not found")
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise CheckpointError(f"{path} is not a TFLite flatbuffer (file identifier {buf[4:8]!r}, expected b'TFL3')")
    try:
        model = tfl.Model.GetRootAsModel(buf, 0)
        if model.SubgraphsLength() < 1:
            raise CheckpointError(f"{path}: TFLite model has no subgraph")
        graph = model.Subgraphs(0)
        type_names = _enum_names(tfl.TensorType)
        op_names = _enum_names(tfl.BuiltinOperator)
        tensors = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            name = t.Name().decode("utf-8", "replace") if t.Name() is not None else f"tensor_{i}"
            dtype = type_names.get(t.Type(), str(t.Type()))
            shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            q = t.Quantization()
            scale = zp = None
            qdim = 0
            if q is not None and q.ScaleLength() > 0:
                scale = q.ScaleAsNumpy().astype(np.float32)
                zp = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(len(scale), np.int64)
                qdim = int(q.QuantizedDimension())
            data = None
            raw = _buffer_bytes(model, buf, t.Buffer())
            if raw is not None:
                np_type = _NUMPY_TYPES.get(dtype)
                if np_type is None:
                    raise CheckpointError(f"{path}: tensor {name!r} has unsupported constant type {dtype}")
                arr = np.frombuffer(raw, np.dtype(np_type).newbyteorder("<"))
                if arr.size != int(np.prod(shape, dtype=np.int64)):
                    raise CheckpointError(
                        f"{path}: tensor {name!r} of shape {shape} ({dtype}) has {arr.size} stored values")
                data = arr.reshape(shape).astype(np_type)
            tensors.append(TFLiteTensor(i, name, dtype, shape, scale, zp, qdim, data))
        ops = []
        for k in range(graph.OperatorsLength()):
            op = graph.Operators(k)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
            opcode = op_names.get(builtin, f"BUILTIN_{builtin}")
            if opcode == "CUSTOM":
                opcode = "CUSTOM:" + (code.CustomCode() or b"").decode()
            ops.append(TFLiteOp(k, opcode, tuple(int(i) for i in op.InputsAsNumpy()),
                                tuple(int(i) for i in op.OutputsAsNumpy()), _op_options(tfl, opcode, op)))
        description = model.Description().decode("utf-8", "replace") if model.Description() else ""
        return TFLiteGraph(tuple(tensors), tuple(ops), tuple(int(i) for i in graph.InputsAsNumpy()),
                           tuple(int(i) for i in graph.OutputsAsNumpy()), int(model.Version()),
                           description, path, hashlib.sha256(buf).hexdigest())
    except CheckpointError:
        raise
    except Exception as e:  # flatbuffer decoding errors on a corrupt file
        raise CheckpointError(f"{path}: cannot parse TFLite flatbuffer ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class QuantizationReport:
    """Results of :func:`quantization_checks` over every quantized constant of a graph."""

    n_tensors: int
    n_per_axis: int
    max_requantization_error: int  # max |quantize(dequantize(q)) - q| over all values (0 = exact)
    max_bias_scale_rel_error: float  # max |s_b - s_in * s_w| / s_b over conv/dense biases
    max_abs_weight: float  # largest |dequantized value| of a non-bias weight
    max_abs_bias: float


def quantization_checks(graph: TFLiteGraph) -> QuantizationReport:
    """Check every quantized constant: dequantize then re-quantize gives back the stored integers,
    and each INT32 bias's scale equals input scale x weight scale (TFLite quantization spec)."""
    n = n_axis = 0
    req_err = 0
    bias_err = 0.0
    max_w = max_b = 0.0
    bias_ids = set()
    for op in graph.ops:
        if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) >= 3 and op.inputs[2] >= 0:
            x, w, b = (graph.tensor(i) for i in op.inputs[:3])
            bias_ids.add(b.index)
            if b.is_quantized and x.is_quantized and w.is_quantized:
                expected = x.scale.astype(np.float64)[0] * w.scale.astype(np.float64)
                got = b.scale.astype(np.float64)
                bias_err = max(bias_err, float(np.max(np.abs(got - expected) / np.abs(got))))
    for t in graph.tensors:
        if t.data is None or not t.is_quantized:
            continue
        n += 1
        n_axis += int(t.per_axis)
        real = t.dequantize()
        back = quantize(real, t.scale, t.zero_point, t.quantized_dimension, t.data.dtype)
        req_err = max(req_err, int(np.max(np.abs(back.astype(np.int64) - t.data.astype(np.int64)))))
        if t.index in bias_ids:
            max_b = max(max_b, float(np.max(np.abs(real))))
        elif t.dtype != "INT32":
            max_w = max(max_w, float(np.max(np.abs(real))))
    return QuantizationReport(n, n_axis, req_err, bias_err, max_w, max_b)


# the reference interpreter lives in rsjax/models/tflite_reference.py
from rsjax.models.tflite_reference import REFERENCE_OPS, input_to_real, run_reference  # noqa: E402,F401


# ----------------------------------------------------------------------------- MobileNetV2 mapping

_WEIGHT_MARKER = "/weights_quant/"
_LOGITS_LAYER = "Logits/Conv2d_1c_1x1"


@dataclass(frozen=True)
class ConvLayerInfo:
    """A convolution of the file: its Flax path, op, geometry, activation and weight tensors."""

    layer: str  # TF scope, e.g. "expanded_conv_3/expand"
    op: TFLiteOp
    kernel: TFLiteTensor
    bias: TFLiteTensor | None

    @property
    def flax_path(self) -> tuple[str, ...]:
        return ("Logits",) if self.layer == _LOGITS_LAYER else tuple(self.layer.split("/"))

    @property
    def depthwise(self) -> bool:
        return self.op.opcode == "DEPTHWISE_CONV_2D"

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (self.kernel.shape[1], self.kernel.shape[2])


def layer_name(kernel: TFLiteTensor) -> str:
    """The TF scope of a convolution from its weight tensor's ``.../weights_quant/...`` alias
    (or, for float files, the alias ending in ``/weights`` or ``/Conv2D``/``/depthwise``)."""
    for alias in kernel.aliases:
        if _WEIGHT_MARKER in alias:
            scope = alias.split(_WEIGHT_MARKER)[0]
            return scope.split("/", 1)[1] if scope.startswith("MobilenetV2/") else scope
    for alias in kernel.aliases:
        for suffix in ("/weights", "/Conv2D_Fold", "/depthwise_Fold", "/Conv2D", "/depthwise"):
            if alias.endswith(suffix):
                scope = alias[: -len(suffix)]
                return scope.split("/", 1)[1] if scope.startswith("MobilenetV2/") else scope
    raise CheckpointError(f"cannot tell the layer of weight tensor {kernel.name!r} (#{kernel.index})")


def conv_layers(graph: TFLiteGraph) -> list[ConvLayerInfo]:
    """The CONV_2D / DEPTHWISE_CONV_2D ops of the graph, in graph order, with their layer names."""
    layers = []
    seen: dict[str, int] = {}
    for op in graph.ops:
        if op.opcode not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        kernel = graph.tensor(op.inputs[1])
        bias = graph.tensor(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        name = layer_name(kernel)
        if name in seen:
            raise CheckpointError(f"{graph.source}: layer {name!r} appears twice (ops {seen[name]} and {op.index})")
        seen[name] = op.index
        layers.append(ConvLayerInfo(name, op, kernel, bias))
    return layers


def _to_flax_kernel(info: ConvLayerInfo, w: np.ndarray) -> np.ndarray:
    if info.layer == _LOGITS_LAYER:  # [1001, 1, 1, 1280] -> Dense [1280, 1000] without background
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T[:, 1:])
    if info.depthwise:  # [1, kh, kw, C] -> [kh, kw, 1, C]
        return np.ascontiguousarray(np.transpose(w, (1, 2, 0, 3)))
    return np.ascontiguousarray(np.transpose(w, (1, 2, 3, 0)))  # [O, kh, kw, I] -> [kh, kw, I, O]


def _to_flax_bias(info: ConvLayerInfo, b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b[1:]) if info.layer == _LOGITS_LAYER else b


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out["/".join(prefix + (k,))] = v
    return out


def check_input_quantization(graph: TFLiteGraph, mean: float, std: float) -> None:
    """The file's uint8 input means ``real = s (q - z)``; with ``q = 255 x`` for x in [0, 1] that is
    ``(x - z/255) / (1/(255 s))``, which must equal the Flax model's Normalize(mean, std)."""
    t = graph.input
    if t.dtype == "FLOAT32":
        return
    if not t.is_quantized or t.dtype != "UINT8":
        raise CheckpointError(f"{graph.source}: input tensor {t.name!r} is {t.dtype} without uint8 quantization")
    s, z = float(t.scale[0]), float(t.zero_point[0])
    want_mean, want_std = z / 255.0, 1.0 / (255.0 * s)
    if abs(want_mean - mean) > 1e-6 or abs(want_std - std) > 1e-6:
        raise CheckpointError(
            f"{graph.source}: input quantization scale {s}, zero point {z} means normalization "
            f"mean {want_mean:.6f}, std {want_std:.6f}; the Flax model uses {mean:.6f}, {std:.6f}")


def convert_mobilenet_v2(graph: TFLiteGraph, arch: str = "mobilenet_v2") -> dict:
    """Dequantize the MobileNetV2 weights of ``graph`` onto the Flax variables ``{"params": ...}``
    of ``arch`` (float32 numpy arrays). Checks names, shapes, strides, padding and activations;
    raises CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    import jax

    from rsjax.models import mobilenet_v2 as mnv2
    from rsjax.models.registry import get_model_spec

    spec = get_model_spec(arch)
    module = spec.build()
    check_input_quantization(graph, module.mean[0], module.std[0])
    expected = _flatten(jax.eval_shape(spec.init, jax.random.PRNGKey(0))["params"])
    plan = {layer.name: layer for layer in mnv2.layer_plan(module)}

    found: dict[str, tuple[ConvLayerInfo, str]] = {}
    for info in conv_layers(graph):
        base = "/".join(info.flax_path)
        found[base + "/kernel"] = (info, "kernel")
        if info.bias is not None:
            found[base + "/bias"] = (info, "bias")

    missing = [k for k in expected if k not in found]
    unexpected = [f"{k} (tensor {found[k][0].kernel.name.split(';')[0]!r})" for k in found if k not in expected]
    misshaped, mismatched = [], []
    variables: dict[str, Any] = {}
    for key, (info, leaf) in found.items():
        if key not in expected:
            continue
        tensor = info.kernel if leaf == "kernel" else info.bias
        real = tensor.dequantize()
        value = _to_flax_kernel(info, real) if leaf == "kernel" else _to_flax_bias(info, real)
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            misshaped.append(f"{key} from {tensor.shape} -> {tuple(value.shape)} (expected {want})")
            continue
        variables[key] = value.astype(np.float32)
        if leaf == "kernel":
            layer = plan.get("/".join(info.flax_path))
            if layer is None:
                continue
            file_cfg = (info.depthwise, info.op.options.get("strides"), info.op.options.get("padding"),
                        info.op.options.get("activation"), info.op.options.get("dilation", (1, 1)))
            flax_cfg = (layer.depthwise, (layer.stride, layer.stride), "SAME",
                        "RELU6" if layer.relu6 else "NONE", (1, 1))
            if info.layer == _LOGITS_LAYER:
                file_cfg = file_cfg[:4]
                flax_cfg = (False, (1, 1), file_cfg[2], "NONE")
            if file_cfg != flax_cfg:
                mismatched.append(f"{info.layer}: file (depthwise, strides, padding, activation[, dilation]) "
                                  f"= {file_cfg}, Flax model = {flax_cfg}")
    problems = name_problems(("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", misshaped), ("layers computed differently", mismatched))
    if problems:
        raise CheckpointError(f"{graph.source} does not match architecture {arch!r}: " + "; ".join(problems) + ".")

    params: dict[str, Any] = {}
    for key, value in variables.items():
        node = params
        *path, leaf = key.split("/")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    return {"params": params}


def convert_tflite_file(arch: str, weights: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Convert the TFLite file ``weights`` for ``arch`` (``mobilenet_v2``) into the rsjax checkpoint
    ``out``; returns the metadata written (source, sha256, quantization checks)."""
    import jax

    from rsjax.checkpoints import save_checkpoint
    from rsjax.models.registry import get_model_spec

    spec = get_model_spec(arch)
    graph = read_tflite(weights)
    variables = convert_mobilenet_v2(graph, arch)
    report = quantization_checks(graph)
    n_params = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(variables["params"])))
    t_in, t_out = graph.input, graph.output
    metadata = {
        "arch": arch,
        "dataset": spec.dataset,
        "recipe": "converted",
        "source": os.path.basename(os.fspath(weights)),
        "source_sha256": graph.sha256,
        "source_format": "tflite",
        "n_params": n_params,
        "n_tensors_converted": len(jax.tree_util.tree_leaves(variables["params"])),
        "tflite_ops": graph.op_counts(),
        "tflite_input": {"dtype": t_in.dtype, "shape": list(t_in.shape),
                         "scale": None if t_in.scale is None else float(t_in.scale[0]),
                         "zero_point": None if t_in.zero_point is None else int(t_in.zero_point[0])},
        "tflite_output_classes": int(t_out.shape[-1]),
        "class_mapping": "Flax output i = file output i + 1 (file output 0 'background' dropped)",
        "quantization_checks": {
            "n_quantized_tensors": report.n_tensors,
            "n_per_axis": report.n_per_axis,
            "max_requantization_error": report.max_requantization_error,
            "max_bias_scale_rel_error": report.max_bias_scale_rel_error,
            "max_abs_weight": report.max_abs_weight,
            "max_abs_bias": report.max_abs_bias,
        },
    }
    save_checkpoint(os.fspath(out), arch, variables, metadata)
    return metadata

"""MobileNetV2 1.0/224 (Sandler et al. 2018) as in TF-slim / the TFLite file, for converted weights.

The graph reproduced is the float graph of ``mobilenet_v2_1.0_224_quant.tflite`` (BatchNorm folded
into each convolution, so every conv has a bias and there is no BatchNorm):

    input x in [0,1] -> Normalize(mean 128/255, std 128/255): (255 x - 128) / 128
    Conv:              conv 3x3/2 (32) + bias, ReLU6
    expanded_conv:     depthwise 3x3/1 + bias, ReLU6; project 1x1 (16) + bias (linear)
    expanded_conv_1..16 (inverted residuals, expansion t, output c, n repeats, first stride s:
        (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        expand 1x1 (t*in) + bias, ReLU6; depthwise 3x3/s + bias, ReLU6; project 1x1 (c) + bias;
        + input when s = 1 and in = c (the file's ADD ops)
    Conv_1:            conv 1x1 (1280) + bias, ReLU6
    global average pool 7x7; Logits: 1x1 conv 1280 -> 1001 == Dense, background row dropped -> 1000

Input scaling: the quantized file's input is uint8 with scale 1/128 and zero point 128, i.e. the
float graph sees ``(q - 128) / 128``; with ``q = 255 x`` this is Normalize(128/255, 128/255).
(TF-slim's float preprocessing ``2 x - 1`` differs from it by at most 1/128 at x = 1.)

Padding: every conv and depthwise conv of the file is TF ``SAME``: total padding
``max((ceil(n/s) - 1) s + k - n, 0)`` split ``floor(total/2)`` before and the rest after, so a
stride-2 3x3 conv on an even size pads 0 on top/left and 1 on bottom/right, and a stride-1 3x3
pads 1 on each side. :func:`tf_same_padding` computes it explicitly from the (static) input size.

Classes: output i is ImageNet class i in the standard sorted-wnid order (file output i + 1; the
file's ``imagenet_labels.txt`` line i + 1 equals ``synset_words.txt`` line i for all 1,000).

Submodule names mirror the TF scopes (``expanded_conv_3/expand``); block outputs are sown into
``intermediates`` as ``<name>_out`` (``Conv_out``, ``expanded_conv_out``.. ``expanded_conv_16_out``,
``Conv_1_out``) and ``pool``.
No dropout (TF-slim's training graph has dropout 0.2 before the logits; fine-tuning here omits it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.models.registry import ModelSpec, Normalize, register_model

#: The file's input quantization (scale 1/128, zero point 128) as a [0,1]-input normalization.
TFLITE_MEAN = (128.0 / 255.0,) * 3
TFLITE_STD = (128.0 / 255.0,) * 3
#: (expansion t, output channels c, repeats n, first stride s) of each stage after the stem.
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never below 90 % of ``value``
    (the TF-slim / paper rule for width multipliers; identity for width 1.0)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF ``SAME`` padding (before, after) of one spatial dimension of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of the network: its Flax path, geometry and activation."""

    name: str  # Flax module path, "/"-joined ("expanded_conv_3/expand")
    features: int
    kernel: int
    stride: int
    depthwise: bool
    relu6: bool


@dataclass(frozen=True)
class Block:
    """An inverted-residual block: its name, convs (expand?, depthwise, project) and residual flag."""

    name: str
    convs: tuple[ConvLayer, ...]
    residual: bool


def block_plan(width: float = 1.0) -> list[Block]:
    """The inverted-residual blocks of MobileNetV2 with width multiplier ``width``."""
    blocks = []
    in_ch = make_divisible(STEM_CHANNELS * width)
    index = 0
    for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
        out_ch = make_divisible(c * width)
        for r in range(n):
            stride = s if r == 0 else 1
            name = "expanded_conv" if index == 0 else f"expanded_conv_{index}"
            convs = []
            hidden = in_ch * t
            if t != 1:
                convs.append(ConvLayer(f"{name}/expand", hidden, 1, 1, False, True))
            convs.append(ConvLayer(f"{name}/depthwise", hidden, 3, stride, True, True))
            convs.append(ConvLayer(f"{name}/project", out_ch, 1, 1, False, False))
            blocks.append(Block(name, tuple(convs), stride == 1 and in_ch == out_ch))
            in_ch = out_ch
            index += 1
    return blocks


def layer_plan(module: "MobileNetV2 | None" = None) -> list[ConvLayer]:
    """Every convolution of the model in order (stem, blocks, ``Conv_1``; the logits Dense is
    not included)."""
    width = 1.0 if module is None else module.width
    stem = ConvLayer("Conv", make_divisible(STEM_CHANNELS * width), 3, 2, False, True)
    last = ConvLayer("Conv_1", make_divisible(LAST_CHANNELS * max(1.0, width)), 1, 1, False, True)
    return [stem, *(c for b in block_plan(width) for c in b.convs), last]


class TFConv(nn.Module):
    """Conv (depthwise when ``depthwise``: one group per input channel) with bias and explicit
    TF-``SAME`` padding, then ReLU6 when ``relu6``. Its ``kernel`` [kh, kw, in/groups, out] and
    ``bias`` sit directly under its name, matching the TF scopes one to one. Computes in the
    promoted dtype of input and weights (bfloat16 when both are)."""

    features: int
    kernel: int
    stride: int = 1
    depthwise: bool = False
    relu6: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = (tf_same_padding(x.shape[1], self.kernel, self.stride),
               tf_same_padding(x.shape[2], self.kernel, self.stride))
        groups = x.shape[-1] if self.depthwise else 1
        if self.depthwise and self.features != x.shape[-1]:
            raise ValueError(f"depthwise conv {self.name!r}: {x.shape[-1]} input channels cannot give "
                             f"{self.features} outputs (depth multiplier 1)")
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel, self.kernel, x.shape[-1] // groups, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        dtype = jnp.promote_types(x.dtype, kernel.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), kernel.astype(dtype), (self.stride, self.stride), pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
        y = y + bias.astype(dtype)
        return jnp.clip(y, 0.0, 6.0) if self.relu6 else y


class InvertedResidual(nn.Module):
    """expand 1x1 (if any) - depthwise 3x3 - linear project 1x1, plus the input when residual."""

    convs: tuple[ConvLayer, ...]
    residual: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = x
        for c in self.convs:
            out = _conv(c, c.name.split("/")[-1])(out)
        return out + x if self.residual else out


def _conv(layer: ConvLayer, name: str) -> TFConv:
    return TFConv(layer.features, layer.kernel, layer.stride, layer.depthwise, layer.relu6, name=name)


class MobileNetV2(nn.Module):
    """MobileNetV2 on [0,1] NHWC input (224x224x3), 1000 logits in sorted-wnid order."""

    num_classes: int = 1000
    width: float = 1.0
    mean: tuple[float, ...] = TFLITE_MEAN
    std: tuple[float, ...] = TFLITE_STD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        plan = layer_plan(self)
        x = Normalize(self.mean, self.std)(x)
        x = _conv(plan[0], "Conv")(x)
        self.sow("intermediates", "Conv_out", x)
        for block in block_plan(self.width):
            x = InvertedResidual(block.convs, block.residual, name=block.name)(x)
            self.sow("intermediates", f"{block.name}_out", x)
        x = _conv(plan[-1], "Conv_1")(x)
        self.sow("intermediates", "Conv_1_out", x)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "pool", x)
        return nn.Dense(self.num_classes, name="Logits")(x)


register_model(
    ModelSpec(
        name="mobilenet_v2",
        build=lambda: MobileNetV2(),
        input_shape=(224, 224, 3),
        num_classes=1000,
        dataset="imagenet",
        description="MobileNetV2 1.0/224 (3.5M parameters, BN folded), the float graph of the TFLite "
        "file; loads mobilenet_v2_1.0_224_quant.tflite via `rsjax convert --arch mobilenet_v2`",
    )
)

"""CIFAR-10 ResNets of He et al. 2016 (§4.2): ``cifar_resnet20/32/44/56``.

Depth ``6k + 2``: a 3x3 stem conv with 16 channels, three stages of ``k`` basic blocks with
16, 32, 64 channels (the first block of stages 2 and 3 has stride 2), global average pooling and a
linear layer. Shortcut "option A" (parameter-free), as in Y. Idelbayev's PyTorch port whose trained
ResNet-20 rsjax converts::

    shortcut(x) = pad_channels(x[:, ::2, ::2, :], planes // 4 on each side)   (stride 2, C -> 2C)

A basic block computes ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. Every conv is 3x3
with explicit 1-pixel padding and no bias; BatchNorm eps 1e-5, running-average momentum 0.9 (Flax
convention: PyTorch's 0.1). The ImageNet mean/std normalization used to train that checkpoint is
the model's first operation, so inputs are [0,1] NHWC images.

Submodule names mirror the PyTorch state-dict keys with ``.`` replaced by ``_`` (``layer2_0`` ->
``layer2.0``), which is what :mod:`rsjax.models.convert` relies on. Each stage's output is sown
into the ``intermediates`` collection (``stem``, ``layer1``..``layer3``, ``pool``); see
:func:`rsjax.models.features.stage_features`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.models.registry import ModelSpec, Normalize, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # Flax: running = momentum * running + (1 - momentum) * batch
CIFAR_DEPTHS = (20, 32, 44, 56)


def conv3x3(features: int, stride: int, name: str) -> nn.Conv:
    """3x3 conv, explicit symmetric 1-pixel padding, no bias (PyTorch ``padding=1``)."""
    return nn.Conv(
        features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False, name=name
    )


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


def shortcut_option_a(x: jax.Array, planes: int) -> jax.Array:
    """He et al.'s option-A shortcut: subsample by 2 in H and W, zero-pad planes//4 channels on
    each side (so C -> C + 2 * (planes // 4) = planes when planes = 2C)."""
    x = x[:, ::2, ::2, :]
    pad = planes // 4
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option-A shortcut."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = conv3x3(self.planes, self.stride, "conv1")(x)
        out = nn.relu(batch_norm(train, "bn1")(out))
        out = conv3x3(self.planes, 1, "conv2")(out)
        out = batch_norm(train, "bn2")(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            if self.stride != 2 or 2 * x.shape[-1] != self.planes:
                raise ValueError(
                    f"option-A shortcut needs stride 2 and doubled channels, got stride {self.stride},"
                    f" {x.shape[-1]} -> {self.planes} channels"
                )
            x = shortcut_option_a(x, self.planes)
        return nn.relu(out + x)


class CifarResNet(nn.Module):
    """ResNet-(6k+2) for 32x32x3 CIFAR images; ``blocks_per_stage = k``."""

    blocks_per_stage: int
    num_classes: int = 10
    widths: tuple[int, int, int] = (16, 32, 64)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Normalize(self.mean, self.std)(x)
        x = conv3x3(self.widths[0], 1, "conv1")(x)
        x = nn.relu(batch_norm(train, "bn1")(x))
        self.sow("intermediates", "stem", x)
        for stage, planes in enumerate(self.widths, start=1):
            for block in range(self.blocks_per_stage):
                stride = 2 if (stage > 1 and block == 0) else 1
                x = BasicBlock(planes, stride, name=f"layer{stage}_{block}")(x, train)
            self.sow("intermediates", f"layer{stage}", x)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "pool", x)
        return nn.Dense(self.num_classes, name="linear")(x)


def _register(depth: int) -> None:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6k+2, got {depth}")
    k = (depth - 2) // 6
    register_model(
        ModelSpec(
            name=f"cifar_resnet{depth}",
            build=lambda: CifarResNet(blocks_per_stage=k),
            input_shape=(32, 32, 3),
            num_classes=10,
            dataset="cifar10",
            description=f"He et al. CIFAR ResNet-{depth} (option-A shortcut, 3x{k} basic blocks,"
            " ImageNet mean/std normalization); loads akamaster-layout PyTorch weights",
            has_batch_stats=True,
            cpu_forward_block=32,
        )
    )


for _depth in CIFAR_DEPTHS:
    _register(_depth)

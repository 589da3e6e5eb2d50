"""ImageNet ResNet-50 identical to torchvision's ``resnet50`` (v1.5), for converted weights.

Layers (He et al. 2016, Table 1, with the v1.5 change: the stride of a downsampling bottleneck is
on its 3x3 conv, not its first 1x1 conv), padding exactly as torchvision, all explicit:

    stem:  conv 7x7/2 pad 3 (64) - BN - ReLU - maxpool 3x3/2 pad 1 (padding value -inf)
    layer1..4: [3, 4, 6, 3] bottlenecks of width 64, 128, 256, 512 (output 4x width);
        bottleneck(x) = relu(bn3(conv3_1x1(relu(bn2(conv2_3x3/s pad 1(relu(bn1(conv1_1x1(x)))))))) + d(x))
        d = identity, or conv 1x1/s + BN ("downsample") when the stride or width changes
    head:  global average pool - linear 2048 -> 1000

Convs have no bias; BatchNorm eps 1e-5, Flax momentum 0.9 (PyTorch's 0.1). ImageNet mean/std
normalization is the first operation: inputs are [0,1] NHWC, 224x224x3.

Submodule names mirror torchvision's state-dict keys with ``.`` replaced by ``_`` (``layer3_2``,
``downsample_0`` / ``downsample_1``). Stage outputs are sown into ``intermediates`` (``stem``,
``layer1``..``layer4``, ``pool``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.models.cifar_resnet import BN_EPS, BN_MOMENTUM, IMAGENET_MEAN, IMAGENET_STD
from rsjax.models.registry import ModelSpec, Normalize, register_model

RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4


def _conv(features: int, size: int, stride: int, pad: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (size, size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        name=name,
    )


def _bn(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (v1.5: stride on the 3x3 conv), expansion 4."""

    width: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out_channels = self.width * BOTTLENECK_EXPANSION
        out = nn.relu(_bn(train, "bn1")(_conv(self.width, 1, 1, 0, "conv1")(x)))
        out = nn.relu(_bn(train, "bn2")(_conv(self.width, 3, self.stride, 1, "conv2")(out)))
        out = _bn(train, "bn3")(_conv(out_channels, 1, 1, 0, "conv3")(out))
        if self.stride != 1 or x.shape[-1] != out_channels:
            x = _bn(train, "downsample_1")(_conv(out_channels, 1, self.stride, 0, "downsample_0")(x))
        return nn.relu(out + x)


class ResNet50(nn.Module):
    """torchvision ResNet-50 v1.5 on [0,1] NHWC input."""

    num_classes: int = 1000
    blocks: tuple[int, ...] = RESNET50_BLOCKS
    widths: tuple[int, ...] = RESNET50_WIDTHS
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Normalize(self.mean, self.std)(x)
        x = nn.relu(_bn(train, "bn1")(_conv(64, 7, 2, 3, "conv1")(x)))
        # flax max_pool pads with the reduction's identity (-inf), like torch.nn.MaxPool2d
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        self.sow("intermediates", "stem", x)
        for stage, (n_blocks, width) in enumerate(zip(self.blocks, self.widths), start=1):
            for block in range(n_blocks):
                stride = 2 if (stage > 1 and block == 0) else 1
                x = Bottleneck(width, stride, name=f"layer{stage}_{block}")(x, train)
            self.sow("intermediates", f"layer{stage}", x)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "pool", x)
        return nn.Dense(self.num_classes, name="fc")(x)


register_model(
    ModelSpec(
        name="resnet50",
        build=lambda: ResNet50(),
        input_shape=(224, 224, 3),
        num_classes=1000,
        dataset="imagenet",
        description="torchvision ResNet-50 v1.5 (25.6M parameters); loads torchvision state_dicts",
        has_batch_stats=True,
    )
)

"""Small Fashion-MNIST classifiers (28x28x1, 10 classes).

``fmnist_mlp`` (default): 784-256-256-10 ReLU MLP. Chosen as the default because randomized
smoothing multiplies the cost of every attack query by n, and on a CPU this MLP is two orders of
magnitude faster than a ResNet-style CNN, which lets the default sweep attack RS with large n
(throughputs in ``benchmarks/RESULTS.md``). ``fmnist_cnn``: a stronger (≥ 91 %) small CNN for
users who can afford it.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from rsjax.models.registry import ModelSpec, Normalize, register_model

FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)


class MLP(nn.Module):
    """Normalize, flatten, then Dense-ReLU layers of ``hidden`` widths and a linear head."""

    hidden: tuple[int, ...] = (256, 256)
    num_classes: int = 10
    mean: tuple[float, ...] = FMNIST_MEAN
    std: tuple[float, ...] = FMNIST_STD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Normalize(self.mean, self.std)(x)
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class SmallCNN(nn.Module):
    """Normalize, then per stage [conv3x3(w) - BatchNorm - ReLU] - maxpool 2x2, for ``widths``
    (default 16, 32: 28x28 -> 14x14 -> 7x7), then dense(``hidden``)-ReLU and a linear head.
    Explicit symmetric 1-pixel padding on the 3x3 convs (no 'SAME' ambiguity).

    The default (16, 32) / 128 (~207k parameters) was chosen for CPU training time (a 4-conv
    32-32-64-64 variant is slower per epoch for a similar accuracy, ``benchmarks/RESULTS.md``);
    this one reaches >= 91 % test accuracy (see ``defaults['train']``)."""

    widths: tuple[int, ...] = (16, 32)
    hidden: int = 128
    num_classes: int = 10
    mean: tuple[float, ...] = FMNIST_MEAN
    std: tuple[float, ...] = FMNIST_STD

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Normalize(self.mean, self.std)(x)
        for width in self.widths:
            x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


register_model(
    ModelSpec(
        name="fmnist_mlp",
        build=lambda: MLP(),
        input_shape=(28, 28, 1),
        num_classes=10,
        dataset="fashion-mnist",
        description="784-256-256-10 ReLU MLP (default Fashion-MNIST classifier; fast under RS)",
        # ~90 % test accuracy in well under a minute of 2-core CPU (Adam, cosine decay).
        defaults={"train": {"epochs": 15, "batch_size": 128, "optimizer": "adam", "learning_rate": 1e-3}},
    )
)
register_model(
    ModelSpec(
        name="fmnist_cnn",
        build=lambda: SmallCNN(),
        input_shape=(28, 28, 1),
        num_classes=10,
        dataset="fashion-mnist",
        description="2-conv (16, 32) BatchNorm CNN for Fashion-MNIST (stronger, much slower than the MLP)",
        has_batch_stats=True,
        cpu_forward_block=128,
        # >= 91 % test accuracy after 4 of these 10 epochs (epoch times: benchmarks/RESULTS.md)
        defaults={"train": {"epochs": 10, "batch_size": 128, "optimizer": "adam", "learning_rate": 2e-3}},
    )
)

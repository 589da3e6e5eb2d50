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


class _FMNISTClassifier(nn.Module):
    """Fields shared by the Fashion-MNIST classifiers: classes and the input normalization."""

    num_classes: int = 10
    mean: tuple[float, ...] = FMNIST_MEAN
    std: tuple[float, ...] = FMNIST_STD


class MLP(_FMNISTClassifier):
    """Normalize, flatten, then Dense-ReLU layers of ``hidden`` widths and a linear head."""

    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Normalize(self.mean, self.std)(x)
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class SmallCNN(_FMNISTClassifier):
    """Normalize, then per stage [conv3x3(w) - BatchNorm - ReLU] - maxpool 2x2, for ``widths``
    (default 16, 32: 28x28 -> 14x14 -> 7x7), then dense(``hidden``)-ReLU and a linear head.
    Explicit symmetric 1-pixel padding on the 3x3 convs (no 'SAME' ambiguity).

    The default (16, 32) / 128 (~207k parameters) was chosen for CPU training time (a 4-conv
    32-32-64-64 variant is slower per epoch for a similar accuracy, ``benchmarks/RESULTS.md``);
    this one reaches >= 91 % test accuracy (see ``defaults['train']``)."""

    widths: tuple[int, ...] = (16, 32)
    hidden: int = 128

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


def _register_fmnist(name: str, build, description: str, train: dict, **extra) -> None:
    """Register a Fashion-MNIST classifier (28x28x1 inputs, 10 classes) with its training defaults."""
    register_model(ModelSpec(name=name, build=build, input_shape=(28, 28, 1), num_classes=10,
                             dataset="fashion-mnist", description=description, defaults={"train": train},
                             **extra))


# ~90 % test accuracy in well under a minute of 2-core CPU (Adam, cosine decay).
_register_fmnist("fmnist_mlp", lambda: MLP(),
                 "784-256-256-10 ReLU MLP (default Fashion-MNIST classifier; fast under RS)",
                 {"epochs": 15, "batch_size": 128, "optimizer": "adam", "learning_rate": 1e-3})
# >= 91 % test accuracy after 4 of these 10 epochs (epoch times: benchmarks/RESULTS.md)
_register_fmnist("fmnist_cnn", lambda: SmallCNN(),
                 "2-conv (16, 32) BatchNorm CNN for Fashion-MNIST (stronger, much slower than the MLP)",
                 {"epochs": 10, "batch_size": 128, "optimizer": "adam", "learning_rate": 2e-3},
                 has_batch_stats=True, cpu_forward_block=128)

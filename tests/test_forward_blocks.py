"""forward_in_blocks: a large batch evaluated as fixed-size blocks gives each image exactly the
output of a plain call on its own block, pads and drops the ragged tail, and is differentiable."""
import jax
import jax.numpy as jnp
import numpy as np

from rsjax.classifier import Classifier, forward_in_blocks
from rsjax.models import get_model_spec


def _fn(x):
    # per-row nonlinear map with a batch-independent result
    return jnp.tanh(x.reshape(x.shape[0], -1) @ jnp.arange(12.0).reshape(4, 3)) + x.sum(axis=(1, 2, 3))[:, None]


def test_blocks_equal_per_block_calls_and_drop_padding():
    x = jax.random.uniform(jax.random.key(0), (23, 2, 2, 1))
    out = jax.jit(forward_in_blocks(_fn, 8))(x)
    assert out.shape == (23, 3)
    ref = jnp.concatenate([jax.jit(_fn)(jnp.pad(x[i:i + 8], ((0, max(0, i + 8 - 23)), (0, 0), (0, 0), (0, 0))))[: min(8, 23 - i)]
                           for i in range(0, 23, 8)])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    # a batch no larger than the block is one plain call
    np.testing.assert_array_equal(np.asarray(forward_in_blocks(_fn, 8)(x[:5])), np.asarray(_fn(x[:5])))
    assert forward_in_blocks(_fn, None) is _fn


def test_blocks_are_differentiable():
    x = jax.random.uniform(jax.random.key(1), (10, 2, 2, 1))
    g1 = jax.grad(lambda z: forward_in_blocks(_fn, 4)(z).sum())(x)
    g2 = jax.grad(lambda z: _fn(z).sum())(x)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-6, atol=1e-6)


def test_cifar_resnet_uses_blocks_on_cpu_and_agrees_with_one_call():
    spec = get_model_spec("cifar_resnet20")
    assert spec.cpu_forward_block == 32
    clf = Classifier.from_arch("cifar_resnet20", spec.init(jax.random.key(0)))
    x = jax.random.uniform(jax.random.key(2), (70, 32, 32, 3))
    blocked = np.asarray(jax.jit(clf.logits_fn)(x))
    plain = np.asarray(jax.jit(lambda z: clf._module.apply(clf.variables, z, train=False))(x))
    np.testing.assert_allclose(blocked, plain, rtol=1e-4, atol=1e-5)
    assert (blocked.argmax(1) == plain.argmax(1)).all()


def test_pad_small_always_calls_fn_on_whole_blocks():
    shapes = []

    def spy(x):
        shapes.append(x.shape[0])
        return _fn(x)

    x = jax.random.uniform(jax.random.key(3), (5, 2, 2, 1))
    out = forward_in_blocks(spy, 8, pad_small=True)(x)
    assert shapes == [8] and out.shape == (5, 3)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_fn(jnp.pad(x, ((0, 3), (0, 0), (0, 0), (0, 0))))[:5]))
    shapes.clear()
    forward_in_blocks(spy, 8)(x)
    assert shapes == [5]

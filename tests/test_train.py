"""Training: short runs beat chance widely, RandTrain helps under noise, AdvTrain helps under PGD,
one compiled program per step function, determinism from the seed, checkpoints from train output.

All runs are a few hundred MLP steps on subsets of Fashion-MNIST (seconds on a 2-core CPU)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import rsjax.train as train_mod
from rsjax.checkpoints import load_checkpoint
from rsjax.classifier import Classifier
from rsjax.data import load_dataset
from rsjax.errors import InputError
from rsjax.models import get_model_spec
from rsjax.models.linear import linear_logits_fn
from rsjax.train import (
    TrainConfig,
    best_checkpoint_path,
    evaluate_accuracy,
    pgd_l2,
    pgd_robust_accuracy,
    resolve_config,
    train,
)

SHORT = dict(epochs=3, batch_size=64, learning_rate=1e-3)  # 3 x 100 = 300 steps on 6,400 images


@pytest.fixture(scope="module")
def fmnist_small(fmnist_dir):
    train_data = load_dataset("fashion-mnist:train", data_dir=fmnist_dir, limit=6400)
    test_data = load_dataset("fashion-mnist:test", data_dir=fmnist_dir, limit=2000)
    return train_data, test_data


@pytest.fixture(scope="module")
def standard_mlp(fmnist_small, tmp_path_factory):
    train_data, test_data = fmnist_small
    out = tmp_path_factory.mktemp("std") / "mlp.ckpt"
    result = train(TrainConfig("fmnist_mlp", **SHORT), train_data, test_data, out=out, progress=False)
    return result


def test_short_standard_run_beats_chance_widely(standard_mlp):
    assert standard_mlp.metadata["test_accuracy"] >= 0.75  # chance is 0.10
    history = standard_mlp.metadata["history"]
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_checkpoint_round_trip_from_train_output(standard_mlp, fmnist_small):
    _, test_data = fmnist_small
    variables, metadata = load_checkpoint(standard_mlp.checkpoint)
    leaves_file = jax.tree_util.tree_leaves_with_path(variables)
    leaves_mem = jax.tree_util.tree_leaves_with_path(standard_mlp.variables)
    assert [p for p, _ in leaves_file] == [p for p, _ in leaves_mem]
    for (_, a), (_, b) in zip(leaves_file, leaves_mem):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    for key in ("arch", "dataset", "recipe", "recipe_settings", "epochs", "test_accuracy",
                "rsjax_version", "seed", "history"):
        assert key in metadata, key
    assert metadata["arch"] == "fmnist_mlp" and metadata["dataset"] == "fashion-mnist:train"
    assert metadata["recipe"] == "standard" and metadata["epochs"] == 3 and metadata["seed"] == 0
    # the recorded accuracy is what the checkpoint gives
    clf = Classifier.from_checkpoint(standard_mlp.checkpoint)
    accuracy = float(np.mean(clf.predict(test_data.images) == test_data.labels))
    assert accuracy == pytest.approx(metadata["test_accuracy"], abs=1e-9)
    assert best_checkpoint_path(standard_mlp.checkpoint).is_file()
    _, best_meta = load_checkpoint(best_checkpoint_path(standard_mlp.checkpoint))
    assert best_meta["test_accuracy"] == max(h["test_accuracy"] for h in metadata["history"][: best_meta["best_epoch"]])


def test_randtrain_beats_standard_under_gaussian_noise(standard_mlp, fmnist_small):
    """RandTrain: accuracy on test images + N(0, sigma^2) well above the standard model's on the
    same noisy images. A 300-step MLP is still smooth enough to shrug off sigma = 0.5 (the gap
    there appears with full training: experiments/train_defaults.py), so this short run uses
    sigma = 1.0."""
    train_data, test_data = fmnist_small
    sigma = 1.0
    noisy = train(TrainConfig("fmnist_mlp", recipe="gaussian", sigma=sigma, **SHORT), train_data,
                  test_data, progress=False)
    spec = get_model_spec("fmnist_mlp")
    acc_std = evaluate_accuracy(spec, standard_mlp.variables, test_data.images, test_data.labels,
                                noise_sigma=sigma, seed=7)
    acc_rand = evaluate_accuracy(spec, noisy.variables, test_data.images, test_data.labels,
                                 noise_sigma=sigma, seed=7)
    print(f"noisy accuracy at sigma={sigma}: standard {acc_std:.4f}, RandTrain {acc_rand:.4f}")
    assert noisy.metadata["test_accuracy"] >= 0.6
    assert acc_rand >= acc_std + 0.10, (acc_rand, acc_std)
    assert noisy.metadata["recipe_settings"] == {"sigma": sigma}
    assert noisy.metadata["test_accuracy_noisy"] == pytest.approx(acc_rand, abs=0.05)


def test_advtrain_beats_standard_under_pgd(standard_mlp, fmnist_small):
    """AdvTrain (L2 PGD, eps = 1): robust accuracy under 20-step PGD-L2 well above the standard
    model's after a short run with a 3-step inner attack (measured 64 % vs 41 % on these 500
    images; the issue's >= 25-point gap after full training is shown by
    experiments/train_defaults.py, a 300-step standard MLP being still unusually robust)."""
    train_data, test_data = fmnist_small
    adv = train(TrainConfig("fmnist_mlp", recipe="pgd", eps=1.0, pgd_steps=3, **SHORT), train_data,
                test_data, progress=False)
    spec = get_model_spec("fmnist_mlp")
    x, y = test_data.images[:500], test_data.labels[:500]
    rob_std = pgd_robust_accuracy(spec, standard_mlp.variables, x, y, eps=1.0, steps=20)
    rob_adv = pgd_robust_accuracy(spec, adv.variables, x, y, eps=1.0, steps=20)
    assert rob_adv >= rob_std + 0.15, (rob_adv, rob_std)
    assert adv.metadata["recipe_settings"]["pgd_step_size"] == pytest.approx(2.5 / 3)
    assert adv.metadata["test_robust_accuracy"]["pgd_steps"] == 20


def test_batchnorm_cnn_short_run(fmnist_small):
    train_data, test_data = fmnist_small
    result = train(TrainConfig("fmnist_cnn", epochs=1, batch_size=64, learning_rate=2e-3),
                   _subset(train_data, 2560), _subset(test_data, 500), progress=False)
    initial = get_model_spec("fmnist_cnn").init(jax.random.fold_in(jax.random.PRNGKey(0), 0))
    assert "batch_stats" in result.variables
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                   result.variables["batch_stats"], initial["batch_stats"])
    assert min(jax.tree_util.tree_leaves(moved)) > 0  # running statistics were updated
    assert result.metadata["test_accuracy"] >= 0.5  # 40 steps; chance is 0.10


def _subset(data, k):
    import dataclasses

    return dataclasses.replace(data, images=data.images[:k], labels=data.labels[:k])


def test_steps_compile_once(fmnist_small, monkeypatch):
    """Two epochs, a padded last evaluation batch, a second train() call: one program each."""
    train_data, test_data = fmnist_small
    captured = {}
    real_step, real_predict = train_mod.make_train_step, train_mod.make_predict_fn

    def spy_step(*a, **k):
        captured["step"] = real_step(*a, **k)
        return captured["step"]

    def spy_predict(*a, **k):
        captured["predict"] = real_predict(*a, **k)
        return captured["predict"]

    monkeypatch.setattr(train_mod, "make_train_step", spy_step)
    monkeypatch.setattr(train_mod, "make_predict_fn", spy_predict)
    cfg = TrainConfig("fmnist_mlp", epochs=2, batch_size=64, eval_batch_size=300)
    train(cfg, _subset(train_data, 640), _subset(test_data, 700), progress=False)  # 700 = 2x300 + 100
    assert captured["step"]._cache_size() == 1
    assert captured["predict"]._cache_size() == 1


def test_deterministic_from_seed(fmnist_small):
    train_data, _ = fmnist_small
    data = _subset(train_data, 640)
    cfg = TrainConfig("fmnist_mlp", recipe="gaussian", epochs=1, batch_size=64)
    a = train(cfg, data, progress=False).variables
    b = train(cfg, data, progress=False).variables
    c = train(TrainConfig("fmnist_mlp", recipe="gaussian", epochs=1, batch_size=64, seed=1), data,
              progress=False).variables
    same = jax.tree_util.tree_map(lambda u, v: np.array_equal(u, v), a, b)
    assert all(jax.tree_util.tree_leaves(same))
    differ = jax.tree_util.tree_map(lambda u, v: not np.array_equal(u, v), a, c)
    assert all(jax.tree_util.tree_leaves(differ))


def test_noisy_evaluation_independent_of_batch_size(standard_mlp, fmnist_small):
    _, test_data = fmnist_small
    spec = get_model_spec("fmnist_mlp")
    x, y = test_data.images[:600], test_data.labels[:600]
    accs = {bs: evaluate_accuracy(spec, standard_mlp.variables, x, y, batch_size=bs, noise_sigma=0.5, seed=3)
            for bs in (128, 250, 600)}
    assert len(set(accs.values())) == 1, accs
    clean = evaluate_accuracy(spec, standard_mlp.variables, x, y)
    assert accs[600] < clean  # the noise was really added


# ----------------------------------------------------------------------------- PGD on a linear model


def test_pgd_l2_on_linear_model_reaches_exactly_the_points_within_eps():
    """For f(x) = [w.x + b > 0] the CE gradient is parallel to w, so L2 PGD moves each point by
    eps towards the hyperplane: it flips exactly the points at distance < eps (box inactive)."""
    rng = np.random.default_rng(0)
    d = (20, 20, 1)
    w = rng.normal(size=d)
    u = w / np.linalg.norm(w)
    center = np.full(d, 0.5)
    r = np.linspace(-0.25, 0.25, 41)
    ortho = rng.normal(size=(41, *d)) * 0.01
    ortho -= np.tensordot(ortho.reshape(41, -1) @ u.ravel(), u, axes=0)  # keep distance = |r|
    x = (center + r[:, None, None, None] * u + ortho).astype(np.float32)
    b = -float(np.sum(w * center))
    logits_fn = linear_logits_fn(w, b)
    y = (r > 0).astype(np.int32)  # the true side of each point
    eps = 0.1
    x_adv = np.asarray(pgd_l2(logits_fn, x, y, eps=eps, steps=20, step_size=2.5 * eps / 20))
    delta = (x_adv - x).reshape(41, -1)
    assert np.all(np.linalg.norm(delta, axis=1) <= eps + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    flipped = np.asarray(logits_fn(x_adv)).argmax(-1) != y
    decided = np.abs(np.abs(r) - eps) > 1e-3
    assert np.array_equal(flipped[decided], (np.abs(r) < eps)[decided])
    # the move is along -/+ w with length eps
    assert np.allclose(np.abs(delta @ u.ravel()), eps, atol=1e-4)


def test_pgd_random_start_stays_in_ball_and_box():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 8, 1))
    x = rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    x_adv = np.asarray(pgd_l2(linear_logits_fn(w, 0.0), x, np.zeros(16, np.int32), eps=0.5, steps=3,
                              step_size=0.3, key=jax.random.PRNGKey(0)))
    assert np.all(np.linalg.norm((x_adv - x).reshape(16, -1), axis=1) <= 0.5 + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and not np.array_equal(x_adv, x)


# ----------------------------------------------------------------------------- configuration


def test_resolve_config_defaults_and_errors():
    cfg = resolve_config(TrainConfig("fmnist_mlp", recipe="pgd", eps=1.0, pgd_steps=10))
    assert cfg.pgd_step_size == pytest.approx(0.25)
    assert cfg.epochs == get_model_spec("fmnist_mlp").defaults["train"]["epochs"]
    assert resolve_config(TrainConfig("fmnist_mlp", epochs=2)).epochs == 2
    with pytest.raises(InputError, match="'adversarial'"):
        resolve_config(TrainConfig("fmnist_mlp", recipe="adversarial"))
    with pytest.raises(InputError, match="sigma"):
        resolve_config(TrainConfig("fmnist_mlp", recipe="gaussian", sigma=-0.5))
    with pytest.raises(InputError, match="epochs"):
        resolve_config(TrainConfig("fmnist_mlp", epochs=0))
    with pytest.raises(InputError, match="no_such_arch"):
        resolve_config(TrainConfig("no_such_arch"))


def test_train_rejects_data_of_wrong_shape(fmnist_small):
    import dataclasses

    train_data, _ = fmnist_small
    rgb = dataclasses.replace(train_data, images=np.zeros((8, 32, 32, 3), np.float32),
                              labels=np.zeros(8, np.int64))
    with pytest.raises(InputError, match=r"\(32, 32, 3\)"):
        train(TrainConfig("fmnist_mlp", epochs=1), rgb, progress=False)

"""Resumable training, fine-tuning from a checkpoint (--init) and the flip-crop augmentation.

* A real `rsjax train` process killed (SIGKILL) after its first epoch's checkpoint and rerun ends
  with weights bit-identical to an uninterrupted run (BatchNorm statistics, SGD momentum, the
  Gaussian noise and the augmentation of the remaining epochs all restored); so does an
  in-process interruption of an AdamW + PGD run.
* A resume state of another configuration is refused, naming each difference.
* ``--init`` starts from the checkpoint's weights and batch statistics: the model of the first
  training step gives the checkpoint's logits bit for bit.

Tiny Fashion-MNIST subsets, a few seconds per run on a 2-core CPU."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax.train as train_mod
from rsjax.checkpoints import load_checkpoint, read_checkpoint_header, save_checkpoint
from rsjax.classifier import Classifier
from rsjax.cli import main
from rsjax.data import load_dataset
from rsjax.errors import InputError
from rsjax.models import get_model_spec
from rsjax.train import (
    CROP_PAD,
    RESUME_KIND,
    TrainConfig,
    augment_batch,
    resume_state_path,
    train,
)

CLI = [sys.executable, "-c", "import sys; from rsjax.cli import main; sys.exit(main())"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never write to ~/.cache/rsjax."""
    monkeypatch.setenv("RSJAX_CACHE", str(tmp_path / "rsjax-cache"))


class Interrupted(Exception):
    """Raised from the log callback to stop a run after a chosen epoch."""


def _stop_after(epoch: int):
    def log(message: str) -> None:
        if message.startswith(f"epoch {epoch}/"):
            raise Interrupted(message)
    return log


def _assert_same_tree(a, b) -> None:
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, u), (_, v) in zip(flat_a, flat_b):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape, jax.tree_util.keystr(path)
        assert np.array_equal(u.view(np.uint8), v.view(np.uint8)), f"{jax.tree_util.keystr(path)} differs"


@pytest.fixture(scope="module")
def small_data(fmnist_dir):
    return (load_dataset("fashion-mnist:train", data_dir=fmnist_dir, limit=512),
            load_dataset("fashion-mnist:test", data_dir=fmnist_dir, limit=200))


# ----------------------------------------------------------------------------- kill and resume


def _train_argv(fmnist_dir, out: Path) -> list[str]:
    """fmnist_cnn (BatchNorm), RandTrain + flip-crop, SGD with momentum and weight decay."""
    return CLI + ["train", "--dataset", "fashion-mnist:train", "--data-dir", str(fmnist_dir), "--limit", "1536",
                  "--eval-limit", "200", "--arch", "fmnist_cnn", "--recipe", "gaussian", "--sigma", "0.3",
                  "--augment", "flip-crop", "--optimizer", "sgd", "--lr", "0.02", "--weight-decay", "1e-4",
                  "--epochs", "3", "--batch-size", "64", "--seed", "3", "--no-progress", "--out", str(out)]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "RSJAX_CACHE": str(tmp_path / "cache")}


def test_cli_killed_after_first_epoch_resumes_bit_identically(fmnist_dir, tmp_path):
    full = tmp_path / "full.ckpt"
    done = subprocess.run(_train_argv(fmnist_dir, full), env=_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # every epoch reports its time, train loss / accuracy and held-out accuracies on stderr
    for epoch in (1, 2, 3):
        line = next(ln for ln in done.stderr.splitlines() if ln.startswith(f"epoch {epoch}/3: "))
        for part in (" s, train loss ", ", train acc ", ", test acc ", "test acc under N(0,0.3^2)"):
            assert part in line, line
    assert not resume_state_path(full).exists()  # removed at the end

    cut = tmp_path / "cut.ckpt"
    resume = resume_state_path(cut)
    proc = subprocess.Popen(_train_argv(fmnist_dir, cut), env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{err}"
    saved = read_checkpoint_header(resume)["metadata"]
    assert saved["kind"] == RESUME_KIND and 1 <= saved["epochs_done"] < 3
    assert read_checkpoint_header(cut)["metadata"]["epochs_done"] >= saved["epochs_done"]

    again = subprocess.run(_train_argv(fmnist_dir, cut), env=_env(tmp_path), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {resume}: {saved['epochs_done']} of 3 epochs done" in again.stderr
    assert not resume.exists()
    for name in (full, cut), (train_mod.best_checkpoint_path(full), train_mod.best_checkpoint_path(cut)):
        (va, ma), (vb, mb) = load_checkpoint(name[0]), load_checkpoint(name[1])
        _assert_same_tree(va, vb)
        assert [h["test_accuracy"] for h in ma["history"]] == [h["test_accuracy"] for h in mb["history"]]
    _, meta = load_checkpoint(cut)
    assert meta["epochs_done"] == 3 and meta["resumed_after_epochs"] == [saved["epochs_done"]]


def test_interrupted_adamw_pgd_run_resumes_bit_identically(small_data, tmp_path):
    """In process: AdamW (another optimizer state), PGD (random starts), warm-up; stopped after
    epoch 2 of 3 by an exception, then resumed."""
    train_data, test_data = small_data
    cfg = TrainConfig("fmnist_mlp", recipe="pgd", eps=1.0, pgd_steps=2, augment="flip", epochs=3,
                      batch_size=64, weight_decay=1e-4, warmup_epochs=1.0, seed=5)
    ref = train(cfg, train_data, test_data, out=tmp_path / "ref.ckpt", progress=False, log=lambda m: None)
    out = tmp_path / "cut.ckpt"
    with pytest.raises(Interrupted):
        train(cfg, train_data, test_data, out=out, progress=False, log=_stop_after(2))
    assert read_checkpoint_header(resume_state_path(out))["metadata"]["epochs_done"] == 2
    messages = []
    resumed = train(cfg, train_data, test_data, out=out, progress=False, log=messages.append)
    assert any(m.startswith("resuming from") for m in messages)
    assert [m.split(":")[0] for m in messages if m.startswith("epoch ")] == ["epoch 3/3"]
    _assert_same_tree(ref.variables, resumed.variables)
    assert resumed.metadata["test_robust_accuracy"] == ref.metadata["test_robust_accuracy"]
    assert [h["train_loss"] for h in resumed.metadata["history"]] == [h["train_loss"] for h in ref.metadata["history"]]
    assert not resume_state_path(out).exists()


# ----------------------------------------------------------------------------- refused resumes


def test_resume_of_another_configuration_is_refused(small_data, tmp_path, fmnist_dir, capsys):
    train_data, test_data = small_data
    cfg = TrainConfig("fmnist_mlp", epochs=3, batch_size=64, learning_rate=1e-3)
    out = tmp_path / "m.ckpt"
    with pytest.raises(Interrupted):
        train(cfg, train_data, test_data, out=out, progress=False, log=_stop_after(1))
    resume = resume_state_path(out)
    before = resume.read_bytes()

    other_lr = dataclasses.replace(cfg, learning_rate=2e-3)
    with pytest.raises(InputError, match=r"learning_rate: 0\.001 in the resume state, 0\.002 now") as e:
        train(other_lr, train_data, test_data, out=out, progress=False)
    assert str(resume) in str(e.value) and "--no-resume" in str(e.value)
    fewer = dataclasses.replace(train_data, images=train_data.images[:256], labels=train_data.labels[:256])
    with pytest.raises(InputError, match=r"n_train: 512 in the resume state, 256 now") as e:
        train(cfg, fewer, test_data, out=out, progress=False)
    assert "train_data_sha256" in str(e.value)
    assert resume.read_bytes() == before  # refused runs leave the state alone

    # the same through the CLI: exit 2, the difference named on stderr
    argv = ["train", "--dataset", "fashion-mnist:train", "--data-dir", str(fmnist_dir), "--limit", "512",
            "--eval-limit", "200", "--epochs", "3", "--batch-size", "64", "--out", str(out), "--no-progress"]
    assert main(argv + ["--lr", "0.002"]) == 2
    assert "learning_rate: 0.001 in the resume state, 0.002 now" in capsys.readouterr().err
    assert main(argv + ["--lr", "0.001", "--seed", "1"]) == 2
    assert "seed: 0 in the resume state, 1 now" in capsys.readouterr().err

    # --no-resume starts over (and overwrites the state)
    assert main(argv + ["--lr", "0.002", "--no-resume"]) == 0
    assert "ignoring the interrupted run" in capsys.readouterr().err
    assert not resume.exists() and load_checkpoint(out)[1]["learning_rate"] == 0.002


def test_corrupt_resume_state_is_refused(small_data, tmp_path):
    train_data, test_data = small_data
    cfg = TrainConfig("fmnist_mlp", epochs=2, batch_size=64)
    out = tmp_path / "m.ckpt"
    with pytest.raises(Interrupted):
        train(cfg, train_data, None, out=out, progress=False, log=_stop_after(1))
    resume = resume_state_path(out)
    data = bytearray(resume.read_bytes())
    data[-5] ^= 0xFF
    resume.write_bytes(bytes(data))
    with pytest.raises(Exception, match="SHA-256"):
        train(cfg, train_data, None, out=out, progress=False)


# ----------------------------------------------------------------------------- --init


@pytest.fixture(scope="module")
def cnn_init(tmp_path_factory):
    """A fmnist_cnn checkpoint with non-trivial batch statistics (not what the seed would give)."""
    spec = get_model_spec("fmnist_cnn")
    variables = jax.device_get(spec.init(jax.random.PRNGKey(123)))
    rng = np.random.default_rng(0)
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: (a + rng.uniform(0.1, 0.5, a.shape)).astype(a.dtype), variables["batch_stats"])
    path = tmp_path_factory.mktemp("init") / "cnn.ckpt"
    save_checkpoint(path, "fmnist_cnn", variables, {"note": "test init"})
    return path


def test_init_starts_from_the_checkpoint(cnn_init, fmnist_dir, tmp_path, monkeypatch, capsys):
    """The state handed to the first training step gives the --init checkpoint's logits bit for
    bit (the architecture comes from the checkpoint; --arch is not needed)."""
    first_states = []
    real = train_mod.make_train_step

    def spy(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, *rest):
            if not first_states:
                first_states.append(jax.device_get(state))
            return step(state, *rest)
        return wrapped

    monkeypatch.setattr(train_mod, "make_train_step", spy)
    out = tmp_path / "ft.ckpt"
    assert main(["train", "--dataset", "fashion-mnist:train", "--data-dir", str(fmnist_dir), "--limit", "128",
                 "--eval-limit", "100", "--epochs", "1", "--batch-size", "64", "--init", str(cnn_init),
                 "--out", str(out), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    state = first_states[0]
    started = {"params": state.params, "batch_stats": state.batch_stats}
    loaded, _ = load_checkpoint(cnn_init)
    _assert_same_tree(started, loaded)
    module = get_model_spec("fmnist_cnn").build()
    logits = jax.jit(lambda v, x: module.apply(v, x, train=False))
    x = jnp.asarray(load_dataset("fashion-mnist:test", data_dir=fmnist_dir, limit=64).images)
    got, want = np.asarray(logits(started, x)), np.asarray(logits(loaded, x))
    assert np.array_equal(got, want)
    assert np.array_equal(got.argmax(-1), Classifier.from_checkpoint(str(cnn_init)).predict(np.asarray(x)))
    _, meta = load_checkpoint(out)
    assert meta["arch"] == "fmnist_cnn" and meta["init"] == str(cnn_init)


def test_init_of_another_architecture_is_refused(cnn_init, fmnist_dir, tmp_path, small_data, capsys):
    out = tmp_path / "x.ckpt"
    assert main(["train", "--dataset", "fashion-mnist:train", "--data-dir", str(fmnist_dir), "--limit", "64",
                 "--arch", "fmnist_mlp", "--init", str(cnn_init), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'fmnist_cnn'" in err and "'fmnist_mlp'" in err and "same architecture" in err
    assert main(["train", "--dataset", "fashion-mnist:train", "--init", str(tmp_path / "none.ckpt"),
                 "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    train_data, _ = small_data
    cnn_vars, _ = load_checkpoint(cnn_init)
    with pytest.raises(InputError, match="does not fit architecture 'fmnist_mlp'.*missing"):
        train(TrainConfig("fmnist_mlp", epochs=1), train_data, init_variables=cnn_vars, progress=False)
    no_stats = {"params": cnn_vars["params"]}
    with pytest.raises(InputError, match=r"missing.*batch_stats"):
        train(TrainConfig("fmnist_cnn", epochs=1), train_data, init_variables=no_stats, progress=False)


# ----------------------------------------------------------------------------- flip-crop


def test_flip_crop_is_a_flip_then_a_shifted_window_of_the_zero_padded_image():
    """Every output is the (possibly mirrored) input shifted by (i - 4, j - 4), i, j in 0..8,
    with zeros where it leaves the image; the draws depend on the key only."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (64, 32, 32, 3)).astype(np.float32)
    out = np.asarray(augment_batch(jnp.asarray(x), jax.random.PRNGKey(7), "flip-crop"))
    assert out.shape == x.shape
    pad = CROP_PAD
    assert pad == 4
    seen_offsets, seen_flips = set(), set()
    for k in range(len(x)):
        matches = []
        for flip in (False, True):
            src = x[k, :, ::-1] if flip else x[k]
            padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)))
            for i in range(2 * pad + 1):
                for j in range(2 * pad + 1):
                    if np.array_equal(padded[i:i + 32, j:j + 32], out[k]):
                        matches.append((flip, i, j))
        assert len(matches) == 1, (k, matches)
        seen_flips.add(matches[0][0])
        seen_offsets.add(matches[0][1:])
    assert seen_flips == {False, True} and len(seen_offsets) > 20
    again = np.asarray(augment_batch(jnp.asarray(x), jax.random.PRNGKey(7), "flip-crop"))
    other = np.asarray(augment_batch(jnp.asarray(x), jax.random.PRNGKey(8), "flip-crop"))
    assert np.array_equal(out, again) and not np.array_equal(out, other)

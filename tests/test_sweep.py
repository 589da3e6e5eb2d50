"""The sweep: settings grid, image selection, the traced-parameter oracle against
rsjax.oracle.SmoothedOracle, the checkpoint cache key, refusal of a changed configuration,
kill-and-resume of a real smoke run, and identical results on 1 and 2 devices."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import sweep
from rsjax.errors import InputError
from rsjax.results import open_run_dir, read_records
from sweep_helpers import REPO
from sweep_helpers import strip as _strip
from sweep_helpers import sweep_cmd as _sweep_cmd
from sweep_helpers import sweep_env as _env


# ------------------------------------------------------------------------------------ grid

def test_runs_grid_label_verified_at_every_pa_and_level_shortcut():
    cfg = dataclasses.replace(sweep.preset("default"), ns=(1, 10), pas=(0.5, 0.8), attacks=("hsja", "rays"),
                              criterion="label", level_ns=(10,))
    runs = sweep.enumerate_runs(cfg)
    st = sweep.enumerate_settings(cfg)
    keys = [(s.model, s.sigma, s.n, s.p_a, s.criterion, s.attack) for s in st]
    assert len(keys) == len(set(keys))
    label = [r for r in runs if r.criterion == "label"]
    assert label and all(r.pas == (0.5, 0.8) and r.k_wrong is None for r in label)  # P_a verifies, not re-attacks
    level = [r for r in runs if r.criterion == "level"]
    assert {r.n for r in level} == {10} and {(r.k_wrong, r.pas) for r in level} == {(5, (0.5,)), (8, (0.8,))}
    pairs = sum(len(cfg.model_sigmas(m)) for m in cfg.models)
    # per (model, sigma): 2 n x 2 attacks label runs + 2 P_a x 2 attacks level runs; plus 2 baselines per model
    assert len(runs) == pairs * (4 + 4) + 2 * len(cfg.models)
    assert len(st) == pairs * (4 * 2 + 4) + 2 * len(cfg.models)
    base = [r for r in runs if r.criterion == "none"]
    assert all(r.sigma is None and r.n is None and r.pas == (None,) for r in base)
    # the 'level' criterion alone: n = 1 is one run (k = 1 for every P_a) verified at both levels
    lv = sweep.enumerate_runs(dataclasses.replace(cfg, criterion="level"))
    n1 = [r for r in lv if r.n == 1]
    assert n1 and all(r.k_wrong == 1 and r.pas == (0.5, 0.8) for r in n1)
    assert not [r for r in lv if r.criterion == "label"]


def test_select_images_first_correct_by_every_model():
    correct = {"a": np.array([1, 1, 0, 1, 1, 1], bool), "b": np.array([1, 0, 1, 1, 1, 1], bool)}
    order = np.array([5, 2, 1, 4, 0, 3])
    assert sweep.select_images(correct, order, 3).tolist() == [5, 4, 0]
    with pytest.raises(InputError, match="only 4"):
        sweep.select_images(correct, order, 5)


def test_batches_and_process_slices_and_sizes():
    ids = np.arange(10)
    assert [b.tolist() for b in sweep.batches(ids, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    parts = [sweep.process_slice(ids, i, 3) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == ids.tolist()
    assert sweep._allowed_sizes(64, 1) == [1, 4, 16, 64]
    assert sweep._allowed_sizes(64, 2) == [1, 4, 16, 64]
    assert sweep._allowed_sizes(8, 1) == [1, 2, 8]
    assert sweep._allowed_sizes(8, 2) == [1, 4, 8]  # >= 2 rows per device; 1 row: one device
    assert all(s == 1 or (s % 3 == 0 and s >= 6) for s in sweep._allowed_sizes(50, 3))


def test_presets_validate_and_round_trip():
    for name in sweep.PRESETS:
        cfg = sweep.preset(name).validate()
        assert sweep.config_from_dict(cfg.to_dict()) == cfg
    full = sweep.preset("full")
    assert full.n_images == 200 and full.max_queries == 2000
    with pytest.raises(InputError):
        sweep.preset("nope")
    with pytest.raises(InputError, match="criterion"):
        dataclasses.replace(sweep.preset("smoke"), criterion="vote").validate()


def test_checkpoint_cache_key_follows_training_config(tmp_path):
    cfg = sweep.preset("smoke")
    std, rand = cfg.models
    p1 = sweep.cached_checkpoint_path(std, cfg, tmp_path)
    assert p1 == sweep.cached_checkpoint_path(std, cfg, tmp_path)
    assert p1.parent == tmp_path / "checkpoints"
    assert p1 != sweep.cached_checkpoint_path(rand, cfg, tmp_path)
    other = dataclasses.replace(rand, train={**rand.train, "sigma": 0.5})
    assert sweep.cached_checkpoint_path(other, cfg, tmp_path) != sweep.cached_checkpoint_path(rand, cfg, tmp_path)
    assert sweep.cached_checkpoint_path(std, dataclasses.replace(cfg, train_limit=100), tmp_path) != p1


class _TrainCalled(Exception):
    pass


def test_interrupted_training_in_the_cache_is_resumed_not_reused(tmp_path, monkeypatch):
    """A cached checkpoint with a ``.resume`` state beside it is an interrupted run's last epoch:
    the sweep must call train() on the same path (which resumes it), not load those weights."""
    import rsjax.data
    import rsjax.train
    from rsjax.study.models import prepare_models

    cfg = dataclasses.replace(sweep.preset("smoke"), models=sweep.preset("smoke").models[:1])
    path = sweep.cached_checkpoint_path(cfg.models[0], cfg, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"epoch 1 of an interrupted run")
    rsjax.train.resume_state_path(path).write_bytes(b"resume state")
    calls, logs = [], []

    def fake_train(tc, train_data, eval_data, out=None, **kw):
        calls.append(Path(out))
        raise _TrainCalled

    monkeypatch.setattr(rsjax.train, "train", fake_train)
    monkeypatch.setattr(rsjax.data, "load_dataset", lambda spec, limit=None: "train data")
    with pytest.raises(_TrainCalled):
        prepare_models(cfg, logs.append, root=tmp_path)
    assert calls == [path] and "resuming the interrupted training" in logs[-1]


def test_changed_config_is_refused(tmp_path):
    cfg = sweep.preset("smoke")
    open_run_dir(tmp_path, cfg.to_dict())
    changed = dataclasses.replace(cfg, max_queries=cfg.max_queries + 1)
    with pytest.raises(InputError, match="max_queries"):
        sweep.run_sweep(changed, tmp_path, progress=False)


# ------------------------------------------------------------------------------------ oracle

def _mlp():
    from rsjax.classifier import Classifier
    from rsjax.models import get_model_spec

    spec = get_model_spec("fmnist_mlp")
    return Classifier(spec, spec.init(jax.random.key(1)))


@pytest.mark.parametrize("criterion,n,p_a", [("level", 7, 0.5), ("level", 8, 0.8), ("label", 9, None)])
def test_param_oracle_matches_smoothed_oracle(criterion, n, p_a):
    """The sweep's traced-parameter oracle answers exactly like rsjax.oracle.SmoothedOracle for the
    same keys (points near the decision boundary of a random MLP, where answers are random)."""
    from rsjax.oracle import SmoothedOracle, image_keys
    from rsjax.theory import level_wrong_count

    clf = _mlp()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 28, 28, 1)).astype(np.float32)
    y = clf.predict(x)
    y[::2] = (y[::2] + 1) % 10  # half the points are already 'wrong'
    keys = image_keys(jax.random.key(5), jnp.arange(24))
    sigma = 0.8
    ref = SmoothedOracle(clf.logits_fn, 10, sigma, n, criterion, p_a)
    k = level_wrong_count(n, p_a) if criterion == "level" else 1
    params = sweep.OracleParams(clf.variables, jnp.float32(sigma), jnp.int32(n), jnp.int32(k))
    mine = sweep.ParamOracle(sweep._apply_fn(clf), params, 10, criterion)
    a = jax.jit(ref.decide)(jnp.asarray(x), jnp.asarray(y), keys)
    b = jax.jit(lambda p, xx, yy, kk: sweep.ParamOracle(sweep._apply_fn(clf), p, 10, criterion).decide(xx, yy, kk))(
        params, jnp.asarray(x), jnp.asarray(y), keys)
    assert np.asarray(a.adversarial).tolist() == np.asarray(b.adversarial).tolist()
    adv = np.asarray(b.adversarial)
    assert 0 < adv.sum() < len(adv)  # both answers occur: the comparison is not vacuous
    assert mine.max_evaluations_per_query() == n


def test_scheduled_votes_are_exact_and_per_point():
    """scheduled_vote_counts: without a stop rule the counts are those of smoothing.vote_counts
    (same noise); with one, the decision is the full vote's and each point's evaluations do not
    depend on the other points of the call (alone or with others, any chunk size)."""
    from rsjax.oracle import image_keys
    from rsjax.smoothing import label_decided, vote_counts

    clf = _mlp()
    apply = sweep._apply_fn(clf)
    logits = lambda z: apply(clf.variables, z)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (6, 28, 28, 1)).astype(np.float32))
    keys = image_keys(jax.random.key(7), jnp.arange(6))
    n, sigma = 37, 0.9
    full = jax.jit(lambda xx: vote_counts(logits, xx, keys, sigma, n, 10, chunk_size=128))(x)
    mine = jax.jit(lambda xx: sweep.scheduled_vote_counts(logits, xx, keys, sigma, n, 10, chunk_size=128))(x)
    np.testing.assert_array_equal(np.asarray(mine.counts), np.asarray(full.counts))
    assert np.asarray(mine.evaluations).tolist() == [n] * 6
    stopped = [jax.jit(lambda xx, kk, c=c: sweep.scheduled_vote_counts(logits, xx, kk, 0.2, n, 10, chunk_size=c,
                                                                       stop=label_decided))(xs, ks)
               for c, xs, ks in ((128, x, keys), (256, x, keys), (128, x[2:], keys[2:]))]
    ev = [np.asarray(r.evaluations) for r in stopped]
    assert ev[0].tolist() == ev[1].tolist() and ev[0][2:].tolist() == ev[2].tolist()
    assert set(ev[0].tolist()) <= {4, 8, 16, 32, 37} and ev[0].min() < n
    lab = np.asarray(vote_counts(logits, x, keys, 0.2, n, 10, chunk_size=128).counts).argmax(-1)
    assert np.asarray(stopped[0].counts).argmax(-1).tolist() == lab.tolist()
    # inactive points draw nothing
    off = sweep.scheduled_vote_counts(logits, x, keys, sigma, jnp.where(jnp.arange(6) % 2 == 0, n, 0), 10,
                                      chunk_size=128)
    assert np.asarray(off.evaluations).tolist() == [n, 0] * 3


def test_scheduled_votes_with_eval_rows_are_identical():
    """eval_rows only splits each chunk's model calls (and skips its empty tail): with a
    batch-invariant model the counts and evaluations are those of whole-chunk calls."""
    from rsjax.oracle import image_keys
    from rsjax.smoothing import label_decided

    w = jnp.asarray(np.random.default_rng(3).normal(size=(10, 28, 28, 1)).astype(np.float32) * 0.05)
    logits = lambda z: jnp.sum(z[:, None] * w[None], axis=(2, 3, 4))  # noqa: E731
    x = jnp.asarray(np.random.default_rng(4).uniform(0, 1, (6, 28, 28, 1)).astype(np.float32))
    keys = image_keys(jax.random.key(8), jnp.arange(6))
    n = jnp.asarray([37, 0, 37, 5, 37, 37], jnp.int32)
    runs = [jax.jit(lambda xx, er=er: sweep.scheduled_vote_counts(logits, xx, keys, 0.5, n, 10, chunk_size=128,
                                                                  stop=label_decided, eval_rows=er))(x)
            for er in (None, 32, 16)]
    for r in runs[1:]:
        np.testing.assert_array_equal(np.asarray(r.counts), np.asarray(runs[0].counts))
        np.testing.assert_array_equal(np.asarray(r.evaluations), np.asarray(runs[0].evaluations))


def test_param_oracle_uses_the_model_cpu_block():
    """A CIFAR ResNet's attack oracle evaluates in its 32-row CPU blocks (the MLP's stays whole),
    and answers as the model does."""
    from rsjax.classifier import Classifier
    from rsjax.models import get_model_spec

    spec = get_model_spec("cifar_resnet20")
    clf = Classifier(spec, spec.init(jax.random.key(2)))
    expect = 32 if jax.default_backend() == "cpu" else None
    assert clf.forward_block == expect and _mlp().forward_block is None
    x = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (40, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(clf.predict(np.asarray(x)))
    y = y.at[::3].set((y[::3] + 1) % 10)
    params = sweep.OracleParams(clf.variables, jnp.float32(1.0), jnp.int32(1), jnp.int32(1))
    ans = jax.jit(lambda p, xx, yy: sweep.ParamOracle(sweep._apply_fn(clf), p, 10, "none", rows=40,
                                                      eval_rows=32).decide(xx, yy))(params, x, y)
    assert np.asarray(ans.adversarial).tolist() == [i % 3 == 0 for i in range(40)]


# ------------------------------------------------------------------------------------ real runs

def test_smoke_run_outputs(smoke_reference):
    out = smoke_reference
    for name in ("config.json", "env.json", "records.jsonl", "certify.jsonl", "accuracy.jsonl", "summary.csv",
                 "report.md", "fig5_distortion_vs_accuracy.png", "fig4_certified_accuracy.png"):
        assert (out / name).is_file(), name
    cfg = sweep.config_from_dict(json.loads((out / "config.json").read_text()))
    recs = read_records(out / "records.jsonl")
    n_settings = len(sweep.enumerate_settings(cfg))
    assert len(recs) == n_settings * cfg.n_images
    assert len({r["key"] for r in recs}) == len(recs)
    assert (out / "reference.jsonl").is_file() and (out / "findings.csv").is_file()
    rs = [r for r in recs if r["criterion"] != "none"]
    assert {r["criterion"] for r in rs} == {"label", "level"}
    assert all(r["radius"] is not None and r["certify"] == {"n0": cfg.certify_n0, "n": cfg.certify_n,
                                                             "alpha": cfg.certify_alpha} for r in rs)
    assert all(r["reference_kind"] == "smoothed" for r in rs)
    for r in recs:
        assert r["queries"] <= cfg.max_queries  # the evaluator's calls are counted apart
        if r["status"] == "attacked":
            assert r["success"] and r["verified_l2"] > 0 and r["verified_l2"] >= r["l2"] * (1 - 1e-6)
            assert r["verified_level"] >= r["p_a"] if r["criterion"] != "none" else r["verified_level"] == 1.0
            if r["criterion"] != "none":
                assert 0.0 <= r["verified_level_low"] <= r["verified_level"] <= r["verified_level_high"] <= 1.0
                assert r["verification_calls"] >= r["clean_calls"] + 1
        if r["status"] == "misclassified":
            assert r["verified_l2"] == 0.0 and r["clean_level_low"] >= 0
        if r["status"] in ("smoothed_abstain", "smoothed_wrong"):
            assert not r["success"] and r["l2"] is None and r["queries"] == 0
    for r in rs:  # evaluations never exceed the nominal n per query
        assert r["evaluations"] <= r["queries"] * r["n"]
    # Cohen's theorem: within the certified radius no point reaches level 1/2 (up to alpha and the
    # test's error): at most 2 % of verified distortions may lie inside it
    with_radius = [r for r in rs if r["success"] and (r["radius"] or 0) > 0]
    inside = [r for r in with_radius if r["verified_l2"] < r["radius"]]
    assert with_radius and len(inside) <= 0.02 * len(with_radius), (len(inside), len(with_radius))
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == cfg.seed and env["devices"]


def test_kill_and_resume_matches_uninterrupted(tmp_path, smoke_cache, smoke_reference):
    out = tmp_path / "killed"
    env = _env(smoke_cache)
    proc = subprocess.Popen(_sweep_cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recs = out / "records.jsonl"
    deadline = time.time() + 1200
    try:
        while time.time() < deadline and proc.poll() is None:
            if recs.is_file() and len(recs.read_bytes().splitlines()) >= 12:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the smoke run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = len(read_records(recs))
    assert partial >= 12
    # env.json as a kill in the middle of a non-atomic rewrite (rsjax before session 12) left it:
    # the resume rewrites it instead of failing on it
    env_json = out / "env.json"
    env_json.write_text(env_json.read_text()[:20])
    p = subprocess.run(_sweep_cmd(out), env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    env_info = json.loads(env_json.read_text())
    assert "seed" in env_info and "peak_memory" in env_info, sorted(env_info)
    for name in ("records.jsonl", "certify.jsonl", "accuracy.jsonl"):
        got_lines = read_records(out / name)
        got, ref = _strip(got_lines), _strip(read_records(smoke_reference / name))
        assert len(got) == len(got_lines), f"duplicates in {name}"
        assert set(got) == set(ref), name
        diff = [k for k in ref if got[k] != ref[k]]
        assert not diff, f"{name}: {len(diff)} records differ, e.g. {diff[:2]}"
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["event"] for r in runs].count("start") == 2


def test_one_and_two_devices_give_identical_attacks(tmp_path):
    """All three attacks under RS (level, n = 5 and n = 12 so votes take several rounds), and
    RayS without RS, on 6 images in a batch of 8: two CPU devices vs one, in a subprocess with
    two forced CPU devices. Every per-image output is bit-identical (issue #6)."""
    script = textwrap.dedent("""
        import json, sys
        import jax, jax.numpy as jnp, numpy as np
        assert jax.device_count() == 2, jax.devices()
        from rsjax import sweep
        from rsjax.attacks import get_attack
        sweep.enable_compilation_cache()
        from rsjax.classifier import Classifier
        from rsjax.models import get_model_spec
        spec = get_model_spec("fmnist_mlp")
        clf = Classifier(spec, spec.init(jax.random.key(3)))
        rng = np.random.default_rng(1)
        x = rng.uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
        y = clf.predict(x)
        ids = np.array([11, 3, 7, 20, 5, 9])
        mesh = sweep.make_mesh()
        fields = ("x_adv", "l2", "linf", "success", "status", "queries", "evaluations", "steps",
                  "trace_queries", "trace_l2", "trace_linf")
        out = {}
        for name, opts, kind, n, k in [("hsja", {"init_num_evals": 10, "probe_batch": 10}, "level", 12, 6),
                                       ("surfree", {}, "level", 5, 3), ("rays", {}, "level", 5, 3),
                                       ("rays", {}, "none", 1, 1)]:
            params = sweep.OracleParams(clf.variables, jnp.float32(0.5), jnp.int32(n), jnp.int32(k))
            res = []
            for m in (None, mesh):
                progs = sweep.AttackPrograms(get_attack(name, **opts), sweep._apply_fn(clf), 10, kind, m)
                res.append(sweep.run_attack(progs, params, 10, x, y, ids, jax.random.key(0), 40, 8))
            a, b = res
            differ = [f for f in fields if not np.array_equal(getattr(a, f), getattr(b, f))]
            out[f"{name}-{kind}"] = [differ, a.queries.tolist(), a.evaluations.tolist(), a.status.tolist()]
        json.dump(out, sys.stdout)
    """)
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert len(out) == 4
    for name, (differ, queries, evaluations, status) in out.items():
        assert differ == [], f"{name}: {differ} differ between 1 and 2 devices"
        assert max(queries) > 1  # attacks ran (not all images misclassified at query 0)
        assert "attacked" in status
    n = 12  # HSJA's votes stopped early somewhere (the schedule was exercised)
    assert any(e < q * n for q, e in zip(out["hsja-level"][1], out["hsja-level"][2]))


def test_given_checkpoints_replace_models(tmp_path):
    from rsjax.checkpoints import read_checkpoint_header, save_checkpoint

    clf = _mlp()
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, "fmnist_mlp", clf.variables, {"note": "test"})
    cfg = sweep.with_checkpoints(sweep.preset("smoke"), {"mine": str(path)}, sigmas=[0.3])
    (m,) = cfg.models
    assert m.name == "mine" and m.recipe is None and m.checkpoint == str(path.resolve())
    assert m.checkpoint_sha256 == read_checkpoint_header(path)["sha256"] and m.sigmas == (0.3,)
    assert cfg.arch == "fmnist_mlp"
    classifiers, info = sweep.prepare_models(cfg, lambda s: None, tmp_path)
    assert set(classifiers) == {"mine"} and info["mine"]["trained_now"] is False
    save_checkpoint(path, "fmnist_mlp", clf.variables, {"note": "changed"})
    with pytest.raises(InputError, match="changed"):
        sweep.prepare_models(cfg, lambda s: None, tmp_path)


def _sweep_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_script", REPO / "experiments" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_attack_options_from_the_command_line_join_the_presets(tmp_path):
    """--attack-option ATTACK:KEY=VALUE sets one config field (a Python literal), keeps the preset's
    other options for that attack, and goes into the configuration (so a resumed run with other
    options is refused as another configuration)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_script", REPO / "experiments" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.parse_args(["--preset", "smoke", "--attack-option", "hsja:gamma=2.0", "--attack-option",
                           "hsja:init_num_evals=20", "--attack-option", "rays:chunk_steps=7"])
    cfg = mod.build_config(args)
    assert cfg.attack_options == {"hsja": {"init_num_evals": 20, "probe_batch": 10, "gamma": 2.0},
                                  "rays": {"chunk_steps": 7}}
    assert cfg.to_dict()["attack_options"]["hsja"]["gamma"] == 2.0
    assert sweep.preset("smoke").attack_options == {"hsja": {"init_num_evals": 10, "probe_batch": 10}}
    open_run_dir(tmp_path, cfg.to_dict())
    with pytest.raises(InputError, match="attack_options"):
        sweep.run_sweep(sweep.preset("smoke"), tmp_path, progress=False)


@pytest.mark.parametrize("flags, named", [
    (["--sigmas", "-1"], "got -1.0"),
    (["--sigmas", "0"], "got 0.0"),
    (["--ns", "0"], "n must be an integer >= 1, got 0"),
    (["--level-ns", "0"], "got 0"),
    (["--pas", "1.5"], "P_a must lie in the open interval (0, 1), got 1.5"),
    (["--pas", "0"], "got 0.0"),
    (["--queries", "0"], "max_queries must be an integer >= 1, got 0"),
    (["--images", "0"], "n_images must be an integer >= 1, got 0"),
    (["--eval-images", "-5"], "got -5"),
    (["--certify-n", "0"], "certify_n must be an integer >= 1, got 0"),
    (["--reference-n", "0"], "reference_n must be an integer >= 1, got 0"),
    (["--verify-calls", "0"], "got 0"),
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["--attacks", "foo"], "unknown attack 'foo'"),
    (["--checkpoint", "foo"], "--checkpoint takes NAME=PATH, got 'foo'"),
    (["--attack-option", "hsja"], "--attack-option takes ATTACK:KEY=VALUE, got 'hsja'"),
    (["--attack-option", "hsja:gamma"], "--attack-option takes ATTACK:KEY=VALUE, got 'hsja:gamma'"),
    (["--attack-option", "psj:grid=512"], "attack options for 'psj', which the sweep does not run"),
    (["--attack-option", "hsja:no_such_field=1"], "no_such_field"),
    (["--attacks", "psj", "--attack-option", "psj:grid=1"], "grid must be an integer >= 2, got 1"),
    (["--checkpoint", "a=/nonexistent/w.ckpt"], "/nonexistent/w.ckpt"),
    (["--data", "npz:/nonexistent/d.npz"], "/nonexistent/d.npz"),
])
def test_bad_sweep_flags_exit_2_naming_the_value(tmp_path, capsys, flags, named):
    """Each of the sweep's own flags, given a bad value: exit status 2 and one message naming it,
    before any model is trained."""
    main = _sweep_main()
    argv = ["--preset", "smoke", "--no-progress", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]
    assert main(argv + flags) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert "training" not in err

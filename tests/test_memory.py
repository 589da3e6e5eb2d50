"""Memory budget and compute dtype (rsjax/memory.py; issue 17): the budget -> vote chunk and
attack batch derivation, bad budgets, a run's peak RSS under a tight budget, the bfloat16
agreement check (refused and accepted) and what env.json records."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from rsjax import Classifier, get_model_spec
from rsjax import memory
from rsjax.errors import InputError
from rsjax.memory import GiB, CallCost

REPO = Path(__file__).resolve().parents[1]


def _sweep_main():
    spec = importlib.util.spec_from_file_location("sweep_script", REPO / "experiments" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_plan_is_monotone_power_of_two_and_within_budget(monkeypatch):
    cost = CallCost(fixed=10 << 20, per_row=3 << 20)  # a MobileNet-sized model call
    monkeypatch.setattr(memory, "call_cost", lambda arch, dtype="float32": cost)
    prev = None
    for gib in (1.0, 1.25, 1.5, 2, 3, 4, 6, 8, 16, 64):
        p = memory.plan(arch="fmnist_mlp", budget=int(gib * GiB), vote_chunk=2048, attack_batch=64,
                        data_bytes=50 << 20, points=50)
        assert p.vote_chunk & (p.vote_chunk - 1) == 0 and 1 <= p.vote_chunk <= 2048
        assert 1 <= p.attack_batch <= 64
        assert p.estimated_peak_bytes <= p.budget_bytes
        assert p.binds == (p.vote_chunk < 2048 or p.attack_batch < 64)
        if prev is not None:
            assert p.vote_chunk >= prev.vote_chunk and p.attack_batch >= prev.attack_batch
        prev = p
    assert not prev.binds and prev.vote_chunk == 2048  # a large budget changes nothing
    # the chunk never exceeds the configured one, and is bucketed (few distinct programs)
    chunks = {memory.plan(arch="fmnist_mlp", budget=int(g * GiB), vote_chunk=512).vote_chunk
              for g in np.linspace(1, 64, 40)}
    assert chunks <= {1 << k for k in range(10)} and max(chunks) == 512


def test_call_cost_from_xla_is_linear_in_rows():
    c = memory.call_cost("fmnist_mlp")
    assert c.per_row > 784 * 4  # at least the noisy input row
    # the fit (4 and 8 rows) predicts a 64-row block within 25 %
    got = memory.block_bytes("fmnist_mlp", "float32", 64)
    assert abs(got - c.bytes(64)) <= 0.25 * got


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
def test_bad_budget_values_are_refused(value):
    with pytest.raises(InputError, match="--memory-budget"):
        memory.parse_budget(value)
    assert memory.parse_budget(None) is None and memory.parse_budget("1.5") == int(1.5 * GiB)


def test_too_small_budget_is_refused_with_exit_2(capsys):
    with pytest.raises(InputError, match=r"memory budget 0\.1 GiB is too small"):
        memory.plan(arch="fmnist_mlp", budget=int(0.1 * GiB), vote_chunk=2048)
    main = _sweep_main()
    assert main(["--preset", "smoke", "--memory-budget", "0", "--out", "/nonexistent/x"]) == 2
    assert "--memory-budget must be a positive number of GiB, got '0'" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--memory-budget", "0.2", "--out", "/nonexistent/x"]) == 2
    assert "memory budget 0.2 GiB is too small" in capsys.readouterr().err


def test_default_budget_and_peak_memory():
    assert memory.default_budget() > 0.1 * GiB
    peak = memory.peak_memory()
    assert peak["peak_rss_bytes"] > 50 << 20


def test_tight_budget_run_stays_under_it():
    """A subprocess (its own ru_maxrss) running the study's votes and CERTIFY with the chunk a
    0.8 GiB budget allows the MLP (configured chunk 4096): the plan binds, and the peak RSS stays under the budget."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "memory_budget.py"), "--worker", "--arch", "fmnist_mlp",
           "--budget", "0.8", "--n", "100", "--images", "2", "--random-weights", "--vote-chunk", "4096"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    row = json.loads(p.stdout.strip().splitlines()[-1])
    assert row["plan"]["binds"] and row["vote_chunk"] < 4096
    assert row["peak_rss_gib"] < 0.8, row


def _bias_model(bias):
    """fmnist_mlp whose logits are its last layer's bias (kernel zero): constant decisions."""
    spec = get_model_spec("fmnist_mlp")
    v = jax.tree_util.tree_map(np.asarray, spec.init(jax.random.PRNGKey(0)))
    last = sorted(k for k in v["params"] if k.startswith("Dense"))[-1]
    v["params"][last] = {"kernel": np.zeros_like(v["params"][last]["kernel"]),
                         "bias": np.asarray(bias, np.float32)}
    return Classifier(spec, v)


def test_bfloat16_refused_when_it_disagrees_and_accepted_when_it_agrees():
    images = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    # f32: class 1 (1000.01 > 1000); bf16 rounds both to 1000 and the tie goes to class 0
    tied = _bias_model([1000.0, 1000.01] + [0.0] * 8)
    with pytest.raises(InputError, match=r"bfloat16 agrees with float32 on only 0\.00%"):
        memory.cast_checked(tied, "bfloat16", images, (0.25,), name="tied")
    clear = _bias_model([0.0, 10.0] + [0.0] * 8)
    low, check = memory.cast_checked(clear, "bfloat16", images, (0.25, 0.5))
    assert low.dtype == "bfloat16" and check["accepted"] and check["agreement"] == 1.0
    assert set(check["per_sigma"]) == {0.25, 0.5} and check["evaluations"] == 4 * (1 + 2 * 16)
    leaf = jax.tree_util.tree_leaves(low.variables)[0]
    assert leaf.dtype == np.dtype("bfloat16") and low.logits(images).dtype == np.float32
    assert memory.cast_checked(clear, "float32", images, (0.25,)) == (clear, None)
    with pytest.raises(InputError, match="dtype must be one of"):
        memory.check_dtype("float16")


def test_env_json_records_plan_dtype_check_and_peak_memory(tmp_path, monkeypatch):
    """A bfloat16 sweep (one cheap task): env.json carries the memory plan, the agreement
    check and the peak memory; config.json the dtype (left out at float32, so earlier run
    directories keep their configuration)."""
    from rsjax.cache import cache_dir
    from rsjax.study.config import config_from_dict, preset
    from rsjax.study.run import run_sweep

    cfg = preset("smoke")
    assert "dtype" not in cfg.to_dict()
    cfg = dataclasses.replace(cfg, dtype="bfloat16", eval_images=64, certify_images=8).validate()
    plan = {"vote_chunk": cfg.vote_chunk, "budget_bytes": 1}
    out = run_sweep(cfg, tmp_path / "run", progress=False, cache=os.environ.get("RSJAX_TEST_CACHE") or cache_dir(), log=lambda m: None,
                    write_report=False, max_tasks=1, memory_plan=plan)
    env = json.loads((out / "env.json").read_text())
    assert env["memory_plan"] == plan
    assert env["peak_memory"]["peak_rss_bytes"] > 0
    checks = env["dtype_check"]
    assert set(checks) == {m.name for m in cfg.models}
    assert all(c["accepted"] and c["agreement"] >= 0.99 and c["dtype"] == "bfloat16" for c in checks.values())
    saved = json.loads((out / "config.json").read_text())
    assert saved["dtype"] == "bfloat16" and config_from_dict(saved) == cfg


def test_cli_certify_and_attack_take_budget_and_dtype(tmp_path, capsys):
    """``rsjax certify`` / ``rsjax attack``: a budget too small exits 2 naming it; a budget that
    binds lowers the chunk (recorded in the run's configuration); bfloat16 is refused where it
    disagrees (exit 2) and recorded with its agreement where it agrees."""
    from rsjax.checkpoints import save_checkpoint
    from rsjax.cli import main
    from rsjax.results import config_sidecar

    for name, bias in (("tied", [1000.0, 1000.01] + [0.0] * 8), ("clear", [0.0, 10.0] + [0.0] * 8)):
        save_checkpoint(tmp_path / f"{name}.ckpt", "fmnist_mlp", _bias_model(bias).variables)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.ones(3, np.int64))
    base = ["--data", f"npz:{tmp_path / 'd.npz'}", "--sigma", "0.25"]

    def certify(ckpt, out, *extra):
        return main(["certify", "--checkpoint", str(tmp_path / ckpt), *base, "--n0", "10", "--n", "50",
                     "--out", str(tmp_path / out), *extra])

    assert certify("clear.ckpt", "a.tsv", "--memory-budget", "0.1") == 2
    assert "memory budget 0.1 GiB is too small" in capsys.readouterr().err
    assert certify("tied.ckpt", "b.tsv", "--dtype", "bfloat16") == 2
    assert "agrees with float32 on only 0.00%" in capsys.readouterr().err
    assert certify("clear.ckpt", "c.tsv", "--dtype", "bfloat16", "--memory-budget", "0.8", "--chunk-size",
                   "1048576") == 0
    cfg = json.loads(config_sidecar(tmp_path / "c.tsv").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["dtype_agreement"] == 1.0 and cfg["chunk_size"] < 1048576
    assert main(["attack", "--checkpoint", str(tmp_path / "clear.ckpt"), *base, "--n", "5", "--attack", "rays",
                 "--queries", "20", "--memory-budget", "0.8", "--out", str(tmp_path / "r.jsonl")]) == 0
    cfg = json.loads(config_sidecar(tmp_path / "r.jsonl").read_text())
    assert "dtype" not in cfg and cfg["chunk_size"] >= 1 and cfg["batch_size"] >= 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_is_the_program_s_own_not_its_parent_s():
    """ru_maxrss survives fork + exec (a sweep started by a large process would report the
    parent's peak); peak_memory reports the started program's own high-water mark."""
    parent = textwrap.dedent("""
        import json, resource, subprocess, sys
        big = bytearray(800 << 20)
        for i in range(0, len(big), 4096):
            big[i] = 1
        child = "import json; from rsjax.memory import peak_memory; print(json.dumps(peak_memory()))"
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
        raw = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
        inherited = int(subprocess.run([sys.executable, "-c", raw], capture_output=True, text=True).stdout)
        print(json.dumps({"child": json.loads(out), "inherited": inherited}))
    """)
    p = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["inherited"] > 700 << 20  # what ru_maxrss would have said
    assert got["child"]["peak_rss_bytes"] < 600 << 20

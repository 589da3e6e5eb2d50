"""`rsjax certify --out LOG` and `rsjax attack --out RECORDS.jsonl` resume like the sweep: a real
run is SIGKILLed after its first rows reach the disk and rerun with the same command; the result
equals an uninterrupted run's (same rows, nothing lost, nothing duplicated, rows already written
kept as they were). Another configuration on the same file is refused (exit 2), and output paths
that cannot be written, or weights that are not what `rsjax convert` reads, are named (exit 2)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rsjax.cli import main
from rsjax.results import read_records

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from rsjax.cli import main; sys.exit(main())"]
N_CERTIFY, CERTIFY_BATCH = 30, 2
N_ATTACK, ATTACK_BATCH = 16, 4


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """This module's $RSJAX_CACHE (XLA executables shared by its runs; never ~/.cache/rsjax)."""
    return tmp_path_factory.mktemp("rsjax-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache, monkeypatch):
    monkeypatch.setenv("RSJAX_CACHE", str(cache))


@pytest.fixture(scope="module")
def model(tmp_path_factory, fmnist_dir) -> Path:
    """fmnist_mlp trained for one epoch on 2,000 images (~70 % accuracy: rows vary)."""
    from rsjax.data import load_dataset
    from rsjax.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "mlp.ckpt"
    data = load_dataset("fashion-mnist:train", data_dir=fmnist_dir, limit=2000)
    train(TrainConfig(arch="fmnist_mlp", epochs=1, batch_size=64), data, out=out, progress=False,
          log=lambda *_: None)
    return out


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env["RSJAX_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    return env


def _run(argv: list[str], cache: Path) -> subprocess.CompletedProcess:
    p = subprocess.run(CLI + argv, env=_env(cache), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _kill_once(argv: list[str], cache: Path, ready) -> None:
    """Start ``rsjax argv`` and SIGKILL it as soon as ``ready()`` holds."""
    proc = subprocess.Popen(CLI + argv, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _certify_argv(model: Path, fmnist_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["certify", "--checkpoint", str(model), "--data", "fashion-mnist:test", "--data-dir", str(fmnist_dir),
            "--limit", str(N_CERTIFY), "--sigma", "0.25", "--n0", "50", "--n", "20000",
            "--batch-size", str(CERTIFY_BATCH), *extra, "--out", str(out), "--json"]


def _attack_argv(model: Path, fmnist_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["attack", "--checkpoint", str(model), "--data", "fashion-mnist:test", "--data-dir", str(fmnist_dir),
            "--limit", str(N_ATTACK), "--attack", "rays", "--queries", "200", "--sigma", "0.25", "--n", "4",
            "--seed", "7", "--batch-size", str(ATTACK_BATCH), *extra, "--out", str(out), "--json"]


def _log_rows(path: Path) -> list[list[str]]:
    """The complete rows of a certify log, as lists of fields (header checked)."""
    data = path.read_bytes() if path.is_file() else b""
    lines = data[: data.rfind(b"\n") + 1].decode().splitlines()
    if not lines:
        return []
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    return [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def certify_ref(model, fmnist_dir, cache, tmp_path_factory):
    """An uninterrupted `rsjax certify --out` run: (log, summary)."""
    out = tmp_path_factory.mktemp("certify-ref") / "ref.tsv"
    p = _run(_certify_argv(model, fmnist_dir, out), cache)
    return out, json.loads(p.stdout)


@pytest.fixture(scope="module")
def attack_ref(model, fmnist_dir, cache, tmp_path_factory):
    """An uninterrupted `rsjax attack --out` run: (records file, --json output)."""
    out = tmp_path_factory.mktemp("attack-ref") / "ref.jsonl"
    p = _run(_attack_argv(model, fmnist_dir, out), cache)
    return out, json.loads(p.stdout)


# --------------------------------------------------------------------------- kill and resume

def test_certify_kill_and_resume_matches_uninterrupted(certify_ref, model, fmnist_dir, cache, tmp_path):
    ref, ref_summary = certify_ref
    want = _log_rows(ref)
    assert [int(r[0]) for r in want] == list(range(N_CERTIFY))
    assert json.loads(Path(f"{ref}.config.json").read_text())["sigma"] == 0.25

    out = tmp_path / "killed.tsv"
    argv = _certify_argv(model, fmnist_dir, out)
    _kill_once(argv, cache, lambda: len(_log_rows(out)) >= CERTIFY_BATCH)
    partial = _log_rows(out)
    assert CERTIFY_BATCH <= len(partial) < N_CERTIFY
    with open(out, "a") as f:  # the torn line a kill in the middle of a write would leave
        f.write(f"{N_CERTIFY - 1}\t3\t3\t0.5")

    p = _run(argv, cache)
    summary = json.loads(p.stdout)
    got = _log_rows(out)
    assert got[: len(partial)] == partial  # kept as written (time too): not recomputed
    assert [r[0] for r in got] == [r[0] for r in want]  # same images, same order, no duplicates
    assert [r[:5] for r in got] == [r[:5] for r in want]  # idx label predict radius correct: identical
    assert summary["resumed"] == len(partial) and f"resuming: {len(partial)} already" in p.stderr
    timing = {"seconds_per_image", "resumed", "log"}
    assert {k: v for k, v in summary.items() if k not in timing} == \
           {k: v for k, v in ref_summary.items() if k not in timing}


def test_attack_kill_and_resume_matches_uninterrupted(attack_ref, model, fmnist_dir, cache, tmp_path):
    ref, ref_out = attack_ref
    want = read_records(ref)
    assert sorted(r["index"] for r in want) == list(range(N_ATTACK))

    out = tmp_path / "killed.jsonl"
    argv = _attack_argv(model, fmnist_dir, out)
    _kill_once(argv, cache, lambda: out.is_file() and len(read_records(out)) >= ATTACK_BATCH)
    partial = out.read_text()
    assert ATTACK_BATCH <= len(read_records(out)) < N_ATTACK
    with open(out, "a") as f:  # a torn last record
        f.write('{"key": "config=')

    p = _run(argv, cache)
    got = read_records(out)
    assert out.read_text().startswith(partial)  # records already written kept as they were
    assert len({r["key"] for r in got}) == len(got) == N_ATTACK  # no duplicates, nothing lost
    assert {r["key"]: r for r in got} == {r["key"]: r for r in want}  # bit-identical records
    result = json.loads(p.stdout)
    assert result["images"] == ref_out["images"]
    n_partial = partial.count("\n")
    assert result["summary"]["n_resumed"] == n_partial
    varying = {"wall_s", "wall_s_per_image", "n_resumed"}
    assert {k: v for k, v in result["summary"].items() if k not in varying} == \
           {k: v for k, v in ref_out["summary"].items() if k not in varying}


# ----------------------------------------------------------------------- configuration refused

def _copy_run(src: Path, dst: Path, sidecar: bool = True) -> Path:
    shutil.copy(src, dst)
    if sidecar:
        shutil.copy(f"{src}.config.json", f"{dst}.config.json")
    return dst


@pytest.mark.parametrize("extra, differs", [
    (["--sigma", "0.5"], "sigma: 0.25 -> 0.5"),
    (["--n", "10000"], "n: 20000 -> 10000"),
    (["--n0", "20"], "n0: 50 -> 20"),
    (["--alpha", "0.01"], "alpha: 0.001 -> 0.01"),
    (["--seed", "1"], "seed: 0 -> 1"),
    (["--batch-size", "3"], "batch_size: 2 -> 3"),
    (["--per-class", "1"], "per_class: null -> 1"),
])
def test_certify_refuses_another_configuration(certify_ref, model, fmnist_dir, tmp_path, capsys, extra, differs):
    log = _copy_run(certify_ref[0], tmp_path / "c.tsv")
    before = log.read_bytes()
    argv = _certify_argv(model, fmnist_dir, log, *extra)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{log} holds results of another configuration" in err and differs in err
    assert log.read_bytes() == before


def test_certify_refuses_another_checkpoint_or_limit(certify_ref, model, fmnist_dir, tmp_path, capsys):
    import jax

    from rsjax.checkpoints import save_checkpoint
    from rsjax.models import get_model_spec

    log = _copy_run(certify_ref[0], tmp_path / "c.tsv")
    other = tmp_path / "other.ckpt"
    save_checkpoint(other, "fmnist_mlp", get_model_spec("fmnist_mlp").init(jax.random.key(3)))
    argv = _certify_argv(model, fmnist_dir, log)
    argv[argv.index("--checkpoint") + 1] = str(other)
    assert main(argv) == 2 and "checkpoint_sha256: " in capsys.readouterr().err
    argv = _certify_argv(model, fmnist_dir, log)
    argv[argv.index("--limit") + 1] = "20"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "limit: 30 -> 20" in err and "data_sha256: " in err

    # the same configuration from a copied checkpoint (another path, same digest) resumes: all done
    moved = tmp_path / "moved.ckpt"
    shutil.copy(model, moved)
    argv = _certify_argv(model, fmnist_dir, log)
    argv[argv.index("--checkpoint") + 1] = str(moved)
    before = log.read_bytes()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["resumed"] == N_CERTIFY
    assert log.read_bytes() == before


def test_certify_refuses_logs_it_cannot_check(certify_ref, model, fmnist_dir, tmp_path, capsys):
    bare = _copy_run(certify_ref[0], tmp_path / "bare.tsv", sidecar=False)  # e.g. an older rsjax's log
    assert main(_certify_argv(model, fmnist_dir, bare)) == 2
    assert f"{bare} already holds results but has no configuration file bare.tsv.config.json" in \
           capsys.readouterr().err
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    assert main(_certify_argv(model, fmnist_dir, other)) == 2
    assert f"{other} exists and is not a certify log" in capsys.readouterr().err
    assert other.read_text() == "my notes\n"


@pytest.mark.parametrize("extra, differs", [
    (["--queries", "100"], ["queries: 200 -> 100"]),
    (["--seed", "8"], ["seed: 7 -> 8"]),
    (["--n", "8"], ["n: 4 -> 8"]),
    (["--criterion", "level", "--pa", "0.5", "--limit", "8"],
     ['criterion: "label" -> "level"', "p_a: null -> 0.5", "limit: 16 -> 8", "n_images: 16 -> 8"]),
    (["--batch-size", "8"], ["batch_size: 4 -> 8"]),
    (["--option", "tolerance=0.01"], ["attack_options:", "0.001", "0.01"]),
])
def test_attack_refuses_another_configuration(attack_ref, model, fmnist_dir, tmp_path, capsys, extra, differs):
    rec = _copy_run(attack_ref[0], tmp_path / "r.jsonl")
    before = rec.read_bytes()
    assert main(_attack_argv(model, fmnist_dir, rec, *extra)) == 2
    err = capsys.readouterr().err
    assert f"{rec} holds results of another configuration" in err
    for d in differs:
        assert d in err
    assert rec.read_bytes() == before


def test_attack_another_attack_and_non_records_file(attack_ref, model, fmnist_dir, tmp_path, capsys):
    rec = _copy_run(attack_ref[0], tmp_path / "r.jsonl")
    argv = _attack_argv(model, fmnist_dir, rec)
    argv[argv.index("--attack") + 1] = "hsja"
    assert main(argv) == 2
    assert 'attack: "rays" -> "hsja"' in capsys.readouterr().err
    other = tmp_path / "notes.jsonl"
    other.write_text("not json\n")
    assert main(_attack_argv(model, fmnist_dir, other)) == 2
    assert f"{other} exists and is not a JSONL records file" in capsys.readouterr().err
    # all done: the same command recomputes nothing and writes nothing
    before = rec.read_bytes()
    assert main(_attack_argv(model, fmnist_dir, rec)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["n_resumed"] == N_ATTACK and out["images"] == attack_ref[1]["images"]
    assert rec.read_bytes() == before


# ------------------------------------------------------------------------------ unwritable --out

def _torch_like_weights(path: Path) -> Path:
    """A zip archive: passes convert's format check, so the --out check is what fails."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"")
    return path


def _commands(tmp_path: Path, out: str) -> dict[str, list[str]]:
    """Each writing command with ``--out out`` and a checkpoint that does not exist: the --out
    check must come first (before any loading)."""
    missing = str(tmp_path / "missing.ckpt")
    return {
        "certify": ["certify", "--checkpoint", missing, "--data", "fashion-mnist:test", "--sigma", "0.25",
                    "--out", out],
        "attack": ["attack", "--checkpoint", missing, "--data", "fashion-mnist:test", "--attack", "rays",
                   "--queries", "10", "--out", out],
        "convert": ["convert", "--arch", "cifar_resnet20", "--weights", str(_torch_like_weights(tmp_path / "w.pth")),
                    "--out", out],
        "train": ["train", "--arch", "fmnist_mlp", "--dataset", "fashion-mnist", "--limit", "10", "--epochs", "1",
                  "--init", missing, "--out", out],
    }


@pytest.mark.parametrize("command", ["certify", "attack", "convert", "train"])
@pytest.mark.parametrize("where", ["directory", "proc"])
def test_unwritable_out_exits_2_naming_the_path(tmp_path, capsys, command, where):
    out = str(tmp_path) if where == "directory" else "/proc/forbidden/x.out"
    assert main(_commands(tmp_path, out)[command]) == 2
    err = capsys.readouterr().err
    assert f"rsjax {command}: error: --out {out}" in err
    assert "missing.ckpt" not in err  # checked before the checkpoint is read


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
@pytest.mark.parametrize("command", ["certify", "attack", "convert", "train"])
def test_out_in_read_only_directory_exits_2(tmp_path, capsys, command):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = str(ro / "x.out")
    argv = _commands(tmp_path, out)[command]
    ro.chmod(0o500)
    try:
        assert main(argv) == 2
    finally:
        ro.chmod(0o700)
    assert f"--out {out} cannot be written" in capsys.readouterr().err


def test_unwritable_out_from_the_shell(tmp_path, cache):
    """What a user sees: exit status 2 and one line naming the path, no traceback."""
    p = subprocess.run(CLI + _commands(tmp_path, "/proc/forbidden/x.log")["certify"], env=_env(cache),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "/proc/forbidden/x.log" in p.stderr


@pytest.mark.parametrize("where", ["file", "proc", "read-only"])
def test_sweep_out_that_cannot_be_a_run_directory_exits_2(tmp_path, cache, where):
    """The sweep's --out: a file, a path under /proc, a read-only directory -> exit 2 naming it,
    before any model is trained or loaded."""
    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root may write into a read-only directory")
    out = {"file": tmp_path / "f.txt", "proc": Path("/proc/forbidden/run"), "read-only": tmp_path / "ro"}[where]
    if where == "file":
        out.write_text("not a directory\n")
    if where == "read-only":
        out.mkdir()
        out.chmod(0o500)
    try:
        p = subprocess.run([sys.executable, str(REPO / "experiments" / "sweep.py"), "--preset", "smoke",
                            "--no-progress", "--out", str(out)], env=_env(cache), capture_output=True,
                           text=True, timeout=300)
    finally:
        if where == "read-only":
            out.chmod(0o700)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and f"--out {out}" in p.stderr
    assert "training" not in p.stderr and "reusing cached checkpoint" not in p.stderr


# ---------------------------------------------------------------------- convert --weights checks

@pytest.mark.parametrize("name, content, expected", [
    ("w.pth", b"hello world\n", "PyTorch checkpoint written by torch.save"),
    ("w.th", pickle.dumps({"conv1.weight": [1.0]}, protocol=2), "PyTorch checkpoint written by torch.save"),
    ("w.pth", b"", "PyTorch checkpoint written by torch.save"),
    ("w.safetensors", b'{"a": 1}', ".safetensors file"),
])
def test_convert_names_a_weights_file_of_the_wrong_kind(tmp_path, capsys, name, content, expected):
    weights = tmp_path / name
    weights.write_bytes(content)
    out = tmp_path / "o.ckpt"
    assert main(["convert", "--arch", "cifar_resnet20", "--weights", str(weights), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--weights {weights} is not a" in err and expected in err
    assert not out.exists()
    assert main(["convert", "--arch", "cifar_resnet20", "--weights", str(tmp_path), "--out", str(out)]) == 2
    assert f"--weights {tmp_path} is not a file" in capsys.readouterr().err


# ------------------------------------------------------------------------------ --verify-pa

def test_attack_verify_pa_reports_verified_distortions(attack_ref, model, fmnist_dir, tmp_path, capsys):
    """--verify-pa 0.5 0.8: the attack's own fields are those of the run without it (the
    evaluator is never charged to the attack), each attacked image gets one verification per
    level, a verified point lies on the ray at t >= 1 (never nearer than the raw output), the
    summary's medians are those of the per-image values (unverified = inf); a rerun on the same
    --out resumes everything and reports the same; another --verify-pa on that file is refused."""
    rec = tmp_path / "v.jsonl"
    argv = _attack_argv(model, fmnist_dir, rec, "--verify-pa", "0.5", "0.8")
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    fields = ("index", "label", "status", "success", "l2", "linf", "queries", "evaluations")
    assert [{k: im[k] for k in fields} for im in out["images"]] == attack_ref[1]["images"]
    attacked = [im for im in out["images"] if im["status"] == "attacked"]
    assert attacked
    for im in out["images"]:
        assert [v["p_a"] for v in im["verified"]] == [0.5, 0.8]
        for v in im["verified"]:
            if v["verified"]:
                assert im["status"] == "attacked" and v["l2"] >= im["l2"] * (1 - 1e-5)
                assert 0 < v["level_calls"] <= 100 and v["calls"] >= v["level_calls"]
            else:
                assert v["l2"] is None and v["linf"] is None
    for k, s in enumerate(out["summary"]["verified"]):
        d = [np.inf if im["verified"][k]["l2"] is None else im["verified"][k]["l2"] for im in attacked]
        med = float(np.median(d))
        assert s["n_attacked"] == len(attacked)
        assert s["n_verified"] == sum(im["verified"][k]["verified"] for im in attacked)
        assert (s["median_l2"] is None and not np.isfinite(med)) or s["median_l2"] == pytest.approx(med)
    assert any(v["verified"] for im in attacked for v in im["verified"])
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["summary"]["n_resumed"] == N_ATTACK and again["images"] == out["images"]
    assert again["summary"]["verified"] == out["summary"]["verified"]
    assert main(_attack_argv(model, fmnist_dir, rec, "--verify-pa", "0.5")) == 2
    assert "verify_pa: [0.5, 0.8] -> [0.5]" in capsys.readouterr().err


def test_verify_rows_equal_one_verification_per_level():
    """The CLI's batched verification of several levels (items of one image share their calls'
    randomness) equals one rsjax.verify.verify_attack call per level with the sweep's verify key
    stream, on HSJA's outputs against g_{sigma,n} of a linear classifier."""
    import argparse

    import jax

    from rsjax.attacks import get_attack
    from rsjax.cli.attack import verify_rows
    from rsjax.models.linear import linear_logits_fn
    from rsjax.oracle import SmoothedOracle
    from rsjax.study.tasks import STREAM_VERIFY, stream_key
    from rsjax.verify import VerifyConfig, verify_attack

    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 6, 1)).astype(np.float32)
    w /= np.linalg.norm(w)
    x = (0.5 + 0.05 * rng.uniform(-1, 1, size=(3, 6, 6, 1))).astype(np.float32)
    b = -float((x.reshape(3, -1) @ w.ravel()).max()) - 0.3
    oracle = SmoothedOracle(linear_logits_fn(w, b), 2, 0.25, 4)
    y, ids = np.zeros(3, np.int64), np.array([4, 9, 2])
    res = get_attack("hsja").run(oracle, x, y, 3, 150, image_ids=ids, check_clean=False)
    args = argparse.Namespace(verify_pa=[0.5, 0.8], verify_calls=50, seed=3)
    rows = verify_rows(args, oracle, x, res, y, ids)
    for k, p in enumerate(args.verify_pa):
        v = verify_attack(oracle, x, res.x_adv, y, p, stream_key(3, STREAM_VERIFY), image_ids=ids,
                          config=VerifyConfig(calls=50))
        for i in range(3):
            got = rows[i][k]
            assert got["verified"] == bool(v.verified[i]) and got["calls"] == int(v.calls[i])
            assert got["l2"] == (float(v.l2[i]) if v.verified[i] else None)
            assert got["level"] == float(v.level[i])


@pytest.mark.parametrize("extra, message", [
    (["--verify-pa", "1.5"], "--verify-pa"),
    (["--verify-pa", "0.5", "0.5"], "repeated"),
    (["--verify-pa", "0.5", "--verify-calls", "0"], "--verify-calls"),
    (["--option", "tolerance"], "--option takes KEY=VALUE, got 'tolerance'"),
    (["--option", "no_such_field=1"], "no_such_field"),
    (["--option", "chunk_steps=0"], "chunk_steps must be an integer >= 1, got 0"),
])
def test_attack_verify_bad_values(model, fmnist_dir, tmp_path, capsys, extra, message):
    assert main(_attack_argv(model, fmnist_dir, tmp_path / "x.jsonl", *extra)) == 2
    assert message in capsys.readouterr().err


def test_attack_verify_needs_sigma(model, fmnist_dir, tmp_path, capsys):
    argv = [a for a in _attack_argv(model, fmnist_dir, tmp_path / "x.jsonl", "--verify-pa", "0.5")]
    for flag in ("--sigma", "--n"):
        i = argv.index(flag)
        del argv[i:i + 2]
    assert main(argv) == 2
    assert "--verify-pa 0.5 needs --sigma" in capsys.readouterr().err

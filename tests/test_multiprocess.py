"""Multi-process sweeps on JAX's distributed runtime (issue 17): the flags and variables that
place a process in a job, the disjoint shares of images, the default smoke sweep as 2 processes
on localhost (through scripts/multiprocess.sh) against the 1-process run, and a job whose
process 1 is SIGKILLed mid-run and which is then started again."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rsjax import sweep
from rsjax.errors import InputError
from rsjax.results import read_records
from rsjax.study import distributed
from sweep_helpers import REPO, merged, sweep_cmd, sweep_env

KINDS = ("records", "certify", "reference", "accuracy")


# ------------------------------------------------------------------------------------ unit

def test_resolve_flags_and_environment():
    r = distributed.resolve
    assert r(environ={}) is None  # nothing given: one process
    assert r(None, "1", None, environ={}) is None and r(None, 1, 0, environ={}) is None
    spec = r("127.0.0.1:1234", "3", "2", heartbeat_timeout=7, environ={})
    assert (spec.coordinator, spec.num_processes, spec.process_id, spec.slurm, spec.heartbeat_timeout) == \
        ("127.0.0.1:1234", 3, 2, False, 7)
    env = {"JAX_COORDINATOR_ADDRESS": "node1:99", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert r(environ=env) == distributed.ProcessSpec("node1:99", 4, 3)
    assert r(None, None, "1", environ=env).process_id == 1  # a flag wins over its variable
    assert r("[::1]:80", 2, 0, environ={}).coordinator == "[::1]:80"
    slurm = {"SLURM_JOB_ID": "17", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "0"}
    s = r(environ=slurm)
    assert s.slurm and s.coordinator is None and (s.num_processes, s.process_id) == (2, 1)
    assert r(environ={**slurm, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None


@pytest.mark.parametrize("args,env,match", [
    (("h:1", "2", "2"), {}, r"--process-id must be in \[0, 2\).*got 2"),
    (("h:1", "2", "-1"), {}, r"--process-id must be in \[0, 2\).*got -1"),
    (("h:1", "0", "0"), {}, "--num-processes must be an integer >= 1, got 0"),
    (("h:1", "two", "0"), {}, "--num-processes must be an integer, got 'two'"),
    (("localhost", "2", "0"), {}, "--coordinator must be HOST:PORT.*'localhost'"),
    (("h:70000", "2", "0"), {}, "--coordinator must be HOST:PORT.*'h:70000'"),
    ((None, "2", "0"), {}, "--coordinator HOST:PORT .* is needed"),
    (("h:1", "2", None), {}, "--process-id .* is needed"),
    (("h:1", None, "0"), {}, "--num-processes .* is needed"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x"},
     "JAX_PROCESS_ID must be an integer, got 'x'"),
])
def test_resolve_refuses_bad_values(args, env, match):
    with pytest.raises(InputError, match=match):
        distributed.resolve(*args, environ=env)


def test_cli_bad_process_flags_exit_2(capsys):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import sweep as cli
    finally:
        sys.path.pop(0)
    rc = cli.main(["--preset", "smoke", "--coordinator", "127.0.0.1:5", "--num-processes", "2", "--process-id", "5"])
    assert rc == 2
    assert "--process-id must be in [0, 2)" in capsys.readouterr().err
    rc = cli.main(["--preset", "smoke", "--heartbeat-timeout", "0", "--num-processes", "1"])
    assert rc == 2 and "--heartbeat-timeout" in capsys.readouterr().err


def test_failed_barrier_wait_is_a_peer_failed_error(monkeypatch):
    """A barrier wait that the runtime fails (a peer's heartbeats stopped while this process
    waited: CI saw process 0 finish its share first) is a PeerFailedError naming the barrier and
    saying how to resume, with the runtime's error chained."""
    import jax

    class Client:
        def wait_at_barrier(self, name, timeout_ms):
            assert name == "rsjax/done" and timeout_ms == distributed.BARRIER_TIMEOUT_MS
            raise RuntimeError("INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: "
                               "Task 1 heartbeat timeout.\nRPC: /xla.coordination.CoordinationService/Barrier")

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(distributed, "_client", lambda: Client())
    with pytest.raises(distributed.PeerFailedError, match=r"process 0 waited at barrier 'done': INTERNAL: "
                       r"Barrier failed .*Task 1 heartbeat timeout\. Records .*start the same job again") as info:
        distributed.barrier("done")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_certify_shares_are_disjoint_and_hold_own_attacked_images():
    certify = np.array([9, 4, 7, 1, 0, 3, 8, 2, 6, 5])
    attacked = np.array([4, 1, 3, 8, 6])
    for p in (1, 2, 3):
        shares = [sweep.certify_share(certify, attacked, i, p) for i in range(p)]
        assert sorted(np.concatenate(shares).tolist()) == sorted(certify.tolist())
        for i, s in enumerate(shares):
            pos = {int(v): k for k, v in enumerate(certify)}
            assert [pos[int(v)] for v in s] == sorted(pos[int(v)] for v in s)  # certify order kept
            assert set(sweep.process_slice(attacked, i, p).tolist()) <= set(s.tolist())
    assert sweep.certify_share(certify, attacked, 0, 1).tolist() == certify.tolist()


# ------------------------------------------------------------------------------------ real runs

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_cmd(out: Path, port: int, i: int, n: int = 2, extra: tuple = ()) -> list[str]:
    return sweep_cmd(out) + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                             "--process-id", str(i), "--heartbeat-timeout", "15", *extra]


def _assert_same_as_reference(out: Path, ref: Path, processes: int = 2, attacks: tuple | None = None) -> None:
    """Every per-image output of the merged per-process files equals the 1-process run's (its
    records of ``attacks`` when given); no key is written twice (in one file or across files);
    every process did its share."""
    for kind in KINDS:
        got, lines = merged(out, kind)
        want, _ = merged(ref, kind)
        if kind == "records" and attacks is not None:
            want = {k: r for k, r in want.items() if r["attack"] in attacks}
        assert lines == len(got), f"{kind}: {lines - len(got)} duplicated records"
        assert set(got) == set(want), f"{kind}: missing {len(set(want) - set(got))}, extra {len(set(got) - set(want))}"
        diff = [k for k in want if got[k] != want[k]]
        assert not diff, f"{kind}: {len(diff)} records differ, e.g. {diff[:2]}"
    for kind in ("records", "certify", "reference"):
        files = sorted(p.name for p in out.glob(f"{kind}*.jsonl"))
        assert files == [f"{kind}.p{i}.jsonl" for i in range(processes)], files
        assert all((out / f).stat().st_size > 0 for f in files), kind
    images = [{r["image"] for r in read_records(out / f"records.p{i}.jsonl")} for i in range(processes)]
    assert not set.intersection(*images)  # each image attacked by one process
    assert (out / "report.md").is_file() and (out / "summary.csv").is_file()


def test_two_processes_match_one(tmp_path, smoke_cache, smoke_reference):
    """The default smoke sweep started by scripts/multiprocess.sh as 2 processes on localhost:
    the merged records are those of the 1-process run."""
    out = tmp_path / "mp2"
    env = {**sweep_env(smoke_cache), "PYTHON": sys.executable}
    cmd = ["bash", str(REPO / "scripts" / "multiprocess.sh"), "2"] + sweep_cmd(out)[2:] + ["--heartbeat-timeout", "15"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines() == [str(out)]  # process 0 prints the directory
    _assert_same_as_reference(out, smoke_reference)
    for name in ("summary.csv", "findings.csv"):  # the report reads the merged records in image order
        assert (out / name).read_text() == (smoke_reference / name).read_text(), name
    events = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((e["event"], e["process"]) for e in events) == [("finish", 0), ("finish", 1), ("start", 0),
                                                                   ("start", 1)]


def test_killed_process_ends_job_and_restart_resumes(tmp_path, smoke_cache, smoke_reference):
    """The smoke sweep with RayS only (its records are the reference's RayS records; one attack
    keeps the test short) as 2 processes: SIGKILL process 1 once it has written records;
    process 0 is ended by the runtime (within the heartbeat timeout); starting the job again
    completes it with nothing lost or duplicated."""
    out = tmp_path / "killed"
    env = sweep_env(smoke_cache)
    port = _free_port()
    rays = ("--attacks", "rays")
    procs = [subprocess.Popen(_process_cmd(out, port, i, extra=rays), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    recs = out / "records.p1.jsonl"
    try:
        deadline = time.time() + 1200
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if recs.is_file() and len(recs.read_bytes().splitlines()) >= 6:
                break
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "the job ended before process 1 could be killed"
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=60)
        t_kill = time.time()
        err0 = procs[0].communicate(timeout=180)[1]
        ended_after = time.time() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode != 0, "process 0 went on without its peer"
    # ended by the runtime: aborted while computing, or its wait at a barrier failed (PeerFailedError)
    assert ("distributed service detected fatal errors" in err0
            or "another process of the job failed" in err0), err0[-2000:]
    assert ended_after < 120, ended_after
    partial, _ = merged(out, "records")
    assert len(partial) >= 6 and not (out / "report.md").exists()
    port = _free_port()
    t_restart = time.time()
    restart = [subprocess.Popen(_process_cmd(out, port, i, extra=rays), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=1800) for p in restart]
    failed = [f"process {i}: rc {p.returncode}\n{err[-3000:]}" for i, (p, (_, err)) in enumerate(zip(restart, results))
              if p.returncode != 0]
    assert not failed, "\n".join(failed)  # every failing process's own log, not only the first's
    _assert_same_as_reference(out, smoke_reference, attacks=("rays",))
    events = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(e["process"] for e in events if e["event"] == "start") == [0, 0, 1, 1]
    again = sorted((e["event"], e["process"]) for e in events if e["time"] >= t_restart)
    assert again == [("finish", 0), ("finish", 1), ("start", 0), ("start", 1)]


def test_verify_rays_with_no_item():
    """A batch none of whose images needs verifying (e.g. a 2-image share whose images are all
    misclassified or unattacked) is a valid call: empty results, no call of the oracle."""
    import jax

    from rsjax.verify import verify_rays

    def decide(*args):
        raise AssertionError("no point to test")

    z = np.zeros((0, 28, 28, 1), np.float32)
    v = verify_rays(decide, z, z, np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), jax.random.key(0))
    assert v.x.shape == (0, 28, 28, 1) and v.l2.shape == v.calls.shape == (0,)

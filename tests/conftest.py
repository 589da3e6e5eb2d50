"""Shared fixtures. Tests that need ../shared skip with a message when it is absent.

The tests never write to the user's rsjax cache (``~/.cache/rsjax`` or ``$RSJAX_CACHE``):
``$RSJAX_CACHE`` is set for the whole session (subprocesses included) to ``$RSJAX_TEST_CACHE``
when that is set (a cache kept between sessions: trained checkpoints, XLA executables), else to a
temporary directory removed at the end of the session. pytest-xdist workers inherit the
controller's directory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RSJAX_SHARED", REPO.parent / "shared"))

#: the session's temporary cache, exported so that xdist workers and subprocesses share it
_SESSION_CACHE = "RSJAX_TEST_SESSION_CACHE"


def pytest_configure(config):
    cache = os.environ.get("RSJAX_TEST_CACHE") or os.environ.get(_SESSION_CACHE)
    if not cache:
        cache = tempfile.mkdtemp(prefix="rsjax-test-cache-")
        os.environ[_SESSION_CACHE] = cache
        config._rsjax_owned_cache = cache
    config._rsjax_user_cache = os.environ.get("RSJAX_CACHE")
    os.environ["RSJAX_CACHE"] = cache


def pytest_unconfigure(config):
    if not hasattr(config, "_rsjax_user_cache"):
        return
    if config._rsjax_user_cache is None:
        os.environ.pop("RSJAX_CACHE", None)
    else:
        os.environ["RSJAX_CACHE"] = config._rsjax_user_cache
    owned = getattr(config, "_rsjax_owned_cache", None)
    if owned:
        os.environ.pop(_SESSION_CACHE, None)
        shutil.rmtree(owned, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"../shared not found at {SHARED}: real-data tests skipped")
    return SHARED


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    d = Path(os.environ.get("RSJAX_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
    if not (d / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not in {d}: apt-get install -y dataset-fashion-mnist")
    return d


@pytest.fixture(scope="session")
def smoke_cache() -> Path:
    """The checkpoint + XLA cache of the real smoke runs (tests/sweep_helpers.py)."""
    from sweep_helpers import cache_for_tests

    return cache_for_tests()


def _smoke_run(out: Path, cache: Path) -> None:
    import subprocess

    from sweep_helpers import sweep_cmd, sweep_env

    p = subprocess.run(sweep_cmd(out), env=sweep_env(cache), capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory, smoke_cache, worker_id) -> Path:
    """An uninterrupted single-process smoke run (it also fills the checkpoint and XLA caches),
    shared by test_sweep.py and test_multiprocess.py. Under pytest-xdist it is made once for
    all workers (the first to need it makes it under a file lock in the run's common temporary
    directory; the others wait and read it): two workers making it side by side cost the 2-core
    CI ~4 minutes. Tests only read it."""
    if worker_id == "master":
        out = tmp_path_factory.mktemp("smoke") / "ref"
        _smoke_run(out, smoke_cache)
        return out
    import fcntl

    root = tmp_path_factory.getbasetemp().parent  # this run's directory, common to its workers
    out, done = root / "smoke-reference" / "ref", root / "smoke-reference" / "done"
    with open(root / "smoke-reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(exist_ok=True)
            _smoke_run(out, smoke_cache)
            done.touch()
    return out

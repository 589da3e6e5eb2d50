"""Helpers of the tests that run real smoke sweeps in subprocesses (test_sweep.py,
test_multiprocess.py); the shared smoke reference run is the ``smoke_reference`` fixture of
conftest.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from rsjax import sweep
from rsjax.results import read_records

REPO = Path(__file__).resolve().parents[1]
TIMING_FIELDS = set(sweep.TIMING_FIELDS)


def cache_for_tests() -> Path:
    """Checkpoint + XLA cache of the real-run tests: ``$RSJAX_TEST_CACHE``, else the session's
    temporary ``$RSJAX_CACHE`` (``conftest.py``; never the user's cache). Entries are keyed by
    content, so sharing a cache only saves time."""
    return Path(os.environ.get("RSJAX_TEST_CACHE") or sweep.cache_dir())


def sweep_env(cache: Path) -> dict:
    env = dict(os.environ)
    env["RSJAX_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return env


def sweep_cmd(out: Path) -> list[str]:
    """The default smoke sweep into ``out``."""
    return [sys.executable, str(REPO / "experiments" / "sweep.py"), "--preset", "smoke", "--out", str(out),
            "--no-progress"]


def strip(records) -> dict:
    """key -> record without its timing / host fields."""
    return {r["key"]: {k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records}


def merged(out: Path, kind: str) -> tuple[dict, int]:
    """(key -> stripped record, number of lines) over every ``<kind>*.jsonl`` file of ``out``
    (one per process in a multi-process run)."""
    lines = [r for p in sorted(out.glob(f"{kind}*.jsonl")) for r in read_records(p)]
    return strip(lines), len(lines)

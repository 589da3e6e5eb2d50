"""The package root stays light and its lazy public API resolves.

``import rsjax`` re-exports the public API lazily (``rsjax/__init__.py``), so the modules that
only read results (:mod:`rsjax.results`, :mod:`rsjax.report`) import no Flax, attack or model
code. Each check runs in a fresh interpreter: this test session has imported everything already.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("flax", "rsjax.attacks", "rsjax.models")


def _run(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _loaded_after(statement: str) -> dict:
    out = _run(f"import json, sys\n{statement}\n"
               f"import rsjax\n"
               f"print(json.dumps({{'file': rsjax.__file__, 'mods': sorted(sys.modules)}}))")
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["rsjax", "rsjax.results", "rsjax.report", "rsjax.plots"])
def test_light_modules_import_no_flax_attacks_or_models(module):
    got = _loaded_after(f"import {module}")
    assert Path(got["file"]).resolve().parent == REPO / "rsjax", got["file"]
    heavy = [m for m in got["mods"] if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, f"import {module} loaded {heavy}"


def test_rsjax_certify_is_the_function():
    out = _run("import inspect, rsjax\n"
               "import rsjax.certification, rsjax.cli.certify\n"
               "print(inspect.isfunction(rsjax.certify), rsjax.certify.__module__)")
    assert out.split() == ["True", "rsjax.smoothing"]


def test_every_public_name_resolves():
    out = _run("import rsjax\n"
               "missing = [n for n in rsjax.__all__ if not hasattr(rsjax, n)]\n"
               "assert not missing, missing\n"
               "assert set(rsjax.__all__) <= set(dir(rsjax))\n"
               "from rsjax import HSJA, RayS, SurFree, SmoothedOracle, certify, theory\n"
               "import rsjax.attacks.hsja as h, rsjax.oracle as o, rsjax.smoothing as s\n"
               "assert (rsjax.HSJA, rsjax.SmoothedOracle, rsjax.certify) == (h.HSJA, o.SmoothedOracle, s.certify)\n"
               "assert rsjax.theory.__name__ == 'rsjax.theory'\n"
               "assert set(rsjax.__all__) == set(rsjax._EXPORTS) | {'__version__', 'theory'}\n"
               "print('ok')")
    assert out.split() == ["ok"]


def test_submodules_and_unknown_names():
    """Submodules are reachable as attributes (``rsjax.smoothing.votes`` after ``import rsjax``);
    an unknown name raises AttributeError (so ``hasattr`` is False)."""
    _run("import rsjax\n"
         "assert rsjax.smoothing.votes is rsjax.votes\n"
         "assert not hasattr(rsjax, 'no_such_name')\n")


def test_noise_names_stay_importable_from_smoothing():
    """The generators live in rsjax.noise; rsjax.smoothing re-exports the old names."""
    from rsjax import noise, smoothing

    for name in ("NOISE_IMPLS", "sample_noise", "sample_key", "erfinv_giles", "_hash_normal"):
        assert getattr(smoothing, name) is getattr(noise, name), name


def test_tests_use_their_own_cache():
    """conftest.py points $RSJAX_CACHE away from the user's cache for the whole session."""
    from rsjax.cache import cache_dir

    assert os.environ.get("RSJAX_CACHE")
    assert cache_dir() != Path.home() / ".cache" / "rsjax"
    if not os.environ.get("RSJAX_TEST_CACHE"):
        assert cache_dir() == Path(os.environ["RSJAX_TEST_SESSION_CACHE"])

"""The closed-form reading of benchmarks/bench_noise_aware_linear.py: along the evaluator's ray, the
first point whose margin reaches the level-1/2 margin of eq. (6)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_noise_aware_linear import exact_ray_distortion  # noqa: E402
from test_noise_aware import SIGMA, linear_rs_problem  # noqa: E402

from rsjax.theory import distortion_lower_bound  # noqa: E402


def test_exact_reading_is_one_over_cosine_along_a_tilted_ray_and_keeps_deeper_points():
    x, _, w, b, r = linear_rs_problem("psj", r_o=np.array([0.3, 0.4]), seed=3)
    for n in (1, 10):
        d = distortion_lower_bound(r, SIGMA, n, 0.5)
        wf = w.ravel().astype(np.float64)
        # a unit direction at angle theta to w: ratio 1 / cos(theta) (the ray stays inside the box)
        rng = np.random.default_rng(0)
        v = rng.normal(size=wf.shape)
        v -= (v @ wf) * wf
        v /= np.linalg.norm(v)
        cos = 0.8
        u = (cos * wf + np.sqrt(1 - cos**2) * v).reshape(w.shape)
        short = x + 0.5 * d[:, None, None, None] * u[None]  # inside the level-1/2 set: moved out along the ray
        got = exact_ray_distortion(x, short, w, b, r, d, "l2")
        np.testing.assert_allclose(got / d, 1 / cos, rtol=1e-6)
        deep = x + 2.0 * d[:, None, None, None] * w[None]  # already past it: its own distance (t >= 1)
        np.testing.assert_allclose(exact_ray_distortion(x, deep, w, b, r, d, "l2") / d, 2.0, rtol=1e-6)
        away = x - 0.1 * w[None]  # a ray that moves away from the boundary never reaches it
        assert np.all(np.isinf(exact_ray_distortion(x, away, w, b, r, d, "l2")))


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # quartiles of the stub's inf ratios
def test_set_overrides_reach_only_the_noise_aware_attack(tmp_path, monkeypatch):
    import json

    import rsjax.attacks
    from bench_noise_aware_linear import main, parse_overrides
    from rsjax.errors import InputError

    assert parse_overrides(["grid=1024", "opposite=0.0", "p_c=None", "monotone=False"]) == {
        "grid": 1024, "opposite": 0.0, "p_c": None, "monotone": False}
    with pytest.raises(InputError, match="--set takes KEY=VALUE, got 'grid'"):
        parse_overrides(["grid"])
    with pytest.raises(InputError, match="no_such_field"):  # refused before anything runs
        main(["--attacks", "psj", "--set", "no_such_field=1"])
    made = []
    real = rsjax.attacks.get_attack

    class Unmoved:  # the attack's own work is not what this test is about: its output is a point beyond x
        def __init__(self, attack):
            self.attack = attack

        def run(self, oracle, x, y, seed, queries, check_clean=False):
            from types import SimpleNamespace

            return SimpleNamespace(x_adv=np.clip(x + 0.5, 0.0, 1.0))

    def recording(name, **overrides):
        made.append((name, overrides))
        return Unmoved(real(name, **overrides))

    monkeypatch.setattr(rsjax.attacks, "get_attack", recording)
    out = tmp_path / "run.json"
    main(["--n", "10", "--images", "2", "--seeds", "0", "--queries", "150", "--attacks", "psj",
          "--set", "grid=512", "--verify-calls", "100", "--json-out", str(out)])
    keys = set(json.loads(out.read_text()))
    assert "n=10,psj,psj (grid=512),150" in keys and "n=10,psj,hsja,150" in keys
    assert not any(k.startswith("n=10,psj,hsja (") for k in keys)
    assert {(name, tuple(o.items())) for name, o in made} == {("psj", (("grid", 512),)), ("hsja", ())}

"""The closed-form reading of benchmarks/bench_noise_aware_linear.py: along the evaluator's ray, the
first point whose margin reaches the level-1/2 margin of eq. (6)."""
import sys
from pathlib import Path

import numpy as np

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

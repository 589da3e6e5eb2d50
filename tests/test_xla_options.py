"""rsjax.xla_options: the per-program XLA:CPU compile options and the lazy ``jit`` that applies them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import Classifier, get_model_spec
from rsjax import xla_options
from rsjax.xla_options import CPU_COMPILER_OPTIONS, compiler_options, jit

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")


def _ynn_convolution_fusions(hlo: str) -> int:
    """Number of YNNPACK fusions of a compiled module's text whose root is a convolution (a
    convolution handed to YNNPACK by itself; YNNPACK reduce fusions may absorb convolutions that
    feed a reduction, which measured as fast as XLA's)."""
    bodies = dict(re.findall(r"\n(%?[\w.\-]+) [^\n]*\{\n(.*?)\n\}", "\n" + hlo, flags=re.S))
    n = 0
    for called in re.findall(r"%?ynn_fusion[\w.]* = [^\n]*calls=(%?[\w.\-]+)", hlo):
        roots = [ln for ln in bodies.get(called, "").splitlines() if ln.lstrip().startswith("ROOT ")]
        n += sum(" convolution(" in ln for ln in roots)
    return n


@cpu_only
def test_resnet_convolutions_leave_ynnpack_and_outputs_agree():
    if compiler_options() is None:
        pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type option")
    spec = get_model_spec("cifar_resnet20")
    clf = Classifier(spec, spec.init(jax.random.key(0)), {})
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, *clf.input_shape)), jnp.float32)
    ours = jit(clf.logits_fn)
    hlo = ours.lower(x).compile().as_text()
    assert "convolution(" in hlo
    assert _ynn_convolution_fusions(hlo) == 0
    # same function, XLA's defaults: the logits agree to float32 rounding
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(jax.jit(clf.logits_fn)(x)),
                               rtol=1e-4, atol=1e-4)


def test_helper_finds_ynn_convolution_fusions_in_a_module_text():
    text = ("%fused_computation.3 (p: f32[1,4,4,2]) -> f32[1,4,4,2] {\n"
            "  ROOT %c = f32[1,4,4,2]{3,2,1,0} convolution(%p, %w), window={size=3x3}\n}\n\n"
            "ENTRY %main (a: f32[1,4,4,2]) -> f32[1,4,4,2] {\n"
            "  %ynn_fusion.3 = f32[1,4,4,2]{3,2,1,0} fusion(%a), kind=kCustom, calls=%fused_computation.3\n}\n")
    assert _ynn_convolution_fusions(text) == 1
    assert _ynn_convolution_fusions(text.replace("ynn_fusion.3", "loop_fusion.3")) == 0
    assert _ynn_convolution_fusions(text.replace("ROOT %c", "%c")) == 0


def test_unknown_option_falls_back_to_xla_defaults(monkeypatch):
    compiler_options.cache_clear()
    try:
        monkeypatch.setattr(xla_options, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option_rsjax": "1"})
        assert compiler_options() is None
        f = jit(lambda v: v * 2)  # compiles with the defaults instead of failing
        assert float(f(jnp.float32(3))) == 6.0
    finally:
        compiler_options.cache_clear()


def test_lazy_jit_keeps_jax_jit_interface():
    @partial(jit, static_argnames=("k",))
    def f(x, k):
        """doc of f"""
        return x * k

    assert f.__doc__ == "doc of f" and f.__name__ == "f"
    assert float(f(jnp.float32(2), k=3)) == 6.0
    assert float(f(jnp.float32(5), k=3)) == 15.0
    assert f._cache_size() == 1  # delegated to the jax.jit object: one program for both calls
    assert "multiply" in f.lower(jnp.float32(1), k=2).as_text()


def _options_in_fresh_process(env_extra: dict[str, str]) -> str:
    code = ("import rsjax, jax\n"
            "from jax._src import xla_bridge\n"
            "init = getattr(xla_bridge, 'backends_are_initialized', lambda: False)()\n"
            "from rsjax.xla_options import compiler_options\n"
            "print(init, compiler_options())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RSJAX_XLA_DEFAULTS", "XLA_FLAGS")}
    env.update(env_extra, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_import_does_not_start_the_backend_and_users_can_opt_out():
    plain = _options_in_fresh_process({})
    assert plain.startswith("False ")  # importing rsjax did not initialize a JAX backend
    assert _options_in_fresh_process({"RSJAX_XLA_DEFAULTS": "1"}) == "False None"
    own = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert _options_in_fresh_process({"XLA_FLAGS": own}) == "False None"
    if plain != "False None":  # this jaxlib takes the option
        assert plain == f"False {CPU_COMPILER_OPTIONS}"

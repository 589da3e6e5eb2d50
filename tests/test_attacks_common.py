"""Attack framework: exact query accounting, binary search, driver bookkeeping, results.

Also holds the oracles and linear problems the HSJA/RayS tests import."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.attacks.common import (
    AttackCore, AttackEnv, AttackResult, TRACE_PAD, binary_search, initial_core, query, safe_normalize,
    tree_sum,
)
from rsjax.errors import InputError
from rsjax.models.linear import linear_logits_fn
from rsjax.oracle import ModelOracle, OracleAnswer, image_keys, query_key

# ----------------------------------------------------------------------------- helpers


class ConstantOracle:
    """Always answers ``value`` (the all-probes-agree case), ``evals`` evaluations a query."""

    def __init__(self, value: bool, num_classes: int = 2, evals: int = 1):
        self.value, self.num_classes, self.evals = value, num_classes, evals
        self.name = f"constant[{value}]"

    def decide(self, x, y, keys):
        m = x.shape[0]
        return OracleAnswer(jnp.full((m,), self.value), jnp.full((m,), self.evals, jnp.int32))

    def max_evaluations_per_query(self):
        return self.evals


def key_bits(keys) -> jax.Array:
    """uint32 [M, 2] data of typed or raw keys."""
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(keys)
    return keys


class CoinOracle:
    """Adversarial with probability 1/2 drawn from the query key only (maximally random)."""

    name = "coin"

    def __init__(self, num_classes: int = 2, evals: int = 1):
        self.num_classes, self.evals = num_classes, evals

    def decide(self, x, y, keys):
        adv = jax.vmap(jax.random.bernoulli)(keys)
        return OracleAnswer(adv, jnp.full(adv.shape, self.evals, jnp.int32))

    def max_evaluations_per_query(self):
        return self.evals


class RecordingOracle:
    """Wraps an oracle; records on the host the key of every point it is asked about (sent or
    not: the attack sends index-0 keys for probes it does not send) and charges ``evals``
    evaluations per query."""

    def __init__(self, inner, evals: int = 3):
        self.inner, self.evals = inner, evals
        self.num_classes, self.name = inner.num_classes, "recording"
        self.seen: set[tuple[int, int]] = set()

    def _record(self, bits):
        self.seen.update(map(tuple, np.asarray(bits).tolist()))
        return np.zeros((), np.int32)

    def decide(self, x, y, keys):
        token = jax.experimental.io_callback(self._record, jax.ShapeDtypeStruct((), jnp.int32), key_bits(keys))
        ans = self.inner.decide(x, y, keys)
        return OracleAnswer(ans.adversarial, jnp.full(ans.adversarial.shape, self.evals, jnp.int32) + 0 * token)

    def max_evaluations_per_query(self):
        return self.evals


def expected_keys(seed: int, image_ids, queries) -> set[tuple[int, int]]:
    """Keys of queries 0..queries[i]-1 of each image."""
    ks = image_keys(jax.random.key(seed), jnp.asarray(image_ids))
    out = set()
    for k, q in zip(ks, queries):
        for i in range(int(q)):
            out.add(tuple(np.asarray(jax.random.key_data(query_key(k, i))).tolist()))
    return out


def linear_problem(side: int, dists, seed: int = 0, norm: str = "l2", spread: float = 0.05):
    """Images [B, side, side, 1] around 0.5 on the class-1 side of a random hyperplane
    w.x + b = 0 at exactly the given L2 (or L-inf) distances, foot points inside the box.
    Returns (x, y, w, b, oracle)."""
    rng = np.random.default_rng(seed)
    shape = (side, side, 1)
    dists = np.asarray(dists, np.float64)
    nb = len(dists)
    w = rng.normal(size=shape)
    x = 0.5 + spread * rng.uniform(-1, 1, size=(nb,) + shape)
    s = x.reshape(nb, -1) @ w.ravel()
    bias = -float(s.mean())
    scale = np.linalg.norm(w) if norm == "l2" else np.abs(w).sum()
    x = x + ((dists * scale - (s + bias)) / np.sum(w * w))[:, None, None, None] * w[None]
    assert 0 < x.min() and x.max() < 1
    w32 = w.astype(np.float32)
    return x.astype(np.float32), np.ones(nb, np.int64), w32, bias, ModelOracle(linear_logits_fn(w32, bias), 2)


def assert_same_result(a: AttackResult, b: AttackResult) -> None:
    """Bitwise-equal per-image outcomes (batch invariance / determinism)."""
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(a.evaluations, b.evaluations)
    np.testing.assert_array_equal(a.l2, b.l2)
    np.testing.assert_array_equal(a.linf, b.linf)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    for q in (10, 100, int(a.max_queries)):
        np.testing.assert_array_equal(a.distortion_at(q), b.distortion_at(q))


def check_row_equal(batched: AttackResult, i: int, single: AttackResult) -> None:
    """Row i of a batched run equals the only row of a one-image run, bit for bit."""
    for field in ("status", "queries", "evaluations", "steps", "l2", "linf", "x_adv"):
        np.testing.assert_array_equal(getattr(batched, field)[i], getattr(single, field)[0],
                                      err_msg=f"image {i}: {field}")
    n = int((single.trace_queries[0] != TRACE_PAD).sum())
    for field in ("trace_queries", "trace_l2", "trace_linf"):
        np.testing.assert_array_equal(getattr(batched, field)[i][:n], getattr(single, field)[0][:n],
                                      err_msg=f"image {i}: {field}")
    assert (batched.trace_queries[i][n:] == TRACE_PAD).all()


def assert_sane(res: AttackResult, max_queries: int) -> None:
    """No NaN anywhere, budgets respected, statuses consistent."""
    assert not np.isnan(res.l2).any() and not np.isnan(res.linf).any()
    assert not np.isnan(res.x_adv).any()
    assert not np.isnan(res.trace_l2).any()
    assert (res.queries <= max_queries).all() and (res.queries >= 1).all()
    att = res.status == "attacked"
    assert np.isfinite(res.l2[att]).all()
    assert np.isinf(res.l2[res.status == "no_start"]).all()
    assert (res.l2[res.status == "misclassified"] == 0).all()
    assert (res.queries[res.status == "misclassified"] == 1).all()


# ----------------------------------------------------------------------------- query()

def _env(b=2, max_queries=5, seed=0):
    x = jnp.full((b, 2, 2, 1), 0.5)
    return AttackEnv(x, jnp.zeros((b,), jnp.int32), image_keys(jax.random.key(seed), jnp.arange(b)),
                     jnp.ones((b,), bool), jnp.asarray(max_queries, jnp.int32))


def test_query_assigns_consecutive_indices_and_stops_at_budget():
    env = _env()
    core = initial_core(env)._replace(queries=jnp.array([0, 3], jnp.int32))
    mask = jnp.array([[True, False, True, True], [True, True, True, False]])
    points = jnp.zeros((2, 4, 2, 2, 1))

    class KeyEcho:  # adversarial = lowest bit of the key's first word
        num_classes = 2

        def decide(self, x, y, keys):
            bits = key_bits(keys)[:, 0]
            return OracleAnswer((bits & 1) == 1, jnp.full(bits.shape, 7, jnp.int32))

    out = jax.jit(lambda c: query(KeyEcho(), env, c, points, mask))(core)
    np.testing.assert_array_equal(out.sent, [[True, False, True, True], [True, True, False, False]])
    np.testing.assert_array_equal(out.core.queries, [3, 5])
    np.testing.assert_array_equal(out.core.evaluations, [21, 14])
    # probe j of image i used query_key(image_key_i, index) with consecutive indices
    expected_index = {(0, 0): 0, (0, 2): 1, (0, 3): 2, (1, 0): 3, (1, 1): 4}
    for (i, j), q in expected_index.items():
        bit = int(np.asarray(jax.random.key_data(query_key(env.image_keys[i], q)))[0]) & 1
        assert bool(out.adversarial[i, j]) == bool(bit), (i, j)
    assert not out.adversarial[1, 2] and not out.adversarial[1, 3]


def test_query_skips_done_and_padding_rows():
    env = _env()._replace(valid=jnp.array([True, False]))
    core = initial_core(env)
    out = query(ConstantOracle(True), env, core, jnp.zeros((2, 3, 2, 2, 1)), jnp.ones((2, 3), bool))
    np.testing.assert_array_equal(out.sent, [[True] * 3, [False] * 3])
    np.testing.assert_array_equal(out.core.queries, [3, 0])
    assert not out.adversarial[1].any()


def test_binary_search_finds_threshold_and_respects_budget():
    # adversarial iff mean pixel > 0.3: on the segment 0 -> 1 the boundary is a = 0.3
    class Threshold:
        num_classes = 2

        def decide(self, x, y, keys):
            adv = jnp.mean(x.reshape(x.shape[0], -1), axis=1) > 0.3
            return OracleAnswer(adv, jnp.ones(adv.shape, jnp.int32))

    env = _env(b=2, max_queries=1000)
    env = env._replace(x=jnp.zeros((2, 2, 2, 1)))
    core = initial_core(env)._replace(queries=jnp.array([0, 995], jnp.int32))
    x_out = jnp.ones((2, 2, 2, 1))
    pt, hi, core2 = binary_search(Threshold(), env, core, env.x, x_out, jnp.array([True, True]), 1e-4, 30)
    assert 0.3 <= float(hi[0]) <= 0.3 + 1e-4
    assert int(core2.queries[0]) == 14  # ceil(log2(1e4)) halvings
    # image 1 had only 5 queries left: stops there, still on the adversarial side
    assert int(core2.queries[1]) == 1000
    assert float(hi[1]) > 0.3 and float(hi[1]) < 0.3 + 2.0 ** -5 + 1e-6
    np.testing.assert_allclose(np.asarray(pt[0]).mean(), float(hi[0]), rtol=1e-6)


def test_safe_normalize_zero_rows_give_no_nan():
    v = jnp.stack([jnp.zeros((2, 2, 1)), jnp.full((2, 2, 1), 3.0)])
    out = np.asarray(safe_normalize(v))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(out[1]), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- results

def _result():
    tq = np.array([[1, TRACE_PAD, TRACE_PAD], [20, 50, 90], [TRACE_PAD] * 3])
    tl2 = np.array([[0.0, np.inf, np.inf], [3.0, 2.0, 1.0], [np.inf] * 3])
    return AttackResult(
        attack="x", image_ids=np.arange(3), x_adv=np.zeros((3, 1, 1, 1), np.float32),
        l2=np.array([0.0, 1.0, np.inf]), linf=np.array([0.0, 0.5, np.inf]),
        success=np.array([True, True, False]), status=np.array(["misclassified", "attacked", "no_start"]),
        queries=np.array([1, 90, 100]), evaluations=np.array([1, 90, 100]), steps=np.array([0, 3, 0]),
        trace_queries=tq, trace_l2=tl2, trace_linf=tl2 / 2, max_queries=100, config={})


def test_distortion_at_is_best_within_budget():
    r = _result()
    np.testing.assert_array_equal(r.distortion_at(10), [0.0, np.inf, np.inf])
    np.testing.assert_array_equal(r.distortion_at(50), [0.0, 2.0, np.inf])
    np.testing.assert_array_equal(r.distortion_at(1000, "linf"), [0.0, 0.5, np.inf])
    with pytest.raises(InputError, match="norm"):
        r.distortion_at(10, "l1")


def test_summary_excludes_misclassified_and_counts_no_start_as_failure():
    s = _result().summary()
    assert s["n_attacked"] == 1 and s["n_misclassified"] == 1 and s["n_no_start"] == 1
    assert s["success_rate"] == 0.5
    assert s["median_l2"] == 1.0 and s["max_queries_used"] == 100


# ----------------------------------------------------------------------------- driver

def test_run_rejects_bad_inputs():
    from rsjax.attacks import HSJA, get_attack

    x, y, _, _, oracle = linear_problem(4, [0.1])
    with pytest.raises(InputError, match="max_queries"):
        HSJA().run(oracle, x, y, 0, 0)
    with pytest.raises(InputError, match=r"\[0,1\]"):
        HSJA().run(oracle, x + 2, y, 0, 10)
    with pytest.raises(InputError, match="labels"):
        HSJA().run(oracle, x, y + 5, 0, 10)
    with pytest.raises(InputError, match="unknown option"):
        HSJA(gama=1.0)
    with pytest.raises(InputError, match="gamma"):
        HSJA(gamma=-1.0)
    with pytest.raises(InputError, match="unknown attack"):
        get_attack("boundary")


@pytest.mark.parametrize("name", ["hsja", "rays"])
def test_queries_counted_exactly_against_recorded_keys(name):
    """Every key the oracle saw is one of queries 0..queries[i]-1 of some image, and every such
    query was asked: nothing beyond the budget, nothing uncounted."""
    from rsjax.attacks import get_attack

    x, y, _, _, inner = linear_problem(4, [0.05, 0.1, 0.15])
    x[1] = x[1] * 0 + 0.5  # varied starting geometry
    rec = RecordingOracle(inner, evals=3)
    budget = 157
    res = get_attack(name).run(rec, x, y, 5, budget, image_ids=[3, 8, 11])
    assert (res.queries <= budget).all()
    assert (res.evaluations == 3 * res.queries).all()
    assert rec.seen == expected_keys(5, [3, 8, 11], res.queries)
    finished_by_budget = res.queries == budget
    assert finished_by_budget.any()


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def tiny_mlp_problem(tmp_path_factory):
    """A random-init fmnist_mlp checkpoint and an npz of 3 images (image 1 mislabelled)."""
    from rsjax.checkpoints import save_checkpoint
    from rsjax.classifier import Classifier
    from rsjax.models import get_model_spec

    d = tmp_path_factory.mktemp("cli")
    save_checkpoint(d / "mlp.ckpt", "fmnist_mlp", get_model_spec("fmnist_mlp").init(jax.random.key(0)))
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = Classifier.from_checkpoint(str(d / "mlp.ckpt")).predict(images[..., None] / 255.0)
    labels[1] = (labels[1] + 1) % 10
    np.savez(d / "d.npz", images=images, labels=labels)
    return d


def test_cli_attack_json_and_records(tiny_mlp_problem, capsys):
    import json

    from rsjax.cli import main
    from rsjax.results import read_records

    d = tiny_mlp_problem
    argv = ["attack", "--checkpoint", str(d / "mlp.ckpt"), "--data", f"npz:{d / 'd.npz'}", "--attack", "rays",
            "--queries", "60", "--seed", "3", "--json", "--out", str(d / "rec.jsonl")]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    s, images = out["summary"], out["images"]
    for k in ("median_l2", "mean_l2", "success_rate", "max_queries_used", "n_attacked", "n_misclassified"):
        assert k in s
    assert s["n_misclassified"] == 1 and s["n_attacked"] + s["n_no_start"] == 2
    assert s["max_queries_used"] <= 60
    assert [im["index"] for im in images] == [0, 1, 2]
    assert images[1]["status"] == "misclassified" and images[1]["l2"] == 0.0 and images[1]["queries"] == 1
    for im in images:
        assert set(im) == {"index", "label", "status", "success", "l2", "linf", "queries", "evaluations"}
        assert im["evaluations"] == im["queries"]
    recs = read_records(d / "rec.jsonl")
    assert len(recs) == 3 and {r["index"] for r in recs} == {0, 1, 2}
    # same command again: same numbers, no duplicate records
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["images"] == images
    assert len(read_records(d / "rec.jsonl")) == 3


def test_cli_attack_smoothed_level_and_bad_flags(tiny_mlp_problem, capsys):
    import json

    from rsjax.cli import main

    d = tiny_mlp_problem
    base = ["attack", "--checkpoint", str(d / "mlp.ckpt"), "--data", f"npz:{d / 'd.npz'}", "--attack", "hsja",
            "--queries", "40", "--limit", "2"]
    assert main(base + ["--sigma", "0.25", "--n", "5", "--criterion", "level", "--pa", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["n"] == 5 and len(out["images"]) == 2
    for im in out["images"]:
        assert im["queries"] <= 40 and im["evaluations"] <= 5 * im["queries"]
    assert main(base + ["--n", "5"]) == 2
    assert "--n=5 needs --sigma" in capsys.readouterr().err
    assert main(base + ["--sigma", "0.25"]) == 2
    assert "--sigma needs --n" in capsys.readouterr().err


def _pairwise_reference(v: np.ndarray) -> np.ndarray:
    """numpy statement of tree_sum's order over the last axis: zero-pad to a power of two,
    then add the two halves until one element is left (float32 throughout)."""
    d = v.shape[-1]
    n = 1 << max(0, (d - 1).bit_length())
    v = np.concatenate([v, np.zeros(v.shape[:-1] + (n - d,), v.dtype)], axis=-1)
    while n > 1:
        n //= 2
        v = v[..., :n] + v[..., n:]
    return v[..., 0]


@pytest.mark.parametrize("d", [1, 2, 3, 5, 50, 64, 784])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_tree_sum_is_the_fixed_pairwise_order_on_any_axis(d, axis):
    """Bit-for-bit the padded pairwise order, whichever axis is summed (the implementation
    neither pads nor transposes; it must still add the same pairs)."""
    shape = [3, 4, 5]
    shape[axis] = d
    v = np.random.default_rng(d + axis).standard_normal(shape).astype(np.float32) * 1e3
    got = np.asarray(tree_sum(jnp.asarray(v), axis=axis))
    want = _pairwise_reference(np.moveaxis(v, axis, -1))
    np.testing.assert_array_equal(got, want)


def _split_reference(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hi = (v.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)
    return hi, v - hi


def test_split_product_has_exact_partial_products_so_an_fma_cannot_change_it():
    """split_halves is exact with 12-bit halves; split_product sums exact partial products, so
    the jitted (1 - a) x + a y (which XLA:CPU may contract into FMAs) equals numpy's float32
    evaluation of the same formula (never contracted), within two ulps of the exact value; and
    split_l2_norm is the pairwise sum of those squares."""
    from rsjax.geometry import split_halves, split_l2_norm, split_product

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (2, 3, 37)).astype(np.float32)
    a = rng.uniform(0, 1, (3, 1)).astype(np.float32)
    hi, lo = (np.asarray(h) for h in split_halves(jnp.asarray(x)))
    np.testing.assert_array_equal(hi.astype(np.float64) + lo, x)
    assert np.all(np.frexp(hi)[0] * 2.0 ** 12 % 1 == 0)  # at most 12 significant bits

    def ref_product(u, v):
        (uh, ul), (vh, vl) = _split_reference(u), _split_reference(v)
        return uh * vh + ((uh * vl + ul * vh) + ul * vl)

    got = np.asarray(jax.jit(lambda a, x, y: split_product(1 - a, x) + split_product(a, y))(a, x, y))
    np.testing.assert_array_equal(got, ref_product(1 - a, x) + ref_product(a, y))
    exact = (1 - a.astype(np.float64)) * x + a.astype(np.float64) * y
    assert np.all(np.abs(got - exact) <= 2 * np.spacing(np.abs(exact).astype(np.float32)))
    norm = np.asarray(jax.jit(split_l2_norm)(jnp.asarray(x - y)))
    np.testing.assert_array_equal(norm, np.sqrt(_pairwise_reference(ref_product(x - y, x - y))))


def test_compiled_programs_cache_does_not_keep_oracles_alive():
    """``DecisionAttack.programs`` caches per oracle object; a finished attack does not keep its
    oracle (and through it the model weights) alive: after ``del`` + ``gc.collect()`` a weak
    reference to it is dead, and the attack still works with a new oracle."""
    import gc
    import weakref

    from rsjax.attacks import get_attack

    w = np.random.default_rng(0).normal(size=(4, 4, 1)).astype(np.float32)
    x = np.random.default_rng(1).uniform(0, 1, (3, 4, 4, 1)).astype(np.float32)
    attack = get_attack("rays")
    oracle = ModelOracle(linear_logits_fn(w, 0.0), 2)
    y = np.asarray(jnp.argmax(oracle.logits_fn(jnp.asarray(x)), -1))
    first = attack.run(oracle, x, y, 0, 20)
    assert attack.programs(oracle) is attack.programs(oracle)  # cached while alive
    ref = weakref.ref(oracle)
    del oracle
    gc.collect()
    assert ref() is None
    assert len(attack._compiled) == 0
    again = attack.run(ModelOracle(linear_logits_fn(w, 0.0), 2), x, y, 0, 20)
    np.testing.assert_array_equal(first.l2, again.l2)


def test_cli_attack_keeps_compiled_programs_in_the_cache(tiny_mlp_problem, tmp_path):
    """`rsjax attack` persists its XLA executables under $RSJAX_CACHE/xla (a second run reuses
    them); RSJAX_NO_XLA_CACHE=1 turns that off. Run in subprocesses: the cache directory is a
    process-wide JAX setting."""
    import json
    import os
    import subprocess
    import sys

    d = tiny_mlp_problem
    argv = [sys.executable, "-c", "import sys; from rsjax.cli import main; sys.exit(main())", "attack", "--checkpoint", str(d / "mlp.ckpt"),
            "--data", f"npz:{d / 'd.npz'}", "--attack", "hsja", "--queries", "40", "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("RSJAX_NO_XLA_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    on = subprocess.run(argv, env={**env, "RSJAX_CACHE": str(tmp_path / "on")}, capture_output=True, text=True)
    assert on.returncode == 0, on.stderr
    assert len(list((tmp_path / "on" / "xla").iterdir())) > 0
    off = subprocess.run(argv, env={**env, "RSJAX_CACHE": str(tmp_path / "off"), "RSJAX_NO_XLA_CACHE": "1"},
                         capture_output=True, text=True)
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "off" / "xla").exists()
    assert json.loads(on.stdout)["images"] == json.loads(off.stdout)["images"]


def test_cli_per_class_keeps_full_dataset_indices_and_results(tiny_mlp_problem, tmp_path, capsys):
    """`--per-class K` on a class-sorted file attacks the first K images of each class; their
    reported indices are positions in the file and each image's result equals the one it gets
    in a run over the whole file (its randomness derives from its index alone)."""
    import json

    from rsjax.cli import main

    d = tiny_mlp_problem
    images = np.random.default_rng(5).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "sorted.npz", images=images, labels=np.array([0, 0, 0, 1, 1, 1]))
    base = ["attack", "--checkpoint", str(d / "mlp.ckpt"), "--data", f"npz:{tmp_path / 'sorted.npz'}",
            "--attack", "rays", "--queries", "30", "--json"]
    assert main(base) == 0
    full = {im["index"]: im for im in json.loads(capsys.readouterr().out)["images"]}
    assert main(base + ["--per-class", "2"]) == 0
    some = json.loads(capsys.readouterr().out)["images"]
    assert [im["index"] for im in some] == [0, 1, 3, 4]
    for im in some:
        assert im == full[im["index"]]
    assert main(base + ["--per-class", "0"]) == 2
    assert "--per-class" in capsys.readouterr().err

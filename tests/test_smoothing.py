"""Votes, early stopping, PREDICT, CERTIFY and certified accuracy against exact oracles."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from rsjax.errors import InputError
from rsjax.models.linear import l2_distance_to_hyperplane, linear_logits_fn
from rsjax.smoothing import (
    ABSTAIN,
    certified_accuracy,
    certify,
    certify_from_counts,
    clopper_pearson_lower,
    label_decided,
    noisy_copies,
    plurality,
    predict_from_counts,
    predict_min_top_count,
    sample_noise,
    trace_count,
    votes,
)

SHAPE = (4, 4, 1)  # d = 16


def point_keys(seed: int, ids) -> jax.Array:
    root = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(ids, jnp.uint32))


_HYPERPLANES: dict = {}


def linear_model(w, b):
    """linear_logits_fn(w, b), one function object per hyperplane (so compiled programs are reused)."""
    key = (w.tobytes(), b)
    if key not in _HYPERPLANES:
        _HYPERPLANES[key] = linear_logits_fn(w, b)
    return _HYPERPLANES[key]


def linear_problem(seed=0, count=8, d_range=(-0.6, 0.6)):
    """A hyperplane w.x + b = 0 and points at chosen signed distances from it."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=SHAPE).astype(np.float32)
    b = 0.1
    wn = w / np.linalg.norm(w)
    base = np.full(SHAPE, 0.5, np.float32)
    base = base - (np.sum(base * w) + b) / np.linalg.norm(w) * wn  # on the plane
    dist = np.linspace(*d_range, count)
    x = (base[None] + dist[:, None, None, None] * wn[None]).astype(np.float32)
    return w, b, x


def multiclass_linear_logits_fn(weights: np.ndarray):
    """Batch-invariant K-class linear model: logits_k = sum(x * W_k) (elementwise, per row)."""
    wk = jnp.asarray(weights, jnp.float32)

    def logits(x):
        return jnp.sum(x[:, None] * wk[None], axis=(2, 3, 4))

    return logits


@pytest.mark.parametrize("noise", ["hash", "threefry"])
def test_linear_smoothed_probability_matches_phi(noise):
    sigma, n = 0.5, 4000
    w, b, x = linear_problem()
    res = votes(linear_model(w, b), x, point_keys(1, range(len(x))), sigma, n, 2, chunk_size=512, noise=noise)
    np.testing.assert_array_equal(res.counts.sum(1), n)
    np.testing.assert_array_equal(res.evaluations, n)
    s = x.reshape(len(x), -1).astype(np.float64) @ w.ravel().astype(np.float64) + b
    pi1 = stats.norm.cdf(s / (sigma * np.linalg.norm(w)))
    est = res.counts[:, 1] / n
    tol = 4.5 * np.sqrt(pi1 * (1 - pi1) / n) + 1e-9
    assert np.all(np.abs(est - pi1) <= tol), (est, pi1, tol)


@pytest.mark.parametrize("chunk_size", [3, 64, 4096])
def test_counts_sum_to_n_for_any_chunking(chunk_size):
    w, b, x = linear_problem(count=5)
    for n in (1, 123):
        res = votes(linear_model(w, b), x, point_keys(0, range(5)), 0.3, n, 2, chunk_size=chunk_size)
        np.testing.assert_array_equal(res.counts.sum(1), n)
        np.testing.assert_array_equal(res.evaluations, n)


def test_same_votes_whatever_batch_chunk_and_order():
    """Sample j of image i uses fold_in(key_i, j): the linear (batch-invariant) model gives
    identical counts in one batch, one by one, or permuted, with any chunk size."""
    w, b, x = linear_problem(count=9, d_range=(-0.2, 0.2))
    f = linear_model(w, b)
    ids = np.arange(9)
    ref = votes(f, x, point_keys(3, ids), 0.4, 257, 2, chunk_size=1024).counts
    single = np.concatenate([votes(f, x[i:i + 1], point_keys(3, [i]), 0.4, 257, 2, chunk_size=7).counts
                             for i in ids])
    perm = np.random.default_rng(0).permutation(9)
    permuted = votes(f, x[perm], point_keys(3, perm), 0.4, 257, 2, chunk_size=100).counts
    np.testing.assert_array_equal(ref, single)
    np.testing.assert_array_equal(ref[perm], permuted)


def test_noise_is_that_of_noisy_copies():
    """The noise inside votes is sample_noise(fold_in(key_i, j)): a one-pixel linear model sees
    exactly the j-th noisy copy."""
    x = np.full((1, *SHAPE), 0.5, np.float32)
    w = np.zeros(SHAPE, np.float32)
    w[1, 2, 0] = 1.0
    key = point_keys(5, [0])
    copies = np.asarray(noisy_copies(jnp.asarray(x[0]), key[0], 0.3, 50))
    expected = int(np.sum(copies[:, 1, 2, 0] - 0.5 > 0))
    res = votes(linear_logits_fn(w, -0.5), x, key, 0.3, 50, 2, chunk_size=16)
    assert res.counts[0, 1] == expected


def test_second_call_does_not_recompile():
    w, b, x = linear_problem(count=5)
    f = linear_model(w, b)
    votes(f, x, point_keys(0, range(5)), 0.3, 10, 2, chunk_size=32)
    before = trace_count()
    votes(f, x, point_keys(1, range(5)), 0.7, 500, 2, chunk_size=32)  # other keys, sigma, n
    votes(f, x[:3].repeat(2, 0)[:6], point_keys(1, range(6)), 0.1, 3, 2, chunk_size=32)  # B=6: same bucket 8
    assert trace_count() == before


@pytest.mark.parametrize("n", [100, 101])
def test_early_stop_gives_full_vote_labels(n):
    """Many points, many of them on or near the boundary (ties possible for even n), 5 classes."""
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(5, *SHAPE)).astype(np.float32) * 0.3
    f = multiclass_linear_logits_fn(weights)
    x = np.concatenate([
        rng.uniform(size=(96, *SHAPE)),
        np.full((32, *SHAPE), 0.5) + 0.02 * rng.normal(size=(32, *SHAPE)),
    ]).astype(np.float32)
    keys = point_keys(2, range(len(x)))
    full = votes(f, x, keys, 0.6, n, 5, chunk_size=256)
    early = votes(f, x, keys, 0.6, n, 5, chunk_size=256, early_stop=True)
    np.testing.assert_array_equal(plurality(full.counts), plurality(early.counts))
    np.testing.assert_array_equal(early.counts.sum(1), early.evaluations)
    assert np.all(early.evaluations <= n)
    ties = np.sort(full.counts, 1)[:, -1] == np.sort(full.counts, 1)[:, -2]
    assert ties.any() or n % 2 == 1  # the tie rule was exercised for even n
    assert (early.evaluations < n).any()


def test_early_stop_saves_40_percent_far_from_boundary():
    w, b, x = linear_problem(count=64, d_range=(0.8, 1.2))  # pi_1 > 0.95 at sigma = 0.5
    keys = point_keys(4, range(64))
    full = votes(linear_model(w, b), x, keys, 0.5, 1000, 2, chunk_size=1024)
    early = votes(linear_model(w, b), x, keys, 0.5, 1000, 2, chunk_size=1024, early_stop=True)
    np.testing.assert_array_equal(plurality(full.counts), plurality(early.counts))
    saved = 1 - early.evaluations.sum() / full.evaluations.sum()
    assert saved >= 0.40, saved


def test_label_decided_rule():
    c = jnp.array([[5, 3], [5, 3], [3, 5], [4, 4], [0, 0]])
    r = jnp.array([1, 2, 2, 0, 1])
    # [5,3]+1: rival reaches 4 < 5 -> decided; [5,3]+2: rival 5 ties and rival index 1 > 0 -> decided;
    # [3,5]+2: class 0 reaches 5 = leader and 0 < 1 wins ties -> not decided; [4,4] r=0 decided.
    np.testing.assert_array_equal(np.asarray(label_decided(c, r)), [True, True, False, True, False])


def test_hash_noise_is_standard_normal():
    keys = point_keys(9, range(64))
    z = np.asarray(jax.vmap(lambda k: sample_noise(k, (64, 64), "hash"))(keys)).reshape(64, -1)
    flat = z.ravel()  # 262,144 values
    assert abs(flat.mean()) < 5 / np.sqrt(flat.size)
    assert abs(flat.var() - 1) < 5 * np.sqrt(2 / flat.size)
    assert stats.kstest(flat, "norm").pvalue > 1e-4
    # independence: adjacent elements, and the same element across samples
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / np.sqrt(flat.size)
    assert np.abs(np.corrcoef(z)[np.triu_indices(64, 1)]).max() < 5 / np.sqrt(z.shape[1]) * 1.3


def test_clip_option_keeps_pixels_in_unit_box():
    x = jnp.full(SHAPE, 0.9)
    copies = noisy_copies(x, point_keys(0, [0])[0], 0.5, 20, clip=True)
    assert float(copies.min()) >= 0 and float(copies.max()) <= 1
    assert float(noisy_copies(x, point_keys(0, [0])[0], 0.5, 20).max()) > 1  # default: no clipping


def test_validation_names_bad_values():
    w, b, x = linear_problem(count=2)
    with pytest.raises(InputError, match="sigma"):
        votes(linear_model(w, b), x, point_keys(0, range(2)), 0.0, 10, 2)
    with pytest.raises(InputError, match="-3"):
        votes(linear_model(w, b), x, point_keys(0, range(2)), 0.1, -3, 2)
    with pytest.raises(InputError, match="alpha"):
        predict_from_counts([[3, 1]], 1.5)


# ---------------------------------------------------------------- PREDICT / CERTIFY
def test_predict_n10_alpha_0001_always_abstains():
    """The trap: 10/10 votes give p = 2^-9 ~ 0.00195 > 0.001."""
    assert predict_from_counts(np.array([10, 0, 0]), 0.001) == ABSTAIN
    assert predict_from_counts(np.array([0, 10, 0]), 0.01) == 1
    assert np.all(predict_min_top_count(10, 0.001) == np.arange(12)[:11] + 1)  # never answers
    w, b, x = linear_problem(count=4, d_range=(2.0, 3.0))  # far: all votes agree
    res = votes(linear_model(w, b), x, point_keys(0, range(4)), 0.25, 10, 2)
    assert np.all(res.counts[:, 1] == 10)
    assert np.all(predict_from_counts(res.counts, 0.001) == ABSTAIN)
    res = votes(linear_model(w, b), x, point_keys(0, range(4)), 0.25, 100, 2)
    assert np.all(predict_from_counts(res.counts, 0.001) == 1)


def _predict_by_binomtest(counts, alpha: float) -> np.ndarray:
    """PREDICT row by row with scipy's two-sided binomial test (the textbook definition)."""
    out = []
    for row in np.atleast_2d(counts):
        order = np.argsort(-row, kind="stable")
        a, b = int(row[order[0]]), int(row[order[1]])
        p = stats.binomtest(a, a + b, 0.5).pvalue if a + b > 0 else 1.0
        out.append(ABSTAIN if p > alpha else int(order[0]))
    return np.array(out)


def test_predict_table_matches_binomtest():
    for alpha in (0.001, 0.01, 0.05, 0.4):
        table = predict_min_top_count(120, alpha)
        for m in range(121):
            for a in range((m + 1) // 2, m + 1):
                counts = np.array([a, m - a])
                want = _predict_by_binomtest(counts, alpha)[0]
                assert (want != ABSTAIN) == (a >= table[m]), (alpha, m, a)
                assert predict_from_counts(counts, alpha) == want, (alpha, m, a)


@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_predict_from_counts_and_the_sweeps_predict_labels_agree(alpha):
    """The two PREDICT entry points (``smoothing.predict_from_counts``, the study's vectorised
    ``predict_labels``) give the same labels as the per-row binomial test on random counts:
    ties between the top two classes (lowest index wins, then the test abstains), small n
    (n = 1..12, below 1 + log2(1/alpha): always abstains), zero rows, and larger n."""
    from rsjax import sweep

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 10, 12, 30, 100, 1000):
        k = int(rng.integers(2, 11))
        probs = rng.dirichlet(np.full(k, 0.3), size=200)
        counts = np.stack([rng.multinomial(n, p) for p in probs])
        counts[:20, :2] = n // 2  # ties of the top two (n odd: one vote elsewhere)
        counts[:20, 2:] = 0
        counts[:20, -1] += n - 2 * (n // 2)
        counts[20:25] = 0  # rows without votes
        want = _predict_by_binomtest(counts, alpha)
        got = predict_from_counts(counts, alpha)
        assert got.dtype == np.int64 and got.tolist() == want.tolist(), n
        assert sweep.predict_labels(counts, n, alpha).tolist() == want.tolist(), n
        if n >= 30:
            assert (want != ABSTAIN).any() and (want == ABSTAIN).any()  # both answers occur


def _independent_cp_lower(k: int, n: int, alpha: float) -> float:
    """Solve P[Bin(n, p) >= k] = alpha for p by root finding (no beta quantile)."""
    if k == 0:
        return 0.0
    if k == n:
        return alpha ** (1.0 / n)
    return optimize.brentq(lambda p: stats.binom.sf(k - 1, n, p) - alpha, 1e-300, 1.0,
                           xtol=1e-16, rtol=4 * np.finfo(float).eps, maxiter=500)


@pytest.mark.parametrize("n,alpha", [(100, 0.001), (1000, 0.05), (10_000, 0.001), (100_000, 0.001)])
def test_clopper_pearson_matches_independent_computation(n, alpha):
    for k in sorted({0, 1, n // 3, n // 2, n // 2 + 1, int(0.9 * n), n - 1, n}):
        assert abs(float(clopper_pearson_lower(k, n, alpha)) - _independent_cp_lower(k, n, alpha)) < 1e-12


def test_certify_from_counts_radius_and_abstention():
    sigma, alpha = 0.5, 0.001
    counts0 = np.array([[90, 10, 0], [10, 90, 0], [40, 30, 30]])
    counts = np.array([[9000, 1000, 0], [5100, 4900, 0], [5000, 2000, 3000]])
    pred, radius = certify_from_counts(counts0, counts, sigma, alpha)
    pa = _independent_cp_lower(9000, 10_000, alpha)
    assert pred[0] == 0 and abs(radius[0] - sigma * stats.norm.ppf(pa)) < 1e-12
    assert pred[1] == ABSTAIN and radius[1] == 0.0  # c_A = 1 from counts0, p_A_lower < 1/2
    assert pred[2] == ABSTAIN  # 5000/10000: lower bound < 1/2


def test_certified_radius_converges_to_hyperplane_distance():
    sigma, alpha = 0.5, 0.001
    w, b, x = linear_problem(count=6, d_range=(0.15, 0.8))
    dist = l2_distance_to_hyperplane(x, w, b)
    f = linear_model(w, b)
    gaps = []
    for n in (1000, 100_000):
        res = certify(f, x, point_keys(7, range(6)), sigma, 100, n, alpha, 2, chunk_size=4096)
        assert np.all(res.predictions == 1)
        gaps.append(dist - res.radii)
    assert np.all(gaps[1] > -0.002)  # a lower bound (up to float32 noise), with prob >= 1 - alpha
    assert np.max(gaps[1]) < 0.03 * sigma / 0.5 * 1.5
    assert np.mean(gaps[1]) < np.mean(gaps[0]) / 5  # gap shrinks like 1/sqrt(n)


def test_certified_accuracy_curve():
    radii = np.array([0.0, 0.1, 0.5, 1.0, 0.0])
    correct = np.array([True, True, False, True, False])
    acc = certified_accuracy(radii, correct, [0.0, 0.1, 0.6, 2.0])
    np.testing.assert_allclose(acc, [3 / 5, 2 / 5, 1 / 5, 0.0])


# ---------------------------------------------------------------- data-set level: CLI, evaluate, plot
@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    from rsjax.checkpoints import save_checkpoint
    from rsjax.models import get_model_spec

    d = tmp_path_factory.mktemp("ckpt")
    spec = get_model_spec("fmnist_mlp")
    save_checkpoint(d / "mlp.ckpt", "fmnist_mlp", spec.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    images = (rng.uniform(size=(6, 28, 28)) * 255).astype(np.uint8)
    np.savez(d / "data.npz", images=images, labels=np.arange(6) % 10)
    return d


def test_cli_certify_writes_cohen_log(mlp_checkpoint, tmp_path, capsys):
    from rsjax.certification import LOG_HEADER, read_certify_log
    from rsjax.classifier import Classifier
    from rsjax.cli import main

    log = tmp_path / "cert.tsv"
    rc = main(["certify", "--checkpoint", str(mlp_checkpoint / "mlp.ckpt"), "--data",
               f"npz:{mlp_checkpoint / 'data.npz'}", "--sigma", "0.25", "--n0", "20", "--n", "500",
               "--alpha", "0.001", "--limit", "5", "--batch-size", "5", "--out", str(log), "--json"])
    assert rc == 0
    import json
    summary = json.loads(capsys.readouterr().out)
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == list(LOG_HEADER) and len(lines) == 6
    cols = read_certify_log(log)
    assert cols["idx"].tolist() == [0, 1, 2, 3, 4]
    assert np.all((cols["predict"] == -1) == (cols["radius"] == 0))
    assert np.all(cols["correct"] == (cols["predict"] == cols["label"]))
    assert summary["num_images"] == 5
    # same rows as the library call on image 3 alone (keys depend on idx, not on the batch)
    clf = Classifier.from_checkpoint(str(mlp_checkpoint / "mlp.ckpt"))
    data = np.load(mlp_checkpoint / "data.npz")
    x3 = data["images"][3:4, ..., None].astype(np.float32) / 255
    res = certify(clf.logits_fn, x3, point_keys(0, [3]), 0.25, 20, 500, 0.001, 10)
    assert res.predictions[0] == cols["predict"][3]
    assert abs(res.radii[0] - cols["radius"][3]) < 1e-5


def test_cli_certify_per_class_logs_file_indices(mlp_checkpoint, tmp_path, capsys):
    """--per-class: the log's idx are positions in the file, and a row equals that image's row
    in the run over the whole file (its key is fold_in(seed, idx))."""
    from rsjax.certification import read_certify_log
    from rsjax.cli import main

    base = ["certify", "--checkpoint", str(mlp_checkpoint / "mlp.ckpt"), "--data",
            f"npz:{tmp_path / 'sorted.npz'}", "--sigma", "0.25", "--n0", "20", "--n", "300", "--alpha", "0.001"]
    images = np.load(mlp_checkpoint / "data.npz")["images"]
    np.savez(tmp_path / "sorted.npz", images=images, labels=np.array([0, 0, 0, 1, 1, 1]))
    assert main(base + ["--out", str(tmp_path / "all.tsv")]) == 0
    assert main(base + ["--per-class", "1", "--out", str(tmp_path / "some.tsv")]) == 0
    capsys.readouterr()
    full, some = read_certify_log(tmp_path / "all.tsv"), read_certify_log(tmp_path / "some.tsv")
    assert some["idx"].tolist() == [0, 3]
    for col in ("label", "predict", "correct"):
        assert some[col].tolist() == full[col][[0, 3]].tolist()
    np.testing.assert_allclose(some["radius"], full["radius"][[0, 3]], atol=1e-6)


def test_cli_certify_rejects_bad_alpha(mlp_checkpoint, tmp_path, capsys):
    from rsjax.cli import main

    rc = main(["certify", "--checkpoint", str(mlp_checkpoint / "mlp.ckpt"), "--data",
               f"npz:{mlp_checkpoint / 'data.npz'}", "--sigma", "0.25", "--alpha", "2",
               "--out", str(tmp_path / "x.tsv")])
    assert rc == 2 and "--alpha" in capsys.readouterr().err


def test_evaluate_smoothed_reports_accuracy_and_abstention(mlp_checkpoint):
    from rsjax.classifier import Classifier
    from rsjax.smoothing import evaluate_smoothed

    clf = Classifier.from_checkpoint(str(mlp_checkpoint / "mlp.ckpt"))
    data = np.load(mlp_checkpoint / "data.npz")
    images = data["images"][..., None].astype(np.float32) / 255
    labels = clf.predict(images)  # labels = base predictions: tiny sigma keeps them
    out = evaluate_smoothed(clf, images, labels, sigma=1e-4, n=10, alpha=0.001, seed=0, batch_size=4)
    assert out["smoothed_accuracy"] == 1.0
    assert out["abstention_rate"] == 1.0 and out["predict_accuracy"] == 0.0  # the n=10 trap
    out = evaluate_smoothed(clf, images, labels, sigma=1e-4, n=30, alpha=0.001, seed=0, batch_size=4)
    assert out["abstention_rate"] == 0.0 and out["predict_accuracy"] == 1.0


def test_plot_certified_accuracy(tmp_path):
    from rsjax.plots import plot_certified_accuracy

    runs = {"sigma=0.25": (np.array([0.1, 0.3, 0.0]), np.array([True, True, False])),
            "sigma=0.5": (np.array([0.6, 0.0]), np.array([True, False]))}
    fig = plot_certified_accuracy(runs, tmp_path / "cert.png")
    assert (tmp_path / "cert.png").stat().st_size > 1000
    ys = [line.get_ydata() for line in fig.axes[0].get_lines()]
    assert ys[0][0] == pytest.approx(2 / 3) and ys[1][0] == pytest.approx(1 / 2)
    with pytest.raises(InputError):
        plot_certified_accuracy({})


def test_erfinv_giles_matches_float64_erfinv():
    """The hash noise's erfinv (Giles' single-precision approximation) is within 1e-6 of scipy's
    float64 erfinv over the whole 24-bit grid range the noise uses (lax.erf_inv: ~1.5e-5)."""
    from scipy.special import erfinv

    from rsjax.smoothing import erfinv_giles

    u = np.concatenate([np.linspace(-1 + 2.0**-23, 1 - 2.0**-23, 400_001), [0.0, 1e-7, -0.9999999]]).astype(np.float32)
    got = np.asarray(jax.jit(erfinv_giles)(jnp.asarray(u)), np.float64)
    assert np.abs(got - erfinv(u.astype(np.float64))).max() < 1e-6


def test_rsjax_certify_stays_the_function_after_the_submodule_is_imported():
    """``rsjax.certify`` is the CERTIFY function whatever is imported later (the dataset-level
    module used to be the submodule ``rsjax.certify``, whose import rebound the attribute to the
    module, so the README example failed depending on test order; it is now
    ``rsjax.certification``). Fresh interpreter: order matters."""
    import subprocess
    import sys

    code = ("import rsjax; from rsjax.certification import certify_dataset; import rsjax.certification; "
            "import rsjax.cli.certify; assert callable(rsjax.certify), rsjax.certify")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# eval_rows: a chunk is evaluated in calls of eval_rows rows, only as far as its valid slots
# ---------------------------------------------------------------------------------------------
def _counting_model(weights: np.ndarray):
    """The batch-invariant K-class linear model, recording the row count of every call."""
    base = multiclass_linear_logits_fn(weights)
    calls: list[int] = []

    def logits(x):
        jax.debug.callback(lambda r: calls.append(int(r)), jnp.int32(x.shape[0]))
        return base(x)

    return logits, calls


@pytest.mark.parametrize("early_stop", [False, True])
def test_eval_rows_gives_identical_votes(early_stop):
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(3, *SHAPE)).astype(np.float32) * 0.3
    f = multiclass_linear_logits_fn(weights)
    x = rng.uniform(size=(13, *SHAPE)).astype(np.float32)
    keys = point_keys(5, range(13))
    ref = votes(f, x, keys, 0.5, 301, 3, chunk_size=256, early_stop=early_stop, eval_rows=256)
    for rows in (8, 32, 128):
        got = votes(f, x, keys, 0.5, 301, 3, chunk_size=256, early_stop=early_stop, eval_rows=rows)
        np.testing.assert_array_equal(ref.counts, got.counts)
        np.testing.assert_array_equal(ref.evaluations, got.evaluations)


def test_eval_rows_skips_the_empty_tail_of_a_chunk():
    """3 active points x n = 10 = 30 samples in a chunk of 256: 4 calls of 8 rows (not 32), and
    a full second chunk (300 samples) uses all 32 + 6 calls; counts as with one call per chunk."""
    from rsjax.smoothing import vote_counts
    from rsjax.xla_options import jit

    rng = np.random.default_rng(6)
    weights = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    f, calls = _counting_model(weights)
    x = jnp.asarray(rng.uniform(size=(8, *SHAPE)), jnp.float32)
    keys = point_keys(7, range(8))
    run = jit(lambda n_vec, rows: vote_counts(f, x, keys, 0.3, n_vec, 2, chunk_size=256, eval_rows=rows),
              static_argnums=1)
    n_small = jnp.asarray([10, 0, 10, 0, 0, 10, 0, 0], jnp.int32)
    few = run(n_small, 8)
    jax.block_until_ready(few)
    assert calls == [8] * 4
    calls.clear()
    whole = run(n_small, 256)
    jax.block_until_ready(whole)
    assert calls == [256]
    np.testing.assert_array_equal(np.asarray(few.counts), np.asarray(whole.counts))
    calls.clear()
    many = run(jnp.full((8,), 37, jnp.int32), 8)  # 296 samples: a full chunk then 40 slots
    jax.block_until_ready(many)
    assert calls == [8] * (32 + 5)


def test_eval_rows_must_divide_the_chunk():
    w, b, x = linear_problem(count=3)
    with pytest.raises(InputError, match="eval_rows=48"):
        votes(linear_model(w, b), x, point_keys(0, range(3)), 0.3, 200, 2, chunk_size=256, eval_rows=48)


def test_default_eval_rows():
    from rsjax.classifier import forward_in_blocks
    from rsjax.smoothing import CPU_EVAL_ROWS, default_eval_rows

    def f(x):
        return x

    blocked = forward_in_blocks(f, 32)
    assert blocked.block_rows == 32
    if jax.default_backend() == "cpu":
        assert default_eval_rows(blocked, 1024) == 32
        assert default_eval_rows(f, 1024) == CPU_EVAL_ROWS
        assert default_eval_rows(f, CPU_EVAL_ROWS) is None  # one call per chunk anyway
        assert default_eval_rows(f, 1000) is None  # does not divide the chunk
    else:
        assert default_eval_rows(blocked, 1024) is None

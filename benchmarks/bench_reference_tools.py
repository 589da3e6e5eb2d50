"""rsjax next to the reference tools: ART's randomized smoothing and HopSkipJump, foolbox 3's
HopSkipJumpAttack, on the same weights, timed in the same process.

    python benchmarks/bench_reference_tools.py certify        # CIFAR-10 ResNet-20 CERTIFY vs ART
    python benchmarks/bench_reference_tools.py foolbox-hsja   # Fashion-MNIST MLP, HSJA, no RS, vs foolbox
    python benchmarks/bench_reference_tools.py art-rs-hsja    # HSJA under RS (n=10) vs ART HopSkipJump
    python benchmarks/bench_reference_tools.py all
    ... [--torch-threads 1] [--single-thread]   # see the thread note below

Thread note: on a loaded 2-core machine torch's default 2 OpenMP threads can make small model
calls (10-20 rows of an MLP) 10-50x slower than one thread; XLA's pool is affected less. Run the
HSJA sections with --torch-threads 1 and --single-thread as well before quoting a ratio.

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torch, adversarial-robustness-toolbox,
foolbox); without it, or without ``../shared`` data, each section prints what is missing and the
script exits 0. Every table is preceded by the 1-minute load average, torch.get_num_threads() and
the jax / torch / ART / foolbox versions. Times exclude compilation (a warm-up call first) and
come from the same process, the two tools interleaved where the section allows it. Nothing is
asserted about times.

What the reference tools do (read from their sources, ART 1.20.1 / foolbox 3.3.4):

* ART ``PyTorchRandomizedSmoothing.certify(x, n, batch_size)`` (RandomizedSmoothingMixin): per
  image, one by one: the selection counts come from ``sample_size`` noisy copies (the
  constructor's sample_size *is* n0), the estimation counts from n fresh copies; p_A lower bound
  = statsmodels ``proportion_confint(count, n, alpha=2*alpha, method='beta')[0]`` (one-sided
  Clopper-Pearson at level alpha, as Cohen and rsjax); abstain (-1, radius 0) if < 1/2, else
  radius scale * Phi^-1(p_A). Noise: ``np.random.normal`` float64 over all n copies at once, cast
  to float32, added in input space (before the model, which normalizes itself), not clipped;
  model calls through a DataLoader of ``batch_size``. Same algorithm as rsjax.certify; only the
  noise generator and batching differ (rsjax: one jitted while-loop over chunks of chunk_size).
* ART ``predict`` of the same estimator (what HopSkipJump queries): per point, ``sample_size``
  noisy copies in one model call, class counts, then a binomial test of the top two counts and
  **abstention (an all-zero output row, whose argmax is class 0) unless p <= alpha**. With
  sample_size = 10 and alpha = 0.001 it abstains on every point (10/10 gives p = 0.002, Cohen's
  trap). The art-rs-hsja section therefore uses a subclass that calls predict with
  ``is_abstain=False`` (the plain plurality vote, ties to the lowest index = rsjax's 'label'
  criterion) and shows the stock behaviour on one image separately.
* foolbox ``HopSkipJumpAttack`` runs all images in lock-step (every model call carries every
  image, also those already done) and has no query budget: ``steps`` iterations, each with
  ``initial_gradient_eval_steps * sqrt(step+1)`` gradient probes (one model call per probe), a
  geometric step-size search and a binary search; start from LinearSearchBlendedUniformNoise.
  Its queries are counted here as rows through the model / images. Its approximate_gradients
  normalizes the estimated gradient by the L2 norm of the *whole batch's* gradient tensor, so in a
  batch of B images every step is about 1/sqrt(B) of HSJA's; the section also runs foolbox one
  image per call to show the distortion without that coupling.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RSJAX_SHARED", REPO.parent / "shared"))
INSTALL = "pip install -e '.[bench]'  (torch, adversarial-robustness-toolbox, foolbox)"

sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------
def missing_modules(names) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def require(names, what: str) -> bool:
    miss = missing_modules(names)
    if miss:
        print(f"\n{what}: skipped, missing Python package(s) {', '.join(miss)}; install with\n    {INSTALL}")
        return False
    return True


def versions() -> str:
    import jax

    out = [f"jax {jax.__version__} ({jax.devices()[0].platform})"]
    try:
        import torch

        out.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        out.append("torch missing")
    for mod, label in (("art", "ART"), ("foolbox", "foolbox")):
        try:
            out.append(f"{label} {__import__(mod).__version__}")
        except ImportError:
            out.append(f"{label} missing")
    return ", ".join(out)


def env_note() -> str:
    xla = "XLA single-threaded" if "multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", "") else \
        "XLA default thread pool"
    return f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {versions()}; {xla}"


def status_counts(status) -> str:
    names, counts = np.unique(np.asarray(status), return_counts=True)
    return ", ".join(f"{k}: {int(v)}" for k, v in zip(names, counts))


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def flax_mlp_to_torch(classifier):
    """PyTorch copy of an rsjax ``fmnist_mlp`` (Normalize, flatten, Dense-ReLU..., Dense).
    Dense kernels are [in, out], torch Linear weights [out, in]; Flax flattens NHWC (28,28,1) and
    torch NCHW (1,28,28): the same order for one channel."""
    import torch
    from torch import nn

    module = classifier.spec.build()
    params = classifier.variables["params"]
    names = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
    mean = torch.tensor(module.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(module.std, dtype=torch.float32).view(1, -1, 1, 1)

    class TorchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.layers = nn.ModuleList()
            for k in names:
                w = np.asarray(params[k]["kernel"], np.float32)
                lin = nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(w.T.copy()))
                    lin.bias.copy_(torch.from_numpy(np.array(params[k]["bias"], np.float32)))
                self.layers.append(lin)

        def forward(self, x):
            h = ((x - self.mean) / self.std).flatten(1)
            for lin in self.layers[:-1]:
                h = torch.relu(lin(h))
            return self.layers[-1](h)

    if classifier.input_shape[-1] != 1:
        raise ValueError("the NHWC/NCHW flatten orders agree only for one channel")
    return TorchMLP().eval()


def cifar_resnet20_torch(weights: Path):
    """tests/torch_reference_resnets.py's ResNet-20 (ImageNet mean/std normalization inside,
    as rsjax's cifar_resnet20) with akamaster's .th weights ('module.' prefix stripped)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from torch_reference_resnets import build_reference

    model = build_reference("cifar_resnet20")
    blob = torch.load(str(weights), map_location="cpu", weights_only=True)
    sd = blob.get("state_dict", blob)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


class RowCounter:
    """Forward hooks counting model calls, input rows (= base-model evaluations) and the wall
    time spent inside the model's forward."""

    def __init__(self, model):
        self.calls = self.rows = 0
        self.forward_s = 0.0
        self._t0 = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._hook)

    def _pre(self, module, inputs):
        self._t0 = time.perf_counter()

    def _hook(self, module, inputs, output):
        self.forward_s += time.perf_counter() - self._t0
        self.calls += 1
        self.rows += int(inputs[0].shape[0])

    def reset(self):
        self.calls = self.rows = 0
        self.forward_s = 0.0


def default_fmnist_checkpoint() -> Path | None:
    root = Path(os.environ.get("RSJAX_CACHE", Path.home() / ".cache/rsjax")) / "checkpoints"
    found = [p for p in root.glob("fmnist_mlp-standard-*.ckpt") if not p.name.endswith(".best.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def fmnist_setup(args, count: int):
    """Classifier, its torch copy (checked to 1e-5) and the first ``count`` correctly classified
    Fashion-MNIST test images."""
    import torch

    from rsjax import Classifier, load_dataset

    ckpt = Path(args.checkpoint) if args.checkpoint else default_fmnist_checkpoint()
    if ckpt is None or not ckpt.exists():
        print("no Fashion-MNIST MLP checkpoint (~/.cache/rsjax/checkpoints/fmnist_mlp-standard-*.ckpt): train "
              "one with `.venv/bin/rsjax train --dataset fashion-mnist:train --out m.ckpt` and pass --checkpoint")
        return None
    clf = Classifier.from_checkpoint(str(ckpt))
    try:
        data = load_dataset("fashion-mnist:test", limit=2000)
    except Exception as e:  # noqa: BLE001 - any data problem: say so and skip
        print(f"Fashion-MNIST test data not available ({e}); `apt-get install -y dataset-fashion-mnist` "
              "or set RSJAX_DATA_DIR")
        return None
    tmodel = flax_mlp_to_torch(clf)
    x_all, y_all = data.images, data.labels
    with torch.no_grad():
        tl = tmodel(torch.from_numpy(x_all[:500].transpose(0, 3, 1, 2).copy())).numpy()
    jl = clf.logits(x_all[:500])
    diff = float(np.abs(tl - jl).max())
    agree = float((tl.argmax(1) == jl.argmax(1)).mean())
    print(f"model {ckpt.name}: torch copy vs rsjax on 500 test images: max |logit diff| {diff:.2e}, "
          f"argmax agreement {agree:.1%}" + ("" if diff < 1e-5 else "  ** above 1e-5 **"))
    pred = clf.predict(x_all)
    idx = np.flatnonzero(pred == y_all)[:count]
    return clf, tmodel, x_all[idx], y_all[idx], idx, {"max_logit_diff": diff, "argmax_agreement": agree}


# ---------------------------------------------------------------------------------------------
# 1. CERTIFY: rsjax vs ART PyTorchRandomizedSmoothing
# ---------------------------------------------------------------------------------------------
def cmd_certify(args) -> None:
    print("\n## certify: CIFAR-10 ResNet-20 CERTIFY per image, rsjax vs ART")
    if not require(["torch", "art"], "certify"):
        return
    weights = SHARED / "data/cifar10/resnet20-12fca82f.th"
    data_path = Path(args.cifar_data)
    if not weights.exists() or not data_path.exists():
        print(f"certify: skipped, missing {weights if not weights.exists() else data_path} (the ../shared data)")
        return
    import jax
    import torch
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    import rsjax
    from rsjax import Classifier, load_dataset
    from rsjax.models.convert import convert_file

    ckpt = Path(args.resnet_checkpoint) if args.resnet_checkpoint else Path(args.workdir) / "cifar_resnet20.ckpt"
    if not ckpt.exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        convert_file("cifar_resnet20", str(weights), str(ckpt))
    clf = Classifier.from_checkpoint(str(ckpt))
    tmodel = cifar_resnet20_torch(weights)
    data = load_dataset(f"npz:{data_path}", limit=max(100, args.images))
    x, y = data.images, data.labels

    # conversion check: same normalization constants, same argmax on 100 images
    from rsjax.models import cifar_resnet

    sys.path.insert(0, str(REPO / "tests"))
    import torch_reference_resnets as trr

    same_norm = tuple(cifar_resnet.IMAGENET_MEAN) == tuple(trr.IMAGENET_MEAN) and \
        tuple(cifar_resnet.IMAGENET_STD) == tuple(trr.IMAGENET_STD)
    with torch.no_grad():
        tl = tmodel(torch.from_numpy(x[:100].transpose(0, 3, 1, 2).copy())).numpy()
    jl = clf.logits(x[:100], batch_size=100)
    agree = int((tl.argmax(1) == jl.argmax(1)).sum())
    print(f"conversion check on 100 images of {data_path.name}: argmax agreement {agree}/100, max |logit diff| "
          f"{np.abs(tl - jl).max():.2e}; normalization mean/std identical in rsjax and the torch reference: "
          f"{same_norm} ({trr.IMAGENET_MEAN} / {trr.IMAGENET_STD}); rsjax clean accuracy "
          f"{(jl.argmax(1) == y[:100]).mean():.0%}")

    n0, n, alpha, sigma = args.n0, args.n, args.alpha, args.sigma
    cls = PyTorchRandomizedSmoothing
    if missing_modules(["statsmodels"]):
        # ART's certify imports statsmodels for its bound, and neither ART nor the bench extra
        # installs it: use the identical scipy expression (one scalar per image, no timing impact)
        from scipy import stats

        class ScipyBoundRS(PyTorchRandomizedSmoothing):
            def _lower_confidence_bound(self, n_class_samples, n_total_samples):
                k = int(n_class_samples)
                return float(stats.beta.ppf(self.alpha, k, n_total_samples - k + 1)) if k > 0 else 0.0

        cls = ScipyBoundRS
        print("statsmodels missing (ART's certify needs it; `pip install statsmodels`): ART's Clopper-Pearson "
              "bound proportion_confint(k, n, 2*alpha, 'beta')[0] replaced by the identical "
              "scipy.stats.beta.ppf(alpha, k, n-k+1)")
    est = cls(model=tmodel, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
              clip_values=(0.0, 1.0), device_type="cpu", sample_size=n0, scale=sigma, alpha=alpha)
    counter = RowCounter(tmodel)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    root = jax.random.key(args.seed)
    rows = []
    for bs in args.batch_sizes:
        # warm-up (compilation of the chunk programs: n is traced, the chunk is min(bs, 2^k >= n))
        keys0 = rsjax.image_keys(root, np.array([10_000]))
        rsjax.certify(clf.logits_fn, x[:1], keys0, sigma, n0, max(bs, n0), alpha, 10, chunk_size=bs)
        est.certify(x_nchw[:1], n=bs, batch_size=bs)
        t_rs, t_art, res_rs, res_art, ev_art, fw_art = [], [], [], [], [], []
        for i in range(args.images):  # interleaved, image by image
            keys = rsjax.image_keys(root, np.array([i]))
            t = time.perf_counter()
            r = rsjax.certify(clf.logits_fn, x[i:i + 1], keys, sigma, n0, n, alpha, 10, chunk_size=bs)
            t_rs.append(time.perf_counter() - t)
            res_rs.append((int(r.predictions[0]), float(r.radii[0])))
            counter.reset()
            t = time.perf_counter()
            p, rad = est.certify(x_nchw[i:i + 1], n=n, batch_size=bs)
            t_art.append(time.perf_counter() - t)
            ev_art.append(counter.rows)
            fw_art.append(counter.forward_s)
            res_art.append((int(p[0]), float(rad[0])))
            print(f"  batch {bs} image {i} (label {y[i]}): rsjax {t_rs[-1]:.2f} s -> {res_rs[-1]}, "
                  f"ART {t_art[-1]:.2f} s -> {res_art[-1]} ({ev_art[-1]} rows, {counter.calls} model calls)",
                  file=sys.stderr, flush=True)
        rows.append((bs, t_rs, t_art, res_rs, res_art, ev_art, fw_art))

    print(f"\n### CERTIFY per image, cifar_resnet20, n0={n0}, n={n:,}, alpha={alpha}, sigma={sigma}, "
          f"{args.images} images of {data_path.name}, one image per call")
    print(f"{env_note()}\n")
    print("ART: n0 = sample_size; its predictions and radii differ from rsjax's only through the noise draws.\n")
    print("| model batch | tool | s / image (best) | s / image (mean) | evaluations/s (best) | "
          "torch threads | (prediction, radius) per image |")
    print("|---|---|---|---|---|---|---|")
    for bs, t_rs, t_art, res_rs, res_art, ev_art, fw_art in rows:
        evals = n0 + n
        fmt = lambda rs: ", ".join(f"({p}, {r:.3f})" for p, r in rs)  # noqa: E731
        print(f"| {bs} | rsjax certify (chunk_size={bs}) | {min(t_rs):.2f} | {np.mean(t_rs):.2f} | "
              f"{evals / min(t_rs):,.0f} | n/a (XLA) | {fmt(res_rs)} |")
        print(f"| {bs} | ART PyTorchRandomizedSmoothing.certify(batch_size={bs}) | {min(t_art):.2f} | "
              f"{np.mean(t_art):.2f} | {np.mean(ev_art) / min(t_art):,.0f} | {torch.get_num_threads()} | "
              f"{fmt(res_art)} |")
        k = int(np.argmin(t_art))
        print(f"| {bs} | ART, time inside the torch forward only | {fw_art[k]:.2f} | {np.mean(fw_art):.2f} | "
              f"{ev_art[k] / fw_art[k]:,.0f} | {torch.get_num_threads()} | |")
        print(f"| {bs} | ratio ART / rsjax | {min(t_art) / min(t_rs):.2f}x | {np.mean(t_art) / np.mean(t_rs):.2f}x"
              f" | | | |")
    print(f"\nART base-model rows per image: {sorted(set(r for row in rows for r in row[5]))} "
          f"(n0 + n = {n0 + n}); load average now {os.getloadavg()[0]:.2f}")


# ---------------------------------------------------------------------------------------------
# 2. HSJA without RS: rsjax vs foolbox 3
# ---------------------------------------------------------------------------------------------
def foolbox_queries_estimate(steps: int, init: int = 60, bsearch: int = 16, stepsearch: int = 2) -> int:
    """Rough foolbox HSJA queries per image for ``steps`` iterations (to pick steps)."""
    return init + bsearch + sum(int(100 * math.sqrt(s + 1)) + stepsearch + bsearch for s in range(steps))


def cmd_foolbox_hsja(args) -> None:
    print("\n## foolbox-hsja: HSJA without RS on the Fashion-MNIST MLP, rsjax vs foolbox 3")
    if not require(["torch", "foolbox", "eagerpy"], "foolbox-hsja"):
        return
    import foolbox as fb
    import torch

    from rsjax import ModelOracle, get_attack

    setup = fmnist_setup(args, args.fb_images)
    if setup is None:
        return
    clf, tmodel, x, y, idx, check = setup
    counter = RowCounter(tmodel)
    fmodel = fb.PyTorchModel(tmodel, bounds=(0.0, 1.0))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    b = len(x)
    # warm-up = calibration: one step on the whole batch measures the start + first-step queries
    counter.reset()
    torch.manual_seed(args.seed + 100)
    fb.attacks.HopSkipJumpAttack(steps=1)(fmodel, xt, yt, epsilons=None)
    q1 = counter.rows / b
    steps = args.fb_steps
    if steps <= 0:
        est = {s: foolbox_queries_estimate(s, init=max(q1 - foolbox_queries_estimate(1, init=0), 0))
               for s in range(1, 60)}
        steps = min(est, key=lambda s: abs(est[s] - args.queries))
        print(f"foolbox: 1 step made {q1:.0f} queries / image; {steps} steps expected to make ~{est[steps]:.0f}")
    fb_attack = fb.attacks.HopSkipJumpAttack(steps=steps, initial_gradient_eval_steps=100,
                                             max_gradient_eval_steps=10_000, gamma=1.0, constraint="l2")

    def run_foolbox(seed):
        torch.manual_seed(seed)
        counter.reset()
        t = time.perf_counter()
        raw, _, success = fb_attack(fmodel, xt, yt, epsilons=None)
        wall = time.perf_counter() - t
        l2 = (raw - xt).flatten(1).norm(dim=1).numpy()
        return wall, counter.rows / b, l2, success.numpy(), counter.forward_s

    oracle = ModelOracle(clf.logits_fn, clf.num_classes, name="fmnist_mlp")
    attack = get_attack("hsja")

    # rsjax warm-up: once on the same batch and budget (compilation)
    first = run_foolbox(args.seed)
    q_fb = first[1]
    budget = int(round(q_fb))  # equal queries: rsjax gets what foolbox used
    t = time.perf_counter()
    attack.run(oracle, x, y, args.seed + 1, budget, image_ids=idx, batch_size=b)
    compile_s = time.perf_counter() - t
    fb_runs, rs_runs = [first], []
    for rep in range(args.reps):  # interleaved: rsjax, foolbox, rsjax, ...
        t = time.perf_counter()
        res = attack.run(oracle, x, y, args.seed, budget, image_ids=idx, batch_size=b)
        rs_runs.append((time.perf_counter() - t, res))
        if rep + 1 < args.reps:
            fb_runs.append(run_foolbox(args.seed + rep + 1))
    # foolbox one image per call: its approximate_gradients divides the estimated gradient by the
    # L2 norm of the whole batch's gradient tensor (ep.norms.l2 over all axes), not per image, so
    # in a batch of B each image's step is ~1/sqrt(B) of HSJA's; B = 1 removes that coupling
    single = []
    for i in range(min(args.fb_single, b)):
        torch.manual_seed(args.seed + 1000 + i)
        counter.reset()
        t = time.perf_counter()
        raw1, _, ok1 = fb_attack(fmodel, xt[i:i + 1], yt[i:i + 1], epsilons=None)
        single.append((time.perf_counter() - t, counter.rows, float((raw1 - xt[i:i + 1]).norm()), bool(ok1[0])))
    best_fb = min(r[0] for r in fb_runs) / b
    best_rs = min(r[0] for r in rs_runs) / b
    res = rs_runs[-1][1]
    att = res.status == "attacked"
    print(f"\n### HSJA, no RS, fmnist_mlp, {b} correctly classified Fashion-MNIST test images, equal queries")
    print(f"{env_note()}")
    print(f"foolbox HopSkipJumpAttack(steps={steps}, initial_gradient_eval_steps=100, gamma=1), default init "
          f"attack; its queries counted by a forward hook (rows / images). rsjax get_attack('hsja') defaults "
          f"(init_num_evals=100, gamma=1), ModelOracle, max_queries = foolbox's count = {budget}; rsjax "
          f"compile + warm-up run {compile_s:.1f} s (excluded). Best of {len(fb_runs)} foolbox / {len(rs_runs)} "
          f"rsjax runs, interleaved; per image = batch wall / {b}.\n")
    print("| tool | queries / image | s / image (best) | s / image (all runs) | median L2 | success |")
    print("|---|---|---|---|---|---|")
    print(f"| foolbox 3.3.4 HSJA (torch, {torch.get_num_threads()} threads) | {q_fb:.1f} (every image) | "
          f"{best_fb:.4f} | {', '.join(f'{r[0] / b:.4f}' for r in fb_runs)} | {np.median(fb_runs[0][2]):.4f} | "
          f"{int(fb_runs[0][3].sum())}/{b} |")
    kb = int(np.argmin([r[0] for r in fb_runs]))
    print(f"| foolbox, of which inside the torch forward | | {fb_runs[kb][4] / b:.4f} | | | |")
    print(f"| rsjax HSJA (jax, jit) | {res.queries.min()}-{res.queries.max()} (max {budget}) | {best_rs:.4f} | "
          f"{', '.join(f'{r[0] / b:.4f}' for r in rs_runs)} | {np.median(res.l2[att]):.4f} | "
          f"{int(att.sum())}/{b} attacked |")
    if single:
        k = len(single)
        print(f"| foolbox, one image per call (first {k} images) | {np.mean([r[1] for r in single]):.1f} (mean) | "
              f"{np.mean([r[0] for r in single]):.4f} (mean) | | {np.median([r[2] for r in single]):.4f} "
              f"(rsjax on the same {k}: {np.median(res.l2[:k]):.4f}) | {sum(r[3] for r in single)}/{k} |")
    print(f"| ratio foolbox / rsjax | | {best_fb / best_rs:.1f}x | | "
          f"{np.median(fb_runs[0][2]) / np.median(res.l2[att]):.2f} (L2 ratio) | |")
    print(f"\n(torch copy check: max |logit diff| {check['max_logit_diff']:.1e}; load average now "
          f"{os.getloadavg()[0]:.2f})")


# ---------------------------------------------------------------------------------------------
# 3. HSJA under RS (n = 10): rsjax vs ART HopSkipJump on ART's randomized smoothing
# ---------------------------------------------------------------------------------------------
def cmd_art_rs_hsja(args) -> None:
    print("\n## art-rs-hsja: HSJA against RS (sigma=0.25, n=10) on the Fashion-MNIST MLP, rsjax vs ART")
    if not require(["torch", "art"], "art-rs-hsja"):
        return
    import torch
    from art.attacks.evasion import HopSkipJump
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    import rsjax
    from rsjax import SmoothedOracle, get_attack

    class PluralityRS(PyTorchRandomizedSmoothing):
        """ART's smoothing with ``predict(..., is_abstain=False)``: the plain plurality vote."""

        def predict(self, x, batch_size=128, verbose=False, **kwargs):
            kwargs.setdefault("is_abstain", False)
            return super().predict(x, batch_size=batch_size, verbose=verbose, **kwargs)

    n, sigma = args.rs_n, args.rs_sigma
    setup = fmnist_setup(args, 20 * args.rs_images)
    if setup is None:
        return
    clf, tmodel, x, y, idx, _ = setup
    # images that g_sigma classifies stably: >= 90 % of 100 noisy votes for the true label (so the
    # clean point is not already adversarial for g_{sigma,n}, for either tool)
    import jax

    votes100 = rsjax.smoothing.votes(clf.logits_fn, x, rsjax.image_keys(jax.random.key(7), idx), sigma, 100,
                                     10).counts
    stable = np.flatnonzero(votes100[np.arange(len(y)), y] >= 90)[: args.rs_images]
    x, y, idx = x[stable], y[stable], idx[stable]
    counter = RowCounter(tmodel)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    onehot = np.eye(10, dtype=np.float32)[y]
    hsja_kw = dict(batch_size=64, targeted=False, norm=2, max_iter=args.art_max_iter, max_eval=args.art_max_eval,
                   init_eval=args.art_init_eval, init_size=args.art_init_size, verbose=False)

    def art_attack(cls, i, timeout):
        est = cls(model=tmodel, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                  clip_values=(0.0, 1.0), device_type="cpu", sample_size=n, scale=sigma, alpha=0.001)
        att = HopSkipJump(est, **hsja_kw)
        counter.reset()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(timeout)
        t = time.perf_counter()
        status, xa = "returned", None
        try:
            xa = att.generate(x_nchw[i:i + 1], y=onehot[i:i + 1])
        except Timeout:
            status = f"timeout after {timeout} s"
        except Exception as e:  # noqa: BLE001 - report whatever ART raises
            status = f"error {type(e).__name__}: {e}"[:120]
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        wall = time.perf_counter() - t
        l2 = float(np.linalg.norm(xa[0] - x_nchw[i])) if xa is not None else float("nan")
        if xa is not None and l2 == 0.0:
            status = "returned x unchanged (no start found)"
        return wall, counter.calls, counter.rows, l2, status, xa, counter.forward_s

    # ART first (defines the budget), with the rsjax program compiled before for a fair host load
    np.random.seed(args.seed)
    art_rows = []
    for i in range(len(x)):
        art_rows.append(art_attack(PluralityRS, i, args.timeout))
        w, c, r, l2, st, _, fw = art_rows[-1]
        print(f"  ART image {idx[i]}: {w:.2f} s ({fw:.2f} s in the torch forward), {c} model calls, {r} rows, "
              f"L2 {l2:.4f}, {st}",
              file=sys.stderr, flush=True)
    queries_art = np.array([r[2] / n for r in art_rows])  # one query = one point voted with n rows
    budget = int(np.median(queries_art))

    results = {}
    for es in (False, True):
        oracle = SmoothedOracle(clf.logits_fn, 10, sigma=sigma, n=n, criterion="label", early_stop=es)
        attack = get_attack("hsja")
        t = time.perf_counter()
        attack.run(oracle, x, y, args.seed + 1, budget, image_ids=idx, batch_size=len(x))
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        res = attack.run(oracle, x, y, args.seed, budget, image_ids=idx, batch_size=len(x))
        results[es] = (time.perf_counter() - t, res, compile_s, oracle)

    # the stock ART estimator (abstention at alpha=0.001) on one image, to show what happens
    stock = art_attack(PyTorchRandomizedSmoothing, 0, min(args.timeout, 120))

    # level actually reached by each tool's output: P[g_{sigma,n}(x_a) != y] over 100 fresh calls
    lab_oracle = results[False][3]
    ok_art = np.array([r[5] is not None for r in art_rows])
    xa_art = np.stack([r[5][0].transpose(1, 2, 0) if r[5] is not None else x[i] for i, r in enumerate(art_rows)])
    lev_art = rsjax.level_of(lab_oracle, xa_art, y, jax.random.key(99), calls=100, image_ids=idx).level
    lev_rs = {es: rsjax.level_of(lab_oracle, results[es][1].x_adv, y, jax.random.key(99), calls=100,
                                 image_ids=idx).level for es in results}

    b = len(x)
    art_wall = np.array([r[0] for r in art_rows])
    print(f"\n### HSJA against RS, sigma={sigma}, n={n}, fmnist_mlp, {b} Fashion-MNIST test images classified "
          f"correctly by f and by >= 90 of 100 noisy votes (ids {idx.tolist()})")
    print(f"{env_note()}")
    print(f"ART HopSkipJump(max_iter={args.art_max_iter}, max_eval={args.art_max_eval}, "
          f"init_eval={args.art_init_eval}, init_size={args.art_init_size}, batch_size=64) on "
          f"PyTorchRandomizedSmoothing(sample_size={n}, scale={sigma}) with predict(is_abstain=False), one image "
          f"per generate() call, {args.timeout} s alarm per image; its model calls / rows counted by a forward "
          f"hook (queries = rows / n, its clean-image and final compute_success predictions included). rsjax "
          f"get_attack('hsja') defaults against SmoothedOracle(logits_fn, 10, sigma={sigma}, n={n}, "
          f"criterion='label'), all {b} images in one batch, max_queries = median ART queries = {budget}; "
          f"compile + warm-up run excluded. level = P[g_(sigma,n)(x_adv) != y] over 100 fresh calls (rsjax "
          f"level_of, same for both tools).\n")
    print("| tool | queries / image (min-max) | base-model evaluations / image | s / image | median L2 | "
          "median level | outcome |")
    print("|---|---|---|---|---|---|---|")
    statuses = {}
    for r in art_rows:
        statuses[r[4]] = statuses.get(r[4], 0) + 1
    l2_art = np.array([r[3] for r in art_rows])
    good = ok_art & (l2_art > 0)
    print(f"| ART 1.20.1 HopSkipJump (torch, {torch.get_num_threads()} threads) | {queries_art.min():.0f}-"
          f"{queries_art.max():.0f} (median {np.median(queries_art):.0f}) | {np.mean([r[2] for r in art_rows]):,.0f} | "
          f"{art_wall.mean():.3f} (mean; max {art_wall.max():.2f}) | "
          f"{np.median(l2_art[good]) if good.any() else float('nan'):.4f} | {np.median(lev_art):.2f} | "
          f"{'; '.join(f'{k}: {v}' for k, v in statuses.items())} |")
    print(f"| ART, of which inside the torch forward | | | {np.mean([r[6] for r in art_rows]):.3f} (mean) | | | |")
    for es, (wall, res, compile_s, _) in results.items():
        att = res.status == "attacked"
        print(f"| rsjax HSJA, early_stop={es} | {res.queries.min()}-{res.queries.max()} | "
              f"{res.evaluations.mean():,.0f} | {wall / b:.4f} (batch {wall:.2f} s / {b}; compile {compile_s:.1f} s) | "
              f"{np.median(res.l2[att]) if att.any() else float('nan'):.4f} | {np.median(lev_rs[es]):.2f} | "
              f"{status_counts(res.status)} |")
    for es, (wall, *_rest) in results.items():
        print(f"| ratio ART / rsjax (early_stop={es}) | | | {art_wall.mean() / (wall / b):.1f}x | | | |")
    w, c, r, l2, st, _, fw = stock
    print(f"\nStock ART estimator (predict abstains unless the binomial p-value <= alpha=0.001; an abstention "
          f"is an all-zero row, argmax class 0) on image {idx[0]} (label {y[0]}): {w:.2f} s, {r // n} queries, "
          f"L2 {l2:.4f}, {st}. Load average now {os.getloadavg()[0]:.2f}.")


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("section", choices=["certify", "foolbox-hsja", "art-rs-hsja", "all"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rsjax_bench"))
    g = p.add_argument_group("certify")
    g.add_argument("--cifar-data", default=str(SHARED / "data/cifar10/test_jpeg.npz"))
    g.add_argument("--resnet-checkpoint", default=None,
                   help="converted cifar_resnet20 (default: converted into --workdir)")
    g.add_argument("--images", type=int, default=3)
    g.add_argument("--n0", type=int, default=100)
    g.add_argument("--n", type=int, default=10_000)
    g.add_argument("--alpha", type=float, default=0.001)
    g.add_argument("--sigma", type=float, default=0.25)
    g.add_argument("--batch-sizes", type=int, nargs="+", default=[256],
                   help="model batch: rsjax chunk_size and ART certify batch_size")
    g = p.add_argument_group("foolbox-hsja / art-rs-hsja")
    g.add_argument("--checkpoint", default=None, help="fmnist_mlp checkpoint (default: newest cached standard)")
    g.add_argument("--fb-images", type=int, default=20)
    g.add_argument("--queries", type=int, default=1000, help="target foolbox queries per image")
    g.add_argument("--fb-steps", type=int, default=0, help="foolbox HSJA steps (0: chosen for --queries)")
    g.add_argument("--reps", type=int, default=3)
    g.add_argument("--fb-single", type=int, default=5, help="images also attacked by foolbox one per call")
    g.add_argument("--rs-images", type=int, default=10)
    g.add_argument("--rs-n", type=int, default=10)
    g.add_argument("--rs-sigma", type=float, default=0.25)
    g.add_argument("--art-max-iter", type=int, default=10)
    g.add_argument("--art-max-eval", type=int, default=200)
    g.add_argument("--art-init-eval", type=int, default=20)
    g.add_argument("--art-init-size", type=int, default=100)
    g.add_argument("--timeout", type=int, default=120, help="seconds per ART image (signal.alarm)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--single-thread", action="store_true",
                   help="one thread for both: XLA CPU without its thread pool, and torch.set_num_threads(1)")
    args = p.parse_args(argv)
    if args.single_thread:  # before any jax import
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()
        args.torch_threads = 1
    if args.torch_threads > 0 and not missing_modules(["torch"]):
        import torch

        torch.set_num_threads(args.torch_threads)
    if missing_modules(["jax"]):
        print("jax missing: pip install -e .")
        return 0
    sections = ["certify", "foolbox-hsja", "art-rs-hsja"] if args.section == "all" else [args.section]
    for s in sections:
        print(f"\n[{time.strftime('%H:%M:%S')}] start of {s}: load average (1 min) {os.getloadavg()[0]:.2f}")
        {"certify": cmd_certify, "foolbox-hsja": cmd_foolbox_hsja, "art-rs-hsja": cmd_art_rs_hsja}[s](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

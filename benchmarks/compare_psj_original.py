"""rsjax's ``psj`` next to PopSkipJump's published code (cjsg/PopSkipJump) on the same images and
the same smoothed oracle.

The authors' PyTorch code is not part of rsjax: pass the folder of a checkout (the files
``popskip.py``, ``abstract_attack.py``, ``infomax.py``, ``model_interface.py``, ``adversarial.py``,
``tracker.py``, ``defaultparams.py``) with ``--original``. It is imported unmodified and run one
image at a time, as its ``app.py`` does, with its defaults (L2, grid 100, 1 query per info-max
step, ``initial_num_evals`` 100). The oracle both codes face is rsjax's
``SmoothedOracle`` of the exact linear classifier of ``tests/test_noise_aware.py`` (sigma 0.25,
n votes, label criterion): the original sees it as a model whose ``get_probs`` returns the
one-hot of one fresh answer of g_{sigma,n} (its noise model ``bayesian`` then draws exactly that
answer), so every row it sends costs one query, counted here; the run stops when the next call
would exceed ``--queries``. The original's output "at q queries" is its boundary point after the
last info-max search completed within q queries (its start point if none completed).

Both outputs are then *verified* (rsjax.verify.verify_attack, P_a = 1/2, 800 calls a tested
point) and divided by eq. (6)'s exact level-1/2 distance. Printed: median ratio, median verified
L2, wall time per image (rsjax: the batch's wall time divided by its images, compile excluded by
a warm-up run, and the cold time beside it).

    .venv/bin/python benchmarks/compare_psj_original.py --original /path/to/PopSkipJump --n 1 10

Skips (exit 0, a message) when torch or the checkout is missing.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
NEEDED = ("popskip.py", "abstract_attack.py", "infomax.py", "model_interface.py", "adversarial.py", "tracker.py",
          "defaultparams.py")


class _BudgetReached(Exception):
    pass


class _OracleModel:
    """The original's model object on rsjax's oracle: ``get_probs`` returns the one-hot of one
    fresh answer per row (class 1 = adversarial for reference class 0), counting rows."""

    def __init__(self, decide, root_key, budget: int):
        import torch

        self.model = torch.nn.Identity()
        self.decide, self.key, self.budget, self.queries = decide, root_key, budget, 0

    def get_probs(self, images):
        import jax
        import torch

        x = images.detach().cpu().numpy().astype(np.float32)
        m = len(x)
        if self.queries + m > self.budget:
            raise _BudgetReached
        pad = 1 << max(0, (m - 1).bit_length())  # a few static shapes
        xp = np.concatenate([x, np.repeat(x[:1], pad - m, axis=0)]) if pad > m else x
        keys = jax.random.split(jax.random.fold_in(self.key, self.queries), pad)
        adv = np.asarray(self.decide(xp, keys))[:m]
        self.queries += m
        probs = np.zeros((m, 2), np.float32)
        probs[np.arange(m), adv.astype(np.int64)] = 1.0
        return torch.from_numpy(probs)


def run_original(orig_dir: str, decide, x: np.ndarray, budget: int, seed: int, key):
    """The original PopSkipJump on one image; returns (its point at ``budget`` queries, the
    queries its last completed search had used, the queries each gradient step asked for)."""
    import torch

    sys.path.insert(0, orig_dir)
    try:
        popskip = importlib.import_module("popskip")
        defaultparams = importlib.import_module("defaultparams")
        model_interface = importlib.import_module("model_interface")
        adversarial = importlib.import_module("adversarial")
        importlib.import_module("infomax").tqdm = lambda it, **_: it  # its progress bar, off
    finally:
        sys.path.remove(orig_dir)
    torch.manual_seed(seed)
    random.seed(seed)
    params = defaultparams.DefaultParams()
    params.distance = "l2"
    params.noise = "bayesian"
    params.dataset = "mnist"  # grid_size 100
    model = _OracleModel(decide, key, budget)
    mi = model_interface.ModelInterface([model], bounds=(0, 1), n_classes=2, noise="bayesian", device="cpu")
    attack = popskip.PopSkipJump(mi, x.shape, device="cpu", params=params)
    trace: list[tuple[int, np.ndarray]] = []
    search = attack.bin_search_step

    def traced(*args, **kwargs):
        out = search(*args, **kwargs)
        trace.append((model.queries, out[0].detach().cpu().numpy().copy()))
        return out

    attack.bin_search_step = traced
    asked: list[float] = []  # the queries each gradient estimate asks for (its adaptive n)
    grad = attack.gradient_approximation_step

    def traced_grad(perturbed, num_evals_det, delta, dist_post_update, estimates, page):
        asked.append(float(min(estimates["n"], attack.max_num_evals)))
        return grad(perturbed, num_evals_det, delta, dist_post_update, estimates, page)

    attack.gradient_approximation_step = traced_grad
    a = adversarial.Adversarial(image=torch.from_numpy(x), label=0, targeted_label=None, device="cpu")
    attack.reset_variables(a)
    try:
        # the original's initialize_starting_point finds a point but never stores it (its app
        # passes a start image of another class): the same uniform-noise search, stored
        for _ in range(10_000):
            z = torch.rand(size=x.shape)
            if mi.decision(z[None], 0)[0, 0] > 0.5:
                a.set_starting_point(z, (0, 1))
                break
        attack.attack_one(iterations=10 ** 6)
    except _BudgetReached:
        pass
    if trace:
        return trace[-1][1], trace[-1][0], asked
    start = a.perturbed
    return (x.copy() if start is None else start.detach().cpu().numpy()), model.queries, asked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--original", default=os.environ.get("PSJ_ORIGINAL"),
                   help="folder of a cjsg/PopSkipJump checkout (default $PSJ_ORIGINAL)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 10])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--verify-calls", type=int, default=800)
    p.add_argument("--json-out", default=None)
    p.add_argument("--cache", default=None, help="folder keeping the original's outputs (reused when present)")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed: skipped")
        return 0
    if args.original is None:
        print("no PopSkipJump checkout given: pass --original DIR or set PSJ_ORIGINAL "
              "(clone https://github.com/cjsg/PopSkipJump): skipped")
        return 0
    missing = [f for f in NEEDED if not (Path(args.original) / f).is_file()]
    if missing:
        print(f"--original {args.original}: missing {missing} (clone https://github.com/cjsg/PopSkipJump): skipped")
        return 0

    import jax

    from rsjax.attacks import get_attack
    from rsjax.models.linear import linear_logits_fn
    from rsjax.oracle import SmoothedOracle
    from rsjax.verify import VerifyConfig, verify_attack
    from test_noise_aware import SIGMA, exact_level_distance, linear_rs_problem

    out: dict = {}
    print("| n | seed | images | code | median verified / eq. (6) | median verified L2 | wall s / image |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        for seed in args.seeds:
            x, y, w, b, r = linear_rs_problem("psj", r_o=np.linspace(0.3, 0.45, args.images), seed=seed)
            exact = exact_level_distance("psj", r, w, n)
            oracle = SmoothedOracle(linear_logits_fn(w, b), 2, SIGMA, n)
            decide = jax.jit(lambda pts, keys, _o=oracle: _o.decide(pts, jax.numpy.zeros(len(pts), jax.numpy.int32),
                                                                     keys).adversarial)
            atk = get_attack("psj")
            t = time.perf_counter()
            atk.run(oracle, x, y, seed, args.queries, check_clean=False)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            ours = atk.run(oracle, x, y, seed, args.queries, check_clean=False)
            warm = time.perf_counter() - t
            cache = Path(args.cache) / f"psj_original_n{n}_s{seed}_i{args.images}_q{args.queries}.json" \
                if args.cache else None
            if cache is not None and cache.is_file():  # the original's outputs of an earlier run
                c = json.loads(cache.read_text())
                theirs, used, t_img, asks = c["points"], c["used"], c["wall"], c["asks"]
            else:
                theirs, used, t_img, asks = [], [], [], []
                for i in range(len(x)):
                    t = time.perf_counter()
                    pt, q, ask = run_original(args.original, decide, x[i], args.queries, seed * 1_000_003 + i,
                                              jax.random.key(seed * 1_000_003 + i))
                    t_img.append(time.perf_counter() - t)
                    theirs.append(pt.tolist())
                    used.append(q)
                    asks.append(ask)
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps({"points": theirs, "used": used, "wall": t_img, "asks": asks}))
            theirs = np.asarray(theirs, np.float32)
            cfg = VerifyConfig(calls=args.verify_calls)
            row = {}
            runs = (("rsjax psj", ours.x_adv, warm / len(x)), ("original", theirs, float(np.mean(t_img))))
            for code, xa, wall in runs:
                v = verify_attack(oracle, x, xa, y, 0.5, jax.random.key(101), config=cfg).l2
                ratio = v / exact
                row[code] = {"ratio": ratio.tolist(), "l2": v.tolist(), "wall_per_image": wall}
                extra = f" (cold {cold / len(x):.2f})" if code == "rsjax psj" else ""
                print(f"| {n} | {seed} | {len(x)} | {code} | {np.median(ratio):.3f} | {np.median(v):.4f} | "
                      f"{wall:.2f}{extra} |", flush=True)
            row["original_queries_used"] = used
            row["original_gradient_asks"] = asks
            print(f"|   |   |   | original: queries of its last completed search {used}; its gradient steps "
                  f"asked for {[[int(v) for v in a] for a in asks]} queries |  |  |  |", flush=True)
            out[f"n={n},seed={seed}"] = row
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

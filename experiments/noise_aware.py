#!/usr/bin/env python
"""Issue 16: plain vs noise-aware black-box attacks against g_{sigma,n}, read against a white-box floor.

    # 1. the black-box attacks, in the sweep (resumable): plain hsja/surfree/rays and noise-aware
    #    psj/surfree_na/rays_na at equal queries on the same images, verified at P_a
    python experiments/sweep.py --preset noise-aware --out runs/noise-aware
    # 2. the white-box floor on the same images (resumable), then the tables
    python experiments/noise_aware.py --run runs/noise-aware --out docs/results/noise_aware

Step 2 reads the sweep's configuration, images and reference labels, runs minimal-norm SmoothAdv
(:mod:`rsjax.smoothadv`: gradients of the Monte Carlo soft smoothed classifier) once per image and
sigma, and verifies its candidate at every (n, P_a) of the sweep with the sweep's own evaluator
(same ``decide`` program, same root key, same image ids: the same calls of g_{sigma,n} the
black-box outputs were verified with). Images the evaluator found already of level P_a
('misclassified') count 0 for the floor as for every attack. Records go to ``floor.jsonl`` in the
run directory (resumable; settings whose sweep records are not there yet are skipped, so the
script can run while the sweep is still going).

Outputs (``--out``): ``per_image.csv`` (verified distortion of every attack and of the floor),
``summary.csv`` (per setting and attack: verified count, median and mean with 95 % bootstrap
intervals), ``gap.csv`` (per setting and plain/noise-aware pair: the share of the gap between the
plain attack and the floor that the noise-aware attack closes, with a paired 95 % bootstrap
interval) and ``table.md``.

A results folder from a run (``--keep-records``, with ``--out``): beside the tables, the run's
label-criterion records trimmed to the fields the tables and a merge read, the floor and side
records, images.json, env.json, models.json and the run's configuration (sweep_config.json), the
last two with repository-relative paths (see :func:`save_folder`):

    python experiments/noise_aware.py --run runs/na-cifar-psj-q5000 --out docs/results/noise_aware/cifar-r20-s0.25-psj-q5000 \
        --keep-records

Merging a re-run into a committed results folder (``--merge-into DIR``): when some attacks or
settings were re-run later on the same model (a fixed attack, another n), their records replace
or extend DIR's and DIR's tables are rewritten; the run must be the same experiment where the two
overlap (see :func:`merge_into`):

    python experiments/noise_aware.py --run runs/na-cifar-psj --merge-into docs/results/noise_aware/cifar-r20-s0.25 \
        --merge-attacks psj
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = (("hsja", "psj"), ("surfree", "surfree_na"), ("rays", "rays_na"))
FLOOR = "smoothadv"
STREAM_FLOOR = 7  # the floor's own noise draws (the study's streams: rsjax/study/tasks.py)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the sweep's output directory (preset noise-aware)")
    p.add_argument("--out", default=None, help="where the CSV and markdown tables go (default: the run directory)")
    p.add_argument("--cache", default=None, help="checkpoint cache (default $RSJAX_CACHE or ~/.cache/rsjax)")
    p.add_argument("--m", type=int, default=32, help="noise draws of the soft classifier per step (32)")
    p.add_argument("--steps", type=int, default=100, help="gradient steps (100)")
    p.add_argument("--fixed-noise", action="store_true",
                   help="one set of m draws per image for all steps (default: fresh draws every step, as SmoothAdv)")
    p.add_argument("--shrink", type=float, default=0.0625,
                   help="candidate handed to the verifier: x_o + shrink * delta_best (1/16)")
    p.add_argument("--tables-only", action="store_true", help="only write the tables from the records")
    p.add_argument("--merge-into", default=None, metavar="DIR",
                   help="merge the run's records into the results folder DIR (after the floor step unless "
                        "--tables-only) and rewrite DIR's tables; see merge_into")
    p.add_argument("--merge-attacks", nargs="+", default=None, metavar="ATTACK",
                   help="with --merge-into: the attacks (and/or 'smoothadv' for the floor) whose records replace "
                        "DIR's; the run's records of any other attack must equal DIR's where DIR has them "
                        "(default: every attack of the run replaces)")
    p.add_argument("--keep-records", action="store_true",
                   help="make --out a results folder: the run's records (trimmed), floor, side records, images, "
                        "models and configuration (relative paths) beside the tables; see save_folder")
    p.add_argument("--check-only", action="store_true",
                   help="with --merge-into: run the checks and print what would change, write nothing")
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[noise_aware] {msg}", file=sys.stderr, flush=True)


def floor_key(model: str, sigma: float, n: int, p_a: float, image: int) -> str:
    from rsjax.results import record_key

    return record_key(kind="floor", attack=FLOOR, model=model, sigma=float(sigma), n=int(n), p_a=float(p_a),
                      image=int(image))


def run_floor(run: Path, cache: Path | None, m: int, steps: int, resample: bool, shrink: float) -> None:
    """Floor candidates (saved per model and sigma) and their verification at every (n, P_a)
    whose sweep records exist (appended to floor.jsonl)."""
    import jax.numpy as jnp

    from rsjax.data import load_dataset
    from rsjax.oracle import image_keys
    from rsjax.results import RecordStore, read_records
    from rsjax.smoothadv import smoothadv_minimal
    from rsjax.study.config import config_from_dict
    from rsjax.study.executor import VerifyPrograms
    from rsjax.study.models import prepare_models
    from rsjax.study.oracle import OracleParams, apply_fn
    from rsjax.study.tasks import STREAM_VERIFY, stream_key
    from rsjax.verify import verify_rays

    cfg = config_from_dict(json.loads((run / "config.json").read_text()))
    data = load_dataset(cfg.data)
    classifiers, _ = prepare_models(cfg, _log, cache)
    attacked = np.asarray(json.loads((run / "images.json").read_text())["attacked"], np.int64)
    refs = {(r["model"], r["sigma"], r["image"]): r for r in read_records(run / "reference.jsonl")}
    sweep = {}
    for r in read_records(run / "records.jsonl"):
        if r["criterion"] == "label":
            sweep.setdefault((r["model"], r["sigma"], r["n"], r["p_a"], r["image"]), r)
    store = RecordStore(run / "floor.jsonl")
    vcfg = cfg.verify_config()
    verify_root = stream_key(cfg.seed, STREAM_VERIFY)
    for entry in cfg.models:
        clf = classifiers[entry.name]
        verifier = VerifyPrograms(apply_fn(clf), clf.num_classes, "label", cfg.vote_chunk, cfg.noise,
                                  clf.forward_block)
        for sigma in cfg.model_sigmas(entry):
            sigma = float(sigma)
            ok = [i for i in attacked if refs.get((entry.name, sigma, int(i)), {}).get("status") == "ok"]
            ids = np.asarray(ok, np.int64)
            ref = np.asarray([refs[(entry.name, sigma, int(i))]["prediction"] for i in ids], np.int64)
            if not len(ids):  # no image has a reference label to attack (see reference.jsonl)
                _log(f"floor {entry.name} s={sigma:g}: no image with a reference label, nothing to attack")
                continue
            cand_path = run / f"floor-{entry.name}-s{sigma:g}-m{m}-k{steps}{'-r' if resample else ''}-c{shrink:g}.npz"
            if cand_path.exists():
                z = np.load(cand_path)
                assert np.array_equal(z["ids"], ids)
                cand = {k: z[k] for k in z.files}
            else:
                t0 = time.perf_counter()
                keys = image_keys(stream_key(cfg.seed, STREAM_FLOOR), jnp.asarray(ids))
                res = smoothadv_minimal(clf.logits_fn, data.images[ids], ref, keys, sigma, m=m, steps=steps,
                                        resample=resample, shrink=shrink)
                dt = (time.perf_counter() - t0) / max(len(ids), 1)
                cand = {"ids": ids, "x_adv": res.x_adv, "l2": res.l2, "success": res.success,
                        "wrong_fraction": res.wrong_fraction, "seconds": np.full(len(ids), dt),
                        "samples": np.full(len(ids), res.samples), "steps": np.full(len(ids), res.steps)}
                np.savez_compressed(cand_path, **cand)
                _log(f"floor candidates {entry.name} s={sigma:g}: {len(ids)} images, {dt:.2f} s/image, "
                     f"{int(res.success.sum())} found")
            for n in cfg.ns:
                for p_a in cfg.pas:
                    p_a = float(p_a)
                    todo = [b for b, i in enumerate(ids)
                            if floor_key(entry.name, sigma, n, p_a, i) not in store
                            and (entry.name, sigma, n, p_a, int(i)) in sweep]
                    if not todo:
                        continue
                    t0 = time.perf_counter()
                    params = OracleParams(clf.variables, jnp.float32(sigma), jnp.int32(n), jnp.int32(1))
                    decide = verifier.decider(params)
                    clean_ok = [b for b in todo if sweep[(entry.name, sigma, n, p_a, int(ids[b]))]["status"]
                                not in ("misclassified",)]
                    verify = [b for b in clean_ok if cand["success"][b]]
                    sel = np.asarray(verify, np.int64)
                    x_o = data.images[ids[sel]] if len(sel) else None
                    ver = (verify_rays(decide, x_o, cand["x_adv"][sel], ref[sel], p_a, ids[sel], verify_root, vcfg,
                                       interval_confidence=cfg.interval_confidence) if len(sel) else None)
                    row = {int(b): r for r, b in enumerate(verify)}
                    recs = []
                    for b in todo:
                        i = int(ids[b])
                        s = sweep[(entry.name, sigma, n, p_a, i)]
                        rec = {"key": floor_key(entry.name, sigma, n, p_a, i), "kind": "floor", "attack": FLOOR,
                               "whitebox": True, "model": entry.name, "sigma": sigma, "n": int(n), "p_a": p_a,
                               "image": i, "reference": int(ref[b]), "m": m, "gradient_steps": steps,
                               "resample": resample, "shrink": shrink, "samples": int(cand["samples"][b]),
                               "whitebox_l2": float(cand["l2"][b]),
                               "wrong_fraction": float(cand["wrong_fraction"][b]),
                               "attack_seconds": float(cand["seconds"][b])}
                        if s["status"] == "misclassified":
                            rec.update(status="misclassified", verified_l2=0.0, verification_calls=0)
                        elif b not in row:
                            rec.update(status="no_start", verified_l2=None, verification_calls=0)
                        else:
                            r = row[b]
                            okv = bool(ver.verified[r])
                            rec.update(status="attacked" if okv else "unverified",
                                       verified_l2=float(ver.l2[r]) if okv else None,
                                       verified_t=float(ver.t[r]) if okv else None,
                                       verified_level=float(ver.level[r]), verified_level_low=float(ver.level_low[r]),
                                       verified_level_high=float(ver.level_high[r]),
                                       verification_calls=int(ver.calls[r]), verify_tests=int(ver.tests[r]))
                        recs.append(rec)
                    store.append(recs)
                    _log(f"floor verified {entry.name} s={sigma:g} n={n} P_a={p_a:g}: {len(todo)} images, "
                         f"{time.perf_counter() - t0:.1f} s")


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _closure(p, a, f, axis=-1):
    """Share of the gap between the plain attack (p) and the floor (f) closed by the
    noise-aware attack (a): (mean p - mean a) / (mean p - mean f)."""
    mp = np.mean(p, axis=axis)
    return (mp - np.mean(a, axis=axis)) / (mp - np.mean(f, axis=axis))


def collect(run: Path) -> dict:
    """(model, sigma, n, p_a) -> attack -> image -> verified distortion (inf: not verified)."""
    from rsjax.results import read_records

    table: dict = {}
    recs = [r for r in read_records(run / "records.jsonl") if r.get("criterion", "label") == "label"]
    floor = run / "floor.jsonl"
    recs += read_records(floor) if floor.exists() else []
    for r in recs:
        if r["status"] in ("smoothed_abstain", "smoothed_wrong"):
            continue
        v = r.get("verified_l2")
        table.setdefault((r["model"], r["sigma"], r["n"], r["p_a"]), {}).setdefault(r["attack"], {})[r["image"]] = (
            math.inf if v is None else float(v))
    return table


def write_tables(run: Path, out: Path) -> str:
    from rsjax.intervals import bootstrap, mean_interval, median_interval

    out.mkdir(parents=True, exist_ok=True)
    table = collect(run)
    order = [a for pair in PAIRS for a in pair] + [FLOOR]
    per_image, summary, gap = [], [], []
    md = []
    options = attack_options(run) or attack_options(out)
    if options:  # a variant, not the attack's defaults
        md.append("Attack options (config fields set, the rest at their defaults): " + "; ".join(
            f"{a}: " + ", ".join(f"{k}={v!r}" for k, v in sorted(o.items())) for a, o in sorted(options.items())))
    for setting in sorted(table):
        model, sigma, n, p_a = setting
        by = table[setting]
        attacks = [a for a in order if a in by]
        images = sorted(set.intersection(*(set(by[a]) for a in attacks)))
        for i in images:
            per_image.append({"model": model, "sigma": sigma, "n": n, "p_a": p_a, "image": i,
                              **{a: by[a][i] for a in attacks}})
        md.append(f"\n**{model}, sigma = {sigma:g}, n = {n}, P_a = {p_a:g}** ({len(images)} images; the median "
                  f"counts an unverified image as infinite, the mean is over the images the attack verified)\n")
        md.append("| attack | verified | median verified L2 [95 % CI] | mean verified L2 [95 % CI] |")
        md.append("|---|---|---|---|")
        for a in attacks:
            v = np.array([by[a][i] for i in images])
            med = median_interval(v)
            fin = v[np.isfinite(v)]
            mean = mean_interval(fin) if len(fin) else None
            summary.append({"model": model, "sigma": sigma, "n": n, "p_a": p_a, "attack": a,
                            "whitebox": a == FLOOR, "images": len(images), "verified": int(np.isfinite(v).sum()),
                            "median": med.estimate, "median_low": med.low, "median_high": med.high,
                            "mean": None if mean is None else mean.estimate,
                            "mean_low": None if mean is None else mean.low,
                            "mean_high": None if mean is None else mean.high})
            name = f"{a} (white box)" if a == FLOOR else a
            mtxt = "-" if mean is None else f"{mean.estimate:.2f} [{mean.low:.2f}, {mean.high:.2f}]"
            md.append(f"| {name} | {int(np.isfinite(v).sum())}/{len(v)} | {med.estimate:.2f} "
                      f"[{med.low:.2f}, {med.high:.2f}] | {mtxt} |")
        rows = []
        for plain, na in PAIRS:
            if plain not in by or na not in by or FLOOR not in by:
                continue
            ok = [i for i in images if all(math.isfinite(by[a][i]) for a in (plain, na, FLOOR))]
            if len(ok) < 3:
                continue
            p, a, f = (np.array([by[x][i] for i in ok]) for x in (plain, na, FLOOR))
            iv = bootstrap([p, a, f], _closure, paired=True)
            gap.append({"model": model, "sigma": sigma, "n": n, "p_a": p_a, "plain": plain, "noise_aware": na,
                        "images": len(ok), "plain_mean": float(p.mean()), "noise_aware_mean": float(a.mean()),
                        "floor_mean": float(f.mean()), "closed": iv.estimate, "closed_low": iv.low,
                        "closed_high": iv.high, "half_closed": "yes" if iv.low >= 0.5 else
                        ("no" if iv.high < 0.5 else "undecided")})
            rows.append(f"| {plain} -> {na} | {len(ok)} | {p.mean():.2f} | {a.mean():.2f} | {f.mean():.2f} | "
                        f"{iv.estimate:.2f} [{iv.low:.2f}, {iv.high:.2f}] | {gap[-1]['half_closed']} |")
        if rows:
            md.append("\n| pair | images | plain mean | noise-aware mean | floor mean | gap closed [95 % CI] | "
                      ">= 1/2 closed? |")
            md.append("|---|---|---|---|---|---|---|")
            md += rows
    for name, rows in (("per_image.csv", per_image), ("summary.csv", summary), ("gap.csv", gap)):
        if not rows:
            continue
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows(rows)
    text = "\n".join(md).strip() + "\n"
    (out / "table.md").write_text(text)
    return text


# ---------------------------------------------------------------------------------------------
# Merging a re-run into a committed results folder
# ---------------------------------------------------------------------------------------------
SIDE_KINDS = ("reference", "accuracy", "certify")
#: per-image fields of attack records that depend on the model, the data and the seed, not on
#: the attack (the reference label, the CERTIFY radius, the clean image's measured level)
IMAGE_FIELDS = ("reference", "radius", "clean_level")
_MISSING = object()


class MergeError(ValueError):
    """The run and the results folder are not the same experiment where they overlap."""


def _timing(field: str) -> bool:
    """Wall-clock fields, the only ones allowed to differ between two runs of the same experiment."""
    return field == "seconds" or field.endswith("_seconds")


def _differs(dest: dict, run: dict) -> str | None:
    """The first field of ``dest`` (timings aside) whose value ``run`` does not have, else None."""
    for k, v in dest.items():
        if not _timing(k) and run.get(k, _MISSING) != v:
            return k
    return None


def _setting(r: dict) -> tuple:
    """An attack or floor record's identity: (attack, model, sigma, n, P_a, image)."""
    return (r["attack"], r["model"], float(r["sigma"]), int(r["n"]), float(r["p_a"]), int(r["image"]))


def _read(path: Path) -> list[dict]:
    from rsjax.results import read_records

    return read_records(path) if path.exists() else []


def _jsonl(recs: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


def _configs(folder: Path) -> list[dict]:
    """The sweep configurations behind a run directory (``config.json``) or a results folder
    (``sweep_config*.json``: one per merged run kind)."""
    paths = [folder / "config.json"] if (folder / "config.json").exists() else sorted(folder.glob("sweep_config*.json"))
    return [json.loads(p.read_text()) for p in paths]


def _options(config: dict, attack: str) -> dict:
    """The config fields one sweep configuration set for ``attack`` (empty: its defaults)."""
    return (config.get("attack_options") or {}).get(attack) or {}


def _merged_options(configs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for c in configs:
        for a in c.get("attack_options") or {}:
            if _options(c, a):
                out.setdefault(a, {}).update(_options(c, a))
    return out


def attack_options(folder: Path) -> dict[str, dict]:
    """Attack -> the config fields its sweep set (``--attack-option``; empty: the defaults)."""
    return _merged_options(_configs(folder))


def _require_run(run: Path) -> None:
    """A sweep's run directory holds its records.jsonl (else MergeError naming the path)."""
    if not (run / "records.jsonl").exists():
        raise MergeError(f"{run} has no records.jsonl: not a sweep run directory")


def merge_into(run: Path, dest: Path, attacks: set[str] | None = None, write: bool = True) -> dict:
    """Merge a run directory's records into a committed results folder ``dest`` and rewrite its tables.

    Checks first (a :class:`MergeError` names the first disagreement; nothing is written then):
    the run's ``images.json`` attacked list equals ``dest``'s, and each of its reference-label,
    accuracy and CERTIFY records whose key ``dest`` has is equal to it in every field but the
    timings (the same model, data and seed: a retrained model that differs is another
    experiment). Records of attacks not in ``attacks`` (and floor records, unless ``smoothadv``
    is in ``attacks``) must equal ``dest``'s of the same (attack, model, sigma, n, P_a, image)
    on ``dest``'s fields.

    Then: the run's label-criterion records of ``attacks`` (every attack of the run when None)
    replace ``dest``'s of the same identity in place, trimmed to ``dest``'s record fields
    (``dest`` keeps the sweep's records without their keys); records of settings ``dest`` lacks
    are appended, as are side and floor records it lacks; ``write_tables(dest, dest)`` rewrites
    ``table.md``, ``summary.csv``, ``gap.csv`` and ``per_image.csv``. Returns counts per kind.

    A folder that keeps no side records of a kind (no ``{kind}.jsonl``: the Fashion-MNIST folders)
    is not given them; there the model is checked through the attack records: every run record's
    :data:`IMAGE_FIELDS` must equal those of ``dest``'s records of the same (model, sigma, n, P_a,
    image), whatever their attack.
    """
    from rsjax.results import write_text_atomic

    run, dest = Path(run), Path(dest)
    if not (dest / "records.jsonl").exists():
        raise MergeError(f"{dest} has no records.jsonl: not a results folder (one holds a sweep's records.jsonl "
                         f"and floor.jsonl beside its tables)")
    _require_run(run)
    run_cfgs, dest_cfgs = _configs(run), _configs(dest)
    if not dest_cfgs and _merged_options(run_cfgs):
        raise MergeError(f"the run set attack options {_merged_options(run_cfgs)} and {dest} keeps no "
                         f"sweep_config*.json to show it used the same")
    for run_cfg in run_cfgs:
        for dest_cfg in dest_cfgs:
            for a in set(run_cfg.get("attacks", ())) & set(dest_cfg.get("attacks", ())):
                r_opt, d_opt = _options(run_cfg, a), _options(dest_cfg, a)
                if r_opt != d_opt:
                    raise MergeError(f"{a}: the run set the options {r_opt}, {dest}'s sweep {d_opt}: another "
                                     f"attack (write it to its own folder)")
    report: dict = {}
    ri, di = run / "images.json", dest / "images.json"
    if ri.exists() and di.exists():
        a, b = json.loads(ri.read_text())["attacked"], json.loads(di.read_text())["attacked"]
        if a != b:
            raise MergeError(f"images.json: the run attacked {len(a)} images {a[:5]}..., {dest} {len(b)} "
                             f"{b[:5]}...: another image selection (same --images and seed needed)")
    side_out = {}
    for kind in SIDE_KINDS:
        if not (dest / f"{kind}.jsonl").exists():
            report[kind] = {"not kept in the folder": len(_read(run / f"{kind}.jsonl"))}
            continue
        d, r = _read(dest / f"{kind}.jsonl"), _read(run / f"{kind}.jsonl")
        have = {x["key"]: x for x in d}
        same, added = 0, []
        for x in r:
            if x["key"] in have:
                f = _differs(have[x["key"]], x)
                if f is not None:
                    raise MergeError(f"{kind} record {x['key']!r}: field {f!r} is {x.get(f)!r} in the run, "
                                     f"{have[x['key']].get(f)!r} in {dest}: not the same model or data")
                same += 1
            else:
                added.append(x)
        report[kind] = {"identical": same, "added": len(added)}
        if added:
            side_out[kind] = d + added

    def merge_kind(d: list[dict], r: list[dict], replaced: set[str] | None, label: str) -> list[dict] | None:
        fields = list(dict.fromkeys(k for x in d for k in x)) if d else None
        index = {_setting(x): j for j, x in enumerate(d)}
        out, new, counts = list(d), {}, {"identical": 0, "replaced": 0, "changed": 0, "added": 0}
        for x in r:
            if x.get("criterion", "label") != "label":
                continue
            trimmed = {k: x.get(k) for k in fields} if fields else x
            j = index.get(_setting(x))
            if replaced is None or x["attack"] in replaced:
                if j is None:
                    new.setdefault(_setting(x), trimmed)
                else:
                    counts["replaced"] += 1
                    counts["changed"] += _differs(d[j], x) is not None
                    out[j] = trimmed
            elif j is None:
                new.setdefault(_setting(x), trimmed)
            else:
                f = _differs(d[j], x)
                if f is not None:
                    raise MergeError(f"{label} record {_setting(x)}: field {f!r} is {x.get(f)!r} in the run, "
                                     f"{d[j].get(f)!r} in {dest}; pass --merge-attacks {x['attack']} to replace "
                                     f"that attack's records")
                counts["identical"] += 1
        counts["added"] = len(new)
        report[label] = counts
        return out + list(new.values()) if counts["replaced"] or new else None

    dest_records, run_records = _read(dest / "records.jsonl"), _read(run / "records.jsonl")
    image_fields: dict[tuple, dict] = {}
    for x in dest_records:
        image_fields.setdefault(_setting(x)[1:], {k: x[k] for k in IMAGE_FIELDS if k in x})
    for x in run_records:
        if x.get("criterion", "label") != "label":
            continue
        for k, v in image_fields.get(_setting(x)[1:], {}).items():
            if x.get(k, _MISSING) != v:
                raise MergeError(f"{x['attack']} record {_setting(x)}: field {k!r} is {x.get(k)!r} in the run, {v!r} "
                                 f"in {dest}'s records of that image: not the same model or data")
    floor_replaced = None if attacks is None or FLOOR in attacks else set()
    rec_out = merge_kind(dest_records, run_records, attacks, "records")
    floor_out = merge_kind(_read(dest / "floor.jsonl"), _read(run / "floor.jsonl"), floor_replaced, "floor")
    if write:
        for kind, recs in side_out.items():
            write_text_atomic(dest / f"{kind}.jsonl", _jsonl(recs))
        if rec_out is not None:
            write_text_atomic(dest / "records.jsonl", _jsonl(rec_out))
        if floor_out is not None:
            write_text_atomic(dest / "floor.jsonl", _jsonl(floor_out))
        write_tables(dest, dest)
    return report


# ---------------------------------------------------------------------------------------------
# A results folder from a run
# ---------------------------------------------------------------------------------------------
#: the fields of an attack record a results folder keeps (the sweep's records without their keys,
#: certificate details and per-step diagnostics: what the tables and a merge read)
FOLDER_FIELDS = ("attack", "model", "sigma", "n", "p_a", "image", "status", "attack_status", "l2", "queries",
                 "evaluations", "verified_l2", "verified_level", "verified_level_low", "verified_level_high",
                 "verified_t", "verification_calls", "radius", "reference", "clean_level", "attack_seconds",
                 "verify_seconds")
#: run files a folder keeps byte for byte (models.json and config.json, which name paths, are
#: rewritten by :func:`relative_paths`)
FOLDER_COPIES = ("floor.jsonl",) + tuple(f"{k}.jsonl" for k in SIDE_KINDS) + ("images.json", "env.json")
REPO = Path(__file__).resolve().parents[1]
_PATH = re.compile(r"^([A-Za-z][\w+-]*:)?(/.*)$")


def relative_paths(obj, root: Path = REPO, cache: Path | None = None):
    """``obj`` (parsed JSON) with every absolute path -- bare or behind a data-spec scheme such as
    ``npz:`` -- rewritten as ``$RSJAX_CACHE/...`` when under the checkpoint cache ``cache`` (an
    absolute, resolved path: where the trained default models are), else relative to ``root`` (the repository: ``runs/...``,
    ``../shared/...``) where that stays within ``root``'s parent; other values unchanged."""
    if isinstance(obj, dict):
        return {k: relative_paths(v, root, cache) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_paths(v, root, cache) for v in obj]
    if isinstance(obj, str):
        m = _PATH.match(obj)
        if m:
            scheme, path = m.group(1) or "", Path(m.group(2))
            if cache is not None and path.is_relative_to(cache):
                return scheme + "$RSJAX_CACHE/" + path.relative_to(cache).as_posix()
            rel = os.path.relpath(path, root)
            if not rel.startswith(os.path.join(os.pardir, os.pardir)):
                return scheme + rel
    return obj


def save_folder(run: Path, dest: Path, cache: Path | None = None) -> list[str]:
    """Write the results folder ``dest`` of a run: its label-criterion attack records trimmed to
    :data:`FOLDER_FIELDS` (``records.jsonl``), the floor and side records, ``images.json`` and
    ``env.json`` as they are, ``models.json`` and the run's ``config.json`` (as
    ``sweep_config.json``) with repository-relative paths (``$RSJAX_CACHE/...`` for checkpoints in
    the cache ``cache``, default :func:`rsjax.cache.cache_dir`), then the tables. Refuses a ``dest``
    that already holds records (``--merge-into`` adds a re-run to a folder). Returns the files written."""
    from rsjax.cache import cache_dir
    from rsjax.results import read_records, write_text_atomic

    run, dest = Path(run), Path(dest)
    cache = (Path(cache) if cache is not None else cache_dir()).resolve()
    _require_run(run)
    if (dest / "records.jsonl").exists():
        raise MergeError(f"{dest} already holds records.jsonl: use --merge-into {dest} to add a run to a "
                         f"results folder")
    dest.mkdir(parents=True, exist_ok=True)
    recs = [{k: r[k] for k in FOLDER_FIELDS if k in r} for r in read_records(run / "records.jsonl")
            if r.get("criterion", "label") == "label"]
    write_text_atomic(dest / "records.jsonl", _jsonl(recs))
    written = ["records.jsonl"]
    for name in FOLDER_COPIES:
        if (run / name).exists():
            write_text_atomic(dest / name, (run / name).read_text())
            written.append(name)
    for src, name in (("models.json", "models.json"), ("config.json", "sweep_config.json")):
        if (run / src).exists():
            obj = relative_paths(json.loads((run / src).read_text()), REPO, cache)
            write_text_atomic(dest / name, json.dumps(obj, indent=2) + "\n")
            written.append(name)
    write_tables(dest, dest)
    return written + ["table.md", "summary.csv", "gap.csv", "per_image.csv"]


def main(argv=None) -> int:
    from rsjax.cache import enable_compilation_cache
    from rsjax.errors import RsjaxError

    args = parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run
    cache = Path(args.cache) if args.cache else None
    try:
        if args.keep_records:  # checked before the floor step, which may take many minutes
            if args.merge_into:
                raise MergeError("--keep-records makes a new results folder, --merge-into adds to one: give one")
            if args.out is None or out.resolve() == run.resolve():
                raise MergeError("--keep-records writes a results folder: give it --out DIR (not the run directory)")
        if not args.tables_only:
            enable_compilation_cache(cache)
            run_floor(run, cache, args.m, args.steps, not args.fixed_noise, args.shrink)
        if args.merge_into:
            report = merge_into(run, Path(args.merge_into), set(args.merge_attacks) if args.merge_attacks else None,
                                write=not args.check_only)
            for kind, counts in report.items():
                print(f"{kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            if not args.check_only:
                print((Path(args.merge_into) / "table.md").read_text())
            return 0
        if args.keep_records:
            written = save_folder(run, out, cache)
            _log(f"results folder {out}: {', '.join(written)}")
            print((out / "table.md").read_text())
            return 0
        print(write_tables(run, out))
    except (RsjaxError, MergeError) as e:
        print(f"noise_aware: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The study's stages, each a pure function of the configuration and the images that returns
the JSON records it appends:

* **accuracy** (:func:`accuracy_records`): clean accuracy of each base classifier f and, per
  sigma and n in ``eval_ns``, the accuracy of the practical smoothed classifier g_{sigma,n}
  (plurality vote, lowest-index ties) and of Cohen's PREDICT at ``predict_alpha`` (abstentions
  count as errors);
* **certification** (:func:`certify_records`): Cohen's CERTIFY(x, n0, n, alpha) per image,
  prediction and radius R = sigma Phi^{-1}(p_A_lower);
* **reference** (:func:`reference_records`): the reference label of eq. (4), g_sigma(x_o), by
  Cohen's PREDICT with ``reference_n`` samples at ``reference_alpha``;
* **attacks**: :func:`measure_batch` attacks and verifies one batch of images for one
  :class:`~rsjax.study.tasks.AttackRun`, :func:`attack_records` turns the outcome into one
  record per image x setting.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jax
import numpy as np

from rsjax.criterion import NOTES, REFERENCE_ABSTAIN, REFERENCE_WRONG
from rsjax.study.config import SweepConfig
from rsjax.study.executor import AttackPrograms, run_attack
from rsjax.study.oracle import OracleParams
from rsjax.study.tasks import (STREAM_ACCURACY, STREAM_CERTIFY, STREAM_REFERENCE, AttackRun, Setting,
                               attack_record_key, image_keys, stream_key)

STATUS_SMOOTHED_ABSTAIN, STATUS_SMOOTHED_WRONG, STATUS_UNVERIFIED = REFERENCE_ABSTAIN, REFERENCE_WRONG, "unverified"
CRITERION_NOTES = NOTES  # the records' ``criterion_note`` of each kind (rsjax.criterion)
#: record fields that hold wall times (everything else in a record is reproducible bit for bit)
TIMING_FIELDS = ("seconds", "attack_seconds", "verify_seconds")


def accuracy_records(name: str, clf, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                     sigma: float | None, config: SweepConfig, base_pred: np.ndarray | None = None) -> list[dict]:
    """Accuracy of f (sigma None: one record, n None) or of g_{sigma,n} and PREDICT for each n of
    ``eval_ns`` (one record each) on the test images ``ids``."""
    from rsjax.results import record_key
    from rsjax.smoothing import ABSTAIN, votes

    t0 = time.perf_counter()
    if sigma is None:
        pred = clf.predict(images[ids]) if base_pred is None else base_pred[ids]
        return [{"key": record_key(kind="accuracy", model=name, sigma=None, n=None), "kind": "accuracy",
                 "model": name, "sigma": None, "n": None, "num_images": int(len(ids)),
                 "accuracy": float(np.mean(pred == labels[ids])), "seconds": time.perf_counter() - t0}]
    keys = image_keys(stream_key(config.seed, STREAM_ACCURACY), ids)
    out = []
    for n in config.eval_ns:
        t1 = time.perf_counter()
        counts = []
        for lo in range(0, len(ids), 256):
            res = votes(clf.logits_fn, images[ids[lo:lo + 256]], keys[lo:lo + 256], sigma, n,
                        clf.num_classes, chunk_size=config.vote_chunk, noise=config.noise)
            counts.append(res.counts)
        counts = np.concatenate(counts)
        pred = counts.argmax(-1)
        predict = predict_labels(counts, n, config.predict_alpha)
        y = labels[ids]
        out.append({"key": record_key(kind="accuracy", model=name, sigma=float(sigma), n=int(n)),
                    "kind": "accuracy", "model": name, "sigma": float(sigma), "n": int(n),
                    "num_images": int(len(ids)), "accuracy": float(np.mean(pred == y)),
                    "predict_alpha": config.predict_alpha,
                    "predict_accuracy": float(np.mean(predict == y)),
                    "abstention_rate": float(np.mean(predict == ABSTAIN)),
                    "seconds": time.perf_counter() - t1})
    return out


def predict_labels(counts: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Cohen's PREDICT from the full counts of ``n`` samples per row: the top class or -1
    (:func:`rsjax.smoothing.predict_from_counts`, which reads n_A + n_B from the counts)."""
    from rsjax.smoothing import predict_from_counts

    return predict_from_counts(np.asarray(counts), alpha)


def certify_records(name: str, clf, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                    sigma: float, config: SweepConfig) -> list[dict]:
    """Cohen's CERTIFY at ``sigma`` for the images ``ids`` (one record per image)."""
    from rsjax.results import record_key
    from rsjax.smoothing import certify

    t0 = time.perf_counter()
    keys = image_keys(stream_key(config.seed, STREAM_CERTIFY), ids)
    res = certify(clf.logits_fn, images[ids], keys, sigma, config.certify_n0, config.certify_n,
                  config.certify_alpha, clf.num_classes, chunk_size=config.vote_chunk, noise=config.noise)
    dt = (time.perf_counter() - t0) / max(len(ids), 1)
    return [{"key": record_key(kind="certify", model=name, sigma=float(sigma), image=int(i)),
             "kind": "certify", "model": name, "sigma": float(sigma), "image": int(i), "label": int(labels[i]),
             "prediction": int(p), "radius": float(r), "correct": bool(p == labels[i]),
             "n0": config.certify_n0, "n": config.certify_n, "alpha": config.certify_alpha, "seconds": dt}
            for i, p, r in zip(ids, res.predictions, res.radii)]


def reference_records(name: str, clf, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, sigma: float,
                      config: SweepConfig) -> list[dict]:
    """The reference label of eq. (4), g_sigma(x_o), estimated by Cohen's PREDICT with
    ``reference_n`` samples at ``reference_alpha`` for the images ``ids`` (one record each):
    status 'ok' (= the true label), 'smoothed_abstain' or 'smoothed_wrong'."""
    from rsjax.criterion import smoothed_reference
    from rsjax.results import record_key
    from rsjax.smoothing import votes

    t0 = time.perf_counter()
    keys = image_keys(stream_key(config.seed, STREAM_REFERENCE), ids)
    counts = []
    for lo in range(0, len(ids), 256):
        res = votes(clf.logits_fn, images[ids[lo:lo + 256]], keys[lo:lo + 256], sigma, config.reference_n,
                    clf.num_classes, chunk_size=config.vote_chunk, noise=config.noise)
        counts.append(np.asarray(res.counts))
    counts = np.concatenate(counts)
    pred, statuses = smoothed_reference(counts, labels[ids], config.reference_alpha)
    dt = (time.perf_counter() - t0) / max(len(ids), 1)
    out = []
    for i, p, c, status in zip(ids, pred, counts, statuses):
        out.append({"key": record_key(kind="reference", model=name, sigma=float(sigma), image=int(i)),
                    "kind": "reference", "model": name, "sigma": float(sigma), "image": int(i),
                    "label": int(labels[i]), "prediction": int(p), "status": status,
                    "top_count": int(c.max()), "n": config.reference_n, "alpha": config.reference_alpha,
                    "seconds": dt})
    return out


#: fractions of the query budget at which a record gives the attacker's best l2 (``l2_at``)
L2_AT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass
class BatchOutcome:
    """Everything measured for one batch of images of one :class:`AttackRun` (host arrays over
    the batch's images ``ids``; ``clean[pa]`` and ``ver[pa]`` per verification level)."""

    ids: np.ndarray
    reference: np.ndarray  # [B] the label the criterion compared against
    reference_status: np.ndarray  # [B] 'ok', 'smoothed_abstain', 'smoothed_wrong'
    attacked: np.ndarray  # [B] bool: the attack ran on the image
    result: Any  # AttackResult over the attacked images (None if none)
    clean: dict  # pa -> dict of [B] arrays (level test at x_o), RS only
    ver: dict  # pa -> Verification over [B] (rows of unattacked images meaningless)
    seconds: float
    attack_seconds: float = 0.0  # wall time of the attack itself, per image of the batch
    verify_seconds: float = 0.0  # wall time of the evaluator (clean tests + ray searches), per image


def _record_base(setting: Setting, i: int, label: int, config: SweepConfig, seconds: float) -> dict:
    return {"key": attack_record_key(setting, i), "kind": "attack", **setting.fields(),
            "k_wrong": setting.k_wrong, "criterion_note": CRITERION_NOTES[setting.criterion],
            "reference_kind": config.reference if setting.criterion != "none" else "true",
            "image": int(i), "label": int(label), "max_queries": int(config.max_queries), "seconds": seconds}


def attack_records(run: AttackRun, out: BatchOutcome, labels: np.ndarray, certified: Mapping[int, dict] | None,
                   config: SweepConfig) -> list[dict]:
    """One record per image x setting of ``run`` (see :mod:`rsjax.study`): the attacker's raw
    outcome (``status`` of the attack, ``l2``, ``linf``, queries, evaluations, trace) and the
    evaluator's verification at the setting's P_a (``verified_*``, ``verification_calls``).

    Final ``status``: 'smoothed_abstain' / 'smoothed_wrong' (not attacked: no reference label,
    or g_sigma already wrong), 'misclassified' (the clean image's measured level reaches P_a:
    verified distortion 0), 'attacked' (verified), 'unverified' (no point of the ray reached
    P_a), 'no_start' (the attack found no starting point). ``success`` = a verified adversarial
    (distortion 0 included) is known."""
    res = out.result
    checkpoints = sorted({max(1, int(round(f * config.max_queries))) for f in L2_AT_FRACTIONS})
    l2_at = {q: res.distortion_at(q, "l2") for q in checkpoints} if res is not None else {}
    row_of = {int(i): r for r, i in enumerate(res.image_ids)} if res is not None else {}
    recs = []
    for st in run.settings():
        for b, i in enumerate(out.ids):
            i = int(i)
            rec = _record_base(st, i, labels[i], config, out.seconds)
            rec.update(attack_seconds=out.attack_seconds, verify_seconds=out.verify_seconds)
            rec["reference"] = int(out.reference[b])
            cert = (certified or {}).get(i)
            rec.update(radius=None if cert is None else cert["radius"],
                       certify_prediction=None if cert is None else cert["prediction"],
                       certify=None if cert is None else {"n0": cert["n0"], "n": cert["n"], "alpha": cert["alpha"]})
            raw = {"l2": None, "linf": None, "queries": 0, "evaluations": 0, "steps": 0, "l2_at": None,
                   "attack_status": None}
            r = row_of.get(i)
            if r is not None:
                raw = {"l2": float(res.l2[r]), "linf": float(res.linf[r]), "queries": int(res.queries[r]),
                       "evaluations": int(res.evaluations[r]), "steps": int(res.steps[r]),
                       "l2_at": {str(q): float(v[r]) for q, v in l2_at.items()},
                       "attack_status": str(res.status[r])}
            rec.update(raw)
            rec.update(clean_level=None, clean_level_low=None, clean_level_high=None, clean_calls=0)
            if st.p_a in out.clean:
                c = out.clean[st.p_a]
                rec.update(clean_level=float(c["level"][b]), clean_level_low=float(c["level_low"][b]),
                           clean_level_high=float(c["level_high"][b]), clean_calls=int(c["calls"][b]))
            rec.update(_verified_fields(st, out, b, r, rec))
            recs.append(rec)
    return recs


def _verified_fields(st: Setting, out: BatchOutcome, b: int, r: int | None, rec: dict) -> dict:
    """Status, success and the verified_* fields of one record (see :func:`attack_records`)."""
    none = {"verified_l2": None, "verified_linf": None, "verified_level": None, "verified_level_low": None,
            "verified_level_high": None, "verified_t": None, "verify_tests": 0, "accept_level": None,
            "raw_level": None, "raw_level_calls": 0}
    calls = int(rec["clean_calls"])
    if out.reference_status[b] != "ok":
        return {**none, "status": str(out.reference_status[b]), "success": False, "verification_calls": calls}
    c = out.clean.get(st.p_a)
    if c is not None and c["accepted"][b]:
        return {**none, "status": "misclassified", "success": True, "verified_l2": 0.0, "verified_linf": 0.0,
                "verified_level": rec["clean_level"], "verified_level_low": rec["clean_level_low"],
                "verified_level_high": rec["clean_level_high"], "verified_t": 0.0, "verification_calls": calls}
    attack_status = rec["attack_status"]
    if r is None or attack_status == "no_start":
        return {**none, "status": "no_start", "success": False, "verification_calls": calls}
    if attack_status == "misclassified":  # deterministic f only (no RS): one call said so
        return {**none, "status": "misclassified", "success": True, "verified_l2": 0.0, "verified_linf": 0.0,
                "verified_level": 1.0, "verified_level_low": 1.0, "verified_level_high": 1.0,
                "verified_t": 0.0, "verification_calls": calls}
    v = out.ver[st.p_a]
    ok = bool(v.verified[b])
    return {"status": "attacked" if ok else STATUS_UNVERIFIED, "success": ok,
            "verified_l2": float(v.l2[b]) if ok else None, "verified_linf": float(v.linf[b]) if ok else None,
            "verified_level": float(v.level[b]), "verified_level_low": float(v.level_low[b]),
            "verified_level_high": float(v.level_high[b]), "verified_t": float(v.t[b]) if ok else None,
            "verify_tests": int(v.tests[b]), "accept_level": float(v.accept_level[b]),
            "raw_level": float(v.raw_level[b]), "raw_level_calls": int(v.raw_level_calls[b]),
            "verification_calls": calls + int(v.calls[b])}


def measure_batch(run: AttackRun, ids: np.ndarray, images: np.ndarray, labels: np.ndarray,
                  references: tuple[np.ndarray, np.ndarray], programs: "AttackPrograms", params: OracleParams,
                  decide: Callable, attack_root: jax.Array, verify_root: jax.Array, vcfg,
                  config: SweepConfig) -> BatchOutcome:
    """Attack and verify one batch of images for one run (the protocol of eq. (4)):

    1. images whose reference status is not 'ok' (PREDICT abstains, or g_sigma is wrong) are
       left out;
    2. under RS the evaluator tests each remaining clean image at every P_a of the run
       (:func:`rsjax.verify.level_at_points`); an image whose clean level reaches every P_a is
       not attacked (it is 'misclassified' at distortion 0 with its measured level);
    3. the attacker attacks the others against the reference label (under RS without the
       single clean query: the evaluator decided that);
    4. the evaluator verifies each output at each P_a (:func:`rsjax.verify.verify_rays`); its
       calls are its own, never charged to the attack's budget."""
    from rsjax.verify import level_at_points, verify_rays

    rs = run.criterion != "none"
    ref, ref_status = references
    ok = np.asarray(ref_status == "ok", bool)
    x = images[ids]
    clean: dict = {}
    todo = ok.copy()
    if rs:  # every (image, P_a) in one batched test: the P_a share their calls at x_o
        sel = np.flatnonzero(ok)
        pas = np.repeat(np.asarray(run.pas, np.float64), len(sel))
        res = level_at_points(decide, np.tile(x[sel], (len(run.pas), 1, 1, 1)), np.tile(ref[sel], len(run.pas)),
                              pas, np.tile(ids[sel], len(run.pas)), verify_root, vcfg,
                              interval_confidence=config.interval_confidence)
        reached = np.ones(len(ids), bool)
        for q, pa in enumerate(run.pas):
            full = {k: np.zeros(len(ids), v.dtype) for k, v in res.items()}
            for k, v in res.items():
                full[k][sel] = v[q * len(sel):(q + 1) * len(sel)]
            clean[pa] = full
            reached &= full["accepted"]
        todo &= ~reached
    result = None
    sel = np.flatnonzero(todo)
    t_attack = time.perf_counter()
    if len(sel):
        result = run_attack(programs, params, programs.attack_num_classes, x[sel], ref[sel], ids[sel], attack_root,
                            config.max_queries, config.attack_batch)
    t_attack = time.perf_counter() - t_attack
    ver: dict = {}
    found = np.zeros(len(ids), bool)
    x_adv = x.copy()
    if result is not None:
        found[sel] = result.success
        x_adv[sel] = result.x_adv
    # every (image, P_a) item in one batched search: the P_a share their calls along a ray
    parts = [np.flatnonzero(found & ~(clean[pa]["accepted"] if pa in clean else np.zeros(len(ids), bool)))
             for pa in run.pas]
    idx = np.concatenate(parts)
    levels = np.concatenate([np.full(len(p), 0.5 if pa is None else pa) for p, pa in zip(parts, run.pas)])
    v = verify_rays(decide, x[idx], x_adv[idx], ref[idx], levels, ids[idx], verify_root, vcfg,
                    deterministic=not rs, interval_confidence=config.interval_confidence)
    lo = 0
    for p, pa in zip(parts, run.pas):
        ver[pa] = _scatter_verification(type(v)(*(a[lo:lo + len(p)] for a in v)), p, len(ids))
        lo += len(p)
    out = BatchOutcome(ids, ref, ref_status, todo, result, clean, ver, 0.0)
    out.attack_seconds = t_attack / len(ids)
    return out


def _scatter_verification(v, idx: np.ndarray, size: int):
    """A :class:`rsjax.verify.Verification` over ``size`` rows with ``v``'s rows at ``idx``
    (other rows: not verified, zero calls)."""
    fields = {}
    for name, a in v._asdict().items():
        fill = np.zeros((size,) + a.shape[1:], a.dtype)
        if name in ("l2", "linf"):
            fill[:] = np.inf
        if name == "t":
            fill[:] = np.nan
        fill[idx] = a
        fields[name] = fill
    return type(v)(**fields)

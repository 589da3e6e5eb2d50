"""The resumable sweep (:func:`run_sweep`): prepare the models and images, list every task of
every stage with its estimated cost and whether its records already exist, then run the missing
ones in order, appending each task's records as it finishes (see :mod:`rsjax.study`)."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.cache import enable_compilation_cache
from rsjax.study import distributed
from rsjax.study.config import SweepConfig
from rsjax.study.executor import AttackPrograms, VerifyPrograms, make_mesh
from rsjax.study.models import prepare_models
from rsjax.study.oracle import OracleParams, apply_fn
from rsjax.study.stages import accuracy_records, attack_records, certify_records, measure_batch, reference_records
from rsjax.study.tasks import (STREAM_ATTACK, STREAM_VERIFY, AttackRun, attack_record_key, batches, certify_share,
                               enumerate_runs, permutation, process_slice, select_images, stream_key)


class Task(NamedTuple):
    """One unit of work: ``fn()`` appends its records; ``cost`` (estimated base-model
    evaluations) drives the progress bar's ETA; ``done``: its records already exist."""

    label: str
    cost: float
    done: bool
    fn: Callable[[], None]


class _Progress:
    """tqdm bar on stderr over estimated cost units (base-model evaluations plus a per-query
    overhead), so its ETA is meaningful; the postfix counts tasks done / total."""

    def __init__(self, tasks: list[Task], enabled: bool):
        from tqdm.auto import tqdm

        self.total_tasks = len(tasks)
        self.done_tasks = sum(1 for t in tasks if t.done)
        total = sum(t.cost for t in tasks)
        initial = sum(t.cost for t in tasks if t.done)
        self.bar = tqdm(total=total, initial=initial, file=sys.stderr, disable=not enabled, unit="ev",
                        unit_scale=True, smoothing=0.05, mininterval=1.0, desc="sweep",
                        bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
        self._post()

    def _post(self, what: str = ""):
        self.bar.set_postfix_str(f"tasks {self.done_tasks}/{self.total_tasks} {what}")

    def start(self, what: str):
        self._post(what)

    def finish(self, cost: float):
        self.done_tasks += 1
        self.bar.update(cost)
        self._post()

    def close(self):
        self.bar.close()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    from rsjax.results import dumps, write_text_atomic

    write_text_atomic(path, json.dumps(json.loads(dumps(value)), indent=indent) + "\n")


def _event(out: Path, **fields) -> None:
    """Append one line to ``runs.jsonl`` (start / finish / stopped of each invocation; in a
    multi-process run each process appends its own, with ``process`` and ``processes``)."""
    from rsjax.results import dumps

    if jax.process_count() > 1:
        fields.update(process=jax.process_index(), processes=jax.process_count())
    with open(out / "runs.jsonl", "a") as f:
        f.write(dumps(fields) + "\n")


@dataclass
class Study:
    """What every stage of one invocation shares: the configuration, the test images, the
    models, the image lists and the record stores of the output directory."""

    config: SweepConfig
    out: Path
    images: np.ndarray
    labels: np.ndarray
    classifiers: dict
    base_pred: dict  # model name -> f's labels on the whole test set
    eval_ids: np.ndarray  # images of the accuracy stage
    certify_ids: np.ndarray  # images certified (the first of the permutation, all attacked ones included)
    my_images: np.ndarray  # attacked images of this process
    my_certify: np.ndarray  # certified images of this process (its attacked ones included)
    lead: bool  # process 0 (writes accuracy and the report)
    stores: dict = field(default_factory=dict)  # 'accuracy', 'certify', 'reference', 'records' -> RecordStore
    notes: dict = field(default_factory=dict)  # what goes to env.json (the dtype check)


def open_study(config: SweepConfig, out: Path, log: Callable[[str], None], cache: Path | None) -> Study:
    """Load the data and the models (training them if needed), choose the images (written to
    ``images.json``) and open the record stores (one file per process in a multi-process run,
    where process 0 trains the missing models and writes ``models.json`` and ``images.json``
    while the others wait, then load its checkpoints from the cache)."""
    from rsjax.data import load_dataset
    from rsjax.results import RecordStore

    lead = jax.process_index() == 0
    data = load_dataset(config.data)
    if not lead:
        distributed.barrier("models")
    classifiers, model_info = prepare_models(config, log, cache, data)
    if lead:
        _write_json(out / "models.json", model_info)
        distributed.barrier("models")
    images, labels = data.images, data.labels
    notes = {}
    if config.dtype != "float32":  # lower precision only behind the agreement check
        classifiers, notes["dtype_check"] = _cast_models(config, classifiers, images, log)
    # predictions in calls of at most vote_chunk rows (the memory plan's bound; 1024 by default)
    base_pred = {name: clf.predict(images, min(1024, config.vote_chunk)) for name, clf in classifiers.items()}
    order = permutation(len(labels), config.seed)
    attacked = select_images({name: p == labels for name, p in base_pred.items()}, order, config.n_images)
    pos_last = int(np.flatnonzero(np.isin(order, attacked)).max())
    certify_ids = order[:max(config.certify_images, pos_last + 1)]
    eval_ids = order[:min(config.eval_images, len(order))]
    if lead:
        _write_json(out / "images.json", {
            "attacked": attacked.tolist(), "certified": certify_ids.tolist(),
            "evaluated": {"count": int(len(eval_ids)), "first": eval_ids[:10].tolist()}}, indent=None)
    suffix = "" if jax.process_count() == 1 else f".p{jax.process_index()}"
    stores = {"accuracy": RecordStore(out / "accuracy.jsonl")} if lead else {}
    stores.update({kind: RecordStore(out / f"{kind}{suffix}.jsonl") for kind in ("certify", "reference", "records")})
    return Study(config, out, images, labels, classifiers, base_pred, eval_ids, certify_ids,
                 process_slice(attacked), certify_share(certify_ids, attacked), lead, stores, notes)


def _cast_models(config: SweepConfig, classifiers: dict, images: np.ndarray, log) -> tuple[dict, dict]:
    """Every model in ``config.dtype`` after :func:`rsjax.memory.cast_checked` (top-1 agreement
    with float32 on noisy samples of the first test images at the model's sigmas)."""
    from rsjax.memory import AGREEMENT_IMAGES, cast_checked

    out, checks = {}, {}
    for m in config.models:
        out[m.name], checks[m.name] = cast_checked(
            classifiers[m.name], config.dtype, images[:AGREEMENT_IMAGES], config.model_sigmas(m),
            name=f"model {m.name!r}", seed=config.seed, batch_size=min(32, config.vote_chunk))
        log(f"{m.name}: {config.dtype} agrees with float32 on {checks[m.name]['agreement']:.2%} of noisy samples")
    return out, checks


def _read_json_object(path: Path) -> dict | None:
    """The JSON object in ``path``; None if the file is absent or unreadable (e.g. truncated by a
    kill while an rsjax older than the atomic writes was rewriting it)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _update_env(out: Path, **fields) -> None:
    """Merge ``fields`` into ``env.json`` (the memory plan, the dtype check, the peak memory);
    process i > 0 of a multi-process run writes its own ``env.p<i>.json``."""
    path = out / ("env.json" if jax.process_index() == 0 else f"env.p{jax.process_index()}.json")
    env = _read_json_object(path) or {}
    env.update(fields)
    _write_json(path, env)


def _append(store, make: Callable[[], list[dict]]) -> None:
    store.append(make())


def stage_tasks(st: Study) -> list[Task]:
    """The accuracy (process 0 only) and certification tasks (this process's share) of every
    model, then the reference-label tasks, in run order."""
    from rsjax.results import record_key

    cfg, acc, cert = st.config, st.stores.get("accuracy"), st.stores["certify"]
    tasks = []
    for m in cfg.models:
        clf = st.classifiers[m.name]
        if st.lead:
            tasks.append(Task(f"accuracy {m.name}", float(len(st.eval_ids)),
                              record_key(kind="accuracy", model=m.name, sigma=None, n=None) in acc,
                              partial(_append, acc, partial(accuracy_records, m.name, clf, st.images, st.labels,
                                                            st.eval_ids, None, cfg, st.base_pred[m.name]))))
            for s in cfg.model_sigmas(m):
                done = all(record_key(kind="accuracy", model=m.name, sigma=float(s), n=int(n)) in acc
                           for n in cfg.eval_ns)
                tasks.append(Task(f"RS accuracy {m.name} s={s:g}", float(len(st.eval_ids) * sum(cfg.eval_ns)), done,
                                  partial(_append, acc, partial(accuracy_records, m.name, clf, st.images, st.labels,
                                                                st.eval_ids, float(s), cfg))))
        for s in cfg.model_sigmas(m):
            for chunk in batches(st.my_certify, 256):
                done = all(record_key(kind="certify", model=m.name, sigma=float(s), image=int(i)) in cert
                           for i in chunk)
                tasks.append(Task(f"certify {m.name} s={s:g}", float(len(chunk) * (cfg.certify_n0 + cfg.certify_n)),
                                  done, partial(_append, cert, partial(certify_records, m.name, clf, st.images,
                                                                       st.labels, chunk, float(s), cfg))))
    return tasks + _reference_tasks(st)


def _reference_tasks(st: Study) -> list[Task]:
    from rsjax.results import record_key

    cfg, ref = st.config, st.stores["reference"]
    if cfg.reference != "smoothed":
        return []
    tasks = []
    for m in cfg.models:
        for s in cfg.model_sigmas(m):
            done = all(record_key(kind="reference", model=m.name, sigma=float(s), image=int(i)) in ref
                       for i in st.my_images)
            tasks.append(Task(f"reference {m.name} s={s:g}", float(len(st.my_images) * cfg.reference_n), done,
                              partial(_append, ref, partial(reference_records, m.name, st.classifiers[m.name],
                                                            st.images, st.labels, st.my_images, float(s), cfg))))
    return tasks


class AttackStage:
    """Attacks one batch of images for one run and appends its records; compiles one
    :class:`AttackPrograms` per (attack, architecture, criterion) and one
    :class:`VerifyPrograms` per (architecture, oracle kind), shared by every setting."""

    def __init__(self, st: Study):
        from rsjax.attacks import get_attack

        cfg = st.config
        self.st = st
        self.mesh = make_mesh() if jax.local_device_count() > 1 else None
        self.attacks = {a: get_attack(a, **dict(cfg.attack_options.get(a, {}))) for a in cfg.attacks}
        self.programs: dict[tuple[str, str, str], AttackPrograms] = {}
        self.verifiers: dict[tuple[str, str], VerifyPrograms] = {}
        self.attack_root = stream_key(cfg.seed, STREAM_ATTACK)
        self.verify_root = stream_key(cfg.seed, STREAM_VERIFY)
        self.vcfg = cfg.verify_config()

    def certified_of(self, name: str, sigma: float, ids) -> dict[int, dict]:
        from rsjax.results import record_key

        want = {record_key(kind="certify", model=name, sigma=float(sigma), image=int(i)) for i in ids}
        return {r["image"]: r for r in self.st.stores["certify"] if r["key"] in want}

    def references_of(self, run: AttackRun, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from rsjax.results import record_key

        if run.criterion == "none" or self.st.config.reference == "true":
            return self.st.labels[ids].astype(np.int64), np.full(len(ids), "ok", dtype=object)
        want = {record_key(kind="reference", model=run.model, sigma=float(run.sigma), image=int(i)): int(i)
                for i in ids}
        got = {want[r["key"]]: r for r in self.st.stores["reference"] if r["key"] in want}
        return (np.array([got[int(i)]["prediction"] for i in ids], np.int64),
                np.array([got[int(i)]["status"] for i in ids], dtype=object))

    def _compiled(self, run: AttackRun, clf) -> tuple[AttackPrograms, VerifyPrograms]:
        cfg, kind = self.st.config, run.criterion
        rs = kind != "none"
        pkey = (run.attack, clf.spec.name, kind)
        if pkey not in self.programs:
            self.programs[pkey] = AttackPrograms(self.attacks[run.attack], apply_fn(clf), clf.num_classes, kind,
                                                 self.mesh, chunk_size=cfg.vote_chunk, noise=cfg.noise,
                                                 eval_rows=clf.forward_block, check_clean=not rs)
        vkey = (clf.spec.name, "label" if rs else "none")
        if vkey not in self.verifiers:
            self.verifiers[vkey] = VerifyPrograms(apply_fn(clf), clf.num_classes, vkey[1], cfg.vote_chunk,
                                                  cfg.noise, clf.forward_block)
        return self.programs[pkey], self.verifiers[vkey]

    def run_batch(self, run: AttackRun, ids: np.ndarray) -> None:
        st, cfg = self.st, self.st.config
        clf = st.classifiers[run.model]
        programs, verifier = self._compiled(run, clf)
        params = OracleParams(clf.variables, jnp.float32(run.sigma or 1.0), jnp.int32(run.n or 1),
                              jnp.int32(run.k_wrong or 1))
        t0 = time.perf_counter()
        out = measure_batch(run, ids, st.images, st.labels, self.references_of(run, ids), programs, params,
                            verifier.decider(params), self.attack_root, self.verify_root, self.vcfg, cfg)
        out.seconds = (time.perf_counter() - t0) / len(ids)
        out.verify_seconds = out.seconds - out.attack_seconds
        cert = self.certified_of(run.model, run.sigma, ids) if run.criterion != "none" else None
        st.stores["records"].append(attack_records(run, out, st.labels, cert, cfg))


def attack_tasks(st: Study) -> list[Task]:
    """One task per (attack run, batch of this process's images), cheapest first (stable
    order otherwise), so an interrupted sweep already covers every model and sigma at small n;
    the order changes no number."""
    cfg, rec = st.config, st.stores["records"]
    stage = AttackStage(st)
    tasks = []
    for run in enumerate_runs(cfg):
        for ids in batches(st.my_images, cfg.attack_batch):
            done = all(attack_record_key(s, i) in rec for s in run.settings() for i in ids)
            n = run.n or 1
            cost = len(ids) * cfg.max_queries * (0.5 * n + 20)
            if run.criterion != "none":
                cost += len(ids) * len(run.pas) * cfg.verify_calls * n * 3
            tasks.append(Task(f"{run.label()} [{len(ids)} images]", float(cost), done,
                              partial(stage.run_batch, run, ids)))
    return sorted(tasks, key=lambda t: t.cost)


def run_tasks(tasks: list[Task], progress: bool, max_tasks: int | None,
              on_task: Callable[[], None] | None = None) -> tuple[int, int]:
    """Run the tasks not done, in order (at most ``max_tasks`` of them), calling ``on_task``
    after each; returns (tasks run, tasks still missing)."""
    bar = _Progress(tasks, progress)
    new, left = 0, sum(1 for t in tasks if not t.done)
    try:
        for t in tasks:
            if t.done:
                continue
            if max_tasks is not None and new >= max_tasks:
                break
            bar.start(t.label)
            t.fn()
            new += 1
            left -= 1
            bar.finish(t.cost)
            if on_task is not None:
                on_task()
    finally:
        bar.close()
    return new, left


def run_sweep(config: SweepConfig, out: str | os.PathLike, *, progress: bool = True,
              cache: str | os.PathLike | None = None, log: Callable[[str], None] = _log,
              write_report: bool = True, max_tasks: int | None = None, memory_plan: dict | None = None) -> Path:
    """Run (or resume) the sweep of ``config`` into ``out`` (see :mod:`rsjax.study`).

    A finished record is never recomputed; a changed configuration in ``out`` raises InputError.
    ``max_tasks`` stops after that many newly computed tasks (for tests and partial runs).
    ``memory_plan`` (:meth:`rsjax.memory.MemoryPlan.to_dict`, already applied to ``config``) goes
    to ``env.json``, with the dtype check and, at each task's end, the peak memory."""
    from rsjax.results import environment_info, open_run_dir

    config.validate()
    wall0 = time.perf_counter()
    enable_compilation_cache(Path(cache) if cache is not None else None)
    lead = jax.process_index() == 0
    if not lead:  # multi-process: process 0 creates the directory (or refuses it) first
        distributed.barrier("open")
    out = open_run_dir(out, config.to_dict())
    if lead:
        if _read_json_object(out / "env.json") is None:
            _write_json(out / "env.json", environment_info(config.seed))
        distributed.barrier("open")
    _event(out, event="start", time=time.time(), devices=[str(d) for d in jax.devices()])
    from rsjax.memory import peak_memory

    if memory_plan is not None:
        _update_env(out, memory_plan=memory_plan)
    st = open_study(config, out, log, None if cache is None else Path(cache))
    _update_env(out, **st.notes, peak_memory=peak_memory())
    tasks = stage_tasks(st) + attack_tasks(st)
    try:
        new, left = run_tasks(tasks, progress and lead, max_tasks,  # one bar: process 0's share
                              on_task=lambda: _update_env(out, peak_memory=peak_memory()))
    finally:
        _update_env(out, peak_memory=peak_memory())
    # multi-process: every process's records are on disk before process 0 merges them (the
    # wall time below includes the wait for the slowest process: the job's time)
    distributed.publish("left", str(left))
    distributed.barrier("done")
    _event(out, event="finish" if left == 0 else "stopped", time=time.time(),
           wall_s=time.perf_counter() - wall0, new_tasks=new, tasks=len(tasks))
    complete = sum(int(v) for v in distributed.gather("left", str(left))) == 0
    if write_report and complete and st.lead:
        from rsjax.report import write_report as _write

        _write(out)
    distributed.barrier("report")
    return out

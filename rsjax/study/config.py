"""The study's configuration: :class:`SweepConfig` (everything that determines the numbers,
written to ``config.json``), :class:`ModelEntry`, and the presets as data (:data:`PRESETS`).

To add a preset, add a :class:`SweepConfig` to :data:`PRESETS` (``experiments/sweep.py
--preset NAME`` then offers it) with a comment saying what it is for and how long it runs on its
target machine; measured sizing goes to ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rsjax.errors import InputError

# rsjax.criterion's kinds and references, restated so that reading a configuration needs no JAX
# (tests/test_criterion.py checks they are the same)
CRITERIA = ("level", "label")
REFERENCES = ("smoothed", "true")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the sweep: trained with ``recipe`` (and ``train`` overrides of
    :class:`rsjax.train.TrainConfig`) and cached, or loaded from ``checkpoint`` (its SHA-256 is
    part of the configuration, so a changed file is a changed configuration). ``sigmas``: the
    sigma grid of this model (None: the sweep's ``sigmas``)."""

    name: str
    recipe: str | None = "standard"
    train: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    sigmas: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines the sweep's numbers (written to ``config.json``; a different
    configuration in an existing output directory is refused). See :data:`PRESETS` for the
    grids in use."""

    preset: str = "default"
    data: str = "fashion-mnist:test"
    train_data: str = "fashion-mnist:train"
    train_limit: int | None = None
    arch: str = "fmnist_mlp"
    models: tuple[ModelEntry, ...] = ()
    sigmas: tuple[float, ...] = (0.55, 0.8)
    ns: tuple[int, ...] = (1, 5, 10)
    pas: tuple[float, ...] = (0.5, 0.8)
    criterion: str = "label"
    level_ns: tuple[int, ...] = ()
    reference: str = "smoothed"
    reference_n: int = 1000
    reference_alpha: float = 0.001
    attacks: tuple[str, ...] = ("hsja", "surfree", "rays")
    attack_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    max_queries: int = 1000
    n_images: int = 50
    attack_batch: int = 64
    baseline: bool = True
    eval_images: int = 10_000
    eval_ns: tuple[int, ...] = (1, 10, 100)
    predict_alpha: float = 0.001
    certify_images: int = 500
    certify_n0: int = 100
    certify_n: int = 10_000
    certify_alpha: float = 0.001
    verify_calls: int = 100
    verify_confidence: float = 0.95
    verify_power: float = 0.95
    verify_rel_tol: float = 0.01
    interval_confidence: float = 0.95
    noise: str = "hash"
    vote_chunk: int = 2048
    seed: int = 0
    #: compute dtype of every model ('float32' or 'bfloat16', the latter behind the agreement
    #: check of :func:`rsjax.memory.cast_checked`)
    dtype: str = "float32"

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        # fields added later are left out at their default, so earlier run directories (and their
        # config hashes) stay valid
        for k, default in _LATER_DEFAULTS.items():
            if d.get(k) == default:
                d.pop(k)
        return d

    def model_sigmas(self, entry: ModelEntry) -> tuple[float, ...]:
        return tuple(entry.sigmas) if entry.sigmas is not None else tuple(self.sigmas)

    def validate(self) -> "SweepConfig":
        from rsjax.attacks import ATTACKS
        from rsjax.errors import check_int_at_least, check_open_unit, check_positive

        if not self.models:
            raise InputError("the sweep needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise InputError(f"model names must be distinct, got {names}")
        for m in self.models:
            if m.checkpoint is None and m.recipe is None:
                raise InputError(f"model {m.name!r} needs a recipe or a checkpoint")
            for s in self.model_sigmas(m):
                check_positive(f"sigma of model {m.name!r}", s)
        for n in self.ns + self.eval_ns + self.level_ns:
            check_int_at_least("n", n, 1)
        if self.reference not in REFERENCES:
            raise InputError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        self.verify_config()
        for p in self.pas:
            check_open_unit("P_a", p)
        if self.criterion not in CRITERIA:
            raise InputError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        for a in self.attacks:
            if a not in ATTACKS:
                raise InputError(f"unknown attack {a!r}; known: {', '.join(ATTACKS)}")
        for a, opts in self.attack_options.items():
            if a in self.attacks:  # (a preset's options for an attack left out of the run are unused)
                from rsjax.attacks import get_attack

                get_attack(a, **dict(opts))  # an unknown field or a bad value is named here, before any work
        from rsjax.memory import check_dtype

        check_dtype(self.dtype, "dtype")
        for name, v in (("max_queries", self.max_queries), ("n_images", self.n_images),
                        ("vote_chunk", self.vote_chunk),
                        ("attack_batch", self.attack_batch), ("eval_images", self.eval_images),
                        ("certify_images", self.certify_images), ("certify_n0", self.certify_n0),
                        ("certify_n", self.certify_n), ("reference_n", self.reference_n)):
            check_int_at_least(name, v, 1)
        for name, v in (("predict_alpha", self.predict_alpha), ("certify_alpha", self.certify_alpha),
                        ("reference_alpha", self.reference_alpha),
                        ("interval_confidence", self.interval_confidence)):
            check_open_unit(name, v)
        return self

    def verify_config(self):
        """The evaluator's settings (:class:`rsjax.verify.VerifyConfig`)."""
        from rsjax.verify import VerifyConfig

        return VerifyConfig(calls=self.verify_calls, confidence=self.verify_confidence, power=self.verify_power,
                            rel_tol=self.verify_rel_tol).validate()


#: fields of :class:`SweepConfig` added after configurations were first written, with the
#: default that :meth:`SweepConfig.to_dict` leaves out
_LATER_DEFAULTS = {"dtype": "float32"}


def fmnist_models(sigma_train: float, eps: float, epochs: int | None = None, pgd_epochs: int | None = None,
                  pgd_steps: int = 7, sigmas: Mapping[str, Sequence[float]] | None = None) -> tuple[ModelEntry, ...]:
    """The paper's three models on Fashion-MNIST: Standard, RandTrain (Gaussian noise
    sigma_train) and AdvTrain (L2 PGD of radius eps)."""
    sig = dict(sigmas or {})
    base = {} if epochs is None else {"epochs": epochs}
    adv = dict(base, eps=eps, pgd_steps=pgd_steps)
    if pgd_epochs is not None:
        adv["epochs"] = pgd_epochs
    return (
        ModelEntry("standard", "standard", dict(base), sigmas=_tup(sig.get("standard"))),
        ModelEntry("randtrain", "gaussian", dict(base, sigma=sigma_train), sigmas=_tup(sig.get("randtrain"))),
        ModelEntry("advtrain", "pgd", adv, sigmas=_tup(sig.get("advtrain"))),
    )


def _tup(v):
    return None if v is None else tuple(float(s) for s in v)


#: The presets (use :func:`preset`, which returns a copy). How they were sized (measurements):
#: ``benchmarks/RESULTS.md``, "Performance notes moved out of docstrings".
PRESETS: dict[str, SweepConfig] = {
    # the embedded default: <= 15 min on a quiet 2-core CPU (checkpoints trained on the first
    # run); sigma = 0.55 / 0.8 give the paper's small / large accuracy drop of the standard MLP;
    # RandTrain at its training sigma, AdvTrain (L2 PGD, eps = 1, 3 steps, 5 epochs) at 0.55;
    # n = 100 only in 'full' (it alone would exceed this budget)
    "default": SweepConfig(
        preset="default",
        models=fmnist_models(sigma_train=0.8, eps=1.0, pgd_epochs=5, pgd_steps=3,
                             sigmas={"standard": (0.55, 0.8), "randtrain": (0.8,), "advtrain": (0.55,)}),
        sigmas=(0.55, 0.8),
        ns=(1, 5, 10),
        pas=(0.5, 0.8),
        criterion="label",
        level_ns=(10,),
        max_queries=500,
        n_images=50,
        eval_images=2000,
        eval_ns=(1, 5, 10, 100),
        certify_images=300,
        certify_n=10_000,
        verify_calls=100,
    ),
    # tiny grid for tests (a few minutes): two models trained for one epoch on 2,000 images,
    # one sigma, n in {1, 5}, 4 images, 60 queries
    "smoke": SweepConfig(
        preset="smoke",
        train_limit=2000,
        models=(ModelEntry("standard", "standard", {"epochs": 1}),
                ModelEntry("randtrain", "gaussian", {"epochs": 1, "sigma": 0.25})),
        sigmas=(0.25,),
        ns=(1, 5),
        pas=(0.5, 0.8),
        criterion="label",
        level_ns=(5,),
        reference_n=100,
        attacks=("hsja", "surfree", "rays"),
        attack_options={"hsja": {"init_num_evals": 10, "probe_batch": 10}},
        max_queries=60,
        n_images=4,
        attack_batch=4,
        eval_images=200,
        eval_ns=(1, 5),
        certify_images=8,
        certify_n0=10,
        certify_n=100,
        verify_calls=20,
    ),
    # issue 16, plain vs noise-aware attackers at equal queries: the default preset's standard
    # model (same cached checkpoint) at its sigma = 0.55, n in {1, 10, 100}, P_a = 0.5, the three
    # plain attacks and their noise-aware versions, 500 queries, 20 images; the white-box floor
    # (SmoothAdv, rsjax/smoothadv.py) runs on the same images with experiments/noise_aware.py.
    # 21 min on a loaded 2-core CPU (measured; n = 100 is a third of it)
    "noise-aware": SweepConfig(
        preset="noise-aware",
        models=fmnist_models(sigma_train=0.8, eps=1.0, pgd_epochs=5, pgd_steps=3)[:1],
        sigmas=(0.55,),
        ns=(1, 10, 100),
        pas=(0.5,),
        criterion="label",
        level_ns=(),
        attacks=("hsja", "psj", "surfree", "surfree_na", "rays", "rays_na"),
        max_queries=500,
        n_images=20,
        attack_batch=20,
        baseline=False,
        eval_images=500,
        eval_ns=(1, 10, 100),
        certify_images=20,
        certify_n=10_000,
        verify_calls=100,
    ),
    # the paper-sized grid: 200 images, 2,000 queries, n in {1, 10, 30, 100}, every model at both
    # sigmas, CERTIFY with n = 100,000 (Cohen's reference) on 500 images; hours on a CPU, meant
    # for a GPU
    "full": SweepConfig(
        preset="full",
        models=fmnist_models(sigma_train=0.8, eps=1.0),
        sigmas=(0.55, 0.8),
        ns=(1, 10, 30, 100),
        pas=(0.5, 0.8),
        criterion="label",
        level_ns=(10,),
        max_queries=2000,
        n_images=200,
        attack_batch=128,
        eval_images=10_000,
        eval_ns=(1, 10, 30, 100, 1000),
        certify_images=500,
        certify_n=100_000,
        verify_calls=200,
    ),
}


def preset(name: str) -> SweepConfig:
    """A copy of the preset ``name`` of :data:`PRESETS` (``default``: <= 15 min on a 2-core CPU;
    ``smoke``: minutes, for tests; ``full``: the paper-sized grid)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def with_checkpoints(config: SweepConfig, checkpoints: Mapping[str, str], sigmas: Sequence[float] | None = None) -> SweepConfig:
    """Replace the models by the given ``name -> checkpoint path`` (e.g. the converted CIFAR
    ResNet-20); the architecture is read from each checkpoint."""
    from rsjax.checkpoints import read_checkpoint_header

    models = []
    for name, path in checkpoints.items():
        header = read_checkpoint_header(path)
        models.append(ModelEntry(name, None, {}, str(Path(path).resolve()), header["sha256"],
                                 None if sigmas is None else tuple(sigmas)))
    arch = read_checkpoint_header(next(iter(checkpoints.values())))["arch"] if checkpoints else config.arch
    return dataclasses.replace(config, models=tuple(models), arch=arch)


def config_from_dict(d: Mapping[str, Any]) -> SweepConfig:
    """Inverse of :meth:`SweepConfig.to_dict` (for re-running or resuming from ``config.json``)."""
    d = dict(d)
    d["models"] = tuple(ModelEntry(**{**m, "sigmas": _tup(m.get("sigmas"))}) for m in d["models"])
    for k in ("sigmas", "ns", "pas", "attacks", "eval_ns", "level_ns"):
        d[k] = tuple(d[k])
    return SweepConfig(**d)

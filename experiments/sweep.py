#!/usr/bin/env python
"""Run (or resume) the paper's study: certified vs practical robustness of randomized smoothing.

    python experiments/sweep.py                      # the embedded default (<= 15 min, 2-core CPU)
    python experiments/sweep.py --preset smoke       # about a minute
    python experiments/sweep.py --preset full        # 200 images, 2,000 queries (hours on CPU)
    python experiments/sweep.py --checkpoint resnet20=cifar_resnet20.ckpt \\
        --data npz:../shared/data/cifar10/test_jpeg.npz --sigmas 0.12 0.25 --out runs/cifar

Everything goes to one directory (default ``runs/sweep-<preset>-<config hash>``): config.json,
env.json, models.json, accuracy.jsonl, certify.jsonl, records.jsonl, summary.csv, figures and
report.md. Killing the sweep and starting it again resumes it; a changed configuration in an
existing --out directory is refused. The protocol: rsjax/study/__init__.py; presets:
rsjax/study/config.py.

Multi-process (JAX's distributed runtime): start the same command as P processes, each with
``--coordinator HOST:PORT --num-processes P --process-id I`` (or the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; under ``srun -n P`` nothing is
needed). One machine: ``scripts/multiprocess.sh P [sweep args...]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    from rsjax.study.config import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--out", default=None, help="output directory (default runs/sweep-<preset>-<hash>)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="attack this checkpoint instead of the preset's trained models (repeatable)")
    p.add_argument("--data", default=None, help="test data spec (fashion-mnist:test, npz:PATH, imagefolder:DIR)")
    p.add_argument("--sigmas", type=float, nargs="+", default=None, help="sigma grid")
    p.add_argument("--ns", type=int, nargs="+", default=None, help="n values attacked")
    p.add_argument("--pas", type=float, nargs="+", default=None, help="levels P_a")
    p.add_argument("--criterion", default=None, choices=["level", "label"],
                   help="attacker's oracle: label (the deployed g_{sigma,n}, default) or level (the paper's shortcut)")
    p.add_argument("--level-ns", type=int, nargs="*", default=None,
                   help="with --criterion label, also run the level shortcut at these n (default preset: 10)")
    p.add_argument("--reference", default=None, choices=["smoothed", "true"],
                   help="label the criterion compares against: g_sigma(x_o) by PREDICT (default) or the true y")
    p.add_argument("--reference-n", type=int, default=None, help="PREDICT samples of the reference label (1000)")
    p.add_argument("--verify-calls", type=int, default=None,
                   help="evaluator: most calls of g_{sigma,n} per tested point (m, default 100)")
    p.add_argument("--attacks", nargs="+", default=None, help="attacks (registered names: hsja, surfree, rays, psj, rays_na, surfree_na)")
    p.add_argument("--attack-option", action="append", default=[], metavar="ATTACK:KEY=VALUE",
                   help="a config field of one attack (repeatable; values read as Python literals), e.g. "
                        "psj:max_probe_rms=0.5; kept in config.json, so a resumed run must repeat it")
    p.add_argument("--queries", type=int, default=None, help="query budget per image")
    p.add_argument("--images", type=int, default=None, help="number of attacked images")
    p.add_argument("--eval-images", type=int, default=None)
    p.add_argument("--certify-images", type=int, default=None)
    p.add_argument("--certify-n", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--memory-budget", default=None, metavar="GiB",
                   help="memory the sweep may use (default: half the machine's RAM, 90%% of an "
                        "accelerator's); lowers the vote chunk and the attack batch to fit (rsjax/memory.py)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype of the models (float32; bfloat16 only if it agrees with float32 "
                        "on >= 99%% of noisy samples)")
    p.add_argument("--cache", default=None, help="checkpoint cache (default $RSJAX_CACHE or ~/.cache/rsjax)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="do not write summary/figures/report.md")
    p.add_argument("--max-tasks", type=int, default=None, help=argparse.SUPPRESS)
    mp = p.add_argument_group("multi-process (jax.distributed)")
    mp.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                    help="address of process 0's coordination service (default $JAX_COORDINATOR_ADDRESS)")
    mp.add_argument("--num-processes", default=None, metavar="P",
                    help="number of processes of the job (default $JAX_NUM_PROCESSES, or Slurm's task count)")
    mp.add_argument("--process-id", default=None, metavar="I",
                    help="this process's id in [0, P) (default $JAX_PROCESS_ID, or $SLURM_PROCID)")
    mp.add_argument("--heartbeat-timeout", type=int, default=100, metavar="SECONDS",
                    help="a process silent this long is declared dead and the whole job ends (default 100)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from rsjax.study.config import preset, with_checkpoints

    cfg = preset(args.preset)
    if args.checkpoint:
        named = {}
        for item in args.checkpoint:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                from rsjax.errors import InputError
                raise InputError(f"--checkpoint takes NAME=PATH, got {item!r}")
            named[name] = path
        cfg = with_checkpoints(cfg, named)
        cfg = dataclasses.replace(cfg, preset=f"{cfg.preset}+checkpoints")
    overrides = {"data": args.data, "ns": args.ns and tuple(args.ns), "pas": args.pas and tuple(args.pas),
                 "criterion": args.criterion, "attacks": args.attacks and tuple(args.attacks),
                 "max_queries": args.queries, "n_images": args.images, "eval_images": args.eval_images,
                 "certify_images": args.certify_images, "certify_n": args.certify_n, "seed": args.seed,
                 "level_ns": None if args.level_ns is None else tuple(args.level_ns), "reference": args.reference,
                 "reference_n": args.reference_n, "verify_calls": args.verify_calls, "dtype": args.dtype}
    if args.sigmas:
        overrides["sigmas"] = tuple(args.sigmas)
        overrides["models"] = tuple(dataclasses.replace(m, sigmas=None) for m in cfg.models)
    if args.ns or args.level_ns:
        overrides["eval_ns"] = tuple(sorted(set(cfg.eval_ns) | set(args.ns or ()) | set(args.level_ns or ())))
    if args.attack_option:
        options = {a: dict(o) for a, o in cfg.attack_options.items()}
        attacks = args.attacks or cfg.attacks
        for attack, key, value in map(parse_attack_option, args.attack_option):
            if attack not in attacks:
                from rsjax.errors import InputError
                raise InputError(f"attack options for {attack!r}, which the sweep does not run (attacks: "
                                 f"{', '.join(attacks)})")
            options.setdefault(attack, {})[key] = value
        overrides["attack_options"] = options
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return cfg.validate()


def parse_attack_option(item: str) -> tuple[str, str, object]:
    """``"psj:max_probe_rms=0.5"`` -> ``("psj", "max_probe_rms", 0.5)`` (the value read as a Python
    literal: :func:`rsjax.cli.common.parse_option`)."""
    from rsjax.cli.common import parse_option
    from rsjax.errors import InputError

    attack, sep, rest = item.partition(":")
    if not (sep and attack.strip() and rest.partition("=")[0].strip() and "=" in rest):
        raise InputError(f"--attack-option takes ATTACK:KEY=VALUE, got {item!r}")
    key, value = parse_option(rest)
    return attack.strip(), key, value


def _leave(code: int, spec) -> int:
    """Exit status ``code``; in a multi-process job a failing process leaves at once (``os._exit``)
    rather than wait in JAX's shutdown barrier for peers that wait for it: they see it gone
    through the runtime's heartbeats and end too."""
    if spec is not None and code != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv=None) -> int:
    from rsjax.errors import RsjaxError
    from rsjax.memory import parse_budget, plan_sweep
    from rsjax.results import config_hash
    from rsjax.study import distributed
    from rsjax.study.run import run_sweep

    args = parse_args(argv)
    spec = None
    try:
        spec = distributed.resolve(args.coordinator, args.num_processes, args.process_id,
                                   heartbeat_timeout=args.heartbeat_timeout)
        if spec is not None:
            print(f"sweep: {spec.describe()}", file=sys.stderr, flush=True)
        distributed.initialize(spec)  # before any other use of JAX
        cfg = build_config(args)
        cfg, plan = plan_sweep(cfg, parse_budget(args.memory_budget))
        if plan.binds:
            print(f"sweep: memory budget {plan.budget_bytes / 2**30:.3g} GiB ({plan.budget_source}): vote chunk "
                  f"{cfg.vote_chunk}, attack batch {cfg.attack_batch}", file=sys.stderr, flush=True)
        out = args.out or f"runs/sweep-{cfg.preset}-{config_hash(cfg.to_dict())}"
        print(f"sweep: preset {cfg.preset} -> {out}", file=sys.stderr, flush=True)
        run_sweep(cfg, out, progress=not args.no_progress, cache=args.cache,
                  write_report=not args.no_report, max_tasks=args.max_tasks, memory_plan=plan.to_dict())
    except RsjaxError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return _leave(2, spec)
    except distributed.PeerFailedError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return _leave(1, spec)
    except BaseException:
        if spec is None:
            raise
        traceback.print_exc()
        return _leave(1, spec)
    import jax

    if jax.process_index() == 0:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

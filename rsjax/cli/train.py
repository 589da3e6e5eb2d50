"""``rsjax train``: train a registered architecture with the standard, gaussian (RandTrain) or pgd
(AdvTrain) recipe, evaluate each epoch on the held-out split and write a checkpoint.

Example (the documented default recipe of the default Fashion-MNIST classifier)::

    rsjax train --dataset fashion-mnist:train --out fmnist_mlp.ckpt
"""
from __future__ import annotations

import argparse
import time

from rsjax.cli.common import emit_json, log


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (standard, gaussian = RandTrain, pgd = AdvTrain)",
        description="Train a registered architecture and write an rsjax checkpoint. Options left"
        " unset take the architecture's documented defaults (rsjax.train.resolve_config).",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rsjax train`` (kept separate so other commands or scripts can reuse them)."""
    from rsjax.train import AUGMENTATIONS, OPTIMIZERS, RECIPES

    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="fashion-mnist:train",
                      help="training data spec: fashion-mnist[:train|test], npz:PATH, imagefolder:DIR"
                      " (default: fashion-mnist:train)")
    data.add_argument("--eval-data", default=None,
                      help="held-out data spec evaluated each epoch (default: the test split of"
                      " --dataset when it has one, e.g. fashion-mnist:test)")
    data.add_argument("--data-dir", default=None, help="directory of the Fashion-MNIST IDX files")
    data.add_argument("--limit", type=int, default=None, help="train on the first K images only")
    data.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first K images only")

    model = p.add_argument_group("model")
    model.add_argument("--arch", default=None,
                       help="registered architecture (default: the dataset's default classifier,"
                       " rsjax.models.DEFAULT_ARCH)")
    model.add_argument("--init", default=None, metavar="CKPT",
                       help="start from this checkpoint's weights (fine-tuning) instead of random ones")

    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--recipe", default="standard", choices=RECIPES, help="training recipe")
    recipe.add_argument("--sigma", type=float, default=0.5, help="gaussian: noise std in [0,1] pixels (0.5)")
    recipe.add_argument("--eps", type=float, default=1.0, help="pgd: L2 radius in [0,1] pixels (1.0)")
    recipe.add_argument("--pgd-steps", type=int, default=7, help="pgd: attack steps per batch (7)")
    recipe.add_argument("--pgd-step-size", type=float, default=None,
                        help="pgd: step size (default 2.5 * eps / pgd-steps)")

    opt = p.add_argument_group("optimization (defaults: the architecture's)")
    opt.add_argument("--epochs", type=int, default=None)
    opt.add_argument("--batch-size", type=int, default=None)
    opt.add_argument("--optimizer", default=None, choices=OPTIMIZERS)
    opt.add_argument("--lr", type=float, default=None, help="peak learning rate (cosine decay to 0)")
    opt.add_argument("--weight-decay", type=float, default=None)
    opt.add_argument("--warmup-epochs", type=float, default=None)
    opt.add_argument("--augment", default=None, choices=AUGMENTATIONS)
    opt.add_argument("--seed", type=int, default=0)

    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="CKPT",
                     help="checkpoint to write (rewritten after every epoch; the best epoch also goes"
                     " to <stem>.best<suffix>)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def resolve_arch(arch: str | None, train_data) -> str:
    """``--arch``, else the default classifier of the training data's family."""
    from rsjax.errors import InputError
    from rsjax.models import DEFAULT_ARCH

    if arch is not None:
        return arch
    family = train_data.family
    if family is None or family not in DEFAULT_ARCH:
        raise InputError(f"cannot tell the default architecture for data {train_data.spec!r} of images "
                         f"{train_data.image_shape}; pass --arch")
    return DEFAULT_ARCH[family]


def run(args: argparse.Namespace) -> int:
    from rsjax.checkpoints import load_checkpoint
    from rsjax.data import default_split_pair, load_dataset
    from rsjax.errors import InputError
    from rsjax.models import get_model_spec
    from rsjax.train import TrainConfig, train

    started = time.perf_counter()
    image_size = None
    if args.arch is not None:
        image_size = get_model_spec(args.arch).input_shape[0]
    train_data = load_dataset(args.dataset, data_dir=args.data_dir, limit=args.limit, image_size=image_size)
    arch = resolve_arch(args.arch, train_data)
    image_size = get_model_spec(arch).input_shape[0]
    eval_spec = args.eval_data or default_split_pair(args.dataset)
    if eval_spec is None:
        raise InputError(f"no held-out split is known for {args.dataset!r}; pass --eval-data SPEC")
    eval_data = load_dataset(eval_spec, data_dir=args.data_dir, limit=args.eval_limit, image_size=image_size)
    init_variables = None
    if args.init is not None:
        init_variables, _ = load_checkpoint(args.init, arch=arch)
    config = TrainConfig(
        arch=arch, recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, learning_rate=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, augment=args.augment, sigma=args.sigma, eps=args.eps,
        pgd_steps=args.pgd_steps, pgd_step_size=args.pgd_step_size, seed=args.seed,
    )
    log(f"training {arch} on {train_data.spec} ({len(train_data)} images), recipe {args.recipe},"
        f" evaluating on {eval_data.spec} ({len(eval_data)} images)")
    result = train(config, train_data, eval_data, out=args.out, init_variables=init_variables,
                   progress=not args.no_progress, log=log)
    wall = time.perf_counter() - started
    summary = {
        "checkpoint": str(result.checkpoint),
        "best_checkpoint": str(result.best_checkpoint),
        "test_accuracy": result.metadata.get("test_accuracy"),
        "wall_seconds": wall,
        "metadata": result.metadata,
    }
    if args.json:
        emit_json(summary)
    else:
        log(f"wrote {result.checkpoint}: test accuracy {summary['test_accuracy']:.4f} "
            f"({wall:.0f} s in all)")
    return 0

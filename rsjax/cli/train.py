"""``rsjax train``: train a registered architecture with the standard, gaussian (RandTrain) or pgd
(AdvTrain) recipe, evaluate each epoch on the held-out split and write a checkpoint.

Example (the documented default recipe of the default Fashion-MNIST classifier)::

    rsjax train --dataset fashion-mnist:train --out fmnist_mlp.ckpt

The checkpoint is rewritten after every epoch, with the full training state in ``<out>.resume``:
rerunning an interrupted command continues after its last finished epoch (bit-identical result);
``--init CKPT`` fine-tunes from a checkpoint of the same architecture (e.g. a converted ResNet-20)::

    rsjax train --dataset imagefolder:../shared/data/cifar10/train_jpeg --init r20.ckpt \
        --eval-data npz:../shared/data/cifar10/test_jpeg.npz --eval-per-class 100 \
        --recipe gaussian --sigma 0.25 --augment flip-crop --optimizer sgd --lr 0.01 --out r20_s025.ckpt
"""
from __future__ import annotations

import argparse
import time

from rsjax.cli.common import check_writable, emit_json, log


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
    data.add_argument("--per-class", type=int, default=None, metavar="K",
                      help="then train on the first K images of each class only (for files sorted by"
                      " class, e.g. CIFAR-10's, where --limit alone keeps one class)")
    data.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first K images only")
    data.add_argument("--eval-per-class", type=int, default=None, metavar="K",
                      help="then evaluate on the first K images of each class only")

    model = p.add_argument_group("model")
    model.add_argument("--arch", default=None,
                       help="registered architecture (default: that of --init, else the dataset's"
                       " default classifier, rsjax.models.DEFAULT_ARCH)")
    model.add_argument("--init", default=None, metavar="CKPT",
                       help="start from this checkpoint's weights and batch statistics (fine-tuning)"
                       " instead of random ones; it must hold the architecture trained")

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
    opt.add_argument("--augment", default=None, choices=AUGMENTATIONS,
                     help="flip: random horizontal flip; flip-crop: also a random crop of the image"
                     " zero-padded by 4 pixels (the CIFAR augmentation); drawn per batch from the seed")
    opt.add_argument("--seed", type=int, default=0)

    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="CKPT",
                     help="checkpoint to write (rewritten after every epoch; the best epoch also goes"
                     " to <stem>.best<suffix>; the training state to CKPT.resume until the end, and"
                     " a rerun with the same options continues from there)")
    out.add_argument("--no-resume", action="store_true",
                     help="start over even if CKPT.resume holds an interrupted run")
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


def init_arch(init: str | None, arch: str | None) -> str | None:
    """The architecture of the ``--init`` checkpoint (None without one); InputError when ``--arch``
    names another, since fine-tuning keeps the architecture."""
    from rsjax.checkpoints import read_checkpoint_header
    from rsjax.errors import InputError

    if init is None:
        return arch
    found = read_checkpoint_header(init)["arch"]
    if arch is not None and arch != found:
        raise InputError(f"--init {init} holds architecture {found!r} but --arch is {arch!r}; fine-tuning"
                         f" needs the same architecture (drop --arch to use {found!r})")
    return found


def run(args: argparse.Namespace) -> int:
    from rsjax.checkpoints import load_checkpoint
    from rsjax.data import default_split_pair, load_dataset
    from rsjax.errors import InputError
    from rsjax.models import get_model_spec
    from rsjax.train import TrainConfig, train

    started = time.perf_counter()
    check_writable(args.out)  # before any data is read: the checkpoint, its .best and .resume go there
    arch = init_arch(args.init, args.arch)
    image_size = None if arch is None else get_model_spec(arch).input_shape[0]
    train_data = load_dataset(args.dataset, data_dir=args.data_dir, limit=args.limit, image_size=image_size,
                              per_class=args.per_class)
    arch = resolve_arch(arch, train_data)
    image_size = get_model_spec(arch).input_shape[0]
    eval_spec = args.eval_data or default_split_pair(args.dataset)
    if eval_spec is None:
        raise InputError(f"no held-out split is known for {args.dataset!r}; pass --eval-data SPEC")
    eval_data = load_dataset(eval_spec, data_dir=args.data_dir, limit=args.eval_limit, image_size=image_size,
                             per_class=args.eval_per_class)
    init_variables = None
    if args.init is not None:
        init_variables, _ = load_checkpoint(args.init, arch=arch)
    config = TrainConfig(
        arch=arch, recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, learning_rate=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, augment=args.augment, sigma=args.sigma, eps=args.eps,
        pgd_steps=args.pgd_steps, pgd_step_size=args.pgd_step_size, seed=args.seed,
    )
    start = f" from {args.init}" if args.init is not None else ""
    log(f"training {arch}{start} on {train_data.spec} ({len(train_data)} images), recipe {args.recipe},"
        f" evaluating on {eval_data.spec} ({len(eval_data)} images)")
    result = train(config, train_data, eval_data, out=args.out, init_variables=init_variables,
                   progress=not args.no_progress, log=log, resume=not args.no_resume, init_source=args.init)
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

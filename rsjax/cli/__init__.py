"""``rsjax`` command line. Each subcommand lives in its own module ``rsjax/cli/<name>.py``
exposing ``register(subparsers)``; ``--json`` output is one JSON object on stdout, human-readable
progress goes to stderr."""
from __future__ import annotations

import argparse
import importlib
import sys

from rsjax._version import __version__
from rsjax.errors import RsjaxError

SUBCOMMANDS = ["train", "evaluate", "certify", "attack", "convert"]
#: subcommands whose compiled programs are kept in the persistent XLA cache ($RSJAX_CACHE/xla;
#: RSJAX_NO_XLA_CACHE=1 disables it)
COMPILING = {"evaluate", "certify", "attack"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsjax", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rsjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"rsjax.cli.{name}")
        except ModuleNotFoundError as e:  # subcommand not built yet
            if e.name == f"rsjax.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in COMPILING:
        from rsjax.cache import enable_compilation_cache

        enable_compilation_cache()
    try:
        result = args.func(args)
    except RsjaxError as e:
        print(f"rsjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

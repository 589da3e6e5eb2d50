#!/usr/bin/env python
"""Re-draw summary.csv, the figures and report.md of a sweep directory from its records alone.

    python experiments/report.py runs/sweep-default-<hash>
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from rsjax.errors import RsjaxError
    from rsjax.report import write_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="sweep output directory")
    args = p.parse_args(argv)
    try:
        written = write_report(args.out)
    except RsjaxError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(written["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

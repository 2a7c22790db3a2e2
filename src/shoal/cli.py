"""The ``shoal`` command: ``demo`` (the main job), ``serve``, ``members``, ``stats``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shoal", description="A replicated in-memory cache for Python services."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a local cluster through a rolling deploy under read load")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print("shoal demo: the clustered demo is not built yet; shoal.Cache (local) is.")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""``shoal demo``: a local cluster through a rolling deploy, under read load."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=int, default=3)


def run(args: argparse.Namespace) -> int:
    print("shoal demo: not built yet")
    return 0

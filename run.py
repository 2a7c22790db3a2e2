#!/usr/bin/env python3
"""Set up a local virtual environment and run shoal's main job or its checks.

    python3 run.py demo [ARGS]   # shoal demo: a local cluster through a rolling deploy
    python3 run.py test [ARGS]   # the test suite (pytest ARGS)
    python3 run.py lint          # ruff and mypy --strict
    python3 run.py bench NAME    # bench/NAME.py (installs the bench extra)

Needs only Python >= 3.10: the first run creates .venv and installs the project
into it in editable mode, later runs reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def ensure(extras: str) -> None:
    stamp = VENV / f".installed-{extras}"
    marker = (ROOT / "pyproject.toml").stat().st_mtime
    if stamp.exists() and stamp.stat().st_mtime >= marker:
        return
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"installing shoal[{extras}] into .venv ...", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "-e", f".[{extras}]"], cwd=ROOT, check=True)
    stamp.touch()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "lint", "bench"}:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    if job == "demo":
        ensure("dev")
        return subprocess.call([BIN / "shoal", "demo", *rest], cwd=ROOT)
    if job == "test":
        ensure("dev")
        return subprocess.call([PY, "-m", "pytest", *rest], cwd=ROOT)
    if job == "lint":
        ensure("dev")
        code = subprocess.call([BIN / "ruff", "check", "src", "tests", "bench"], cwd=ROOT)
        return code or subprocess.call([BIN / "mypy", "--strict", "src/shoal"], cwd=ROOT)
    ensure("dev,bench")
    return subprocess.call([PY, f"bench/{rest[0]}.py", *rest[1:]], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

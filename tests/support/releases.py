"""The previous release, built from this repository's history, for the compatibility tests.

``RELEASES`` at the root lists releases and their commits; its last line is N-1. ``build``
extracts that commit's ``src`` and ``tests`` (``git archive``) into a directory of its own:
its members run there as ``python -m tests.support.member`` with that tree's ``src`` on the
path, so they are that release's shoal driven by that release's own harness. They share this
interpreter and its packages, which is honest only while the release depends on nothing this
tree does not: ``build`` checks that and fails otherwise (such a release needs its own venv).
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import ROOT

RELEASES = ROOT / "RELEASES"


@dataclass(frozen=True)
class Release:
    """A tree members can run: ``root`` holds its src and tests, ``options`` its Node options."""

    name: str
    root: Path
    options: dict[str, Any] = field(default_factory=dict)


def recorded() -> tuple[str, str]:
    """(version, commit) of the previous release: the last line of RELEASES."""
    lines = [line.split() for line in RELEASES.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines or len(lines[-1]) != 2:
        raise AssertionError(f"{RELEASES.name}: the last line must be VERSION COMMIT")
    version, commit = lines[-1]
    return version, commit


def _dependencies(pyproject: str) -> list[str]:
    found = re.search(r"^dependencies\s*=\s*\[(.*?)\]", pyproject, re.M | re.S)
    return sorted(re.findall(r'"([^"]+)"', found.group(1))) if found else []


def build(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` at ``dest``, from this repository's history."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src", "tests", "pyproject.toml"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        pytest.skip(f"cannot build release commit {commit} from this repository's history (a full clone?): {detail}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+: no links out, no absolute paths
            tar.extractall(dest, filter="data")
        else:  # our own history's archive of src and tests: trusted
            tar.extractall(dest)
    theirs = _dependencies((dest / "pyproject.toml").read_text())
    ours = _dependencies((ROOT / "pyproject.toml").read_text())
    if theirs != ours:
        raise AssertionError(
            f"release {commit} depends on {theirs}, this tree on {ours}: build it into a venv of its own"
        )
    return dest


def previous(tmp: Path) -> Release:
    """N-1 as RELEASES records it, built under ``tmp``."""
    version, commit = recorded()
    return Release(f"{version} ({commit})", build(commit, tmp / commit))


def self_at(protocol: int) -> Release:
    """This tree with its protocols above ``protocol`` switched off (Config.protocol_max)."""
    return Release(f"this tree at protocol {protocol}", ROOT, {"protocol_max": protocol})

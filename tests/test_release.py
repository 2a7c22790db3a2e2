"""A release: one version, an sdist and a wheel that twine accepts, and a wheel that runs on its own.

The wheel is installed into a fresh venv, outside the repository, with nothing but
the wheel and its declared dependencies: if a module, a data file or a dependency is
missing from the package, ``shoal demo`` there fails while it passes in the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import shoal
from tests.support.cluster import ROOT

pytestmark = pytest.mark.slow


def _run(argv: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{argv} exited {result.returncode}\n{output}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel ``python -m build`` makes of the working tree (the wheel built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=ROOT)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_the_version_is_written_once_and_names_the_sdist_and_the_wheel(dist: dict[str, Path]) -> None:
    project = (ROOT / "pyproject.toml").read_text().split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.MULTILINE), "[project] writes a version of its own"
    assert 'dynamic = ["version"]' in project
    assert dist["sdist"].name == f"shoal-{shoal.__version__}.tar.gz"
    assert dist["wheel"].name == f"shoal-{shoal.__version__}-py3-none-any.whl"


def test_twine_check_passes_on_the_sdist_and_the_wheel(dist: dict[str, Path]) -> None:
    result = _run([sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"]], cwd=ROOT)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_sdist_carries_the_readme_changelog_and_type_marker_and_no_tests_or_bytecode(
    dist: dict[str, Path],
) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"README.md", "CHANGELOG.md", "pyproject.toml", "src/shoal/py.typed", "src/shoal/cli.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        assert "shoal/py.typed" in wheel.namelist()


def test_a_fresh_venv_with_only_the_wheel_installed_runs_shoal_demo_and_prints_the_version(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    # The wheel and what it declares (msgpack) from the package index; nothing from this checkout.
    _run([python, "-m", "pip", "install", "-q", dist["wheel"]], cwd=tmp_path)
    where = _run([python, "-c", "import shoal; print(shoal.__file__)"], cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where

    version = _run([bin_dir / "shoal", "--version"], cwd=tmp_path)
    assert version.stdout.strip() == f"shoal {shoal.__version__}"

    demo = _run(
        [bin_dir / "shoal", "demo", "--members", "2", "--entries", "2000", "--dwell", "0.3", "--no-local"],
        cwd=tmp_path,
        timeout=180,
    )
    steps = re.findall(r"^\d+\s+127\.0\.0\.1:\d+\s+shoal\s+[\d.]+\s+([\d,]+)\s", demo.stdout, re.MULTILINE)
    # each restarted member warm-booted every entry (a boot that moved on to a second donor counts more)
    assert len(steps) == 2 and all(int(n.replace(",", "")) >= 2000 for n in steps), demo.stdout
    rate = re.search(r"shoal \(replicated\)\s+hit rate\s+([\d.]+)%", demo.stdout)
    assert rate is not None and float(rate.group(1)) > 99.0, demo.stdout

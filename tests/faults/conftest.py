"""Fixtures of the fault tests (real member processes) and the fault table at the end of the run."""

from __future__ import annotations

from typing import Any

from tests.faults import harness
from tests.support.cluster import cluster
from tests.support.netns import netns

__all__ = ["cluster", "netns"]  # fixtures, for the tests of this directory


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if harness.ROWS:
        target = harness.os.environ.get(harness.RESULTS_ENV)
        terminalreporter.section(f"fault table (also appended to {target})" if target else "fault table")
        for line in harness.table():
            terminalreporter.write_line(line)

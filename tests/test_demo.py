"""``shoal demo``: the main job runs end to end with small numbers and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.cluster import ROOT, _env


def _shoal_serve_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"shoal\x00serve" in cmdline and str(os.getpid()).encode() not in cmdline:
                pids.add(int(entry))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["graceful", "kill-9"])
def test_demo_runs_a_rolling_deploy_and_shoal_keeps_every_lookup_hitting(kill: bool) -> None:
    before = _shoal_serve_pids()
    argv = [sys.executable, "-m", "shoal", "demo", "--members", "2", "--entries", "2000", "--dwell", "0.3"]
    if kill:
        argv.append("--kill")
    result = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # one line per restarted member, for the replicated run and for the local-only one
    steps = re.findall(r"^\d+\s+127\.0\.0\.1:\d+\s+(shoal|local)\s+([\d.]+)\s+([\d,]+)\s", out, re.MULTILINE)
    assert [mode for mode, _, _ in steps] == ["shoal", "shoal", "local", "local"]
    assert all(entries.replace(",", "") == "2000" for mode, _, entries in steps if mode == "shoal")
    shoal_rate = float(re.search(r"shoal \(replicated\)\s+hit rate\s+([\d.]+)%", out).group(1))  # type: ignore[union-attr]
    local_rate = float(re.search(r"local-only cache\s+hit rate\s+([\d.]+)%", out).group(1))  # type: ignore[union-attr]
    assert shoal_rate > 99.0
    assert local_rate < shoal_rate
    assert _shoal_serve_pids() - before == set(), "the demo left member processes running"

"""The benchmarks' shared harness (bench/harness.py): its child processes and its tables."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from harness import Cleanup, Member, format_table, spread

CHILD = "from harness import serve; serve('hello', {'echo': lambda x: x, 'fail': lambda: 1 / 0})"


def test_a_child_answers_commands_and_reports_its_errors_by_name() -> None:
    with Cleanup() as run:
        child = run.add(Member("-c", CHILD))
        assert child.hello == "hello"
        assert child.call("echo", x=[1, "two"]) == [1, "two"]
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            child.call("fail")
        assert child.call("echo", x=3) == 3  # an error does not end the child
    assert child.proc.poll() == 0  # EOF on its stdin ends it


def test_a_child_that_exits_is_reported_with_its_exit_code_and_stderr() -> None:
    child = Member("-c", "import sys; sys.stderr.write('no config\\n'); sys.exit(3)", hello=False)
    with pytest.raises(RuntimeError, match=r"exited \(3\): no config"):
        child.greeted(10)
    child.stop()


def test_a_child_that_does_not_answer_raises_after_the_wait_instead_of_hanging() -> None:
    child = Member("-c", "import time; time.sleep(60)", hello=False)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        child.greeted(0.3)
    assert time.monotonic() - began < 5
    child.stop(timeout=1)
    assert child.proc.poll() is not None


def test_a_table_aligns_labels_left_and_figures_right_and_draws_rules() -> None:
    text = format_table(["system", "s"], [["shoal", "1.5"], None, ["redis", "12.25"]], title="t", notes=["n"])
    assert text.splitlines() == [
        "t",
        "=============",
        "system      s",
        "-------------",
        "shoal     1.5",
        "-------------",
        "redis   12.25",
        "=============",
        "n",
    ]
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["a"], [["x", "y"]])


def test_a_spread_is_the_median_with_min_and_max_of_what_was_measured() -> None:
    assert spread([3.0, None, 1.0, 2.0], ".1f") == "2.0 [1.0-3.0]"
    assert spread([None]) == "-"
    assert spread([5.0], ".0f") == "5"

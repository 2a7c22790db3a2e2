"""The ``shoal`` command: ``serve`` runs a member; ``members`` and ``stats`` ask one."""

from __future__ import annotations

import base64
import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from shoal import __version__
from shoal.versions import UNKNOWN_RELEASE
from shoal.wire import PROTOCOL_VERSION
from tests.support.cluster import ROOT, _env, wait_until

pytestmark = pytest.mark.slow
SECRET = "the cli tests' cluster secret"


class Serve:
    """``python -m shoal serve ...`` as a subprocess whose output lines can be awaited."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shoal", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**_env(), **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], put: Any) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def line(self, timeout: float = 15.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from shoal serve in {timeout}s; stderr: {self.stderr[-20:]}") from None

    def started(self) -> str:
        """Wait for ``listening on ADDR id=...`` and ``ready=True``; return ADDR."""
        first = self.line()
        assert first.startswith("listening on "), first
        address, ident = first.removeprefix("listening on ").split(" ")
        assert ident.startswith("id=") and len(ident) == len("id=") + 16
        assert self.line() == "ready=True"
        return address

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Serve] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Serve:
        s = Serve(*args, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def shoal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_env(), **(env or {})},
        timeout=30,
    )


@pytest.fixture
def member(serve: Any) -> tuple[Serve, str]:
    s = serve("--listen", "127.0.0.1:0", "--secret", SECRET, "--caches", "acc:60")
    return s, s.started()


def test_serve_prints_its_address_and_id_then_ready(member: tuple[Serve, str]) -> None:
    _, address = member
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


def test_members_prints_a_table_with_the_member_it_asked(member: tuple[Serve, str]) -> None:
    _, address = member
    out = shoal("members", address, "--secret", SECRET)
    assert out.returncode == 0, out.stderr
    header, rule, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["id", "address", "state"] and set(rule) <= {"-", " "}
    assert len(rows) == 1 and address in rows[0] and "self" in rows[0] and "acc" in rows[0]


def test_members_lists_a_second_member_that_joined(serve: Any, member: tuple[Serve, str]) -> None:
    _, first = member
    second = serve("--listen", "127.0.0.1:0", "--secret", SECRET, "--caches", "acc:60", "--seeds", first).started()
    out = shoal("members", second, "--secret", SECRET, "--json")
    assert out.returncode == 0, out.stderr
    rows = {m["address"]: m["state"] for m in json.loads(out.stdout)["members"]}
    assert rows == {second: "self", first: "up"}


def test_members_shows_each_members_release_and_protocol_and_serve_takes_protocol_max(
    serve: Any, member: tuple[Serve, str]
) -> None:
    _, first = member
    env = {"SHOAL_PROTOCOL_MAX": "3"}
    second = serve("--listen", "127.0.0.1:0", "--secret", SECRET, "--caches", "acc:60", "--seeds", first, env=env)
    old = second.started()

    def listed() -> dict[str, tuple[str, int, str]]:
        out = shoal("members", first, "--secret", SECRET, "--json")
        assert out.returncode == 0, out.stderr
        return {m["address"]: (m["state"], m["protocol"], m["version"]) for m in json.loads(out.stdout)["members"]}

    want = {first: ("self", PROTOCOL_VERSION, __version__), old: ("up", 3, UNKNOWN_RELEASE)}
    wait_until(lambda: listed() == want, 10, what=f"members {want}")
    header = shoal("members", first, "--secret", SECRET).stdout.splitlines()[0]
    assert header.split()[:5] == ["id", "address", "state", "version", "protocol"]


def test_stats_json_is_valid_json_with_each_cache(member: tuple[Serve, str]) -> None:
    _, address = member
    out = shoal("stats", address, "--secret", SECRET, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["address"] == address and data["ready"] is True
    acc = data["caches"]["acc"]
    assert acc["entries"] == 0 and "ops_sent" in acc and acc["warm_boot"]["state"] == "no peers"


def test_stats_prints_a_table_per_cache(member: tuple[Serve, str]) -> None:
    _, address = member
    out = shoal("stats", address, "--secret", SECRET)
    assert out.returncode == 0, out.stderr
    assert f"at {address}" in out.stdout and "ready=True" in out.stdout
    assert any(line.startswith("acc ") for line in out.stdout.splitlines())
    assert "warm boot acc: no peers" in out.stdout


def test_sigterm_stops_serve_with_exit_code_0(member: tuple[Serve, str]) -> None:
    s, _ = member
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=5) == 0


def test_the_secret_can_come_from_shoal_secret_file(serve: Any, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-mounted-file\n")  # a trailing newline is not part of the secret
    address = serve("--listen", "127.0.0.1:0", env={"SHOAL_SECRET_FILE": str(secret_file)}).started()
    by_file = shoal("members", address, env={"SHOAL_SECRET_FILE": str(secret_file)})
    assert by_file.returncode == 0, by_file.stderr
    assert address in by_file.stdout
    by_flag = shoal("members", address, "--secret", "from-a-mounted-file")
    assert by_flag.returncode == 0, by_flag.stderr


def test_a_wrong_secret_makes_members_exit_1_with_a_clear_message(member: tuple[Serve, str]) -> None:
    _, address = member
    out = shoal("members", address, "--secret", "a wrong secret, long enough")
    assert out.returncode == 1
    assert out.stdout == ""
    error = out.stderr.splitlines()[-1]  # after the warning about --secret
    assert error.startswith("shoal members: ") and "secret" in error and address in error
    assert "Traceback" not in out.stderr


def test_members_of_an_address_where_nothing_listens_exits_1(member: tuple[Serve, str]) -> None:
    s, address = member
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=5) == 0
    out = shoal("members", address, "--secret", SECRET)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith("shoal members: ") and "Traceback" not in out.stderr


def test_shoal_secret_prints_a_fresh_secret_of_32_random_bytes_each_time() -> None:
    first, second = shoal("secret"), shoal("secret")
    assert first.returncode == second.returncode == 0
    assert first.stdout != second.stdout
    secret = first.stdout.strip()
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32


@pytest.mark.parametrize("content", ["", "\n", "  \n", "short\n"], ids=["empty", "a newline", "blanks", "short"])
def test_serve_refuses_an_empty_or_short_secret_file_with_a_clear_message(tmp_path: Path, content: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(content)
    out = shoal("serve", "--listen", "127.0.0.1:0", env={"SHOAL_SECRET_FILE": str(secret_file)})
    assert out.returncode == 1
    assert "shoal secret" in out.stderr and "Traceback" not in out.stderr


def test_members_refuses_a_short_secret_before_connecting(member: tuple[Serve, str]) -> None:
    _, address = member
    out = shoal("members", address, "--secret", "s")
    assert out.returncode == 1 and "at least 16" in out.stderr


def test_a_secret_on_the_command_line_prints_a_warning_pointing_to_shoal_secret_file(serve: Any) -> None:
    """Row 13 of issue 20: --secret S is readable by anyone in the process list."""
    flagged = serve("--listen", "127.0.0.1:0", "--secret", SECRET)
    flagged.started()
    wait_until(lambda: any("SHOAL_SECRET_FILE" in line for line in flagged.stderr), what="the warning")
    warning = next(line for line in flagged.stderr if "SHOAL_SECRET_FILE" in line)
    assert "--secret" in warning and "process list" in warning and SECRET not in warning
    from_env = serve("--listen", "127.0.0.1:0", env={"SHOAL_SECRET": SECRET})
    from_env.started()
    from_env.proc.send_signal(signal.SIGTERM)
    assert from_env.proc.wait(10) == 0
    assert not any("SHOAL_SECRET_FILE" in line for line in from_env.stderr)

"""Real network partitions for the cluster tests: a network namespace per member, one bridge between them.

The ``netns`` fixture builds a small private network out of Linux network
namespaces: a hub namespace holding a bridge, and one namespace per member,
joined to the bridge by a veth pair whose inner end is ``eth0`` with address
10.77.0.N/24. Those addresses exist only inside the namespaces created here;
nothing is added to the host's own network namespace (each veth pair is created
directly inside the namespaces), so no real address is ever reached.

A member runs inside its namespace by prefixing its command line with
``host.prefix`` (``ip netns exec NAME``). ``partition(host)`` drops every packet
in and out of that member's namespace with iptables, which is what a pulled
cable looks like to TCP: no reset, no FIN, just silence; ``heal(host)`` removes
the rules. Names carry the test process id, so parallel runs do not clash, and
the namespaces (with their veths, bridge and rules) are deleted at teardown
whatever the test did.

Needs root and the ``ip`` and ``iptables`` commands; the fixture skips otherwise,
or when the kernel refuses to create namespaces (an unprivileged container).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SUBNET = "10.77.0"
PREFIX_LEN = 24


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y iproute2 iptables)"
    return None


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One member's namespace: its name and the only address it has."""

    name: str
    ip: str

    @property
    def prefix(self) -> list[str]:
        """Command-line prefix that runs a program inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def address(self, port: int = 7600) -> str:
        return f"{self.ip}:{port}"

    def run(self, *argv: str) -> str:
        return _run(*self.prefix, *argv)


class Netns:
    """A private bridged network of namespaces, torn down by ``close``."""

    def __init__(self) -> None:
        self.tag = f"shoal{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.hosts: list[Host] = []
        self._created: list[str] = []
        self._partitioned: set[str] = set()

    def open(self) -> None:
        self._add_namespace(self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        # Probe for veth support here, so a kernel without it skips instead of failing a test.
        _run("ip", "-n", self.hub, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        _run("ip", "-n", self.hub, "link", "del", "probe0")

    def add(self) -> Host:
        """A new member namespace on the bridge, with address 10.77.0.N."""
        n = len(self.hosts) + 1
        if n > 250:
            raise ValueError("the subnet holds 250 hosts")
        host = Host(f"{self.tag}-m{n}", f"{SUBNET}.{n}")
        self._add_namespace(host.name)
        # Both ends are created inside our namespaces: the host's network never sees them.
        hub_end = f"v{os.getpid()}m{n}"[-15:]
        _run("ip", "-n", host.name, "link", "add", "eth0", "type", "veth", "peer", "name", hub_end, "netns", self.hub)
        _run("ip", "-n", self.hub, "link", "set", hub_end, "master", "br0")
        _run("ip", "-n", self.hub, "link", "set", hub_end, "up")
        _run("ip", "-n", host.name, "addr", "add", f"{host.ip}/{PREFIX_LEN}", "dev", "eth0")
        _run("ip", "-n", host.name, "link", "set", "eth0", "up")
        _run("ip", "-n", host.name, "link", "set", "lo", "up")
        self.hosts.append(host)
        return host

    def partition(self, host: Host) -> None:
        """Silently drop everything in and out of ``host``'s namespace."""
        if host.name in self._partitioned:
            return
        host.run("iptables", "-w", "-A", "INPUT", "-j", "DROP")
        host.run("iptables", "-w", "-A", "OUTPUT", "-j", "DROP")
        self._partitioned.add(host.name)

    def heal(self, host: Host) -> None:
        if host.name not in self._partitioned:
            return
        host.run("iptables", "-w", "-D", "INPUT", "-j", "DROP")
        host.run("iptables", "-w", "-D", "OUTPUT", "-j", "DROP")
        self._partitioned.discard(host.name)

    def close(self) -> None:
        """Delete every namespace created here; their veths, bridge and rules go with them."""
        for name in reversed(self._created):
            self._kill_inside(name)
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _run("ip", "netns", "del", name)
        self._created.clear()
        self.hosts.clear()
        self._partitioned.clear()

    def _add_namespace(self, name: str) -> None:
        # A namespace of this name can only be left over by an earlier run with our pid.
        with contextlib.suppress(subprocess.SubprocessError):
            _run("ip", "netns", "del", name)
        _run("ip", "netns", "add", name)
        self._created.append(name)

    @staticmethod
    def _kill_inside(name: str) -> None:
        """Processes a failed test left in one of our namespaces (the cluster fixture normally got them)."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            for pid in _run("ip", "netns", "pids", name).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A private network of namespaces (see the module docstring); skips when it cannot be built."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    net = Netns()
    try:
        try:
            net.open()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create network namespaces here: {(exc.stderr or '').strip()}")
        yield net
    finally:
        net.close()

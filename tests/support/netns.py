"""Real network partitions for the cluster tests: a network namespace per member, one bridge between them.

The ``netns`` fixture builds a small private network out of Linux network
namespaces: a hub namespace holding a bridge, and one namespace per member,
joined to the bridge by a veth pair whose inner end is ``eth0`` with address
10.77.0.N/24. Those addresses exist only inside the namespaces created here;
nothing is added to the host's own network namespace (each veth pair is created
directly inside the namespaces), so no real address is ever reached.

A member runs inside its namespace by prefixing its command line with
``host.prefix`` (``ip netns exec NAME``). ``partition(host)`` drops every packet on its link
in and out of that member's namespace with iptables, which is what a pulled
cable looks like to TCP: no reset, no FIN, just silence; ``heal(host)`` removes
the rules. Names carry the test process id, so parallel runs do not clash, and
the namespaces (with their veths, bridge and rules) are deleted at teardown
whatever the test did.

Names resolve per namespace, as a headless Service does in Kubernetes:
``publish(name, hosts)`` writes ``/etc/netns/NS/hosts`` for every member
namespace, listing each host's address under ``name`` (``ip netns exec`` mounts
that file over ``/etc/hosts``, and the C library reads it at every lookup, so a
process already running sees the next ``publish``). The files are rewritten in
place, never replaced: the mount follows the file, not the name. They are
removed at teardown with the namespaces.

Needs root and the ``ip`` and ``iptables`` commands; the fixture skips otherwise,
or when the kernel refuses to create namespaces (an unprivileged container).
Under ``CI=true`` it fails instead: a CI run that cannot build the network has
not tested what these tests are for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUBNET = "10.77.0"
PREFIX_LEN = 24
ETC_NETNS = Path("/etc/netns")


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
        self._records: dict[str, list[str]] = {}  # name -> addresses, as last published
        self._numbers = 0

    def open(self) -> None:
        self._add_namespace(self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        # Probe for veth support here, so a kernel without it skips instead of failing a test.
        _run("ip", "-n", self.hub, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        _run("ip", "-n", self.hub, "link", "del", "probe0")

    def add(self) -> Host:
        """A new member namespace on the bridge, with address 10.77.0.N (N never reused: a new pod, a new IP)."""
        self._numbers += 1
        n = self._numbers
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
        self._write_hosts_file(host)
        return host

    def remove(self, host: Host) -> None:
        """Delete ``host``'s namespace (a deleted pod): its address stops answering at all."""
        self._kill_inside(host.name)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _run("ip", "netns", "del", host.name)
        with contextlib.suppress(ValueError):
            self._created.remove(host.name)
        self.hosts.remove(host)
        self._partitioned.discard(host.name)
        shutil.rmtree(ETC_NETNS / host.name, ignore_errors=True)

    def publish(self, name: str, hosts: list[Host]) -> None:
        """Make ``name`` resolve to the addresses of ``hosts`` in every member namespace, now and later."""
        self._records[name] = [h.ip for h in hosts]
        for host in self.hosts:
            self._write_hosts_file(host)

    def _write_hosts_file(self, host: Host) -> None:
        directory = ETC_NETNS / host.name
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", f"{host.ip} {host.name}"]
        lines += [f"{ip} {name}" for name, ips in sorted(self._records.items()) for ip in ips]
        # Opened for writing, not replaced: the bind mount of a running process follows the inode.
        with open(directory / "hosts", "w") as hosts_file:
            hosts_file.write("\n".join(lines) + "\n")

    def partition(self, host: Host) -> None:
        """Silently drop everything in and out of ``host``'s namespace over the bridge (loopback inside it
        still works, as on a machine whose cable is pulled)."""
        if host.name in self._partitioned:
            return
        host.run("iptables", "-w", "-A", "INPUT", "-i", "eth0", "-j", "DROP")
        host.run("iptables", "-w", "-A", "OUTPUT", "-o", "eth0", "-j", "DROP")
        self._partitioned.add(host.name)

    def heal(self, host: Host) -> None:
        if host.name not in self._partitioned:
            return
        host.run("iptables", "-w", "-D", "INPUT", "-i", "eth0", "-j", "DROP")
        host.run("iptables", "-w", "-D", "OUTPUT", "-o", "eth0", "-j", "DROP")
        self._partitioned.discard(host.name)

    def close(self) -> None:
        """Delete every namespace created here; their veths, bridge and rules go with them."""
        for name in reversed(self._created):
            self._kill_inside(name)
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _run("ip", "netns", "del", name)
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
        self._created.clear()
        self.hosts.clear()
        self._partitioned.clear()
        self._records.clear()

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


def _cannot(reason: str) -> None:
    """Skip, or under CI=true fail: CI must not pass by not running these tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A private network of namespaces (see the module docstring); skips when it cannot be built
    (fails under CI=true)."""
    reason = unavailable()
    if reason is not None:
        _cannot(reason)
    net = Netns()
    try:
        try:
            net.open()
        except subprocess.CalledProcessError as exc:
            _cannot(f"cannot create network namespaces here: {(exc.stderr or '').strip()}")
        yield net
    finally:
        net.close()

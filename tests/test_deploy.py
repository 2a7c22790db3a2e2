"""What pods see: members listening on 0.0.0.0:7600, one network namespace (one IP) each,
found through a headless-service name, through a Deployment's rolling update.

The namespace tests (``slow``) build the network of tests/support/netns.py: each
pod has its own address on a private bridge, and ``shoal-headless`` resolves, in
every pod, to the pods a headless Service would list (the ready ones). The pods
are tests/support/pod.py processes configured by the same SHOAL_* variables as
``shoal serve``, or ``shoal serve`` itself with the Kubernetes example's settings.
The loopback tests at the top check the same rules in-process, without namespaces.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.node import Node
from tests.support.cluster import ROOT, _env, free_port, wait_until
from tests.support.netns import Host, Netns, netns
from tests.support.pod import PORT, Pod, Pods, pods

__all__ = ["netns", "pods"]  # fixtures

SECRET = "deploy-test-secret-0123456789"
SERVICE = "shoal-headless"
# Short timers so a change is noticed within a second or two; DNS is read every half second.
OPTIONS: dict[str, Any] = {
    "anti_entropy_interval": 0.5,
    "failure_timeout": 1.0,
    "heartbeat_interval": 0.2,
    "handshake_timeout": 2.0,
    "boot_wait": 1.0,
    "dns_interval": 0.5,
}
POD_ENV = {
    "SHOAL_LISTEN": f"0.0.0.0:{PORT}",
    "SHOAL_DISCOVERY": f"dns:{SERVICE}:{PORT}",
    "SHOAL_SECRET": SECRET,
    "SHOAL_CACHES": "c",
}


# -- in process, on loopback -------------------------------------------------------------


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def start(**kw: Any) -> Node:
        node = Node(secret=SECRET, heartbeat_interval=0.1, failure_timeout=1.0, boot_wait=0.3, **kw)
        node.cache("c")
        started.append(node.start())
        return node

    yield start
    for node in reversed(started):
        node.stop()


def up(node: Node) -> dict[str, str]:
    return {m["id"]: m["address"] for m in node.members() if m["state"] == "up"}


def test_members_listening_on_a_wildcard_advertise_the_address_their_peers_reach_them_at(
    nodes: Callable[..., Node],
) -> None:
    a = nodes(listen="0.0.0.0:0")
    port_a = a.address.rsplit(":", 1)[1]
    b = nodes(listen="0.0.0.0:0", seeds=[f"127.0.0.1:{port_a}"])
    port_b = b.address.rsplit(":", 1)[1]
    wait_until(lambda: up(a) and up(b), 10, what="a and b connected")
    assert up(a) == {f"{b.node_id:016x}": f"127.0.0.1:{port_b}"}
    assert up(b) == {f"{a.node_id:016x}": f"127.0.0.1:{port_a}"}
    assert (a.address, b.address) == (f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}")


def test_an_advertised_address_is_what_peers_get_whatever_the_member_listens_on(nodes: Callable[..., Node]) -> None:
    port = free_port()
    a = nodes(listen=f"0.0.0.0:{port}", advertise=f"localhost:{port}")
    b = nodes(listen="127.0.0.1:0", seeds=[f"127.0.0.1:{port}"])
    wait_until(lambda: up(b), 10, what="b connected to a")
    assert up(b) == {f"{a.node_id:016x}": f"localhost:{port}"}
    assert a.address == f"localhost:{port}"


def test_an_advertise_address_that_other_members_cannot_dial_is_refused() -> None:
    with pytest.raises(ValueError, match="advertise"):
        Node(listen="0.0.0.0:7600", advertise="0.0.0.0:7600", secret=SECRET)


def test_a_member_whose_dns_answer_lists_its_own_address_stops_dialing_it(nodes: Callable[..., Node]) -> None:
    port = free_port()
    peer = nodes(listen="127.0.0.1:0")
    listed = [f"127.0.0.1:{port}", peer.address]
    calls: list[int] = []

    async def resolver(name: str, dns_port: int) -> list[str]:
        calls.append(dns_port)
        return listed

    node = nodes(listen=f"0.0.0.0:{port}", discovery=f"dns:{SERVICE}:{port}", resolver=resolver, dns_interval=0.05)
    wait_until(lambda: up(node), 10, what="the member connected to its peer")
    # Whichever comes first, its own address is known as its own: learned from the peer's
    # connection, or from a dial that reached itself.
    membership = node._driver.core.membership
    wait_until(lambda: f"127.0.0.1:{port}" in membership._self_addresses, 10, what="its own address known")
    more = len(calls) + 10
    wait_until(lambda: len(calls) >= more, 10, what="ten more DNS answers listing it")
    assert f"127.0.0.1:{port}" not in membership._targets, "an address of its own is still to be dialed"
    assert set(up(node)) == {f"{peer.node_id:016x}"}


def test_a_lone_member_seeded_with_its_own_address_recognises_it_and_stops_dialing_it(
    nodes: Callable[..., Node],
) -> None:
    # No other member: nothing to learn an address from, only the dial that comes back.
    port = free_port()
    node = nodes(listen=f"0.0.0.0:{port}", seeds=[f"127.0.0.1:{port}"])
    membership = node._driver.core.membership
    wait_until(lambda: f"127.0.0.1:{port}" in membership._self_addresses, 10, what="its own address known")
    assert f"127.0.0.1:{port}" not in membership._targets
    assert up(node) == {}


@pytest.mark.parametrize("ci", ["true", None])
def test_without_namespaces_the_netns_fixture_fails_under_ci_and_skips_elsewhere(
    ci: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import netns as netns_module

    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match="network namespaces need root"):
        netns_module._cannot("network namespaces need root")


# -- pods in network namespaces ------------------------------------------------------------


def sees_exactly_its_live_peers(live: list[Pod]) -> bool:
    """Every pod has every other live pod up at its pod IP, no one else, and gives its own IP for itself."""
    for pod in live:
        if pod.peers() != {p.id: p.address for p in live if p is not pod} or pod.advertised() != pod.address:
            return False
    return True


def describe(live: list[Pod]) -> str:
    return "; ".join(f"{p.ip} ({p.advertised()}) sees {sorted(p.peers().values())}" for p in live)


def missing(pod: Pod, written: dict[str, int]) -> int:
    """Acknowledged keys (``prefix0`` .. by prefix) that ``pod`` does not hold with the value written."""
    lacking = 0
    for prefix, count in written.items():
        values = pod.cmd("values", prefix=prefix, start=0, count=count)
        lacking += sum(v != f"v{i}" for i, v in enumerate(values))
    return lacking


def everywhere(live: list[Pod], written: dict[str, int], timeout: float = 20.0) -> None:
    """Waits until every live pod holds every acknowledged key; fails with the counts otherwise."""
    try:
        wait_until(lambda: not any(missing(p, written) for p in live), timeout, interval=0.1, what="every write")
    except AssertionError:
        counts = {p.ip: missing(p, written) for p in live}
        raise AssertionError(f"acknowledged keys missing per pod after {timeout}s: {counts}") from None


def write(pod: Pod, written: dict[str, int], prefix: str, count: int) -> None:
    pod.cmd("set_range", prefix=prefix, start=0, count=count, value="v")
    written[prefix] = count


def start_pods(netns: Netns, pods: Pods, n: int = 3) -> list[Pod]:
    hosts = [netns.add() for _ in range(n)]
    netns.publish(SERVICE, hosts)
    started = [pods.start(host, POD_ENV, OPTIONS) for host in hosts]
    for pod in started:
        assert pod.cmd("ready", timeout=30) is True
    try:
        wait_until(lambda: sees_exactly_its_live_peers(started), 30, interval=0.2, what="one cluster of three pods")
    except AssertionError:
        raise AssertionError(describe(started)) from None
    return started


@pytest.mark.slow
def test_three_pods_on_0000_with_dns_discovery_form_one_cluster_and_every_write_reaches_every_pod(
    netns: Netns, pods: Pods
) -> None:
    live = start_pods(netns, pods)
    written: dict[str, int] = {}
    for i, pod in enumerate(live):
        write(pod, written, f"pod{i}-", 100)
    everywhere(live, written)
    assert sees_exactly_its_live_peers(live), describe(live)
    for pod in live:
        assert pod.logged("leads to this member itself") <= 1, f"{pod.ip} dialed itself more than once"


@pytest.mark.slow
def test_a_rolling_update_to_pods_with_new_ips_keeps_every_pod_seeing_exactly_its_live_peers_and_every_write(
    netns: Netns, pods: Pods
) -> None:
    live = start_pods(netns, pods)
    written: dict[str, int] = {}
    for i, pod in enumerate(live):
        write(pod, written, f"before{i}-", 100)
    everywhere(live, written)
    for step in range(3):
        old = live[0]
        # maxSurge 1, maxUnavailable 0: a new pod (a new IP) first; the Service lists it once ready.
        host = netns.add()
        new = pods.start(host, POD_ENV, OPTIONS)
        assert new.cmd("ready", timeout=30) is True
        # Ready means ready to serve the cluster: at that moment it is connected to every
        # live pod and holds every acknowledged write (no waiting for repair).
        assert new.peers() == {p.id: p.address for p in live}, f"step {step}: at ready, {describe([new])}"
        assert missing(new, written) == 0, f"step {step}: at ready, acknowledged keys missing on the new pod"
        live.append(new)
        netns.publish(SERVICE, [p.host for p in live])
        wait_until(lambda: sees_exactly_its_live_peers(live), 20, interval=0.2, what=f"step {step}: the new pod in")
        write(new, written, f"new{step}-", 50)
        write(live[1], written, f"old{step}-", 50)
        everywhere(live, written)
        # Then an old pod ends: out of the Service first, then SIGTERM, then it is deleted.
        live.remove(old)
        netns.publish(SERVICE, [p.host for p in live])
        assert old.terminate() == 0, "a pod stops cleanly on SIGTERM"
        assert old.logged("leads to this member itself") <= 1, f"{old.ip} dialed itself more than once"
        netns.remove(old.host)
        try:
            wait_until(lambda: sees_exactly_its_live_peers(live), 20, interval=0.2, what=f"step {step}: old pod out")
        except AssertionError:
            raise AssertionError(f"step {step}: {describe(live)}") from None
        write(live[-1], written, f"after{step}-", 50)
        everywhere(live, written)
    assert {p.ip for p in live} == {f"10.77.0.{n}" for n in (4, 5, 6)}


def shoal(host: Host, env: dict[str, str], *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``shoal ARGV`` run inside a pod's namespace, as a kubelet exec probe runs it."""
    full = {**_env(), **env}
    return subprocess.run(
        [*host.prefix, sys.executable, "-m", "shoal", *argv], env=full, cwd=ROOT, capture_output=True, text=True, **kw
    )


@pytest.mark.slow
def test_shoal_serve_configured_like_the_kubernetes_example_forms_a_cluster_passes_its_probe_and_stops_on_sigterm(
    netns: Netns, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"  # the mounted Secret
    secret_file.write_text(SECRET + "\n")
    hosts = [netns.add() for _ in range(3)]
    netns.publish(SERVICE, hosts)
    probe_env = {"SHOAL_SECRET_FILE": str(secret_file)}
    procs: list[subprocess.Popen[str]] = []
    try:
        for n, host in enumerate(hosts):
            env = {
                **_env(),
                "POD_IP": host.ip,
                "SHOAL_LISTEN": f"0.0.0.0:{PORT}",
                "SHOAL_ADVERTISE": f"{host.ip}:{PORT}",  # "$(POD_IP):7600" in the manifest
                "SHOAL_DISCOVERY": f"dns:{SERVICE}:{PORT}",
                "SHOAL_SECRET_FILE": str(secret_file),
                "SHOAL_CACHES": "sessions:300",
                "SHOAL_LOG_LEVEL": "INFO",
            }
            with (tmp_path / f"pod{n}.log").open("w") as log:
                procs.append(
                    subprocess.Popen(
                        [*host.prefix, sys.executable, "-m", "shoal", "serve"],
                        env=env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
        for host in hosts:
            wait_until(
                lambda h=host: shoal(h, probe_env, "ready", f"127.0.0.1:{PORT}", timeout=30).returncode == 0,
                30,
                interval=0.5,
                what=f"the readiness probe of {host.ip}",
            )

        def peers_of(host: Host) -> set[str]:
            done = shoal(host, probe_env, "members", f"127.0.0.1:{PORT}", "--json", timeout=30)
            assert done.returncode == 0, done.stderr
            return {m["address"] for m in json.loads(done.stdout)["members"] if m["state"] == "up"}

        for host in hosts:
            others = {h.address(PORT) for h in hosts if h is not host}
            wait_until(lambda h=host, o=others: peers_of(h) == o, 20, interval=0.5, what=f"{host.ip}'s peers")
        # A pod is ended with SIGTERM: it leaves the cluster at once and exits 0.
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(15) == 0
        for host in hosts[1:]:
            others = {h.address(PORT) for h in hosts[1:] if h is not host}
            wait_until(lambda h=host, o=others: peers_of(h) == o, 5, interval=0.2, what=f"{host.ip} sees it gone")
        logs = [(tmp_path / f"pod{n}.log").read_text() for n in range(3)]
        assert not any("Traceback" in log for log in logs), logs
        assert not any("0.0.0.0" in line and "member" in line for log in logs for line in log.splitlines())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

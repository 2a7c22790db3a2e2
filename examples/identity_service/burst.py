"""Three copies of the identity service, a burst of concurrent requests, and the upstream calls it cost.

    python examples/identity_service/burst.py [--requests 300] [--keys 10] [--delay 0.2] [--single-flight local]

Starts the slow upstream (upstream.py) and three copies of app.py, each a shoal member
seeded with the first, then:

  phase 1, cold: fires the requests at once, spread over the three copies (every key
  reaches every copy). With cluster single flight (the default) the three copies
  together call upstream once per key however many requests wait for it; with
  ``--single-flight local``, once per key per copy: 3 calls per key in all.

  phase 2, warm: asks copy 1 for new keys first, waits until its answers have
  replicated to the other copies, then fires the same burst: 1 call per key in all.

Every process it starts is stopped when it ends, fails or is interrupted.
Exit status 0 when both phases cost what they should.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SECRET = "identity-example-secret"
MEMBERS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """The child processes, their logs, and their stopping (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *argv: str) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, *argv], cwd=HERE, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()  # uvicorn shuts down gracefully: the shoal node says goodbye
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def until(what: str, probe: Any, procs: Processes, timeout: float = 30.0) -> float:
    """Await ``probe()`` until it is true; seconds it took."""
    started = time.monotonic()
    while True:
        procs.check()
        with contextlib.suppress(httpx.TransportError):
            if await probe():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def burst(apps: list[str], keys: list[str], requests: int) -> tuple[float, Counter[str]]:
    """``requests`` GETs all in flight at once; request i goes to copy i % 3 for key i % len(keys)."""
    # Fresh clients, one per copy, each with a connection per request: httpx's pool slows
    # down badly with hundreds of connections (idle ones above all), and the client, not
    # the service, would be what is measured.
    per_copy = -(-requests // len(apps))
    limits = httpx.Limits(max_connections=per_copy, max_keepalive_connections=per_copy)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=app, timeout=30, limits=limits)) for app in apps
        ]

        async def one(i: int) -> tuple[str, str]:
            key = keys[i % len(keys)]
            response = await clients[i % len(clients)].get(f"/account/{key}")
            response.raise_for_status()
            return key, response.json()["account"]

        started = time.monotonic()
        answers = await asyncio.gather(*(one(i) for i in range(requests)))
        elapsed = time.monotonic() - started
    accounts: dict[str, set[str]] = {}
    for key, account in answers:
        accounts.setdefault(key, set()).add(account)
    assert all(len(found) == 1 for found in accounts.values()), f"members disagree: {accounts}"
    return elapsed, Counter(key for key, _ in answers)


async def measured_burst(
    client: httpx.AsyncClient, apps: list[str], upstream: str, keys: list[str], requests: int
) -> tuple[float, Counter[str], dict[str, int], list[int]]:
    """A burst, with the upstream's call counts after it and each copy's upstream calls during it."""

    async def loads() -> list[int]:
        return [(await client.get(f"{app}/stats")).json()["caches"]["accounts"]["loads"] for app in apps]

    before = await loads()
    elapsed, asked = await burst(apps, keys, requests)
    calls = (await client.get(f"{upstream}/counts")).json()
    during = [after - earlier for after, earlier in zip(await loads(), before, strict=True)]
    return elapsed, asked, calls, during


def report(keys: list[str], asked: Counter[str], calls: dict[str, int], limit: int, what: str) -> bool:
    print(f"  {'key':<12}{'requests':>10}{'upstream calls':>16}")
    for key in keys:
        print(f"  {key:<12}{asked[key]:>10}{calls.get(key, 0):>16}")
    total = sum(calls.get(key, 0) for key in keys)
    ok = all(calls.get(key, 0) <= limit for key in keys)
    print(f"  {'total':<12}{sum(asked.values()):>10}{total:>16}   {what}: {'OK' if ok else 'UNEXPECTED'}")
    return ok


async def run(args: argparse.Namespace, procs: Processes) -> bool:
    # SIGTERM cancels the run as Ctrl-C does (asyncio.run's own SIGINT handling), so main() stops the children.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    upstream = f"http://127.0.0.1:{free_port()}"
    procs.start("upstream", "upstream.py", "--port", upstream.rsplit(":", 1)[1], "--delay", str(args.delay))
    shoal_addresses = [f"127.0.0.1:{free_port()}" for _ in range(MEMBERS)]
    apps = [f"http://127.0.0.1:{free_port()}" for _ in range(MEMBERS)]
    for i, (app, address) in enumerate(zip(apps, shoal_addresses, strict=True)):
        seeds = [] if i == 0 else [shoal_addresses[0]]
        procs.start(
            f"member{i + 1}",
            "app.py",
            *("--port", app.rsplit(":", 1)[1], "--shoal", address, "--seeds", ",".join(seeds)),
            *("--upstream", upstream, "--secret", SECRET, "--single-flight", args.single_flight),
        )
    print(f"upstream {upstream} ({args.delay:.1f} s per lookup, counts its calls per key)")
    print(f"single flight: {args.single_flight}")
    for i, (app, address) in enumerate(zip(apps, shoal_addresses, strict=True)):
        print(f"member {i + 1}  {app}  shoal {address}" + ("" if i == 0 else f"  seeded with {shoal_addresses[0]}"))

    async with httpx.AsyncClient(timeout=30) as client:

        async def meshed() -> bool:
            for app in apps:
                stats = (await client.get(f"{app}/stats")).json()
                up = [m for m in stats["members"] if m["state"] == "up" and "accounts" in m["caches"]]
                if not stats["ready"] or len(up) != MEMBERS - 1:
                    return False
            return (await client.get(f"{upstream}/counts")).status_code == 200

        seconds = await until("the members to be ready and meshed", meshed, procs)
        print(f"all {MEMBERS} members ready and meshed after {seconds:.2f} s\n")

        # Phase 1: a cold burst.
        cold = [f"user-{i:02d}" for i in range(args.keys)]
        elapsed, asked, calls, loads = await measured_burst(client, apps, upstream, cold, args.requests)
        print(
            f"phase 1, cold: {args.requests} concurrent requests for {args.keys} keys over {MEMBERS} members "
            f"took {elapsed:.2f} s (one upstream lookup takes {args.delay:.2f} s)"
        )
        if args.single_flight == "cluster":
            ok1 = report(cold, asked, calls, 1, "1 per key for the whole cluster")
        else:
            ok1 = report(cold, asked, calls, MEMBERS, "at most 1 per key per member")
        print(f"  upstream calls made by member 1, 2, 3: {', '.join(map(str, loads))}\n")

        # Phase 2: member 1 answers first; once replicated, the burst costs nothing more.
        warm = [f"user-{i:02d}" for i in range(args.keys, 2 * args.keys)]
        await asyncio.gather(*(client.get(f"{apps[0]}/account/{key}") for key in warm))

        async def replicated() -> bool:
            for app in apps[1:]:
                for key in warm:
                    if not (await client.get(f"{app}/cached/{key}")).json()["cached"]:
                        return False
            return True

        seconds = await until("member 1's answers to replicate", replicated, procs, timeout=10)
        elapsed, asked, calls, loads = await measured_burst(client, apps, upstream, warm, args.requests)
        print(
            f"phase 2, warm: {args.keys} new keys asked of member 1 first, "
            f"on members 2 and 3 within {seconds * 1000:.0f} ms;\n"
            f"  then {args.requests} concurrent requests for them over {MEMBERS} members took {elapsed:.2f} s"
        )
        ok2 = report(warm, asked, calls, 1, "1 per key overall (member 1's first lookup)")
        print(f"  upstream calls made by member 1, 2, 3 during the burst: {', '.join(map(str, loads))}")
    return ok1 and ok2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per burst (default 300)")
    parser.add_argument("--keys", type=int, default=10, help="distinct keys per burst (default 10)")
    parser.add_argument("--delay", type=float, default=0.2, help="upstream seconds per lookup (default 0.2)")
    parser.add_argument(
        "--single-flight",
        default="cluster",
        choices=["cluster", "local"],
        help="one upstream call per key for the cluster (default) or per member",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-burst-") as logs:
        procs = Processes(Path(logs))
        try:
            return 0 if asyncio.run(run(args, procs)) else 1
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"\nfailed: {exc!r}", file=sys.stderr)
            for name, _ in procs.procs:
                print(f"--- {name} log (tail):\n{procs.tail(name)}", file=sys.stderr)
            return 1
        finally:
            procs.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

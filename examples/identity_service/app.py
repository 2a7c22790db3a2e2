"""An identity service: FastAPI in front of a slow upstream lookup, cached in a shoal cluster.

Each copy of the app is a shoal member. A burst of requests for one identity makes
one upstream call for the whole cluster: ``afetch`` is single-flight across members
(the first member to miss takes the identity's load lease from its owner member, the
others wait for the answer to replicate). ``--single-flight local`` makes it one call
per member instead, the way it was before cluster single flight.

    python app.py --port 8001 --shoal 127.0.0.1:7601 --upstream http://127.0.0.1:8100
    python app.py --port 8002 --shoal 127.0.0.1:7602 --seeds 127.0.0.1:7601 --upstream http://127.0.0.1:8100

Endpoints: GET /account/{identity} (the service), GET /cached/{identity} (is it in this
member's cache? never calls upstream), GET /ready (readiness probe), GET /stats.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Response

import shoal


def create_app(
    shoal_listen: str, seeds: list[str], secret: str, upstream: str, ttl: float = 3600, single_flight: str = "cluster"
) -> FastAPI:
    node = shoal.Node(listen=shoal_listen, seeds=seeds, secret=secret)
    accounts = node.cache("accounts", ttl=ttl, max_entries=1_000_000, single_flight=single_flight)
    http = httpx.AsyncClient(base_url=upstream, timeout=10)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with node, http:  # the node runs on the app's own event loop
            await node.ready(timeout=30)  # warm boot from the largest peer first
            yield

    app = FastAPI(lifespan=lifespan)

    async def lookup(identity: str) -> str:
        response = await http.get(f"/map/{identity}")
        response.raise_for_status()
        account: str = response.json()["account"]
        return account

    @app.get("/account/{identity}")
    async def account(identity: str) -> dict[str, str]:
        # However many requests for this identity arrive at once, on however many members:
        # one upstream call in all.
        return {"identity": identity, "account": await accounts.afetch(identity, lookup)}

    @app.get("/cached/{identity}")
    async def cached(identity: str) -> dict[str, bool]:
        return {"cached": identity in accounts}

    @app.get("/ready")
    async def ready(response: Response) -> dict[str, bool]:
        is_ready = node.wait_ready(0)  # a threading.Event: answers at once, on any loop
        response.status_code = 200 if is_ready else 503
        return {"ready": is_ready}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        figures = node.stats()
        figures["members"] = node.members()
        return figures

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="identity service: FastAPI + shoal in front of a slow upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="HTTP port")
    parser.add_argument("--shoal", default="127.0.0.1:7601", help="this member's shoal address host:port")
    parser.add_argument("--seeds", default="", help="comma-separated shoal addresses of other members")
    parser.add_argument("--upstream", default="http://127.0.0.1:8100")
    parser.add_argument("--secret", default=os.environ.get("SHOAL_SECRET", "identity-example-secret"))
    parser.add_argument("--single-flight", default="cluster", choices=["cluster", "local"])
    # The plain asyncio loop: shoal 0.1's Node does not run on uvloop yet (its connections
    # assert an asyncio.Transport, which uvloop's transports are not), and uvicorn picks
    # uvloop whenever it is installed.
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop", "auto"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    seeds = [s for s in args.seeds.split(",") if s]
    app = create_app(args.shoal, seeds, args.secret, args.upstream, single_flight=args.single_flight)
    uvicorn.run(app, host=args.host, port=args.port, loop=args.loop, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()

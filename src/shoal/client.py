"""Ask a running member a question, as an operator: members, stats, probes.

The client proves the cluster secret like a member does, but advertises no
listen address, so the member treats it as an observer: it never joins the
membership and receives no cache traffic, only answers to its queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl as _ssl
import time
from typing import Any

from .errors import HandshakeError, ProtocolError, ShoalError
from .handshake import Handshake, check_secret
from .messages import Answer, Query, Refused
from .transport import parse_address
from .wire import HANDSHAKE_MAX_FRAME, FrameDecoder, FrameSealer, encode


class Client:
    """One authenticated connection to one member; use ``async with``."""

    def __init__(
        self,
        address: str,
        secret: str | bytes | None = None,
        *,
        ssl: _ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        self._secret = b"" if secret is None else check_secret(secret)
        self._ssl = ssl
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._inbox: list[Any] = []
        self._sealer: FrameSealer | None = None

    async def __aenter__(self) -> Client:
        host, port = parse_address(self.address)
        self._reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self._ssl, server_hostname=host if self._ssl else None),
            self.timeout,
        )
        self._writer = writer
        hs = Handshake.initiator(self._secret, int.from_bytes(os.urandom(8), "big"), "", wall=time.time)
        try:
            for msg in hs.start():
                writer.write(encode(msg))
            while not hs.done:
                for reply in hs.receive(await self._next(one=True)):
                    writer.write(encode(reply))
            self._sealer = FrameSealer(hs.send_key)
            self._decoder.authenticate(hs.receive_key)
        except BaseException as exc:
            if isinstance(exc, HandshakeError):  # tell the member why, for its log
                writer.write(encode(Refused(str(exc)[:200])))
            writer.close()  # __aexit__ does not run when __aenter__ fails
            if isinstance(exc, HandshakeError):
                hint = f"cannot authenticate with {self.address}: {exc}; is the secret the cluster's?"
                raise HandshakeError(hint) from exc
            raise
        self._decoder.max_frame_size = 64 * 1024 * 1024
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()

    async def _next(self, one: bool = False) -> Any:
        """The next message; ``one`` during the handshake (what follows it needs the frame key)."""
        assert self._reader is not None
        limit = 1 if one else None
        self._inbox += self._decoder.feed(b"", limit)
        while not self._inbox:
            data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            if not data:
                raise ShoalError(f"{self.address} closed the connection")
            self._inbox += self._decoder.feed(data, limit)
        return self._inbox.pop(0)

    async def query(self, what: str, *args: Any) -> dict[Any, Any]:
        assert self._writer is not None
        assert self._sealer is not None
        self._writer.write(self._sealer.seal(encode(Query(what, list(args)))))
        answer = await self._next()
        if not isinstance(answer, Answer):
            raise ProtocolError(f"expected an Answer, got {type(answer).__name__}")
        if not answer.ok:
            raise ShoalError(str(answer.data.get("error", "query refused")))
        return answer.data


async def aquery(address: str, secret: str | bytes | None, what: str, *args: Any, **kw: Any) -> dict[Any, Any]:
    async with Client(address, secret, **kw) as client:
        return await client.query(what, *args)


def query(address: str, secret: str | bytes | None, what: str, *args: Any, **kw: Any) -> dict[Any, Any]:
    """One question, synchronously (for the CLI and scripts)."""
    return asyncio.run(aquery(address, secret, what, *args, **kw))

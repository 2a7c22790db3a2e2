"""Answers to an operator's queries (``shoal members``, ``shoal stats``, ``shoal ready``).

An operator connects like a member (same handshake, same secret) but advertises
no address: it is an observer, never a member, and may only send ``Query``.
Programs that embed a node may answer more questions (``Node.answer``), as the
demo does for its reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .messages import Answer, Query

Handler = Callable[..., dict[str, Any]]


class Queries:
    def __init__(self, members: Callable[[], list[dict[str, Any]]], stats: Callable[[], dict[str, Any]]) -> None:
        self.handlers: dict[str, Handler] = {
            "members": lambda: {"members": members()},
            "stats": stats,
        }

    def answer(self, query: Query) -> Answer:
        handler = self.handlers.get(query.what)
        if handler is None:
            return Answer(False, {"error": f"unknown query {query.what!r}"})
        try:
            return Answer(True, handler(*query.args))
        except (TypeError, ValueError, KeyError) as exc:
            return Answer(False, {"error": f"{query.what}: {exc}"})

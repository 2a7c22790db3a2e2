"""Load leases: one loader call per key for the whole cluster, however many members miss it.

Theory of operation. Every key of a cache has an *owner*: the member, among the
live members hosting the cache (this one included), that scores highest for the
key under rendezvous hashing. Members that agree on who is up agree on owners,
with no coordination; when one leaves, only its keys move.

A member whose ``fetch`` misses (once per key: local callers are already folded
into one by ``singleflight.Flights``) asks the owner for the key's *lease*:

- No lease out, and the owner holds no value: the requester gets a ``LeaseGrant``
  and runs its own loader. Its ``set`` replicates the value to everyone.
- A lease out to another member: ``LeaseWait``. The requester waits for the
  value, which arrives by replication (``arrived``), or for the owner's
  ``LeaseDone`` when the holder reports back.
- The owner already holds the value: ``LeaseDone`` at once (it is on its way).

The holder reports to the owner with ``LeaseDone`` (with the error's type name
and text if the loader raised); the owner forwards it to every waiter, so a
loader error reaches every caller in the cluster and nothing is stored; the next
fetch asks again. A lease lapses after ``ttl`` (the loader timeout), and a holder
that goes down, or gives it back (``LeaseReturn``: its callers were cancelled),
loses it at once: the owner hands it to one of the waiters. A member whose
owner does not answer in time (down but not yet noticed, partitioned, lost
messages) asks again, then asks the next member in the key's rendezvous
ranking, as every member that finds the owner silent does: they still agree on
one arbiter, and since each member ranks itself too, the fallback ends with an
answer, never a stuck caller. (A member cut off from all others is its own
arbiter: it loads for itself.)

What a peer sends is answered once per message and kind: the keys of one
message get at most one ``LeaseGrant``, one ``LeaseDone`` and one ``LeaseWait``
per holder (the group's shortest ttl), cut to fit the lease frame. A member
arbitrates only keys it ranks first or second (the fallback above); for any
other key, or past a bound (leases per peer, their key bytes, the table's size
and bytes), it answers "load it yourself" and records nothing. Answers about a
key count only from the member asked for it, and a wait is never longer than
the local ``ttl``: an owner that says "wait" again once that wait is over is
passed over like a silent one, and an error counts only for a load we were
told to wait for.

This module does no I/O and keeps no clock: the driver feeds it misses, peer
messages, finished loads, member-down news, arrived keys and time, and carries
out what it returns: ``Send`` (actions.py), ``Load`` (run the local loader,
then call ``loaded`` or ``failed``), ``Deliver`` (the value is in the local
cache: hand it to the local callers) and ``Fail`` (raise this to them). Every
transition is in this file. Each member plays both roles, owner of some keys
and requester of others; a request to itself takes the same path as a peer's,
without the network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .actions import Deliver, Fail, Load, Send
from .errors import ProtocolError
from .messages import LeaseDone, LeaseGrant, LeaseRequest, LeaseReturn, LeaseWait, Message
from .store import Key
from .validation import check_peer_key
from .wire import LEASE_MAX_FRAME

# Its actions (Load, Deliver, Fail) are in actions.py.
__all__ = ["Leases", "is_lease_message", "longest_wait", "owner_of"]

# Every timeout of a cluster fetch is here.
LEASE_TTL = 10.0  # seconds a holder may load before its lease passes to a waiter (Config.load_timeout)
ASK_TIMEOUT = 1.0  # no answer from the owner in this long: ask again ...
MAX_ASKS = 2  # ... and after this many unanswered asks, ask the next owner in the key's ranking
EXPECT_WAIT = 1.0  # told "loaded" but the value has not arrived: re-ask after this long
RECENT = EXPECT_WAIT  # an owner answers "loaded" this long after a load, before the value reaches it
GRACE = 0.5  # a waiter re-asks this long after the lease it waits on should have lapsed
FETCH_ASKS = 3  # a value delivered, then deleted before the caller read it: a fetch asks again, this often in all
STUCK = 5.0  # a caller's wait beyond the lease protocol's own worst case: the member's loop is stuck


def longest_wait(load_timeout: float) -> float:
    """How long a fetch waits for the cluster's answer before it loads anyway: a holder's whole
    lease, every ask unanswered, and STUCK more (a member whose loop hangs must not hang its callers)."""
    return load_timeout + ASK_TIMEOUT * (MAX_ASKS + 1) + STUCK


MAX_KEYS_PER_MESSAGE = 1000
MAX_LEASES = 100_000  # leases one owner tracks; past it, requesters just load (as with no owner)
MAX_LEASE_BYTES = 32 * 1024 * 1024  # bytes of keys (plus ENTRY_COST each) in the lease table; the same for `recent`
MAX_LEASES_PER_PEER = 10_000  # leases one peer may hold here at once; past it, it loads without a record
MAX_LEASE_BYTES_PER_PEER = 4 * 1024 * 1024  # ... and bytes of their keys
ENTRY_COST = 200  # bytes a table entry costs beyond its key (dict slot, tuple, record)
ARBITER_RANKS = 2  # a member arbitrates keys it ranks first (owner) or second (the fallback for a silent owner)
MAX_ERROR_TYPE = 200
MAX_ERROR_TEXT = 2000
MAX_TTL_MS = 3_600_000

_LEASE_MESSAGES = (LeaseRequest, LeaseGrant, LeaseWait, LeaseDone, LeaseReturn)
_LeaseMessage = LeaseRequest | LeaseGrant | LeaseWait | LeaseDone | LeaseReturn


def owner_of(key: Key, members: Iterable[int]) -> int:
    """The member that owns ``key``: highest rendezvous score of (key, member id)."""
    raw = _key_bytes(key)
    return max(members, key=lambda member: (_score(raw, member), member))


def _key_bytes(key: Key) -> bytes:
    # A type tag, so "1", b"1" and 1 (three different keys) score differently.
    if type(key) is str:
        return b"s" + key.encode("utf-8", "surrogatepass")
    if type(key) is bytes:
        return b"b" + key
    return b"i" + str(key).encode()


def _score(raw: bytes, member: int) -> int:
    digest = hashlib.blake2b(raw, digest_size=8, key=member.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big")


# A requester's states, per key.
ASKING = "asking"  # request sent, no answer yet
WAITING = "waiting"  # another member holds the lease
EXPECTING = "expecting"  # the load is over; the value is on its way by replication
LOADING = "loading"  # our loader runs


@dataclass(slots=True)
class _Lease:
    """Owner side: who loads the key, until when, and who waits for it."""

    holder: int
    expires: float
    waiters: dict[int, None] = field(default_factory=dict)  # ordered set: the first waiter takes over


@dataclass(slots=True)
class _Want:
    """Requester side: a key this member's callers wait for."""

    owner: int
    state: str
    deadline: float
    asks: int = 1
    holder: int | None = None  # who loads it, as the owner told us (WAITING)
    silent: tuple[int, ...] = ()  # owners that did not answer: the next one in rank is asked
    waited_out: bool = False  # we already waited one whole lease out for it


class Leases:
    """Both roles of the lease protocol for one member, over every cache it hosts."""

    def __init__(
        self,
        node_id: int,
        peers: Callable[[str], list[int]],
        holds: Callable[[str, Key], bool],
        *,
        ttl: float = LEASE_TTL,
        ask_timeout: float = ASK_TIMEOUT,
        max_asks: int = MAX_ASKS,
    ) -> None:
        """``peers(cache)``: live peers hosting cache; ``holds(cache, key)``: a live local value exists."""
        self.node_id = node_id
        self._peers = peers
        self._holds = holds
        self.ttl = ttl
        self.ask_timeout = ask_timeout
        self.max_asks = max_asks
        self.leases: dict[tuple[str, Key], _Lease] = {}
        self.wants: dict[tuple[str, Key], _Want] = {}
        self.recent: dict[tuple[str, Key], float] = {}
        """Keys loaded lately, until when: the holder's word can overtake its value (the
        value waits for a flush), and a request in between must not start a second load."""
        self.caches: set[str] = set()  # caches that take part (single_flight="cluster")
        self.lease_bytes = 0  # what ``leases`` holds, counted as _entry_size
        self.recent_bytes = 0  # what ``recent`` holds
        self._held: dict[int, tuple[int, int]] = {}  # holder -> (leases, bytes) it holds here
        self.granted = self.waited = self.handed_over = self.fallbacks = 0

    def owner(self, cache: str, key: Key, silent: tuple[int, ...] = ()) -> int:
        """The key's owner among the live members, passing over those in ``silent``."""
        return owner_of(key, [self.node_id, *(p for p in self._peers(cache) if p not in silent)])

    # -- events from the local caller -------------------------------------------------

    def miss(self, cache: str, key: Key, now: float) -> list[Any]:
        """A local fetch of ``key`` missed and nobody here is loading it yet."""
        if (cache, key) in self.wants:  # already in hand (a retry after a delivered value vanished)
            del self.wants[cache, key]
        return self._ask(cache, key, now, asks=1)

    def loaded(self, cache: str, key: Key, now: float) -> list[Any]:
        """Our loader returned and the value was set (and queued for replication)."""
        return self._finished(cache, key, None, None, now)

    def failed(self, cache: str, key: Key, error_type: str, error_text: str, now: float) -> list[Any]:
        """Our loader raised: every caller in the cluster waiting on the key gets the error."""
        return self._finished(cache, key, error_type[:MAX_ERROR_TYPE], error_text[:MAX_ERROR_TEXT], now)

    def abandoned(self, cache: str, key: Key, now: float) -> list[Any]:
        """Our callers went away (cancelled) before a load: forget the key, and pass on a lease we hold."""
        want = self.wants.pop((cache, key), None)
        if want is None:
            return []
        return self._give_back(want.owner, cache, key, now)

    def _give_back(self, owner: int, cache: str, key: Key, now: float) -> list[Any]:
        if owner != self.node_id:  # one message per peer message: received() groups these
            return [Send(owner, LeaseReturn(cache, [key]))]
        lease = self.leases.get((cache, key))
        if lease is not None and lease.holder == self.node_id:
            return self._lapse(cache, key, lease, now)
        return []

    def arrived(self, cache: str, keys: Iterable[Key], now: float) -> list[Any]:
        """These keys were written here by replication: callers waiting on them are served."""
        actions: list[Any] = []
        for key in keys:
            want = self.wants.get((cache, key))
            if want is not None and want.state != LOADING and self._holds(cache, key):
                del self.wants[cache, key]
                actions.append(Deliver(cache, key))
        return actions

    # -- events from the cluster -------------------------------------------------------

    def received(self, peer: int, msg: Message, now: float) -> list[Any]:
        if not isinstance(msg, _LEASE_MESSAGES):
            raise ProtocolError(f"unexpected {type(msg).__name__}")
        keys = _checked_keys(msg.keys)
        return _grouped(self._received(peer, msg, keys, now))

    def _received(self, peer: int, msg: _LeaseMessage, keys: list[Key], now: float) -> list[Any]:
        """The answers, one action per key: received() groups them into one message per kind."""
        cache = msg.cache
        actions: list[Any] = []
        if isinstance(msg, LeaseRequest):
            for key in keys:
                actions += self._reply(peer, cache, key, self._request(peer, cache, key, now))
        elif isinstance(msg, LeaseGrant):
            _checked_ttl(msg.ttl_ms)
            for key in keys:
                actions += self._granted(peer, cache, key, now)
        elif isinstance(msg, LeaseReturn):
            for key in keys:
                lease = self.leases.get((cache, key))
                if lease is not None and lease.holder == peer:
                    actions += self._lapse(cache, key, lease, now)
        elif isinstance(msg, LeaseWait):
            ttl = min(_checked_ttl(msg.ttl_ms), self.ttl)  # never wait longer than our own callers would
            for key in keys:
                want = self.wants.get((cache, key))
                if want is None or want.owner != peer or want.state not in (ASKING, WAITING):
                    continue
                if want.waited_out:
                    # A second whole lease is not waited for: an owner that keeps saying "wait"
                    # (an hour's wait told again and again held a fetch 18 s) is passed over like
                    # a silent one. Honest, it costs one more load after a loader overran its ttl.
                    self.fallbacks += 1
                    actions += self._ask(cache, key, now, asks=1, silent=(*want.silent, peer))
                    continue
                want.state, want.deadline, want.holder = WAITING, now + ttl + GRACE, msg.holder
        else:
            error = _checked_error(msg.error_type, msg.error_text)
            for key in keys:
                lease = self.leases.get((cache, key))
                if lease is not None and lease.holder == peer:
                    actions += self._reported(cache, key, lease, error, now)
                else:
                    actions += self._outcome(peer, cache, key, error, now)
        return actions

    def member_down(self, peer: int, now: float) -> list[Any]:
        """A member left or failed: its leases pass on, and keys it owned are asked of their new owner."""
        actions: list[Any] = []
        for (cache, key), lease in list(self.leases.items()):
            lease.waiters.pop(peer, None)
            if lease.holder == peer:
                actions += self._lapse(cache, key, lease, now)
        for (cache, key), want in list(self.wants.items()):
            if want.owner != peer:
                continue
            if want.state == LOADING:
                actions += self._reclaim(cache, key, want, now)
                continue
            if self._adopts(cache, key, want, peer):
                # We own the key now and know who loads it: keep the lease there, and wait.
                assert want.holder is not None
                self._record(cache, key, want.holder, now + self.ttl).waiters[self.node_id] = None
            actions += self._ask(cache, key, now, asks=want.asks, silent=want.silent)
        return actions

    def _adopts(self, cache: str, key: Key, want: _Want, gone: int) -> bool:
        return (
            want.state == WAITING
            and want.holder not in (None, gone)
            and (cache, key) not in self.leases
            and want.holder in self._peers(cache)
            and self.owner(cache, key) == self.node_id
        )

    def _reclaim(self, cache: str, key: Key, want: _Want, now: float) -> list[Any]:
        """Our owner went down while we load: tell the new owner we hold the key's lease."""
        want.owner = self.owner(cache, key)
        if want.owner != self.node_id:
            return [Send(want.owner, LeaseRequest(cache, [key]))]  # granted to us: we keep loading
        if (cache, key) not in self.leases:
            self._record(cache, key, self.node_id, now + self.ttl)
        return []

    def tick(self, now: float) -> list[Any]:
        actions: list[Any] = []
        for (cache, key), lease in list(self.leases.items()):
            if lease.expires <= now:
                actions += self._lapse(cache, key, lease, now)
        for loaded, until in list(self.recent.items()):
            if until <= now:
                del self.recent[loaded]
                self.recent_bytes -= _entry_size(loaded[1])
        for (cache, key), want in list(self.wants.items()):
            if want.state == LOADING or want.deadline > now:
                continue
            if self._holds(cache, key):
                del self.wants[cache, key]
                actions.append(Deliver(cache, key))
            elif want.state == WAITING:  # the lease should have lapsed by now: the owner passes it on
                actions += self._ask(cache, key, now, asks=want.asks, silent=want.silent)
                again = self.wants.get((cache, key))
                if again is not None:  # (our own answer may have settled it)
                    again.waited_out = True
            elif want.asks < self.max_asks:
                actions += self._ask(cache, key, now, asks=want.asks + 1, silent=want.silent)
            elif want.owner != self.node_id:
                # No answer from the owner (down but not yet noticed, cut off), or a value it
                # says is stored never came: ask the next owner in rank, as every member
                # that finds it silent does, so they still agree on one arbiter. We are in
                # the ranking ourselves, so this ends with an answer.
                self.fallbacks += 1
                actions += self._ask(cache, key, now, asks=1, silent=(*want.silent, want.owner))
            else:
                want.state = LOADING  # our own word that it was loaded, and nothing came: load it
                actions.append(Load(cache, key))
        return actions

    # -- requester ---------------------------------------------------------------------

    def _ask(self, cache: str, key: Key, now: float, asks: int, silent: tuple[int, ...] = ()) -> list[Any]:
        owner = self.owner(cache, key, silent)
        self.wants[cache, key] = _Want(owner, ASKING, now + self.ask_timeout, asks, silent=silent)
        if owner == self.node_id:
            return self._answer_self(cache, key, self._request(owner, cache, key, now), now)
        return [Send(owner, LeaseRequest(cache, [key]))]

    def _answer_self(self, cache: str, key: Key, reply: tuple[str, float, int], now: float) -> list[Any]:
        kind, ttl, holder = reply
        if kind == "grant":
            return self._granted(self.node_id, cache, key, now)
        want = self.wants[cache, key]
        if kind == "wait":
            want.state, want.deadline, want.holder = WAITING, now + ttl + GRACE, holder
            return []
        return self._outcome(self.node_id, cache, key, None, now)

    def _granted(self, owner: int, cache: str, key: Key, now: float) -> list[Any]:
        want = self.wants.get((cache, key))
        if want is None or want.owner != owner:
            # We no longer need it (the value came meanwhile, our callers went away, or we
            # asked someone else): give the lease back so the owner passes it on now.
            return self._give_back(owner, cache, key, now)
        if want.state == LOADING:
            return []
        want.state = LOADING
        return [Load(cache, key)]

    def _outcome(self, peer: int, cache: str, key: Key, error: tuple[str, str] | None, now: float) -> list[Any]:
        """The load we waited on is over (told by its owner, ``peer``)."""
        want = self.wants.get((cache, key))
        if want is None or want.owner != peer or want.state == LOADING:
            return []
        if error is not None:
            if want.state != WAITING:
                # An error ends a load we were told to wait for; an owner never answers a request
                # with one (a forged one made fetch raise with no loader run). Not taken: if the
                # owner says nothing else, we ask the next in rank.
                return []
            del self.wants[cache, key]
            return [Fail(cache, key, *error)]
        if self._holds(cache, key):
            del self.wants[cache, key]
            return [Deliver(cache, key)]
        want.state, want.deadline = EXPECTING, now + EXPECT_WAIT
        return []

    def _finished(self, cache: str, key: Key, error_type: str | None, error_text: str | None, now: float) -> list[Any]:
        want = self.wants.pop((cache, key), None)
        owner = want.owner if want is not None else self.owner(cache, key)
        if owner != self.node_id:
            return [Send(owner, LeaseDone(cache, [key], error_type, error_text))]
        lease = self.leases.get((cache, key))
        if lease is None or lease.holder != self.node_id:
            return []
        error = None if error_type is None else (error_type, error_text or "")
        return self._reported(cache, key, lease, error, now)

    # -- owner ---------------------------------------------------------------------------

    def _request(self, requester: int, cache: str, key: Key, now: float) -> tuple[str, float, int]:
        """The owner's answer: ("grant" | "wait" | "done", seconds left on the lease, its holder)."""
        if cache not in self.caches:  # a cache we run no leases for: nothing to arbitrate
            return "grant", self.ttl, requester
        if requester != self.node_id and not self._arbiter(cache, key):
            # Not ours to arbitrate (by our view, another member owns the key and is not the
            # one ranked above us): the requester loads without a record here. An honest one
            # asked us from a different view; a forger gains nothing it could not do alone.
            return "grant", self.ttl, requester
        if self._holds(cache, key) or self.recent.get((cache, key), 0.0) > now:
            return "done", 0.0, 0  # already loaded: the value is on its way to the requester
        lease = self.leases.get((cache, key))
        if lease is None:
            mine = self.wants.get((cache, key))
            if mine is not None and mine.state == LOADING and requester != self.node_id:
                # We load it ourselves (we became its owner mid-load): that is the lease.
                lease = self._record(cache, key, self.node_id, now + self.ttl)
        if lease is None or lease.expires <= now:
            if lease is not None:
                self._drop(cache, key)
            if not self._has_room(requester, key):
                return "grant", self.ttl, requester  # over a bound: let it load, keep no record
            self._record(cache, key, requester, now + self.ttl)
            self.granted += 1
            return "grant", self.ttl, requester
        if lease.holder == requester:  # our grant was lost, or it asks again: it still holds it
            return "grant", lease.expires - now, requester
        lease.waiters[requester] = None
        self.waited += 1
        return "wait", lease.expires - now, lease.holder

    def _reply(self, peer: int, cache: str, key: Key, reply: tuple[str, float, int]) -> list[Any]:
        kind, ttl, holder = reply
        ttl_ms = max(0, min(MAX_TTL_MS, round(ttl * 1000)))
        if kind == "grant":
            return [Send(peer, LeaseGrant(cache, [key], ttl_ms))]
        if kind == "wait":
            return [Send(peer, LeaseWait(cache, [key], ttl_ms, holder))]
        return [Send(peer, LeaseDone(cache, [key], None, None))]

    def _release(self, cache: str, key: Key, lease: _Lease, error: tuple[str, str] | None, now: float) -> list[Any]:
        """The holder reported: the lease ends and every waiter hears how the load went."""
        self._drop(cache, key)
        actions: list[Any] = []
        for waiter in lease.waiters:
            if waiter == self.node_id:
                actions += self._outcome(self.node_id, cache, key, error, now)
            else:
                error_type, error_text = error if error is not None else (None, None)
                actions.append(Send(waiter, LeaseDone(cache, [key], error_type, error_text)))
        return actions

    def _reported(self, cache: str, key: Key, lease: _Lease, error: tuple[str, str] | None, now: float) -> list[Any]:
        """The holder says how its load went."""
        if error is None:
            if (cache, key) in self.recent:
                self.recent[cache, key] = now + RECENT
            elif len(self.recent) < MAX_LEASES and self.recent_bytes + _entry_size(key) <= MAX_LEASE_BYTES:
                self.recent[cache, key] = now + RECENT  # over the bound a late request may load again
                self.recent_bytes += _entry_size(key)
        return self._release(cache, key, lease, error, now)

    def _lapse(self, cache: str, key: Key, lease: _Lease, now: float) -> list[Any]:
        """The holder is gone or over time: pass the lease to the first waiter (or end it)."""
        if self._holds(cache, key) or not lease.waiters:
            return self._release(cache, key, lease, None, now)
        waiter = next(iter(lease.waiters))
        del lease.waiters[waiter]
        self._count(lease.holder, key, -1)
        lease.holder, lease.expires = waiter, now + self.ttl
        self._count(waiter, key, 1)
        self.handed_over += 1
        if waiter == self.node_id:
            return self._granted(self.node_id, cache, key, now)
        return [Send(waiter, LeaseGrant(cache, [key], round(self.ttl * 1000)))]

    # -- the lease table and its bounds ------------------------------------------------------

    def _arbiter(self, cache: str, key: Key) -> bool:
        """We rank first or second for the key: its owner, or the next in rank whom a member
        that finds the owner silent asks (a third in rank would need two silent owners)."""
        passed: tuple[int, ...] = ()
        for _ in range(ARBITER_RANKS):
            owner = self.owner(cache, key, passed)
            if owner == self.node_id:
                return True
            passed = (*passed, owner)
        return False

    def _has_room(self, holder: int, key: Key) -> bool:
        size = _entry_size(key)
        if len(self.leases) >= MAX_LEASES or self.lease_bytes + size > MAX_LEASE_BYTES:
            return False
        if holder == self.node_id:  # our own callers' leases: bounded by the table alone
            return True
        count, used = self._held.get(holder, (0, 0))
        return count < MAX_LEASES_PER_PEER and used + size <= MAX_LEASE_BYTES_PER_PEER

    def _record(self, cache: str, key: Key, holder: int, expires: float) -> _Lease:
        if (cache, key) in self.leases:
            self._drop(cache, key)
        lease = self.leases[cache, key] = _Lease(holder, expires)
        self._count(holder, key, 1)
        return lease

    def _drop(self, cache: str, key: Key) -> None:
        self._count(self.leases.pop((cache, key)).holder, key, -1)

    def _count(self, holder: int, key: Key, sign: int) -> None:
        size = sign * _entry_size(key)
        self.lease_bytes += size
        count, used = self._held.get(holder, (0, 0))
        if count + sign:
            self._held[holder] = (count + sign, used + size)
        else:
            self._held.pop(holder, None)

    def figures(self) -> dict[str, int]:
        return {
            "leases_held": len(self.leases),
            "leases_granted": self.granted,
            "lease_waits": self.waited,
            "leases_handed_over": self.handed_over,
            "owner_fallbacks": self.fallbacks,
        }


def _entry_size(key: Key) -> int:
    return len(_key_bytes(key)) + ENTRY_COST


_BATCH_BYTES = LEASE_MAX_FRAME - 16 * 1024  # room for the name, the error texts (8 KiB in UTF-8) and the header
_KEY_HEADER = 8  # msgpack's type and length bytes ahead of a key, at most (an int: 9 in all, under _key_bytes's count)


def _grouped(actions: list[Any]) -> list[Any]:
    """One lease message per (peer, kind, cache, outcome) instead of one per key, cut by
    bytes and count so that each fits the lease frame limit; a Grant or Wait group takes
    its shortest ttl. Other actions keep their place; a group takes its first key's."""
    heads: dict[tuple[Any, ...], list[Any]] = {}
    order: list[Any] = []
    for action in actions:
        if not (isinstance(action, Send) and isinstance(action.msg, _LEASE_MESSAGES)):
            order.append(action)
            continue
        msg = action.msg
        if isinstance(msg, LeaseWait):
            head: tuple[Any, ...] = (action.peer, LeaseWait, msg.cache, msg.holder)
        elif isinstance(msg, LeaseDone):
            head = (action.peer, LeaseDone, msg.cache, msg.error_type, msg.error_text)
        else:
            head = (action.peer, type(msg), msg.cache)
        group = heads.get(head)
        if group is None:
            group = heads[head] = [[], MAX_TTL_MS]
            order.append(head)
        group[0].extend(msg.keys)
        if isinstance(msg, (LeaseGrant, LeaseWait)):
            group[1] = min(group[1], msg.ttl_ms)
    out: list[Any] = []
    for item in order:
        if type(item) is not tuple:
            out.append(item)
            continue
        peer, kind, cache, *rest = item
        keys, ttl_ms = heads[item]
        for batch in _batches(keys):
            if kind is LeaseWait:
                out.append(Send(peer, LeaseWait(cache, batch, ttl_ms, rest[0])))
            elif kind is LeaseDone:
                out.append(Send(peer, LeaseDone(cache, batch, rest[0], rest[1])))
            elif kind is LeaseGrant:
                out.append(Send(peer, LeaseGrant(cache, batch, ttl_ms)))
            else:
                out.append(Send(peer, kind(cache, batch)))
    return out


def _batches(keys: list[Key]) -> list[list[Key]]:
    batches: list[list[Key]] = [[]]
    used = 0
    for key in keys:
        size = len(_key_bytes(key)) + _KEY_HEADER
        if batches[-1] and (used + size > _BATCH_BYTES or len(batches[-1]) >= MAX_KEYS_PER_MESSAGE):
            batches.append([])
            used = 0
        batches[-1].append(key)
        used += size
    return batches


def is_lease_message(msg: Message) -> bool:
    return isinstance(msg, _LEASE_MESSAGES)


# -- checks on what a peer sent (error texts never echo the data) ---------------------------


def _checked_keys(keys: list[Any]) -> list[Key]:
    if len(keys) > MAX_KEYS_PER_MESSAGE:
        raise ProtocolError(f"a lease message names at most {MAX_KEYS_PER_MESSAGE} keys")
    for key in keys:
        check_peer_key(key)  # validation.py: the rule every entry point shares
    return list(dict.fromkeys(keys))  # a key named twice is answered once


def _checked_ttl(ttl_ms: int) -> float:
    if not 0 <= ttl_ms <= MAX_TTL_MS:
        raise ProtocolError(f"a lease ttl is 0..{MAX_TTL_MS} ms")
    return ttl_ms / 1000


def _checked_error(error_type: str | None, error_text: str | None) -> tuple[str, str] | None:
    if error_type is None:
        if error_text is not None:
            raise ProtocolError("a lease outcome with an error text names the error type")
        return None
    if len(error_type) > MAX_ERROR_TYPE or (error_text is not None and len(error_text) > MAX_ERROR_TEXT):
        raise ProtocolError(f"an error type is at most {MAX_ERROR_TYPE} characters, its text {MAX_ERROR_TEXT}")
    return error_type, error_text or ""

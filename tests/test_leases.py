"""Load leases (leases.py): the state machine by hand, then members in the simulated network.

The first half drives ``Leases`` objects directly: messages are handed from one
to another by the test, so each step of the protocol can be looked at. The
second half runs whole members (membership, replication, leases) in the
deterministic simulator, with loaders that take virtual time, lost messages and
crashes, and counts loader calls.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim.network import Sim
from sim.nodes import SimMember

from shoal import leases as leases_module
from shoal.actions import Deliver, Fail, Load, Send
from shoal.errors import ProtocolError
from shoal.leases import MAX_LEASE_BYTES_PER_PEER, MAX_LEASES_PER_PEER, Leases, owner_of
from shoal.messages import (
    LeaseDone,
    LeaseGrant,
    LeaseRequest,
    LeaseReturn,
    LeaseWait,
    Message,
    from_array,
    to_array,
)
from shoal.store import Key
from shoal.wire import LEASE_MAX_FRAME, encode

# -- the state machine by hand ----------------------------------------------------------------

A, B, C = 1, 2, 3


class Members:
    """Three members' Leases with hand-carried messages; ``values`` is what each member's cache holds."""

    def __init__(self, ids: Iterable[int] = (A, B, C), ttl: float = 10.0) -> None:
        self.up = set(ids)
        self.values: dict[int, set[Key]] = {i: set() for i in self.up}
        self.leases = {i: self._leases(i, ttl) for i in self.up}
        self.inbox: list[tuple[int, int, Message]] = []  # (from, to, message)
        self.local: dict[int, list[Any]] = {i: [] for i in self.up}  # Load/Deliver/Fail each got

    def _leases(self, me: int, ttl: float) -> Leases:
        leases = Leases(me, lambda cache: sorted(self.up - {me}), lambda cache, key: key in self.values[me], ttl=ttl)
        leases.caches.add("c")
        return leases

    def do(self, me: int, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                # every message goes through the wire format, as it would on a socket
                self.inbox.append((me, action.peer, from_array(to_array(action.msg))))
            else:
                self.local[me].append(action)

    def deliver_all(self, now: float = 0.0) -> None:
        while self.inbox:
            src, dst, msg = self.inbox.pop(0)
            if dst in self.up:
                self.do(dst, self.leases[dst].received(src, msg, now))

    def key_owned_by(self, owner: int) -> str:
        return next(k for k in (f"k{i}" for i in range(1000)) if owner_of(k, self.up) == owner)


def loads(members: Members, me: int) -> list[Key]:
    return [a.key for a in members.local[me] if isinstance(a, Load)]


def test_every_member_computes_the_same_owner_and_a_departure_moves_only_that_members_keys() -> None:
    keys = [f"user:{i}" for i in range(300)] + [b"raw", 7, -1, 2**63]
    before = {key: owner_of(key, [A, B, C]) for key in keys}
    assert before == {key: owner_of(key, [C, A, B]) for key in keys}
    assert set(before.values()) == {A, B, C}  # spread over every member
    after = {key: owner_of(key, [A, C]) for key in keys}
    assert all(after[key] == before[key] for key in keys if before[key] != B)


def test_first_miss_gets_the_lease_and_later_misses_wait_then_get_the_value() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    assert loads(m, A) == [key]
    m.do(B, m.leases[B].miss("c", key, 0.1))
    m.do(C, m.leases[C].miss("c", key, 0.1))
    m.deliver_all()
    assert loads(m, B) == loads(m, C) == []
    m.values[A].add(key)  # A's loader returned: it set the value
    m.do(A, m.leases[A].loaded("c", key, 0.2))
    m.values[C].add(key)  # replication reached C before the owner's word went out
    m.deliver_all()
    assert m.local[C] == [Deliver("c", key)]
    assert m.local[B] == []  # told the load is over, B waits for the value itself
    m.values[B].add(key)
    m.do(B, m.leases[B].arrived("c", [key], 0.3))
    assert m.local[B] == [Deliver("c", key)]
    assert not any(leases.leases or leases.wants for leases in m.leases.values())


def test_a_miss_between_the_holders_word_and_its_value_reaching_the_owner_does_not_load_again() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    m.values[A].add(key)
    m.do(A, m.leases[A].loaded("c", key, 0.2))
    m.deliver_all(0.2)  # A's LeaseDone reaches C; A's value (waiting for a flush) has not
    m.do(B, m.leases[B].miss("c", key, 0.3))
    m.deliver_all(0.3)
    assert loads(m, B) == []  # told "loaded": B waits for the value
    m.values[B].add(key)
    m.do(B, m.leases[B].arrived("c", [key], 0.31))
    assert m.local[B] == [Deliver("c", key)]


def test_a_loader_error_reaches_every_waiter_with_its_type_and_text_and_the_next_miss_asks_again() -> None:
    m = Members()
    key = m.key_owned_by(B)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    m.do(B, m.leases[B].miss("c", key, 0.0))
    m.do(C, m.leases[C].miss("c", key, 0.0))
    m.deliver_all()
    m.do(A, m.leases[A].failed("c", key, "TimeoutError", "upstream took too long", 0.5))
    m.deliver_all()
    assert m.local[B] == m.local[C] == [Fail("c", key, "TimeoutError", "upstream took too long")]
    m.do(C, m.leases[C].miss("c", key, 1.0))
    m.deliver_all()
    assert loads(m, C) == [key]  # nothing was stored and the lease is free: C loads


def test_a_holder_that_goes_down_hands_its_lease_to_the_first_waiter() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    m.do(B, m.leases[B].miss("c", key, 0.1))
    m.deliver_all()
    m.up.discard(A)
    m.do(C, m.leases[C].member_down(A, 0.2))
    m.do(B, m.leases[B].member_down(A, 0.2))
    m.deliver_all()
    assert loads(m, B) == [key]
    assert m.leases[C].handed_over == 1


def test_a_holder_whose_callers_went_away_gives_the_lease_back_and_the_first_waiter_loads_at_once() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    m.do(B, m.leases[B].miss("c", key, 0.1))
    m.deliver_all()
    m.do(A, m.leases[A].abandoned("c", key, 0.2))
    assert [type(msg) for _, _, msg in m.inbox] == [LeaseReturn]
    m.deliver_all(0.2)
    assert loads(m, B) == [key]
    assert m.leases[C].leases[("c", key)].holder == B


def test_a_grant_that_arrives_after_the_value_goes_back_to_the_owner() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.values[A].add(key)  # the value replicated here before the owner answered
    m.do(A, m.leases[A].arrived("c", [key], 0.0))
    assert m.local[A] == [Deliver("c", key)]
    m.deliver_all()  # the grant comes, is not needed, and is returned
    assert loads(m, A) == [] and ("c", key) not in m.leases[C].leases


def test_a_lease_lapses_after_its_ttl_and_passes_to_a_waiter() -> None:
    m = Members(ttl=5.0)
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    m.do(B, m.leases[B].miss("c", key, 1.0))
    m.deliver_all()
    m.do(C, m.leases[C].tick(4.9))
    assert loads(m, B) == [] and not m.inbox
    m.do(C, m.leases[C].tick(5.0))
    m.deliver_all()
    assert loads(m, B) == [key]


def test_a_member_whose_owner_never_answers_asks_again_then_asks_the_next_owner_in_rank() -> None:
    m = Members()
    key = next(k for k in (f"k{i}" for i in range(1000)) if owner_of(k, [A, B, C]) == C and owner_of(k, [A, B]) == B)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.inbox.clear()  # the request is lost
    m.do(A, m.leases[A].tick(0.5))
    assert not m.inbox
    m.do(A, m.leases[A].tick(1.0))
    assert [(dst, type(msg)) for _, dst, msg in m.inbox] == [(C, LeaseRequest)]  # asked again
    m.inbox.clear()
    m.do(A, m.leases[A].tick(2.0))
    assert [(dst, type(msg)) for _, dst, msg in m.inbox] == [(B, LeaseRequest)]  # C is silent: B is next
    m.deliver_all(2.0)
    assert loads(m, A) == [key] and m.leases[A].fallbacks == 1


def test_members_that_find_the_owner_silent_agree_on_the_next_owner_and_load_once() -> None:
    m = Members()
    key = next(k for k in (f"k{i}" for i in range(1000)) if owner_of(k, [A, B, C]) == C and owner_of(k, [A, B]) == A)
    m.up.discard(C)  # C is gone (what is sent to it is lost), but nobody has noticed: still a peer
    m.leases[A]._peers = lambda cache: [B, C]  # type: ignore[method-assign]
    m.leases[B]._peers = lambda cache: [A, C]  # type: ignore[method-assign]
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.do(B, m.leases[B].miss("c", key, 0.0))
    for now in (1.0, 2.0):
        m.do(A, m.leases[A].tick(now))
        m.do(B, m.leases[B].tick(now))
        m.deliver_all(now)
    assert loads(m, A) == [key] and loads(m, B) == []  # A, next in rank, granted itself; B waits on A


def test_a_lost_grant_is_sent_again_when_the_holder_asks_again() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()  # C grants ...
    m.local[A].clear()
    m.leases[A].wants[("c", key)].state = "asking"  # ... as if the grant never arrived
    m.do(A, m.leases[A].tick(1.0))
    m.deliver_all()
    assert loads(m, A) == [key]
    assert m.leases[C].granted == 1


def test_the_owner_that_already_holds_the_value_answers_done_at_once() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.values[C].add(key)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    assert loads(m, A) == [] and m.leases[C].granted == 0
    m.values[A].add(key)
    m.do(A, m.leases[A].tick(1.0))
    assert m.local[A] == [Deliver("c", key)]


def test_keys_owned_by_a_member_that_goes_down_are_asked_of_their_new_owner() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.inbox.clear()  # C dies with the request unanswered
    m.up.discard(C)
    m.do(A, m.leases[A].member_down(C, 0.1))
    m.deliver_all()
    assert loads(m, A) == [key]  # the new owner (A or B) granted it
    assert owner_of(key, [A, B]) in (A, B)


def test_when_the_owner_goes_down_mid_load_a_holder_that_becomes_owner_keeps_the_lease() -> None:
    m = Members()
    key = next(k for k in (f"k{i}" for i in range(1000)) if owner_of(k, [A, B, C]) == C and owner_of(k, [A, B]) == A)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.do(B, m.leases[B].miss("c", key, 0.1))
    m.deliver_all()
    assert loads(m, A) == [key] and m.leases[B].wants[("c", key)].holder == A
    m.up.discard(C)
    m.do(B, m.leases[B].member_down(C, 0.2))  # B re-asks A, the new owner, before A hears of C
    m.deliver_all()
    m.do(A, m.leases[A].member_down(C, 0.2))
    m.deliver_all()
    assert loads(m, A) == [key] and loads(m, B) == []
    m.values[A].add(key)
    m.do(A, m.leases[A].loaded("c", key, 0.5))
    m.values[B].add(key)
    m.deliver_all()
    assert m.local[B] == [Deliver("c", key)]


def test_when_the_owner_goes_down_mid_load_a_waiter_that_becomes_owner_leaves_the_lease_with_the_holder() -> None:
    m = Members()
    key = next(k for k in (f"k{i}" for i in range(1000)) if owner_of(k, [A, B, C]) == C and owner_of(k, [A, B]) == B)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.do(B, m.leases[B].miss("c", key, 0.1))
    m.deliver_all()
    m.up.discard(C)
    m.do(B, m.leases[B].member_down(C, 0.2))
    m.do(A, m.leases[A].member_down(C, 0.2))  # A tells B, the new owner, that it holds the lease
    m.deliver_all()
    assert loads(m, A) == [key] and loads(m, B) == []
    m.do(A, m.leases[A].failed("c", key, "ValueError", "bad id", 0.5))
    m.deliver_all()
    assert m.local[B] == [Fail("c", key, "ValueError", "bad id")]


def test_a_peer_that_holds_no_lease_cannot_end_one() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.deliver_all()
    m.do(C, m.leases[C].received(B, LeaseDone("c", [key], "Forged", "x"), 0.1))
    assert ("c", key) in m.leases[C].leases and not m.inbox


def owned_keys(owner: int, count: int, size: int = 8, members: Iterable[int] = (A, B, C)) -> list[str]:
    """``count`` distinct keys of ``size`` characters that ``owner`` owns among ``members``."""
    keys: list[str] = []
    i = 0
    while len(keys) < count:
        key = f"{i:08d}".ljust(size, "x")
        if owner_of(key, list(members)) == owner:
            keys.append(key)
        i += 1
    return keys


def sends(actions: list[Any]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def test_a_request_naming_many_keys_is_answered_once_per_kind_in_no_more_bytes_than_it_took() -> None:
    m = Members()
    name = "n" * 255
    m.leases[C].caches.add(name)
    keys = owned_keys(C, 1000, size=200)
    done, waiting = keys[:300], keys[300:600]
    m.values[C].update(done)  # the owner holds these: "done"
    m.leases[C].received(B, LeaseRequest(name, waiting), 0.0)  # B holds these: "wait"
    request = LeaseRequest(name, keys)
    replies = sends(m.leases[C].received(A, request, 0.1))
    assert sorted(type(s.msg).__name__ for s in replies) == ["LeaseDone", "LeaseGrant", "LeaseWait"]
    assert all(s.peer == A for s in replies)
    assert sorted(key for s in replies for key in s.msg.keys) == sorted(keys)
    wait = next(s.msg for s in replies if isinstance(s.msg, LeaseWait))
    assert wait.holder == B and sorted(wait.keys) == sorted(waiting)
    sent = sum(len(encode(s.msg)) for s in replies)
    assert sent <= len(encode(request)) + 1024  # a name and a header per kind; was 1,000 frames, each with the name


def test_replies_to_a_request_at_the_lease_frame_limit_are_cut_to_fit_it() -> None:
    m = Members()
    keys = owned_keys(C, 999, size=258)
    length = LEASE_MAX_FRAME - 4 - len(encode(LeaseRequest("c", keys))) - 3  # one more key (str16) fills it
    keys.append(next(k for k in (f"last{i}".ljust(length, "y") for i in range(100)) if owner_of(k, [A, B, C]) == C))
    request = LeaseRequest("c", keys)
    assert LEASE_MAX_FRAME - 8 <= len(encode(request)) <= LEASE_MAX_FRAME
    m.leases[C].received(B, LeaseRequest("c", keys), 0.0)
    replies = sends(m.leases[C].received(A, request, 0.1))  # every key waits on B: a Wait is longer
    assert all(len(encode(s.msg)) <= LEASE_MAX_FRAME for s in replies)  # FrameTooLarge otherwise
    assert len(replies) == 2 and sorted(k for s in replies for k in s.msg.keys) == sorted(keys)


def test_a_grant_naming_many_keys_nobody_asked_for_is_given_back_in_one_message() -> None:
    m = Members()
    keys = owned_keys(C, 1000)
    replies = sends(m.leases[A].received(C, LeaseGrant("c", keys, 10_000), 0.0))
    assert [type(s.msg) for s in replies] == [LeaseReturn] and replies[0].msg.keys == keys


def test_a_key_named_twice_in_one_request_is_answered_once() -> None:
    m = Members()
    key = m.key_owned_by(C)
    replies = sends(m.leases[C].received(A, LeaseRequest("c", [key] * 1000), 0.0))
    assert [s.msg.keys for s in replies] == [[key]]


def test_a_request_for_a_key_another_member_owns_is_granted_without_a_record() -> None:
    m = Members()
    key = next(k for k in owned_keys(A, 100) if owner_of(k, [B, C]) == B)  # C ranks last
    replies = sends(m.leases[C].received(B, LeaseRequest("c", [key]), 0.0))
    assert [type(s.msg) for s in replies] == [LeaseGrant]  # the requester loads for itself ...
    assert m.leases[C].leases == {}  # ... and C keeps nothing for a key it does not arbitrate
    second = next(k for k in owned_keys(A, 100) if owner_of(k, [B, C]) == C)  # C is next in rank
    m.leases[C].received(B, LeaseRequest("c", [second]), 0.0)
    assert ("c", second) in m.leases[C].leases  # the fallback arbiter still records it


def test_lease_answers_from_a_member_that_is_not_the_keys_owner_are_ignored() -> None:
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    for forged in (LeaseDone("c", [key], "LoaderError", "forged"), LeaseWait("c", [key], 3_600_000, B)):
        assert m.leases[A].received(B, forged, 0.1) == []
    assert m.leases[A].wants[("c", key)].state == "asking"
    assert m.leases[A].received(B, LeaseGrant("c", [key], 10_000), 0.1) == [Send(B, LeaseReturn("c", [key]))]
    assert loads(m, A) == []


def next_in_rank_was_asked(m: Members, actions: list[Any], key: str) -> bool:
    """A passed the owner C over: it asked B, or (ranking first among A and B) loads itself."""
    if owner_of(key, [A, B]) == A:
        return loads(m, A) == [key]
    return [(s.peer, type(s.msg)) for s in sends(actions)] == [(B, LeaseRequest)]


def test_an_owner_that_says_wait_again_once_a_whole_lease_was_waited_out_is_passed_over() -> None:
    """Row 9: an owner (by our view) answering every ask with an hour's wait held fetch 18 s."""
    m = Members(ttl=5.0)
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.inbox.clear()
    assert m.leases[A].received(C, LeaseWait("c", [key], 3_600_000, B), 0.1) == []
    asked = sends(m.leases[A].tick(5.7))  # the wait is over: A asks C again
    assert [(s.peer, type(s.msg)) for s in asked] == [(C, LeaseRequest)]
    actions = m.leases[A].received(C, LeaseWait("c", [key], 3_600_000, A), 5.8)  # another holder, same story
    m.do(A, [a for a in actions if not isinstance(a, Send)])
    assert next_in_rank_was_asked(m, actions, key)
    assert m.leases[A].fallbacks == 1


def test_an_error_an_owner_answers_a_request_with_is_not_taken_and_the_next_in_rank_is_asked() -> None:
    """Row 9: a forged LeaseDone made fetch raise LoaderError without any loader having run."""
    m = Members()
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    forged = LeaseDone("c", [key], "LoaderError", "forged")
    actions: list[Any] = []
    for now in (0.1, 0.5, 1.0, 1.1, 1.5, 2.0, 2.1):
        assert m.leases[A].received(C, forged, now) == []  # no Fail: nobody was waiting on a load
        actions = m.leases[A].tick(now)
        m.do(A, [a for a in actions if not isinstance(a, Send)])
        if m.leases[A].fallbacks:
            break
    assert not any(isinstance(a, Fail) for a in m.local[A])
    assert next_in_rank_was_asked(m, actions, key)


def test_a_wait_the_owner_sends_is_never_longer_than_the_local_load_timeout() -> None:
    m = Members(ttl=5.0)
    key = m.key_owned_by(C)
    m.do(A, m.leases[A].miss("c", key, 0.0))
    m.inbox.clear()
    assert m.leases[A].received(C, LeaseWait("c", [key], 3_600_000, B), 0.1) == []
    assert m.leases[A].tick(5.0) == []
    asked = sends(m.leases[A].tick(5.7))  # 5 s ttl and the grace: A asks again, not after an hour
    assert [(s.peer, type(s.msg)) for s in asked] == [(C, LeaseRequest)]


def test_leases_one_peer_holds_are_bounded_in_count_and_over_it_the_peer_loads_without_a_record() -> None:
    owner = Members().leases[C]
    keys = owned_keys(C, MAX_LEASES_PER_PEER + 1000)
    granted = 0
    for start in range(0, len(keys), 1000):
        replies = sends(owner.received(B, LeaseRequest("c", keys[start : start + 1000]), 0.0))
        granted += sum(len(s.msg.keys) for s in replies if isinstance(s.msg, LeaseGrant))
    assert granted == len(keys)  # every key answered "load it"
    assert len(owner.leases) == MAX_LEASES_PER_PEER  # was one lease per key
    owner.received(A, LeaseRequest("c", keys[-10:]), 0.0)  # another peer is not held back by B's use
    assert len(owner.leases) == MAX_LEASES_PER_PEER + 10


def test_leases_one_peer_holds_are_bounded_in_bytes_of_keys() -> None:
    owner = Members().leases[C]
    keys = owned_keys(C, 1200, size=4096)
    for start in range(0, len(keys), 60):  # 60 keys of 4 KiB: a full lease frame
        owner.received(B, LeaseRequest("c", keys[start : start + 60]), 0.0)
    held = sum(len(key) for _, key in owner.leases)
    assert 0.9 * MAX_LEASE_BYTES_PER_PEER < held <= MAX_LEASE_BYTES_PER_PEER  # was all 4.9 MB


def test_the_lease_table_is_bounded_in_bytes_over_every_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "MAX_LEASE_BYTES", 1024 * 1024)
    owner = Members().leases[C]
    keys = owned_keys(C, 600, size=4096)
    for peer in range(100, 110):  # ten peers, each under its own bound
        owner.received(peer, LeaseRequest("c", keys[(peer - 100) * 60 : (peer - 99) * 60]), 0.0)
    assert sum(len(key) for _, key in owner.leases) < 1024 * 1024 and owner.lease_bytes <= 1024 * 1024
    for (cache, key), lease in list(owner.leases.items()):  # every release gives its bytes back
        owner.received(lease.holder, LeaseDone(cache, [key], None, None), 1.0)
    assert owner.lease_bytes == 0 and owner.leases == {}


@pytest.mark.parametrize(
    "msg, rule",
    [
        (LeaseRequest("c", [1.5]), "peer's key refused"),
        (LeaseRequest("c", [["nested"]]), "peer's key refused"),
        (LeaseRequest("c", ["k" * 5000]), "at most 4096 bytes"),
        (LeaseRequest("c", list(range(1001))), "at most 1000 keys"),
        (LeaseGrant("c", ["k"], -1), "lease ttl"),
        (LeaseWait("c", ["k"], 10**12, 1), "lease ttl"),
        (LeaseDone("c", ["k"], None, "text without a type"), "names the error type"),
        (LeaseDone("c", ["k"], "E" * 5000, ""), "at most 200 characters"),
        (LeaseDone("c", ["k"], "E", "x" * 100_000), "at most 200 characters"),
    ],
)
def test_malformed_lease_messages_are_refused_without_echoing_their_content(msg: Message, rule: str) -> None:
    leases = Members().leases[A]
    with pytest.raises(ProtocolError) as refused:
        leases.received(B, msg, 0.0)
    assert rule in str(refused.value)
    assert "nested" not in str(refused.value) and "xxxx" not in str(refused.value)
    assert len(str(refused.value)) < 120


def test_lease_messages_with_wrong_field_types_are_refused_on_arrival() -> None:
    with pytest.raises(ProtocolError, match=r"LeaseGrant\.ttl_ms must be int"):
        from_array([LeaseGrant.code, "c", ["k"], "soon"])
    with pytest.raises(ProtocolError, match=r"LeaseDone\.error_type must be str"):
        from_array([LeaseDone.code, "c", ["k"], 42, None])


# -- whole members in the simulated network ---------------------------------------------------

LOAD_TIME = 0.2


class LeaseNode(SimMember):
    """A simulated member (the real Dispatcher, leases included) whose cache "c" takes part in leases.

    ``fetch(key)`` is a caller on this member; its outcome lands in ``outcomes``.
    A ``Load`` runs a loader that takes ``LOAD_TIME`` virtual seconds, then sets
    the value (or raises, for keys in ``failing``). Every loader call is counted in
    the shared ``calls``, across members and restarts.
    """

    calls: Counter[Key]
    failing: set[Key]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.core.leases.caches.add("c")
        self.waiting: set[Key] = set()
        self.outcomes: list[tuple[Key, str, Any]] = []

    def fetch(self, key: Key, now: float) -> list[Any]:
        if key in self.cache:
            self.outcomes.append((key, "value", self.cache.get(key)))
            return []
        if key in self.waiting:  # a second local caller joins the local flight
            return []
        self.waiting.add(key)
        return self.drive(self.core.leases.miss("c", key, now))

    def drive(self, actions: list[Any]) -> list[Any]:
        """Carries out the lease actions as ClusterFlights and the Cache do on a Node."""
        out: list[Any] = []
        for action in super().drive(actions):
            if isinstance(action, Load):
                self._start_load(action.key)
            elif isinstance(action, Deliver):
                self.waiting.discard(action.key)
                self.outcomes.append((action.key, "value", self.cache.get(action.key)))
            elif isinstance(action, Fail):
                self.waiting.discard(action.key)
                self.outcomes.append((action.key, "error", action.error_type))
            else:
                out.append(action)
        return out

    def _start_load(self, key: Key) -> None:
        self.calls[key] += 1
        me, sim = self.node_id, self.sim

        def finish() -> None:
            if sim.nodes.get(me) is self:  # not crashed meanwhile
                sim.act(me, lambda node, now: node.finish_load(key, now))

        sim.call_later(LOAD_TIME, finish)

    def finish_load(self, key: Key, now: float) -> list[Any]:
        self.waiting.discard(key)
        if key in self.failing:
            self.outcomes.append((key, "error", "LookupError"))
            return self.drive(self.core.leases.failed("c", key, "LookupError", "no such user", now))
        self.cache.set(key, f"value of {key}")  # replicates (the flush follows FLUSH_DELAY later)
        self.outcomes.append((key, "value", f"value of {key}"))
        return self.drive(self.core.leases.loaded("c", key, now))


def lease_cluster(sim: Sim, size: int, calls: Counter[Key], failing: Iterable[Key] = ()) -> list[int]:
    build = LeaseNode.factory(sim, seeds=["sim:1"], interval=1.0, failure_timeout=2.0)
    failing_keys = set(failing)

    def factory(node_id: int, address: str, rng: random.Random) -> LeaseNode:
        node = build(node_id, address, rng)
        assert isinstance(node, LeaseNode)
        node.calls, node.failing = calls, failing_keys
        return node

    ids = [sim.add(factory) for _ in range(size)]
    assert sim.run_until(lambda: all(len(member(sim, i).membership.group("c")) == size - 1 for i in ids), 30)
    return ids


def member(sim: Sim, node_id: int) -> LeaseNode:
    node = sim.nodes[node_id]
    assert isinstance(node, LeaseNode)
    return node


def burst(sim: Sim, ids: list[int], keys: list[Key], callers: int, spread: float) -> None:
    """``callers`` fetches of every key on every member, at random moments within ``spread`` seconds."""
    for node_id in ids:
        for key in keys:
            for _ in range(callers):

                def call(node_id: int = node_id, key: Key = key) -> None:
                    if node_id in sim.nodes:
                        sim.act(node_id, lambda node, now: node.fetch(key, now))

                sim.call_later(sim.rng.uniform(0, spread), call)


def answered(sim: Sim, node_id: int, keys: Iterable[Key]) -> bool:
    node = member(sim, node_id)
    return not node.waiting and {k for k, _, _ in node.outcomes} >= set(keys)


def test_sim_a_burst_on_three_members_loads_each_key_once_for_the_whole_cluster() -> None:
    sim = Sim(seed=11)
    calls: Counter[Key] = Counter()
    ids = lease_cluster(sim, 3, calls)
    keys = [f"user:{i}" for i in range(10)]
    burst(sim, ids, keys, callers=20, spread=0.05)
    assert sim.run_until(lambda: all(answered(sim, i, keys) for i in ids), 10)
    assert calls == Counter({key: 1 for key in keys})
    for i in ids:
        assert {(k, kind, v) for k, kind, v in member(sim, i).outcomes} == {
            (key, "value", f"value of {key}") for key in keys
        }


def test_sim_a_loader_error_reaches_every_member_and_the_next_fetch_loads_again() -> None:
    sim = Sim(seed=12)
    calls: Counter[Key] = Counter()
    ids = lease_cluster(sim, 3, calls, failing=["bad"])
    burst(sim, ids, ["bad"], callers=5, spread=0.05)
    assert sim.run_until(lambda: all(answered(sim, i, ["bad"]) for i in ids), 10)
    assert calls["bad"] == 1
    assert all(member(sim, i).outcomes == [("bad", "error", "LookupError")] for i in ids)
    member(sim, ids[1]).failing.clear()  # the upstream recovers (the set is shared)
    sim.act(ids[1], lambda node, now: node.fetch("bad", now))
    assert sim.run_until(lambda: answered(sim, ids[1], ["bad"]) and len(member(sim, ids[1]).outcomes) == 2, 10)
    assert calls["bad"] == 2 and member(sim, ids[1]).outcomes[-1] == ("bad", "value", "value of bad")


@pytest.mark.parametrize("fin", [True, False], ids=["crash", "power-cut"])
def test_sim_a_lease_holder_that_crashes_mid_load_costs_one_more_load_and_every_survivor_gets_the_value(
    fin: bool,
) -> None:
    sim = Sim(seed=13)
    calls: Counter[Key] = Counter()
    ids = lease_cluster(sim, 3, calls)
    owner = owner_of("k", ids)
    holder = next(i for i in ids if i != owner)
    sim.act(holder, lambda node, now: node.fetch("k", now))
    sim.run_for(0.05)  # the holder has its grant and is loading
    assert calls["k"] == 1
    burst(sim, [i for i in ids if i != holder], ["k"], callers=5, spread=0.05)
    sim.run_for(0.06)
    sim.crash(holder, fin=fin)
    survivors = [i for i in ids if i != holder]
    assert sim.run_until(lambda: all(answered(sim, i, ["k"]) for i in survivors), 30)
    assert calls["k"] == 2
    assert all(member(sim, i).outcomes == [("k", "value", "value of k")] for i in survivors)


@pytest.mark.parametrize("fin", [True, False], ids=["crash", "power-cut"])
def test_sim_the_owner_crashing_mid_load_leaves_the_lease_with_its_holder_and_every_survivor_gets_the_value(
    fin: bool,
) -> None:
    sim = Sim(seed=15)
    calls: Counter[Key] = Counter()
    ids = lease_cluster(sim, 3, calls)
    owner = owner_of("k", ids)
    holder, waiter = (i for i in ids if i != owner)
    sim.act(holder, lambda node, now: node.fetch("k", now))
    sim.run_for(0.05)
    burst(sim, [waiter, owner], ["k"], callers=5, spread=0.05)
    sim.run_for(0.06)
    sim.crash(owner, fin=fin)
    assert sim.run_until(lambda: all(answered(sim, i, ["k"]) for i in (holder, waiter)), 30)
    assert calls["k"] == 1
    assert all(member(sim, i).outcomes == [("k", "value", "value of k")] for i in (holder, waiter))


def test_sim_an_owner_cut_off_by_a_partition_leaves_each_side_loading_for_itself() -> None:
    sim = Sim(seed=14)
    calls: Counter[Key] = Counter()
    ids = lease_cluster(sim, 3, calls)
    owner = owner_of("k", ids)
    others = [i for i in ids if i != owner]
    sim.partition([owner], others)
    burst(sim, others, ["k"], callers=3, spread=0.05)
    assert sim.run_until(lambda: all(answered(sim, i, ["k"]) for i in others), 30)
    assert 1 <= calls["k"] <= 2  # no owner to agree on: at most one load per member, never a stuck caller


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    drop=st.sampled_from([0.0, 0.05, 0.2]),
    crash_at=st.one_of(st.none(), st.floats(0.0, 0.5)),
    fin=st.booleans(),
)
def test_sim_under_drops_and_a_crash_every_surviving_caller_is_answered_and_loads_stay_bounded(
    seed: int, drop: float, crash_at: float | None, fin: bool
) -> None:
    sim = Sim(seed=seed)
    calls: Counter[Key] = Counter()
    ids = lease_cluster(sim, 3, calls)
    sim.drop = drop
    keys = [f"k{i}" for i in range(4)]
    burst(sim, ids, keys, callers=3, spread=0.3)
    victim = sim.rng.choice(ids)
    if crash_at is not None:
        sim.call_later(crash_at, lambda: sim.crash(victim, fin=fin))
    survivors = [i for i in ids if crash_at is None or i != victim]
    assert sim.run_until(lambda: all(answered(sim, i, keys) for i in survivors), 60), "a caller was left waiting"
    for i in survivors:
        for key, kind, value in member(sim, i).outcomes:
            assert (kind, value) == ("value", f"value of {key}")
    if drop == 0.0:
        # No lost messages: one load per key, plus one for a holder lost with the crash.
        assert all(calls[key] <= (1 if crash_at is None else 2) for key in keys), calls
    else:
        # A lost request costs its member a load of its own at most.
        assert all(calls[key] <= len(ids) + 1 for key in keys), calls

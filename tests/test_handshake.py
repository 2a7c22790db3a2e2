"""The handshake admits exactly the peers that prove the cluster secret, and nothing else."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Callable

import pytest
from conftest import FakeClock

from shoal.errors import ClockSkewError, HandshakeError, ProtocolError, WeakSecret
from shoal.handshake import KEY_SALT, MIN_SECRET_SIZE, SCRYPT, Handshake, check_secret, cluster_key
from shoal.messages import Challenge, Heartbeat, Hello, Message, Proof, Refused, Welcome
from shoal.wire import PROTOCOL_MIN, PROTOCOL_VERSION, FrameDecoder, encode

SECRET = b"cluster secret of 32 bytes......"
WALL = FakeClock()
WALL_MS = int(WALL.now * 1000)
CLIENT_ID, SERVER_ID = 0x1111_2222_3333_4444, 0xFFFF_0000_FFFF_0000
NONCE_C, NONCE_S = b"c" * 32, b"s" * 32


def initiator(
    secret: bytes = SECRET,
    node_id: int = CLIENT_ID,
    protocol_min: int = PROTOCOL_MIN,
    protocol_max: int = PROTOCOL_VERSION,
) -> Handshake:
    return Handshake.initiator(
        secret, node_id, "10.0.0.1:7600", protocol_min=protocol_min, protocol_max=protocol_max, wall=WALL
    )


def acceptor(
    secret: bytes = SECRET,
    node_id: int = SERVER_ID,
    protocol_min: int = PROTOCOL_MIN,
    protocol_max: int = PROTOCOL_VERSION,
) -> Handshake:
    """An acceptor with a fixed nonce, so tests can compute its MACs independently."""
    return Handshake.acceptor(
        secret, node_id, "10.0.0.2:7600", NONCE_S, protocol_min=protocol_min, protocol_max=protocol_max, wall=WALL
    )


def documented_mac(
    label: bytes, secret: bytes = SECRET, protocol: int = PROTOCOL_VERSION, listen_c: bytes = b"c"
) -> bytes:
    """The MAC as the module docstring specifies it, computed independently."""
    key = hashlib.scrypt(secret, salt=b"shoal cluster key v2", n=2**14, r=8, p=1, dklen=32)
    signed = NONCE_C + NONCE_S + CLIENT_ID.to_bytes(8, "big") + SERVER_ID.to_bytes(8, "big")
    signed += protocol.to_bytes(4, "big") + WALL_MS.to_bytes(8, "big") + WALL_MS.to_bytes(8, "big")
    signed += len(listen_c).to_bytes(4, "big") + listen_c + len(b"10.0.0.2:7600").to_bytes(4, "big") + b"10.0.0.2:7600"
    return hmac.new(key, label + signed, hashlib.sha256).digest()


def over_the_wire(msgs: list[Message]) -> list[Message]:
    """Every handshake message must survive real framing, not just sit in memory."""
    return FrameDecoder().feed(b"".join(encode(m) for m in msgs))


def run(client: Handshake, server: Handshake) -> list[Message]:
    """Pump messages between the two sides until both fall silent; return the transcript."""
    transcript: list[Message] = []
    to_server, to_client = client.start(), server.start()
    while to_server or to_client:
        transcript += to_server + to_client
        to_client, to_server = (
            [reply for msg in over_the_wire(to_server) for reply in server.receive(msg)],
            [reply for msg in over_the_wire(to_client) for reply in client.receive(msg)],
        )
    return transcript


def test_both_sides_agree_on_each_others_ids_addresses_and_protocol() -> None:
    client, server = initiator(), acceptor()
    transcript = run(client, server)
    assert [type(m) for m in transcript] == [Hello, Challenge, Proof, Welcome]
    assert client.done and server.done
    assert (client.peer_id, client.peer_listen) == (SERVER_ID, "10.0.0.2:7600")
    assert (server.peer_id, server.peer_listen) == (CLIENT_ID, "10.0.0.1:7600")
    assert client.protocol == server.protocol == PROTOCOL_VERSION


def test_the_macs_follow_the_documented_layout_so_other_releases_can_interoperate() -> None:
    client = Handshake.initiator(SECRET, CLIENT_ID, "c", nonce=NONCE_C, wall=WALL)
    _, _, proof, welcome = run(client, acceptor())
    assert isinstance(welcome, Welcome) and isinstance(proof, Proof)
    assert welcome.mac == documented_mac(b"shoal acceptor\0")
    assert proof.mac == documented_mac(b"shoal initiator\0")
    assert cluster_key(SECRET) == hashlib.scrypt(SECRET, salt=KEY_SALT, **SCRYPT)  # type: ignore[arg-type]


def test_a_stranger_that_sends_a_hello_gets_nothing_derived_from_the_secret() -> None:
    """Finding: the acceptor's Challenge MAC let a stranger guess the secret offline."""
    [challenge] = acceptor().receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "c"))
    assert isinstance(challenge, Challenge)
    from_secret = {cluster_key(SECRET), SECRET}
    assert not any(isinstance(v, bytes) and v not in (NONCE_S,) for v in dataclasses.astuple(challenge))
    assert not from_secret & set(dataclasses.astuple(challenge))
    server = acceptor()
    server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "c"))
    with pytest.raises(HandshakeError, match="failed to prove"):
        server.receive(Proof(b"guess" * 6 + b"..", WALL_MS))  # refused: no Welcome, so no MAC, ever


def test_each_guess_at_the_secret_costs_a_slow_key_derivation() -> None:
    assert SCRYPT["n"] >= 2**14 and SCRYPT["r"] >= 8
    assert cluster_key(SECRET) != cluster_key(SECRET[:-1] + b"!")


@pytest.mark.parametrize("secret", [None, "", b"", "\n", " \n", "short", "x" * (MIN_SECRET_SIZE - 1)])
def test_an_empty_or_short_secret_is_refused(secret: str | bytes | None) -> None:
    with pytest.raises(WeakSecret, match="shoal secret"):
        check_secret(secret)


def test_a_secret_of_the_minimum_length_is_accepted_without_surrounding_whitespace() -> None:
    assert check_secret("x" * MIN_SECRET_SIZE + "\n") == b"x" * MIN_SECRET_SIZE


def test_both_sides_derive_the_same_frame_keys_one_per_direction_and_per_session() -> None:
    client, server = initiator(), acceptor()
    run(client, server)
    assert client.send_key == server.receive_key and server.send_key == client.receive_key
    assert client.send_key != client.receive_key
    again_c, again_s = initiator(), acceptor()
    run(again_c, again_s)
    assert again_c.send_key != client.send_key  # the initiator's nonce is fresh


def _reachable_bytes(obj: object) -> list[bytes]:
    """Every bytes value held by ``obj``'s attributes, one level of containers deep."""
    found: list[bytes] = []
    for value in vars(obj).values() if hasattr(obj, "__dict__") else []:
        items = value if isinstance(value, (tuple, list)) else [value]
        for item in items:
            if isinstance(item, (bytes, bytearray)):
                found.append(bytes(item))
            elif hasattr(item, "_fields"):  # a NamedTuple or message
                found += [v for v in item if isinstance(v, bytes)]
    return found


def test_a_finished_handshake_keeps_the_frame_keys_and_neither_the_secret_nor_the_scrypt_key() -> None:
    """Row 13 of issue 20: conn.handshake kept the scrypt key, which alone admits a peer."""
    client, server = initiator(), acceptor()
    run(client, server)
    key = hashlib.scrypt(SECRET, salt=b"shoal cluster key v2", n=2**14, r=8, p=1, dklen=32)
    for side in (client, server):
        held = _reachable_bytes(side)
        assert key not in held and SECRET not in held
        assert side.send_key in held and side.receive_key in held
    assert client.send_key == server.receive_key and server.send_key == client.receive_key


def test_frame_keys_are_withheld_until_the_handshake_is_done() -> None:
    client = initiator()
    client.start()
    for name in ("send_key", "receive_key", "clock_skew"):
        with pytest.raises(RuntimeError, match="not done"):
            getattr(client, name)


@pytest.mark.parametrize(
    "skew", [-600.0, 365 * 86400.0, -1.5, 1.5], ids=["10 min behind", "a year ahead", "-1.5 s", "+1.5 s"]
)
def test_a_peer_whose_clock_is_off_by_more_than_max_clock_skew_is_refused_by_both_sides(skew: float) -> None:
    """Finding: a member 10 minutes behind deleted ttl-60 writes on the others; a year ahead kept them a year."""
    off = FakeClock(WALL.now + skew)
    client = Handshake.initiator(SECRET, CLIENT_ID, "c", wall=off, max_clock_skew=1.0)
    with pytest.raises(ClockSkewError, match=r"max_clock_skew \(1 s\)"):
        run(client, acceptor())
    client = initiator()
    server = Handshake.acceptor(SECRET, SERVER_ID, "s", wall=off, max_clock_skew=1.0)
    to_server = client.start()
    [challenge] = server.receive(to_server[0])
    [proof] = client.receive(challenge)
    with pytest.raises(ClockSkewError, match="NTP"):
        server.receive(proof)  # the acceptor refuses on the proven Proof...
    lenient = Handshake.acceptor(SECRET, SERVER_ID, "s", wall=off, max_clock_skew=2 * 365 * 86400)
    client = initiator()
    with pytest.raises(ClockSkewError):
        run(client, lenient)  # ...and the initiator, by its own limit, on the proven Welcome
    assert lenient.done and not client.done


@pytest.mark.parametrize("skew", [0.0, 0.9, -0.9])
def test_a_peer_within_max_clock_skew_is_admitted_and_its_skew_reported(skew: float) -> None:
    client = Handshake.initiator(SECRET, CLIENT_ID, "c", wall=FakeClock(WALL.now + skew), max_clock_skew=1.0)
    server = acceptor()
    run(client, server)
    assert server.clock_skew == pytest.approx(skew, abs=0.002)
    assert client.clock_skew == pytest.approx(-skew, abs=0.002)


def test_a_relay_cannot_change_a_wall_clock_or_a_listen_address() -> None:
    client, server = initiator(), acceptor()
    [hello] = client.start()
    [challenge] = server.receive(hello)
    [proof] = client.receive(dataclasses.replace(challenge, listen="10.6.6.6:7600"))
    with pytest.raises(HandshakeError, match="failed to prove"):
        server.receive(proof)
    client, server = initiator(), acceptor()
    [challenge] = server.receive(client.start()[0])
    [proof] = client.receive(challenge)
    assert isinstance(proof, Proof)
    with pytest.raises(HandshakeError, match="failed to prove"):
        server.receive(dataclasses.replace(proof, wall_ms=proof.wall_ms + 1))


def test_wrong_secret_is_refused_before_any_cache_traffic() -> None:
    client, server = initiator(secret=b"guess"), acceptor()
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        run(client, server)
    assert not client.done and not server.done
    with pytest.raises(RuntimeError):
        _ = server.peer_id


def test_an_initiator_refuses_an_acceptor_that_does_not_know_the_secret() -> None:
    client = initiator()
    [hello] = client.start()
    [challenge] = acceptor(secret=b"impostor").receive(hello)
    client.receive(challenge)
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        client.receive(Welcome(documented_mac(b"shoal acceptor\0", secret=b"impostor", listen_c=b"10.0.0.1:7600")))


def test_an_acceptor_refuses_a_proof_made_with_another_secret() -> None:
    server = acceptor()
    server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x:1"))
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        server.receive(Proof(documented_mac(b"shoal initiator\0", secret=b"impostor"), WALL_MS))
    assert not server.done


def test_a_proof_replayed_from_an_earlier_session_is_refused() -> None:
    recorded_session = run(Handshake.initiator(SECRET, CLIENT_ID, "c", nonce=NONCE_C, wall=WALL), acceptor())
    recorded_proof = recorded_session[2]
    server = Handshake.acceptor(SECRET, SERVER_ID, "s", wall=WALL)  # draws a fresh nonce
    server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "c"))  # the recorded Hello, replayed too
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        server.receive(recorded_proof)


def test_the_initiators_own_mac_reflected_back_is_not_a_welcome() -> None:
    client, server = initiator(), acceptor()
    [challenge] = server.receive(client.start()[0])
    [proof] = client.receive(challenge)
    assert isinstance(proof, Proof)
    with pytest.raises(HandshakeError):
        client.receive(Welcome(proof.mac))


def test_a_welcome_recorded_from_an_earlier_session_is_refused() -> None:
    recorded = run(initiator(), acceptor())[3]
    client, server = initiator(), acceptor()  # the initiator draws a fresh nonce, which the recorded MAC does not cover
    client.receive(server.receive(client.start()[0])[0])
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        client.receive(recorded)


OUT_OF_ORDER = {
    "acceptor gets Proof before Hello": (acceptor, [], Proof(b"m" * 32, 0)),
    "acceptor gets Welcome": (acceptor, [], Welcome(b"m" * 32)),
    "acceptor gets a second Hello": (
        acceptor,
        [Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x")],
        Hello(PROTOCOL_MIN, PROTOCOL_VERSION, 1, NONCE_C, "x"),
    ),
    "acceptor gets cache traffic before admission": (acceptor, [], Heartbeat(1)),
    "initiator gets Hello": (initiator, [], Hello(PROTOCOL_MIN, PROTOCOL_VERSION, SERVER_ID, NONCE_S, "x")),
    "initiator gets Welcome before proving itself": (initiator, [], Welcome(b"m" * 32)),
}


@pytest.mark.parametrize(("side", "before", "msg"), OUT_OF_ORDER.values(), ids=OUT_OF_ORDER.keys())
def test_a_message_out_of_order_is_a_protocol_error(
    side: Callable[[], Handshake], before: list[Message], msg: Message
) -> None:
    handshake = side()
    handshake.start()
    for earlier in before:
        handshake.receive(earlier)
    with pytest.raises(ProtocolError, match="unexpected") as caught:
        handshake.receive(msg)
    assert not isinstance(caught.value, HandshakeError)
    assert not handshake.done


def test_nothing_is_accepted_after_the_handshake_fails() -> None:
    server = acceptor()
    with pytest.raises(ProtocolError):
        server.receive(Welcome(b"m" * 32))
    with pytest.raises(ProtocolError, match="failed"):
        server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x"))


def test_a_refusal_from_the_peer_ends_the_handshake_with_its_reason() -> None:
    client = initiator()
    client.start()
    with pytest.raises(HandshakeError, match="no common protocol"):
        client.receive(Refused("no common protocol version"))


@pytest.mark.parametrize(
    ("client_range", "server_range", "agreed"),
    [((1, 1), (1, 1), 1), ((1, 3), (2, 5), 3), ((2, 5), (1, 3), 3), ((1, 9), (4, 4), 4), ((1, 2), (2, 2), 2)],
)
def test_the_protocol_is_the_highest_version_both_sides_speak(
    client_range: tuple[int, int], server_range: tuple[int, int], agreed: int
) -> None:
    client = initiator(protocol_min=client_range[0], protocol_max=client_range[1])
    server = acceptor(protocol_min=server_range[0], protocol_max=server_range[1])
    run(client, server)
    assert client.protocol == server.protocol == agreed


def test_incompatible_version_ranges_are_refused_with_both_ranges_in_the_reason() -> None:
    client = initiator(protocol_min=1, protocol_max=1)
    server = acceptor(protocol_min=2, protocol_max=3)
    with pytest.raises(HandshakeError, match=r"ours 2\.\.3, peer's 1\.\.1"):
        run(client, server)


def test_an_initiator_refuses_a_protocol_it_did_not_offer() -> None:
    client = initiator(protocol_min=1, protocol_max=2)
    client.start()
    with pytest.raises(HandshakeError, match="protocol 3"):
        client.receive(Challenge(3, SERVER_ID, NONCE_S, "x", WALL_MS))


def test_a_node_connecting_to_itself_is_refused() -> None:
    with pytest.raises(HandshakeError, match="itself"):
        run(initiator(node_id=7), acceptor(node_id=7))


def test_an_initiator_refuses_a_challenge_bearing_its_own_id() -> None:
    client = initiator(node_id=7)
    client.start()
    with pytest.raises(HandshakeError, match="itself"):
        client.receive(Challenge(PROTOCOL_VERSION, 7, NONCE_S, "x", WALL_MS))


@pytest.mark.parametrize("nonce", [b"", b"n" * 31, b"n" * 33])
def test_a_nonce_of_the_wrong_length_is_refused(nonce: bytes) -> None:
    with pytest.raises(ProtocolError, match="nonce"):
        acceptor().receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, nonce, "x"))
    client = initiator()
    client.start()
    with pytest.raises(ProtocolError, match="nonce"):
        client.receive(Challenge(PROTOCOL_VERSION, SERVER_ID, nonce, "x", WALL_MS))


@pytest.mark.parametrize("node_id", [-1, 2**64])
def test_a_node_id_outside_unsigned_64_bits_is_refused(node_id: int) -> None:
    with pytest.raises(ProtocolError, match="64-bit"):
        acceptor().receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, node_id, NONCE_C, "x"))


def test_the_peers_identity_is_withheld_until_it_has_proven_the_secret() -> None:
    server = acceptor()
    server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x"))
    for name in ("peer_id", "peer_listen", "protocol"):
        with pytest.raises(RuntimeError, match="not done"):
            getattr(server, name)


def test_each_handshake_draws_a_fresh_nonce() -> None:
    hellos = [initiator().start()[0] for _ in range(2)]
    assert all(isinstance(h, Hello) and len(h.nonce) == 32 for h in hellos)
    assert hellos[0] != hellos[1]


def test_the_acceptor_speaks_only_when_spoken_to() -> None:
    assert acceptor().start() == []


@pytest.mark.parametrize(
    "kwargs",
    [{"node_id": -1}, {"node_id": 2**64}, {"nonce": b"short"}, {"protocol_min": 2, "protocol_max": 1}],
)
def test_a_misconfigured_side_fails_at_construction(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"secret": SECRET, "node_id": 1, "listen": "x", "wall": WALL, **kwargs}
    with pytest.raises(ValueError):
        Handshake.initiator(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("late", [1.5, 4.0])
def test_a_peer_whose_answer_arrives_late_is_not_taken_for_one_whose_clock_is_off(late: float) -> None:
    """Finding: on a loaded host a Proof that took 1.26 s to arrive was refused as a clock
    1.26 s behind. Both clocks read the same; the answer was late. The peer read its clock
    somewhere between our question and its answer, and is refused only if no point of that
    span is within ``max_clock_skew``."""
    clock = FakeClock(WALL.now)
    client = Handshake.initiator(SECRET, CLIENT_ID, "c", wall=clock, max_clock_skew=1.0)
    server = Handshake.acceptor(SECRET, SERVER_ID, "s", NONCE_S, wall=clock, max_clock_skew=1.0)
    (hello,) = client.start()
    (challenge,) = server.receive(hello)
    clock.advance(late)  # the challenge took this long to reach the client
    (proof,) = client.receive(challenge)
    clock.advance(late)  # and the proof as long again
    (welcome,) = server.receive(proof)
    assert client.receive(welcome) == []
    assert client.done and server.done
    assert abs(server.clock_skew) <= late and abs(client.clock_skew) <= late


def test_a_late_answer_does_not_hide_a_clock_that_is_off_beyond_the_round_trip() -> None:
    ours, theirs = FakeClock(WALL.now), FakeClock(WALL.now - 3.0)
    client = Handshake.initiator(SECRET, CLIENT_ID, "c", wall=theirs, max_clock_skew=1.0)
    server = Handshake.acceptor(SECRET, SERVER_ID, "s", NONCE_S, wall=ours, max_clock_skew=1.0)
    (hello,) = client.start()
    (challenge,) = server.receive(hello)
    ours.advance(1.5)
    theirs.advance(1.5)  # 1.5 s in flight, but 3 s behind: more than the span explains
    (proof,) = client.receive(challenge)
    with pytest.raises(ClockSkewError, match=r"-1\.500 s from ours"):
        server.receive(proof)

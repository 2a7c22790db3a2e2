"""The handshake admits exactly the peers that prove the cluster secret, and nothing else."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest

from shoal.errors import HandshakeError, ProtocolError
from shoal.handshake import Handshake
from shoal.messages import Challenge, Heartbeat, Hello, Message, Proof, Refused, Welcome
from shoal.wire import PROTOCOL_MIN, PROTOCOL_VERSION, FrameDecoder, encode

SECRET = b"cluster secret"
CLIENT_ID, SERVER_ID = 0x1111_2222_3333_4444, 0xFFFF_0000_FFFF_0000
NONCE_C, NONCE_S = b"c" * 32, b"s" * 32


def initiator(
    secret: bytes = SECRET,
    node_id: int = CLIENT_ID,
    protocol_min: int = PROTOCOL_MIN,
    protocol_max: int = PROTOCOL_VERSION,
) -> Handshake:
    return Handshake.initiator(
        secret, node_id, "10.0.0.1:7600", protocol_min=protocol_min, protocol_max=protocol_max
    )


def acceptor(
    secret: bytes = SECRET,
    node_id: int = SERVER_ID,
    protocol_min: int = PROTOCOL_MIN,
    protocol_max: int = PROTOCOL_VERSION,
) -> Handshake:
    """An acceptor with a fixed nonce, so tests can compute its MACs independently."""
    return Handshake.acceptor(
        secret, node_id, "10.0.0.2:7600", NONCE_S, protocol_min=protocol_min, protocol_max=protocol_max
    )


def documented_mac(label: bytes, secret: bytes = SECRET, protocol: int = PROTOCOL_VERSION) -> bytes:
    """The MAC as the module docstring specifies it, computed independently."""
    signed = NONCE_C + NONCE_S + CLIENT_ID.to_bytes(8, "big") + SERVER_ID.to_bytes(8, "big")
    signed += protocol.to_bytes(4, "big")
    return hmac.new(secret, label + signed, hashlib.sha256).digest()


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
    client = Handshake.initiator(SECRET, CLIENT_ID, "c", nonce=NONCE_C)
    _, challenge, proof, _ = run(client, acceptor())
    assert isinstance(challenge, Challenge) and isinstance(proof, Proof)
    assert challenge.mac == documented_mac(b"shoal acceptor\0")
    assert proof.mac == documented_mac(b"shoal initiator\0")


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
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        client.receive(challenge)


def test_an_acceptor_refuses_a_proof_made_with_another_secret() -> None:
    server = acceptor()
    server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x:1"))
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        server.receive(Proof(documented_mac(b"shoal initiator\0", secret=b"impostor")))
    assert not server.done


def test_a_proof_replayed_from_an_earlier_session_is_refused() -> None:
    recorded_session = run(Handshake.initiator(SECRET, CLIENT_ID, "c", nonce=NONCE_C), acceptor())
    recorded_proof = recorded_session[2]
    server = Handshake.acceptor(SECRET, SERVER_ID, "s")  # draws a fresh nonce
    server.receive(
        Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "c")
    )  # the recorded Hello, replayed too
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        server.receive(recorded_proof)


def test_the_acceptors_own_mac_reflected_back_is_not_a_proof() -> None:
    server = acceptor()
    [challenge] = server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x:1"))
    assert isinstance(challenge, Challenge)
    with pytest.raises(HandshakeError):
        server.receive(Proof(challenge.mac))


def test_a_challenge_recorded_from_an_earlier_session_is_refused() -> None:
    [recorded] = acceptor().receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x:1"))
    client = initiator()  # draws a fresh nonce, which the recorded MAC does not cover
    client.start()
    with pytest.raises(HandshakeError, match="failed to prove the cluster secret"):
        client.receive(recorded)


OUT_OF_ORDER = {
    "acceptor gets Proof before Hello": (acceptor, [], Proof(b"m" * 32)),
    "acceptor gets Welcome": (acceptor, [], Welcome()),
    "acceptor gets a second Hello": (
        acceptor,
        [Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x")],
        Hello(PROTOCOL_MIN, PROTOCOL_VERSION, 1, NONCE_C, "x"),
    ),
    "acceptor gets cache traffic before admission": (acceptor, [], Heartbeat(1)),
    "initiator gets Hello": (initiator, [], Hello(PROTOCOL_MIN, PROTOCOL_VERSION, SERVER_ID, NONCE_S, "x")),
    "initiator gets Welcome before proving itself": (initiator, [], Welcome()),
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
        server.receive(Welcome())
    with pytest.raises(ProtocolError, match="failed"):
        server.receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, NONCE_C, "x"))


def test_a_refusal_from_the_peer_ends_the_handshake_with_its_reason() -> None:
    client = initiator()
    client.start()
    with pytest.raises(HandshakeError, match="no common protocol"):
        client.receive(Refused("no common protocol version"))


@pytest.mark.parametrize(
    ("client_range", "server_range", "agreed"),
    [((1, 1), (1, 1), 1), ((1, 3), (2, 5), 3), ((2, 5), (1, 3), 3), ((1, 9), (4, 4), 4)],
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
        client.receive(Challenge(3, SERVER_ID, NONCE_S, "x", b"m" * 32))


def test_a_node_connecting_to_itself_is_refused() -> None:
    with pytest.raises(HandshakeError, match="itself"):
        run(initiator(node_id=7), acceptor(node_id=7))


def test_an_initiator_refuses_a_challenge_bearing_its_own_id() -> None:
    client = initiator(node_id=7)
    client.start()
    with pytest.raises(HandshakeError, match="itself"):
        client.receive(Challenge(PROTOCOL_VERSION, 7, NONCE_S, "x", b"m" * 32))


@pytest.mark.parametrize("nonce", [b"", b"n" * 31, b"n" * 33])
def test_a_nonce_of_the_wrong_length_is_refused(nonce: bytes) -> None:
    with pytest.raises(ProtocolError, match="nonce"):
        acceptor().receive(Hello(PROTOCOL_MIN, PROTOCOL_VERSION, CLIENT_ID, nonce, "x"))
    client = initiator()
    client.start()
    with pytest.raises(ProtocolError, match="nonce"):
        client.receive(Challenge(PROTOCOL_VERSION, SERVER_ID, nonce, "x", b"m" * 32))


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
    args: dict[str, object] = {"secret": SECRET, "node_id": 1, "listen": "x", **kwargs}
    with pytest.raises(ValueError):
        Handshake.initiator(**args)  # type: ignore[arg-type]

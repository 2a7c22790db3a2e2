"""Framing and message decoding: what arrives either becomes a message or a ProtocolError."""

from __future__ import annotations

import dataclasses
import itertools
import struct
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import FrameTooLarge, ProtocolError
from shoal.messages import (
    MESSAGE_TYPES,
    Challenge,
    Gossip,
    Heartbeat,
    Hello,
    Leave,
    Message,
    Ops,
    Proof,
    Pull,
    Refused,
    SizeRequest,
    Welcome,
    message,
    to_array,
)
from shoal.validation import MAX_NAME_SIZE
from shoal.wire import (
    DEFAULT_MAX_FRAME,
    TAG_SIZE,
    Bounds,
    FrameDecoder,
    FrameSealer,
    bounds_of,
    encode,
    frame_limit,
)


@message(60_001)  # far from every real range; exists to exercise float and optional fields
class _Probe(Message):
    ratio: float
    note: str | None
    tags: dict[Any, Any]


EXAMPLES: list[Message] = [
    Hello(1, 1, 2**64 - 1, b"n" * 32, "10.0.0.1:7600"),
    Challenge(2, 0, b"s" * 32, "[::1]:7600", 1_700_000_000_000),
    Proof(b"m" * 32, 1_700_000_000_000),
    Welcome(b"m" * 32),
    Refused("peer failed to prove the cluster secret"),
    Gossip([[7, "127.0.0.1:7601", "up", ["accounts", "sessions"], 42]]),
    Heartbeat(1_700_000_000_000),
    Leave(),
    _Probe(0.5, None, {"a": 1, b"a": 2, 3: [None, True]}),
]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def framed(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


def decode_one(data: bytes) -> Message:
    [msg] = FrameDecoder().feed(data)
    return msg


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_round_trip(msg: Message) -> None:
    assert decode_one(encode(msg)) == msg


def test_str_bytes_and_int_stay_distinct_on_the_wire() -> None:
    decoded = decode_one(encode(Gossip(["1", b"1", 1, True, 1.0])))
    assert isinstance(decoded, Gossip)
    assert [type(v) for v in decoded.members] == [str, bytes, int, bool, float]


def test_a_message_is_an_array_of_its_code_and_fields_in_order() -> None:
    assert msgpack.unpackb(encode(Heartbeat(5))[4:]) == [Heartbeat.code, 5]
    assert msgpack.unpackb(encode(Leave())[4:]) == [Leave.code]


def test_a_frame_fed_one_byte_at_a_time_decodes_exactly_when_complete() -> None:
    data = encode(Refused("bye"))
    decoder = FrameDecoder()
    for byte in data[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.feed(data[-1:]) == [Refused("bye")]
    assert decoder.feed(b"") == []


def test_many_frames_in_one_feed_decode_in_order() -> None:
    assert FrameDecoder().feed(b"".join(encode(m) for m in EXAMPLES * 50)) == EXAMPLES * 50


@given(st.lists(st.integers(0, 400), max_size=20))
def test_frames_decode_the_same_however_the_stream_is_chopped(cuts: list[int]) -> None:
    data = b"".join(encode(m) for m in EXAMPLES)
    bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    decoder = FrameDecoder()
    received = [m for a, b in itertools.pairwise(bounds) for m in decoder.feed(data[a:b])]
    assert received == EXAMPLES


def test_an_oversized_length_prefix_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    with pytest.raises(FrameTooLarge, match="1025-byte frame"):
        decoder.feed(struct.pack(">I", 1025))


def test_a_frame_exactly_at_the_limit_is_accepted() -> None:
    data = encode(Refused("x" * 100))
    assert FrameDecoder(max_frame_size=len(data) - 4).feed(data) == [Refused("x" * 100)]


def test_the_limit_can_be_raised_once_the_peer_is_admitted() -> None:
    data = encode(Refused("x" * 100))
    decoder = FrameDecoder(max_frame_size=16)
    decoder.max_frame_size = DEFAULT_MAX_FRAME
    assert decoder.feed(data) == [Refused("x" * 100)]


def test_encode_refuses_a_message_the_receiver_would_refuse() -> None:
    with pytest.raises(FrameTooLarge, match="Gossip"):
        encode(Gossip([b"x" * 2000]), max_frame_size=1024)


def test_an_int_is_accepted_for_a_float_field_and_becomes_a_float() -> None:
    decoded = decode_one(framed([_Probe.code, 2, "n", {}]))
    assert decoded == _Probe(2.0, "n", {})
    assert isinstance(decoded, _Probe) and type(decoded.ratio) is float


BAD_INPUT = {
    "http request line": b"GET / HTTP/1.1\r\n\r\n",
    "tls client hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "garbage body": frame(b"\xc1\xc1\xc1"),
    "empty body": frame(b""),
    "truncated msgpack": frame(msgpack.packb([Heartbeat.code, 5])[:-1]),
    "trailing bytes after the message": frame(msgpack.packb([Heartbeat.code, 5]) + b"\x00"),
    "payload is a map": framed({"code": Heartbeat.code}),
    "payload is an int": framed(Heartbeat.code),
    "empty array": framed([]),
    "unknown code": framed([59_999]),
    "code is a string": framed(["11", 5]),
    "code is a bool": framed([True]),
    "code is an unhashable list": framed([[11], 5]),
    "too few fields": framed([Hello.code, 1, 1, 5, b"n" * 32]),
    "too many fields": framed([Heartbeat.code, 5, 6]),
    "str for an int": framed([Heartbeat.code, "5"]),
    "bool for an int": framed([Heartbeat.code, True]),
    "float for an int": framed([Heartbeat.code, 5.0]),
    "str for bytes": framed([Proof.code, "mac", 0]),
    "None for a required field": framed([Proof.code, None, 0]),
    "bool for a float": framed([_Probe.code, True, None, {}]),
    "list for a dict": framed([_Probe.code, 1.0, None, []]),
    "ext type": framed([Gossip.code, [msgpack.ExtType(42, b"x")]]),
    "empty ext type": frame(b"\x92\x0a\x91\xc7\x00\x05"),
    "timestamp ext": framed([Gossip.code, [msgpack.Timestamp(1, 0)]]),
    "invalid utf-8 in a str": frame(b"\x92\x05\xa2\xff\xfe"),
    "unhashable map key": frame(b"\x92\x0a\x91\x81\x90\x01"),
    "nesting too deep": frame(b"\x92\x0a" + b"\x91" * 5000 + b"\xc0"),
    "array claiming more items than the frame has bytes": frame(b"\x92\x0a\xdd\xff\xff\xff\xff"),
}


@pytest.mark.parametrize("data", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_malformed_input_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(data)


def test_a_protocol_error_names_the_field_but_never_echoes_the_peers_data() -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder().feed(framed([Proof.code, "A" * 400, 0]))
    assert "Proof.mac must be bytes, got str" in str(caught.value)
    assert "AAAA" not in str(caught.value)


# --- properties ---------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_keys = st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20)
plain = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=20,
)
_FIELD_VALUES: dict[Any, st.SearchStrategy[Any]] = {
    int: st.integers(-(2**63), 2**64 - 1),
    float: st.floats(allow_nan=False),
    str: st.text(),
    bytes: st.binary(),
    bool: st.booleans(),
    list[Any]: st.lists(plain, max_size=5),
    dict[Any, Any]: st.dictionaries(_keys, plain, max_size=5),
}


def _values_for(hint: Any) -> st.SearchStrategy[Any]:
    if isinstance(hint, types.UnionType):  # X | None
        return st.one_of([st.none() if o is type(None) else _FIELD_VALUES[o] for o in typing.get_args(hint)])
    return _FIELD_VALUES[hint]


def _messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _values_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


any_message = st.one_of([_messages_of(cls) for _, cls in sorted(MESSAGE_TYPES.items())])


def _within(obj: Any, bounds: Bounds, size: int) -> bool:
    """Whether every item of ``obj`` keeps to ``bounds`` (what the decoder enforces for a frame of ``size``)."""
    limit = {
        str: (bounds.text, size),
        bytes: (bounds.binary, size),
        list: (bounds.items, size),
        dict: (bounds.pairs, size // 2),
    }
    kind = type(obj)
    if kind in limit:
        bound, most = limit[kind]
        length = len(obj.encode()) if kind is str else len(obj)
        if length > (most if bound is None else min(bound, most)):
            return False
    if kind is list:
        return all(_within(item, bounds, size) for item in obj)
    if kind is dict:
        return all(_within(k, bounds, size) and _within(v, bounds, size) for k, v in obj.items())
    return True


@given(any_message)
def test_any_registered_message_within_its_kinds_bounds_survives_a_round_trip_and_any_other_is_refused(
    msg: Message,
) -> None:
    try:
        data = encode(msg)
    except FrameTooLarge:
        assert len(msgpack.packb(to_array(msg))) > frame_limit(msg.code, DEFAULT_MAX_FRAME)
        return
    array = to_array(msg)
    name = getattr(msg, "cache", "")
    if _within(array, bounds_of(msg.code), len(data) - 4) and len(name.encode()) <= MAX_NAME_SIZE:
        assert decode_one(data) == msg
    else:
        with pytest.raises(ProtocolError):
            decode_one(data)


def _feed_expecting_only_protocol_errors(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    try:
        for chunk in chunks:
            for msg in decoder.feed(chunk):
                assert isinstance(msg, Message)
    except ProtocolError:
        pass


@given(st.lists(st.binary(max_size=64), max_size=10))
def test_random_bytes_only_ever_raise_protocol_errors(chunks: list[bytes]) -> None:
    _feed_expecting_only_protocol_errors(chunks)


@given(st.binary(max_size=256))
def test_random_frame_bodies_only_ever_raise_protocol_errors(body: bytes) -> None:
    _feed_expecting_only_protocol_errors([frame(body)])


@given(
    plain | st.tuples(st.sampled_from(sorted(MESSAGE_TYPES)), st.lists(plain, max_size=6)).map(lambda t: [t[0], *t[1]])
)
def test_random_msgpack_objects_only_ever_raise_protocol_errors(obj: Any) -> None:
    _feed_expecting_only_protocol_errors([framed(obj)])


# --- authenticated frames -------------------------------------------------------

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def sealed(msgs: list[Message], key: bytes = KEY_A) -> list[bytes]:
    sealer = FrameSealer(key)
    return [sealer.seal(encode(m)) for m in msgs]


def authenticated(key: bytes = KEY_A, max_frame_size: int = DEFAULT_MAX_FRAME) -> FrameDecoder:
    decoder = FrameDecoder(max_frame_size)
    decoder.authenticate(key)
    return decoder


def test_sealed_frames_decode_in_order_however_the_stream_is_chopped() -> None:
    data = b"".join(sealed(EXAMPLES * 3))
    decoder = authenticated()
    received = [m for i in range(0, len(data), 7) for m in decoder.feed(data[i : i + 7])]
    assert received == EXAMPLES * 3


def test_a_frame_injected_by_a_relay_without_the_key_is_refused() -> None:
    """Finding: a relay passed a valid handshake through, then injected an Ops frame both members applied."""
    frames = sealed([Heartbeat(1), Heartbeat(2)])
    decoder = authenticated()
    assert decoder.feed(frames[0]) == [Heartbeat(1)]
    with pytest.raises(ProtocolError, match="authentication"):
        body = encode(Leave())[4:]
        decoder.feed(struct.pack(">I", len(body) + TAG_SIZE) + body + b"\0" * TAG_SIZE)
    with pytest.raises(ProtocolError, match="authentication"):
        authenticated().feed(sealed([Leave()], key=KEY_B)[0])


def test_a_replayed_dropped_or_reordered_frame_is_refused() -> None:
    one, two, three = sealed([Heartbeat(1), Heartbeat(2), Heartbeat(3)])
    for stream in (one + one, one + three, two + one):
        decoder = authenticated()
        with pytest.raises(ProtocolError, match="authentication"):
            decoder.feed(stream)


def test_a_frame_cannot_be_reflected_back_to_its_sender() -> None:
    mine = sealed([Heartbeat(1)], key=KEY_A)[0]
    with pytest.raises(ProtocolError, match="authentication"):
        authenticated(KEY_B).feed(mine)  # I receive under the other direction's key


@given(st.integers(0, 200), st.integers(0, 7))
def test_any_bit_flipped_in_a_sealed_frame_is_refused(position: int, bit: int) -> None:
    data = bytearray(sealed([Refused("x" * 100)])[0])
    position = 4 + position % (len(data) - 4)  # the length prefix has its own checks
    data[position] ^= 1 << bit
    with pytest.raises(ProtocolError):
        authenticated().feed(bytes(data))


def test_the_frame_limit_counts_the_body_not_the_tag() -> None:
    frame_bytes = sealed([Refused("x" * 100)])[0]
    body = len(frame_bytes) - 4 - TAG_SIZE
    assert authenticated(max_frame_size=body).feed(frame_bytes) == [Refused("x" * 100)]
    with pytest.raises(FrameTooLarge):
        authenticated(max_frame_size=body - 1).feed(frame_bytes)


def test_an_authenticated_frame_shorter_than_its_tag_is_refused() -> None:
    with pytest.raises(ProtocolError, match="shorter"):
        authenticated().feed(struct.pack(">I", TAG_SIZE - 1) + b"x" * (TAG_SIZE - 1))


def test_feed_with_a_limit_leaves_the_frames_behind_for_the_new_key() -> None:
    """The last handshake frame and the first authenticated ones may arrive in one read."""
    data = encode(Refused("last plain")) + b"".join(sealed([Heartbeat(1), Heartbeat(2)]))
    decoder = FrameDecoder()
    assert decoder.feed(data, limit=1) == [Refused("last plain")]
    assert decoder.buffered == len(data) - len(encode(Refused("last plain")))
    decoder.authenticate(KEY_A)
    assert decoder.feed(b"") == [Heartbeat(1), Heartbeat(2)]


@given(st.lists(st.binary(max_size=64), max_size=10))
def test_random_bytes_after_the_handshake_only_ever_raise_protocol_errors(chunks: list[bytes]) -> None:
    decoder = authenticated(max_frame_size=4096)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except ProtocolError:
        pass


# --- limits per kind (issue 20) --------------------------------------------------


def test_a_16_mib_gossip_frame_is_refused_when_its_first_six_bytes_arrive() -> None:
    """Row 4: 16M empty arrays in one Gossip stalled a member 12.2 s at 1.2 GB; now nothing is decoded."""
    decoder = FrameDecoder(DEFAULT_MAX_FRAME)
    head = struct.pack(">I", DEFAULT_MAX_FRAME) + b"\x92\x0a\xdd" + (DEFAULT_MAX_FRAME - 7).to_bytes(4, "big")
    assert decoder.feed(head[:5]) == []  # the kind is not known yet: nothing refused, nothing decoded
    with pytest.raises(FrameTooLarge, match="Gossip frame, over the 1048576-byte limit"):
        decoder.feed(head[5:6])


def test_a_size_request_naming_a_4_mib_cache_is_refused_by_its_kinds_limit() -> None:
    """Row 2: a 4 MiB name, answered by a reply echoing it, for a peer that never reads."""
    data = framed([SizeRequest.code, "n" * (4 << 20)])
    with pytest.raises(FrameTooLarge, match="SizeRequest frame, over the 1024-byte limit"):
        FrameDecoder().feed(data[:6])


def test_every_message_naming_a_cache_refuses_a_name_over_255_bytes() -> None:
    for msg in (SizeRequest("n" * 256), Ops("é" * 128, []), Pull("n" * 4000, [])):
        with pytest.raises(ProtocolError, match="cache name is at most 255 bytes"):
            decode_one(encode(msg))
    assert decode_one(encode(SizeRequest("n" * 255))) == SizeRequest("n" * 255)


def test_a_small_kind_cannot_claim_a_long_array_even_within_its_frame_limit() -> None:
    body = b"\x92\x0a\xdd" + (2000 * 1024).to_bytes(4, "big") + b"\x90" * 4097
    with pytest.raises(ProtocolError, match="max_array_len"):
        FrameDecoder().feed(frame(body))


def test_a_bulk_frame_holding_more_arrays_than_its_size_allows_is_stopped_while_decoding() -> None:
    count = 200_000  # 16 bytes per op-shaped array of 15 empty arrays: 16 arrays per 16 bytes
    body = b"\x93\x14\xa1c\xdd" + count.to_bytes(4, "big") + (b"\x9f" + b"\x90" * 15) * count
    with pytest.raises(ProtocolError, match="more arrays and maps than its size allows"):
        FrameDecoder().feed(frame(body))


def test_an_honest_ops_frame_of_the_smallest_ops_decodes() -> None:
    ops = [[1, 0, None, None, 2**40, 1]] * 10_000  # 15 bytes each: a delete of key 0 by node 1
    msg = Ops("c", ops)
    assert len(encode(msg)) > 64 * 1024
    assert decode_one(encode(msg)) == msg


def test_a_frame_whose_body_is_no_message_array_is_refused_at_its_first_byte() -> None:
    with pytest.raises(ProtocolError, match="msgpack array of 1 to 15 items"):
        FrameDecoder().feed(struct.pack(">I", 1 << 20) + b"\xdc")


def test_every_registered_kind_has_its_own_size_bounds() -> None:
    """A kind left out of BOUNDS gets 64 KiB: a new bulk kind would fail in production, not here."""
    from shoal.messages import MESSAGE_TYPES
    from shoal.wire import BOUNDS

    unbounded = {cls.__name__ for code, cls in MESSAGE_TYPES.items() if code not in BOUNDS}
    assert unbounded <= {name for name in unbounded if name.startswith("_")}, unbounded

"""
The MessagePack hub protocol without I/O: golden bytes from HubProtocol.md, Microsoft's
.NET and TypeScript test suites and the real-server transcripts; varint framing split at
every byte; payload types; every invalid payload gives a ProtocolError.
"""

from __future__ import annotations

import base64
import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsignalr._core_codecs import JSON, MESSAGEPACK, hub_codec
from txsignalr._core_msgpack import (
    MessagePackExt,
    VarIntSplitter,
    encode_ack,
    encode_cancel_invocation,
    encode_close,
    encode_completion,
    encode_invocation,
    encode_sequence,
    encode_stream_invocation,
    encode_stream_item,
    frame,
    pack,
    parse_body,
    unpack,
)
from txsignalr._core_protocol import (
    PING,
    Ack,
    CancelInvocation,
    Close,
    Completion,
    Invocation,
    Sequence,
    StreamInvocation,
    StreamItem,
)
from txsignalr.errors import MessageTooLarge, ProtocolError

UTC = datetime.timezone.utc


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# -- framing ------------------------------------------------------------------------

VARINTS = [
    (0, "00"),
    (11, "0b"),
    (127, "7f"),
    (128, "80 01"),
    (5248, "80 29"),
    (16383, "ff 7f"),
    (16384, "80 80 01"),
]


@pytest.mark.parametrize(("size", "prefix"), VARINTS)
def test_varint_prefix(size: int, prefix: str) -> None:
    body = b"x" * size
    assert frame(body) == h(prefix) + body
    assert VarIntSplitter(1 << 20).feed(frame(body)) == [body]


def test_largest_prefix_reads_and_is_over_any_sane_limit() -> None:
    with pytest.raises(MessageTooLarge):
        VarIntSplitter(1 << 24).feed(h("ff ff ff ff 07"))


def test_spec_example_two_frames() -> None:
    data = h("0b 48 65 6c 6c 6f 0a 57 6f 72 6c 64 02 01 02")
    assert VarIntSplitter(100).feed(data) == [b"Hello\nWorld", b"\x01\x02"]


def test_ts_vector_two_messages() -> None:
    assert VarIntSplitter(1000).feed(h("01 ff 01 7f")) == [b"\xff", b"\x7f"]


@pytest.mark.parametrize("data", ["ff ff ff ff ff", "80 80 80 80 08"])
def test_prefix_over_2gb(data: str) -> None:
    with pytest.raises(ProtocolError, match="bigger than 2GB"):
        VarIntSplitter(1 << 40).feed(h(data))


def test_incomplete_prefix_and_body_wait_for_more() -> None:
    splitter = VarIntSplitter(1000)
    assert splitter.feed(h("80")) == []
    assert splitter.buffered == 1
    assert splitter.feed(h("01")) == []
    assert splitter.feed(b"a" * 127) == []
    assert splitter.feed(b"b") == [b"a" * 127 + b"b"]
    assert splitter.buffered == 0
    splitter2 = VarIntSplitter(1000)
    assert splitter2.feed(h("02 00")) == []
    assert splitter2.feed(h("01 00")) == [b"\x00\x01", b""]


def test_message_over_the_limit() -> None:
    splitter = VarIntSplitter(10)
    assert splitter.feed(frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(MessageTooLarge):
        splitter.feed(frame(b"x" * 11))


def test_big_message_in_small_chunks_is_linear() -> None:
    # Every chunk only appends; the body is assembled once (a quadratic re-copy of 4 MiB
    # in 1 KiB chunks would take seconds, not milliseconds).
    body = bytes(range(256)) * (4 * 4096)
    data = frame(body)
    splitter = VarIntSplitter(len(body))
    out = []
    for i in range(0, len(data), 1024):
        out += splitter.feed(data[i : i + 1024])
    assert out == [body]


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_any_split_gives_the_same_messages(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(b) for b in bodies)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=10)))
    splitter = VarIntSplitter(1000)
    out: list[bytes] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out += splitter.feed(stream[last:cut])
        last = cut
    assert out == bodies
    assert splitter.buffered == 0


# -- golden messages ----------------------------------------------------------------

GOLDEN_BODIES = [
    # HubProtocol.md and MessagePackHubProtocolTestBase.cs (bodies, no prefix)
    ("96 01 80 a3 78 79 7a a6 6d 65 74 68 6f 64 91 2a 90", Invocation("method", (42,), "xyz")),
    ("96 01 80 c0 a6 6d 65 74 68 6f 64 91 2a 90", Invocation("method", (42,))),
    (
        "96 01 82 a1 78 a1 79 a1 7a a1 7a a3 78 79 7a a6 6d 65 74 68 6f 64 91 2a 90",
        Invocation("method", (42,), "xyz", headers={"x": "y", "z": "z"}),
    ),
    (
        "96 04 80 a3 78 79 7a a6 6d 65 74 68 6f 64 91 2a 90",
        StreamInvocation("xyz", "method", (42,)),
    ),
    ("94 02 80 a3 78 79 7a 2a", StreamItem("xyz", 42)),
    ("95 03 80 a3 78 79 7a 01 a5 45 72 72 6f 72", Completion("xyz", error="Error")),
    ("94 03 80 a3 78 79 7a 02", Completion("xyz")),
    ("95 03 80 a3 78 79 7a 03 2a", Completion("xyz", 42, True)),
    ("95 03 80 a3 78 79 7a 03 c0", Completion("xyz", None, True)),
    ("93 05 80 a3 78 79 7a", CancelInvocation("xyz")),
    ("91 06", PING),
    ("93 07 c0 c2", Close()),
    ("92 07 a3 78 79 7a", Close("xyz")),
    ("93 07 a6 45 72 72 6f 72 21 c3", Close("Error!", True)),
    ("92 08 cc 24", Ack(36)),
    ("92 08 24", Ack(36)),
    ("92 09 cc 13", Sequence(19)),
    # real server (ASP.NET Core 2.2.2) transcript
    ("95 03 80 a1 31 03 cb 40 14 00 00 00 00 00 00", Completion("1", 5.0, True)),
    ("95 01 80 c0 a4 74 69 63 6b 91 0f", Invocation("tick", (15,))),
    # extra trailing element ignored (TS test)
    ("95 03 80 a3 61 62 63 02 00", Completion("abc")),
]


@pytest.mark.parametrize(("body", "message"), GOLDEN_BODIES)
def test_golden_bodies_parse(body: str, message: object) -> None:
    assert parse_body(h(body)) == message


def test_base64_vectors_of_the_dotnet_suite() -> None:
    assert parse_body(base64.b64decode("lgGAo3h5eqZtZXRob2SQkA==")) == Invocation(
        "method", (), "xyz"
    )
    assert parse_body(base64.b64decode("kQY=")) is PING
    assert parse_body(base64.b64decode("kwfAwg==")) == Close()
    assert parse_body(base64.b64decode("kwemRXJyb3Ihwg==")) == Close("Error!")
    assert parse_body(base64.b64decode("lQOAo3h5egOjT25l")) == Completion("xyz", "One", True)


# What Microsoft's TypeScript client writes (core.md §8.4, MessagePackHubProtocol.test.ts).
GOLDEN_WRITES = [
    (encode_invocation("Add", [40, 2], "0"), "0c 95 01 80 a1 30 a3 41 64 64 92 28 02"),
    (encode_invocation("Notify", ["hi"]), "0f 95 01 80 c0 a6 4e 6f 74 69 66 79 91 a2 68 69"),
    (encode_invocation("Void", [], "1"), "0b 95 01 80 a1 31 a4 56 6f 69 64 90"),
    (
        encode_stream_invocation("Counter", [3], "3"),
        "0f 95 04 80 a1 33 a7 43 6f 75 6e 74 65 72 91 03",
    ),
    (encode_invocation("Sum", [], "5", ["4"]), "0d 96 01 80 a1 35 a3 53 75 6d 90 91 a1 34"),
    (encode_stream_item("4", 1), "06 94 02 80 a1 34 01"),
    (encode_completion("4"), "06 94 03 80 a1 34 02"),
    (
        encode_completion("s1", "from-client:q?"),
        "16 95 03 80 a2 73 31 03 ae 66 72 6f 6d 2d 63 6c 69 65 6e 74 3a 71 3f",
    ),
    (encode_completion("abc", error="Err"), "0c 95 03 80 a3 61 62 63 01 a3 45 72 72"),
    (encode_completion("abc", None), "09 95 03 80 a3 61 62 63 03 c0"),
    (encode_completion("abc", False), "09 95 03 80 a3 61 62 63 03 c2"),
    (encode_cancel_invocation("abc"), "07 93 05 80 a3 61 62 63"),
    (MESSAGEPACK.ping, "02 91 06"),
    (MESSAGEPACK.close, "03 92 07 c0"),
    (encode_close(), "03 92 07 c0"),
    (encode_close("Error!", True), "0a 93 07 a6 45 72 72 6f 72 21 c3"),
    (encode_ack(1), "03 92 08 01"),
    (encode_sequence(2), "03 92 09 02"),
]


@pytest.mark.parametrize(("written", "expected"), GOLDEN_WRITES)
def test_golden_writes(written: bytes, expected: str) -> None:
    assert written == h(expected)


def test_writes_round_trip() -> None:
    for written, _ in GOLDEN_WRITES:
        (body,) = VarIntSplitter(1000).feed(written)
        message = parse_body(body)
        assert message is not None


# -- payload types ------------------------------------------------------------------


def test_timestamp_decodes_to_aware_utc_datetime() -> None:
    assert unpack(h("d6 ff 58 ec 1c 80")) == datetime.datetime(2017, 4, 11, tzinfo=UTC)
    message = parse_body(h("95 03 80 a3 61 62 63 03 d6 ff 5a 4a 1a 50"))
    assert message == Completion("abc", datetime.datetime(2018, 1, 1, 11, 24, tzinfo=UTC), True)
    assert message.result.tzinfo is not None  # type: ignore[union-attr]


def test_datetime_encodes_as_timestamp() -> None:
    assert pack(datetime.datetime(2017, 4, 11, tzinfo=UTC)) == h("d6 ff 58 ec 1c 80")
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    assert pack(datetime.datetime(2017, 4, 11, 2, tzinfo=plus2)) == h("d6 ff 58 ec 1c 80")
    # naive datetimes are taken as UTC
    assert pack(datetime.datetime(2017, 4, 11)) == h("d6 ff 58 ec 1c 80")
    with_micro = datetime.datetime(1900, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert unpack(pack(with_micro)) == with_micro


def test_bytes_are_bin_both_ways() -> None:
    assert pack(b"\x01\x02\x03") == h("c4 03 01 02 03")
    assert pack(bytearray(b"\x01")) == h("c4 01 01")
    (body,) = VarIntSplitter(100).feed(encode_invocation("Blob", [b"\x00\xff"], "1"))
    assert parse_body(body) == Invocation("Blob", (b"\x00\xff",), "1")


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**32, 2**63 - 1, -(2**63), 2**64 - 1],
)
def test_integers_of_every_width(value: int) -> None:
    assert unpack(pack(value)) == value


def test_integers_outside_msgpack_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_invocation("Big", [2**64], "1")
    with pytest.raises(TypeError):
        encode_invocation("Bad", [object()], "1")


def test_maps_with_non_string_keys() -> None:
    value = {1: "one", 2: "two", None: "nil", 1.5: "x", b"k": "bin"}
    assert unpack(pack(value)) == value
    assert unpack(h("82 01 a1 61 02 a1 62")) == {1: "a", 2: "b"}


def test_other_extension_types_round_trip() -> None:
    ext = unpack(h("d4 05 01"))
    assert ext == MessagePackExt(5, b"\x01")
    assert pack(ext) == h("d4 05 01")


def test_float32_and_float64() -> None:
    assert unpack(h("ca 42 28 00 00")) == 42.0
    assert pack(1.5) == h("cb 3f f8 00 00 00 00 00 00")


def test_nil_result_is_not_void() -> None:
    nil = parse_body(h("95 03 80 a1 31 03 c0"))
    void = parse_body(h("94 03 80 a1 31 02"))
    assert nil == Completion("1", None, True)
    assert void == Completion("1", None, False)
    assert nil != void


# -- invalid payloads ---------------------------------------------------------------

INVALID = [
    "",  # empty message
    "c1",  # never-used byte
    "a3 61 62",  # truncated string
    "81 a1 61 01",  # a map, not an array
    "90",  # an empty array
    "91 a1 31",  # type is not an integer
    "94 01 80 c0 a1 6d",  # Invocation: too few elements
    "95 01 80 c0 c0 90",  # Invocation: no target
    "95 01 80 c0 a1 6d 01",  # Invocation: arguments not an array
    "95 01 80 01 a1 6d 90",  # Invocation: id not a string
    "96 01 80 a1 31 a1 6d 90 91 01",  # Invocation: stream ids not strings
    "95 01 01 c0 a1 6d 90",  # headers not a map
    "95 01 81 a1 61 01 c0 a1 6d 90",  # headers not strings
    "95 04 80 c0 a1 6d 90",  # StreamInvocation without an id
    "93 02 80 a1 31",  # StreamItem without item
    "93 03 80 a1 31",  # Completion without a kind
    "94 03 80 a1 31 03",  # non-void Completion without its result
    "94 03 80 a1 31 01",  # error Completion without its error
    "95 03 80 a1 31 01 01",  # error is not a string
    "95 03 80 a1 31 07 01",  # unknown result kind
    "92 05 80",  # Cancel without id
    "91 07",  # Close without error element
    "92 07 01",  # Close error not a string
    "93 07 c0 01",  # Close allowReconnect not a bool
    "91 08",  # Ack without id
    "92 09 a1 31",  # Sequence id not an integer
]


@pytest.mark.parametrize("body", INVALID)
def test_invalid_payloads_are_protocol_errors(body: str) -> None:
    with pytest.raises(ProtocolError):
        parse_body(h(body))


def test_unknown_type_is_ignored() -> None:
    assert parse_body(h("92 63 01")) is None


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_fail_typed(body: bytes) -> None:
    try:
        parse_body(body)
    except ProtocolError:
        pass


# -- the codec interface ------------------------------------------------------------


def test_codecs_by_name() -> None:
    assert hub_codec("json") is JSON
    assert hub_codec("messagepack") is MESSAGEPACK
    assert (JSON.transfer_format, MESSAGEPACK.transfer_format) == ("Text", "Binary")
    assert (JSON.binary, MESSAGEPACK.binary) == (False, True)
    with pytest.raises(ValueError, match="'json' or 'messagepack'"):
        hub_codec("protobuf")


@pytest.mark.parametrize("codec", [JSON, MESSAGEPACK], ids=["json", "messagepack"])
def test_both_codecs_round_trip_every_message(codec: object) -> None:
    from txsignalr._core_codecs import HubCodec

    assert isinstance(codec, type(JSON)) or isinstance(codec, type(MESSAGEPACK))
    c: HubCodec = codec  # type: ignore[assignment]
    stream = b"".join(
        [
            c.encode_invocation("m", [1, "a", None], "1", ["2"]),
            c.encode_invocation("n", []),
            c.encode_stream_invocation("s", [3], "4"),
            c.encode_stream_item("2", {"k": [1]}),
            c.encode_completion("2"),
            c.encode_completion("5", None),
            c.encode_completion("6", error="bad"),
            c.encode_cancel("4"),
            c.ping,
            c.encode_ack(3),
            c.encode_sequence(4),
            c.encode_close("why", True),
        ]
    )
    parsed = [c.parse(r) for r in c.splitter(1000).feed(stream)]
    assert parsed == [
        Invocation("m", (1, "a", None), "1", ("2",)),
        Invocation("n", ()),
        StreamInvocation("4", "s", (3,)),
        StreamItem("2", {"k": [1]}),
        Completion("2"),
        Completion("5", None, True),
        Completion("6", error="bad"),
        CancelInvocation("4"),
        PING,
        Ack(3),
        Sequence(4),
        Close("why", True),
    ]

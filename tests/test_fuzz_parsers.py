"""
Property-based tests of every parser a server's bytes reach: classic frames and
negotiate bodies, the ASP.NET Core negotiate and handshake, JSON and MessagePack hub
messages, the record and length-prefix splitters, the event-stream parser.

Two properties throughout: any input gives a result or a typed ``SignalRError``
(never another exception), and the framing layers give the same messages however the
stream is cut into chunks.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txsignalr._core_msgpack import VarIntSplitter, frame, pack, parse_body
from txsignalr._core_negotiate import parse_core_negotiate
from txsignalr._core_protocol import HandshakeParser, RecordSeparatorSplitter, parse_record
from txsignalr._protocol import parse_frame, parse_negotiate
from txsignalr._sse import EventStreamParser
from txsignalr.errors import MessageTooLarge, SignalRError

#: examples per property (TXS_FUZZ_EXAMPLES=5000 for a long local run)
EXAMPLES = int(os.environ.get("TXS_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: JSON values, small and deep enough to reach every branch of the parsers
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def objects(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects whose keys are mostly the ones a parser looks at."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=4), json_values, max_size=8)


def cuts(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut into chunks at random places (possibly empty chunks)."""

    def chunks(points: list[int]) -> list[bytes]:
        edges = [0, *sorted(points), len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges)]

    return st.lists(st.integers(0, len(data)), max_size=12).map(chunks)


def typed(call: Any, *args: Any) -> Any:
    """Run the parser; a SignalRError is a fine answer to bad input, nothing else is."""
    try:
        return call(*args)
    except SignalRError as e:
        assert str(e)  # says what was wrong
        return e


# -- classic ------------------------------------------------------------------------

CLASSIC_KEYS = ["C", "M", "S", "G", "T", "D", "E", "I", "R", "H", "P", "L", "A", "Id"]


@FUZZ
@given(st.binary(max_size=200))
def test_classic_frames_from_any_bytes(data: bytes) -> None:
    typed(parse_frame, data)


@FUZZ
@given(objects(CLASSIC_KEYS))
def test_classic_frames_from_any_object(obj: dict[str, Any]) -> None:
    if "M" in obj and not isinstance(obj["M"], list):
        obj["M"] = [obj["M"]]
    typed(parse_frame, json.dumps(obj).encode())


@FUZZ
@given(st.lists(objects(["H", "M", "A", "I", "S"]), max_size=4))
def test_classic_hub_messages_from_any_object(messages: list[Any]) -> None:
    """Broken messages inside M never break the frame: it parses, or is typed."""
    typed(parse_frame, json.dumps({"C": "d-1", "M": messages}).encode())


NEGOTIATE_KEYS = [
    "Url", "ConnectionToken", "ConnectionId", "KeepAliveTimeout", "DisconnectTimeout",
    "ConnectionTimeout", "TryWebSockets", "ProtocolVersion", "TransportConnectTimeout",
    "LongPollDelay", "RedirectUrl", "AccessToken",
]  # fmt: skip


@FUZZ
@given(objects(NEGOTIATE_KEYS), st.sampled_from([200, 200, 302, 400, 500]))
def test_classic_negotiate_from_any_object(obj: dict[str, Any], status: int) -> None:
    typed(parse_negotiate, json.dumps(obj).encode(), status)


@FUZZ
@given(st.binary(max_size=200))
def test_classic_negotiate_from_any_bytes(body: bytes) -> None:
    typed(parse_negotiate, body)


# -- ASP.NET Core ---------------------------------------------------------------------

CORE_NEGOTIATE_KEYS = [
    "connectionId", "connectionToken", "negotiateVersion", "availableTransports", "url",
    "accessToken", "error", "useStatefulReconnect", "ProtocolVersion",
]  # fmt: skip


@FUZZ
@given(objects(CORE_NEGOTIATE_KEYS), st.sampled_from([200, 200, 404, 500]))
def test_core_negotiate_from_any_object(obj: dict[str, Any], status: int) -> None:
    typed(parse_core_negotiate, status, json.dumps(obj).encode())


@FUZZ
@given(st.binary(max_size=200))
def test_core_negotiate_from_any_bytes(body: bytes) -> None:
    typed(parse_core_negotiate, 200, body)


@FUZZ
@given(st.binary(max_size=120), st.data())
def test_core_handshake_from_any_bytes_in_any_chunks(data: bytes, draw: st.DataObject) -> None:
    parser = HandshakeParser(max_size=64)
    for chunk in draw.draw(cuts(data)):
        if typed(parser.feed, chunk) is not None:
            break


@FUZZ
@given(st.binary(max_size=60), st.data())
def test_core_handshake_answer_however_cut(rest: bytes, draw: st.DataObject) -> None:
    """``{}\\x1e`` then hub records: the answer and every byte after it, whatever the cuts."""
    stream = b"{}\x1e" + rest
    parser = HandshakeParser()
    got = None
    after = b""
    for chunk in draw.draw(cuts(stream)):
        if got is None:
            got = parser.feed(chunk)
            if got is not None:
                after = got[1]
        else:
            after += chunk
    assert got is not None
    assert after == rest


CORE_KEYS = [
    "type", "target", "arguments", "invocationId", "streamIds", "item", "result", "error",
    "allowReconnect", "headers", "sequenceId",
]  # fmt: skip


@FUZZ
@given(objects(CORE_KEYS), st.integers(-1, 12))
def test_core_json_messages_from_any_object(obj: dict[str, Any], kind: int) -> None:
    obj.setdefault("type", kind)
    typed(parse_record, json.dumps(obj).encode())


@FUZZ
@given(st.binary(max_size=200))
def test_core_json_messages_from_any_bytes(record: bytes) -> None:
    typed(parse_record, record)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@FUZZ
@given(st.integers(-1, 12), st.lists(msgpack_values, max_size=7))
def test_core_messagepack_messages_from_any_array(kind: int, fields: list[Any]) -> None:
    typed(parse_body, pack([kind, *fields]))


@FUZZ
@given(msgpack_values)
def test_core_messagepack_messages_from_any_value(value: Any) -> None:
    typed(parse_body, pack(value))


@FUZZ
@given(st.binary(max_size=200))
def test_core_messagepack_messages_from_any_bytes(body: bytes) -> None:
    typed(parse_body, body)


# -- framing however cut ----------------------------------------------------------------

records = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\x1e", b"")), max_size=8)


@FUZZ
@given(records, st.data())
def test_record_separator_splitter_however_cut(messages: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(m + b"\x1e" for m in messages)
    splitter = RecordSeparatorSplitter(max_size=64)
    got: list[bytes] = []
    for chunk in draw.draw(cuts(stream)):
        got += splitter.feed(chunk)
    assert got == messages
    assert splitter.buffered == 0


@FUZZ
@given(st.integers(1, 30), st.data())
def test_record_separator_splitter_bounds_an_endless_record(
    limit: int, draw: st.DataObject
) -> None:
    """A record that never ends fails with MessageTooLarge once past the limit."""
    splitter = RecordSeparatorSplitter(max_size=limit)
    stream = b"x" * (limit + 1)
    try:
        for chunk in draw.draw(cuts(stream)):
            splitter.feed(chunk)
    except MessageTooLarge:
        assert splitter.buffered == 0
    else:
        raise AssertionError("no MessageTooLarge")


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6), st.data())
def test_varint_splitter_however_cut(bodies: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(frame(b) for b in bodies)
    splitter = VarIntSplitter(max_size=300)
    got: list[bytes] = []
    for chunk in draw.draw(cuts(stream)):
        got += splitter.feed(chunk)
    assert got == bodies
    assert splitter.buffered == 0


@FUZZ
@given(st.binary(max_size=200), st.data())
def test_varint_splitter_from_any_bytes(data: bytes, draw: st.DataObject) -> None:
    splitter = VarIntSplitter(max_size=100)
    for chunk in draw.draw(cuts(data)):
        if isinstance(typed(splitter.feed, chunk), SignalRError):
            break


sse_lines = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=20
)


@FUZZ
@given(
    st.lists(st.lists(sse_lines, min_size=1, max_size=3), max_size=5),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.data(),
)
def test_event_stream_however_cut(
    events: list[list[str]], newline: bytes, draw: st.DataObject
) -> None:
    """data: lines joined with LF, a blank line ends an event; comments ignored;
    the same events whatever the line ends and the cuts."""
    stream = b""
    for lines in events:
        stream += b":comment" + newline
        for line in lines:
            stream += b"data: " + line.encode() + newline
        stream += newline
    parser = EventStreamParser(max_size=10_000)
    got: list[bytes] = []
    for chunk in draw.draw(cuts(stream)):
        got += parser.feed(chunk)
    assert got == [b"\n".join(line.encode() for line in lines) for lines in events]


@FUZZ
@given(st.binary(max_size=300), st.data())
def test_event_stream_from_any_bytes(data: bytes, draw: st.DataObject) -> None:
    parser = EventStreamParser(max_size=64)
    for chunk in draw.draw(cuts(data)):
        if isinstance(typed(parser.feed, chunk), SignalRError):
            break


@FUZZ
@given(st.integers(1, 50), st.data())
def test_event_stream_bounds_a_line_that_never_ends(limit: int, draw: st.DataObject) -> None:
    parser = EventStreamParser(max_size=limit)
    stream = b"data: " + b"y" * (limit + 1)
    try:
        for chunk in draw.draw(cuts(stream)):
            parser.feed(chunk)
    except MessageTooLarge:
        pass
    else:
        raise AssertionError("no MessageTooLarge")

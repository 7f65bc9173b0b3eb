"""
The WebSocket receive fast path gives exactly what autobahn's own processing gives.

Each input is fed to txsignalr's client protocol twice: once as it runs (its own
frame parser for the common frames) and once through autobahn's ``dataReceived``
alone; the payloads handed upward, what the client wrote back (pongs, close frames),
the close code and the protocol state must match, however the bytes are cut.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientProtocol
from helpers import wait_until, within
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.testing import StringTransport

from txsignalr import HubConnection
from txsignalr._core_protocol import (
    Invocation,
    parse_message,
    parse_record,
    parse_record_plain,
)
from txsignalr._sse import EventStreamParser
from txsignalr._websocket import _ClientFactory, _ClientProtocol
from txsignalr.errors import MessageTooLarge, ProtocolError
from txsignalr.testing import EchoHub, SignalRServer

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ROOT = Path(__file__).resolve().parent.parent
reactor: Any = _reactor


def frame(
    payload: bytes,
    opcode: int = 1,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length_bytes: int | None = None,
) -> bytes:
    """One server frame (unmasked unless ``mask``; minimal length unless told)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    m = 0x80 if mask is not None else 0
    width = length_bytes if length_bytes is not None else (0 if n < 126 else 2 if n < 65536 else 8)
    if width == 0:
        head += bytes([m | n])
    elif width == 2:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask is not None:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, unmasked payload) of every frame the client wrote."""
    out = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        mask = data[i : i + 4]
        i += 4
        out.append((opcode, bytes(b ^ mask[k % 4] for k, b in enumerate(data[i : i + n]))))
        i += n
    return out


class _Transport(StringTransport):
    """A StringTransport that, as a TCP transport, takes unregisterProducer() twice."""

    def unregisterProducer(self) -> None:
        self.producer = None


class _Reference(_ClientProtocol):
    """The same protocol with every byte going through autobahn's processing."""

    dataReceived = WebSocketClientProtocol.dataReceived


class _Sink:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.on_payload: Any = None

    def data_received(self, owner: Any, payload: bytes) -> None:
        self.payloads.append(payload)
        if self.on_payload is not None:
            self.on_payload(payload)


class _Owner:
    """Stands in for the WebSocketTransport: records what the protocol reports."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self.closed: list[tuple[bool, int | None]] = []

    def _opened(self, protocol: Any) -> None:
        pass

    def _closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        self.closed.append((was_clean, code))


def connected(reference: bool = False, max_size: int = 0) -> tuple[Any, _Transport, _Owner]:
    """An open client protocol over a StringTransport."""
    owner = _Owner()
    factory = _ClientFactory(owner, "ws://127.0.0.1:1/hub", {})  # type: ignore[arg-type]
    factory.protocol = _Reference if reference else _ClientProtocol
    factory.setProtocolOptions(
        autoPingInterval=0,
        autoPingTimeout=0,
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        serverConnectionDropTimeout=0,
        utf8validateIncoming=False,
        maxMessagePayloadSize=max_size,
        maxFramePayloadSize=max_size,
    )
    proto = factory.buildProtocol(None)
    transport = _Transport()
    proto.makeConnection(transport)
    request = transport.value().decode("latin-1")
    key = re.search(r"Sec-WebSocket-Key: (\S+)", request, re.I)
    assert key is not None
    accept = base64.b64encode(hashlib.sha1(key.group(1).encode() + _GUID).digest()).decode()
    transport.clear()
    proto.dataReceived(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    assert proto.state == WebSocketClientProtocol.STATE_OPEN
    return proto, transport, owner


def outcome(data: bytes, cuts: list[int], reference: bool, max_size: int = 0) -> dict[str, Any]:
    proto, transport, owner = connected(reference, max_size)
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if cut > last:
            proto.dataReceived(data[last:cut])
            last = cut
    return {
        "payloads": owner._sink.payloads,
        "written": client_frames(transport.value()),
        "state": proto.state,
        "closed": owner.closed,
        "close_code": proto.localCloseCode,
        "lost": transport.disconnecting,
        "reason": proto.wasNotCleanReason,
    }


def same(data: bytes, cuts: list[int] = (), max_size: int = 0) -> dict[str, Any]:  # type: ignore[assignment]
    """The fast path's outcome, checked equal to autobahn's."""
    fast = outcome(data, list(cuts), False, max_size)
    slow = outcome(data, list(cuts), True, max_size)
    assert fast == slow
    return fast


# ------------------------------------------------------------------ plain data


def test_many_frames_in_one_read_arrive_in_order() -> None:
    """Text and binary frames of 7-, 16- and 64-bit lengths in one read: each payload once."""
    messages = [b"a" * 10, b"\x00\xff" * 100, b"x" * 70_000, b"", b"{}\x1e"]
    data = b"".join(frame(m, 2 if i % 2 else 1) for i, m in enumerate(messages))
    assert same(data)["payloads"] == messages


def test_split_at_every_byte_boundary() -> None:
    """Two cuts anywhere in a short stream (7- and 16-bit lengths, a ping between) lose nothing."""
    messages = [b"hello", b"y" * 300, b"z"]
    data = frame(messages[0]) + frame(messages[1], 2) + frame(b"p", 9) + frame(messages[2])
    for i in range(len(data) + 1):
        for j in (i, i + 1, i + 7, len(data) - 3):
            result = same(data, [i, j])
            assert result["payloads"] == messages
            assert result["written"] == [(10, b"p")]


def test_64_bit_length_split_around_header_and_end() -> None:
    """A 64-bit-length frame cut anywhere in its header or last bytes arrives whole."""
    message = bytes(range(256)) * 300
    data = frame(b"before") + frame(message, 2) + frame(b"after")
    points = [*range(0, 30), *range(len(data) - 30, len(data) + 1), 40_000]
    for cut in points:
        assert same(data, [cut])["payloads"] == [b"before", message, b"after"]


def test_a_frame_fed_one_byte_at_a_time() -> None:
    """Byte-by-byte reads give the same payloads as one read."""
    messages = [b"one", b"t" * 130, b"three"]
    data = b"".join(frame(m) for m in messages)
    assert same(data, list(range(len(data))))["payloads"] == messages


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(
        st.tuples(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([125, 126, 127, 65535, 65536, 66000]).map(lambda n: b"q" * n),
            ),
            st.sampled_from([1, 2]),
            st.integers(min_value=0, max_value=3),
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=140_000), max_size=12),
)
def test_any_split_of_any_frames_matches_autobahn(
    messages: list[tuple[bytes, int, int]], cuts: list[int]
) -> None:
    """Random frames (with pings, pongs and fragmented messages mixed in), cut at random points."""
    data = b""
    expected = []
    for payload, opcode, extra in messages:
        if extra == 1:
            data += frame(b"ping!", 9)
        elif extra == 2:
            data += frame(b"", 10)
        if extra == 3 and len(payload) > 1:
            half = len(payload) // 2
            data += frame(payload[:half], opcode, fin=False) + frame(payload[half:], 0)
        else:
            data += frame(payload, opcode)
        expected.append(payload)
    result = same(data, [c for c in cuts if c < len(data)])
    assert result["payloads"] == expected


# ------------------------------------------------------------------ control frames


def test_ping_between_data_frames_is_answered_in_place() -> None:
    """A ping is answered with its payload; the frames around it are delivered in order."""
    data = frame(b"1") + frame(b"are you there", 9) + frame(b"2") + frame(b"", 9) + frame(b"3")
    result = same(data)
    assert result["payloads"] == [b"1", b"2", b"3"]
    assert result["written"] == [(10, b"are you there"), (10, b"")]
    assert result["state"] == WebSocketClientProtocol.STATE_OPEN


def test_close_frame_is_answered_and_what_follows_goes_as_autobahn_has_it() -> None:
    """The server's close frame is echoed and the closing handshake starts, wherever the cut."""
    close = frame(struct.pack("!H", 1000) + b"bye", 8)
    data = frame(b"before") + close + frame(b"after")
    for cut in range(len(data) + 1):
        result = same(data, [cut])
        assert result["payloads"][0] == b"before"
        assert result["written"] == [(8, struct.pack("!H", 1000))]
        assert result["state"] == WebSocketClientProtocol.STATE_CLOSING


def test_fragmented_message_is_joined() -> None:
    """A message in three fragments (a ping among them) arrives as one payload."""
    data = (
        frame(b"ab", 1, fin=False)
        + frame(b"cd", 0, fin=False)
        + frame(b"x", 9)
        + frame(b"ef", 0)
        + frame(b"next")
    )
    for cut in range(len(data) + 1):
        result = same(data, [cut])
        assert result["payloads"] == [b"abcdef", b"next"]
        assert result["written"] == [(10, b"x")]


# ------------------------------------------------------------------ failures


def test_frame_over_the_limit_fails_the_connection_and_delivers_nothing_more() -> None:
    """A frame over max size is never handed upward; the TCP connection is dropped."""
    data = frame(b"ok") + frame(b"z" * 101) + frame(b"late")
    for cut in (0, 3, 5, 50, len(data)):
        result = same(data, [cut], max_size=100)
        assert result["payloads"] == [b"ok"]
        assert result["state"] == WebSocketClientProtocol.STATE_CLOSED
        assert result["lost"]
        # what WebSocketTransport turns into MessageTooLarge
        assert "exceeds payload limit" in result["reason"]


def test_frame_at_the_limit_is_delivered() -> None:
    """A frame of exactly max size bytes is delivered."""
    assert same(frame(b"z" * 100), max_size=100)["payloads"] == [b"z" * 100]


@pytest.mark.parametrize(
    "bad",
    [
        frame(b"masked", mask=b"\x01\x02\x03\x04"),
        frame(b"rsv", rsv=1),
        frame(b"rsv", rsv=4),
        frame(b"reserved opcode", 3),
        frame(b"reserved control", 11),
        frame(b"continuation outside a message", 0),
        frame(b"short", length_bytes=2),
        frame(b"w" * 200, length_bytes=8),
    ],
    ids=["masked", "rsv1", "rsv4", "opcode3", "opcode11", "stray-continuation", "long16", "long64"],
)
def test_protocol_violations_fail_the_connection_as_autobahn_does(bad: bytes) -> None:
    """Masked, RSV, reserved-opcode and non-minimal-length frames fail (drop) the connection."""
    data = frame(b"good") + bad + frame(b"never")
    for cut in (0, 7, len(data)):
        result = same(data, [cut])
        assert result["payloads"] == [b"good"]
        assert result["state"] == WebSocketClientProtocol.STATE_CLOSED
        assert result["lost"]
        assert "I dropped the WebSocket TCP connection" in result["reason"]


def test_a_handler_that_closes_stops_the_rest_of_the_read() -> None:
    """When a handler starts the closing handshake, later frames go as autobahn handles them."""
    data = frame(b"1") + frame(b"2") + frame(b"3")
    results = []
    for reference in (False, True):
        proto, transport, owner = connected(reference)

        def on_payload(payload: bytes, proto: Any = proto) -> None:
            if payload == b"1":
                proto.sendClose(1000)

        owner._sink.on_payload = on_payload
        proto.dataReceived(data)
        results.append((owner._sink.payloads, client_frames(transport.value()), proto.state))
    assert results[0] == results[1]
    assert results[0][1] == [(8, struct.pack("!H", 1000))]


def test_a_handler_that_drops_the_connection_stops_delivery() -> None:
    """dropConnection() from a handler: nothing after that frame is handed upward."""
    for reference in (False, True):
        proto, _transport, owner = connected(reference)
        owner._sink.on_payload = lambda payload, proto=proto: proto.dropConnection(abort=True)
        proto.dataReceived(frame(b"1") + frame(b"2"))
        assert owner._sink.payloads == [b"1"]


def test_data_fed_from_inside_a_handler_keeps_its_order() -> None:
    """A read delivered synchronously by a handler is taken after the current read."""
    proto, _transport, owner = connected()
    fed = []

    def on_payload(payload: bytes) -> None:
        if not fed:
            fed.append(True)
            proto.dataReceived(frame(b"later"))

    owner._sink.on_payload = on_payload
    proto.dataReceived(frame(b"first") + frame(b"second"))
    assert owner._sink.payloads == [b"first", b"second", b"later"]


# ------------------------------------------------------------------ SSE and Core records


@settings(max_examples=300, deadline=None)
@given(
    value=st.binary(max_size=60),
    ending=st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\r", b"\r\n\n", b"\n", b""]),
    prefix=st.sampled_from([b"data: ", b"data:", b"data:  ", b": c\n", b""]),
    max_size=st.sampled_from([4, 30, 1000]),
)
def test_sse_whole_event_chunk_matches_the_line_scanner(
    value: bytes, ending: bytes, prefix: bytes, max_size: int
) -> None:
    """A chunk fed whole gives what the same bytes give fed in two (the line-by-line scan)."""
    first = prefix + value + ending
    whole = EventStreamParser(max_size)
    split = EventStreamParser(max_size)
    try:
        got = whole.feed(first) + whole.feed(b"data: next\n\n")
    except MessageTooLarge:
        got = None
    try:
        expected = split.feed(first[:1]) + split.feed(first[1:]) + split.feed(b"data: next\n\n")
    except MessageTooLarge:
        expected = None
    assert got == expected


def test_sse_one_event_chunk_over_the_limit_is_refused() -> None:
    """An event chunk over max size raises MessageTooLarge on the quick path too."""
    with pytest.raises(MessageTooLarge):
        EventStreamParser(10).feed(b"data: " + b"x" * 10 + b"\r\n\r\n")
    assert EventStreamParser(10).feed(b"data: " + b"x" * 9 + b"\r\n\r\n") == [b"x" * 9]


@pytest.mark.parametrize(
    "record",
    [
        {"type": 1, "target": "tick", "arguments": [1, {"a": 2}]},
        {"type": 1, "target": "tick", "arguments": []},
        {"type": 1, "target": "", "arguments": []},
        {"type": 1, "target": "tick", "arguments": {}},
        {"type": 1, "target": 5, "arguments": []},
        {"type": True, "target": "tick", "arguments": []},
        {"type": 1.0, "target": "tick", "arguments": []},
        {"type": 1, "target": "tick", "arguments": [], "invocationId": "7"},
        {"type": 1, "target": "tick", "arguments": [], "headers": {"a": "b"}},
        {"type": 1, "target": "tick", "arguments": [], "streamIds": ["s"]},
        {"type": 1, "target": "tick", "x": []},
        {"type": 2, "invocationId": "1", "item": 3},
    ],
)
def test_core_json_quick_parse_gives_what_the_full_checks_give(record: dict[str, Any]) -> None:
    """parse_record and parse_record_plain agree with parse_message on every near-miss."""
    raw = json.dumps(record).encode()
    try:
        expected: Any = parse_message(json.loads(raw))
    except ProtocolError as e:
        expected = ("error", str(e))
    for parse in (parse_record, parse_record_plain):
        try:
            got: Any = parse(raw)
        except ProtocolError as e:
            got = ("error", str(e))
        if type(got) is tuple and got[0] != "error":
            got = Invocation(got[0], tuple(got[1]))
        assert got == expected


@pytest.mark.parametrize(
    "message",
    [
        [1, {}, None, "tick", [1, 2]],
        [1, {}, "", "tick", [1]],
        [1, {}, "7", "tick", [1]],
        [1, {"a": "b"}, None, "tick", [1]],
        [1, None, None, "tick", [1]],
        [1, {}, None, "", [1]],
        [1, {}, None, "tick", {}],
        [1, {}, None, "tick", [1], ["s"]],
        [1, {}, None, "tick", [1], []],
        [1, {}, None, "tick", [1], None],
        [True, {}, None, "tick", [1]],
        [1, [], None, "tick", [1]],
        [2, {}, "1", 3],
    ],
)
def test_core_msgpack_quick_parse_gives_what_the_full_checks_give(message: list[Any]) -> None:
    """parse_body and parse_body_plain agree with the full parsers on every near-miss."""
    pytest.importorskip("ormsgpack")
    import ormsgpack

    from txsignalr import _core_msgpack as mp

    body = ormsgpack.packb(message)
    kind = message[0]
    parser = mp._PARSERS.get(kind) if type(kind) is int else None
    try:
        if parser is None:
            raise ProtocolError("Invalid payload.", message)
        expected: Any = parser(message)
    except ProtocolError as e:
        expected = ("error", str(e))
    for parse in (mp.parse_body, mp.parse_body_plain):
        try:
            got: Any = parse(body)
        except ProtocolError as e:
            got = ("error", str(e))
        if type(got) is tuple and got[0] != "error":
            got = Invocation(got[0], tuple(got[1]))
        assert got == expected


# ------------------------------------------------------------------ over a real socket


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("protocol", ["classic", "json", "messagepack"])
async def test_loopback_sizes_and_bursts_arrive_whole_and_in_order(protocol: str) -> None:
    """Against the test server: echoes of every length width, then a burst of pushes, in order."""
    server = SignalRServer(reactor, hubs=[EchoHub()])
    await server.listen(port=0, interface="127.0.0.1")
    try:
        if protocol == "classic":
            conn = HubConnection(reactor, server.url, transports=["webSockets"])
            hub: Any = conn.hub("echo")
        else:
            conn = HubConnection(
                reactor,
                server.core_url("echo"),
                transports=["webSockets"],
                hub_protocol=protocol,
            )
            hub = conn
        seen: list[Any] = []
        hub.on("receive", seen.append)
        await within(conn.start())
        assert await within(hub.invoke("Echo", "e" * 50)) == "e" * 50
        # 7-, 16- and 64-bit frame lengths; 600 KB also crosses the hand-over to autobahn;
        # under 1,000 in all, the classic server's message buffer
        sizes = (10, 200, 70_000, 600_000, 5)
        for size in sizes:
            server.send_to_all("echo", "receive", "e" * size)
        for i in range(900):
            server.send_to_all("echo", "receive", i)
        await wait_until(lambda: len(seen) == 905, what="the pushes")
        assert seen == ["e" * size for size in sizes] + list(range(900))
        await within(conn.stop())
    finally:
        await server.stop()


# ------------------------------------------------------------------ the harness


def test_callgrind_receive_smoke() -> None:
    """bench/callgrind_receive.py --smoke runs every case and prints a figure for each."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "callgrind_receive.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for case in ("classic", "json", "msgpack"):
        assert re.search(
            rf"^{case} batch=1: floor [\d.]+ us/call, txsignalr [\d.]+ us/call", out, re.M
        ), out

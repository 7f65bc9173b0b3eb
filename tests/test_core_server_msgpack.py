"""
The MessagePack hub protocol on the ASP.NET Core side of ``txsignalr.testing``, over
real loopback sockets with a raw client: the handshake and its errors, binary
WebSocket messages, ``application/octet-stream`` polls, the refusal over Server-Sent
Events, every message type in .NET's layout (golden bytes from the ASP.NET Core
transcript), payload types, several messages per chunk and bad input.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers import running_reactor, sleep, within
from server_clients import (
    HANDSHAKE,
    MSGPACK_HANDSHAKE,
    CoreClient,
    core_negotiate,
    fetch,
    msgpack_frame,
    request,
)
from test_core_server import EchoHub as ServerEchoHub
from test_core_server_features import ClockReactor
from twisted.internet import defer, task

from txsignalr._core_msgpack import MessagePackExt
from txsignalr.testing import HubCall, SignalRServer

DATA = Path(__file__).parent / "data" / "transcripts-core"
TRANSCRIPT = DATA / "aspnet-WebSockets-messagepack.txt"
#: the transports that carry MessagePack (SSE is Text only)
BINARY_TRANSPORTS = ("WebSockets", "LongPolling")
binary_transports = pytest.mark.parametrize("transport", BINARY_TRANSPORTS)

UTC = datetime.timezone.utc


class EchoHub(ServerEchoHub):
    """The test echo hub, and what MessagePack values become on the server."""

    name = "echo"

    def Describe(self, call: HubCall, value: Any) -> str:
        """The Python type the server decoded ``value`` to."""
        return type(value).__name__

    def TooBig(self, call: HubCall) -> int:
        """A result MessagePack cannot carry."""
        return 2**70


pytestmark = pytest.mark.usefixtures("quiet_log")


@pytest.fixture
def server() -> Any:
    s = SignalRServer(running_reactor(), [EchoHub()])
    pytest_twisted.blockon(defer.ensureDeferred(s.listen()))
    yield s
    pytest_twisted.blockon(defer.ensureDeferred(s.stop()))


async def connected(server: SignalRServer, transport: str) -> CoreClient:
    client = CoreClient(server.core_url("echo"), transport, protocol="messagepack")
    assert await client.connect() == {}
    return client


def transcript_frames() -> list[tuple[str, str, bytes]]:
    """``(direction, "text" | "binary", payload)`` of each WebSocket message recorded."""
    frames = []
    for line in TRANSCRIPT.read_text().splitlines():
        m = re.match(r"\[[ \d.]+\] #\d+ (C->S|S->C) WS (text|binary): (.*)$", line)
        if m is None:
            continue
        if m[2] == "text":
            payload = m[3].encode().replace(b"\\x1e", b"\x1e")
        else:
            payload = bytes.fromhex(m[3])
        frames.append((m[1], m[2], payload))
    return frames


# -- handshake ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_websocket_handshake_answer_is_a_binary_message(server: SignalRServer) -> None:
    """The handshake goes up as text; {}␞ and every later message come back binary."""
    client = CoreClient(server.core_url("echo"), "WebSockets", protocol="messagepack")
    await client.negotiate()
    await client.open()
    await client.send(MSGPACK_HANDSHAKE, binary=False)
    assert await within(client.chunks.get(), 5) == b"{}\x1e"
    await client.invoke("Echo", "hello", invocation_id="0")
    assert await within(client.chunks.get(), 5) == bytes.fromhex(
        "0c 95 03 80 a1 30 03 a5 68 65 6c 6c 6f"
    )
    assert client.binary == [True, True]
    (handshake,) = server.events("handshake")
    assert (handshake["ok"], handshake["protocol"], handshake["version"]) == (
        True,
        "messagepack",
        1,
    )
    client.drop()


@pytest_twisted.ensureDeferred
async def test_transcript_golden_bytes(server: SignalRServer) -> None:
    """Microsoft's client's bytes from the ASP.NET Core transcript get the same bytes back."""
    frames = transcript_frames()
    client = CoreClient(server.core_url("echo"), "WebSockets", protocol="messagepack")
    await client.negotiate()
    await client.open()
    sent = [(kind, p) for d, kind, p in frames if d == "C->S"]
    expected = [p for d, _, p in frames if d == "S->C"]
    # ASP.NET Core 2.2 answers Add(2, 3) with the double 5.0 (cb 40 14 …), this hub with
    # the integer 5; its hub also ran a ticker (the last two frames).
    add = bytes.fromhex("0f 95 03 80 a1 31 03 cb 40 14 00 00 00 00 00 00")
    assert expected[2] == add
    expected[2] = bytes.fromhex("07 95 03 80 a1 31 03 05")
    expected = expected[:-2]
    for kind, payload in sent[:-1]:  # all but the Close
        await client.send(payload, binary=kind == "binary")
    got = [await within(client.chunks.get(), 5) for _ in expected]
    assert got == expected
    assert client.binary == [True] * len(expected)
    await client.send(sent[-1][1])  # [7, nil]
    assert await within(client.closed, 5) == 1000
    assert server.events("client_close")[0]["error"] is None


@pytest_twisted.ensureDeferred
async def test_long_polling_answers_octet_stream(server: SignalRServer) -> None:
    """Long polling: the polls carry {}␞ and then the binary messages, octet-stream."""
    _ex, neg = await core_negotiate(server.core_url("echo"))
    url = server.core_url("echo") + "?id=" + neg["connectionToken"]
    first, body = await fetch("GET", url + "&_=1")
    assert (first.code, body) == (200, b"")
    held = request("GET", url + "&_=2")
    post, body = await fetch(
        "POST", url, MSGPACK_HANDSHAKE, {"Content-Type": "text/plain;charset=UTF-8"}
    )
    assert (post.code, body) == (200, b"")
    assert await within(held.body, 5) == b"{}\x1e"
    assert held.header("content-type") == ["application/octet-stream"]
    held = request("GET", url + "&_=3")
    echo = bytes.fromhex("11 95 01 80 a1 30 a4 45 63 68 6f 91 a5 68 65 6c 6c 6f")
    await fetch("POST", url, echo, {"Content-Type": "application/octet-stream"})
    assert await within(held.body, 5) == bytes.fromhex("0c 95 03 80 a1 30 03 a5 68 65 6c 6c 6f")
    assert held.header("content-type") == ["application/octet-stream"]
    await fetch("DELETE", url)


def transcript_bodies(name: str) -> list[tuple[str, bytes]]:
    """``(direction, body)`` of each non-empty HTTP body after negotiate."""
    bodies = []
    for line in (DATA / name).read_text().splitlines():
        m = re.match(r"\[[ \d.]+\] #\d+ (C->S|S->C) body: (.*)$", line)
        if m is None or m[2] == "(empty)" or m[2].startswith('{"connectionId'):
            continue
        binary = re.match(r"<binary \d+ bytes> (.*)$", m[2])
        body = bytes.fromhex(binary[1]) if binary else m[2].encode().replace(b"\\x1e", b"\x1e")
        bodies.append((m[1], body))
    return bodies


@pytest_twisted.ensureDeferred
async def test_long_polling_transcript_golden_bytes(server: SignalRServer) -> None:
    """The POST bodies of Microsoft's client from the long polling transcript get the
    transcript's poll bodies back (Add and the ticker aside, as over WebSockets)."""
    bodies = transcript_bodies("aspnet-LongPolling-messagepack.txt")
    posts = [b for d, b in bodies if d == "C->S"]
    answers = [b for d, b in bodies if d == "S->C"]
    assert posts[0] == MSGPACK_HANDSHAKE and answers[0] == b"{}\x1e"
    add = bytes.fromhex("0f 95 03 80 a1 31 03 cb 40 14 00 00 00 00 00 00")
    answers = [bytes.fromhex("07 95 03 80 a1 31 03 05") if a == add else a for a in answers]
    expected = b"".join(a for a in answers if not a.startswith(b"\x0b\x95\x01\x80\xc0\xa4tick"))
    client = CoreClient(server.core_url("echo"), "LongPolling", protocol="messagepack")
    await client.negotiate()
    await client.open()
    got = b""
    for post in posts[:-1]:
        await client.send(post, binary=post != MSGPACK_HANDSHAKE)
        got += await within(client.chunks.get(), 5)
    while len(got) < len(expected):
        got += await within(client.chunks.get(), 5)
    assert got == expected
    await client.send(posts[-1])  # [7, nil]
    assert await within(client.closed, 5) == 204


@pytest_twisted.ensureDeferred
async def test_server_sent_events_refuse_messagepack(server: SignalRServer) -> None:
    """Over SSE the handshake fails with .NET's text and the connection ends."""
    client = CoreClient(server.core_url("echo"), "ServerSentEvents")
    answer = await client.connect(MSGPACK_HANDSHAKE)
    assert answer == {
        "error": "Cannot use the 'messagepack' protocol on the current transport. The "
        "transport does not support 'Binary' transfer format."
    }
    await within(client.closed, 5)
    (handshake,) = server.events("handshake")
    assert handshake["ok"] is False
    assert server.core_connections == []


@pytest.mark.parametrize("transport", ("WebSockets", "ServerSentEvents", "LongPolling"))
@pytest_twisted.ensureDeferred
async def test_unsupported_version_is_refused_as_text(
    server: SignalRServer, transport: str
) -> None:
    """Version 3 of messagepack is refused, in a text message (the format is not chosen)."""
    client = CoreClient(server.core_url("echo"), transport)
    answer = await client.connect(b'{"protocol":"messagepack","version":3}\x1e')
    assert answer == {
        "error": "The server does not support version 3 of the 'messagepack' protocol."
    }
    await within(client.closed, 5)
    if transport == "WebSockets":
        assert client.binary == [False]


@pytest_twisted.ensureDeferred
async def test_messagepack_needs_its_library(
    server: SignalRServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ormsgpack the server speaks JSON only, as a server without the protocol."""
    from txsignalr import _core_msgpack

    monkeypatch.setattr(_core_msgpack, "available", lambda: False)
    client = CoreClient(server.core_url("echo"), "WebSockets")
    answer = await client.connect(MSGPACK_HANDSHAKE)
    assert answer == {"error": "The protocol 'messagepack' is not supported."}
    await within(client.closed, 5)


# -- hub messages ---------------------------------------------------------------------------


@binary_transports
@pytest_twisted.ensureDeferred
async def test_every_message_type_in_dotnet_layout(server: SignalRServer, transport: str) -> None:
    """Completions (result, void, error), Invocations of 6 elements, streams, client
    results, Close of 3 elements; Ping, Ack, Sequence and unknown types are ignored."""
    client = await connected(server, transport)
    await client.send_message(6)
    await client.send_message(8, 1)
    await client.send_message(9, 1)
    await client.send_message(99, "future")
    await client.invoke("Echo", "x", invocation_id="1")
    assert await client.record() == [3, {}, "1", 3, "x"]
    # (a hub method returning None is void on this server)
    await client.invoke("Echo", None, invocation_id="2")
    assert await client.record() == [3, {}, "2", 2]
    await client.invoke("Nothing", invocation_id="3")
    assert await client.record() == [3, {}, "3", 2]
    await client.invoke("Fail", invocation_id="4")
    assert await client.record() == [
        3,
        {},
        "4",
        1,
        "An unexpected error occurred invoking 'Fail' on the server. "
        "HubException: Intentional failure",
    ]
    await client.invoke("Missing", invocation_id="5")
    assert await client.record() == [
        3,
        {},
        "5",
        1,
        "Failed to invoke 'Missing' due to an error on the server. "
        "HubException: Method does not exist.",
    ]
    # a server-to-client call: nil id, 6 elements (stream ids [])
    await client.invoke("CallMe", "hi", invocation_id="6")
    assert await client.record() == [1, {}, None, "called", ["hi"], []]
    assert await client.record() == [3, {}, "6", 3, "ok"]
    # a non-blocking call: no answer (the next one is for "7")
    await client.invoke("Echo", "quiet")
    await client.invoke("Echo", "loud", invocation_id="7")
    assert await client.record() == [3, {}, "7", 3, "loud"]
    # server-to-client stream, and a cancelled one
    await client.invoke("Counter", 2, 0, invocation_id="8", kind=4)
    assert [await client.record() for _ in range(3)] == [
        [2, {}, "8", 0],
        [2, {}, "8", 1],
        [3, {}, "8", 2],
    ]
    await client.invoke("Forever", invocation_id="9", kind=4)
    assert await client.record() == [2, {}, "9", 0]
    await client.send_message(5, {}, "9")
    while (record := await client.record())[0] == 2:
        pass
    assert record == [3, {}, "9", 2]
    # client-to-server stream: 6-element Invocation with stream ids
    await client.invoke("Sum", invocation_id="11", stream_ids=["10"])
    for n in (1, 2, 3):
        await client.send_message(2, {}, "10", n)
    await client.send_message(3, {}, "10", 2)
    assert await client.record() == [3, {}, "11", 3, 6]
    # a client result: the server's Invocation has an id; the answer a Completion
    await client.invoke("AskClient", "q?", invocation_id="12")
    assert await client.record() == [1, {}, "s1", "getMessage", ["q?"], []]
    await client.send_message(3, {}, "s1", 3, "a!")
    assert await client.record() == [3, {}, "12", 3, "client said a!"]
    # Close from the server: [7, error, allowReconnect]
    (connection_id,) = server.core_connections
    assert server.close_core_connection(connection_id, "bye", allow_reconnect=True)
    assert await client.record() == [7, "bye", True]
    await within(client.closed, 5)


@pytest_twisted.ensureDeferred
async def test_plain_close_bytes(server: SignalRServer) -> None:
    """A Close without error is 93 07 c0 c2, as .NET writes it (HubProtocol tests)."""
    client = await connected(server, "WebSockets")
    (connection_id,) = server.core_connections
    server.close_core_connection(connection_id)
    assert await within(client.chunks.get(), 5) == b"{}\x1e"
    assert await within(client.chunks.get(), 5) == b"\x04\x93\x07\xc0\xc2"
    assert await within(client.closed, 5) == 1000


@binary_transports
@pytest_twisted.ensureDeferred
async def test_payload_types_round_trip(server: SignalRServer, transport: str) -> None:
    """bin, timestamps, 64-bit integers, maps with integer keys and other extensions come
    back as they went, and the hub sees bytes, aware datetimes, ints and dicts."""
    client = await connected(server, transport)
    moment = datetime.datetime(2018, 1, 1, 11, 24, tzinfo=UTC)
    precise = datetime.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    values: list[Any] = [
        b"\x00\x01\xff",
        moment,
        precise,
        2**64 - 1,
        -(2**63),
        {1: "one", -2: ["two"], "s": {3: b"three"}},
        [1.5, True, None, "h\u00e9llo \U0001f600", []],
        MessagePackExt(5, b"\x01\x02"),
    ]
    for i, value in enumerate(values):
        await client.invoke("Echo", value, invocation_id=str(i))
        assert await client.record() == [3, {}, str(i), 3, value]
    # the server decoded them to Python types
    for i, (value, name) in enumerate(
        [(b"x", "bytes"), (moment, "datetime"), (2**64 - 1, "int"), ({1: 2}, "dict")]
    ):
        await client.invoke("Describe", value, invocation_id=f"d{i}")
        assert await client.record() == [3, {}, f"d{i}", 3, name]
    # the timestamp extension (-1) on the wire, as .NET writes DateTime
    await client.invoke("Echo", moment, invocation_id="t")
    raw = b""
    while b"\xd6\xff" not in raw:
        raw = await within(client.chunks.get(), 5)
    assert raw.endswith(bytes.fromhex("d6 ff 5a 4a 1a 50"))
    client.drop()


@pytest_twisted.ensureDeferred
async def test_result_messagepack_cannot_carry(server: SignalRServer, quiet_log: Any) -> None:
    """A result beyond MessagePack's integers becomes the hub error text (and a warning
    for the hub's author)."""
    client = await connected(server, "WebSockets")
    await client.invoke("TooBig", invocation_id="1")
    assert await client.record() == [
        3,
        {},
        "1",
        1,
        "An unexpected error occurred invoking 'TooBig' on the server.",
    ]
    (warning,) = [e for e in quiet_log if e.get("method") == "TooBig"]
    assert (warning["protocol"], warning["error"]) == (
        "messagepack",
        "Integer exceeds 64-bit range",
    )
    quiet_log.remove(warning)
    client.drop()


@binary_transports
@pytest_twisted.ensureDeferred
async def test_several_messages_per_chunk_and_split_messages(
    server: SignalRServer, transport: str
) -> None:
    """Messages after the handshake in its chunk are read; a message split across chunks
    is joined; the server's messages queued between polls come in one body."""
    client = CoreClient(server.core_url("echo"), transport, protocol="messagepack")
    await client.negotiate()
    await client.open()
    echo = [msgpack_frame([1, {}, str(i), "Echo", [i]]) for i in range(4)]
    await client.send(MSGPACK_HANDSHAKE + echo[0] + echo[1] + echo[2][:5])
    assert await client.record() == {}
    assert await client.record() == [3, {}, "0", 3, 0]
    assert await client.record() == [3, {}, "1", 3, 1]
    await client.send(echo[2][5:] + echo[3])
    assert await client.record() == [3, {}, "2", 3, 2]
    assert await client.record() == [3, {}, "3", 3, 3]
    client.drop()


@pytest_twisted.ensureDeferred
async def test_long_poll_body_carries_several_messages(server: SignalRServer) -> None:
    """Messages written while no poll is held arrive together in the next poll."""
    _ex, neg = await core_negotiate(server.core_url("echo"))
    url = server.core_url("echo") + "?id=" + neg["connectionToken"]
    await fetch("GET", url)
    await fetch("POST", url, MSGPACK_HANDSHAKE)
    _ex, body = await fetch("GET", url)
    assert body == b"{}\x1e"
    calls = msgpack_frame([1, {}, "1", "Echo", [1]]) + msgpack_frame([1, {}, "2", "Nothing", []])
    await fetch("POST", url, calls, {"Content-Type": "application/octet-stream"})
    ex, body = await fetch("GET", url)
    assert ex.header("content-type") == ["application/octet-stream"]
    assert body == msgpack_frame([3, {}, "1", 3, 1]) + msgpack_frame([3, {}, "2", 2])
    await fetch("DELETE", url)


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_each_connection_in_its_protocol(server: SignalRServer) -> None:
    """send_to_all to a JSON and a MessagePack connection: each gets its own encoding."""
    mp = await connected(server, "WebSockets")
    js = CoreClient(server.core_url("echo"), "LongPolling")
    assert await js.connect() == {}
    server.send_to_all("echo", "receive", {"n": 1})
    assert await mp.record() == [1, {}, None, "receive", [{"n": 1}], []]
    assert await js.record() == {"type": 1, "target": "receive", "arguments": [{"n": 1}]}
    await mp.invoke("JoinGroup", "g", invocation_id="1")
    assert await mp.record() == [3, {}, "1", 2]
    await js.invoke("SendToGroup", "g", "m", invocation_id="2")
    assert await mp.record() == [1, {}, None, "groupMessage", ["g", "m"], []]
    assert await js.record() == {"type": 3, "invocationId": "2"}
    mp.drop()
    js.drop()


@pytest_twisted.ensureDeferred
async def test_broadcast_of_what_only_messagepack_carries(server: SignalRServer) -> None:
    """bytes reach the MessagePack connections; a JSON connection does not get it, and
    the caller learns that with TypeError; with MessagePack ones only, no error."""
    mp = await connected(server, "WebSockets")
    server.send_to_all("echo", "receive", b"\x01")
    assert await mp.record() == [1, {}, None, "receive", [b"\x01"], []]
    js = CoreClient(server.core_url("echo"), "WebSockets")
    assert await js.connect() == {}
    with pytest.raises(TypeError):
        server.send_to_all("echo", "receive", b"\x02")
    assert await mp.record() == [1, {}, None, "receive", [b"\x02"], []]
    server.send_to_all("echo", "receive", "text")
    assert await js.record() == {"type": 1, "target": "receive", "arguments": ["text"]}
    assert await mp.record() == [1, {}, None, "receive", ["text"], []]
    mp.drop()
    js.drop()


# -- bad input --------------------------------------------------------------------------------


BAD_INPUT = {
    "a length over 2 GB": bytes.fromhex("ff ff ff ff ff"),
    "an empty body": b"\x00",
    "not MessagePack": b"\x01\xc1",
    "not an array": msgpack_frame({"type": 1}),  # type: ignore[arg-type]
    "a type that is not an integer": msgpack_frame(["1", {}]),
    "an Invocation too short": msgpack_frame([1, {}, "1", "Echo"]),
    "a target that is not a string": msgpack_frame([1, {}, "1", 42, []]),
    "arguments that are not an array": msgpack_frame([1, {}, "1", "Echo", "x"]),
    "a result kind that does not exist": msgpack_frame([3, {}, "1", 9, 1]),
    "headers that are not strings": msgpack_frame([1, {"a": 1}, "1", "Echo", [1]]),
    "a StreamInvocation without id": msgpack_frame([4, {}, None, "Counter", [1, 0]]),
}


@pytest.mark.parametrize("bad", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
@binary_transports
@pytest_twisted.ensureDeferred
async def test_bad_input_closes_with_an_error(
    server: SignalRServer, transport: str, bad: bytes
) -> None:
    """Bytes that are not a valid MessagePack hub message close the connection with
    [7, "Connection closed with an error.", false], as .NET does."""
    client = await connected(server, transport)
    await client.send(bad)
    assert await client.record() == [7, "Connection closed with an error.", False]
    await within(client.closed, 5)
    (ended,) = server.events("disconnected")
    assert (ended["reason"], ended["clean"]) == ("server close", False)


@pytest_twisted.ensureDeferred
async def test_bad_input_detailed_and_too_large() -> None:
    """With detailed_errors the Close names the problem; a message over the size limit
    closes with .NET's text."""
    s = SignalRServer(
        running_reactor(), [EchoHub()], detailed_errors=True, core_max_message_size=100
    )
    await s.listen()
    try:
        client = await connected(s, "WebSockets")
        await client.send(msgpack_frame([1, {}, "1", "Echo"]))
        assert await client.record() == [
            7,
            "Connection closed with an error. InvalidDataException: "
            "Invalid payload for Invocation message.",
            False,
        ]
        client = await connected(s, "WebSockets")
        await client.send(msgpack_frame([1, {}, "1", "Echo", ["y" * 200]]))
        assert await client.record() == [
            7,
            "Connection closed with an error. InvalidDataException: The maximum message "
            "size of 100B was exceeded. The message size can be configured in AddHubOptions.",
            False,
        ]
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_pings_are_messagepack_on_clock() -> None:
    """The keep-alive of a MessagePack connection is 02 91 06, in a binary message."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()])  # type: ignore[arg-type]
    await s.listen()
    try:
        client = await connected(s, "WebSockets")
        assert await within(client.chunks.get(), 5) == b"{}\x1e"
        await sleep(0.05)
        clock.advance(15.1)
        assert await within(client.chunks.get(), 5) == b"\x02\x91\x06"
        assert client.binary == [True, True]
        client.drop()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_json_handshake_still_text(server: SignalRServer) -> None:
    """A JSON connection beside them keeps text messages."""
    client = CoreClient(server.core_url("echo"), "WebSockets")
    assert await client.connect(HANDSHAKE) == {}
    await client.invoke("Echo", 1, invocation_id="1")
    assert await client.record() == {"type": 3, "invocationId": "1", "result": 1}
    assert client.binary == [False, False]
    client.drop()

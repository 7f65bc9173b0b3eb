"""
Wire transcripts recorded from a real ASP.NET SignalR 2.4.3 server (copies in
tests/data/transcripts/) checked against our parser and our test server.

1. Every frame the real server sent (WebSocket text frames, SSE ``data:`` events,
   long-poll bodies, ``/send`` bodies, forever-frame script calls, raw WebSocket
   bytes) is parsed by :func:`txsignalr._protocol.parse_frame` and classified the
   way the JSON itself says (keep-alive, persistent response, hub result, progress,
   client invocation).  The expected classification is worked out from the raw JSON
   here, independently of the parser.
2. Our in-process server is driven through the same scenarios over a real WebSocket,
   and what it sends must have the same shape as the real server's frames: key order
   and value types, with tokens, ids, cursors and timestamps set aside.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from server_clients import TransportClient
from twisted.internet import defer
from twisted.internet.task import deferLater

from txsignalr._protocol import (
    ClientInvocation,
    HubResult,
    KeepAlive,
    PersistentResponse,
    Progress,
    RawMessage,
    parse_frame,
    parse_negotiate,
    parse_response,
)
from txsignalr.testing import C3Hub, ChatHub, SignalRServer

DATA = Path(__file__).parent / "data" / "transcripts"

# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Recorded:
    """One server-to-client frame (or HTTP body) found in a transcript."""

    file: str
    line: int
    source: str  # ws | sse | sse-raw | lp | send | ws-bytes | ff | body
    text: str

    def where(self) -> str:
        return f"{self.file}:{self.line} ({self.source})"


_LINE_PATTERNS = [
    (re.compile(r"<< WS TEXT frame: (.*)$"), "ws"),
    (re.compile(r"<< SSE data: (.*)$"), "sse"),
    (re.compile(r"<< SSE raw chunk: (b'.*')$"), "sse-raw"),
    (re.compile(r"<< LP (?:poll )?response: (.*)$"), "lp"),
    (re.compile(r"<< /send response body: (.*)$"), "send"),
    (re.compile(r"^<script>r\(c, (.*)\);</script>$"), "ff"),
    (re.compile(r"(?:<< +|^ +)body: (.*)$"), "body"),
]
_RAW_WS = re.compile(
    r"^<<< frame FIN=1 opcode=0x1 masked=0 len=(\d+) header=[0-9a-f]+ payload=(.*)$"
)

#: Frames the recorder itself cut short, as (file, line, why): filled while reading.
TRUNCATED: list[tuple[str, int, str]] = []


def _read(path: Path) -> Iterator[Recorded]:
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        raw = _RAW_WS.match(line)
        if raw is not None:
            payload = ast.literal_eval(raw.group(2))
            declared = int(raw.group(1))
            if len(payload.encode("utf-8")) != declared:
                # The recorder prints at most 300 characters of a payload: the
                # header's length field shows this frame was cut, so it cannot be parsed.
                TRUNCATED.append(
                    (path.name, number, f"len={declared}, {len(payload)} characters shown")
                )
                continue
            yield Recorded(path.name, number, "ws-bytes", payload)
            continue
        for pattern, source in _LINE_PATTERNS:
            match = pattern.search(line)
            if match is not None:
                yield Recorded(path.name, number, source, match.group(1))
                break
        else:
            if line.startswith('{"') and path.name.startswith("12_"):
                # curl -i output: a negotiate body or the /send response body, bare.
                yield Recorded(path.name, number, "body" if '"Url"' in line else "send", line)


@functools.cache
def recorded() -> tuple[Recorded, ...]:
    """Every recorded server frame and HTTP body, in file and line order (read once)."""
    out: list[Recorded] = []
    for path in sorted(DATA.glob("*.txt")):
        out.extend(_read(path))
    return tuple(out)


# --------------------------------------------------------------------- classifying


def _expect_message(item: Any, parsed: Any, where: str) -> str:
    """Check one element of ``M`` against the parser's value; return its kind."""
    if isinstance(item, dict) and "P" in item:
        assert isinstance(parsed, Progress), where
        assert item["I"] == "P|" + item["P"]["I"], where
        assert parsed.invocation_id == item["P"]["I"], where
        assert parsed.data == item["P"].get("D"), where
        return "progress"
    if isinstance(item, dict) and "I" in item:
        assert isinstance(parsed, HubResult), where
        assert parsed.invocation_id == item["I"], where
        return "hub result in M"
    if isinstance(item, dict) and isinstance(item.get("H"), str) and isinstance(item.get("M"), str):
        assert isinstance(parsed, ClientInvocation), where
        assert (parsed.hub, parsed.method) == (item["H"], item["M"]), where
        assert parsed.args == tuple(item.get("A") or ()), where
        assert parsed.state == item.get("S"), where
        return "client invocation"
    assert isinstance(parsed, RawMessage), where
    assert parsed.value == item, where
    return "raw message"


def _expect_frame(obj: dict[str, Any], parsed: Any, where: str) -> list[str]:
    """Check a whole frame against the parser's value; return the kinds seen in it."""
    if obj == {}:
        assert isinstance(parsed, KeepAlive), where
        return ["keepalive"]
    if "I" in obj:
        assert isinstance(parsed, HubResult), where
        assert parsed.invocation_id == obj["I"], where
        assert parsed.has_result == ("R" in obj), where
        assert parsed.result == obj.get("R"), where
        assert parsed.error == obj.get("E"), where
        assert parsed.is_hub_exception == (obj.get("H") is True), where
        assert parsed.error_data == obj.get("D"), where
        assert parsed.state == obj.get("S"), where
        if "E" in obj:
            return ["hub error" if obj.get("H") else "error result"]
        return ["hub result" if "R" in obj else "void result"]
    assert isinstance(parsed, PersistentResponse), where
    assert parsed.cursor == obj.get("C"), where
    assert parsed.initialized == (obj.get("S") == 1), where
    assert parsed.groups_token == obj.get("G"), where
    assert parsed.reconnect == (obj.get("T") == 1), where
    messages = obj.get("M", [])
    assert len(parsed.messages) == len(messages), where
    kinds = ["init frame" if obj.get("S") == 1 else "persistent response"]
    if "G" in obj:
        kinds.append("groups token")
    kinds.extend(
        _expect_message(m, p, where) for m, p in zip(messages, parsed.messages, strict=True)
    )
    return kinds


def _frame_text(frame: Recorded) -> str | None:
    """The JSON text of a frame, or None for SSE's ``initialized`` marker."""
    if frame.source != "sse-raw":
        return frame.text
    chunk = ast.literal_eval(frame.text)
    assert isinstance(chunk, bytes), frame.where()
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), frame.where()
    body = chunk[len(b"data: ") : -2].decode("utf-8")
    return None if body == "initialized" else body


def test_transcripts_are_present() -> None:
    """The copied transcripts are the ones this module was written against."""
    names = sorted(p.name for p in DATA.glob("*.txt"))
    assert names == [
        "01_http_endpoints_curl_like.txt",
        "02_c3_websockets.txt",
        "03_c3_serverSentEvents.txt",
        "04_c3_longPolling.txt",
        "05_chat_hub_websockets.txt",
        "06_echo_persistentconnection.txt",
        "07_reconnect_and_disconnect_timeout_ws.txt",
        "11_raw_websocket_bytes.txt",
        "12_flags_plain_disable_websockets_foreverframe.txt",
    ]


def test_parse_frame_accepts_and_classifies_every_recorded_frame() -> None:
    """parse_frame takes every frame the real server sent and classifies it as the JSON says."""
    kinds: Counter[str] = Counter()
    per_file: Counter[str] = Counter()
    frames = recorded()
    for frame in frames:
        if frame.source == "body":
            continue
        text = _frame_text(frame)
        if text is None:
            kinds["sse initialized"] += 1
            continue
        obj = json.loads(text)  # a frame that is not JSON fails the test here
        assert isinstance(obj, dict), frame.where()
        for data in (text, text.encode("utf-8")):
            parsed = parse_frame(data)
            for kind in _expect_frame(obj, parsed, frame.where()):
                kinds[kind] += data is text
        per_file[frame.file] += 1

    # The only frame the recorder cut is the long groups-token frame in the raw
    # bytes file, and the length field in its header says so.
    assert [(f, why.split(",")[0]) for f, _, why in TRUNCATED] == [
        ("11_raw_websocket_bytes.txt", "len=394")
    ]
    # Every recorded frame is counted, so a reader that silently skipped lines fails.
    assert dict(per_file) == {
        "02_c3_websockets.txt": 62,
        "03_c3_serverSentEvents.txt": 108,
        "04_c3_longPolling.txt": 55,
        "05_chat_hub_websockets.txt": 16,
        "06_echo_persistentconnection.txt": 13,
        "07_reconnect_and_disconnect_timeout_ws.txt": 58,
        "11_raw_websocket_bytes.txt": 6,
        "12_flags_plain_disable_websockets_foreverframe.txt": 7,
    }
    assert dict(kinds) == {
        "client invocation": 321,
        "persistent response": 237,
        "hub result": 35,
        "groups token": 28,
        "keepalive": 27,
        "progress": 20,
        "init frame": 13,
        "raw message": 8,
        "error result": 6,
        "void result": 4,
        "hub error": 3,
        "sse initialized": 2,
    }


def test_recorded_http_bodies_parse() -> None:
    """Every recorded negotiate and /start body is accepted by the client's parsers."""
    negotiated = started = pong = 0
    for frame in recorded():
        if frame.source != "body" or not frame.text.startswith("{"):
            continue
        if '"Url"' in frame.text:
            answer = parse_negotiate(frame.text.encode("utf-8"))
            assert answer.connection_token, frame.where()
            assert answer.protocol_version in ("1.4", "1.5", "2.0"), frame.where()
            negotiated += 1
        elif frame.text == '{ "Response": "started" }':
            assert parse_response(frame.text.encode("utf-8")) == "started", frame.where()
            started += 1
        elif frame.text == '{ "Response": "pong" }':
            assert json.loads(frame.text) == {"Response": "pong"}
            pong += 1
    assert (negotiated, started, pong) == (14, 9, 1)


# ------------------------------------------------------- our server, shape by shape


def shape(value: Any) -> Any:
    """Key order and value types of a JSON value (arrays: the set of element shapes)."""
    if isinstance(value, dict):
        return ("object", tuple((k, shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(sorted({repr(shape(v)) for v in value})))
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    assert value is None
    return "null"


def envelope(frame: dict[str, Any]) -> Any:
    """The shape of a persistent response without its messages."""
    return shape({k: ([] if k == "M" else v) for k, v in frame.items()})


def exemplar(file: str, prefix: str, source: str = "ws") -> Any:
    """The first recorded frame (or body) of ``file`` that starts with ``prefix``, decoded."""
    for frame in recorded():
        if frame.file == file and frame.source == source and frame.text.startswith(prefix):
            return json.loads(frame.text)
    raise AssertionError(f"no {source} frame starting with {prefix!r} in {file}")


WS = "02_c3_websockets.txt"
CHAT = "05_chat_hub_websockets.txt"


class _Capture(WebSocketClientProtocol):
    """Records every text frame the server sends."""

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        assert not isBinary
        self.factory.frames.append(payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.closed.called:
            self.factory.closed.callback((wasClean, code))
        if not self.factory.opened.called:
            self.factory.opened.errback(AssertionError(f"WebSocket refused: {reason}"))


class _Session:
    """A hand-driven WebSocket session with our server that keeps every frame."""

    def __init__(self, reactor: Any, server: Any) -> None:
        self.reactor = reactor
        self.server = server
        self.frames: list[str] = []
        self.mark = 0
        self.found = 0

    async def get(self, command: str, query: str, method: str = "GET") -> Any:
        response = await treq.request(
            method, f"{self.server.url}/{command}?{query}", persistent=False
        ).addTimeout(5, self.reactor)
        return response, await response.content()

    async def open(self, token: str, connection_data: str) -> None:
        self.query = (
            "transport=webSockets&clientProtocol=1.5&connectionToken="
            + quote(token, safe="")
            + "&connectionData="
            + quote(connection_data, safe="")
        )
        ws_url = self.server.url.replace("http:", "ws:") + "/connect?" + self.query + "&tid=3"
        factory = WebSocketClientFactory(ws_url)
        factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=5)
        factory.protocol = _Capture
        factory.frames = self.frames
        factory.opened = defer.Deferred()
        factory.closed = self.closed = defer.Deferred()
        self.reactor.connectTCP("127.0.0.1", self.server.port, factory)
        self.proto = await factory.opened.addTimeout(5, self.reactor)

    def send(self, message: dict[str, Any]) -> None:
        self.mark = len(self.frames)
        self.proto.sendMessage(json.dumps(message).encode("utf-8"))

    async def next(self, predicate: Any, what: str, seconds: float = 5.0) -> Any:
        """The first frame since the last send (in any order) for which ``predicate`` holds."""
        deadline = self.reactor.seconds() + seconds
        while True:
            for index in range(self.mark, len(self.frames)):
                obj = json.loads(self.frames[index])
                if predicate(obj):
                    self.found = index
                    return obj
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"no frame for {what} in {self.frames[self.mark :]}")
            await deferLater(self.reactor, 0.02, lambda: None)

    async def result(self, invocation_id: str) -> Any:
        return await self.next(lambda o: o.get("I") == invocation_id, f"result {invocation_id}")


def _persistent_with(method: str) -> Any:
    """A plain push frame carrying ``method``.  A push can share its frame with a new
    groups token (the server batches whatever is pending), which gives that frame a
    ``G``; such frames are compared with recorded ``G`` frames, not with plain pushes."""
    return lambda o: "C" in o and "G" not in o and any(m.get("M") == method for m in o.get("M", []))


def _message(frame: dict[str, Any], method: str) -> Any:
    return next(m for m in frame["M"] if m.get("M") == method)


@pytest_twisted.ensureDeferred
async def test_our_server_sends_the_real_servers_shapes() -> None:
    """Negotiate, init, start, results (value, void, errors, state), progress, pushes and
    groups tokens from txsignalr.testing have the real server's key order and types."""
    from twisted.internet import reactor

    server = SignalRServer(
        reactor,
        hubs=[C3Hub(interval=0.1), ChatHub()],
        keepalive=0.5,
        disconnect_timeout=6.0,
        detailed_errors=True,  # as when the transcripts were recorded
    )
    await server.listen(port=0, interface="127.0.0.1")
    s = _Session(reactor, server)
    try:
        connection_data = '[{"name":"c3"},{"name":"chat"}]'
        response, body = await s.get(
            "negotiate", "clientProtocol=1.5&connectionData=" + quote(connection_data, safe="")
        )
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type") == ["application/json; charset=UTF-8"]
        negotiate = json.loads(body)
        real = exemplar(WS, '{"Url"', source="body")
        assert shape(negotiate) == shape(real)
        assert (negotiate["Url"], negotiate["ProtocolVersion"], negotiate["TryWebSockets"]) == (
            "/signalr",
            "1.5",
            True,
        )
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            negotiate["ConnectionId"],
        )

        await s.open(negotiate["ConnectionToken"], connection_data)
        init = await s.next(lambda o: True, "the init frame")
        assert shape(init) == shape(exemplar(WS, '{"C":"d-98046728-B,0|C,0|D,1","S":1'))
        assert init["S"] == 1 and init["M"] == []

        response, body = await s.get("start", s.query)
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type") == ["application/json; charset=UTF-8"]
        assert body == b'{ "Response": "started" }'

        # c3.Subscribe: a groups token frame, then the result, then pushes.
        s.send({"H": "c3", "M": "Subscribe", "A": [["heartbeat", "tick", "invalid_topic"]], "I": 0})
        g_frame = await s.next(lambda o: "G" in o, "a groups token after Subscribe")
        real_g = exemplar(WS, '{"C":"d-98046728-B,0|C,0|D,2|E,0","G":')
        assert envelope(g_frame) == envelope(real_g) and g_frame["M"] == []
        result = await s.result("0")
        assert shape(result) == shape(exemplar(WS, '{"R":[{"Success":true,"ErrorCode":null},{"Su'))
        assert result["R"][2] == {"Success": False, "ErrorCode": "INVALID_CHANNEL"}
        beat = await s.next(_persistent_with("heartbeat"), "a heartbeat push")
        real_beat = exemplar(
            WS, '{"C":"d-98046728-B,0|C,0|D,4|E,1|F,0|G,0","M":[{"H":"c3","M":"hea'
        )
        assert envelope(beat) == envelope(real_beat)
        assert _message(beat, "heartbeat") == _message(real_beat, "heartbeat")
        tick = await s.next(_persistent_with("tick"), "a tick push")
        real_tick = exemplar(
            WS, '{"C":"d-98046728-B,0|C,0|D,4|E,1|F,0|G,1","M":[{"H":"c3","M":"tick"'
        )
        assert envelope(tick) == envelope(real_tick)
        assert shape(_message(tick, "tick")) == shape(_message(real_tick, "tick"))

        # Results: a value, a HubException with data, a plain exception, an unknown method.
        s.send(
            {
                "H": "c3",
                "M": "Echo",
                "A": [{"a": [1, 2.5, {"b": None}], "s": "h\u00e9llo \u2603", "t": True}],
                "I": 1,
            }
        )
        echo = await s.result("1")
        real_echo = exemplar(WS, '{"R":{"a":[1,2.5,{"b":null}]')
        assert shape(echo) == shape(real_echo) and echo["R"] == real_echo["R"]
        s.send({"H": "c3", "M": "Fail", "A": [], "I": 2})
        real_fail = exemplar(WS, '{"I":"8","H":true')
        fail = await s.result("2")
        assert shape(fail) == shape(real_fail)
        assert (fail["H"], fail["E"], fail["D"]) == (real_fail["H"], real_fail["E"], real_fail["D"])
        s.send({"H": "c3", "M": "Crash", "A": [], "I": 3})
        crash = await s.result("3")
        real_crash = exemplar(WS, '{"I":"9","E"')
        assert shape(crash) == shape(real_crash) and crash["E"] == real_crash["E"]
        s.send({"H": "c3", "M": "NoSuchMethod", "A": [1], "I": 4})
        unknown = await s.result("4")
        real_unknown = exemplar(WS, '{"I":"10","E"')
        assert shape(unknown) == shape(real_unknown) and unknown["E"] == real_unknown["E"]

        # Progress, then the result.
        s.send({"H": "c3", "M": "Slow", "A": [200], "I": 5})
        slow = await s.result("5")
        real_progress = exemplar(WS, '{"C":"d-98046728-B,0|C,0|D,8","M":[{"I":"P|11"')
        # A progress message may share its frame with pushes (the server batches what
        # is pending), so look for it anywhere in M.
        frames = [json.loads(f) for f in s.frames[s.mark : s.found] if '"P|5"' in f]
        progress = [m for f in frames for m in f["M"] if m.get("I") == "P|5"]
        assert [m["P"]["D"] for m in progress] == [20, 40, 60, 80, 100]
        for frame in frames:
            assert envelope(frame) == envelope(real_progress)
        for message in progress:
            assert shape(message) == shape(real_progress["M"][0])
            assert message["I"] == "P|5" and message["P"]["I"] == "5"
        assert (
            shape(slow) == shape(exemplar(WS, '{"R":"slept 500 ms"'))
            and slow["R"] == "slept 200 ms"
        )

        # chat: a broadcast and a void result, a group join, caller state.
        s.send({"H": "chat", "M": "Send", "A": ["alice", "hi all"], "I": 6})
        added = await s.next(_persistent_with("addMessage"), "addMessage")
        real_added = exemplar(CHAT, '{"C":"d-98046728-L,1|M,0|N,1","M"')
        assert envelope(added) == envelope(real_added)
        assert _message(added, "addMessage") == real_added["M"][0]
        void = await s.result("6")
        assert void == {"I": "6"} and shape(void) == shape(exemplar(CHAT, '{"I":"0"}'))
        s.send({"H": "chat", "M": "JoinGroup", "A": ["g1"], "I": 7})
        joined = await s.next(lambda o: "G" in o, "a groups token after JoinGroup")
        assert envelope(joined) == envelope(exemplar(CHAT, '{"C":"d-98046728-L,1|M,0|N,2|Q,0","G"'))
        assert await s.result("7") == {"I": "7"}
        s.send({"H": "chat", "M": "SendToGroup", "A": ["g1", "to group"], "I": 8})
        group = await s.next(_persistent_with("groupMessage"), "groupMessage")
        real_group = exemplar(CHAT, '{"C":"d-98046728-L,1|M,0|N,2|Q,1","M"')
        assert _message(group, "groupMessage") == real_group["M"][0]
        s.send(
            {
                "H": "chat",
                "M": "IncrementCounter",
                "A": [],
                "I": 9,
                "S": {"counter": 5, "name": "alice"},
            }
        )
        counted = await s.result("9")
        real_counted = exemplar(CHAT, '{"S":{"counter":6')
        assert shape(counted) == shape(real_counted) and counted == {**real_counted, "I": "9"}

        # An idle keep-alive is exactly {}.
        await s.next(lambda o: o == {}, "a keep-alive", seconds=3)
        assert exemplar(WS, "{}") == {}

        # /ping and /abort answer like the real server; after /abort it closes with 1000.
        response, body = await s.get("ping", "")
        assert (response.code, body) == (200, b'{ "Response": "pong" }')
        assert response.headers.getRawHeaders("content-type") == ["application/json; charset=UTF-8"]
        response, body = await s.get("abort", s.query, method="POST")
        assert (response.code, body) == (200, b"")
        assert response.headers.getRawHeaders("content-type") == ["text/plain"]
        assert await s.closed.addTimeout(5, reactor) == (True, 1000)
    finally:
        await server.stop()


SSE = "03_c3_serverSentEvents.txt"
LP = "04_c3_longPolling.txt"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("transport", "file", "source"), [("serverSentEvents", SSE, "sse"), ("longPolling", LP, "lp")]
)
async def test_our_http_transports_send_the_real_servers_shapes(
    transport: str, file: str, source: str
) -> None:
    """Over SSE and long polling, the init frame, the groups-token frame, pushes and the
    /send result of txsignalr.testing have the shapes of transcripts 03 and 04."""
    from twisted.internet import reactor

    server = SignalRServer(reactor, hubs=[C3Hub(interval=0.05)], keepalive=None)
    await server.listen(port=0, interface="127.0.0.1")
    try:
        client = TransportClient(server, transport, "c3")
        init = await client.connect()
        assert envelope(init) == envelope(exemplar(file, '{"C"', source))
        if transport == "serverSentEvents":
            first = next(f for f in recorded() if f.file == file and f.source == "sse-raw")
            assert ast.literal_eval(first.text) == b"data: initialized\n\n"
        result = await client.invoke("c3", "Subscribe", [["tick", "invalid_x"]], 0)
        assert shape(result) == shape(exemplar(file, '{"R":[', "send"))
        frames = [await client.frame() for _ in range(6)]
        with_g = next(f for f in frames if "G" in f)
        real_g = next(
            json.loads(f.text)
            for f in recorded()
            if f.file == file and f.source == source and '"G":' in f.text
        )
        assert envelope(with_g) == envelope(real_g)
        tick = next(f for f in frames if "G" not in f and f["M"])
        real_tick = next(
            json.loads(f.text)
            for f in recorded()
            if f.file == file
            and f.source == source
            and '"M":"tick"' in f.text
            and '"G"' not in f.text
        )
        assert envelope(tick) == envelope(real_tick)
        assert shape(_message(tick, "tick")) == shape(_message(real_tick, "tick"))
        client.drop()
    finally:
        await server.stop()

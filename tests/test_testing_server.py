"""
Tests of the in-process SignalR server (:mod:`txsignalr.testing`) on its own: the
sans-I/O pieces with plain values, the HTTP and WebSocket behaviour with raw treq and
autobahn clients on 127.0.0.1 (not our HubConnection).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from helpers import bounded, running_reactor, sleep, wait_until, within
from server_clients import TRANSPORTS, TransportClient, fetch, request
from server_clients import query as transport_query
from twisted.internet import defer, task
from twisted.internet.task import LoopingCall
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from txsignalr.payloads import decode_deflate_base64
from txsignalr.testing import C3Hub, ChatHub, Hub, HubCall, HubException, SignalRServer
from txsignalr.testing._bus import MessageBus
from txsignalr.testing._http import parse_cookies
from txsignalr.testing._tokens import Protector
from txsignalr.testing._wire import (
    hub_result,
    negotiate_body,
    parse_invocation,
    persistent_response,
    progress_message,
    resolve_protocol,
)


def _reactor() -> Any:
    return running_reactor()


class RecordingHub(Hub):
    """A hub that records its lifecycle hooks and offers a few test methods."""

    name = "Rec"

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_connected(self, connection_id: str) -> None:
        self.events.append(("connected", connection_id))

    def on_reconnected(self, connection_id: str) -> None:
        self.events.append(("reconnected", connection_id))

    def on_disconnected(self, connection_id: str, stop_called: bool) -> None:
        self.events.append(("disconnected", (connection_id, stop_called)))

    def Add(self, call: HubCall, a: int, b: int = 0) -> int:
        return a + b

    def Nothing(self, call: HubCall) -> None:
        return None

    def Deferred(self, call: HubCall, value: Any) -> defer.Deferred[Any]:
        return task.deferLater(_reactor(), 0.01, lambda: value)

    def CallMeBack(self, call: HubCall, text: str) -> str:
        call.state["seen"] = text
        call.caller.invoke("calledBack", text)
        return "ok"

    def Refuse(self, call: HubCall) -> None:
        raise HubException("no", data=None)


@asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[SignalRServer]:
    hubs = kwargs.pop("hubs", None) or [C3Hub(), ChatHub()]
    server = SignalRServer(_reactor(), hubs=hubs, **kwargs)
    await server.listen(0)
    try:
        yield server
    finally:
        await server.stop()


def cd(*hubs: str) -> str:
    return quote(json.dumps([{"name": h} for h in hubs]), safe="")


async def http_get(url: str, method: str = "GET") -> tuple[int, Any, bytes]:
    response = await treq.request(method, url, persistent=False)
    body = await response.content()
    return response.code, response.headers, body


async def negotiate(
    server: SignalRServer, *hubs: str, protocol: str | None = "1.5"
) -> dict[str, Any]:
    query = f"connectionData={cd(*hubs)}"
    if protocol is not None:
        query = f"clientProtocol={protocol}&" + query
    code, _headers, body = await http_get(f"{server.url}/negotiate?{query}")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def common_query(token: str, *hubs: str) -> str:
    return (
        f"transport=webSockets&clientProtocol=1.5&connectionToken={quote(token, safe='')}"
        f"&connectionData={cd(*hubs)}"
    )


class RawClient(WebSocketClientProtocol):
    """Collects text frames; never answers anything by itself."""

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.frames.put(payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed: {reason}"))
        if not self.factory.closed.called:
            self.factory.closed.callback(wasClean)

    def send_json(self, value: Any) -> None:
        self.sendMessage(json.dumps(value).encode("utf-8"))


class Conn:
    """A raw WebSocket to the server plus helpers to read frames."""

    def __init__(self, factory: WebSocketClientFactory, proto: RawClient) -> None:
        self.factory = factory
        self.proto = proto

    @property
    def closed(self) -> defer.Deferred[bool]:
        return self.factory.closed  # type: ignore[no-any-return]

    async def frame(self, keepalives: bool = False, timeout: float = 5.0) -> Any:
        while True:
            d = self.factory.frames.get()
            text = await d.addTimeout(timeout, _reactor())
            value = json.loads(text)
            if value == {} and not keepalives:
                continue
            return value

    async def until(self, pred: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        while True:
            value = await self.frame(timeout=timeout)
            if pred(value):
                return value

    async def result(self, invocation_id: str, timeout: float = 5.0) -> Any:
        return await self.until(lambda f: "I" in f and f["I"] == invocation_id, timeout)

    def send(self, value: Any) -> None:
        self.proto.send_json(value)

    def drop(self) -> None:
        self.proto.transport.abortConnection()


async def open_ws(
    server: SignalRServer,
    query: str,
    kind: str = "connect",
    headers: dict[str, str] | None = None,
    origin: str | None = None,
) -> Conn:
    url = server.url.replace("http://", "ws://") + f"/{kind}?{query}"
    factory = WebSocketClientFactory(url, headers=headers or {}, origin=origin)
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    factory.protocol = RawClient
    factory.frames = defer.DeferredQueue()
    factory.opened = defer.Deferred()
    factory.closed = defer.Deferred()
    connectWS(factory)
    proto = await factory.opened.addTimeout(5, _reactor())
    return Conn(factory, proto)


async def connect_started(server: SignalRServer, *hubs: str) -> tuple[dict[str, Any], Conn]:
    """negotiate, WS connect, read the init frame, /start."""
    neg = await negotiate(server, *hubs)
    conn = await open_ws(server, common_query(neg["ConnectionToken"], *hubs))
    init = await conn.frame()
    assert init.get("S") == 1
    code, _h, body = await http_get(
        f"{server.url}/start?{common_query(neg['ConnectionToken'], *hubs)}"
    )
    assert (code, body) == (200, b'{ "Response": "started" }')
    return neg, conn


# -- sans-I/O pieces ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (None, "1.2"),
        ("", "1.2"),
        ("2", "1.2"),
        ("abc", "1.2"),
        ("1.0", "1.2"),
        ("1.4", "1.4"),
        ("1.5", "1.5"),
        ("2.0", "2.0"),
        ("2.1", "2.0"),
        ("9.9", "2.0"),
    ],
)
def test_resolve_protocol_clamps_to_1_2_and_2_0(sent: str | None, expected: str) -> None:
    """clientProtocol is clamped to [1.2, 2.0]; missing or unparsable gives 1.2."""
    assert resolve_protocol(sent)[0] == expected


def test_negotiate_body_key_order_and_doubles_match_transcript() -> None:
    """The negotiate document has the real server's key order and prints doubles as 4.0."""
    body = negotiate_body(
        url="/signalr",
        connection_token="T+/=",
        connection_id="87858d5c-6b60-4cff-9f1b-203bcaf3fe76",
        keepalive_timeout=4,
        disconnect_timeout=6,
        connection_timeout=110,
        try_websockets=True,
        protocol_version="1.5",
        transport_connect_timeout=5,
        long_poll_delay=0,
    )
    assert body == (
        b'{"Url":"/signalr","ConnectionToken":"T+/=","ConnectionId":'
        b'"87858d5c-6b60-4cff-9f1b-203bcaf3fe76","KeepAliveTimeout":4.0,"DisconnectTimeout":6.0,'
        b'"ConnectionTimeout":110.0,"TryWebSockets":true,"ProtocolVersion":"1.5",'
        b'"TransportConnectTimeout":5.0,"LongPollDelay":0.0}'
    )
    nulled = json.loads(
        negotiate_body(
            url="/x",
            connection_token="t",
            connection_id="i",
            keepalive_timeout=None,
            disconnect_timeout=30,
            connection_timeout=110,
            try_websockets=True,
            protocol_version="2.0",
            transport_connect_timeout=5,
            long_poll_delay=0,
        )
    )
    assert nulled["KeepAliveTimeout"] is None


def test_frames_have_server_key_order() -> None:
    """Persistent responses are C,S,G,M; results S,R,I,H,E,D; progress I,P."""
    assert persistent_response("d-1-A,0", [], initialized=True) == '{"C":"d-1-A,0","S":1,"M":[]}'
    assert (
        persistent_response("c", ['{"a":1}', "2"], groups_token="g+/")
        == '{"C":"c","G":"g+/","M":[{"a":1},2]}'
    )
    assert hub_result("0") == '{"I":"0"}'
    assert hub_result("2", result="ok", state={"n": 1}) == '{"S":{"n":1},"R":"ok","I":"2"}'
    assert (
        hub_result("8", error="x", is_hub_exception=True, error_data={"Code": 42})
        == '{"I":"8","H":true,"E":"x","D":{"Code":42}}'
    )
    assert hub_result("9", error="x", is_hub_exception=True) == '{"I":"9","H":true,"E":"x"}'
    assert progress_message("11", 20) == '{"I":"P|11","P":{"I":"11","D":20}}'
    assert hub_result("1", result={"s": "h\u00e9llo \u2603"}) == '{"R":{"s":"héllo ☃"},"I":"1"}'


def test_parse_invocation_normalises_id_to_string() -> None:
    """Invocation ids may be numbers or strings; the server keeps them as strings."""
    assert parse_invocation('{"H":"c3","M":"Echo","A":[1],"I":0}').invocation_id == "0"
    assert parse_invocation('{"H":"c3","M":"Echo","A":[1],"I":"7"}').invocation_id == "7"
    assert parse_invocation('{"H":"c3","M":"x","A":[],"I":1,"S":{"a":1}}').state == {"a": 1}
    for bad in ["[]", '{"M":"x","I":1}', '{"H":"c3","M":"x","A":{},"I":1}', "nope"]:
        with pytest.raises(ValueError):
            parse_invocation(bad)


def test_bus_merges_topics_in_publication_order_and_limits_batches() -> None:
    """Reading after a cursor yields every later message of its topics, in order, once."""
    bus = MessageBus("ABCDEF01", buffer_size=100)
    positions = bus.positions_for(["a", "b"])
    for i in range(12):
        bus.publish("a" if i % 2 else "b", str(i))
    bus.publish("other", "x")
    first = bus.read(positions, 10)
    assert [e.payload for e in first] == [str(i) for i in range(10)]
    for e in first:
        positions[e.topic] = e.message_id
    rest = bus.read(positions, 10)
    assert [e.payload for e in rest] == ["10", "11"]


def test_bus_cursor_round_trip_foreign_and_malformed() -> None:
    """Cursors round-trip; another instance's or malformed cursors mean 'start fresh'."""
    bus = MessageBus("98046728")
    bus.publish("t", "1")
    bus.publish("t", "2")
    cursor = bus.format_cursor({"t": 2, "u": 0})
    assert re.fullmatch(r"d-98046728-[A-Za-z0-9]+,2\|[A-Za-z0-9]+,0", cursor)
    assert bus.parse_cursor(cursor) == {"t": 2, "u": 0}
    assert bus.parse_cursor(cursor.replace("98046728", "11111111")) is None
    for bad in [None, "", "d-", "s-0,1", "d-98046728-A", "d-98046728-A,zz", "d-98046728-|"]:
        assert bus.parse_cursor(bad) is None


def test_bus_buffer_is_bounded_per_topic() -> None:
    """Only the last buffer_size messages of a topic can be replayed."""
    bus = MessageBus("00000001", buffer_size=3)
    for i in range(5):
        bus.publish("t", str(i))
    assert [e.payload for e in bus.read({"t": 0}, 10)] == ["2", "3", "4"]


def test_tokens_round_trip_and_reject_foreign_or_tampered() -> None:
    """Tokens are readable only by the instance that made them and bind groups to an id."""
    p = Protector()
    token = p.connection_token("abc")
    assert p.connection_id(token) == "abc"
    base64.b64decode(token, validate=True)
    assert Protector().connection_id(token) is None
    raw = bytearray(base64.b64decode(token))
    raw[-1] ^= 1
    assert p.connection_id(base64.b64encode(bytes(raw)).decode()) is None
    assert p.connection_id("garbage") is None
    assert p.connection_id(token.replace("+", " ")) in (None, "abc")
    groups = p.groups_token("abc", ["hg-c3.tick"])
    assert p.groups(groups, "abc") == ["hg-c3.tick"]
    assert p.groups(groups, "other") == []
    assert p.groups(token, "abc") == []


def test_cookie_parsing_tolerates_attributes() -> None:
    """Cookie headers with attributes (as forwarded by some clients) still parse."""
    assert parse_cookies(["stubaffinity=abc123; Path=/", "x=1;y=2; HttpOnly"]) == {
        "stubaffinity": "abc123",
        "x": "1",
        "y": "2",
    }


def test_hub_methods_are_public_subclass_methods_only() -> None:
    """Hub methods are the subclass's public functions; hooks and helpers are not."""
    table = RecordingHub.hub_methods()
    assert set(table) == {"add", "nothing", "deferred", "callmeback", "refuse"}
    assert C3Hub.name == "c3" and RecordingHub.name == "Rec"

    class Plain(Hub):
        pass

    assert Plain.name == "Plain"


# -- HTTP endpoints -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
@bounded()
async def test_negotiate_response_shape() -> None:
    """negotiate answers the transcript's document, content type and nosniff header."""
    async with running(keepalive=2.0, disconnect_timeout=6.0) as server:
        code, headers, body = await http_get(
            f"{server.url}/negotiate?clientProtocol=1.5&connectionData={cd('c3')}"
        )
        assert code == 200
        assert headers.getRawHeaders("content-type") == ["application/json; charset=UTF-8"]
        assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]
        doc = json.loads(body)
        assert list(doc) == [
            "Url",
            "ConnectionToken",
            "ConnectionId",
            "KeepAliveTimeout",
            "DisconnectTimeout",
            "ConnectionTimeout",
            "TryWebSockets",
            "ProtocolVersion",
            "TransportConnectTimeout",
            "LongPollDelay",
        ]
        assert doc["Url"] == "/signalr"
        assert b'"KeepAliveTimeout":4.0,"DisconnectTimeout":6.0,"ConnectionTimeout":110.0' in body
        assert doc["ProtocolVersion"] == "1.5"
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", doc["ConnectionId"]
        )
        base64.b64decode(doc["ConnectionToken"], validate=True)
        kind, info = server.log[-1]
        assert kind == "negotiate" and info["query"]["clientProtocol"] == "1.5"


@pytest_twisted.ensureDeferred
@bounded()
async def test_negotiate_version_clamping_and_keepalive_null() -> None:
    """ProtocolVersion is clamped; keepalive=None advertises KeepAliveTimeout null."""
    async with running(keepalive=None) as server:
        assert (await negotiate(server, "c3", protocol="9.9"))["ProtocolVersion"] == "2.0"
        assert (await negotiate(server, "c3", protocol=None))["ProtocolVersion"] == "1.2"
        doc = await negotiate(server, "chat", "C3", protocol="1.4")
        assert doc["ProtocolVersion"] == "1.4"
        assert doc["KeepAliveTimeout"] is None


@pytest_twisted.ensureDeferred
@bounded()
async def test_negotiate_unknown_hub_is_500_empty() -> None:
    """An unknown hub name in connectionData gives HTTP 500 with an empty body."""
    async with running() as server:
        code, _h, body = await http_get(
            f"{server.url}/negotiate?clientProtocol=1.5&connectionData={cd('nosuchhub')}"
        )
        assert (code, body) == (500, b"")
        code, _h, body = await http_get(
            f"{server.url}/negotiate?clientProtocol=1.5&connectionData=%5Bnot-json"
        )
        assert (code, body) == (500, b"")


@pytest_twisted.ensureDeferred
@bounded()
async def test_error_texts_and_ping() -> None:
    """The 400 texts of the real server (no content type, as in transcript 01), and ping."""
    async with running() as server:
        neg = await negotiate(server, "c3")
        while "+" not in neg["ConnectionToken"]:  # a raw "+" arrives as a space
            neg = await negotiate(server, "c3")
        token = quote(neg["ConnectionToken"], safe="")
        base = server.url
        cases = [
            (f"{base}/connect?clientProtocol=1.5", b"Protocol error: Unknown transport."),
            (f"{base}/connect?transport=carrierPigeon", b"Protocol error: Unknown transport."),
            (
                f"{base}/connect?transport=longPolling",
                b"Protocol error: Missing connection token.",
            ),
            (
                f"{base}/connect?transport=foreverFrame&connectionToken={token}",
                b"Protocol error: the foreverFrame transport is not served by txsignalr.testing.",
            ),
            (f"{base}/connect?transport=webSockets", b"Protocol error: Missing connection token."),
            (
                f"{base}/connect?transport=webSockets&connectionToken=garbage",
                b"The ConnectionId is in the incorrect format.",
            ),
            (
                f"{base}/connect?transport=webSockets&connectionToken={neg['ConnectionToken']}",
                b"The ConnectionId is in the incorrect format.",
            ),
            (
                f"{base}/connect?transport=webSockets&connectionToken={token}",
                b"Not a valid web socket request.",
            ),
            (
                f"{base}/negotiate/?clientProtocol=1.5",
                b"Protocol error: Unknown transport.",
            ),
        ]
        for url, text in cases:
            code, headers, body = await http_get(url)
            assert (code, body) == (400, text), url
            assert headers.getRawHeaders("content-type") is None
            assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]
        code, headers, body = await http_get(f"{base}/ping", method="POST")
        assert (code, body) == (200, b'{ "Response": "pong" }')
        assert headers.getRawHeaders("content-type") == ["application/json; charset=UTF-8"]
        assert server.events("ping") == [{}]


@pytest_twisted.ensureDeferred
@bounded()
async def test_refuse_negotiate_until_reset() -> None:
    """refuse_negotiate makes every negotiate fail until it is called with None."""
    async with running() as server:
        server.refuse_negotiate(503, b"busy", "text/html")
        code, headers, body = await http_get(f"{server.url}/negotiate?clientProtocol=1.5")
        assert (code, body) == (503, b"busy")
        assert headers.getRawHeaders("content-type") == ["text/html"]
        server.refuse_negotiate(None)
        assert (await negotiate(server, "c3"))["ProtocolVersion"] == "1.5"


# -- WebSocket session ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
@bounded()
async def test_connect_init_frame_then_start_runs_on_connected() -> None:
    """The first frame is {"C":…,"S":1,"M":[]}; /start answers 'started' and runs OnConnected."""
    rec = RecordingHub()
    async with running(hubs=[rec, ChatHub()], negotiate_cookies={"aff": "1"}) as server:
        code, headers, body = await http_get(
            f"{server.url}/negotiate?clientProtocol=1.5&connectionData={cd('rec')}"
        )
        assert any(c.startswith("aff=1") for c in headers.getRawHeaders("set-cookie"))
        neg = json.loads(body)
        conn = await open_ws(
            server,
            common_query(neg["ConnectionToken"], "rec") + "&tid=3",
            headers={"Cookie": "aff=1; Path=/"},
            origin="null",
        )
        first = await conn.factory.frames.get().addTimeout(5, _reactor())
        assert re.fullmatch(r'\{"C":"d-[0-9A-F]{1,8}-[^"]*","S":1,"M":\[\]\}', first), first
        assert rec.events == []
        connect_info = server.events("connect")[0]
        assert connect_info["connection_id"] == neg["ConnectionId"]
        assert connect_info["cookies"] == {"aff": "1"}
        code, headers, body = await http_get(
            f"{server.url}/start?{common_query(neg['ConnectionToken'], 'rec')}"
        )
        assert (code, body) == (200, b'{ "Response": "started" }')
        assert headers.getRawHeaders("content-type") == ["application/json; charset=UTF-8"]
        assert rec.events == [("connected", neg["ConnectionId"])]
        assert server.connections == [neg["ConnectionId"]]


@pytest_twisted.ensureDeferred
@bounded()
async def test_old_protocol_runs_on_connected_at_connect() -> None:
    """With protocol < 1.4 OnConnected runs on /connect, before the init frame."""
    rec = RecordingHub()
    async with running(hubs=[rec]) as server:
        neg = await negotiate(server, "Rec", protocol=None)
        query = common_query(neg["ConnectionToken"], "Rec").replace("clientProtocol=1.5", "x=1")
        conn = await open_ws(server, query)
        assert (await conn.frame())["S"] == 1
        assert rec.events == [("connected", neg["ConnectionId"])]


@pytest_twisted.ensureDeferred
@bounded()
async def test_invocation_results_errors_and_state() -> None:
    """Results, void, hub and plain errors, unknown methods, state and caller calls."""
    rec = RecordingHub()
    async with running(hubs=[rec, C3Hub(), ChatHub()]) as server:
        _neg, conn = await connect_started(server, "c3", "chat", "rec")
        conn.send({"H": "c3", "M": "echo", "A": [{"s": "h\u00e9llo", "n": [1, 2.5]}], "I": 0})
        assert await conn.result("0") == {"R": {"s": "h\u00e9llo", "n": [1, 2.5]}, "I": "0"}
        conn.send({"H": "REC", "M": "add", "A": [2, 3], "I": "x1"})
        assert await conn.result("x1") == {"R": 5, "I": "x1"}
        conn.send({"H": "rec", "M": "Nothing", "A": [], "I": 2})
        assert await conn.result("2") == {"I": "2"}
        conn.send({"H": "rec", "M": "Deferred", "A": ["later"], "I": 3})
        assert await conn.result("3") == {"R": "later", "I": "3"}
        conn.send({"H": "c3", "M": "Fail", "A": [], "I": 4})
        assert await conn.result("4") == {
            "I": "4",
            "H": True,
            "E": "Intentional failure from c3.Fail()",
            "D": {"Code": 42, "Reason": "requested"},
        }
        conn.send({"H": "rec", "M": "Refuse", "A": [], "I": 5})
        assert await conn.result("5") == {"I": "5", "H": True, "E": "no"}
        conn.send({"H": "C3", "M": "crash", "A": [], "I": 6})
        assert await conn.result("6") == {
            "I": "6",
            "E": "There was an error invoking Hub method 'C3.crash'.",
        }
        conn.send({"H": "c3", "M": "NoSuchMethod", "A": [1], "I": 7})
        assert await conn.result("7") == {
            "I": "7",
            "E": "There was an error invoking Hub method 'c3.NoSuchMethod'.",
        }
        conn.send(
            {
                "H": "chat",
                "M": "IncrementCounter",
                "A": [],
                "I": 8,
                "S": {"counter": 5, "name": "alice"},
            }
        )
        assert await conn.result("8") == {
            "S": {"counter": 6, "lastCalled": "IncrementCounter"},
            "R": 6,
            "I": "8",
        }
        conn.send({"H": "chat", "M": "GetName", "A": [], "I": 9, "S": {"name": "alice"}})
        assert await conn.result("9") == {"R": "alice", "I": "9"}
        conn.send({"H": "chat", "M": "Whoami", "A": [], "I": 10})
        assert (await conn.result("10"))["R"] == server.connections[0]
        conn.send({"H": "rec", "M": "CallMeBack", "A": ["hey"], "I": 11})
        call = await conn.until(lambda f: bool(f.get("M")))
        assert call["M"] == [{"H": "Rec", "M": "calledBack", "A": ["hey"], "S": {"seen": "hey"}}]
        assert await conn.result("11") == {"S": {"seen": "hey"}, "R": "ok", "I": "11"}
        # unknown hub and malformed JSON: nothing comes back, the connection stays usable
        conn.send({"H": "nohub", "M": "x", "A": [], "I": 12})
        conn.proto.sendMessage(b"{not json")
        conn.send({"H": "c3", "M": "Echo", "A": [1], "I": 13})
        assert await conn.frame() == {"R": 1, "I": "13"}
        received = [i["payload"] for i in server.events("received")]
        assert received[-2] == "{not json"


@pytest_twisted.ensureDeferred
@bounded()
async def test_detailed_errors_and_argument_count() -> None:
    """detailed_errors sends exception messages and the resolution texts."""
    async with running(detailed_errors=True) as server:
        _neg, conn = await connect_started(server, "c3")
        conn.send({"H": "c3", "M": "Crash", "A": [], "I": 0})
        assert await conn.result("0") == {
            "I": "0",
            "E": "Intentional non-hub exception from c3.Crash()",
        }
        conn.send({"H": "c3", "M": "NoSuchMethod", "A": [1], "I": 1})
        assert await conn.result("1") == {
            "I": "1",
            "E": "'NoSuchMethod' method could not be resolved. No method found with that name.",
        }
        conn.send({"H": "c3", "M": "echo", "A": [1, 2], "I": 2})
        error = (await conn.result("2"))["E"]
        assert error.startswith("'echo' method could not be resolved. Potential candidates are: ")
        assert "Echo(value:Object):Object" in error


@pytest_twisted.ensureDeferred
@bounded()
async def test_progress_messages_arrive_inside_m_before_the_result() -> None:
    """Slow reports 20..100 as {"I":"P|id","P":{…}} inside M, then the result."""
    async with running() as server:
        _neg, conn = await connect_started(server, "c3")
        conn.send({"H": "c3", "M": "Slow", "A": [50], "I": 11})
        progress = []
        while True:
            frame = await conn.frame()
            if "I" in frame:
                assert frame == {"R": "slept 50 ms", "I": "11"}
                break
            for m in frame["M"]:
                assert m["I"] == "P|11"
                progress.append(m["P"])
        assert progress == [{"I": "11", "D": d} for d in (20, 40, 60, 80, 100)]


@pytest_twisted.ensureDeferred
@bounded()
async def test_client_method_broadcast_and_groups() -> None:
    """Send reaches both clients; JoinGroup sends G; group messages reach members only."""
    async with running() as server:
        _na, a = await connect_started(server, "chat")
        _nb, b = await connect_started(server, "chat")
        a.send({"H": "chat", "M": "Send", "A": ["alice", "hi all"], "I": 0})
        for c in (a, b):
            frame = await c.until(lambda f: bool(f.get("M")))
            assert frame["M"] == [{"H": "chat", "M": "addMessage", "A": ["alice", "hi all"]}]
            assert list(frame) == ["C", "M"]
        assert await a.result("0") == {"I": "0"}
        a.send({"H": "chat", "M": "JoinGroup", "A": ["g1"], "I": 1})
        g_frame = await a.until(lambda f: "G" in f)
        assert list(g_frame) == ["C", "G", "M"] and g_frame["M"] == []
        b.send({"H": "chat", "M": "SendToGroup", "A": ["g1", "to group"], "I": 0})
        frame = await a.until(lambda f: bool(f.get("M")))
        assert frame["M"] == [{"H": "chat", "M": "groupMessage", "A": ["g1", "to group"]}]
        assert await b.result("0") == {"I": "0"}
        server.send_to_all("chat", "fromServer", 1)
        for c in (a, b):
            assert (await c.until(lambda f: bool(f.get("M"))))["M"][0]["M"] == "fromServer"
        a_id = server.connections[0]
        assert server.groups_of(a_id) == [("chat", "g1")]
        server.remove_from_group(a_id, "chat", "g1")
        assert "G" in await a.until(lambda f: "G" in f or bool(f.get("M")))
        server.send_to_connection(a_id, "chat", "direct", "x")
        direct = await a.until(lambda f: bool(f.get("M")))
        assert direct["M"] == [{"H": "chat", "M": "direct", "A": ["x"]}]


@pytest_twisted.ensureDeferred
@bounded()
async def test_c3_pushes_to_subscribed_topics() -> None:
    """Subscribe joins topics (G), then tick/heartbeat/marketSummaries arrive with one sequence."""
    async with running(hubs=[C3Hub(interval=0.02)]) as server:
        _neg, conn = await connect_started(server, "c3")
        conn.send(
            {
                "H": "c3",
                "M": "Subscribe",
                "A": [["heartbeat", "tick", "market_summaries", "invalid_x", "private_o"]],
                "I": 0,
            }
        )
        assert (await conn.result("0"))["R"] == [
            {"Success": True, "ErrorCode": None},
            {"Success": True, "ErrorCode": None},
            {"Success": True, "ErrorCode": None},
            {"Success": False, "ErrorCode": "INVALID_CHANNEL"},
            {"Success": False, "ErrorCode": "UNAUTHORIZED"},
        ]
        seen: dict[str, Any] = {}
        while len(seen) < 3:
            frame = await conn.until(lambda f: bool(f.get("M")))
            for m in frame["M"]:
                assert m["H"] == "c3"
                seen.setdefault(m["M"], m["A"])
        assert seen["heartbeat"] == []
        assert set(seen["tick"][0]) == {"Seq", "Ts"}
        summary = decode_deflate_base64(seen["marketSummaries"][0])
        assert [d["symbol"] for d in summary["deltas"]] == ["BTC-USD", "ETH-USD"]
        conn.send({"H": "c3", "M": "Authenticate", "A": ["bad", 1, "r", "s"], "I": 1})
        assert (await conn.result("1"))["R"] == {"Success": False, "ErrorCode": "INVALID_APIKEY"}
        conn.send({"H": "c3", "M": "Authenticate", "A": ["key", 1, "r", "s"], "I": 2})
        assert (await conn.result("2"))["R"] == {"Success": True, "ErrorCode": None}
        conn.send({"H": "c3", "M": "IsAuthenticated", "A": [], "I": 3})
        assert (await conn.result("3"))["R"] is True


@pytest_twisted.ensureDeferred
@bounded(20)
async def test_drop_and_reconnect_replays_exactly_the_missed_messages() -> None:
    """After a dropped socket, /reconnect with messageId+groupsToken replays the gap once."""
    rec = RecordingHub()
    async with running(hubs=[C3Hub(interval=0.02), rec]) as server:
        neg, conn = await connect_started(server, "c3", "rec")
        conn.send({"H": "c3", "M": "Subscribe", "A": [["tick"]], "I": 0})
        cursor = groups_token = None
        seqs: list[int] = []
        while len(seqs) < 5 or groups_token is None:
            frame = await conn.frame()
            if "C" in frame:
                cursor = frame["C"]
                groups_token = frame.get("G", groups_token)
                seqs += [m["A"][0]["Seq"] for m in frame["M"] if m.get("M") == "tick"]
        closed = server.when_event("socket_closed")
        conn.drop()
        await closed
        await sleep(0.3)
        assert server.connections == [neg["ConnectionId"]]
        query = (
            common_query(neg["ConnectionToken"], "c3", "rec")
            + f"&messageId={quote(cursor or '', safe='')}"
            + f"&groupsToken={quote(groups_token or '', safe='')}"
        )
        again = await open_ws(server, query, kind="reconnect")
        replay = await again.frame()
        assert "S" not in replay
        more = [m["A"][0]["Seq"] for m in replay["M"]]
        assert len(more) > 1
        while len(more) < 30:
            frame = await again.frame()
            more += [m["A"][0]["Seq"] for m in frame["M"] if m.get("M") == "tick"]
        whole = seqs + more
        assert whole == list(range(whole[0], whole[0] + len(whole)))
        info = server.events("reconnect")[0]
        assert info["cursor_valid"] is True and info["groups"] == ["hg-c3.tick"]
        assert ("reconnected", neg["ConnectionId"]) in rec.events


@pytest_twisted.ensureDeferred
@bounded()
async def test_reconnect_with_foreign_groups_token_rejoins_nothing() -> None:
    """A groups token made for another connection is ignored on reconnect."""
    async with running() as server:
        na, a = await connect_started(server, "chat")
        a.send({"H": "chat", "M": "JoinGroup", "A": ["g1"], "I": 0})
        token_a = (await a.until(lambda f: "G" in f))["G"]
        nb, b = await connect_started(server, "chat")
        b.drop()
        query = (
            common_query(nb["ConnectionToken"], "chat")
            + f"&messageId=garbage&groupsToken={quote(token_a, safe='')}"
        )
        await open_ws(server, query, kind="reconnect")
        info = server.events("reconnect")[0]
        assert info["groups"] == [] and info["cursor_valid"] is False
        assert server.groups_of(nb["ConnectionId"]) == []
        assert server.groups_of(na["ConnectionId"]) == [("chat", "g1")]


@pytest_twisted.ensureDeferred
@bounded()
async def test_abort_closes_socket_and_fires_disconnected_with_stop_called() -> None:
    """/abort answers 200 text/plain, closes the WebSocket and runs OnDisconnected(True)."""
    rec = RecordingHub()
    async with running(hubs=[rec]) as server:
        neg, conn = await connect_started(server, "rec")
        code, headers, body = await http_get(
            f"{server.url}/abort?{common_query(neg['ConnectionToken'], 'rec')}", method="POST"
        )
        assert (code, body) == (200, b"")
        assert headers.getRawHeaders("content-type") == ["text/plain"]
        await conn.closed
        assert server.events("disconnected") == [
            {"connection_id": neg["ConnectionId"], "stop_called": True, "transport": "webSockets"}
        ]
        assert rec.events[-1] == ("disconnected", (neg["ConnectionId"], True))
        assert server.connections == []


@pytest_twisted.ensureDeferred
@bounded()
async def test_lost_socket_expires_after_disconnect_timeout() -> None:
    """Without /abort the connection ends with stop_called False after the window."""
    rec = RecordingHub()
    async with running(hubs=[rec], disconnect_timeout=0.2, disconnect_threshold=0.1) as server:
        neg, conn = await connect_started(server, "rec")
        gone = server.when_event("disconnected")
        conn.drop()
        assert await gone == {
            "connection_id": neg["ConnectionId"],
            "stop_called": False,
            "transport": "webSockets",
        }
        assert rec.events[-1] == ("disconnected", (neg["ConnectionId"], False))


@pytest_twisted.ensureDeferred
@bounded()
async def test_keepalives_and_switching_them_off() -> None:
    """Idle sockets get {} every keepalive seconds, and none when disabled."""
    async with running(keepalive=0.05) as server:
        _neg, conn = await connect_started(server, "chat")
        assert await conn.frame(keepalives=True) == {}
        server.keepalives_enabled = False
        await sleep(0.1)
        while conn.factory.frames.pending:
            conn.factory.frames.pending.pop()
        await sleep(0.2)
        assert conn.factory.frames.pending == []


@pytest_twisted.ensureDeferred
@bounded()
async def test_oversized_message_drops_the_tcp_connection() -> None:
    """A client message over 64 KiB makes the server drop TCP without a close frame."""
    async with running() as server:
        _neg, conn = await connect_started(server, "c3")
        conn.send({"H": "c3", "M": "Echo", "A": ["y" * 70000], "I": 0})
        assert await conn.closed is False


@pytest_twisted.ensureDeferred
@bounded()
async def test_drop_all_transports_keeps_the_connection() -> None:
    """drop_all_transports aborts sockets without ending the SignalR connection."""
    async with running() as server:
        neg, conn = await connect_started(server, "chat")
        server.drop_all_transports()
        assert await conn.closed is False
        assert server.connections == [neg["ConnectionId"]]
        assert server.events("disconnected") == []


def _ours(call: Any) -> bool:
    func = call.func
    owner = getattr(func, "__self__", None)
    if isinstance(owner, LoopingCall):
        func = owner.f
    return str(getattr(func, "__module__", "")).startswith("txsignalr")


@pytest_twisted.ensureDeferred
@bounded()
async def test_stop_leaves_no_delayed_calls_and_restart_refuses_old_tokens() -> None:
    """stop() cancels every timer; listening again on the same port is a fresh instance."""
    server = SignalRServer(
        _reactor(), hubs=[C3Hub(interval=0.05), ChatHub()], keepalive=1.0, disconnect_timeout=30
    )
    port = await server.listen(0)
    try:
        neg, conn = await connect_started(server, "c3", "chat")
        _neg2, other = await connect_started(server, "chat")
        other.drop()
        await server.when_event("socket_closed")
        conn.send({"H": "c3", "M": "Slow", "A": [10000], "I": 0})
        await server.when_event("received")
        assert [c for c in _reactor().getDelayedCalls() if _ours(c)]
        await server.stop()
        assert [c for c in _reactor().getDelayedCalls() if _ours(c)] == []
        assert await conn.closed is False
        assert await server.listen(port) == port
        code, _h, body = await http_get(
            f"{server.url}/connect?{common_query(neg['ConnectionToken'], 'c3')}"
        )
        assert (code, body) == (400, b"The ConnectionId is in the incorrect format.")
        neg3, _conn3 = await connect_started(server, "c3")
        assert neg3["ConnectionId"] != neg["ConnectionId"]
    finally:
        await server.stop()
    assert [c for c in _reactor().getDelayedCalls() if _ours(c)] == []


# -- robustness: sizes, odd JSON, failures while sending, reconnect groups ------------


class EdgeHub(Hub):
    """Hub methods that produce big, odd or failing results."""

    name = "edge"

    def Echo(self, call: HubCall, value: Any) -> Any:
        return value

    def Shout(self, call: HubCall, value: Any) -> None:
        self.send_to_all("shout", value)

    def Blob(self, call: HubCall, n: int) -> str:
        return "x" * n

    def Many(self, call: HubCall, n: int, size: int) -> None:
        for i in range(n):
            self.send_to_all("chunk", i, "y" * size)

    def Nested(self, call: HubCall, depth: int) -> Any:
        value: Any = []
        for _ in range(depth):
            value = [value]
        return value

    def Anonymous(self, call: HubCall) -> None:
        raise HubException(None)

    def Unprintable(self, call: HubCall) -> None:
        raise _Unprintable()


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this exception")


async def drain(conn: Conn, timeout: float = 0.5) -> list[Any]:
    """Every non-keepalive frame until none arrives for ``timeout`` seconds."""
    frames: list[Any] = []
    try:
        while True:
            frames.append(await conn.frame(timeout=timeout))
    except defer.TimeoutError:
        pass
    return frames


def messages(frames: list[Any]) -> list[Any]:
    return [m for f in frames if "C" in f for m in f["M"]]


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every twisted.logger event emitted during the test."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
@bounded()
async def test_result_over_64k_is_delivered() -> None:
    """The 64 KiB limit is on incoming messages only: a 70,000 character result arrives."""
    async with running(hubs=[EdgeHub()]) as server:
        _neg, conn = await connect_started(server, "edge")
        conn.send({"H": "edge", "M": "Blob", "A": [70000], "I": 0})
        assert await conn.result("0") == {"R": "x" * 70000, "I": "0"}


@pytest_twisted.ensureDeferred
@bounded()
async def test_batch_over_64k_is_delivered() -> None:
    """Ten 8 KB broadcasts in one turn make one ~80 KB frame, which arrives whole."""
    async with running(hubs=[EdgeHub()]) as server:
        _na, a = await connect_started(server, "edge")
        _nb, b = await connect_started(server, "edge")
        a.send({"H": "edge", "M": "Many", "A": [10, 8000], "I": 0})
        frames = await drain(b)
        assert [m["A"][0] for m in messages(frames)] == list(range(10))
        assert max(len(f["M"]) for f in frames if "C" in f) == 10


@pytest_twisted.ensureDeferred
@bounded()
async def test_incoming_message_of_exactly_64k_is_accepted() -> None:
    """A client message of exactly 64 KiB is still served (only larger ones drop TCP)."""
    async with running(hubs=[EdgeHub()]) as server:
        _neg, conn = await connect_started(server, "edge")
        prefix = b'{"H":"edge","M":"Echo","I":0,"A":["'
        suffix = b'"]}'
        filler = b"z" * (64 * 1024 - len(prefix) - len(suffix))
        conn.proto.sendMessage(prefix + filler + suffix)
        assert (await conn.result("0"))["R"] == filler.decode()


@pytest_twisted.ensureDeferred
@bounded()
async def test_lone_surrogate_is_echoed_as_replacement_character() -> None:
    """A lone UTF-16 surrogate from a client comes back as U+FFFD, like .NET's UTF-8."""
    async with running(hubs=[EdgeHub()]) as server:
        _neg, conn = await connect_started(server, "edge")
        conn.proto.sendMessage(b'{"H":"edge","M":"Echo","A":["a\\ud83d|\\udc00b"],"I":0}')
        assert await conn.result("0") == {"R": "a\ufffd|\ufffdb", "I": "0"}
        conn.send({"H": "edge", "M": "Echo", "A": [1], "I": 1})
        assert await conn.result("1") == {"R": 1, "I": "1"}


@pytest_twisted.ensureDeferred
@bounded()
async def test_lone_surrogate_broadcast_reaches_everyone_with_the_rest_of_the_batch() -> None:
    """A broadcast with a lone surrogate loses neither itself nor its batch neighbours."""
    async with running(hubs=[EdgeHub()]) as server:
        _na, a = await connect_started(server, "edge")
        _nb, b = await connect_started(server, "edge")
        a.proto.sendMessage(b'{"H":"edge","M":"Shout","A":["x\\udc00"],"I":0}')
        a.send({"H": "edge", "M": "Shout", "A": ["fine"], "I": 1})
        for conn in (a, b):
            shouts = [m["A"][0] for m in messages(await drain(conn))]
            assert shouts == ["x\ufffd", "fine"]


@pytest_twisted.ensureDeferred
@bounded()
async def test_a_failed_send_loses_no_messages_and_is_logged(
    logged: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When sending a frame raises, its messages are sent with the next frame instead."""
    from txsignalr.testing._transport_ws import _SignalRWebSocket

    original = _SignalRWebSocket.send_text
    failures = [2]

    def flaky(self: _SignalRWebSocket, text: str) -> None:
        if failures[0] and "first" in text:
            failures[0] -= 1
            raise RuntimeError("simulated send failure")
        original(self, text)

    monkeypatch.setattr(_SignalRWebSocket, "send_text", flaky)
    async with running(hubs=[EdgeHub()]) as server:
        na, a = await connect_started(server, "edge")
        nb, b = await connect_started(server, "edge")
        server.send_to_all("edge", "m", "first")
        await server.sleep(0.1)
        assert failures == [0]
        server.send_to_all("edge", "m", "second")
        for conn in (a, b):
            assert [m["A"][0] for m in messages(await drain(conn))] == ["first", "second"]
    failed = [e for e in logged if e.get("log_failure") is not None]
    assert {e.get("connection_id") for e in failed} == {na["ConnectionId"], nb["ConnectionId"]}
    text = repr(failed)
    assert na["ConnectionToken"] not in text and nb["ConnectionToken"] not in text


@pytest_twisted.ensureDeferred
@bounded()
async def test_a_failed_result_send_is_logged_not_left_in_a_deferred(
    logged: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result frame that cannot be sent is logged; no 'Unhandled error in Deferred'."""
    import gc

    from txsignalr.testing._transport_ws import _SignalRWebSocket

    original = _SignalRWebSocket.send_text

    def flaky(self: _SignalRWebSocket, text: str) -> None:
        if '"I":"5"' in text:
            raise RuntimeError("simulated send failure")
        original(self, text)

    monkeypatch.setattr(_SignalRWebSocket, "send_text", flaky)
    async with running(hubs=[EdgeHub()]) as server:
        neg, conn = await connect_started(server, "edge")
        conn.send({"H": "edge", "M": "Echo", "A": [5], "I": 5})
        conn.send({"H": "edge", "M": "Echo", "A": [6], "I": 6})
        assert await conn.frame() == {"R": 6, "I": "6"}
    gc.collect()
    failed = [e for e in logged if e.get("log_failure") is not None]
    assert [e.get("connection_id") for e in failed] == [neg["ConnectionId"]]
    assert not [e for e in logged if "Unhandled error" in str(e.get("log_format"))]


@pytest_twisted.ensureDeferred
@bounded()
async def test_unserialisable_outcomes_give_error_results() -> None:
    """A too deeply nested return value or an exception without text still gets an E."""
    async with running(hubs=[EdgeHub()], detailed_errors=True) as server:
        _neg, conn = await connect_started(server, "edge")
        conn.send({"H": "edge", "M": "Nested", "A": [5000], "I": 0})
        assert set(await conn.result("0")) == {"I", "E"}
        conn.send({"H": "edge", "M": "Unprintable", "A": [], "I": 1})
        assert await conn.result("1") == {
            "I": "1",
            "E": "There was an error invoking Hub method 'edge.Unprintable'.",
        }
        conn.send({"H": "edge", "M": "Nested", "A": [3], "I": 2})
        assert await conn.result("2") == {"R": [[[[]]]], "I": "2"}


@pytest_twisted.ensureDeferred
@bounded()
async def test_deeply_nested_client_json_is_ignored_and_the_socket_kept() -> None:
    """60 KB of '[' is malformed input: no reply, the socket stays usable."""
    async with running(hubs=[EdgeHub()]) as server:
        _neg, conn = await connect_started(server, "edge")
        conn.proto.sendMessage(b"[" * 60000)
        conn.send({"H": "edge", "M": "Echo", "A": [7], "I": 1})
        assert await conn.frame() == {"R": 7, "I": "1"}
        assert not conn.closed.called


@pytest_twisted.ensureDeferred
@bounded()
async def test_deeply_nested_connection_data_is_an_empty_500() -> None:
    """Deeply nested connectionData is refused like any malformed one: 500, empty body."""
    async with running() as server:
        deep = quote("[" * 3000, safe="")
        for command in ("negotiate", "connect"):
            code, headers, body = await http_get(
                f"{server.url}/{command}?transport=webSockets&connectionToken="
                f"{quote(server.connection_token('x'), safe='')}"
                f"&connectionData={deep}"
            )
            assert (code, body) == (500, b""), command
            assert headers.getRawHeaders("content-type") is None


@pytest_twisted.ensureDeferred
@bounded()
async def test_server_side_group_add_while_away_survives_reconnect() -> None:
    """A group added while the socket was gone is kept on /reconnect (fresh G sent) and
    the group message published meanwhile is delivered exactly once."""
    async with running(hubs=[ChatHub()], keepalive=None) as server:
        neg, conn = await connect_started(server, "chat")
        cid = neg["ConnectionId"]
        conn.send({"H": "chat", "M": "Send", "A": ["x", "y"], "I": 0})
        cursor = (await conn.until(lambda f: "C" in f))["C"]
        closed = server.when_event("socket_closed")
        conn.drop()
        await closed
        server.add_to_group(cid, "chat", "vip")
        server.send_to_group("chat", "vip", "groupMessage", "vip", "while away")
        query = (
            common_query(neg["ConnectionToken"], "chat") + f"&messageId={quote(cursor, safe='')}"
        )
        again = await open_ws(server, query, kind="reconnect")
        server.send_to_group("chat", "vip", "groupMessage", "vip", "after")
        frames = await drain(again)
        assert server.groups_of(cid) == [("chat", "vip")]
        assert server.events("reconnect")[0]["groups"] == ["hg-chat.vip"]
        assert [m["A"][1] for m in messages(frames)] == ["while away", "after"]
        token = next(f["G"] for f in frames if "G" in f)
        assert server.groups_in_token(token, cid) == ["hg-chat.vip"]


@pytest_twisted.ensureDeferred
@bounded()
async def test_join_whose_groups_token_was_lost_survives_reconnect() -> None:
    """A Join whose G frame never reached the client keeps its group on /reconnect with
    the older cursor, and group messages published since the join are replayed once."""
    async with running(hubs=[ChatHub()], keepalive=None) as server:
        neg, conn = await connect_started(server, "chat")
        cid = neg["ConnectionId"]
        server.send_to_all("chat", "fromServer", 0)
        old_cursor = (await conn.until(lambda f: bool(f.get("M"))))["C"]
        conn.send({"H": "chat", "M": "JoinGroup", "A": ["g1"], "I": 1})
        await conn.result("1")
        server.send_to_group("chat", "g1", "groupMessage", "g1", "one")
        await conn.until(lambda f: bool(f.get("M")))
        closed = server.when_event("socket_closed")
        conn.drop()
        await closed
        server.send_to_group("chat", "g1", "groupMessage", "g1", "two")
        query = (
            common_query(neg["ConnectionToken"], "chat")
            + f"&messageId={quote(old_cursor, safe='')}"
        )
        again = await open_ws(server, query, kind="reconnect")
        frames = await drain(again)
        assert server.groups_of(cid) == [("chat", "g1")]
        assert [m["A"][1] for m in messages(frames)] == ["one", "two"]
        assert any("G" in f for f in frames)


@pytest_twisted.ensureDeferred
@bounded()
async def test_hub_exception_without_message_has_the_dotnet_default_text() -> None:
    """HubException(None) still sends an E (else JS clients would see success)."""
    async with running(hubs=[EdgeHub()]) as server:
        _neg, conn = await connect_started(server, "edge")
        conn.send({"H": "edge", "M": "Anonymous", "A": [], "I": 0})
        assert await conn.result("0") == {
            "I": "0",
            "H": True,
            "E": "Exception of type 'Microsoft.AspNet.SignalR.HubException' was thrown.",
        }


@pytest_twisted.ensureDeferred
@bounded()
async def test_event_log_is_bounded() -> None:
    """server.log keeps only the newest event_log_size events; events/when_event still work."""
    async with running(hubs=[EdgeHub()], event_log_size=5) as server:
        _neg, conn = await connect_started(server, "edge")
        for i in range(20):
            conn.send({"H": "edge", "M": "Echo", "A": [i], "I": i})
        await conn.result("19")
        received = server.when_event("received")
        conn.send({"H": "edge", "M": "Echo", "A": [20], "I": 20})
        assert (await received)["payload"] == '{"H": "edge", "M": "Echo", "A": [20], "I": 20}'
        await conn.result("20")
        assert len(server.log) == 5
        assert server.log[-1][1]["payload"].endswith('"I": 20}')
        assert [json.loads(e["payload"])["I"] for e in server.events("received")] == [
            16,
            17,
            18,
            19,
            20,
        ]


@pytest_twisted.ensureDeferred
@bounded()
async def test_500_and_101_headers_match_the_transcripts() -> None:
    """The 500 has no nosniff header and no type; the 101 has nosniff and no Server."""
    async with running() as server:
        code, headers, body = await http_get(
            f"{server.url}/negotiate?clientProtocol=1.5&connectionData={cd('nosuchhub')}"
        )
        assert (code, body) == (500, b"")
        assert headers.getRawHeaders("x-content-type-options") is None
        assert headers.getRawHeaders("content-type") is None
        neg = await negotiate(server, "chat")
        conn = await open_ws(server, common_query(neg["ConnectionToken"], "chat"))
        response_headers = conn.proto.http_headers
        assert response_headers.get("x-content-type-options") == "nosniff"
        assert "server" not in response_headers


# -- Server-Sent Events and long polling ----------------------------------------------


@pytest_twisted.ensureDeferred
@bounded()
async def test_sse_bytes_initialized_init_frame_keepalive_push_and_send_result() -> None:
    """SSE: text/event-stream, 'data: initialized', the init frame, {} keep-alives,
    pushes as data events, and the hub result as the /send response body."""
    async with running(keepalive=0.1) as server:
        neg = await negotiate(server, "chat")
        q = transport_query(neg["ConnectionToken"], "serverSentEvents", "chat")
        ex = request("GET", f"{server.url}/connect?{q}", headers={"Accept": "text/event-stream"})
        await ex.headers_received
        assert ex.code == 200
        assert ex.header("content-type") == ["text/event-stream"]
        assert ex.header("x-content-type-options") == ["nosniff"]
        await wait_until(lambda: b"data: {}\n\n" in ex.raw, "a keep-alive", 5)
        raw = bytes(ex.raw)
        assert raw.startswith(b"data: initialized\n\n")
        init = raw.split(b"\n\n")[1]
        assert re.fullmatch(rb'data: \{"C":"d-[0-9A-F]{8}-[^"]*","S":1,"M":\[\]\}', init), raw
        _ex, body = await fetch("GET", f"{server.url}/start?{q}")
        assert body == b'{ "Response": "started" }'
        form = "data=" + quote(json.dumps({"H": "chat", "M": "Send", "A": ["a", "b+c"], "I": 0}))
        sent, body = await fetch("POST", f"{server.url}/send?{q}", form.encode())
        assert (sent.code, body) == (200, b'{"I":"0"}')
        assert sent.header("content-type") == ["application/json; charset=UTF-8"]
        push = b'"M":[{"H":"chat","M":"addMessage","A":["a","b+c"]}]}\n\n'
        await wait_until(lambda: push in ex.raw, "the broadcast on the stream", 5)
        connect = server.events("connect")[0]
        assert connect["transport"] == "serverSentEvents"
        assert server.events("received")[0]["transport"] == "serverSentEvents"
        ex.drop()


@pytest_twisted.ensureDeferred
@bounded()
async def test_sse_progress_and_caller_calls_are_on_the_stream_with_the_result() -> None:
    """Over SSE every progress message and caller call is on the stream by the time the
    /send result is read (they are flushed before the result is answered)."""
    rec = RecordingHub()
    async with running(hubs=[C3Hub(), rec]) as server:
        client = TransportClient(server, "serverSentEvents", "c3", "rec")
        await client.connect()
        result = await client.invoke("c3", "Slow", [50], 11)
        assert result == {"R": "slept 50 ms", "I": "11"}
        await sleep(0.05)  # the other TCP connection: let the reactor read it
        pending = [m for f in list(client.frames.pending) for m in f.get("M", [])]
        assert [m["P"]["D"] for m in pending] == [20, 40, 60, 80, 100]
        result = await client.invoke("rec", "CallMeBack", ["hey"], 12)
        assert result == {"S": {"seen": "hey"}, "R": "ok", "I": "12"}
        await sleep(0.05)
        last = client.frames.pending[-1]["M"]
        assert last == [{"H": "Rec", "M": "calledBack", "A": ["hey"], "S": {"seen": "hey"}}]


@pytest_twisted.ensureDeferred
@bounded()
async def test_long_polling_connect_poll_held_then_answered_and_send() -> None:
    """LP: /connect answers the init frame at once; a poll is held until a push; /send
    returns the hub result."""
    async with running() as server:
        neg = await negotiate(server, "chat")
        q = transport_query(neg["ConnectionToken"], "longPolling", "chat")
        ex, body = await fetch("POST", f"{server.url}/connect?{q}", b"")
        assert ex.code == 200
        assert ex.header("content-type") == ["application/json; charset=UTF-8"]
        init = json.loads(body)
        assert list(init) == ["C", "S", "M"] and init["S"] == 1 and init["M"] == []
        _ex, started = await fetch("GET", f"{server.url}/start?{q}")
        assert started == b'{ "Response": "started" }'
        poll = request("POST", f"{server.url}/poll?{q}", f"messageId={quote(init['C'])}".encode())
        await poll.headers_received
        await sleep(0.2)
        assert not poll.body.called, "the poll is held while there is nothing to send"
        server.send_to_all("chat", "pushed", 1)
        frame = json.loads(await poll.body)
        assert frame["M"] == [{"H": "chat", "M": "pushed", "A": [1]}]
        assert frame["C"] != init["C"]
        form = "data=" + quote(json.dumps({"H": "chat", "M": "Whoami", "A": [], "I": 3}))
        sent, result = await fetch("POST", f"{server.url}/send?{q}", form.encode())
        assert (sent.code, json.loads(result)) == (200, {"R": neg["ConnectionId"], "I": "3"})
        assert server.events("poll")[0]["cursor_valid"] is True
        assert server.events("poll")[0]["transport"] == "longPolling"


@pytest_twisted.ensureDeferred
@bounded()
async def test_long_poll_times_out_with_leading_keepalive_spaces() -> None:
    """A held poll writes a space every keep-alive and answers {"C":…,"M":[]} after
    connection_timeout; GET is accepted for /connect too."""
    async with running(keepalive=0.05, connection_timeout=0.4) as server:
        neg = await negotiate(server, "chat")
        q = transport_query(neg["ConnectionToken"], "longPolling", "chat")
        _ex, body = await fetch("GET", f"{server.url}/connect?{q}")
        cursor = json.loads(body)["C"]
        _ex, body = await fetch("POST", f"{server.url}/poll?{q}&messageId={quote(cursor)}")
        assert body.startswith(b" "), body
        assert json.loads(body.lstrip(b" ")) == {"C": cursor, "M": []}


@pytest_twisted.ensureDeferred
@bounded()
async def test_long_poll_cursor_from_query_and_from_form_body() -> None:
    """The poll's messageId is read from the query first, then from the form body."""
    async with running(keepalive=None) as server:
        neg = await negotiate(server, "chat")
        q = transport_query(neg["ConnectionToken"], "longPolling", "chat")
        _ex, body = await fetch("POST", f"{server.url}/connect?{q}", b"")
        start = json.loads(body)["C"]
        server.send_to_all("chat", "n", 1)
        server.send_to_all("chat", "n", 2)
        await server.sleep(0.05)
        for where in ("query", "form"):
            url = f"{server.url}/poll?{q}"
            form = b""
            if where == "query":
                url += f"&messageId={quote(start)}"
            else:
                form = f"messageId={quote(start)}".encode()
            _ex, body = await fetch("POST", url, form)
            frame = json.loads(body)
            assert [m["A"][0] for m in frame["M"]] == [1, 2], where
        # both in query and form: the query (the latest cursor) wins, so the poll is held
        poll = request(
            "POST",
            f"{server.url}/poll?{q}&messageId={quote(frame['C'])}",
            f"messageId={quote(start)}".encode(),
        )
        await sleep(0.1)
        assert not poll.body.called
        poll.drop()
        assert [e["cursor_valid"] for e in server.events("poll")][:2] == [True, True]


@pytest_twisted.ensureDeferred
@bounded()
async def test_long_polling_frames_carry_l_when_long_poll_delay_is_set() -> None:
    """long_poll_delay: negotiate LongPollDelay in seconds, "L" in ms in LP frames."""
    async with running(long_poll_delay=0.25) as server:
        neg = await negotiate(server, "chat")
        assert neg["LongPollDelay"] == 0.25
        q = transport_query(neg["ConnectionToken"], "longPolling", "chat")
        _ex, body = await fetch("POST", f"{server.url}/connect?{q}", b"")
        assert list(json.loads(body)) == ["C", "S", "L", "M"]
        assert json.loads(body)["L"] == 250


@pytest_twisted.ensureDeferred
@bounded()
@pytest.mark.parametrize("transport", ["serverSentEvents", "longPolling"])
async def test_bad_send_is_a_bare_500(transport: str) -> None:
    """Malformed JSON, an unknown hub or a missing data field on /send give HTTP 500."""
    async with running() as server:
        client = TransportClient(server, transport, "chat")
        await client.connect()
        bodies = [
            b"data=%7Bnot+json",
            b"data=" + quote(json.dumps({"H": "nohub", "M": "x", "A": [], "I": 0})).encode(),
            b"other=1",
        ]
        for body in bodies:
            ex, answer = await fetch("POST", client.url("send"), body)
            assert (ex.code, answer) == (500, b""), body
        assert await client.invoke("chat", "Whoami", [], 1) == {
            "R": client.neg["ConnectionId"],
            "I": "1",
        }
        client.drop()


@pytest_twisted.ensureDeferred
@bounded()
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_invoke_push_and_groups_on_every_transport(transport: str) -> None:
    """Results, broadcasts, G tokens and group messages work the same on each transport."""
    async with running(keepalive=None) as server:
        client = TransportClient(server, transport, "chat")
        await client.connect()
        assert await client.invoke("chat", "IncrementCounter", [], 0) == {
            "S": {"counter": 1, "lastCalled": "IncrementCounter"},
            "R": 1,
            "I": "0",
        }
        assert await client.invoke("chat", "JoinGroup", ["g"], 1) == {"I": "1"}
        while client.groups_token is None:
            await client.frame()
        assert server.groups_in_token(client.groups_token, client.neg["ConnectionId"]) == [
            "hg-chat.g"
        ]
        server.send_to_group("chat", "g", "groupMessage", "g", "hi")
        server.send_to_all("chat", "all", 2)
        got = await client.messages_until(2)
        assert got == [
            {"H": "chat", "M": "groupMessage", "A": ["g", "hi"]},
            {"H": "chat", "M": "all", "A": [2]},
        ]
        for kind in ("connect", "start", "received"):
            assert {e["transport"] for e in server.events(kind)} == {transport}, kind
        await client.abort()
        assert server.events("disconnected") == [
            {
                "connection_id": client.neg["ConnectionId"],
                "stop_called": True,
                "transport": transport,
            }
        ]
        assert server.events("abort")[0]["transport"] == transport
        await within(client.channel_closed, 5)


@pytest_twisted.ensureDeferred
@bounded(20)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reconnect_replays_from_the_cursor_on_every_transport(transport: str) -> None:
    """After the client walks away, /reconnect with its cursor and groups token replays
    exactly what it missed: nothing lost, nothing twice."""
    rec = RecordingHub()
    async with running(hubs=[ChatHub(), rec], keepalive=None) as server:
        client = TransportClient(server, transport, "chat", "rec")
        await client.connect()
        await client.invoke("chat", "JoinGroup", ["g"], 0)
        while client.groups_token is None:
            await client.frame()
        seen: list[int] = []
        for n in range(1, 4):
            server.send_to_group("chat", "g", "n", n)
        seen += [m["A"][0] for m in await client.messages_until(3)]
        closed = server.when_event("socket_closed")
        client.drop()
        if transport != "longPolling":
            assert (await within(closed, 5))["transport"] == transport
        for n in range(4, 8):
            server.send_to_group("chat", "g", "n", n)
        await sleep(0.1)
        reconnected = server.when_event("reconnect")
        await client.reconnect()
        info = await within(reconnected, 5)
        assert info["transport"] == transport and info["cursor_valid"] is True
        assert info["groups"] == ["hg-chat.g"]
        for n in range(8, 12):
            server.send_to_group("chat", "g", "n", n)
        seen += [m["A"][0] for m in await client.messages_until(8)]
        assert seen == list(range(1, 12))
        assert ("reconnected", client.neg["ConnectionId"]) in rec.events
        await sleep(0.1)
        assert [m for f in client.frames.pending for m in f.get("M", [])] == []


@pytest_twisted.ensureDeferred
@bounded()
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_drop_all_transports_on_every_transport(transport: str) -> None:
    """drop_all_transports cuts the WebSocket, the SSE response or the held poll; the
    connection lives on and the client can reconnect."""
    async with running(keepalive=None) as server:
        client = TransportClient(server, transport, "chat")
        await client.connect()
        await sleep(0.05)
        closed = server.when_event("socket_closed")
        server.drop_all_transports()
        await within(client.channel_closed, 5)
        assert (await within(closed, 5))["transport"] == transport
        assert server.connections == [client.neg["ConnectionId"]]
        assert server.events("disconnected") == []
        await client.reconnect()
        server.send_to_all("chat", "after", 1)
        assert await client.messages_until(1) == [{"H": "chat", "M": "after", "A": [1]}]


@pytest_twisted.ensureDeferred
@bounded()
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stall_transports_holds_everything_until_unstalled(transport: str) -> None:
    """stall_transports(True): the channel stays open but nothing is sent (pushes,
    keep-alives, results); stall_transports(False) delivers what queued up, in order."""
    async with running(keepalive=0.05, connection_timeout=0.2) as server:
        client = TransportClient(server, transport, "chat")
        await client.connect()
        server.stall_transports(True)
        await sleep(0.1)
        while client.frames.pending:
            client.frames.pending.pop()
        server.send_to_all("chat", "queued", 1)
        result = defer.ensureDeferred(client.invoke("chat", "Whoami", [], 5))
        await sleep(0.4)
        assert client.frames.pending == [] and not result.called
        assert not client.channel_closed.called
        server.stall_transports(False)
        assert await within(result, 5) == {"R": client.neg["ConnectionId"], "I": "5"}
        assert await client.messages_until(1) == [{"H": "chat", "M": "queued", "A": [1]}]


@pytest_twisted.ensureDeferred
@bounded()
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refuse_transport_answers_connect_and_reconnect(transport: str) -> None:
    """refuse_transport answers that transport's connect/reconnect with the given status
    until reset; negotiate and the other transports are unaffected."""
    async with running() as server:
        server.refuse_transport(transport, 500, b"nope", "text/plain")
        neg = await negotiate(server, "chat")
        headers = {"Upgrade": "websocket", "Connection": "Upgrade"}
        for command in ("connect", "reconnect"):
            q = transport_query(neg["ConnectionToken"], transport, "chat")
            ex, body = await fetch("GET", f"{server.url}/{command}?{q}", headers=headers)
            assert (ex.code, body) == (500, b"nope"), command
            assert ex.header("content-type") == ["text/plain"]
        assert [e["transport"] for e in server.events("refused")] == [transport, transport]
        other = next(t for t in TRANSPORTS if t != transport)
        await TransportClient(server, other, "chat").connect()
        server.refuse_transport(transport, None)
        client = TransportClient(server, transport, "chat")
        await client.connect()
        client.drop()


@pytest_twisted.ensureDeferred
@bounded()
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_disconnect_timeout_expires_on_every_transport(transport: str) -> None:
    """Without a channel (socket, stream or poll) for disconnect_timeout + threshold the
    connection ends with stop_called False."""
    rec = RecordingHub()
    async with running(
        hubs=[rec], keepalive=None, disconnect_timeout=0.2, disconnect_threshold=0.1
    ) as server:
        client = TransportClient(server, transport, "rec")
        await client.connect()
        gone = server.when_event("disconnected")
        client.drop()
        assert await within(gone, 5) == {
            "connection_id": client.neg["ConnectionId"],
            "stop_called": False,
            "transport": transport,
        }
        assert rec.events[-1] == ("disconnected", (client.neg["ConnectionId"], False))
        assert server.connections == []


@pytest_twisted.ensureDeferred
@bounded()
async def test_disabled_transports_are_unknown_and_try_websockets_false() -> None:
    """transports=…: negotiate says TryWebSockets false without webSockets, and requests
    for a disabled transport get 400 Unknown transport (transcript 12)."""
    async with running(transports=("serverSentEvents", "longPolling")) as server:
        neg = await negotiate(server, "chat")
        assert neg["TryWebSockets"] is False
        q = transport_query(neg["ConnectionToken"], "webSockets", "chat")
        for command in ("connect", "start", "abort"):
            ex, body = await fetch(
                "GET", f"{server.url}/{command}?{q}", headers={"Upgrade": "websocket"}
            )
            assert (ex.code, body) == (400, b"Protocol error: Unknown transport."), command
        await TransportClient(server, "longPolling", "chat").connect()
    async with running(transports=("webSockets",)) as server:
        neg = await negotiate(server, "chat")
        assert neg["TryWebSockets"] is True
        for transport in ("serverSentEvents", "longPolling"):
            q = transport_query(neg["ConnectionToken"], transport, "chat")
            ex, body = await fetch("GET", f"{server.url}/connect?{q}")
            assert (ex.code, body) == (400, b"Protocol error: Unknown transport.")
    with pytest.raises(ValueError):
        SignalRServer(_reactor(), transports=("webSockets", "foreverFrame"))


@pytest_twisted.ensureDeferred
@bounded()
async def test_stop_with_sse_and_held_polls_leaves_no_delayed_calls() -> None:
    """stop() with an SSE stream and a held long poll cancels every server timer."""
    server = SignalRServer(_reactor(), hubs=[ChatHub()], keepalive=1.0)
    await server.listen(0)
    try:
        sse = TransportClient(server, "serverSentEvents", "chat")
        await sse.connect()
        lp = TransportClient(server, "longPolling", "chat")
        await lp.connect()
        await sleep(0.1)
        assert [c for c in _reactor().getDelayedCalls() if _ours(c)]
        await server.stop()
        assert [c for c in _reactor().getDelayedCalls() if _ours(c)] == []
        await within(sse.channel_closed, 5)
        await within(lp.channel_closed, 5)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
@bounded()
async def test_drop_all_between_polls_drops_the_next_poll() -> None:
    """A long polling connection with no poll held when drop_all_transports is called
    loses its next poll instead (the one after that is served)."""
    async with running(keepalive=None) as server:
        neg = await negotiate(server, "chat")
        q = transport_query(neg["ConnectionToken"], "longPolling", "chat")
        _ex, body = await fetch("POST", f"{server.url}/connect?{q}", b"")
        cursor = json.loads(body)["C"]
        server.drop_all_transports()
        dropped = request("POST", f"{server.url}/poll?{q}&messageId={quote(cursor)}", b"")
        with pytest.raises((ResponseFailed, ResponseNeverReceived)):
            await within(dropped.body, 5)
        server.send_to_all("chat", "after", 1)
        _ex, body = await fetch("POST", f"{server.url}/poll?{q}&messageId={quote(cursor)}", b"")
        assert json.loads(body)["M"] == [{"H": "chat", "M": "after", "A": [1]}]


# -- the connection registry on a task.Clock --------------------------------------------


class FakeChannel:
    """A registry channel that records what it was given."""

    def __init__(self, transport: str = "webSockets", more: bool = True) -> None:
        self.transport_name = transport
        self.long_poll_delay_ms: int | None = None
        self.more = more
        self.frames: list[Any] = []
        self.keepalives = 0
        self.aborted = False

    def send_frame(self, text: str) -> bool:
        self.frames.append(json.loads(text))
        return self.more

    def send_keepalive(self) -> None:
        self.keepalives += 1

    def abort(self) -> None:
        self.aborted = True

    def close(self, last_frame: str) -> None:
        self.frames.append(json.loads(last_frame))


class _Settings:
    keepalives_enabled = True
    disconnect_timeout = 30.0
    disconnect_threshold = 5.0
    detailed_errors = False
    buffer_size = 100


def make_registry() -> tuple[Any, task.Clock, Any]:
    from txsignalr.testing._events import EventLog
    from txsignalr.testing._registry import ConnectionRegistry
    from txsignalr.testing._timers import Timers

    clock = task.Clock()
    hub = ChatHub()
    events = EventLog(100)
    registry = ConnectionRegistry(_Settings(), {"chat": hub}, Timers(clock), events, None)  # type: ignore[arg-type]
    return registry, clock, events


def receive_request(kind: str, transport: str, message_id: str | None = None) -> Any:
    from txsignalr.testing._http import RequestInfo
    from txsignalr.testing._registry import ReceiveRequest

    hubs = (ChatHub(),)
    return ReceiveRequest(
        connection_id="c1",
        kind=kind,
        hubs=hubs,
        protocol=(1, 5),
        message_id=message_id,
        groups_token=None,
        info=RequestInfo(path="/signalr/" + kind, query={}, headers={}, cookies={}),
        transport=transport,
    )


def test_long_polling_gap_expires_after_disconnect_timeout_plus_threshold() -> None:
    """Between polls the disconnect timer runs; a poll before it fires cancels it."""
    registry, clock, events = make_registry()
    connect = FakeChannel("longPolling", more=False)
    registry.attach(connect, receive_request("connect", "longPolling"))
    assert connect.frames[0]["S"] == 1 and registry.connections["c1"].channel is None
    clock.advance(34.9)
    poll = FakeChannel("longPolling", more=False)
    registry.attach(poll, receive_request("poll", "longPolling", connect.frames[0]["C"]))
    clock.advance(34.9)
    assert events.events("disconnected") == [] and poll.frames == []
    registry.detach(poll, "c1", lost=True)
    clock.advance(34.9)
    assert events.events("disconnected") == []
    clock.advance(0.2)
    assert events.events("disconnected") == [
        {"connection_id": "c1", "stop_called": False, "transport": "longPolling"}
    ]
    assert events.events("socket_closed") == [{"connection_id": "c1", "transport": "longPolling"}]
    assert clock.getDelayedCalls() == []


def test_stall_queues_frames_and_keepalives_until_unstalled() -> None:
    """A stalled registry sends nothing (frames, keep-alives, poll timeouts); unstalling
    delivers the queued messages in order."""
    registry, clock, _events = make_registry()
    channel = FakeChannel()
    registry.attach(channel, receive_request("connect", "webSockets"))
    registry.start_keepalive(10.0)
    clock.advance(0)
    assert [f.get("S") for f in channel.frames] == [1]
    registry.stall(True)
    registry.send_to_all("chat", "n", (1,))
    registry.send_to_all("chat", "n", (2,))
    clock.advance(10)
    assert len(channel.frames) == 1 and channel.keepalives == 0
    assert registry.poll_timed_out(channel, "c1") is False
    waiter = registry.when_unstalled()
    assert not waiter.called
    registry.stall(False)
    assert waiter.called
    assert [m["A"] for m in channel.frames[1]["M"]] == [[1], [2]]
    clock.advance(10)
    assert channel.keepalives == 1
    registry.shutdown()
    assert channel.aborted


@pytest_twisted.ensureDeferred
@bounded()
async def test_send_is_http_only_and_needs_a_live_connection() -> None:
    """/send over webSockets is not a valid WebSocket request (400); /send for a
    connection that was aborted is a bare 500."""
    async with running() as server:
        client = TransportClient(server, "serverSentEvents", "chat")
        await client.connect()
        form = "data=" + quote(json.dumps({"H": "chat", "M": "Whoami", "A": [], "I": 0}))
        ws_send = client.url("send").replace("transport=serverSentEvents", "transport=webSockets")
        ex, body = await fetch("POST", ws_send, form.encode())
        assert (ex.code, body) == (400, b"Not a valid web socket request.")
        await client.abort()
        await within(client.channel_closed, 5)
        ex, body = await fetch("POST", client.url("send"), form.encode())
        assert (ex.code, body) == (500, b"")


@pytest_twisted.ensureDeferred
@bounded()
async def test_group_joined_between_polls_is_announced_to_a_poll_without_token() -> None:
    """A join made while no poll is held sends G on the next poll, even from a client
    that has no groups token yet (it used to be dropped: the client never learnt it)."""
    async with running(keepalive=None) as server:
        neg = await negotiate(server, "chat")
        q = transport_query(neg["ConnectionToken"], "longPolling", "chat")
        _ex, body = await fetch("POST", f"{server.url}/connect?{q}", b"")
        cursor = json.loads(body)["C"]
        server.add_to_group(neg["ConnectionId"], "chat", "vip")  # no poll is held now
        await sleep(0.05)
        _ex, body = await fetch("POST", f"{server.url}/poll?{q}&messageId={quote(cursor)}")
        frame = json.loads(body)
        assert "G" in frame, frame
        assert server.groups_in_token(frame["G"], neg["ConnectionId"]) == ["hg-chat.vip"]

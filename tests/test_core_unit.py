"""
The ASP.NET Core side of HubConnection in memory: StubTreq for negotiate, a fake
transport, ``task.Clock`` for all time (pings, server timeout, handshake timeout,
the reconnect policy).  Loopback tests against the test server are in
``test_core_client.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_connection_unit import FakeTransport
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Request

from txsignalr import (
    ConnectionClosed,
    ConnectionState,
    HubConnection,
    HubError,
    SignalRError,
    Transport,
)
from txsignalr.errors import HandshakeError, MessageTooLarge

RS = b"\x1e"
TOKEN = "tok-Z2l2ZW4tdG9rZW4"


def core_negotiate(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "negotiateVersion": 1,
        "connectionId": "conn-1",
        "connectionToken": TOKEN,
        "availableTransports": [
            {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
            {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
            {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
        ],
    }
    body.update(changes)
    return json.dumps(body).encode()


class CoreServer(Resource):
    """Answers Core negotiates (or refuses them) and records every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answer: tuple[int, bytes] = (200, core_negotiate())
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def render(self, request: Request) -> bytes:
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.method.decode(), request.uri.decode(), headers))
        request.setResponseCode(self.answer[0])
        return self.answer[1]


def record(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + RS


class Core:
    def __init__(self, transport: str = "webSockets", **kwargs: Any) -> None:
        self.clock = Clock()
        self.server = CoreServer()
        self.stub = StubTreq(self.server)
        FakeTransport.instances = []
        self.conn = HubConnection(
            self.clock,
            "http://example.com/hubs/chat",
            protocol="core",
            http_client=self.stub,
            transport_factories={t: FakeTransport for t in Transport},
            transports=[transport],
            **kwargs,
        )

    @property
    def transport(self) -> FakeTransport:
        return FakeTransport.instances[-1]

    def flush(self) -> None:
        self.stub.flush()

    def open(self) -> Deferred[None]:
        """start(): negotiate answered, the transport opened, handshake sent."""
        d = self.conn.start()
        self.flush()
        self.transport.open_ok()
        assert self.transport.sent[-1] == b'{"protocol":"json","version":1}' + RS
        return d

    def connect(self) -> None:
        d = self.open()
        self.transport.frame(b"{}" + RS)
        assert d.called and d.result is None, d.result
        assert self.conn.state is ConnectionState.connected

    def sent(self) -> list[dict[str, Any]]:
        out = []
        for chunk in self.transport.sent:
            for part in chunk.split(RS):
                if part:
                    out.append(json.loads(part))
        return out


def test_pings_only_when_nothing_else_was_sent() -> None:
    """A Ping after keepalive_interval of silence; sending defers it."""
    h = Core(keepalive_interval=15.0, server_timeout=None)
    h.connect()
    h.clock.advance(14.9)
    assert {"type": 6} not in h.sent()
    h.clock.advance(0.2)
    assert h.sent()[-1] == {"type": 6}
    pings = len([m for m in h.sent() if m == {"type": 6}])
    h.clock.advance(10)
    h.conn.send("Fire", 1)
    h.clock.advance(10)
    assert len([m for m in h.sent() if m == {"type": 6}]) == pings
    h.clock.advance(5.1)
    assert len([m for m in h.sent() if m == {"type": 6}]) == pings + 1


def test_long_polling_has_no_pings_or_server_timeout() -> None:
    h = Core("longPolling")
    d = h.conn.start()
    h.flush()
    h.transport.open_ok()
    h.transport.answers[-1].callback(b"")  # the handshake POST
    h.transport.frame(b"{}" + RS)
    assert d.called
    h.clock.advance(120)
    assert h.conn.state is ConnectionState.connected
    assert {"type": 6} not in h.sent()


def test_server_timeout_reconnects_with_a_fresh_negotiate() -> None:
    """Nothing from the server for server_timeout: lost, then the policy reconnects."""
    h = Core(server_timeout=30.0, keepalive_interval=None)
    h.connect()
    reasons: list[ConnectionClosed] = []
    h.conn.on_reconnecting(reasons.append)
    h.clock.advance(20)
    h.transport.frame(record({"type": 6}))
    h.clock.advance(25)
    assert h.conn.state is ConnectionState.connected
    h.clock.advance(6)
    assert h.conn.state is ConnectionState.reconnecting
    assert "Server timeout elapsed" in reasons[0].reason
    assert FakeTransport.instances[0].aborted
    h.clock.advance(0)  # the first retry delay is 0
    h.flush()
    assert [m for m, _, _ in h.server.requests] == ["POST", "POST"]
    h.transport.open_ok()
    h.transport.frame(b"{}" + RS)
    assert h.conn.state is ConnectionState.connected


def test_default_policy_is_0_2_10_30_then_closed_and_no_timers_remain() -> None:
    h = Core()
    h.connect()
    h.server.answer = (503, b"down")
    closed: list[Any] = []
    h.conn.on_closed(closed.append)
    h.transport.lose("gone")
    assert h.conn.state is ConnectionState.reconnecting
    times = []
    for _ in range(5):
        h.clock.advance(0)
        h.flush()
        times.append((h.clock.seconds(), len(h.server.requests)))
        calls = h.clock.getDelayedCalls()
        if not calls:
            break
        h.clock.advance(min(c.getTime() for c in calls) - h.clock.seconds())
    attempts = [t for t, _ in times]
    assert attempts[:4] == [0.0, 2.0, 12.0, 42.0]
    assert h.conn.state is ConnectionState.disconnected
    assert "gave up after 4 attempt(s)" in closed[0].reason
    assert h.clock.getDelayedCalls() == []


def test_handshake_refused_and_timed_out_are_typed() -> None:
    h = Core()
    d = h.open()
    h.transport.frame(b'{"error":"Requested protocol \'json\' is not available."}' + RS)
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(HandshakeError)
    assert "Requested protocol 'json' is not available." in str(failure.value)
    assert h.conn.state is ConnectionState.disconnected

    h = Core()
    d = h.open()
    h.clock.advance(15.1)
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(HandshakeError) and "within 15 s" in str(failure.value)
    assert h.transport.aborted
    assert h.clock.getDelayedCalls() == []


def test_messages_after_the_handshake_answer_are_not_lost() -> None:
    """Records in the same chunk as the handshake answer reach handlers once connected."""
    h = Core()
    got: list[Any] = []
    h.conn.on("tick", got.append)
    d = h.open()
    h.transport.frame(
        b"{}"
        + RS
        + record({"type": 1, "target": "tick", "arguments": [1]})
        + b'{"type":1,"target":"tick",'
    )
    assert d.called
    h.transport.frame(b'"arguments":[2]}' + RS)
    assert got == [1, 2]


def test_malformed_records_are_reported_and_the_rest_still_delivered() -> None:
    h = Core()
    h.connect()
    errors: list[SignalRError] = []
    h.conn.on_error(errors.append)
    a = h.conn.invoke("A")
    b = h.conn.invoke("B")
    h.transport.frame(
        record({"type": 3, "invocationId": "0", "result": 1})
        + record({"type": 1, "arguments": []})  # no target
        + record({"type": 99, "whatever": True})  # unknown: ignored
        + record({"type": 3, "invocationId": "1", "error": "nope", "extra": 1})
        + record({"type": 3, "invocationId": "1"})  # a second completion: ignored
    )
    assert a.result == 1
    assert b.result.check(HubError) and b.result.value.message == "nope"
    b.addErrback(lambda f: None)
    assert len(errors) == 1
    assert h.conn.state is ConnectionState.connected


def test_oversized_message_closes_with_a_clear_error() -> None:
    h = Core(max_receive_size=1024)
    h.connect()
    closed: list[Any] = []
    h.conn.on_closed(closed.append)
    h.transport.frame(b'{"type":1,"target":"x","arguments":["' + b"a" * 2000 + b'"]}' + RS)
    assert h.conn.state is ConnectionState.disconnected
    assert isinstance(closed[0].__cause__ or closed[0].cause, MessageTooLarge)  # type: ignore[attr-defined]


def test_close_without_and_with_allow_reconnect() -> None:
    h = Core()
    h.connect()
    pending = h.conn.invoke("Slow")
    h.transport.frame(record({"type": 7, "error": "bye", "allowReconnect": True}))
    assert h.conn.state is ConnectionState.reconnecting
    assert pending.result.check(ConnectionClosed)
    pending.addErrback(lambda f: None)
    h.clock.advance(0)
    h.flush()
    h.transport.open_ok()
    h.transport.frame(b"{}" + RS)
    assert h.conn.state is ConnectionState.connected
    h.transport.frame(record({"type": 7, "error": "really bye"}))
    assert h.conn.state is ConnectionState.disconnected
    done = h.conn.when_closed()
    assert "Server returned an error on close: really bye" in str(done.result.value)
    done.addErrback(lambda f: None)


def test_http_sends_go_one_post_at_a_time_in_order() -> None:
    """Over SSE/long polling what is sent while a POST is out goes, in order, in the next."""
    h = Core("serverSentEvents")
    d = h.conn.start()
    h.flush()
    t = h.transport
    t.open_ok()
    t.answers[-1].callback(b"")
    t.frame(b"{}" + RS)
    assert d.called
    first = h.conn.send("One")
    second = h.conn.send("Two")
    third = h.conn.send("Three")
    assert len(t.sent) == 2  # handshake, "One"
    t.answers[-1].callback(b"")
    assert first.called and not second.called
    assert len(t.sent) == 3
    assert [json.loads(p)["target"] for p in t.sent[-1].split(RS) if p] == ["Two", "Three"]
    t.answers[-1].callback(b"")
    assert second.called and third.called


def test_tokens_stay_out_of_logs_and_reprs() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Core(access_token_factory=lambda: "bearer-secret-123")
        h.connect()
        assert h.server.requests[0][2]["authorization"] == "Bearer bearer-secret-123"
        assert h.transport.headers["Authorization"] == "Bearer bearer-secret-123"
        h.transport.lose("gone")
        h.clock.advance(0)
        h.flush()
        text = repr(h.conn) + repr(h.conn.negotiated) + repr(h.transport.request)
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    logged = " ".join(formatEvent(e) for e in events) + " " + " ".join(map(repr, events))
    for secret in ("bearer-secret-123", TOKEN):
        assert secret not in text
        assert secret not in logged


def test_access_token_factory_failure_fails_start() -> None:
    def broken() -> str:
        raise RuntimeError("vault unreachable")

    h = Core(access_token_factory=broken)
    d = h.conn.start()
    h.flush()
    failure = d.result
    d.addErrback(lambda f: None)
    assert "access_token_factory failed" in str(failure.value)
    assert "vault unreachable" in str(failure.value)
    assert h.conn.state is ConnectionState.disconnected


def test_stop_while_reconnecting_leaves_nothing_running() -> None:
    h = Core()
    h.connect()
    h.server.answer = (503, b"down")
    h.transport.lose("gone")
    h.clock.advance(0)
    stopped = h.conn.stop()
    h.flush()
    h.clock.advance(1)
    assert stopped.called
    assert h.conn.state is ConnectionState.disconnected
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("delay", [[], [-1.0]])
def test_bad_reconnect_delays(delay: list[float]) -> None:
    if delay:
        with pytest.raises(ValueError):
            Core(reconnect_delay=delay)
    else:
        h = Core(reconnect_delay=delay)  # no attempts at all: closed at once on loss
        h.connect()
        h.transport.lose("gone")
        h.clock.advance(0)
        assert h.conn.state is ConnectionState.disconnected

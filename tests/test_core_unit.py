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
    def __init__(self, transport: str | list[str] = "webSockets", **kwargs: Any) -> None:
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
            transports=[transport] if isinstance(transport, str) else transport,
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


# -- found in review -------------------------------------------------------------------


def invoke_client(h: Core, target: str = "getMessage") -> None:
    h.transport.frame(
        record({"type": 1, "invocationId": "s1", "target": target, "arguments": ["q?"]})
    )


def test_on_any_does_not_take_part_in_client_results() -> None:
    h = Core()
    seen: list[Any] = []
    h.conn.on("getMessage", lambda q: f"answer to {q}")
    h.conn.on_any(lambda method, *args: seen.append((method, args)))
    h.connect()
    invoke_client(h)
    assert h.sent()[-1] == {"type": 3, "invocationId": "s1", "result": "answer to q?"}
    assert seen == [("getMessage", ("q?",))]

    only_any = Core()
    only_any.conn.on_any(lambda method, *args: "logged")
    only_any.connect()
    invoke_client(only_any)
    assert only_any.sent()[-1]["error"] == "Client didn't provide a result."


def test_several_handlers_give_one_result_as_microsofts_client() -> None:
    """Several handlers: one returning a value is fine, two are an error."""
    h = Core()
    h.conn.on("getMessage", lambda q: None)
    h.conn.on("getMessage", lambda q: 42)
    h.connect()
    invoke_client(h)
    assert h.sent()[-1]["result"] == 42
    h.conn.on("getMessage", lambda q: 43)
    invoke_client(h)
    assert h.sent()[-1]["error"] == "Client provided multiple results."


def test_a_timed_out_stream_read_loses_nothing() -> None:
    h = Core()
    h.connect()
    s = h.conn.stream("Counter", 3)
    d = s.__anext__()
    d.addTimeout(1, h.clock)
    h.clock.advance(2)
    d.addErrback(lambda f: None)
    h.transport.frame(record({"type": 2, "invocationId": "0", "item": 42}))
    assert s.__anext__().result == 42


class Flaky(Resource):
    """Refuses the first negotiate with 503, then answers as a classic server."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers = [(503, b"busy")]

    def render(self, request: Request) -> bytes:
        from test_connection_unit import negotiate_body

        status, body = self.answers.pop(0) if self.answers else (200, negotiate_body())
        request.setResponseCode(status)
        return body


def test_auto_detection_is_not_fooled_by_a_transient_error() -> None:
    clock, resource = Clock(), Flaky()
    stub = StubTreq(resource)
    conn = HubConnection(
        clock,
        "http://example.com/signalr",
        hub="chat",
        http_client=stub,
        transport_factories={t: FakeTransport for t in Transport},
    )
    d = conn.start()
    stub.flush()
    assert "503" in str(d.result.value)
    d.addErrback(lambda f: None)
    assert conn.protocol is None
    FakeTransport.instances = []
    conn.start()
    stub.flush()
    assert conn.protocol == "classic"
    assert FakeTransport.instances  # the classic start went on to open a transport


def test_stop_during_a_failed_start_still_fires_when_closed() -> None:
    h = Core()
    d = h.open()
    closed = h.conn.when_closed()
    h.transport.frame(b'{"error":"nope"}' + RS)
    stop = h.conn.stop()
    h.flush()
    h.clock.advance(1)
    assert d.result.check(HandshakeError)
    d.addErrback(lambda f: None)
    assert stop.called
    assert closed.called
    closed.addErrback(lambda f: None)


def test_stop_from_state_callbacks_is_honoured_and_leaves_no_timers() -> None:
    h = Core()
    stops: list[Deferred[None]] = []
    h.conn.on_state_change(
        lambda old, new: stops.append(h.conn.stop()) if new is ConnectionState.connected else None
    )
    h.open()
    h.transport.frame(b"{}" + RS)
    h.flush()
    h.clock.advance(0)
    assert stops[0].called
    assert h.clock.getDelayedCalls() == []

    h = Core()
    h.conn.on_state_change(
        lambda old, new: h.conn.stop() if new is ConnectionState.connecting else None
    )
    d = h.conn.start()
    h.flush()
    assert d.result.check(ConnectionClosed)
    d.addErrback(lambda f: None)
    assert h.conn.state is ConnectionState.disconnected
    assert not FakeTransport.instances


def test_negotiate_v0_connection_id_stays_out_of_logs_and_reprs() -> None:
    from twisted.logger import formatEvent

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Core()
        h.server.answer = (
            200,
            json.dumps(
                {
                    "connectionId": "v0-secret-id",
                    "availableTransports": [
                        {"transport": "WebSockets", "transferFormats": ["Text"]}
                    ],
                }
            ).encode(),
        )
        h.connect()
        assert h.conn.connection_id == "v0-secret-id"
        shown = repr(h.conn) + repr(h.conn.negotiated)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert "v0-secret-id" not in shown
    assert not [e for e in events if "v0-secret-id" in formatEvent(e)]


def test_a_policy_that_gives_up_at_once_never_reconnects() -> None:
    h = Core(reconnect_delay=lambda attempt: None)
    h.connect()
    reconnecting: list[Any] = []
    closed: list[Any] = []
    h.conn.on_reconnecting(reconnecting.append)
    h.conn.on_closed(closed.append)
    h.transport.lose("gone")
    assert not reconnecting
    assert closed[0].reason == "gone"


@pytest.mark.parametrize("delay", [None, [], [0.5], lambda attempt: None])
def test_core_style_reconnect_delays_work_for_classic_too(delay: Any) -> None:
    """A classic connection honours None, lists and give-up policies."""
    from test_connection_unit import Harness

    h = Harness(reconnect_delay=delay)
    h.connect()
    closed: list[Any] = []
    h.conn.on_closed(closed.append)
    h.transport.lose("gone")
    for _ in range(3):
        h.clock.advance(1)
        h.flush()
        if h.conn.state is ConnectionState.reconnecting and FakeTransport.instances:
            h.transport.lose("still gone")
    assert h.conn.state is ConnectionState.disconnected
    assert "gave up" in closed[0].reason
    assert h.clock.getDelayedCalls() == []


def test_a_classic_policy_that_raises_gives_up_cleanly() -> None:
    from test_connection_unit import Harness

    def broken(attempt: int) -> float:
        raise RuntimeError("policy bug")

    h = Harness(reconnect_delay=broken)
    h.connect()
    closed: list[Any] = []
    h.conn.on_closed(closed.append)
    h.transport.lose("gone")
    assert h.conn.state is ConnectionState.disconnected
    assert "gave up" in closed[0].reason
    assert h.clock.getDelayedCalls() == []


def test_fallback_negotiates_again_only_for_a_transport_it_will_try() -> None:
    h = Core(["webSockets", "serverSentEvents"])
    h.server.answer = (
        200,
        core_negotiate(
            availableTransports=[{"transport": "WebSockets", "transferFormats": ["Text"]}]
        ),
    )
    d = h.conn.start()
    h.flush()
    h.transport.lose("refused", status=403)
    h.flush()
    failure = d.result
    d.addErrback(lambda f: None)
    assert "does not offer ServerSentEvents" in str(failure.value)
    assert len(h.server.requests) == 1  # no second negotiate for nothing

"""
The connection state machine, in memory: StubTreq for HTTP, a fake transport for the
WebSocket, ``task.Clock`` for all time.  Loopback tests against the real test server are
in ``test_client_integration.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txsignalr import (
    ConnectionClosed,
    ConnectionState,
    HubConnection,
    HubError,
    InvalidStateError,
    MessageTooLarge,
    NegotiationError,
    StartError,
)
from txsignalr._protocol import (
    ClientInvocation,
    MalformedMessage,
    PersistentResponse,
    Transport,
    parse_frame,
    websocket_url,
)
from txsignalr._transport import TransportRequest

TOKEN = "AQAAANCMnd8+BFdERjHoAwE/Cl+sBAAAAA=="


def negotiate_body(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "Url": "/signalr",
        "ConnectionToken": TOKEN,
        "ConnectionId": "9c1f4b3e-0d1a-4e59-9a6b-2f6b3c1d0e77",
        "KeepAliveTimeout": 20.0,
        "DisconnectTimeout": 30.0,
        "ConnectionTimeout": 110.0,
        "TryWebSockets": True,
        "ProtocolVersion": "1.5",
        "TransportConnectTimeout": 5.0,
        "LongPollDelay": 0.0,
    }
    body.update(changes)
    return json.dumps(body).encode()


class FakeServer(Resource):
    """Answers negotiate, start and abort like the real server, and records them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.negotiate = (200, negotiate_body())
        self.start = (200, b'{ "Response": "started" }')
        self.requests: list[tuple[str, str, dict[str, list[str]], dict[str, str]]] = []
        self.hold_start = False
        self.held: list[Request] = []

    def render(self, request: Request) -> bytes:
        path = request.path.decode()
        query = parse_qs(urlsplit(request.uri.decode()).query)
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        command = path.rsplit("/", 1)[-1]
        self.requests.append((request.method.decode(), command, query, headers))
        if command == "negotiate":
            request.setResponseCode(self.negotiate[0])
            request.responseHeaders.setRawHeaders(b"set-cookie", [b"affinity=abc123; Path=/"])
            return self.negotiate[1]
        if command == "start":
            request.setResponseCode(self.start[0])
            if self.hold_start:
                self.held.append(request)
                return NOT_DONE_YET  # type: ignore[no-any-return]
            return self.start[1]
        if command == "abort":
            return b""
        request.setResponseCode(404)
        return b""

    def commands(self) -> list[str]:
        return [r[1] for r in self.requests]


class FakeTransport:
    """Stands in for the WebSocket; the test drives the sink callbacks."""

    instances: list[FakeTransport] = []

    def __init__(self, reactor: Any, request: TransportRequest, http: Any, sink: Any) -> None:
        self.request = request
        self.url = websocket_url(request.url)
        self.headers = http.handshake_headers(request.url)
        self.sink = sink
        self.sent: list[bytes] = []
        self.answers: list[Deferred[bytes]] = []
        self.opened = False
        self.closed = False
        self.aborted = False
        FakeTransport.instances.append(self)

    def open(self) -> None:
        self.opened = True

    @property
    def inherent_keepalive(self) -> bool:
        return self.request.transport is Transport.long_polling

    def send(self, data: bytes) -> Deferred[bytes]:
        self.sent.append(data)
        if self.request.transport is Transport.web_sockets:
            return succeed(b"")
        answer: Deferred[bytes] = Deferred()  # the /send answer, fired by the test
        self.answers.append(answer)
        return answer

    def close(self, timeout: float = 2.0) -> Deferred[None]:
        self.closed = True
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def abort(self) -> Deferred[None]:
        self.aborted = True
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    # test helpers
    def open_ok(self) -> None:
        self.sink.transport_opened(self)

    def frame(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        self.sink.data_received(self, data)

    def lose(self, text: str = "gone", status: int | None = None) -> None:
        self.sink.transport_lost(self, ConnectionClosed(text, status=status))

    def sent_json(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in self.sent]


class Harness:
    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.server = FakeServer()
        self.stub = StubTreq(self.server)
        FakeTransport.instances = []
        kwargs.setdefault("transports", ("webSockets",))
        self.conn = HubConnection(
            self.clock,
            "http://example.com/signalr",
            http_client=self.stub,
            transport_factories={t: FakeTransport for t in Transport},
            **kwargs,
        )
        self.c3 = self.conn.hub("c3")

    @property
    def transport(self) -> FakeTransport:
        return FakeTransport.instances[-1]

    def flush(self) -> None:
        self.stub.flush()

    def start(self) -> Deferred[None]:
        d = self.conn.start()
        self.flush()
        return d

    def connect(self) -> None:
        d = self.start()
        t = self.transport
        t.open_ok()
        t.frame({"C": "d-1-A,0", "S": 1, "M": []})
        self.flush()
        assert d.called and d.result is None, d.result
        assert self.conn.state is ConnectionState.connected

    def stop(self) -> Deferred[None]:
        d = self.conn.stop()
        self.flush()
        return d


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred[Any]) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    return results[0]


# ------------------------------------------------------------------ start


def test_start_waits_for_init_frame_then_start(h: Harness) -> None:
    """start() fires only after S:1 and a 'started' answer to /start, in that order."""
    d = h.start()
    assert h.conn.state is ConnectionState.connecting
    assert h.server.commands() == ["negotiate"]
    t = h.transport
    assert t.opened
    t.open_ok()
    h.flush()
    assert h.server.commands() == ["negotiate"], "/start must wait for the init frame"
    assert not d.called
    t.frame({"C": "d-1-A,0", "S": 1, "M": []})
    h.flush()
    assert h.server.commands() == ["negotiate", "start"]
    assert result_of(d) is None
    assert h.conn.state is ConnectionState.connected
    assert h.conn.connection_id == "9c1f4b3e-0d1a-4e59-9a6b-2f6b3c1d0e77"


def test_connect_url_and_handshake_headers() -> None:
    """The WS URL has the token encoded once; cookies from negotiate and headers go along."""
    h = Harness(headers={"X-Api": "k1"}, cookies={"session": "s1"}, query={"app": "demo"})
    h.start()
    t = h.transport
    assert t.url.startswith("ws://example.com/signalr/connect?")
    query = parse_qs(urlsplit(t.url).query)
    assert query["connectionToken"] == [TOKEN]
    assert "AQAAANCMnd8%2BBFdERjHoAwE%2FCl%2BsBAAAAA%3D%3D" in t.url
    assert query["transport"] == ["webSockets"]
    assert query["clientProtocol"] == ["1.5"]
    assert json.loads(query["connectionData"][0]) == [{"name": "c3"}]
    assert query["app"] == ["demo"]
    assert t.headers["X-Api"] == "k1"
    assert "affinity=abc123" in t.headers["Cookie"]
    assert "session=s1" in t.headers["Cookie"]
    negotiate = h.server.requests[0]
    assert negotiate[3]["x-api"] == "k1"
    assert "session=s1" in negotiate[3]["cookie"]


def test_cookies_and_headers_on_start_and_abort() -> None:
    """The negotiate cookie and custom headers are sent on /start and /abort too."""
    h = Harness(headers={"Authorization": "Bearer secret"})
    h.connect()
    result_of(h.stop())
    for _method, command, _query, headers in h.server.requests:
        assert headers["authorization"] == "Bearer secret", command
        if command != "negotiate":
            assert "affinity=abc123" in headers.get("cookie", ""), command
    assert [r[:2] for r in h.server.requests] == [
        ("GET", "negotiate"),
        ("GET", "start"),
        ("POST", "abort"),
    ]


def test_messages_between_init_and_start_are_buffered(h: Harness) -> None:
    """Client calls arriving before /start answers are delivered after connected."""
    seen: list[tuple[Any, ConnectionState]] = []
    h.c3.on("tick", lambda n: seen.append((n, h.conn.state)))
    h.server.hold_start = True
    d = h.conn.start()
    h.flush()
    t = h.transport
    t.open_ok()
    t.frame({"C": "d-1-A,0", "S": 1, "M": []})
    h.flush()
    t.frame({"C": "d-1-A,1", "M": [{"H": "c3", "M": "tick", "A": [1]}]})
    assert seen == []
    assert not d.called
    request = h.server.held.pop()
    request.write(h.server.start[1])
    request.finish()
    h.flush()
    result_of(d)
    assert seen == [(1, ConnectionState.connected)]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, b""),
        (500, b""),
        (200, b"<html>Please log in</html>"),
        (200, b"{bad json"),
    ],
)
def test_negotiate_refused(h: Harness, status: int, body: bytes) -> None:
    """HTTP errors and unusable bodies fail start() with NegotiationError(status, body)."""
    h.server.negotiate = (status, body)
    f = failure_of(h.start())
    assert f.check(NegotiationError)
    assert f.value.status == status
    assert f.value.body == body
    assert h.conn.state is ConnectionState.disconnected
    assert FakeTransport.instances == []
    assert h.clock.getDelayedCalls() == []


def test_negotiate_try_websockets_false(h: Harness) -> None:
    """A server that refuses WebSockets gives a StartError saying so."""
    h.server.negotiate = (200, negotiate_body(TryWebSockets=False))
    f = failure_of(h.start())
    assert f.check(StartError)
    assert "TryWebSockets" in str(f.value)


def test_no_init_frame_times_out(h: Harness) -> None:
    """Without S:1 within TransportConnectTimeout, start fails with StartError."""
    d = h.start()
    h.transport.open_ok()
    h.clock.advance(4.9)
    assert not d.called
    h.clock.advance(0.2)
    h.flush()
    f = failure_of(d)
    assert f.check(StartError)
    assert "init frame" in str(f.value)
    assert h.transport.aborted
    assert h.conn.state is ConnectionState.disconnected
    assert h.clock.getDelayedCalls() == []


def test_transport_fails_before_init(h: Harness) -> None:
    """A refused WebSocket upgrade fails start with the HTTP status."""
    d = h.start()
    h.transport.lose("WebSocket upgrade refused with HTTP 400", status=400)
    h.flush()
    f = failure_of(d)
    assert f.check(StartError)
    assert f.value.status == 400
    assert "start" not in h.server.commands()


def test_bad_start_answer(h: Harness) -> None:
    """/start answering anything but 'started' fails start and aborts the connection."""
    h.server.start = (200, b'{ "Response": "nope" }')
    d = h.start()
    h.transport.open_ok()
    h.transport.frame({"C": "x", "S": 1, "M": []})
    h.flush()
    h.flush()
    f = failure_of(d)
    assert f.check(StartError)
    assert "Invalid start response" in str(f.value)
    assert h.server.commands() == ["negotiate", "start", "abort"]


def test_start_twice_is_refused(h: Harness) -> None:
    """start() while not disconnected is an InvalidStateError."""
    h.connect()
    assert failure_of(h.conn.start()).check(InvalidStateError)


def test_stop_during_start(h: Harness) -> None:
    """stop() before start completes fails start with ConnectionClosed and cleans up."""
    d = h.start()
    h.transport.open_ok()
    stopped = h.stop()
    assert failure_of(d).check(ConnectionClosed)
    result_of(stopped)
    assert h.conn.state is ConnectionState.disconnected
    assert h.clock.getDelayedCalls() == []


def test_cancel_start(h: Harness) -> None:
    """Cancelling start() gives CancelledError and leaves nothing behind."""
    from twisted.internet.defer import CancelledError

    d = h.start()
    h.transport.open_ok()
    d.cancel()
    h.flush()
    assert failure_of(d).check(CancelledError)
    assert h.conn.state is ConnectionState.disconnected
    assert h.transport.aborted
    assert h.clock.getDelayedCalls() == []


# ------------------------------------------------------------------ invoke


def test_invoke_result_and_state(h: Harness) -> None:
    """invoke sends H/M/A/I (+S) and fires with R; S changes merge into the proxy state."""
    h.connect()
    h.c3.state["counter"] = 5
    d = h.c3.invoke("Subscribe", ["market_summaries"])
    sent = h.transport.sent_json()[-1]
    assert sent == {
        "H": "c3",
        "M": "Subscribe",
        "A": [["market_summaries"]],
        "I": 0,
        "S": {"counter": 5},
    }
    h.transport.frame({"S": {"counter": 6}, "R": [{"Success": True, "ErrorCode": None}], "I": "0"})
    assert result_of(d) == [{"Success": True, "ErrorCode": None}]
    assert h.c3.state == {"counter": 6}


def test_invoke_void(h: Harness) -> None:
    """A void result (no R) fires with None."""
    h.connect()
    d = h.c3.invoke("Send", "a", "b")
    h.transport.frame(b'{"I":"0"}')
    assert result_of(d) is None


def test_invoke_hub_error(h: Harness) -> None:
    """A hub error becomes HubError with message, data and the HubException flag."""
    h.connect()
    d = h.c3.invoke("Fail")
    h.transport.frame(
        {"I": "0", "H": True, "E": "Intentional failure", "D": {"Code": 42}, "T": "trace"}
    )
    f = failure_of(d)
    assert f.check(HubError)
    e: HubError = f.value
    assert (e.message, e.data, e.is_hub_exception, e.stack_trace) == (
        "Intentional failure",
        {"Code": 42},
        True,
        "trace",
    )
    assert (e.hub, e.method) == ("c3", "Fail")


def test_invoke_progress(h: Harness) -> None:
    """Progress inside M reaches on_progress in order; late progress is dropped."""
    h.connect()
    progress: list[Any] = []
    d = h.c3.invoke("Slow", 500, on_progress=progress.append)
    for n in (20, 40):
        h.transport.frame({"C": f"c{n}", "M": [{"I": "P|0", "P": {"I": "0", "D": n}}]})
    h.transport.frame({"R": "done", "I": "0"})
    h.transport.frame({"C": "c100", "M": [{"I": "P|0", "P": {"I": "0", "D": 100}}]})
    assert progress == [20, 40]
    assert result_of(d) == "done"


def test_invoke_timeout(h: Harness) -> None:
    """An invocation without an answer fails with TimeoutError on the injected clock."""
    h.connect()
    d = h.c3.invoke("Echo", 1, timeout=10)
    h.clock.advance(9.9)
    assert not d.called
    h.clock.advance(0.2)
    assert failure_of(d).check(TimeoutError)
    # A late result is ignored, not delivered to anyone.
    h.transport.frame({"R": 1, "I": "0"})


def test_invoke_ids_increase_and_results_match(h: Harness) -> None:
    """Results are matched by id, whatever the order they arrive in."""
    h.connect()
    d0 = h.c3.invoke("Echo", "a")
    d1 = h.c3.invoke("Echo", "b")
    h.transport.frame({"R": "b", "I": "1"})
    h.transport.frame({"R": "a", "I": 0})
    assert (result_of(d0), result_of(d1)) == ("a", "b")


def test_invoke_when_not_connected(h: Harness) -> None:
    """invoke before start is an InvalidStateError, not a hang."""
    assert failure_of(h.c3.invoke("Echo", 1)).check(InvalidStateError)


def test_invoke_unserialisable_args(h: Harness) -> None:
    """Arguments that are not JSON fail the Deferred with TypeError."""
    h.connect()
    assert failure_of(h.c3.invoke("Echo", object())).check(TypeError)


def test_invoke_too_large(h: Harness) -> None:
    """Messages over 64 KiB are refused instead of making the server drop the socket."""
    h.connect()
    assert failure_of(h.c3.invoke("Echo", "x" * 70000)).check(MessageTooLarge)
    assert h.transport.sent == []


# ------------------------------------------------------------------ client calls


def test_client_calls_match_case_insensitively(h: Harness) -> None:
    """Hub and method names from the server match handlers case-insensitively."""
    seen: list[tuple[Any, ...]] = []
    h.c3.on("marketSummaries", lambda *a: seen.append(a))
    h.connect()
    h.transport.frame({"C": "1", "M": [{"H": "C3", "M": "MARKETSUMMARIES", "A": ["x", 1]}]})
    assert seen == [("x", 1)]


def test_failing_handler_is_logged_and_others_run(h: Harness) -> None:
    """A handler that raises is logged; the others and the connection carry on."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    seen: list[int] = []

    def bad(n: int) -> None:
        raise RuntimeError("handler bug")

    h.c3.on("tick", bad)
    h.c3.on("tick", seen.append)
    try:
        h.connect()
        h.transport.frame(
            {
                "C": "1",
                "M": [{"H": "c3", "M": "tick", "A": [1]}, {"H": "c3", "M": "tick", "A": [2]}],
            }
        )
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert seen == [1, 2]
    assert h.conn.state is ConnectionState.connected
    assert len(errors) == 2
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 2
    assert failures[0]["log_failure"].check(RuntimeError)


def test_async_handler_failure_is_logged(h: Harness) -> None:
    """A handler returning a failing Deferred is logged too."""
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    failing: Deferred[None] = Deferred()
    h.c3.on("tick", lambda n: failing)
    h.connect()
    h.transport.frame({"C": "1", "M": [{"H": "c3", "M": "tick", "A": [1]}]})
    failing.errback(ValueError("later"))
    assert len(errors) == 1 and "later" in str(errors[0])


def test_off_removes_handler(h: Harness) -> None:
    """The remover returned by on() stops deliveries."""
    seen: list[int] = []
    remove = h.c3.on("tick", seen.append)
    h.connect()
    h.transport.frame({"C": "1", "M": [{"H": "c3", "M": "tick", "A": [1]}]})
    remove()
    h.transport.frame({"C": "2", "M": [{"H": "c3", "M": "tick", "A": [2]}]})
    assert seen == [1]


def test_malformed_frame_reported_not_fatal(h: Harness) -> None:
    """A malformed frame is reported through on_error; the connection keeps going."""
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    seen: list[int] = []
    h.c3.on("tick", seen.append)
    h.connect()
    h.transport.frame(b"{not json")
    h.transport.frame({"C": "2", "M": [{"H": "c3", "M": "tick", "A": [2]}]})
    assert len(errors) == 1
    assert seen == [2]
    assert h.conn.state is ConnectionState.connected


# ------------------------------------------------------------------ keep-alive


def test_keepalive_slow_then_reconnect(h: Harness) -> None:
    """Slow at 2/3 of KeepAliveTimeout; at the timeout the transport drops and reconnects."""
    slow: list[bool] = []
    reconnecting: list[Any] = []
    h.conn.on_slow(lambda: slow.append(True))
    h.conn.on_reconnecting(reconnecting.append)
    h.connect()
    first = h.transport
    h.clock.advance(13.0)
    assert slow == []
    # Checked every (timeout - warning) / 3 = 2.22 s, like Microsoft's clients.
    h.clock.advance(2.6)
    assert slow == [True]
    assert h.conn.state is ConnectionState.connected
    h.clock.advance(4.3)
    assert h.conn.state is ConnectionState.connected
    h.clock.advance(0.2)
    assert h.conn.state is ConnectionState.reconnecting
    assert first.aborted
    assert len(reconnecting) == 1
    assert "keep-alive" in str(reconnecting[0])


def test_keepalive_frames_keep_connection(h: Harness) -> None:
    """{} frames reset the watchdog."""
    h.connect()
    for _ in range(20):
        h.clock.advance(10)
        h.transport.frame(b"{}")
    assert h.conn.state is ConnectionState.connected


def test_no_keepalive_monitoring_when_null() -> None:
    """KeepAliveTimeout null: no watchdog at all."""
    h = Harness()
    h.server.negotiate = (200, negotiate_body(KeepAliveTimeout=None))
    h.connect()
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(1000)
    assert h.conn.state is ConnectionState.connected


# ------------------------------------------------------------------ reconnect


def test_reconnect_carries_cursor_and_groups_and_fails_pending(h: Harness) -> None:
    """Loss -> reconnecting: pending invokes fail; /reconnect has messageId and groupsToken."""
    h.connect()
    pending = h.c3.invoke("Slow", 1000)
    h.transport.frame({"C": "d-1-A,5", "G": "grp+token/=", "M": []})
    h.transport.lose()
    assert h.conn.state is ConnectionState.reconnecting
    f = failure_of(pending)
    assert f.check(ConnectionClosed)
    assert "reconnecting" in str(f.value)
    assert len(FakeTransport.instances) == 1
    h.clock.advance(2.0)
    t = h.transport
    assert len(FakeTransport.instances) == 2
    assert "/signalr/reconnect?" in t.url
    query = parse_qs(urlsplit(t.url).query)
    assert query["messageId"] == ["d-1-A,5"]
    assert query["groupsToken"] == ["grp+token/="]
    reconnected: list[bool] = []
    h.conn.on_reconnected(lambda: reconnected.append(True))
    t.open_ok()
    assert h.conn.state is ConnectionState.connected
    assert reconnected == [True]
    assert h.server.commands().count("start") == 1, "no /start after a reconnect"


def test_invoke_while_reconnecting_is_refused(h: Harness) -> None:
    """New invocations during reconnecting fail at once instead of hanging."""
    h.connect()
    h.transport.lose()
    assert failure_of(h.c3.invoke("Echo", 1)).check(InvalidStateError)


def test_reconnect_retries_then_gives_up_after_disconnect_timeout(h: Harness) -> None:
    """Attempts every 2 s until DisconnectTimeout; then closed with a clear reason."""
    closed: list[Any] = []
    h.conn.on_closed(closed.append)
    h.connect()
    when_closed = h.conn.when_closed()
    h.transport.lose()
    for _ in range(14):
        h.clock.advance(2.0)
        h.transport.lose("refused")
    assert len(FakeTransport.instances) == 15
    assert h.conn.state is ConnectionState.reconnecting
    h.clock.advance(2.0)
    assert h.conn.state is ConnectionState.disconnected
    f = failure_of(when_closed)
    assert f.check(ConnectionClosed)
    assert "Couldn't reconnect within the configured timeout of 30 s" in str(f.value)
    assert closed and closed[0] is f.value
    assert "abort" not in h.server.commands()
    assert h.clock.getDelayedCalls() == []
    assert failure_of(h.conn.when_closed()).check(ConnectionClosed)


def test_reconnect_refused_by_server_closes_at_once(h: Harness) -> None:
    """A 400 on /reconnect (token unknown to the server) closes without waiting."""
    h.connect()
    d = h.conn.when_closed()
    h.transport.lose()
    h.clock.advance(2.0)
    h.transport.lose("upgrade refused", status=400)
    f = failure_of(d)
    assert "HTTP 400" in str(f.value)
    assert h.clock.getDelayedCalls() == []


def test_server_reconnect_request(h: Harness) -> None:
    """T:1 drops the transport and reconnects."""
    h.connect()
    first = h.transport
    h.transport.frame({"C": "1", "T": 1, "M": []})
    assert first.aborted
    assert h.conn.state is ConnectionState.reconnecting


@pytest.mark.parametrize("frame", [{"E": "Azure says no"}, {"C": "1", "D": 1, "M": []}])
def test_server_error_and_disconnect_close(h: Harness, frame: dict[str, Any]) -> None:
    """E and D:1 close the connection for good without /abort."""
    h.connect()
    d = h.conn.when_closed()
    h.transport.frame(frame)
    assert failure_of(d).check(ConnectionClosed)
    assert h.conn.state is ConnectionState.disconnected
    assert "abort" not in h.server.commands()


def test_frames_from_an_old_transport_are_ignored(h: Harness) -> None:
    """After a drop, a late frame on the old socket is not delivered."""
    seen: list[int] = []
    h.c3.on("tick", seen.append)
    h.connect()
    old = h.transport
    old.lose()
    old.frame({"C": "9", "M": [{"H": "c3", "M": "tick", "A": [9]}]})
    assert seen == []


# ------------------------------------------------------------------ stop


def test_stop_aborts_fails_pending_and_leaves_no_timers(h: Harness) -> None:
    """stop(): /abort, socket closed, pending invokes fail, no delayed calls remain."""
    h.connect()
    when_closed = h.conn.when_closed()
    pending = h.c3.invoke("Slow", 1000, timeout=60)
    d = h.stop()
    assert result_of(d) is None
    f = failure_of(pending)
    assert f.check(ConnectionClosed)
    assert "disconnected" in str(f.value)
    assert h.server.commands()[-1] == "abort"
    abort_query = h.server.requests[-1][2]
    assert abort_query["connectionToken"] == [TOKEN]
    assert h.transport.closed
    assert result_of(when_closed) is None
    assert h.conn.state is ConnectionState.disconnected
    assert h.clock.getDelayedCalls() == []


def test_stop_while_reconnecting(h: Harness) -> None:
    """stop() during reconnecting cancels the retry and the deadline."""
    h.connect()
    h.transport.lose()
    result_of(h.stop())
    assert h.clock.getDelayedCalls() == []
    assert h.server.commands()[-1] == "abort"


def test_restart_after_stop_renegotiates(h: Harness) -> None:
    """A stopped connection can start again; it negotiates anew."""
    h.connect()
    result_of(h.stop())
    h.connect()
    assert h.server.commands().count("negotiate") == 2


def test_state_changes_are_observable(h: Harness) -> None:
    """on_state_change reports every transition in order."""
    changes: list[tuple[str, str]] = []
    h.conn.on_state_change(lambda old, new: changes.append((old.value, new.value)))
    h.connect()
    h.transport.lose()
    h.clock.advance(2)
    h.transport.open_ok()
    result_of(h.stop())
    assert changes == [
        ("disconnected", "connecting"),
        ("connecting", "connected"),
        ("connected", "reconnecting"),
        ("reconnecting", "connected"),
        ("connected", "disconnected"),
    ]


def test_secrets_never_logged_or_in_repr() -> None:
    """Tokens, cookies and Authorization never appear in logs or reprs."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness(headers={"Authorization": "Bearer TOPSECRET"}, cookies={"sess": "COOKIEVAL"})
        h.connect()
        h.transport.frame(b"garbage")
        h.transport.lose()
        h.clock.advance(2)
        h.transport.lose("nope", status=400)
        text = repr(h.conn) + repr(h.conn.negotiated)
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    text += "\n".join(formatEvent(e) + repr(e) for e in events)
    assert events
    for secret in (TOKEN, "AQAAANCMnd8%2B", "TOPSECRET", "COOKIEVAL", "abc123"):
        assert secret not in text


def test_on_any_receives_every_method_with_its_name(h: Harness) -> None:
    """on_any gets (method, *args) for every client call, after the specific handlers."""
    order: list[Any] = []
    h.c3.on("tick", lambda n: order.append(("tick", n)))
    remove = h.c3.on_any(lambda method, *args: order.append(("any", method, args)))
    h.connect()
    h.transport.frame(
        {
            "C": "1",
            "M": [{"H": "c3", "M": "tick", "A": [1]}, {"H": "c3", "M": "heartbeat", "A": []}],
        }
    )
    remove()
    h.transport.frame({"C": "2", "M": [{"H": "c3", "M": "heartbeat", "A": []}]})
    assert order == [("tick", 1), ("any", "tick", (1,)), ("any", "heartbeat", ())]


# ------------------------------------------------------------------ review findings


def _hold_start_until_init(h: Harness) -> Deferred[None]:
    h.server.hold_start = True
    d = h.start()
    h.transport.open_ok()
    h.transport.frame({"C": "d-1-A,0", "S": 1, "M": []})
    h.flush()
    assert h.server.commands() == ["negotiate", "start"]
    assert not d.called
    return d


def test_loss_during_start_request_fails_start_cleanly(h: Harness) -> None:
    """Socket lost while /start is in flight: StartError, nothing unhandled, no timers."""
    import gc

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = _hold_start_until_init(h)
        h.transport.lose("dropped")
        h.flush()
        f = failure_of(d)
        assert f.check(StartError)
        assert "WebSocket closed" in str(f.value)
        del f, d
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("isError") or "log_failure" in e]
    assert h.clock.getDelayedCalls() == []


def test_stop_during_start_request_cancels_it(h: Harness) -> None:
    """stop() while /start is in flight cancels the request and leaves no timers."""
    d = _hold_start_until_init(h)
    stopped = h.stop()
    result_of(stopped)
    assert failure_of(d).check(ConnectionClosed)
    assert h.clock.getDelayedCalls() == []
    assert h.server.commands()[-1] == "abort"


def test_broken_message_in_batch_loses_nothing_else(h: Harness) -> None:
    """One malformed element: the others are delivered, the cursor advances, error reported."""
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    seen: list[int] = []
    h.c3.on("tick", seen.append)
    h.connect()
    h.transport.frame(
        {
            "C": "d-1-A,5",
            "M": [
                {"H": "c3", "M": "tick", "A": [1]},
                {"H": "c3", "M": "tick", "A": 7},
                {"H": "c3", "M": "tick", "A": [3]},
            ],
        }
    )
    assert seen == [1, 3]
    assert len(errors) == 1 and "arguments" in str(errors[0])
    h.transport.lose()
    h.clock.advance(2)
    assert parse_qs(urlsplit(h.transport.url).query)["messageId"] == ["d-1-A,5"]


def test_start_while_stop_runs_is_refused_and_waiters_stay_apart() -> None:
    """A start() during an unfinished stop() is refused; stop's outcome stays its own."""
    h = Harness()
    h.connect()
    old_closed = h.conn.when_closed()
    h.server.hold_start = False
    # Make /abort hang so stop() is still running.
    held: list[Request] = []
    original = h.server.render

    def render(request: Request) -> bytes | int:
        if request.path.endswith(b"/abort"):
            held.append(request)
            return NOT_DONE_YET  # type: ignore[no-any-return]
        return original(request)

    h.server.render = render  # type: ignore[method-assign]
    stopping = h.conn.stop()
    h.flush()
    assert not stopping.called
    assert failure_of(h.conn.start()).check(InvalidStateError)
    held[0].finish()
    h.flush()
    result_of(stopping)
    assert result_of(old_closed) is None
    h.connect()
    assert h.conn.state is ConnectionState.connected


def test_hung_reconnect_upgrade_is_abandoned_and_retried(h: Harness) -> None:
    """A /reconnect that never opens is aborted after TransportConnectTimeout and retried."""
    h.connect()
    h.transport.lose()
    h.clock.advance(2.0)
    hung = h.transport
    h.clock.advance(4.9)
    assert not hung.aborted
    h.clock.advance(0.2)
    assert hung.aborted
    h.clock.advance(2.0)
    assert h.transport is not hung
    assert "/reconnect?" in h.transport.url
    h.transport.open_ok()
    assert h.conn.state is ConnectionState.connected


def test_reconnect_churn_without_frames_ends(h: Harness) -> None:
    """Reconnects that open and close at once, with no frame, stop after the window."""
    h.connect()
    closed = h.conn.when_closed()
    for _ in range(40):
        if h.conn.state is ConnectionState.disconnected:
            break
        h.transport.lose()
        h.clock.advance(2.0)
        if h.conn.state is ConnectionState.reconnecting:
            h.transport.open_ok()
    assert h.conn.state is ConnectionState.disconnected
    f = failure_of(closed)
    assert "reconnect window of 50 s" in str(f.value)
    assert h.clock.seconds() <= 60
    assert h.clock.getDelayedCalls() == []


def test_stop_from_state_change_callback(h: Harness) -> None:
    """stop() called when the state turns to reconnecting: no reconnecting event after it."""
    reconnecting: list[Any] = []
    stopped: list[Deferred[None]] = []
    h.conn.on_reconnecting(reconnecting.append)

    def on_change(old: ConnectionState, new: ConnectionState) -> None:
        if new is ConnectionState.reconnecting:
            stopped.append(h.conn.stop())

    h.conn.on_state_change(on_change)
    h.connect()
    h.transport.lose()
    h.flush()
    assert reconnecting == []
    assert h.conn.state is ConnectionState.disconnected
    result_of(stopped[0])
    assert h.clock.getDelayedCalls() == []


def test_when_connected(h: Harness) -> None:
    """when_connected fires on connect and on reconnect, and fails when closed first."""
    first = h.conn.when_connected()
    h.connect()
    assert result_of(first) is None
    assert result_of(h.conn.when_connected()) is None
    h.transport.lose()
    again = h.conn.when_connected()
    assert not again.called
    h.clock.advance(2)
    h.transport.open_ok()
    assert result_of(again) is None
    h.transport.lose()
    lost = h.conn.when_connected()
    result_of(h.stop())
    assert failure_of(lost).check(ConnectionClosed)


def test_reconnect_delay_policy() -> None:
    """reconnect_delay may be a policy(attempt) -> seconds."""
    h = Harness(reconnect_delay=lambda attempt: [0.5, 1.0, 4.0][min(attempt, 2)])
    h.connect()
    h.transport.lose()
    h.clock.advance(0.5)
    assert len(FakeTransport.instances) == 2
    h.transport.lose("refused")
    h.clock.advance(0.9)
    assert len(FakeTransport.instances) == 2
    h.clock.advance(0.1)
    assert len(FakeTransport.instances) == 3


def test_negotiation_error_text_never_shows_the_token() -> None:
    """str(NegotiationError) leaves out a body that holds the connection token."""
    h = Harness()
    h.server.negotiate = (200, negotiate_body(ProtocolVersion="1.2"))
    f = failure_of(h.start())
    assert "server version 1.2" in str(f.value)
    assert TOKEN not in str(f.value)
    assert "withheld" in str(f.value)


def test_user_info_never_in_repr() -> None:
    """Credentials in the URL stay out of repr()."""
    conn = HubConnection(Clock(), "http://bob:hunter2@example.com/signalr")
    assert "hunter2" not in repr(conn)
    assert "example.com/signalr" in repr(conn)


def test_handlers_added_after_traffic_are_used(h: Harness) -> None:
    """The hot path's route cache is refreshed when handlers are added later."""
    seen: list[Any] = []
    h.connect()
    h.transport.frame({"C": "1", "M": [{"H": "c3", "M": "tick", "A": [1]}]})
    h.c3.on("tick", seen.append)
    h.transport.frame({"C": "2", "M": [{"H": "c3", "M": "tick", "A": [2]}]})
    h.c3.on_any(lambda method, *args: seen.append((method, args)))
    h.transport.frame({"C": "3", "M": [{"H": "C3", "M": "TICK", "A": [3]}]})
    assert seen == [2, 3, ("TICK", (3,))]


def test_waiters_learn_of_a_failed_start(h: Harness) -> None:
    """when_connected/when_closed taken during a start that fails do not hang."""
    h.server.hold_start = True
    h.server.start = (500, b"")
    connected = h.conn.when_connected()
    d = h.start()
    closed = h.conn.when_closed()
    h.transport.open_ok()
    h.transport.frame({"C": "x", "S": 1, "M": []})
    request = h.server.held.pop()
    request.finish()
    h.flush()
    assert failure_of(d).check(StartError)
    f = failure_of(connected)
    assert f.check(ConnectionClosed) and "start() failed" in str(f.value)
    assert failure_of(closed).check(ConnectionClosed)


def test_core_server_405_on_negotiate(h: Harness) -> None:
    """A 405 to GET negotiate is reported as an ASP.NET Core server."""
    h.server.negotiate = (405, b"")
    f = failure_of(h.start())
    assert f.check(NegotiationError)
    assert "ASP.NET Core" in str(f.value) and f.value.status == 405


_arg = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))
_call = st.fixed_dictionaries(
    {
        "H": st.sampled_from(["c3", "C3", "chat", "other"]),
        "M": st.sampled_from(["tick", "Tick", "heartbeat"]),
        "A": st.one_of(st.lists(_arg, max_size=3), _arg),  # sometimes not an array
    }
)
_element = st.one_of(
    _call,
    _call.map(lambda c: {**c, "S": {"k": 1}}),
    st.fixed_dictionaries({"I": st.just("P|0"), "P": st.just({"I": "0", "D": 1})}),
    _arg,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_element, max_size=8))
def test_fast_path_matches_the_general_parser(elements: list[Any]) -> None:
    """Plain frames dispatched from JSON give exactly what parse_frame's values give."""
    h = Harness()
    calls: list[tuple[str, str, tuple[Any, ...]]] = []
    errors: list[Any] = []
    h.c3.on_any(lambda method, *args: calls.append(("c3", method.lower(), args)))
    h.conn.hub("chat").on_any(lambda method, *args: calls.append(("chat", method.lower(), args)))
    h.conn.on_error(errors.append)
    h.connect()
    frame = {"C": "d-1-A,9", "M": elements}
    h.transport.frame(frame)

    parsed = parse_frame(json.dumps(frame).encode())
    assert isinstance(parsed, PersistentResponse)
    expected = [
        (m.hub.lower(), m.method.lower(), m.args)
        for m in parsed.messages
        if isinstance(m, ClientInvocation) and m.hub.lower() in ("c3", "chat")
    ]
    assert calls == expected
    assert len(errors) == sum(isinstance(m, MalformedMessage) for m in parsed.messages)
    assert h.conn.message_id == "d-1-A,9"


# ------------------------------------------------------------------ transports and fallback


def all_transports() -> Harness:
    return Harness(transports=("webSockets", "serverSentEvents", "longPolling"))


def _init(t: FakeTransport) -> None:
    t.open_ok()
    t.frame({"C": "d-1-A,0", "S": 1, "M": []})


def test_try_websockets_false_starts_on_sse() -> None:
    """TryWebSockets false: WebSockets are skipped and SSE is used, with the same token."""
    h = all_transports()
    h.server.negotiate = (200, negotiate_body(TryWebSockets=False))
    d = h.start()
    assert [t.request.transport for t in FakeTransport.instances] == [
        Transport.server_sent_events
    ]
    t = h.transport
    assert t.request.url.startswith("http://example.com/signalr/connect?")
    assert parse_qs(urlsplit(t.request.url).query)["transport"] == ["serverSentEvents"]
    _init(t)
    h.flush()
    assert result_of(d) is None
    assert h.conn.transport is Transport.server_sent_events
    start = next(r for r in h.server.requests if r[1] == "start")
    assert start[2]["transport"] == ["serverSentEvents"]


def test_fallback_order_after_refusal_and_silence() -> None:
    """Refused upgrade -> SSE; SSE silent past TransportConnectTimeout -> long polling."""
    h = all_transports()
    d = h.start()
    ws = h.transport
    ws.lose("WebSocket upgrade refused with HTTP 400", status=400)
    h.flush()
    sse = h.transport
    assert sse.request.transport is Transport.server_sent_events
    sse.open_ok()
    h.clock.advance(5.1)
    h.flush()
    assert sse.aborted
    lp = h.transport
    assert lp.request.transport is Transport.long_polling
    assert lp.request.poll is not None
    token = parse_qs(urlsplit(ws.request.url).query)["connectionToken"]
    assert parse_qs(urlsplit(lp.request.url).query)["connectionToken"] == token
    assert h.server.commands() == ["negotiate"], "a failed attempt is stopped without /abort"
    _init(lp)
    h.flush()
    assert result_of(d) is None
    assert h.conn.transport is Transport.long_polling
    assert h.conn.state is ConnectionState.connected
    # Long polling is its own keep-alive: no watchdog timer runs.
    assert h.clock.getDelayedCalls() == []


def test_no_transport_names_every_attempt() -> None:
    """When nothing works: NoTransportError (a ConnectionClosed) naming each and why."""
    from txsignalr import NoTransportError

    h = all_transports()
    h.server.negotiate = (200, negotiate_body(TryWebSockets=False))
    d = h.start()
    h.transport.lose("the event stream was refused with HTTP 403", status=403)
    h.flush()
    h.clock.advance(5.1)
    h.flush()
    f = failure_of(d)
    assert f.check(NoTransportError) and f.check(ConnectionClosed) and f.check(StartError)
    error = f.value
    assert [name for name, _ in error.attempts] == [
        "webSockets",
        "serverSentEvents",
        "longPolling",
    ]
    assert "TryWebSockets" in error.attempts[0][1]
    assert "403" in error.attempts[1][1]
    assert "init frame" in error.attempts[2][1]
    assert error.status == 403
    text = str(error)
    assert "webSockets" in text and "serverSentEvents" in text and "longPolling" in text
    assert h.conn.state is ConnectionState.disconnected
    assert h.clock.getDelayedCalls() == []


def _connected_over(transport: str) -> Harness:
    h = Harness(transports=(transport,))
    d = h.start()
    _init(h.transport)
    h.flush()
    assert result_of(d) is None
    return h


def test_sse_send_goes_through_the_transport_and_result_comes_in_its_answer() -> None:
    """Over SSE an invocation's result is the /send answer's body."""
    h = _connected_over("serverSentEvents")
    d = h.c3.invoke("Echo", 5)
    t = h.transport
    assert t.sent_json() == [{"H": "c3", "M": "Echo", "A": [5], "I": 0}]
    assert not d.called
    t.answers.pop().callback(b'{"R":5,"I":"0"}')
    assert result_of(d) == 5


def test_sse_send_http_error_fails_the_invocation() -> None:
    """A /send that fails gives the invocation a SignalRError, the connection carries on."""
    from txsignalr import SignalRError

    h = _connected_over("serverSentEvents")
    d = h.c3.invoke("Echo", 5)
    h.transport.answers.pop().errback(SignalRError("/send answered HTTP 500: b''"))
    f = failure_of(d)
    assert f.check(SignalRError) and "500" in str(f.value)
    assert h.conn.state is ConnectionState.connected


@pytest.mark.parametrize(
    ("transport", "survives"),
    [("webSockets", False), ("serverSentEvents", True), ("longPolling", True)],
)
def test_pending_invocations_across_a_reconnect(transport: str, survives: bool) -> None:
    """As in Microsoft's jQuery client: only over WebSockets do pending calls fail on loss."""
    h = _connected_over(transport)
    d = h.c3.invoke("Slow", 100)
    first = h.transport
    first.lose("dropped")
    assert h.conn.state is ConnectionState.reconnecting
    if not survives:
        assert failure_of(d).check(ConnectionClosed)
        return
    assert not d.called
    h.clock.advance(2.0)
    again = h.transport
    assert again is not first and "/reconnect?" in again.request.url
    again.open_ok()
    assert h.conn.state is ConnectionState.connected
    first.answers.pop().callback(b'{"R":"done","I":"0"}')
    assert result_of(d) == "done"


def test_stop_cancels_outstanding_sends() -> None:
    """stop() fails pending invocations and cancels their /send requests: nothing hangs."""
    h = _connected_over("longPolling")
    d = h.c3.invoke("Slow", 100)
    answer = h.transport.answers[-1]
    result_of(h.stop())
    assert failure_of(d).check(ConnectionClosed)
    assert answer.called  # cancelled
    assert h.clock.getDelayedCalls() == []


def test_long_polling_reconnect_window_ignores_keepalive_idle() -> None:
    """Long polling has no keep-alives: silence shorter than a poll's life is fine."""
    h = _connected_over("longPolling")
    h.clock.advance(120)  # far past DisconnectTimeout + KeepAliveTimeout of silence
    h.transport.lose("poll failed")
    assert h.conn.state is ConnectionState.reconnecting


def test_long_polling_that_falsely_reopens_still_gives_up() -> None:
    """A /reconnect poll that 'opens' but never answers cannot keep the connection
    alive for ever: past DisconnectTimeout + ConnectionTimeout + 10 s of silence the
    next attempt closes it, failing the calls still pending."""
    h = _connected_over("longPolling")
    d = h.c3.invoke("Echo", 1)
    closed = h.conn.when_closed()
    for _ in range(20):
        if h.conn.state is ConnectionState.disconnected:
            break
        h.transport.lose("poll timed out")
        h.clock.advance(2.0)  # the reconnect delay: a new /reconnect poll
        h.transport.open_ok()  # it counts as open, but nothing ever arrives
        h.clock.advance(20.0)
    f = failure_of(closed)
    assert f.check(ConnectionClosed)
    assert "reconnect window of 150 s" in str(f.value)
    assert failure_of(d).check(ConnectionClosed)
    assert h.clock.getDelayedCalls() == []

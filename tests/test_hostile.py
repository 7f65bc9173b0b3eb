"""
Hostile servers (``tests/hostile.py``): every fault ends in a bounded time with a
typed error, loses nothing that arrived intact, and logs no unhandled error.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from helpers import sleep, wait_until, within
from hostile import (
    CLASSIC_NEGOTIATE,
    Behaviour,
    HostileConnection,
    HostileServer,
    Request,
    behaviour,
    ws_frame,
)
from twisted.internet import reactor as _reactor
from twisted.internet.defer import TimeoutError
from twisted.logger import formatEvent, globalLogPublisher

from txsignalr import (
    ConnectionClosed,
    ConnectionState,
    HubConnection,
    MessageTooLarge,
    NegotiationError,
    NoTransportError,
    ProtocolError,
)

reactor: Any = _reactor

TICK = b'{"C":"d-1,1|A,1","M":[{"H":"c3","M":"tick","A":[1]}]}'
CORE_TICK = b'{"type":1,"target":"tick","arguments":[1]}\x1e'


@pytest.fixture
def unhandled() -> Iterator[list[str]]:
    """Every log event that reports an unhandled error or a traceback."""
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text += failure.getTraceback()
        if "Unhandled error" in text or "Traceback" in text:
            seen.append(text)

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        gc.collect()
        globalLogPublisher.removeObserver(observe)


async def run(
    b: Behaviour, transport: str, **kwargs: Any
) -> tuple[HostileServer, HubConnection, list[Any], list[Any]]:
    """Start a connection to a hostile server; returns it with its errors and calls."""
    server = HostileServer(b)
    url = server.listen(reactor)
    family = "core" if b.core else "classic"
    conn = HubConnection(
        reactor,
        f"{url}/hubs/echo" if b.core else f"{url}/signalr",
        protocol=family,
        transports=[transport],
        **kwargs,
    )
    errors: list[Any] = []
    calls: list[Any] = []
    conn.on_error(errors.append)
    proxy: Any = conn if b.core else conn.hub("c3")
    proxy.on("tick", lambda *a: calls.append(a))
    return server, conn, errors, calls


async def finish(server: HostileServer, conn: HubConnection) -> None:
    await within(conn.stop())
    await server.stop()


# -- bad frames: reported, and the connection carries on ------------------------------


def _garbage_then_tick_ws(self: Behaviour, conn: HostileConnection, request: Request) -> None:
    Behaviour.websocket(self, conn, request)
    conn.write(ws_frame(b"not json{") + ws_frame(b"[1,2]") + ws_frame(TICK))


def _garbage_then_tick_sse(self: Behaviour, conn: HostileConnection, request: Request) -> None:
    Behaviour.event_stream(self, conn, request)
    conn.write(b"data: not json{\n\ndata: [1,2]\n\ndata: " + TICK + b"\n\n")


@pytest.mark.parametrize(
    ("transport", "hooks"),
    [
        ("webSockets", {"websocket": _garbage_then_tick_ws}),
        ("serverSentEvents", {"event_stream": _garbage_then_tick_sse}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_classic_garbage_after_init_is_reported_and_skipped(
    unhandled: list[str], transport: str, hooks: dict[str, Any]
) -> None:
    server, conn, errors, calls = await run(behaviour(**hooks), transport)
    try:
        await within(conn.start())
        await wait_until(lambda: calls == [(1,)], "the tick after the garbage")
        assert conn.state is ConnectionState.connected
        assert len(errors) == 2 and all(isinstance(e, ProtocolError) for e in errors), errors
        assert "not valid JSON" in str(errors[0])
    finally:
        await finish(server, conn)
    assert unhandled == []


def _core_garbage(self: Behaviour, conn: HostileConnection) -> None:
    conn.write(ws_frame(b"not json\x1e" + CORE_TICK))


@pytest_twisted.ensureDeferred
async def test_core_garbage_after_handshake_is_a_typed_error(unhandled: list[str]) -> None:
    """ASP.NET Core: a record that is not JSON is a ProtocolError, reported; the
    records after it in the same message still arrive."""
    server, conn, errors, calls = await run(
        behaviour(core=True, handshaken=_core_garbage), "webSockets", reconnect_delay=None
    )
    try:
        await within(conn.start())
        await wait_until(lambda: bool(errors), "the error reported")
        assert isinstance(errors[0], ProtocolError), errors
        await sleep(0.05)
        assert calls == [(1,)]
    finally:
        await finish(server, conn)
    assert unhandled == []


# -- broken and endless frames: the connection ends in bounded time -------------------


def _truncated(self: Behaviour, conn: HostileConnection) -> None:
    conn.write(ws_frame(b"x" * 10, length=100))
    conn.transport.loseConnection()  # type: ignore[union-attr]


def _endless_ws(self: Behaviour, conn: HostileConnection) -> None:
    conn.write(ws_frame(b"", length=1000))
    conn.drip(b"y" * 1000, 0.1, reactor)


def _drip_sse(self: Behaviour, conn: HostileConnection) -> None:
    conn.drip(b"data: " + b"z" * 1000, 0.1, reactor)


def _clean_reconnect_then_tick(b: Behaviour) -> None:
    """A /reconnect is served cleanly and then carries a tick (the server recovered)."""
    ws, sse = b.websocket, b.event_stream

    def websocket(conn: HostileConnection, request: Request) -> None:
        ws(conn, request)
        if request.path.endswith("/reconnect"):
            conn.write(ws_frame(TICK))

    def event_stream(conn: HostileConnection, request: Request) -> None:
        sse(conn, request)
        if request.path.endswith("/reconnect"):
            conn.write(b"data: " + TICK + b"\n\n")

    b.websocket = websocket  # type: ignore[method-assign]
    b.event_stream = event_stream  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("transport", "hooks", "why"),
    [
        ("webSockets", {"after_start": _truncated}, "truncated frame, then the socket closes"),
        ("webSockets", {"after_start": _endless_ws}, "a frame that never ends"),
        ("serverSentEvents", {"after_start": _drip_sse}, "one byte every 100 ms"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_classic_broken_streams_are_detected_and_recovered(
    unhandled: list[str], transport: str, hooks: dict[str, Any], why: str
) -> None:
    """The fault is seen within the server's KeepAliveTimeout (2 s here; at once for
    a closed socket): the connection reconnects, and once the server behaves, what it
    sends arrives."""
    b = behaviour(**hooks)
    _clean_reconnect_then_tick(b)
    server, conn, _errors, calls = await run(b, transport)
    states: list[ConnectionState] = []
    conn.on_state_change(lambda old, new: states.append(new))
    try:
        await within(conn.start())
        bound = CLASSIC_NEGOTIATE["KeepAliveTimeout"] + 5
        await wait_until(
            lambda: ConnectionState.reconnecting in states, f"the fault seen ({why})", bound
        )
        await wait_until(lambda: calls == [(1,)], "the tick after the reconnect", bound)
        assert conn.state is ConnectionState.connected
        assert [r.path for r in server.requests].count("/signalr/reconnect") == 1
    finally:
        await finish(server, conn)
    assert unhandled == []


def _oversized(self: Behaviour, conn: HostileConnection) -> None:
    """A 48 MB frame, written in 256 KiB pieces as long as the client reads."""
    size = 48 * 1024 * 1024
    conn.write(ws_frame(b"", length=size))
    piece = b"[" * 262144
    conn.sent = 0  # type: ignore[attr-defined]

    def more() -> None:
        if conn.lost or conn.sent >= size:  # type: ignore[attr-defined]
            return
        conn.write(piece)
        conn.sent += len(piece)  # type: ignore[attr-defined]
        reactor.callLater(0, more)

    more()


@pytest.mark.parametrize("core", [False, True])
@pytest_twisted.ensureDeferred
async def test_an_oversized_frame_closes_at_its_header(unhandled: list[str], core: bool) -> None:
    """A frame announcing 48 MB with max_receive_size 1 MiB: closed for good with
    MessageTooLarge as the cause, long before 48 MB were sent."""

    hooks: dict[str, Any] = {"core": core}
    hooks["handshaken" if core else "after_start"] = _oversized
    server, conn, _errors, _calls = await run(
        behaviour(**hooks), "webSockets", max_receive_size=1024 * 1024, reconnect_delay=None
    )
    try:
        await within(conn.start())
        with pytest.raises(ConnectionClosed) as info:
            await within(conn.when_closed())
        assert isinstance(info.value.cause, MessageTooLarge), repr(info.value)
        sent = getattr(server.connections[-1], "sent", 0)
        assert sent < 16 * 1024 * 1024, sent
    finally:
        await finish(server, conn)
    assert unhandled == []


# -- answers that never come -----------------------------------------------------------


def _silent(self: Behaviour, conn: HostileConnection, request: Request) -> None:
    pass


@pytest.mark.parametrize("core", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_negotiate_that_never_answers(unhandled: list[str], core: bool) -> None:
    server, conn, _errors, _calls = await run(
        behaviour(core=core, negotiate=_silent), "webSockets", http_timeout=1.0
    )
    try:
        with pytest.raises(NegotiationError, match="timed out after 1 s"):
            await within(conn.start())
    finally:
        await finish(server, conn)
    assert unhandled == []


@pytest_twisted.ensureDeferred
async def test_a_websocket_that_never_upgrades(unhandled: list[str]) -> None:
    """Classic: the negotiate's TransportConnectTimeout (2 s) rules WebSockets out."""
    server, conn, _errors, _calls = await run(behaviour(websocket=_silent), "webSockets")
    try:
        with pytest.raises(NoTransportError) as info:
            await within(conn.start())
        assert [t for t, _ in info.value.attempts] == ["webSockets"]
    finally:
        await finish(server, conn)
    assert unhandled == []


def _silent_send_classic(self: Behaviour, conn: HostileConnection, request: Request) -> None:
    pass


@pytest_twisted.ensureDeferred
async def test_a_send_that_hangs_fails_only_its_call(unhandled: list[str]) -> None:
    """Classic SSE: a /send that never answers fails that invocation at its
    invoke_timeout; the connection and its client calls carry on."""

    def stream(self: Behaviour, conn: HostileConnection, request: Request) -> None:
        Behaviour.event_stream(self, conn, request)
        self.stream = conn  # type: ignore[attr-defined]

    b = behaviour(event_stream=stream, send=_silent_send_classic)
    server, conn, _errors, calls = await run(b, "serverSentEvents", invoke_timeout=0.5)
    try:
        await within(conn.start())
        with pytest.raises(TimeoutError):
            await within(conn.hub("c3").invoke("Echo", 1))
        b.stream.write(b"data: " + TICK + b"\n\n")  # type: ignore[attr-defined]
        await wait_until(lambda: calls == [(1,)], "a call after the timeout")
        assert conn.state is ConnectionState.connected
    finally:
        await finish(server, conn)
    assert unhandled == []


def _huge_header(self: Behaviour, conn: HostileConnection, request: Request) -> None:
    conn.write(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * (1024 * 1024) + b"\r\n\r\n{}")


@pytest.mark.parametrize("core", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_huge_header(unhandled: list[str], core: bool) -> None:
    server, conn, _errors, _calls = await run(
        behaviour(core=core, negotiate=_huge_header), "webSockets"
    )
    try:
        with pytest.raises(NegotiationError, match="negotiate request failed"):
            await within(conn.start())
    finally:
        await finish(server, conn)
    assert unhandled == []

"""
The Core server transports, writing Microsoft's bytes: WebSockets (one message per
write, text or, for MessagePack, binary; a stateful reconnect's new socket takes over
its connection), Server-Sent Events (``:\\r\\n`` first, then ``data: …\\r\\n\\r\\n``
events) and long polling (first poll answered at once and empty, later polls held up to
the poll timeout, ``204`` once the connection is over).  Each is a :class:`CoreChannel`
of one :class:`CoreConnection`.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from txsignalr._websocket import QuietAutobahnLog
from txsignalr.testing._core_registry import CoreConnection, CoreRegistry
from txsignalr.testing._core_wire import sse_event
from txsignalr.testing._timers import Timers

__all__ = ["CoreHttpTransports", "CoreWebSockets"]

_CLOSE_GRACE = 1.0


class _CoreWebSocket(WebSocketServerProtocol):
    log = QuietAutobahnLog()
    conn: CoreConnection
    owner: CoreWebSockets | None
    #: a stateful reconnect's new socket (no handshake)
    resume = False

    def __init__(self) -> None:
        super().__init__()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._guard: IDelayedCall | None = None

    def onOpen(self) -> None:
        if self.owner is not None:
            self.owner.sockets.add(self)
            if self.resume:
                self.conn.resume(self)
            else:
                self.conn.attach(self, "WebSockets")

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        limit = 4 * self.conn.settings.core_max_message_size + 64 * 1024
        if not self.failedByMe and self.message_data_total_length > limit:
            self._fail_connection(
                WebSocketServerProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG, "message too big"
            )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.owner is not None:
            self.conn.receive(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.sockets.discard(self)
            # no close handshake: a stateful connection waits for the client's new socket
            owner.registry.lost(self.conn, self, resumable=not wasClean)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if not self.closed.called:
            self.closed.callback(None)

    # -- CoreChannel ----------------------------------------------------------------

    def write(self, data: bytes, binary: bool) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=binary)  # type: ignore[no-untyped-call]

    def end(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.sockets.discard(self)
        if self.state == WebSocketServerProtocol.STATE_OPEN and owner is not None:
            self.sendClose(1000)
            guard = owner.timers.call_later(_CLOSE_GRACE, self.abort)
            self.closed.addCallback(lambda _: owner.timers.cancel(guard))
        else:
            self.abort()

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


class _Factory(WebSocketServerFactory):
    protocol = _CoreWebSocket
    log = QuietAutobahnLog()

    def __init__(self, owner: CoreWebSockets, reactor: IReactorTime) -> None:
        super().__init__(reactor=reactor, server=None)  # type: ignore[no-untyped-call]
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            autoPingTimeout=0,
            failByDrop=True,
            allowedOrigins=["*"],
            allowNullOrigin=True,
        )
        self._owner = owner
        self.pending: CoreConnection | None = None
        self.resume = False

    def buildProtocol(self, addr: Any) -> _CoreWebSocket:
        proto = cast(_CoreWebSocket, super().buildProtocol(addr))
        assert self.pending is not None
        proto.conn = self.pending
        proto.owner = self._owner
        proto.resume = self.resume
        return proto


class CoreWebSockets:
    """Upgrades Core connect requests to WebSockets."""

    def __init__(self, registry: CoreRegistry, timers: Timers, reactor: IReactorTime) -> None:
        self.registry = registry
        self.timers = timers
        self.sockets: set[_CoreWebSocket] = set()
        self._factory = _Factory(self, reactor)
        self._resource = WebSocketResource(self._factory)

    def render(self, request: Request, conn: CoreConnection, resume: bool = False) -> bytes | int:
        """Upgrade ``request``: a connection's first socket, or (``resume``) its new one."""
        self._factory.pending = conn
        self._factory.resume = resume
        try:
            result: bytes | int = self._resource.render(request)
        finally:
            self._factory.pending = None
            self._factory.resume = False
        return result

    def shutdown(self) -> list[defer.Deferred[None]]:
        waits = []
        for sock in list(self.sockets):
            sock.owner = None
            waits.append(sock.closed)
            sock.abort()
        self.sockets.clear()
        return waits


class CoreHttpSettings(Protocol):
    core_poll_timeout: float
    core_disconnect_timeout: float


class _SseChannel:
    """One ``text/event-stream`` response."""

    def __init__(self, request: Request, conn: CoreConnection, registry: CoreRegistry) -> None:
        self._request = request
        self._conn = conn
        self._registry = registry
        self.done = False
        request.notifyFinish().addErrback(self._lost)

    def open(self) -> None:
        r = self._request
        r.setResponseCode(200)
        r.setHeader(b"content-type", b"text/event-stream")
        r.setHeader(b"cache-control", b"no-cache")
        r.setHeader(b"content-encoding", b"identity")
        r.write(b":\r\n")

    def _lost(self, _: Failure) -> None:
        if not self.done:
            # The client closed its event stream: a normal end on ASP.NET Core.
            self.done = True
            self._registry.lost(self._conn, self, clean=True)

    def write(self, data: bytes, binary: bool) -> None:
        if not self.done:
            self._request.write(sse_event(data))

    def end(self) -> None:
        if not self.done:
            self.done = True
            self._request.finish()

    def abort(self) -> None:
        self.done = True
        transport: Any = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()
        self._registry.lost(self._conn, self)


class _LongPollChannel:
    """A connection's long polling: the data not yet polled and the held poll."""

    def __init__(
        self,
        conn: CoreConnection,
        registry: CoreRegistry,
        timers: Timers,
        settings: CoreHttpSettings,
    ) -> None:
        self._conn = conn
        self._registry = registry
        self._timers = timers
        self._settings = settings
        self._buffer = bytearray()
        self._poll: Request | None = None
        self._timer: IDelayedCall | None = None
        self._forget_call: IDelayedCall | None = None
        self.ended = False
        self.drop_next = False

    # -- polls ----------------------------------------------------------------------

    def poll(self, request: Request) -> bytes | int:
        """A GET after the first one."""
        if self.drop_next:
            self.drop_next = False
            transport: Any = getattr(request, "transport", None)
            if transport is not None:
                transport.abortConnection()
            self._after_poll()
            return NOT_DONE_YET
        self._conn.keep()
        old = self._poll
        if old is not None:
            self._answer(old, 204, b"")  # superseded by this poll
        if self._buffer and not self._registry.stalled:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._after_poll()
            return _answer_now(request, 200, data)
        if self.ended:
            self._registry.forget(self._conn)
            return _answer_now(request, 204, b"")
        self._poll = request
        request.notifyFinish().addErrback(self._poll_lost, request)
        self._timer = self._timers.call_later(self._settings.core_poll_timeout, self._timeout)
        return NOT_DONE_YET

    def _poll_lost(self, _: Failure, request: Request) -> None:
        if self._poll is request:
            self._poll = None
            self._timers.cancel(self._timer)
            self._timer = None
            self._after_poll()

    def _timeout(self) -> None:
        self._timer = None
        poll = self._poll
        if poll is None:
            return
        if self._registry.stalled:
            self._timer = self._timers.call_later(self._settings.core_poll_timeout, self._timeout)
            return
        self._answer(poll, 200, b"")

    def _answer(self, request: Request, status: int, body: bytes) -> None:
        """Answer a held poll."""
        if self._poll is request:
            self._poll = None
            self._timers.cancel(self._timer)
            self._timer = None
        _answer_now(request, status, body, held=True)
        if status == 204 and self.ended:
            self._registry.forget(self._conn)
        else:
            self._after_poll()

    def _after_poll(self) -> None:
        """Between polls: the connection expires unless the next comes in time."""
        if self.ended:
            if self._forget_call is None:
                self._forget_call = self._timers.call_later(
                    self._settings.core_disconnect_timeout, self._registry.forget, self._conn
                )
            return
        self._conn.expire_later(self._settings.core_disconnect_timeout)

    def _deliver(self) -> None:
        poll = self._poll
        if poll is None or self._registry.stalled:
            return
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._answer(poll, 200, data)
        elif self.ended:
            self._answer(poll, 204, b"")

    # -- CoreChannel ------------------------------------------------------------------

    def write(self, data: bytes, binary: bool) -> None:
        self._buffer += data
        self._deliver()

    def end(self) -> None:
        self.ended = True
        if self._poll is not None:
            self._deliver()
        else:
            self._after_poll()

    def abort(self) -> None:
        poll, self._poll = self._poll, None
        self._timers.cancel(self._timer)
        self._timer = None
        if poll is None:
            self.drop_next = True
            return
        transport: Any = getattr(poll, "transport", None)
        if transport is not None:
            transport.abortConnection()
        self._after_poll()


def _answer_now(request: Request, status: int, body: bytes, held: bool = False) -> bytes | int:
    """
    A poll answer (``application/octet-stream``; 204 without a body): returned for
    ``render`` to write, or written now for a ``held`` poll.
    """
    if held and (request.finished or getattr(request, "_disconnected", False)):
        return NOT_DONE_YET
    request.setResponseCode(status)
    if status == 204:
        request.defaultContentType = None
    else:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    if held:
        if body:
            request.write(body)
        request.finish()
        return NOT_DONE_YET
    return body


class CoreHttpTransports:
    """Serves Core SSE streams and long polls."""

    def __init__(self, registry: CoreRegistry, timers: Timers, settings: CoreHttpSettings) -> None:
        self._registry = registry
        self._timers = timers
        self._settings = settings

    def sse(self, request: Request, conn: CoreConnection) -> int:
        channel = _SseChannel(request, conn, self._registry)
        channel.open()
        conn.attach(channel, "ServerSentEvents")
        return NOT_DONE_YET

    def poll(self, request: Request, conn: CoreConnection) -> bytes | int:
        channel = conn.channel
        if conn.transport is None:
            lp = _LongPollChannel(conn, self._registry, self._timers, self._settings)
            conn.attach(lp, "LongPolling")
            conn.expire_later(self._settings.core_disconnect_timeout)
            # The first poll answers at once, empty: the connection is initialized.
            return _answer_now(request, 200, b"")
        assert isinstance(channel, _LongPollChannel)
        return channel.poll(request)

    def delete(self, conn: CoreConnection) -> None:
        """``DELETE``: end the connection; the held poll answers 204."""
        self._registry.end(conn, clean=True, reason="DELETE", send_close=False)

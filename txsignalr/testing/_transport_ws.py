"""
The WebSockets server transport: autobahn adapters that forward opens, messages and
closes to the connection registry and write its frames as text messages.
"""

from __future__ import annotations

from typing import Any, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from txsignalr._websocket import QuietAutobahnLog
from txsignalr.testing._registry import ConnectionRegistry, ReceiveRequest
from txsignalr.testing._timers import Timers
from txsignalr.testing._wire import encode_text

__all__ = ["WebSocketTransport"]

_log = Logger(namespace="txsignalr.testing")

_MAX_INCOMING_MESSAGE = 64 * 1024  # MaxIncomingWebSocketMessageSize
_ABORT_CLOSE_GRACE = 1.0
NAME = "webSockets"


class _SignalRWebSocket(WebSocketServerProtocol):
    """One WebSocket: a registry channel; holds no SignalR logic itself."""

    # autobahn logs the opening handshake (URL with the token, cookies) at debug.
    log = QuietAutobahnLog()
    transport_name: str = NAME
    long_poll_delay_ms: int | None = None
    context: ReceiveRequest
    owner: WebSocketTransport | None

    def __init__(self) -> None:
        super().__init__()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def onOpen(self) -> None:
        if self.owner is not None:
            self.owner.opened(self)

    def onMessageFrameBegin(self, length: int) -> None:
        # MaxIncomingWebSocketMessageSize: checked here rather than with autobahn's
        # maxMessagePayloadSize, which would limit what the server sends as well.
        super().onMessageFrameBegin(length)
        if not self.failedByMe and self.message_data_total_length > _MAX_INCOMING_MESSAGE:
            # failByDrop: the TCP connection is dropped without a close frame.
            self._fail_connection(
                WebSocketServerProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG,
                "incoming message over 64 KiB",
            )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.owner is None:
            return
        if isBinary:
            _log.info("ignoring a binary WebSocket message (not supported by SignalR)")
            return
        self.owner.message(self, payload.decode("utf-8", "replace"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.owner is not None:
            self.owner.closed_socket(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if not self.closed.called:
            self.closed.callback(None)

    def send_text(self, text: str) -> None:
        """Send one text message (any size) if the socket is still open."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(encode_text(text), isBinary=False)  # type: ignore[no-untyped-call]

    # -- Channel -------------------------------------------------------------------------

    def send_frame(self, text: str) -> bool:
        self.send_text(text)
        return True

    def send_keepalive(self) -> None:
        self.send_text("{}")

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        if self.owner is not None:
            self.owner.forget(self)
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def close(self, last_frame: str) -> None:
        """Close with a 1000 close frame (as after ``/abort``); drop TCP if no reply."""
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.forget(self)
        if self.state == WebSocketServerProtocol.STATE_OPEN and owner is not None:
            self.sendClose(1000)
            guard = owner.timers.call_later(_ABORT_CLOSE_GRACE, self.abort)
            self.closed.addCallback(lambda _: owner.timers.cancel(guard))
        else:
            self.abort()


class _SocketFactory(WebSocketServerFactory):
    protocol = _SignalRWebSocket
    log = QuietAutobahnLog()

    def __init__(self, owner: WebSocketTransport, reactor: IReactorTime) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            reactor=reactor,
            server=None,  # the real server's 101 has no Server header
            headers={"X-Content-Type-Options": "nosniff"},
        )
        # autobahn's own timers run on txaio's global loop: keep them all off.
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
        self.pending: ReceiveRequest | None = None

    def buildProtocol(self, addr: Any) -> _SignalRWebSocket:
        proto = cast(_SignalRWebSocket, super().buildProtocol(addr))
        assert self.pending is not None
        proto.context = self.pending
        proto.owner = self._owner
        return proto


class WebSocketTransport:
    """
    Serves ``/connect`` and ``/reconnect`` upgrades and feeds the registry.

    :param registry: the connection registry.
    :param timers: the server's timers.
    :param reactor: the server's reactor (for autobahn's factory).
    """

    def __init__(self, registry: ConnectionRegistry, timers: Timers, reactor: IReactorTime) -> None:
        self.registry = registry
        self.timers = timers
        self._sockets: set[_SignalRWebSocket] = set()
        self._factory = _SocketFactory(self, reactor)
        self._resource = WebSocketResource(self._factory)

    def render(self, request: Request, receive: ReceiveRequest) -> bytes | int:
        """Upgrade ``request`` (already validated) to a WebSocket for ``receive``."""
        self._factory.pending = receive
        try:
            result: bytes | int = self._resource.render(request)
        finally:
            self._factory.pending = None
        return result

    def opened(self, sock: _SignalRWebSocket) -> None:
        self._sockets.add(sock)
        self.registry.attach(sock, sock.context)

    def forget(self, sock: _SignalRWebSocket) -> None:
        self._sockets.discard(sock)

    def closed_socket(self, sock: _SignalRWebSocket) -> None:
        self._sockets.discard(sock)
        sock.owner = None
        self.registry.detach(sock, sock.context.connection_id, lost=True)

    def message(self, sock: _SignalRWebSocket, text: str) -> None:
        connection_id = sock.context.connection_id
        d = self.registry.receive(connection_id, text, NAME)
        if d is None:
            return
        d.addCallback(self._after_stall)
        d.addCallback(self._send_result, connection_id, sock)
        d.addErrback(_log_result_failure, connection_id)

    def _after_stall(self, frame: str) -> defer.Deferred[str]:
        return self.registry.when_unstalled().addCallback(lambda _: frame)

    def _send_result(self, frame: str, connection_id: str, sock: _SignalRWebSocket) -> None:
        """Flush what the method published (progress, caller calls), then the result."""
        self.registry.flush_connection(connection_id, sock)
        sock.send_text(frame)

    def shutdown(self) -> list[defer.Deferred[None]]:
        """Drop every socket without callbacks.  :returns: Deferreds of their closing."""
        waits = []
        for sock in list(self._sockets):
            sock.owner = None
            waits.append(sock.closed)
            transport: Any = sock.transport
            if transport is not None:
                transport.abortConnection()
        self._sockets.clear()
        return waits


def _log_result_failure(failure: Failure, connection_id: str) -> None:
    _log.failure(
        "could not send a hub result to connection {connection_id}",
        failure=failure,
        connection_id=connection_id,
    )

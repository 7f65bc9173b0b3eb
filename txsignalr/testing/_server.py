"""
The in-process classic ASP.NET SignalR 2.x server: twisted.web and autobahn adapters
around the sans-I/O pieces (:mod:`._wire`, :mod:`._bus`, :mod:`._tokens`, :mod:`._hubs`).

Only the WebSockets transport is served (``TryWebSockets`` is ``true``), with client
protocol 1.2 to 2.0.  ``/start`` and ``/abort`` accept any of the four classic transport
names, as on Microsoft's server; receive requests for the other transports get a 400.
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast
from urllib.parse import parse_qsl

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from txsignalr._protocol import redact_url
from txsignalr._websocket import QuietAutobahnLog
from txsignalr.testing._bus import MessageBus
from txsignalr.testing._hubs import Hub, HubCall, invoke_hub_method
from txsignalr.testing._tokens import Protector
from txsignalr.testing._wire import (
    client_invocation,
    encode_text,
    negotiate_body,
    parse_connection_data,
    parse_invocation,
    persistent_response,
    resolve_protocol,
)

__all__ = ["SignalRServer"]

_log = Logger(namespace="txsignalr.testing")

_JSON = b"application/json; charset=UTF-8"
_TEXT = b"text/plain"
_NOSNIFF = b"x-content-type-options"
_MAX_MESSAGES_PER_FRAME = 10  # ForeverTransport.MaxMessages
_MAX_INCOMING_MESSAGE = 64 * 1024  # MaxIncomingWebSocketMessageSize
_DISCONNECT_THRESHOLD = 5.0  # WebSocketTransport / TransportDisconnectBase
_ABORT_CLOSE_GRACE = 1.0
_COOKIE_ATTRIBUTES = frozenset(
    {"path", "domain", "expires", "max-age", "secure", "httponly", "samesite", "priority"}
)


def _connection_topic(connection_id: str) -> str:
    return "c-" + connection_id


def _hub_topic(hub: Hub) -> str:
    return "h-" + hub.name


def _group_topic(hub: Hub, group: str) -> str:
    return "hg-" + hub.name + "." + group


def _split_group_topic(topic: str) -> tuple[str, str]:
    """``(hub name, group)`` of a group topic made by :func:`_group_topic`."""
    hub_name, _, group = topic[3:].partition(".")
    return hub_name, group


def parse_cookies(values: Iterable[str]) -> dict[str, str]:
    """
    Read ``Cookie`` headers tolerantly: ``a=b; c=d`` pairs, ignoring items without
    ``=`` and cookie attributes such as ``Path=/`` that some clients forward.
    """
    cookies: dict[str, str] = {}
    for header in values:
        for item in header.split(";"):
            name, sep, value = item.strip().partition("=")
            name = name.strip()
            if not sep or not name or name.lower() in _COOKIE_ATTRIBUTES:
                continue
            cookies[name] = value.strip()
    return cookies


@attrs.frozen
class _RequestInfo:
    """What the server read from one HTTP request."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    cookies: dict[str, str]

    def arg(self, name: str) -> str | None:
        """A query value, the name matched case-insensitively like ASP.NET."""
        lowered = name.lower()
        for key, value in self.query.items():
            if key.lower() == lowered:
                return value
        return None

    @classmethod
    def from_request(cls, request: Request) -> _RequestInfo:
        uri = request.uri
        raw_query = uri.split(b"?", 1)[1] if b"?" in uri else b""
        query: dict[str, str] = {}
        for key, value in parse_qsl(
            raw_query.decode("latin-1"), keep_blank_values=True, encoding="utf-8"
        ):
            query.setdefault(key, value)
        headers: dict[str, str] = {}
        cookie_values: list[str] = []
        for name, values in request.requestHeaders.getAllRawHeaders():
            text_values = [v.decode("latin-1") for v in values]
            headers[name.decode("latin-1").lower()] = ", ".join(text_values)
            if name.lower() == b"cookie":
                cookie_values.extend(text_values)
        return cls(
            path=request.path.decode("utf-8", "replace"),
            query=query,
            headers=headers,
            cookies=parse_cookies(cookie_values),
        )


@attrs.frozen
class _SocketContext:
    """Everything a WebSocket connect/reconnect request carried, validated."""

    connection_id: str
    reconnect: bool
    hubs: tuple[Hub, ...]
    protocol: tuple[int, ...]
    message_id: str | None
    groups_token: str | None
    info: _RequestInfo


class _Connection:
    """Server-side state of one SignalR connection (it outlives its sockets)."""

    def __init__(self, connection_id: str, hubs: tuple[Hub, ...]) -> None:
        self.id = connection_id
        self.hubs = hubs
        self.groups: set[str] = set()
        #: group topic -> its position when the server added the connection to it: where
        #: replay starts for a client whose cursor predates the join.
        self.joined_at: dict[str, int] = {}
        self.positions: dict[str, int] = {}
        self.socket: _SignalRWebSocket | None = None
        self.groups_dirty = False
        self.flush_call: IDelayedCall | None = None
        self.disconnect_call: IDelayedCall | None = None

    def topics(self) -> list[str]:
        return (
            [_connection_topic(self.id)] + [_hub_topic(h) for h in self.hubs] + sorted(self.groups)
        )


class _SignalRWebSocket(WebSocketServerProtocol):
    """Forwards autobahn's hooks to the server; holds no SignalR logic itself."""

    # autobahn logs the opening handshake (URL with the token, cookies) at debug.
    log = QuietAutobahnLog()
    context: _SocketContext
    server: SignalRServer | None

    def __init__(self) -> None:
        super().__init__()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def onOpen(self) -> None:
        if self.server is not None:
            self.server._socket_opened(self)

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
        if self.server is None:
            return
        if isBinary:
            _log.info("ignoring a binary WebSocket message (not supported by SignalR)")
            return
        self.server._socket_message(self, payload.decode("utf-8", "replace"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.server is not None:
            self.server._socket_closed(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if not self.closed.called:
            self.closed.callback(None)

    def send_text(self, text: str) -> None:
        """Send one text message (any size) if the socket is still open."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(encode_text(text), isBinary=False)  # type: ignore[no-untyped-call]

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


class _SocketFactory(WebSocketServerFactory):
    protocol = _SignalRWebSocket
    log = QuietAutobahnLog()

    def __init__(self, server: SignalRServer, reactor: IReactorTime) -> None:
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
        self._server = server
        self.pending: _SocketContext | None = None

    def buildProtocol(self, addr: Any) -> _SignalRWebSocket:
        proto = cast(_SignalRWebSocket, super().buildProtocol(addr))
        assert self.pending is not None
        proto.context = self.pending
        proto.server = self._server
        return proto


_KNOWN_TRANSPORTS = frozenset({"websockets", "serversentevents", "longpolling", "foreverframe"})


def _access_log_line(timestamp: str, request: Request) -> str:
    """An access log line without query values: they carry connection tokens."""
    uri = redact_url(request.uri.decode("latin-1"))
    return f'"{request.method.decode("latin-1")} {uri}" {request.code} {request.sentLength or "-"}'


class _TrackingFactory(WrappingFactory):
    """Remembers every TCP connection (HTTP or upgraded) so ``stop()`` can drop them."""

    def __init__(self, site: Any) -> None:
        super().__init__(site)  # type: ignore[no-untyped-call]
        self._closed: dict[ProtocolWrapper, defer.Deferred[None]] = {}

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)  # type: ignore[no-untyped-call]
        self._closed[p] = defer.Deferred()

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)  # type: ignore[no-untyped-call]
        d = self._closed.pop(p, None)
        if d is not None:
            d.callback(None)

    def abort_all(self) -> defer.Deferred[Any]:
        waits = list(self._closed.values())
        for p in list(self._closed):
            transport: Any = p.transport
            if transport is not None:
                transport.abortConnection()
        return defer.gatherResults(waits, consumeErrors=True)


class _SignalRResource(Resource):
    """The twisted.web resource; dispatches on the path suffix like the real server."""

    isLeaf = True

    def __init__(self, server: SignalRServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._server = server

    def render(self, request: Request) -> bytes | int:
        return self._server._render(request)


class _Root(Resource):
    """Root of the server's own Site: the SignalR path and below, else 404."""

    isLeaf = True

    def __init__(self, server: SignalRServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._server = server

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("utf-8", "replace").lower()
        base = self._server.path.lower()
        if path == base or path.startswith(base + "/"):
            return self._server._render(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", _TEXT)
        return b"Not Found"


class SignalRServer:
    """
    An in-process classic ASP.NET SignalR 2.x hub server (WebSockets transport).

    :param reactor: provides ``IReactorTime`` (all timers) and ``IReactorTCP``
        (for :meth:`listen`).
    :param hubs: the hubs to serve.
    :param path: where the connection URL is mounted by :meth:`listen`.
    :param keepalive: seconds between ``{}`` keep-alives, ``None`` to disable
        (negotiate ``KeepAliveTimeout`` is twice this, or ``null``).
    :param disconnect_timeout: negotiate ``DisconnectTimeout``; a connection whose socket
        went away is forgotten ``disconnect_timeout + 5`` seconds later.
    :param transport_connect_timeout: negotiate ``TransportConnectTimeout``.
    :param detailed_errors: send exception messages instead of the generic text.
    :param buffer_size: messages kept per topic for replay on reconnect.
    :param negotiate_cookies: cookies set (``Path=/``) on every negotiate response.
    :param connection_timeout: negotiate ``ConnectionTimeout``.
    :param cors: echo ``Origin`` in credentialed CORS headers (off on a real server
        unless the application enables CORS).
    :param event_log_size: how many events :attr:`log` keeps (the oldest are dropped),
        so that a long-running server does not grow without bound.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        hubs: Iterable[Hub] = (),
        path: str = "/signalr",
        keepalive: float | None = 10.0,
        disconnect_timeout: float = 30.0,
        transport_connect_timeout: float = 5.0,
        detailed_errors: bool = False,
        buffer_size: int = 1000,
        negotiate_cookies: dict[str, str] | None = None,
        connection_timeout: float = 110.0,
        cors: bool = False,
        event_log_size: int = 10_000,
    ) -> None:
        self._reactor = reactor
        self.path = "/" + path.strip("/")
        self.keepalive = keepalive
        self.disconnect_timeout = disconnect_timeout
        self.transport_connect_timeout = transport_connect_timeout
        self.connection_timeout = connection_timeout
        self.detailed_errors = detailed_errors
        self.buffer_size = buffer_size
        self.negotiate_cookies = dict(negotiate_cookies or {})
        self.cors = cors
        self._disconnect_threshold = _DISCONNECT_THRESHOLD
        #: set to ``False`` to stop sending ``{}`` keep-alives (negotiate still
        #: advertises ``KeepAliveTimeout``).
        self.keepalives_enabled = True
        #: ``(kind, info)`` events, oldest first; only the last ``event_log_size``.
        self.log: deque[tuple[str, dict[str, Any]]] = deque(maxlen=event_log_size)
        self._waiters: dict[str, list[defer.Deferred[dict[str, Any]]]] = {}
        self._hubs: dict[str, Hub] = {}
        for hub in hubs:
            key = hub.name.lower()
            if key in self._hubs:
                raise ValueError(f"duplicate hub name {hub.name!r}")
            self._hubs[key] = hub
            hub.attach(self)
        self._refusal: tuple[int, bytes, bytes | None] | None = None
        self._delayed: set[IDelayedCall] = set()
        self._sleeps: set[defer.Deferred[None]] = set()
        self._sockets: set[_SignalRWebSocket] = set()
        self._keepalive_loop: LoopingCall | None = None
        self._started = False
        self._port: IListeningPort | None = None
        self._interface = "127.0.0.1"
        self._tls: Any | None = None
        self._tracker: _TrackingFactory | None = None
        self._resource = _SignalRResource(self)
        self._socket_factory = _SocketFactory(self, reactor)
        self._ws_resource = WebSocketResource(self._socket_factory)
        self._new_instance()

    def _new_instance(self) -> None:
        """Fresh key, cursor prefix, bus and connections: a restarted server."""
        self._protector = Protector()
        self._bus = MessageBus(os.urandom(4).hex().upper(), self.buffer_size)
        self._connections: dict[str, _Connection] = {}

    # -- public properties -----------------------------------------------------------

    @property
    def resource(self) -> Resource:
        """The twisted.web resource to mount in your own Site (then call :meth:`start`)."""
        return self._resource

    @property
    def reactor(self) -> IReactorTime:
        """The reactor the server's timers run on."""
        return self._reactor

    @property
    def hubs(self) -> list[Hub]:
        """The registered hubs."""
        return list(self._hubs.values())

    @property
    def connections(self) -> list[str]:
        """
        Ids of the connections the server considers alive: connected, or without a
        socket but still inside the disconnect window.
        """
        return list(self._connections)

    @property
    def port(self) -> int | None:
        """The listening port, or ``None``."""
        if self._port is None:
            return None
        return int(cast(Any, self._port.getHost()).port)

    @property
    def url(self) -> str:
        """The connection URL, e.g. ``http://127.0.0.1:PORT/signalr``."""
        if self._port is None:
            raise RuntimeError("the server is not listening")
        host = self._interface if self._interface not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{self.path}"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the keep-alive timer and the hubs' periodic work (done by :meth:`listen`)."""
        if self._started:
            return
        self._started = True
        if self.keepalive is not None:
            loop = LoopingCall(self._keepalive_tick)
            loop.clock = self._reactor
            loop.start(self.keepalive, now=False)
            self._keepalive_loop = loop
        for hub in self._hubs.values():
            hub.on_start()

    async def listen(
        self, port: int = 0, interface: str = "127.0.0.1", tls: Any | None = None
    ) -> int:
        """
        Listen for HTTP (or HTTPS) on ``interface:port`` and start the server.

        :param tls: a TLS context factory (e.g. ``ssl.CertificateOptions`` or
            ``PrivateCertificate.options()``) to serve https/wss instead of http/ws.
        :returns: the bound port.
        """
        if self._port is not None:
            raise RuntimeError("already listening")
        site = Site(_Root(self), reactor=self._reactor, logFormatter=_access_log_line)
        self._tls = tls
        if tls is not None:
            # TLS inside the tracker: the HTTP channel (and so autobahn) then sees the
            # TLS protocol itself as its transport, as with reactor.listenSSL.
            self._tracker = _TrackingFactory(TLSMemoryBIOFactory(tls, False, site))
        else:
            self._tracker = _TrackingFactory(site)
        tcp = IReactorTCP(self._reactor)
        self._port = tcp.listenTCP(port, cast(Any, self._tracker), interface=interface)
        self._interface = interface
        self.start()
        return int(cast(Any, self._port.getHost()).port)

    async def stop(self) -> None:
        """
        Drop every connection abruptly, stop listening and cancel every delayed call the
        server (or its hubs, through :meth:`call_later`) made.  Listening again afterwards
        behaves like a restarted server: old tokens are refused, cursors start afresh.
        """
        waits: list[defer.Deferred[Any]] = []
        for sock in list(self._sockets):
            sock.server = None
            waits.append(sock.closed)
            sock.abort()
        self._sockets.clear()
        if self._tracker is not None:
            waits.append(self._tracker.abort_all())
        if self._port is not None:
            port, self._port = self._port, None
            result = port.stopListening()
            if isinstance(result, defer.Deferred):
                waits.append(result)
        if self._keepalive_loop is not None and self._keepalive_loop.running:
            self._keepalive_loop.stop()
        self._keepalive_loop = None
        if self._started:
            self._started = False
            for hub in self._hubs.values():
                hub.on_stop()
        self._cancel_delayed()
        await defer.gatherResults(waits, consumeErrors=True)
        self._cancel_delayed()
        self._tracker = None
        self._new_instance()

    def _cancel_delayed(self) -> None:
        for sleep in list(self._sleeps):
            sleep.cancel()
        self._sleeps.clear()
        for call in list(self._delayed):
            if call.active():
                call.cancel()
        self._delayed.clear()
        for conn in self._connections.values():
            conn.flush_call = None
            conn.disconnect_call = None

    # -- time ------------------------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        """
        ``reactor.callLater`` on the server's reactor, cancelled by :meth:`stop`.
        Hubs should schedule their work through this.
        """
        call: IDelayedCall | None = None

        def run() -> None:
            if call is not None:
                self._delayed.discard(call)
            fn(*args)

        call = self._reactor.callLater(delay, run)
        self._delayed.add(call)
        return call

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """
        A Deferred that fires after ``seconds`` (for coroutine hub methods); cancelled
        (``CancelledError``) by :meth:`stop`.
        """
        holder: list[IDelayedCall] = []

        def cancel(d: defer.Deferred[None]) -> None:
            self._sleeps.discard(d)
            if holder and holder[0].active():
                holder[0].cancel()
                self._delayed.discard(holder[0])

        d: defer.Deferred[None] = defer.Deferred(cancel)

        def fire() -> None:
            self._sleeps.discard(d)
            d.callback(None)

        holder.append(self.call_later(seconds, fire))
        self._sleeps.add(d)
        return d

    # -- observation -----------------------------------------------------------------

    def _record(self, kind: str, info: dict[str, Any]) -> None:
        self.log.append((kind, info))
        for d in self._waiters.pop(kind, []):
            d.callback(info)

    def when_event(self, kind: str) -> defer.Deferred[dict[str, Any]]:
        """:returns: a Deferred fired with the info of the next ``kind`` event logged."""
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.setdefault(kind, []).append(d)
        return d

    def events(self, kind: str) -> list[dict[str, Any]]:
        """:returns: the info of every ``kind`` event logged so far."""
        return [info for k, info in self.log if k == kind]

    # -- fault injection -------------------------------------------------------------

    def drop_all_transports(self) -> None:
        """Abort every WebSocket's TCP connection: no close frame, no ``/abort`` semantics."""
        for sock in list(self._sockets):
            sock.abort()

    def refuse_negotiate(
        self, status: int | None = 401, body: bytes = b"", content_type: bytes | str | None = None
    ) -> None:
        """
        Answer every negotiate with ``status`` and ``body`` until called with ``None``.
        """
        if status is None:
            self._refusal = None
            return
        if isinstance(content_type, str):
            content_type = content_type.encode("latin-1")
        self._refusal = (status, body, content_type)

    # -- messaging -------------------------------------------------------------------

    def _hub(self, hub: Hub | str) -> Hub:
        name = hub.name if isinstance(hub, Hub) else hub
        found = self._hubs.get(name.lower())
        if found is None:
            raise KeyError(f"no hub named {name!r}")
        return found

    def _publish(self, topic: str, payload: str) -> None:
        self._bus.publish(topic, payload)
        for conn in self._connections.values():
            if topic in conn.positions:
                self._schedule_flush(conn)

    def publish_to_connection(self, connection_id: str, payload: str) -> None:
        """Publish a raw message to one connection's topic (dropped if it is unknown)."""
        if connection_id in self._connections:
            self._publish(_connection_topic(connection_id), payload)

    def send_to_all(self, hub: Hub | str, method: str, *args: Any) -> None:
        """Call a client method on every connection that listed ``hub``."""
        h = self._hub(hub)
        self._publish(_hub_topic(h), client_invocation(h.name, method, args))

    def send_to_connection(
        self, connection_id: str, hub: Hub | str, method: str, *args: Any
    ) -> None:
        """Call a client method on one connection."""
        h = self._hub(hub)
        self.publish_to_connection(connection_id, client_invocation(h.name, method, args))

    def send_to_group(self, hub: Hub | str, group: str, hub_method: str, *args: Any) -> None:
        """Call a client method on every member of a hub group."""
        h = self._hub(hub)
        self._publish(_group_topic(h, group), client_invocation(h.name, hub_method, args))

    def add_to_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        """Add a connection to a hub group (a new ``G`` token is sent to it)."""
        conn = self._connections.get(connection_id)
        if conn is None:
            _log.info(
                "add_to_group: unknown connection {connection_id}", connection_id=connection_id
            )
            return
        topic = _group_topic(self._hub(hub), group)
        if topic not in conn.groups:
            conn.groups.add(topic)
            conn.joined_at[topic] = conn.positions[topic] = self._bus.latest(topic)
            conn.groups_dirty = True
            self._schedule_flush(conn)

    def remove_from_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        """Remove a connection from a hub group (a new ``G`` token is sent to it)."""
        conn = self._connections.get(connection_id)
        if conn is None:
            return
        topic = _group_topic(self._hub(hub), group)
        if topic in conn.groups:
            conn.groups.discard(topic)
            conn.joined_at.pop(topic, None)
            conn.positions.pop(topic, None)
            conn.groups_dirty = True
            self._schedule_flush(conn)

    def groups_of(self, connection_id: str) -> list[tuple[str, str]]:
        """:returns: ``(hub name, group)`` pairs the connection belongs to."""
        conn = self._connections.get(connection_id)
        if conn is None:
            return []
        return [_split_group_topic(topic) for topic in sorted(conn.groups)]

    def _schedule_flush(self, conn: _Connection) -> None:
        if conn.flush_call is None and conn.socket is not None:
            conn.flush_call = self.call_later(0, self._flush, conn)

    def _flush(self, conn: _Connection) -> None:
        """Send the connection everything after its cursor, up to 10 messages a frame."""
        if conn.flush_call is not None:
            if conn.flush_call.active():
                conn.flush_call.cancel()
                self._delayed.discard(conn.flush_call)
            conn.flush_call = None
        sock = conn.socket
        if sock is None:
            return
        try:
            while self._send_next_frame(conn, sock):
                pass
        except Exception:
            # The positions were not advanced: the next flush sends these messages again.
            _log.failure(
                "could not send a frame to connection {connection_id}",
                connection_id=conn.id,
            )

    def _send_next_frame(self, conn: _Connection, sock: _SignalRWebSocket) -> bool:
        """
        Send the next frame (up to 10 messages and/or a new groups token), then advance
        the connection's positions.

        :returns: whether a frame was sent.
        """
        entries = self._bus.read(conn.positions, _MAX_MESSAGES_PER_FRAME)
        if not entries and not conn.groups_dirty:
            return False
        positions = dict(conn.positions)
        for entry in entries:
            positions[entry.topic] = entry.message_id
        token = None
        if conn.groups_dirty:
            token = self._protector.groups_token(conn.id, sorted(conn.groups))
        frame = persistent_response(
            self._bus.format_cursor(positions),
            [e.payload for e in entries],
            groups_token=token,
        )
        sock.send_text(frame)
        conn.positions = positions  # only once the frame is out
        if token is not None:
            conn.groups_dirty = False
        return True

    def _keepalive_tick(self) -> None:
        if not self.keepalives_enabled:
            return
        for conn in list(self._connections.values()):
            if conn.socket is not None:
                try:
                    conn.socket.send_text("{}")
                except Exception:
                    _log.failure(
                        "could not send a keep-alive to connection {connection_id}",
                        connection_id=conn.id,
                    )

    # -- HTTP ------------------------------------------------------------------------

    def _render(self, request: Request) -> bytes | int:
        request.setHeader(_NOSNIFF, b"nosniff")
        info = _RequestInfo.from_request(request)
        origin = info.headers.get("origin")
        if self.cors and origin:
            request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
            request.setHeader(b"access-control-allow-credentials", b"true")
        path = info.path.lower()
        if path.endswith("/negotiate"):
            return self._negotiate(request, info)
        if path.endswith("/ping"):
            self._record("ping", {})
            return _respond(request, 200, b'{ "Response": "pong" }', _JSON)
        transport = (info.arg("transport") or "").lower()
        if transport not in _KNOWN_TRANSPORTS:
            return _respond(request, 400, b"Protocol error: Unknown transport.", None)
        token = info.arg("connectionToken")
        if token is None:
            return _respond(request, 400, b"Protocol error: Missing connection token.", None)
        connection_id = self._protector.connection_id(token)
        if connection_id is None:
            return _respond(request, 400, b"The ConnectionId is in the incorrect format.", None)
        try:
            hubs = self._resolve_hubs(info.arg("connectionData"))
        except (KeyError, ValueError) as e:
            _log.info("rejecting request: {error}", error=str(e))
            return _empty_500(request)
        if path.endswith("/start"):
            return self._start(request, info, connection_id, hubs)
        if path.endswith("/abort"):
            return self._abort(request, connection_id)
        if transport != "websockets":
            # Microsoft's server has all four transports; /start and /abort above work
            # with any of them (signalr-client aborts with transport=serverSentEvents).
            return _respond(
                request,
                400,
                b"Protocol error: only the webSockets transport is served by txsignalr.testing.",
                None,
            )
        upgrade = info.headers.get("upgrade", "")
        if "websocket" not in upgrade.lower():
            return _respond(request, 400, b"Not a valid web socket request.", None)
        _version, protocol = resolve_protocol(info.arg("clientProtocol"))
        context = _SocketContext(
            connection_id=connection_id,
            reconnect=not path.endswith("/connect"),
            hubs=hubs,
            protocol=protocol,
            message_id=info.arg("messageId"),
            groups_token=info.arg("groupsToken"),
            info=info,
        )
        self._socket_factory.pending = context
        try:
            result: bytes | int = self._ws_resource.render(request)
        finally:
            self._socket_factory.pending = None
        return result

    def _resolve_hubs(self, connection_data: str | None) -> tuple[Hub, ...]:
        names = parse_connection_data(connection_data)
        hubs: list[Hub] = []
        for name in names:
            hub = self._hubs.get(name.lower())
            if hub is None:
                raise KeyError(f"'{name}' Hub could not be resolved.")
            if hub in hubs:
                raise ValueError("Duplicate Hub names found.")
            hubs.append(hub)
        return tuple(hubs)

    def _negotiate(self, request: Request, info: _RequestInfo) -> bytes:
        self._record(
            "negotiate", {"query": info.query, "headers": info.headers, "cookies": info.cookies}
        )
        if self._refusal is not None:
            status, body, content_type = self._refusal
            return _respond(request, status, body, content_type)
        try:
            self._resolve_hubs(info.arg("connectionData"))
        except (KeyError, ValueError) as e:
            _log.info("negotiate refused: {error}", error=str(e))
            return _empty_500(request)
        version, _ = resolve_protocol(info.arg("clientProtocol"))
        connection_id = str(uuid.uuid4())
        suffix_start = len(info.path) - len("/negotiate")
        for name, value in self.negotiate_cookies.items():
            request.addCookie(name.encode("utf-8"), value.encode("utf-8"), path=b"/")
        body = negotiate_body(
            url=info.path[:suffix_start],
            connection_token=self._protector.connection_token(connection_id),
            connection_id=connection_id,
            keepalive_timeout=None if self.keepalive is None else 2 * self.keepalive,
            disconnect_timeout=self.disconnect_timeout,
            connection_timeout=self.connection_timeout,
            try_websockets=True,
            protocol_version=version,
            transport_connect_timeout=self.transport_connect_timeout,
            long_poll_delay=0.0,
        )
        return _respond(request, 200, body, _JSON)

    def _start(
        self, request: Request, info: _RequestInfo, connection_id: str, hubs: tuple[Hub, ...]
    ) -> int:
        self._record(
            "start",
            {
                "connection_id": connection_id,
                "query": info.query,
                "headers": info.headers,
                "cookies": info.cookies,
            },
        )
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def answer(_: object) -> None:
            if not finished:
                request.setResponseCode(200)
                request.setHeader(b"content-type", _JSON)
                body = b'{ "Response": "started" }'
                request.setHeader(b"content-length", str(len(body)).encode("ascii"))
                request.write(body)
                request.finish()

        self._run_hooks(hubs, lambda h: h.on_connected(connection_id)).addCallback(answer)
        return NOT_DONE_YET

    def _abort(self, request: Request, connection_id: str) -> bytes:
        self._record("abort", {"connection_id": connection_id})
        conn = self._connections.pop(connection_id, None)
        if conn is not None:
            self._cancel_connection_timers(conn)
            sock, conn.socket = conn.socket, None
            if sock is not None:
                self._close_socket(sock)
            self._disconnected(conn, stop_called=True)
        return _respond(request, 200, b"", _TEXT)

    def _run_hooks(self, hubs: Iterable[Hub], hook: Callable[[Hub], Any]) -> defer.Deferred[Any]:
        waits: list[defer.Deferred[Any]] = []
        for hub in hubs:
            try:
                outcome = hook(hub)
            except Exception:
                _log.failure("hub {hub} lifecycle hook raised", hub=hub.name)
                continue
            if inspect.iscoroutine(outcome):
                outcome = defer.ensureDeferred(outcome)
            if isinstance(outcome, defer.Deferred):
                waits.append(outcome.addErrback(_log_hook_failure, hub.name))
        return defer.gatherResults(waits, consumeErrors=True)

    # -- connection lifetime -----------------------------------------------------------

    def _cancel_connection_timers(self, conn: _Connection) -> None:
        for call in (conn.flush_call, conn.disconnect_call):
            if call is not None:
                if call.active():
                    call.cancel()
                self._delayed.discard(call)
        conn.flush_call = None
        conn.disconnect_call = None

    def _close_socket(self, sock: _SignalRWebSocket) -> None:
        """Close with a 1000 close frame (as after ``/abort``); drop TCP if no reply."""
        sock.server = None
        self._sockets.discard(sock)
        if sock.state == WebSocketServerProtocol.STATE_OPEN:
            sock.sendClose(1000)
            guard = self.call_later(_ABORT_CLOSE_GRACE, sock.abort)

            def done(_: object) -> None:
                if guard.active():
                    guard.cancel()
                self._delayed.discard(guard)

            sock.closed.addCallback(done)
        else:
            sock.abort()

    def _disconnected(self, conn: _Connection, stop_called: bool) -> None:
        self._bus.forget(_connection_topic(conn.id))
        self._run_hooks(conn.hubs, lambda h: h.on_disconnected(conn.id, stop_called))
        self._record("disconnected", {"connection_id": conn.id, "stop_called": stop_called})

    def _expire(self, conn: _Connection) -> None:
        conn.disconnect_call = None
        if self._connections.get(conn.id) is conn and conn.socket is None:
            del self._connections[conn.id]
            self._cancel_connection_timers(conn)
            self._disconnected(conn, stop_called=False)

    def _socket_opened(self, sock: _SignalRWebSocket) -> None:
        ctx = sock.context
        self._sockets.add(sock)
        conn = self._connections.get(ctx.connection_id)
        if conn is not None:
            self._cancel_connection_timers(conn)
            old = conn.socket
            if old is not None and old is not sock:
                old.server = None
                self._sockets.discard(old)
                old.abort()
        info: dict[str, Any] = {
            "connection_id": ctx.connection_id,
            "query": ctx.info.query,
            "headers": ctx.info.headers,
            "cookies": ctx.info.cookies,
        }
        known_connection = conn is not None
        if not ctx.reconnect or conn is None:
            if ctx.reconnect:
                _log.info(
                    "reconnect of unknown connection {connection_id}: accepted",
                    connection_id=ctx.connection_id,
                )
            conn = _Connection(ctx.connection_id, ctx.hubs)
            self._connections[conn.id] = conn
        conn.hubs = ctx.hubs
        conn.socket = sock
        if not ctx.reconnect:
            conn.groups = set()
            conn.joined_at = {}
            conn.positions = self._bus.positions_for(conn.topics())
            conn.groups_dirty = False
            self._record("connect", info)
            if ctx.protocol < (1, 4):
                self._run_hooks(conn.hubs, lambda h: h.on_connected(conn.id))
            sock.send_text(
                persistent_response(self._bus.format_cursor(conn.positions), [], initialized=True)
            )
            self._schedule_flush(conn)
            return
        known = {h.name for h in self._hubs.values()}
        token_groups = {
            g
            for g in self._protector.groups(ctx.groups_token, conn.id)
            if g.startswith("hg-") and _split_group_topic(g)[0] in known
        }
        cursor = self._bus.parse_cursor(ctx.message_id)
        if known_connection:
            # The server's groups are authoritative: it may have changed them while the
            # client was away, or the G frame of a change may have been lost with the
            # socket.  A group missing from the client's cursor was joined after that
            # cursor: replay it from the join, not from "now".
            conn.groups_dirty = conn.groups != token_groups
            resume = dict(cursor or {})
            if cursor is not None:
                for topic in conn.groups:
                    if topic not in resume and topic in conn.joined_at:
                        resume[topic] = conn.joined_at[topic]
            conn.positions = self._bus.positions_for(conn.topics(), resume)
        else:
            # Forgotten (late reconnect): only the groups token knows the groups.
            conn.groups = token_groups
            conn.joined_at = {}
            conn.groups_dirty = False
            conn.positions = self._bus.positions_for(conn.topics(), cursor)
        info.update(
            {
                "message_id": ctx.message_id,
                "groups_token": ctx.groups_token,
                "cursor_valid": cursor is not None,
                "groups": sorted(conn.groups),
                "token_groups": sorted(token_groups),
            }
        )
        self._record("reconnect", info)
        self._flush(conn)
        self._run_hooks(conn.hubs, lambda h: h.on_reconnected(conn.id))

    def _socket_closed(self, sock: _SignalRWebSocket) -> None:
        self._sockets.discard(sock)
        sock.server = None
        conn = self._connections.get(sock.context.connection_id)
        if conn is None or conn.socket is not sock:
            return
        conn.socket = None
        self._cancel_connection_timers(conn)
        self._record("socket_closed", {"connection_id": conn.id})
        conn.disconnect_call = self.call_later(
            self.disconnect_timeout + self._disconnect_threshold, self._expire, conn
        )

    def _socket_message(self, sock: _SignalRWebSocket, text: str) -> None:
        connection_id = sock.context.connection_id
        self._record("received", {"connection_id": connection_id, "payload": text})
        conn = self._connections.get(connection_id)
        if conn is None:
            return
        try:
            invocation = parse_invocation(text)
        except ValueError as e:
            _log.info("ignoring a malformed hub invocation: {error}", error=str(e))
            return
        hub = self._hubs.get(invocation.hub.lower())
        if hub is None:
            _log.info("ignoring an invocation of unknown hub {hub}", hub=invocation.hub)
            return
        call = HubCall(self, hub, connection_id, invocation.invocation_id, invocation.state)
        d = invoke_hub_method(hub, call, invocation, self.detailed_errors)
        d.addCallback(self._send_result, conn, sock)
        d.addErrback(_log_result_failure, connection_id)

    def _send_result(self, frame: str, conn: _Connection, sock: _SignalRWebSocket) -> None:
        """Flush what the method published (progress, caller calls), then the result."""
        if conn.socket is sock:
            self._flush(conn)
        sock.send_text(frame)


def _respond(request: Request, status: int, body: bytes, content_type: bytes | None) -> bytes:
    """Answer with ``body``; no ``Content-Type`` at all when ``content_type`` is ``None``."""
    request.setResponseCode(status)
    if content_type is None:
        request.defaultContentType = None
    else:
        request.setHeader(b"content-type", content_type)
    return body


def _empty_500(request: Request) -> bytes:
    """The real server's answer to an unknown hub or bad ``connectionData``: a bare 500."""
    request.responseHeaders.removeHeader(_NOSNIFF)
    return _respond(request, 500, b"", None)


def _log_result_failure(failure: Failure, connection_id: str) -> None:
    _log.failure(
        "could not send a hub result to connection {connection_id}",
        failure=failure,
        connection_id=connection_id,
    )


def _log_hook_failure(failure: Failure, hub_name: str) -> None:
    _log.failure("hub {hub} lifecycle hook failed", failure=failure, hub=hub_name)

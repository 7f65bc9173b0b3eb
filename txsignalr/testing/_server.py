"""
The in-process classic ASP.NET SignalR 2.x server: :class:`SignalRServer`, the public
façade over the layers that do the work: the server transports (:mod:`._transport_ws`,
:mod:`._transport_http`), the connection registry (:mod:`._registry`), the classic HTTP
endpoints (:mod:`._endpoints`), timers, the event log and the sans-I/O pieces
(:mod:`._wire`, :mod:`._bus`, :mod:`._tokens`, :mod:`._hubs`).

WebSockets, Server-Sent Events and long polling are served (a subset with
``transports=``), with client protocol 1.2 to 2.0.  ``/start``, ``/abort`` and ``/send``
also accept ``foreverFrame``, a registered transport of Microsoft's server; its receive
requests get a 400.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTCP, IReactorTime
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from txsignalr.testing._endpoints import SERVED_TRANSPORTS, ClassicEndpoints
from txsignalr.testing._events import EventLog
from txsignalr.testing._http import (
    DispatchResource,
    RootResource,
    TrackingFactory,
    access_log_line,
)
from txsignalr.testing._hubs import Hub
from txsignalr.testing._registry import ConnectionRegistry
from txsignalr.testing._timers import Timers
from txsignalr.testing._transport_http import HttpTransports
from txsignalr.testing._transport_ws import WebSocketTransport
from txsignalr.testing._wire import client_invocation, progress_message

__all__ = ["SignalRServer"]

_DISCONNECT_THRESHOLD = 5.0  # WebSocketTransport / TransportDisconnectBase


class SignalRServer:
    """
    An in-process classic ASP.NET SignalR 2.x hub server (WebSockets, Server-Sent Events
    and long polling).

    :param reactor: provides ``IReactorTime`` (all timers) and ``IReactorTCP``
        (for :meth:`listen`).
    :param hubs: the hubs to serve.
    :param path: where the connection URL is mounted by :meth:`listen`.
    :param keepalive: seconds between ``{}`` keep-alives, ``None`` to disable
        (negotiate ``KeepAliveTimeout`` is twice this, or ``null``).
    :param disconnect_timeout: negotiate ``DisconnectTimeout``; a connection whose socket
        went away is forgotten ``disconnect_timeout + disconnect_threshold`` seconds later.
    :param transport_connect_timeout: negotiate ``TransportConnectTimeout``.
    :param detailed_errors: send exception messages instead of the generic text.
    :param buffer_size: messages kept per topic for replay on reconnect.
    :param negotiate_cookies: cookies set (``Path=/``) on every negotiate response.
    :param connection_timeout: negotiate ``ConnectionTimeout``.
    :param cors: echo ``Origin`` in credentialed CORS headers (off on a real server
        unless the application enables CORS).
    :param event_log_size: how many events :attr:`log` keeps (the oldest are dropped),
        so that a long-running server does not grow without bound.
    :param disconnect_threshold: seconds added to ``disconnect_timeout`` before a
        connection without a socket (or, long polling, without a poll) expires (5 on the
        real server).
    :param transports: the transports served, any of ``"webSockets"``,
        ``"serverSentEvents"`` and ``"longPolling"``; requests for the others get
        ``400 Protocol error: Unknown transport.`` and without ``webSockets`` negotiate
        says ``"TryWebSockets":false``.
    :param long_poll_delay: negotiate ``LongPollDelay`` in seconds; when not 0 long
        polling frames carry ``"L"`` (milliseconds).
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
        disconnect_threshold: float = _DISCONNECT_THRESHOLD,
        transports: Iterable[str] = SERVED_TRANSPORTS,
        long_poll_delay: float = 0.0,
    ) -> None:
        self._reactor = reactor
        self.transports = tuple(transports)
        unknown = set(self.transports) - set(SERVED_TRANSPORTS)
        if unknown:
            raise ValueError(f"unknown transports {sorted(unknown)}: use {SERVED_TRANSPORTS}")
        self.long_poll_delay = long_poll_delay
        self.path = "/" + path.strip("/")
        self.keepalive = keepalive
        self.disconnect_timeout = disconnect_timeout
        self.disconnect_threshold = disconnect_threshold
        self.transport_connect_timeout = transport_connect_timeout
        self.connection_timeout = connection_timeout
        self.detailed_errors = detailed_errors
        self.buffer_size = buffer_size
        self.negotiate_cookies = dict(negotiate_cookies or {})
        self.cors = cors
        #: set to ``False`` to stop sending ``{}`` keep-alives (negotiate still
        #: advertises ``KeepAliveTimeout``).
        self.keepalives_enabled = True
        self._events = EventLog(event_log_size)
        self._hubs: dict[str, Hub] = {}
        for hub in hubs:
            key = hub.name.lower()
            if key in self._hubs:
                raise ValueError(f"duplicate hub name {hub.name!r}")
            self._hubs[key] = hub
            hub.attach(self)
        self._timers = Timers(reactor)
        self._registry = ConnectionRegistry(self, self._hubs, self._timers, self._events, self)
        self._websockets = WebSocketTransport(self._registry, self._timers, reactor)
        self._endpoints = ClassicEndpoints(
            self,
            self._hubs,
            self._registry,
            self._events,
            self._websockets,
            HttpTransports(self._registry, self._timers, self),
        )
        self._started = False
        self._port: IListeningPort | None = None
        self._interface = "127.0.0.1"
        self._tls: Any | None = None
        self._tracker: TrackingFactory | None = None
        self._resource = DispatchResource(self._endpoints.render)

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
        return list(self._registry.connections)

    @property
    def log(self) -> deque[tuple[str, dict[str, Any]]]:
        """``(kind, info)`` events, oldest first; only the last ``event_log_size``."""
        return self._events.log

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
            self._registry.start_keepalive(self.keepalive)
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
        root = RootResource(lambda: self.path, self._endpoints.render)
        site = Site(root, reactor=self._reactor, logFormatter=access_log_line)
        self._tls = tls
        if tls is not None:
            # TLS inside the tracker: the HTTP channel (and so autobahn) then sees the
            # TLS protocol itself as its transport, as with reactor.listenSSL.
            self._tracker = TrackingFactory(TLSMemoryBIOFactory(tls, False, site))
        else:
            self._tracker = TrackingFactory(site)
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
        waits: list[defer.Deferred[Any]] = list(self._websockets.shutdown())
        self._registry.shutdown()
        if self._tracker is not None:
            waits.append(self._tracker.abort_all())
        if self._port is not None:
            port, self._port = self._port, None
            result = port.stopListening()
            if isinstance(result, defer.Deferred):
                waits.append(result)
        if self._started:
            self._started = False
            for hub in self._hubs.values():
                hub.on_stop()
        self._timers.cancel_all()
        await defer.gatherResults(waits, consumeErrors=True)
        self._timers.cancel_all()
        self._tracker = None
        self._registry.reset()

    # -- time ------------------------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        """
        ``reactor.callLater`` on the server's reactor, cancelled by :meth:`stop`.
        Hubs should schedule their work through this.
        """
        return self._timers.call_later(delay, fn, *args)

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """
        A Deferred that fires after ``seconds`` (for coroutine hub methods); cancelled
        (``CancelledError``) by :meth:`stop`.
        """
        return self._timers.sleep(seconds)

    # -- observation -----------------------------------------------------------------

    def when_event(self, kind: str) -> defer.Deferred[dict[str, Any]]:
        """:returns: a Deferred fired with the info of the next ``kind`` event logged."""
        return self._events.when_event(kind)

    def events(self, kind: str) -> list[dict[str, Any]]:
        """:returns: the info of every ``kind`` event logged so far."""
        return self._events.events(kind)

    # -- tokens ----------------------------------------------------------------------

    def connection_token(self, connection_id: str) -> str:
        """:returns: a connection token this instance accepts, as negotiate makes them."""
        return self._registry.protector.connection_token(connection_id)

    def groups_in_token(self, groups_token: str, connection_id: str) -> list[str]:
        """
        :returns: the group topics (``hg-<hub>.<group>``) a groups token carries for
            ``connection_id``, or ``[]`` when it is not this instance's token for it.
        """
        return self._registry.protector.groups(groups_token, connection_id)

    # -- fault injection -------------------------------------------------------------

    def drop_all_transports(self) -> None:
        """
        Abort the TCP connection of every receive channel (a WebSocket, an SSE response,
        a held long poll; for a long polling connection between two polls, its next
        poll): no close frame, no ``/abort`` semantics; the SignalR connections live on
        until their disconnect timeout.
        """
        self._registry.drop_all()

    def stall_transports(self, stalled: bool = True) -> None:
        """
        Keep every transport open but send nothing (no frames, keep-alives, hub results
        or ``/send`` answers, no long poll timeouts) until called with ``False``; what
        queued up meanwhile is delivered then.
        """
        self._registry.stall(stalled)

    def refuse_transport(
        self,
        transport: str,
        status: int | None = 400,
        body: bytes = b"",
        content_type: bytes | str | None = None,
    ) -> None:
        """
        Answer every ``/connect`` and ``/reconnect`` of ``transport`` (for WebSockets:
        the upgrade request) with ``status`` and ``body`` until called with ``None``;
        each refusal is logged as a ``refused`` event.
        """
        if transport not in SERVED_TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}: use {SERVED_TRANSPORTS}")
        if status is None:
            self._endpoints.transport_refusals.pop(transport, None)
            return
        if isinstance(content_type, str):
            content_type = content_type.encode("latin-1")
        self._endpoints.transport_refusals[transport] = (status, body, content_type)

    def refuse_negotiate(
        self, status: int | None = 401, body: bytes = b"", content_type: bytes | str | None = None
    ) -> None:
        """
        Answer every negotiate with ``status`` and ``body`` until called with ``None``.
        """
        if status is None:
            self._endpoints.negotiate_refusal = None
            return
        if isinstance(content_type, str):
            content_type = content_type.encode("latin-1")
        self._endpoints.negotiate_refusal = (status, body, content_type)

    # -- messaging -------------------------------------------------------------------

    def publish_to_connection(self, connection_id: str, payload: str) -> None:
        """Publish a raw message to one connection's topic (dropped if it is unknown)."""
        self._registry.publish_to_connection(connection_id, payload)

    def report_progress(self, connection_id: str, invocation_id: str, value: Any) -> None:
        """Send a progress message ``{"I":"P|id","P":{"I":id,"D":value}}`` to a caller."""
        self._registry.publish_to_connection(connection_id, progress_message(invocation_id, value))

    def send_to_all(self, hub: Hub | str, method: str, *args: Any) -> None:
        """Call a client method on every connection that listed ``hub``."""
        self._registry.send_to_all(hub, method, args)

    def send_to_connection(
        self, connection_id: str, hub: Hub | str, method: str, *args: Any
    ) -> None:
        """Call a client method on one connection."""
        h = self._registry.hub(hub)
        self._registry.publish_to_connection(connection_id, client_invocation(h.name, method, args))

    def send_to_group(self, hub: Hub | str, group: str, hub_method: str, *args: Any) -> None:
        """Call a client method on every member of a hub group."""
        self._registry.send_to_group(hub, group, hub_method, args)

    def add_to_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        """Add a connection to a hub group (a new ``G`` token is sent to it)."""
        self._registry.add_to_group(connection_id, hub, group)

    def remove_from_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        """Remove a connection from a hub group (a new ``G`` token is sent to it)."""
        self._registry.remove_from_group(connection_id, hub, group)

    def groups_of(self, connection_id: str) -> list[tuple[str, str]]:
        """:returns: ``(hub name, group)`` pairs the connection belongs to."""
        return self._registry.groups_of(connection_id)

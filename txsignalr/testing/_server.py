"""
The in-process SignalR server: :class:`SignalRServer`, the public façade over the layers
that do the work, one family beside the other: classic ASP.NET SignalR 2.x (server
transports :mod:`._transport_ws`, :mod:`._transport_http`, the connection registry
:mod:`._registry`, the HTTP endpoints :mod:`._endpoints`, the sans-I/O :mod:`._wire`,
:mod:`._bus`, :mod:`._tokens`) and ASP.NET Core SignalR (:mod:`._core_endpoints`,
:mod:`._core_transports`, :mod:`._core_registry`, :mod:`._core_connection`,
:mod:`._core_calls`, :mod:`._core_stateful`, :mod:`._core_hubs`, :mod:`._core_codecs`,
:mod:`._core_wire`); shared: hubs (:mod:`._hubs`), timers and the event log.

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

from txsignalr.testing._core_endpoints import (
    CLASSIC_REDIRECT_PATH,
    REDIRECT_PATH,
    CoreEndpoints,
    ServerRoot,
    TokenCheck,
)
from txsignalr.testing._core_registry import CoreRegistry
from txsignalr.testing._core_transports import CoreHttpTransports, CoreWebSockets
from txsignalr.testing._endpoints import SERVED_TRANSPORTS, ClassicEndpoints
from txsignalr.testing._events import EventLog
from txsignalr.testing._http import (
    DispatchResource,
    TrackingFactory,
    access_log_line,
)
from txsignalr.testing._hubs import ClientResultError, Hub
from txsignalr.testing._registry import ConnectionRegistry
from txsignalr.testing._timers import Timers
from txsignalr.testing._transport_http import HttpTransports
from txsignalr.testing._transport_ws import WebSocketTransport
from txsignalr.testing._wire import client_invocation, progress_message

__all__ = ["SignalRServer"]

_DISCONNECT_THRESHOLD = 5.0  # WebSocketTransport / TransportDisconnectBase


class SignalRServer:
    """
    An in-process SignalR hub server: classic ASP.NET SignalR 2.x at :attr:`url` and
    ASP.NET Core SignalR at :meth:`core_url` (WebSockets, Server-Sent Events and long
    polling for both).

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

    ASP.NET Core SignalR is served too, each hub at its own URL (:meth:`core_url`:
    ``{core_path}/{hub name, lower case}``, matched in any case), over the same
    ``transports``, with the hub protocol the client's handshake names: ``json``, or
    ``messagepack`` (when ``ormsgpack``, the ``txsignalr[messagepack]`` extra, is
    installed; written in .NET's layout, in binary WebSocket messages; refused over
    Server-Sent Events with .NET's handshake error, as that transport is Text only):

    :param core_path: the prefix of the Core hub URLs.
    :param core_keepalive: seconds without sending after which a Core connection gets
        a Ping (``KeepAliveInterval``, 15 s), ``None`` for none; never on long polling.
    :param client_timeout: seconds without receiving after which a Core connection is
        closed (``ClientTimeoutInterval``, 30 s), ``None`` for never.  As ASP.NET Core
        2.2 does it: the timer starts with the first message after the handshake, and
        the WebSocket is closed with 1000 (SSE: the response ends) without a Close
        message (see ``core_timeout_close``).  Not on long polling.
    :param core_timeout_close: on a client timeout, first send
        ``{"type":7,"error":"Connection closed with an error.","allowReconnect":true}``
        as newer servers do (their ``AbortAllowReconnect``).
    :param core_poll_timeout: how long a long poll is held before it answers 200 empty
        (``LongPollingOptions.PollTimeout``, 90 s).
    :param core_disconnect_timeout: a negotiated connection without a transport, or a
        long polling connection without a poll, ends after this (15 s).
    :param core_handshake_timeout: seconds a transport may wait for its handshake (15 s).
    :param core_max_message_size: the largest record (or handshake) accepted
        (``MaximumReceiveMessageSize``, 32 KiB); a larger one closes the connection with
        ``{"type":7,"error":"Connection closed with an error."}``.
    :param core_negotiate_version: ``1`` answers ``?negotiateVersion=1`` with a v1
        answer (``connectionToken``); ``0`` always answers v0 like ASP.NET Core 2.2.
    :param core_access_token: require a bearer token (``Authorization: Bearer`` or
        ``access_token=``) on every Core request: this string, or any token the callable
        accepts; without it: ``401``.

    Stateful reconnect (ASP.NET Core 8+, ``AllowStatefulReconnects``):

    :param core_stateful_reconnect: offer it: a negotiate with
        ``useStatefulReconnect=true`` is answered with ``"useStatefulReconnect":true``.
        It is on for a connection when its handshake then asks for version 2 over
        WebSockets (otherwise silently off, as on .NET).  Such a connection numbers the
        hub messages (types 1-5) it sends, keeps them until the client's Ack, and Acks
        what it received; when its WebSocket drops without a close handshake it waits
        ``core_disconnect_timeout`` for a new WebSocket to the same ``id=`` (no
        negotiate, no handshake), then sends ``Sequence`` and replays what was not
        acknowledged, drops the client's input until its Sequence and the messages it
        replays that were handled already.  Hub calls, streams and client results go on
        across the drop.  After the timeout it ends and its ``id=`` gets 404.  Events:
        ``suspended`` (socket lost, waiting) and ``resumed`` (``sequence_id``,
        ``replayed``); counters: :attr:`core_stateful_counts`.
    :param core_stateful_buffer_size: bytes of unacknowledged messages kept per
        connection (``StatefulReconnectBufferSize``, 100 000); past it further messages
        wait, in order, until Acks make room (server-to-client streams wait too).
    :param core_ack_interval: seconds between the Acks a stateful connection sends at
        most (1 s as .NET), the first one that long after a message arrives.
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
        core_path: str = "/hubs",
        core_keepalive: float | None = 15.0,
        client_timeout: float | None = 30.0,
        core_timeout_close: bool = False,
        core_poll_timeout: float = 90.0,
        core_disconnect_timeout: float = 15.0,
        core_handshake_timeout: float = 15.0,
        core_max_message_size: int = 32 * 1024,
        core_negotiate_version: int = 1,
        core_access_token: str | TokenCheck | None = None,
        core_stateful_reconnect: bool = False,
        core_stateful_buffer_size: int = 100_000,
        core_ack_interval: float = 1.0,
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
        #: the access tokens handed out by classic_redirect_url() negotiates
        self.classic_redirect_tokens: set[str] = set()
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
        self.core_path = "/" + core_path.strip("/")
        if self.core_path.lower() in (self.path.lower(), REDIRECT_PATH, "/client"):
            raise ValueError(f"core_path {core_path!r} collides with another server path")
        self.core_keepalive = core_keepalive
        self.client_timeout = client_timeout
        self.core_timeout_close = core_timeout_close
        self.core_poll_timeout = core_poll_timeout
        self.core_disconnect_timeout = core_disconnect_timeout
        self.core_handshake_timeout = core_handshake_timeout
        self.core_max_message_size = core_max_message_size
        self.core_negotiate_version = core_negotiate_version
        self.core_access_token = core_access_token
        if core_stateful_buffer_size < 1:
            raise ValueError("core_stateful_buffer_size must be at least 1 byte")
        self.core_stateful_reconnect = core_stateful_reconnect
        self.core_stateful_buffer_size = core_stateful_buffer_size
        self.core_ack_interval = core_ack_interval
        self._core = CoreRegistry(self, self._timers, self._events, self)
        self._core_websockets = CoreWebSockets(self._core, self._timers, reactor)
        self._core_endpoints = CoreEndpoints(
            self,
            self._hubs,
            self._core,
            self._events,
            self._core_websockets,
            CoreHttpTransports(self._core, self._timers, self),
            self._endpoints,
            self._base_url,
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
        Ids of the classic connections the server considers alive: connected, or
        without a socket but still inside the disconnect window.
        """
        return list(self._registry.connections)

    @property
    def core_connections(self) -> list[str]:
        """Ids of the open ASP.NET Core connections (handshake done, not closed)."""
        return [c.id for c in self._core.open_connections()]

    def core_hub_of(self, connection_id: str) -> str | None:
        """:returns: the hub name of a Core connection, or ``None`` if unknown."""
        conn = self._core.connection(connection_id)
        return None if conn is None else conn.hub.name

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
        return self._base_url() + self.path

    def _base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the server is not listening")
        host = self._interface if self._interface not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def _core_hub(self, hub: Hub | str) -> Hub:
        return self._registry.hub(hub)

    def core_url(self, hub: Hub | str) -> str:
        """
        The ASP.NET Core hub URL of a hub, e.g. ``http://127.0.0.1:PORT/hubs/chat``
        (``{core_path}/{hub name in lower case}``; the server matches it in any case).
        Negotiate is ``POST {core_url}/negotiate``.

        :raises KeyError: for a hub that is not registered.
        """
        return f"{self._base_url()}{self.core_path}/{self._core_hub(hub).name.lower()}"

    def redirect_url(self, hub: Hub | str) -> str:
        """
        A URL whose negotiate (``POST {redirect_url}/negotiate``) answers like an app in
        front of Azure SignalR Service: ``{"url": "http://127.0.0.1:PORT/client/?hub=<hub>",
        "accessToken": <a fresh token>}``.  Every request under ``/client/`` then needs
        that token (``Authorization: Bearer`` or ``access_token=``), else ``401``.
        """
        return f"{self._base_url()}{REDIRECT_PATH}/{self._core_hub(hub).name.lower()}"

    def classic_redirect_url(self) -> str:
        """
        A classic connection URL whose negotiate answers like Azure SignalR Service in
        front of an ASP.NET app: ``{"ProtocolVersion": "2.0", "RedirectUrl":
        "<server.url>?redirected=1", "AccessToken": <a fresh token>}`` (recorded as a
        ``redirect`` event with ``"family": "classic"``; the token is added to
        :attr:`classic_redirect_tokens`).
        """
        return f"{self._base_url()}{CLASSIC_REDIRECT_PATH}"

    def _classic_redirect(self, request: Any) -> bytes:
        import json
        import secrets

        token = secrets.token_urlsafe(18)
        self.classic_redirect_tokens.add(token)
        self._events.record("redirect", {"family": "classic", "uri": request.uri.decode()})
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        return json.dumps(
            {
                "ProtocolVersion": "2.0",
                "RedirectUrl": f"{self.url}?redirected=1",
                "AccessToken": token,
            }
        ).encode()

    @property
    def redirect_tokens(self) -> set[str]:
        """The access tokens issued by redirects so far (remove one to revoke it)."""
        return self._core_endpoints.redirect_tokens

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
        root = ServerRoot(
            lambda: self.path,
            self._endpoints.render,
            self._core_endpoints,
            self._classic_redirect,
        )
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
        waits += self._core_websockets.shutdown()
        self._registry.shutdown()
        self._core.shutdown()
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
        self._core.reset()

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
        poll): no close frame, no ``/abort`` semantics.  Classic connections live on
        until their disconnect timeout, as do Core long polling connections and Core
        WebSocket connections with stateful reconnect (which wait for the client's new
        socket); the other Core connections end.
        """
        self._registry.drop_all()
        self._core.drop_all()

    def stall_transports(self, stalled: bool = True) -> None:
        """
        Keep every transport open but send nothing (no frames, keep-alives, hub results
        or ``/send`` answers, no long poll timeouts) until called with ``False``; what
        queued up meanwhile is delivered then.
        """
        self._registry.stall(stalled)
        self._core.stall(stalled)

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
        """
        Call a client method on every connection of ``hub``: classic connections that
        listed it and Core connections to it.  Arguments only MessagePack can carry
        (``bytes``, datetimes, maps with integer keys) reach the MessagePack connections;
        the others raise ``TypeError`` after them, except the classic bus while no
        classic connection exists.
        """
        h = self._registry.hub(hub)
        self._core.send_to_all(h, method, args)
        self._to_classic(self._registry.send_to_all, h, method, args)

    def send_to_connection(
        self, connection_id: str, hub: Hub | str, method: str, *args: Any
    ) -> None:
        """Call a client method on one connection (classic or Core)."""
        h = self._registry.hub(hub)
        if self._core.connection(connection_id) is not None:
            self._core.send_to_connection(connection_id, method, args)
            return
        self._registry.publish_to_connection(connection_id, client_invocation(h.name, method, args))

    def send_to_group(self, hub: Hub | str, group: str, hub_method: str, *args: Any) -> None:
        """
        Call a client method on every member of a hub group (classic and Core; see
        :meth:`send_to_all` for arguments JSON cannot carry).
        """
        h = self._registry.hub(hub)
        self._core.send_to_group(h, group, hub_method, args)
        self._to_classic(self._registry.send_to_group, h, group, hub_method, args)

    def _to_classic(self, publish: Callable[..., None], *args: Any) -> None:
        try:
            publish(*args)
        except TypeError:
            # JSON cannot carry it: nobody to tell while no classic client is connected
            if self._registry.connections:
                raise

    def add_to_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        """
        Add a connection to a hub group (classic: a new ``G`` token is sent to it; a
        Core connection only joins groups of its own hub).
        """
        conn = self._core.connection(connection_id)
        if conn is not None:
            if conn.hub is self._registry.hub(hub):
                conn.groups.add(group)
            return
        self._registry.add_to_group(connection_id, hub, group)

    def remove_from_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        """Remove a connection from a hub group (classic: a new ``G`` token is sent)."""
        conn = self._core.connection(connection_id)
        if conn is not None:
            if conn.hub is self._registry.hub(hub):
                conn.groups.discard(group)
            return
        self._registry.remove_from_group(connection_id, hub, group)

    def groups_of(self, connection_id: str) -> list[tuple[str, str]]:
        """:returns: ``(hub name, group)`` pairs the connection belongs to."""
        conn = self._core.connection(connection_id)
        if conn is not None:
            return [(conn.hub.name, g) for g in sorted(conn.groups)]
        return self._registry.groups_of(connection_id)

    # -- ASP.NET Core only -----------------------------------------------------------

    def invoke_with_result(
        self, connection_id: str, method: str, *args: Any
    ) -> defer.Deferred[Any]:
        """
        Invoke a client method on a Core connection with an ``invocationId`` and wait
        for the client's Completion (a client result, ASP.NET Core 7+).

        :returns: a Deferred firing with the result (``None`` for a void Completion),
            failing with :class:`ClientResultError` on an error Completion, when the
            connection ends first, or when it is not an open Core connection.
        """
        conn = self._core.connection(connection_id)
        if conn is None:
            return defer.fail(ClientResultError(f"no open Core connection {connection_id!r}"))
        return conn.invoke_with_result(method, args)

    def expire_core_connection(self, connection_id: str) -> bool:
        """
        End a Core connection at once, as its disconnect timeout would: its transport is
        dropped (no Close message), ``on_disconnected`` runs and its token is forgotten,
        so later requests with its ``id=`` get 404.  Right after
        :meth:`drop_all_transports` this makes a stateful reconnect fail, and the client
        fall back to a new connection.

        :returns: whether the connection was open.
        """
        conn = self._core.connection(connection_id)
        if conn is None:
            return False
        self._core.expire(conn)
        return True

    @property
    def core_stateful_counts(self) -> dict[str, int]:
        """
        Stateful reconnect since the server started: ``resumes`` (new sockets that took
        over a connection), ``replayed`` (messages sent again after them),
        ``duplicates`` (replayed client messages dropped as handled already), ``held``
        (messages that waited for room in a full buffer), ``acks_sent`` and
        ``acks_received``.
        """
        counts = self._core.stateful_counts
        return {
            name: counts[name]
            for name in ("resumes", "replayed", "duplicates", "held", "acks_sent", "acks_received")
        }

    def close_core_connection(
        self, connection_id: str, error: str | None = None, allow_reconnect: bool = False
    ) -> bool:
        """
        Close a Core connection from the server: send ``{"type":7[,"error":…]
        [,"allowReconnect":true]}`` and end the transport.

        :returns: whether the connection was open.
        """
        conn = self._core.connection(connection_id)
        if conn is None:
            return False
        conn.close(error, allow_reconnect)
        return True

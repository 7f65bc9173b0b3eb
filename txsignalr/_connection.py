"""
The hub connection: the public API of both families, their shared state, events and
waiters, and the choice of family (``protocol="auto"`` detection).

States: ``connecting → connected ⇄ reconnecting → disconnected``.  Each family's
machinery is an engine the façade calls into: :mod:`._classic_connection` (classic
ASP.NET SignalR) and :mod:`._core_connection` with :mod:`._core_calls` (ASP.NET Core),
over the shared layers: the link and transports (:mod:`._link`, :mod:`._websocket`,
:mod:`._sse`, :mod:`._longpolling`), HTTP (:mod:`._http`), the keep-alive watch
(:mod:`._keepalive`), the reconnect loop (:mod:`._reconnect`) and handler routing
(:mod:`._routing`).  All time goes through the injected reactor, so the whole machine
runs under ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from http.cookiejar import CookieJar
from typing import Any, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS

from txsignalr._classic import ClassicSession
from txsignalr._classic_connection import ClassicEngine
from txsignalr._core_codecs import hub_codec
from txsignalr._core_connection import DEFAULT_CORE_RETRY_DELAYS, CoreEngine, core_policy
from txsignalr._core_negotiate import (
    ClassicAnswer,
    CoreNegotiateResponse,
    _with_query,
    parse_core_negotiate,
)
from txsignalr._events import Observers
from txsignalr._http import HTTPClientLike, HttpSession
from txsignalr._link import DEFAULT_TRANSPORT_FACTORIES
from txsignalr._protocol import (
    ALL_TRANSPORTS,
    NegotiateResponse,
    Transport,
    parse_response,
    redact_url,
    transport_order,
)
from txsignalr._reconnect import RetryPolicy
from txsignalr._routing import HubProxy, Router
from txsignalr._state import ConnectionState
from txsignalr._stateful import DEFAULT_BUFFER_SIZE
from txsignalr._streams import HubStream
from txsignalr._transport import DEFAULT_MAX_RECEIVE_SIZE, TransportFactory
from txsignalr.errors import (
    ConnectionClosed,
    InvalidStateError,
    NegotiationError,
    SignalRError,
)

__all__ = ["ConnectionState", "HubConnection", "HubProxy"]

_T = TypeVar("_T")


_PROTOCOLS = ("auto", "classic", "core")
_DEFAULT = object()


def _hub_name_from_url(url: str) -> str:
    """An ASP.NET Core connection's name in logs: the last part of its path."""
    path = url.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] or "hub"


def _classic_policy(delay: Any, protocol: str) -> RetryPolicy:
    """A Core-style ``reconnect_delay`` as the classic reconnect loop takes it."""
    if protocol == "core":
        return 2.0  # unused
    if delay is None:
        return lambda attempt: None
    if callable(delay) or isinstance(delay, (int, float)):
        return delay  # type: ignore[no-any-return]
    delays = tuple(float(d) for d in delay)
    return lambda attempt: delays[attempt] if attempt < len(delays) else None


class HubConnection:
    """
    A connection to an ASP.NET Core SignalR server (JSON or MessagePack hub protocol)
    or a classic ASP.NET SignalR 2.x server (clientProtocol 1.5), over WebSockets,
    Server-Sent Events or long polling.

    Both families have :meth:`on`, :meth:`invoke` and :meth:`send` (a classic
    connection needs ``hub=`` for them); Core has :meth:`stream` and client results
    too; classic has :meth:`hub` for connections to several hubs.

    :param reactor: the reactor; all network and time go through it.
    :param url: the SignalR endpoint, e.g. ``https://host/signalr``; its query string
        is kept on every request.
    :param headers: extra HTTP headers for every request, WebSocket handshake included.
    :param cookies: cookies for every request; cookies the server sets on negotiate
        are added and replayed on every later request and the WebSocket handshake.
    :param query: extra query parameters for every request.
    :param tls: a TLS policy for https/wss (see :func:`txsignalr.tls_policy`); the
        default verifies certificates against the platform trust store.
    :param http_client: a :class:`treq.client.HTTPClient` to use instead of the
        connection's own (for tests, e.g. ``treq.testing.StubTreq``).
    :param invoke_timeout: default seconds to wait for a hub result (None: no limit).
    :param reconnect_delay: classic: seconds between reconnect attempts (2, as
        Microsoft's clients), or a retry policy ``policy(attempt) -> seconds`` such as
        :func:`twisted.application.internet.backoffPolicy`; attempts stop when the
        server's DisconnectTimeout has passed.  Core: seconds before every attempt, a
        sequence of seconds (one per attempt, then it gives up), a policy
        ``policy(attempt) -> seconds | None`` (``None`` gives up) or ``None`` for no
        reconnecting; the default is Microsoft's 0, 2, 10 and 30 s, then closed.
    :param http_timeout: seconds allowed for each HTTP request.
    :param max_message_size: classic: invocations larger than this many bytes are
        refused (the server drops the socket on messages over 64 KiB by default); None:
        no limit.
    :param max_receive_size: the most bytes one received message may hold, both
        families (16 MiB); a larger one is a :class:`~txsignalr.MessageTooLarge`.
    :param abort_timeout: seconds :meth:`stop` waits for the server to answer ``/abort``
        (Core: for its Close message and ``DELETE``).
    :param transports: the transports to try, most preferred first, by wire name or
        :class:`~txsignalr.Transport` value; all three by default.
    :param transport_factories: replaces how a transport is built, by transport
        (``factory(reactor, request, http, sink)``; see ``txsignalr._transport``);
        for tests and custom transports.
    :param protocol: ``"auto"`` (the family is found from the negotiate answer: one
        ASP.NET Core negotiate, and a classic one when a classic server answered),
        ``"core"`` or ``"classic"``.
    :param hub: classic: the hub that :meth:`on`, :meth:`invoke` and :meth:`send`
        address; ignored by Core, whose URL names the hub.
    :param access_token_factory: ``factory() -> str`` (or a Deferred or coroutine of
        one), called before every negotiate (Core: also before each reconnect); the
        token is sent as ``Authorization: Bearer`` on every request and the WebSocket
        upgrade.
    :param keepalive_interval: Core: seconds between the client's pings when nothing
        else was sent (None: no pings).
    :param server_timeout: Core: seconds without any message from the server after
        which the link counts as lost (None: never).
    :param skip_negotiation: Core: connect straight to the WebSocket (only with
        ``transports=["webSockets"]``), as ``skipNegotiation`` of Microsoft's client.
    :param hub_protocol: Core: ``"json"`` (the default) or ``"messagepack"`` (binary,
        smaller and faster; needs ``pip install 'txsignalr[messagepack]'``; not over
        Server-Sent Events, which fallback then skips).
    :param stateful_reconnect: Core (.NET 8+ servers with ``AllowStatefulReconnects``):
        when the WebSocket drops, open a new one to the same connection and replay
        what either side missed, so nothing is lost or repeated and pending calls go
        on; the state stays connected meanwhile.  When the server refuses the resume,
        the ordinary reconnect (``reconnect_delay``) runs.
    :param proxy: the HTTP proxy every request and WebSocket goes through, as
        ``"http://[user:password@]host:port"``; ``None`` (the default) reads
        ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` as curl does;
        ``False``: never a proxy.  Everything crosses it in a ``CONNECT`` tunnel, with
        TLS to the server inside it for https and wss.
    :param stateful_buffer_size: Core, stateful reconnect: bytes of sent messages kept
        until the server acknowledges them; while it is full, :meth:`send`,
        :meth:`invoke` and uploads wait (back-pressure).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | CookieJar | None = None,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        tls: IPolicyForHTTPS | None = None,
        http_client: HTTPClientLike | None = None,
        invoke_timeout: float | None = None,
        reconnect_delay: Any = _DEFAULT,
        http_timeout: float = 30.0,
        max_message_size: int | None = 64 * 1024,
        abort_timeout: float = 5.0,
        transports: Sequence[str | Transport] = ALL_TRANSPORTS,
        transport_factories: Mapping[Transport, TransportFactory] | None = None,
        protocol: str = "auto",
        hub: str | None = None,
        access_token_factory: Callable[[], Any] | None = None,
        keepalive_interval: float | None = 15.0,
        server_timeout: float | None = 30.0,
        skip_negotiation: bool = False,
        max_receive_size: int = DEFAULT_MAX_RECEIVE_SIZE,
        hub_protocol: str = "json",
        stateful_reconnect: bool = False,
        stateful_buffer_size: int = DEFAULT_BUFFER_SIZE,
        proxy: str | bool | None = None,
    ) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(_PROTOCOLS)}, not {protocol!r}")
        codec = hub_codec(hub_protocol)  # ValueError, or ImportError without the extra
        if protocol == "classic" and hub_protocol != "json":
            raise ValueError(
                "classic ASP.NET SignalR has only JSON: hub_protocol='messagepack' needs "
                "protocol='core' or 'auto'"
            )
        if protocol == "classic" and stateful_reconnect:
            raise ValueError(
                "stateful_reconnect is ASP.NET Core's (classic resumes from its cursor "
                "anyway): it needs protocol='core' or 'auto'"
            )
        if stateful_buffer_size < 1:
            raise ValueError("stateful_buffer_size must be at least 1 byte")
        if stateful_reconnect and skip_negotiation:
            raise ValueError(
                "stateful_reconnect is agreed in negotiate: it cannot work with skip_negotiation"
            )
        self._hub_protocol = hub_protocol
        self._state = ConnectionState.disconnected
        self._reactor = reactor
        self._url = url
        self._transports = transport_order(transports)
        if skip_negotiation and self._transports != (Transport.web_sockets,):
            raise ValueError(
                "skip_negotiation works only with WebSockets: pass transports=['webSockets']"
            )
        self._protocol = protocol
        #: the family in use: fixed by ``protocol``, else found by the first start()
        self._family: str | None = None if protocol == "auto" else protocol
        self._session = ClassicSession(url, query, max_receive_size)
        header_map: dict[str, str] = dict(headers or {})
        for name, value in header_map.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
        jar = CookieJar()
        if isinstance(cookies, CookieJar):
            for cookie in cookies:
                jar.set_cookie(cookie)
        elif cookies:
            from treq.cookies import scoped_cookie

            for key, value in cookies.items():
                jar.set_cookie(scoped_cookie(self._session.endpoints.base, key, value))
        self._http = HttpSession(
            reactor, header_map, jar, tls, http_client, http_timeout, origin=url, proxy=proxy
        )

        log = self.log
        self._on_state_change = Observers(log, "state change")
        self._on_reconnecting = Observers(log, "reconnecting")
        self._on_reconnected = Observers(log, "reconnected")
        self._on_slow = Observers(log, "connection slow")
        self._on_closed = Observers(log, "closed")
        self._on_error = Observers(log, "error")
        factories = dict(DEFAULT_TRANSPORT_FACTORIES)
        factories.update(transport_factories or {})
        self._router = Router(log, self._on_error)
        # What on()/invoke()/send() address: the classic hub named by hub=, or the
        # Core connection's own handlers (a router of their own, never negotiated
        # as a classic hub).
        if hub is not None:
            self._main = HubProxy(self, self._router, hub)
            self._router.add(self._main)
            main_router = self._router
        else:
            main_router = Router(log, self._on_error)
            self._main = HubProxy(self, main_router, _hub_name_from_url(url))
            main_router.add(self._main)
        self._hub_name = hub
        if reconnect_delay is _DEFAULT:
            classic_delay: RetryPolicy = 2.0
            core_delay: Any = DEFAULT_CORE_RETRY_DELAYS
        else:
            classic_delay = _classic_policy(reconnect_delay, protocol)
            core_delay = reconnect_delay
        policy = core_policy(core_delay)
        if protocol != "core":
            # What building the Core engine checks (InvalidURL), checked now although
            # the engine is built only when the family needs it.
            _with_query(url, query)

        # Each family's engine is built on first use (see _core, _classic): a classic
        # connection never needs the Core one, a Core one the classic one only when
        # used before its family is known.
        def new_core() -> CoreEngine:
            return CoreEngine(
                self,
                reactor,
                url,
                query,
                self._http,
                factories,
                log,
                main_router,
                self._main.name,
                transports=self._transports,
                access_token_factory=access_token_factory,
                keepalive_interval=keepalive_interval,
                server_timeout=server_timeout,
                reconnect_policy=policy,
                max_receive_size=max_receive_size,
                invoke_timeout=invoke_timeout,
                skip_negotiation=skip_negotiation,
                stop_timeout=abort_timeout,
                codec=codec,
                stateful_reconnect=stateful_reconnect,
                stateful_buffer_size=stateful_buffer_size,
            )

        def new_classic() -> ClassicEngine:
            return ClassicEngine(
                self,
                reactor,
                self._session,
                self._http,
                factories,
                log,
                self._router,
                url=url,
                transports=self._transports,
                access_token_factory=access_token_factory,
                reconnect_delay=classic_delay,
                max_message_size=max_message_size,
                invoke_timeout=invoke_timeout,
                abort_timeout=abort_timeout,
            )

        self._new_core = new_core
        self._new_classic = new_classic
        if protocol == "core":
            self._core = new_core()
        self._start_task: Deferred[None] | None = None
        self._stop_task: Deferred[None] | None = None
        self._connected_waiters: list[Deferred[None]] = []
        self._stopping = False
        # outcome of the last session, for when_closed()
        self._closed_waiters: list[Deferred[None]] = []
        self._last_close: ConnectionClosed | None = None

    @cached_property
    def _core(self) -> CoreEngine:
        """The ASP.NET Core engine, built on first use (then an instance attribute)."""
        return self._new_core()

    @cached_property
    def _classic(self) -> ClassicEngine:
        """The classic engine, built on first use (then an instance attribute)."""
        return self._new_classic()

    def __repr__(self) -> str:
        return (
            f"<HubConnection {redact_url(self._url)} state={self._state.value}"
            f" connection_id={self._loggable_id()!r}>"
        )

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> ConnectionState:
        """The current :class:`ConnectionState`."""
        return self._state

    @property
    def protocol(self) -> str | None:
        """
        The family in use, ``"core"`` or ``"classic"``: as asked, or as found by
        :meth:`start` with ``protocol="auto"`` (``None`` until then).
        """
        return self._family

    @property
    def hub_protocol(self) -> str:
        """The hub protocol, ``"json"`` or ``"messagepack"`` (classic: always JSON)."""
        return self._hub_protocol

    @property
    def connection_id(self) -> str | None:
        """The server's id for this connection (``Context.ConnectionId``), once negotiated."""
        if self._family == "core":
            return self._core.connection_id
        negotiated = self._session.negotiated
        return None if negotiated is None else negotiated.connection_id

    @property
    def negotiated(self) -> NegotiateResponse | CoreNegotiateResponse | None:
        """
        What the server answered to negotiate: classic timeouts and protocol version,
        or the Core connection id and transports.
        """
        if self._family == "core":
            return self._core.negotiated
        return self._session.negotiated

    @property
    def transports(self) -> tuple[Transport, ...]:
        """The transports this connection may use, most preferred first."""
        return self._transports

    @property
    def transport(self) -> Transport | None:
        """The transport in use while connected or reconnecting, else ``None``."""
        if self._state in (ConnectionState.connecting, ConnectionState.disconnected):
            return None
        if self._family == "core":
            return self._core.link.in_use
        return self._classic.link.in_use

    @property
    def message_id(self) -> str | None:
        """The last cursor (``messageId``) received: where a reconnect resumes."""
        return self._session.message_id

    @property
    def groups_token(self) -> str | None:
        """
        The last groups token (``G``) received: the groups a reconnect restores.  It is
        signed by the server; like the connection token it is never logged.
        """
        return self._session.groups_token

    def hub(self, name: str) -> HubProxy:
        """
        Classic: the proxy for hub ``name`` (names match case-insensitively; asking
        twice gives the same proxy).  Create proxies before :meth:`start`.

        :raises InvalidStateError: on an ASP.NET Core connection, whose URL names its
            one hub: use :meth:`on`, :meth:`invoke` and :meth:`send` there.
        """
        if self._family == "core":
            raise InvalidStateError(
                "hub() is for classic ASP.NET SignalR connections; an ASP.NET Core "
                "connection's URL names its hub: use conn.on(), conn.invoke(), "
                "conn.send() and conn.stream()"
            )
        proxy = self._router.proxy_for(name)
        if proxy is None:
            if self._state is not ConnectionState.disconnected:
                self.log.warn(
                    "hub proxy {hub!r} created after start: the server will not deliver "
                    "its client-method calls until the connection is restarted",
                    hub=name,
                )
            proxy = HubProxy(self, self._router, name)
            self._router.add(proxy)
        return proxy

    def _proxy_for_calls(self, what: str) -> HubProxy:
        if self._family == "classic" and self._hub_name is None:
            raise InvalidStateError(
                f"{what}() on a classic ASP.NET SignalR connection needs the hub: pass "
                "hub='name' to HubConnection, or use conn.hub('name')"
            )
        return self._main

    def on(self, method: str, callback: Callable[..., object]) -> Callable[[], None]:
        """
        Call ``callback(*args)`` whenever the server calls client method ``method``
        (names match case-insensitively).  A callback may return a Deferred or a
        coroutine.  Core: when the server waits for a result (client results), the
        handler's return value, or what its Deferred or coroutine gives, is sent
        back; an exception is sent as the error; with no handler the server is told
        "Client didn't provide a result.", and when several handlers return a value,
        "Client provided multiple results." (as Microsoft's client).

        :returns: a function that removes this handler.
        """
        return self._proxy_for_calls("on").on(method, callback)

    def on_any(self, callback: Callable[..., object]) -> Callable[[], None]:
        """
        Call ``callback(method, *args)`` for every client-method call, whatever the
        method (``method`` as the server spells it), after the :meth:`on` handlers.

        :returns: a function that removes this handler.
        """
        return self._proxy_for_calls("on_any").on_any(callback)

    def off(self, method: str, callback: Callable[..., object] | None = None) -> None:
        """Remove one handler of ``method``, or all of them when ``callback`` is None."""
        self._proxy_for_calls("off").off(method, callback)

    def invoke(self, method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """
        Invoke hub method ``method``.  Core: an argument that is an async iterable is
        sent as a client-to-server stream, item by item, ended by its own end.

        :param timeout: seconds to wait for the result (``invoke_timeout`` when None).
        :returns: a Deferred of the method's result.  It fails with
            :class:`~txsignalr.HubError` when the method raised,
            :class:`~txsignalr.ConnectionClosed` when the connection is lost first,
            :class:`~txsignalr.InvalidStateError` when not connected, Twisted's
            ``TimeoutError`` on timeout and :class:`TypeError` for arguments that are
            not JSON-serialisable.
        """
        return self._proxy_for_calls("invoke").invoke(method, *args, timeout=timeout)

    def send(self, method: str, *args: Any) -> Deferred[None]:
        """
        Invoke hub method ``method`` without waiting for its result.

        :returns: a Deferred that fires once the invocation was written (Core) or
            sent (classic, whose server answers anyway; the answer is dropped).
        """
        proxy = self._proxy_for_calls("send")
        if self._family == "core":
            return self._core.calls.send(method, args)
        d = self._classic.invoke(proxy, method, args, None, None, sent_only=True)
        return d.addCallback(lambda _: None)

    def stream(self, method: str, *args: Any) -> HubStream:
        """
        Core: call a streaming hub method (``StreamInvocation``); read the items with
        ``async for item in stream`` or ``stream.each(callback)``, stop it with
        ``stream.cancel()``.  A stream that cannot start fails when read.
        """
        if self._family != "core":
            error = InvalidStateError(
                "stream() needs an ASP.NET Core connection"
                + (" (not started yet: the family is not known)" if self._family is None else "")
            )
            return HubStream.failed(method, error)
        return self._core.calls.stream(method, args)

    def on_state_change(
        self, callback: Callable[[ConnectionState, ConnectionState], object]
    ) -> Callable[[], None]:
        """Call ``callback(old, new)`` on every state change; returns a remover."""
        return self._on_state_change.add(callback)

    def on_reconnecting(self, callback: Callable[[ConnectionClosed], object]) -> Callable[[], None]:
        """Call ``callback(reason)`` when the transport is lost and reconnecting starts."""
        return self._on_reconnecting.add(callback)

    def on_reconnected(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` when a reconnect succeeded."""
        return self._on_reconnected.add(callback)

    def on_slow(self, callback: Callable[[], object]) -> Callable[[], None]:
        """
        Call ``callback()`` when nothing arrived for 2/3 of the keep-alive timeout
        (classic) or of ``server_timeout`` (Core).
        """
        return self._on_slow.add(callback)

    def on_closed(
        self, callback: Callable[[ConnectionClosed | None], object]
    ) -> Callable[[], None]:
        """Call ``callback(reason)`` when the connection closes (``None`` after stop())."""
        return self._on_closed.add(callback)

    def on_error(self, callback: Callable[[SignalRError], object]) -> Callable[[], None]:
        """Call ``callback(error)`` for problems that do not end the connection."""
        return self._on_error.add(callback)

    def when_closed(self) -> Deferred[None]:
        """
        A Deferred for the end of the current connection: it fires with ``None`` after
        :meth:`stop` and fails with :class:`~txsignalr.ConnectionClosed` when the
        connection is lost for good.  While disconnected it reports how the last
        connection ended.
        """
        if self._state is ConnectionState.disconnected:
            if self._last_close is not None:
                d: Deferred[None] = Deferred()
                d.errback(self._last_close)
                return d
            return succeed(None)
        d = Deferred()
        self._closed_waiters.append(d)
        return d

    def when_connected(self) -> Deferred[None]:
        """
        A Deferred that fires once the connection is connected: at once when it is,
        else at the next successful start or reconnect.  It fails with
        :class:`~txsignalr.ConnectionClosed` if the connection stops or is lost for
        good first.
        """
        if self._state is ConnectionState.connected:
            return succeed(None)
        d: Deferred[None] = Deferred(self._forget_connected_waiter)
        self._connected_waiters.append(d)
        return d

    def _forget_connected_waiter(self, d: Deferred[None]) -> None:
        if d in self._connected_waiters:
            self._connected_waiters.remove(d)

    def start(self) -> Deferred[None]:
        """
        Negotiate (with ``protocol="auto"``, finding the family first), open the
        first transport that works, then: ASP.NET Core, the handshake; classic, wait
        for the init frame and call ``/start``.

        :returns: a Deferred that fires once connected.  It fails with
            :class:`~txsignalr.NegotiationError`, :class:`~txsignalr.NoTransportError`
            (no transport opened), :class:`~txsignalr.HandshakeError` (Core: the
            handshake failed), :class:`~txsignalr.StartError` (``/start`` failed),
            :class:`~txsignalr.ConnectionClosed` (stopped meanwhile) or
            :class:`~twisted.internet.defer.CancelledError` (cancelled).
        """
        if self._state is not ConnectionState.disconnected:
            return fail(
                InvalidStateError(f"start() called while {self._state.value}; call stop() first")
            )
        if self._stop_task is not None:
            return fail(
                InvalidStateError("start() called while stop() is still running; wait for it")
            )
        self._stopping = False
        self._last_close = None
        self._set_state(ConnectionState.connecting)
        if self._stopping:  # a state-change callback called stop()
            return fail(ConnectionClosed("stop() was called before start() completed"))
        task = Deferred.fromCoroutine(self._start_family())
        self._start_task = task

        def done(result: _T) -> _T:
            self._start_task = None
            return result

        task.addBoth(done)
        return task

    def stop(self) -> Deferred[None]:
        """
        Stop: classic ``/abort`` (so the server runs ``OnDisconnected`` at once), or
        ASP.NET Core's Close message (and ``DELETE`` for long polling); close the
        transport, fail pending invocations with :class:`~txsignalr.ConnectionClosed`,
        cancel every timer and close idle HTTP connections.

        :returns: a Deferred that fires when all of that is done.
        """
        task = Deferred.fromCoroutine(self._stop())
        if not task.called:
            self._stop_task = task

            def done(result: _T) -> _T:
                self._stop_task = None
                return result

            task.addBoth(done)
        return task

    def ping(self) -> Deferred[bool]:
        """Classic: ``GET /ping``: fires ``True`` when the server answers ``pong``."""
        if self._family == "core":
            return fail(InvalidStateError("ping() is for classic servers; Core has no /ping"))

        async def run() -> bool:
            status, body = await self._http.request("GET", self._session.ping_url(), "ping")
            if status != 200:
                raise SignalRError(f"ping failed with HTTP {status}")
            return parse_response(body) == "pong"

        return Deferred.fromCoroutine(run())

    def _report_error(self, error: SignalRError) -> None:
        """A problem that does not end the connection: logged and sent to on_error."""
        self.log.error("{error}", error=str(error))
        self._on_error.fire(error)

    def _invoke(
        self,
        proxy: HubProxy,
        method: str,
        args: Sequence[Any],
        on_progress: Callable[[Any], object] | None,
        timeout: float | None,
    ) -> Deferred[Any]:
        """What a :class:`HubProxy` invokes through (either family)."""
        if self._family == "core":
            return self._core.calls.invoke(method, args, timeout)
        return self._classic.invoke(proxy, method, args, on_progress, timeout)

    # ------------------------------------------------------------------ start

    async def _start_family(self) -> None:
        first: tuple[int, bytes] | None = None
        detected = False
        if self._family is None:
            if any(p is not self._main for p in self._router.proxies.values()):
                # hub() is classic's alone: no need to ask.
                self._found("classic")
            else:
                first = await self._detect()
                detected = True
        if self._family == "core":
            extra = [p.name for p in self._router.proxies.values() if p is not self._main]
            if extra:
                error = InvalidStateError(
                    f"the server is ASP.NET Core SignalR, whose URL names one hub, but hub "
                    f"proxies were made with hub(): {', '.join(map(repr, extra))}; use "
                    "conn.on()/conn.invoke() on the hub's own URL"
                )
                self._fail_early(error)
                raise error
            await self._core.run_start(first)
        else:
            if self._hub_protocol != "json":
                error = InvalidStateError(
                    "the server is classic ASP.NET SignalR, which has no "
                    f"{self._hub_protocol} hub protocol: use hub_protocol='json'"
                )
                self._fail_early(error)
                raise error
            await self._classic.run_start(authorized=detected)

    def _fail_early(self, error: Exception) -> None:
        """start() failed before anything was opened."""
        reason = ConnectionClosed(f"start() failed: {error}", error)
        for d in self._end_common(reason):
            d.errback(reason)
        self._http.close_idle()

    async def _detect(self) -> tuple[int, bytes] | None:
        """
        protocol="auto": one ASP.NET Core negotiate.  A Core answer is kept for the
        Core start (no second round trip); a classic server's answer, or a refusal
        that only a classic server gives (400 or 405), means classic.
        """
        core = self._core
        try:
            await core._authorize()
            url = core.session.negotiate_url()
            status, body = await self._http.request("POST", url, "negotiate")
        except Exception as e:
            if self._stopping:
                raise ConnectionClosed("stop() was called before start() completed") from None
            error = e if isinstance(e, NegotiationError) else NegotiationError(str(e))
            self._fail_early(error)
            if isinstance(e, CancelledError):
                raise
            raise error from e
        try:
            parse_core_negotiate(status, body)
        except ClassicAnswer:
            self._found("classic")
            return None
        except NegotiationError as e:
            if status in (400, 405):
                self._found("classic")
                return None
            # Neither family answered usably (say, 503 or 401): the next start()
            # asks again.
            self._fail_early(e)
            raise
        self._found("core")
        return status, body

    def _found(self, family: str) -> None:
        self._family = family
        self.log.info("the server speaks {family}", family=family)

    # ------------------------------------------------------------------ transport

    def _loggable_id(self) -> str | None:
        if self._family == "core":
            return self._core.loggable_id
        return self.connection_id

    # ------------------------------------------------------------------ stop

    async def _stop(self) -> None:
        if self._state is ConnectionState.disconnected and self._start_task is None:
            await self._http.close_idle()
            return
        self._stopping = True
        start_task = self._start_task
        if start_task is not None:
            start_task.cancel()
        if self._family == "core":
            self._last_close = None
            closed_waiters = await self._core.stop()
            await self._http.close_idle()
            self.log.info("stopped")
            for d in closed_waiters:
                d.callback(None)
            self._on_closed.fire(None)
            return
        closed_waiters = await self._classic.stop()
        await self._http.close_idle()
        self.log.info("stopped")
        for d in closed_waiters:
            d.callback(None)
        self._on_closed.fire(None)

    # ------------------------------------------------------------------ helpers

    def _end_common(self, reason: ConnectionClosed | None) -> list[Deferred[None]]:
        """
        The family-neutral end of a session: fail the when_connected() waiters and
        become disconnected.

        :returns: the when_closed() waiters.
        """
        waiters, self._connected_waiters = self._connected_waiters, []
        for w in waiters:
            w.errback(reason or ConnectionClosed("stop() was called"))
        closed_waiters, self._closed_waiters = self._closed_waiters, []
        self._set_state(ConnectionState.disconnected)
        return closed_waiters

    def _set_state(self, new: ConnectionState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if new is ConnectionState.connected and self._connected_waiters:
            waiters, self._connected_waiters = self._connected_waiters, []
            for d in waiters:
                d.callback(None)
        self._on_state_change.fire(old, new)

"""
The hub connection: public API and the connection state machine.

States: ``connecting → connected ⇄ reconnecting → disconnected``.  All time goes through
the injected reactor (keep-alive watchdog, reconnect delay and window, invocation
timeouts, start deadline), so the whole machine runs under ``task.Clock`` in tests.
"""

from __future__ import annotations

import enum
import functools
import itertools
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http.cookiejar import CookieJar
from typing import Any, Protocol, TypeVar

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    ensureDeferred,
    fail,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS

from txsignalr._protocol import (
    ALL_TRANSPORTS,
    ClientInvocation,
    Endpoints,
    HubResult,
    MalformedMessage,
    NegotiateResponse,
    PersistentResponse,
    Progress,
    ServerMessage,
    Transport,
    decode_frame,
    encode_invocation,
    frame_from_json,
    message_from_json,
    parse_negotiate,
    parse_response,
    redact_url,
    transport_order,
    websocket_url,
)
from txsignalr._websocket import WebSocketTransport
from txsignalr.errors import (
    ConnectionClosed,
    HubError,
    InvalidStateError,
    MessageTooLarge,
    NegotiationError,
    ProtocolError,
    SignalRError,
    StartError,
)

__all__ = ["ConnectionState", "HubConnection", "HubProxy"]

_T = TypeVar("_T")


class HTTPClientLike(Protocol):
    """What the connection needs of an HTTP client: treq's ``request``."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]: ...


class ConnectionState(str, enum.Enum):
    """The states of a :class:`HubConnection`."""

    connecting = "connecting"
    connected = "connected"
    reconnecting = "reconnecting"
    disconnected = "disconnected"


_RECONNECTING_TEXT = "Connection started reconnecting before invocation result was received."
_DISCONNECTED_TEXT = "Connection was disconnected before invocation result was received."
_PERMANENT_RECONNECT_STATUSES = frozenset({400, 401, 403, 404})


class _Observers:
    """A list of callbacks; a failing one is logged and does not stop the others."""

    __slots__ = ("_callbacks", "_log", "_what")

    def __init__(self, log: Logger, what: str) -> None:
        self._callbacks: list[Callable[..., object]] = []
        self._log = log
        self._what = what

    def add(self, callback: Callable[..., object]) -> Callable[[], None]:
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def fire(self, *args: object) -> None:
        for callback in list(self._callbacks):
            try:
                callback(*args)
            except Exception:
                self._log.failure(
                    "{what} callback {callback!r} raised", what=self._what, callback=callback
                )


class HubProxy:
    """
    A client-side handle on one hub: invoke server methods, receive client calls.

    Obtain it with :meth:`HubConnection.hub`; create every proxy before
    :meth:`HubConnection.start`, since the server only delivers client-method calls
    for the hubs named when the connection started.

    :ivar name: the hub name as given.
    :ivar state: the hub state, sent with every invocation when non-empty and merged
        with the changes the server sends back.
    """

    def __init__(self, connection: HubConnection, name: str) -> None:
        self.name = name
        self.state: dict[str, Any] = {}
        self._connection = connection
        self._handlers: dict[str, list[Callable[..., object]]] = {}
        self._any: list[Callable[..., object]] = []

    def __repr__(self) -> str:
        return f"<HubProxy {self.name!r}>"

    def on(self, method: str, callback: Callable[..., object]) -> Callable[[], None]:
        """
        Call ``callback(*args)`` whenever the server calls client method ``method``.

        Method names match case-insensitively.  A callback may return a Deferred or
        a coroutine; a failure in either is logged.  Handlers may be added before or
        after :meth:`HubConnection.start`.

        :returns: a function that removes this handler.
        """
        key = method.lower()
        self._handlers.setdefault(key, []).append(callback)
        self._handlers_changed()

        def remove() -> None:
            self.off(method, callback)

        return remove

    def on_any(self, callback: Callable[..., object]) -> Callable[[], None]:
        """
        Call ``callback(method, *args)`` for every client-method call on this hub,
        whatever the method; ``method`` is the server's spelling.  Runs after the
        handlers registered with :meth:`on` for that method.

        :returns: a function that removes this handler.
        """
        self._any.append(callback)
        self._handlers_changed()

        def remove() -> None:
            if callback in self._any:
                self._any.remove(callback)
                self._handlers_changed()

        return remove

    def off(self, method: str, callback: Callable[..., object] | None = None) -> None:
        """Remove one handler of ``method``, or all of them when ``callback`` is None."""
        key = method.lower()
        handlers = self._handlers.get(key)
        if handlers is not None:
            if callback is None:
                del self._handlers[key]
            elif callback in handlers:
                handlers.remove(callback)
                if not handlers:
                    del self._handlers[key]
        self._handlers_changed()

    def _handlers_changed(self) -> None:
        self._connection._routes.clear()

    def _handlers_for(self, method: str) -> list[Callable[..., object]]:
        """The handlers for the server's spelling of ``method`` (cached by the connection)."""
        handlers = list(self._handlers.get(method.lower(), ()))
        handlers.extend(functools.partial(callback, method) for callback in self._any)
        return handlers

    def invoke(
        self,
        method: str,
        *args: Any,
        on_progress: Callable[[Any], object] | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Invoke server method ``method`` with ``args``.

        :param on_progress: called with each progress value the method reports.
        :param timeout: seconds to wait for the result; the connection's
            ``invoke_timeout`` when None.  No timeout when both are None.
        :returns: a Deferred firing with the method's return value (``None`` for void).
            It fails with :class:`~txsignalr.HubError` when the method raised,
            :class:`~twisted.internet.defer.TimeoutError` on timeout,
            :class:`~txsignalr.ConnectionClosed` when the connection starts reconnecting
            or closes first, :class:`~txsignalr.InvalidStateError` when not connected,
            :class:`TypeError` for arguments that are not JSON-serialisable.
        """
        return self._connection._invoke(self, method, args, on_progress, timeout)


@attrs.define(slots=True)
class _Pending:
    deferred: Deferred[Any]
    proxy: HubProxy
    method: str
    on_progress: Callable[[Any], object] | None


class HubConnection:
    """
    A connection to a classic ASP.NET SignalR 2.x server (clientProtocol 1.5) over
    WebSockets.

    :param reactor: the reactor; all network and time go through it.
    :param url: the SignalR endpoint, e.g. ``https://host/signalr``; its query string
        is kept on every request.
    :param headers: extra HTTP headers for every request, WebSocket handshake included.
    :param cookies: cookies for every request; cookies the server sets on negotiate
        are added and replayed on the WebSocket handshake, ``/start`` and ``/abort``.
    :param query: extra query parameters for every request.
    :param tls: a TLS policy for https/wss (see :func:`txsignalr.tls_policy`); the
        default verifies certificates against the platform trust store.
    :param http_client: a :class:`treq.client.HTTPClient` to use instead of the
        connection's own (for tests, e.g. ``treq.testing.StubTreq``).
    :param invoke_timeout: default seconds to wait for a hub result (None: no limit).
    :param reconnect_delay: seconds between reconnect attempts (2, as Microsoft's
        clients), or a retry policy ``policy(attempt) -> seconds`` such as
        :func:`twisted.application.internet.backoffPolicy`; attempts stop when the
        server's DisconnectTimeout has passed.
    :param http_timeout: seconds allowed for each HTTP request.
    :param max_message_size: invocations larger than this many bytes are refused
        (the server drops the socket on messages over 64 KiB by default); None: no limit.
    :param abort_timeout: seconds :meth:`stop` waits for the server to answer ``/abort``.
    :param transports: the transports to try, most preferred first, by wire name or
        :class:`~txsignalr.Transport` value; all three by default.
    """

    log = Logger()
    #: Builds the transport; replaced in unit tests of the state machine.
    _transport_factory: Callable[..., WebSocketTransport] = WebSocketTransport

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
        reconnect_delay: float | Callable[[int], float] = 2.0,
        http_timeout: float = 30.0,
        max_message_size: int | None = 64 * 1024,
        abort_timeout: float = 5.0,
        transports: Sequence[str | Transport] = ALL_TRANSPORTS,
    ) -> None:
        self._reactor = reactor
        self._transports = transport_order(transports)
        self._transport_in_use: Transport | None = None
        self._url = url
        self._query = query
        # Validate now so a bad URL fails at construction with InvalidURL.
        self._endpoints = Endpoints.from_url(url, [], query)
        self._headers: dict[str, str] = dict(headers or {})
        for name, value in self._headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
        self._tls = tls
        self._invoke_timeout = invoke_timeout
        self._reconnect_delay = reconnect_delay
        self._http_timeout = http_timeout
        self._max_message_size = max_message_size
        self._abort_timeout = abort_timeout
        self._cookies = CookieJar()
        if isinstance(cookies, CookieJar):
            for cookie in cookies:
                self._cookies.set_cookie(cookie)
        elif cookies:
            from treq.cookies import scoped_cookie

            for key, value in cookies.items():
                self._cookies.set_cookie(scoped_cookie(self._endpoints.base, key, value))
        self._pool: HTTPConnectionPool | None = None
        if http_client is None:
            # The connection owns its pool and closes it on stop, so no idle HTTP
            # connection (or its timer) outlives the connection.
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(
                reactor, contextFactory=tls or BrowserLikePolicyForHTTPS(), pool=self._pool
            )
            own: Any = HTTPClient(agent)
            http_client = own
        assert http_client is not None
        self._http_client: HTTPClientLike = http_client

        self._proxies: dict[str, HubProxy] = {}
        # server hub spelling -> server method spelling -> handlers: the one cache of
        # the receive path, cleared whenever a proxy or a handler is added or removed
        self._routes: dict[str, dict[str, list[Callable[..., object]]]] = {}
        self._state = ConnectionState.disconnected
        self._negotiated: NegotiateResponse | None = None
        self._token: str | None = None
        self._message_id: str | None = None
        self._groups_token: str | None = None
        self._transport: WebSocketTransport | None = None
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self._buffer: list[ServerMessage] = []
        self._start_task: Deferred[None] | None = None
        self._stop_task: Deferred[None] | None = None
        self._connected_waiters: list[Deferred[None]] = []
        self._start_waiter: Deferred[Any] | None = None
        self._stopping = False
        self._tid = itertools.cycle(range(11))
        # timers
        self._keepalive_call: IDelayedCall | None = None
        self._reconnect_call: IDelayedCall | None = None
        self._deadline_call: IDelayedCall | None = None
        self._attempt_call: IDelayedCall | None = None
        self._reconnect_attempt = 0
        # _last_frame: when a frame last arrived (all the receive path stores);
        # _watch_base: when the keep-alive watchdog was (re)armed.
        self._last_frame = 0.0
        self._watch_base = 0.0
        self._slow = False
        self._seconds = reactor.seconds
        # outcome of the last session, for when_closed()
        self._closed_waiters: list[Deferred[None]] = []
        self._last_close: ConnectionClosed | None = None
        # events
        log = self.log
        self._on_state_change = _Observers(log, "state change")
        self._on_reconnecting = _Observers(log, "reconnecting")
        self._on_reconnected = _Observers(log, "reconnected")
        self._on_slow = _Observers(log, "connection slow")
        self._on_closed = _Observers(log, "closed")
        self._on_error = _Observers(log, "error")

    def __repr__(self) -> str:
        return (
            f"<HubConnection {redact_url(self._url)} state={self._state.value}"
            f" connection_id={self.connection_id!r}>"
        )

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> ConnectionState:
        """The current :class:`ConnectionState`."""
        return self._state

    @property
    def connection_id(self) -> str | None:
        """The server's id for this connection (``Context.ConnectionId``), once negotiated."""
        return None if self._negotiated is None else self._negotiated.connection_id

    @property
    def transports(self) -> tuple[Transport, ...]:
        """The transports this connection may use, most preferred first."""
        return self._transports

    @property
    def transport(self) -> Transport | None:
        """The transport in use, or ``None`` while no transport has connected."""
        return self._transport_in_use

    @property
    def negotiated(self) -> NegotiateResponse | None:
        """What the server answered to negotiate (timeouts, protocol version)."""
        return self._negotiated

    def hub(self, name: str) -> HubProxy:
        """
        The proxy for hub ``name`` (names match case-insensitively; asking twice gives
        the same proxy).  Create proxies before :meth:`start`.
        """
        key = name.lower()
        proxy = self._proxies.get(key)
        if proxy is None:
            if self._state is not ConnectionState.disconnected:
                self.log.warn(
                    "hub proxy {hub!r} created after start: the server will not deliver "
                    "its client-method calls until the connection is restarted",
                    hub=name,
                )
            proxy = HubProxy(self, name)
            self._proxies[key] = proxy
            self._routes.clear()
        return proxy

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
        """Call ``callback()`` when no frame arrived for 2/3 of the keep-alive timeout."""
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

    def _fail_connected_waiters(self, reason: ConnectionClosed) -> None:
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.errback(reason)

    def start(self) -> Deferred[None]:
        """
        Negotiate, open the WebSocket, wait for the init frame and call ``/start``.

        :returns: a Deferred that fires once connected.  It fails with
            :class:`~txsignalr.NegotiationError`, :class:`~txsignalr.StartError`,
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
        task = Deferred.fromCoroutine(self._run_start())
        self._start_task = task

        def done(result: _T) -> _T:
            self._start_task = None
            return result

        task.addBoth(done)
        return task

    def stop(self) -> Deferred[None]:
        """
        Stop: ``/abort`` (so the server runs ``OnDisconnected`` at once), close the
        socket, fail pending invocations with :class:`~txsignalr.ConnectionClosed`,
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
        """``GET /ping``: fires ``True`` when the server answers ``pong``."""

        async def run() -> bool:
            status, body = await self._http("GET", self._endpoints.ping(), "ping")
            if status != 200:
                raise SignalRError(f"ping failed with HTTP {status}")
            return parse_response(body) == "pong"

        return Deferred.fromCoroutine(run())

    # ------------------------------------------------------------------ start

    async def _run_start(self) -> None:
        endpoints = Endpoints.from_url(
            self._url, [p.name for p in self._proxies.values()], self._query
        )
        self._endpoints = endpoints
        opened = False
        try:
            negotiated = await self._negotiate(endpoints)
            self._negotiated = negotiated
            if not negotiated.try_websockets:
                raise StartError(
                    "the server does not accept WebSockets (negotiate TryWebSockets is "
                    "false) and this client has no other transport yet"
                )
            self._token = negotiated.connection_token
            self._message_id = None
            self._groups_token = None
            self._buffer = []
            waiter: Deferred[Any] = Deferred()
            self._start_waiter = waiter
            url = websocket_url(
                endpoints.connect(
                    Transport.web_sockets, negotiated.connection_token, next(self._tid)
                )
            )
            self._open_transport(url)
            opened = True
            deadline = negotiated.transport_connect_timeout
            waiter.addTimeout(deadline, self._reactor)
            try:
                await waiter
            except TimeoutError:
                raise StartError(
                    f"no init frame from the server within {deadline:g} s (TransportConnectTimeout)"
                ) from None
            except ConnectionClosed as e:
                raise StartError(
                    f"the WebSocket failed before the connection started: {e.reason}",
                    e.status,
                ) from None
            # S:1 arrived: now /start.  The waiter fires with the answer, or fails when
            # the socket is lost meanwhile; cancelling it (stop()) cancels the request.
            request = Deferred.fromCoroutine(
                self._http(
                    "GET",
                    endpoints.start(Transport.web_sockets, negotiated.connection_token),
                    "start",
                )
            )
            waiter = Deferred(lambda _: request.cancel())
            self._start_waiter = waiter

            def forward(result: object) -> None:
                if not waiter.called:
                    waiter.callback(result)
                elif isinstance(result, Failure):
                    result.trap(CancelledError, SignalRError)

            request.addBoth(forward)
            try:
                status, body = await waiter
            except ConnectionClosed as e:
                request.cancel()
                raise StartError(
                    f"Error during start request: the WebSocket closed ({e.reason})"
                ) from None
            except CancelledError:
                raise
            except SignalRError as e:
                raise StartError(f"Error during start request: {e}") from None
            if status != 200:
                raise StartError(
                    "Error during start request. Stopping the connection.", status, body
                )
            if parse_response(body) != "started":
                raise StartError(
                    f"Invalid start response: {body[:200]!r}. Stopping the connection.",
                    status,
                    body,
                )
        except Exception as e:
            self._start_waiter = None
            if self._stopping:
                # stop() does the cleaning up; tell the caller why start failed.
                raise ConnectionClosed("stop() was called before start() completed") from None
            await self._cleanup_failed_start(opened and not isinstance(e, NegotiationError), e)
            if isinstance(e, (SignalRError, CancelledError)):
                raise
            raise StartError(f"start failed: {e!r}") from e
        self._start_waiter = None
        # The HTTP socket used for negotiate and /start is not needed until stop():
        # release it now rather than hold a second file descriptor per connection.
        self._close_pool()
        self._set_state(ConnectionState.connected)
        self.log.info(
            "connected to {url} (connection {connection_id})",
            url=redact_url(self._url),
            connection_id=negotiated.connection_id,
        )
        self._start_keepalive()
        buffered, self._buffer = self._buffer, []
        for message in buffered:
            if self._state is not ConnectionState.connected:
                break
            self._dispatch(message)

    async def _negotiate(self, endpoints: Endpoints) -> NegotiateResponse:
        try:
            status, body = await self._http("GET", endpoints.negotiate(), "negotiate")
        except SignalRError as e:
            raise NegotiationError(str(e)) from e
        if status == 405:
            # ASP.NET Core's negotiate is a POST; it answers a GET with 405.
            raise NegotiationError(
                "negotiate answered 405 Method Not Allowed: this looks like an ASP.NET Core "
                "SignalR server, and this client speaks classic ASP.NET SignalR 2.x",
                status,
                body,
            )
        if status != 200:
            raise NegotiationError("negotiate request failed", status, body)
        negotiated = parse_negotiate(body, status)
        self.log.debug("negotiated {negotiated!r}", negotiated=negotiated)
        return negotiated

    async def _cleanup_failed_start(self, abort: bool, error: Exception) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        token = self._token
        self._token = None
        # Whoever waits on this session learns that it ended; nothing hangs.
        reason = ConnectionClosed(f"start() failed: {error}", error)
        closed_waiters = self._end_session(reason)
        if abort and token is not None:
            await self._fire_abort(token)
        await self._close_pool()
        for d in closed_waiters:
            d.errback(reason)

    # ------------------------------------------------------------------ HTTP

    async def _http(
        self, method: str, url: str, what: str, timeout: float | None = None
    ) -> tuple[int, bytes]:
        headers: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in self._headers.items()}
        if timeout is None:
            timeout = self._http_timeout
        try:
            d = self._http_client.request(method, url, headers=headers, cookies=self._cookies)
            d.addTimeout(timeout, self._reactor)
            response = await d
            body_d = treq.content(response)
            body_d.addTimeout(timeout, self._reactor)
            body: bytes = await body_d
        except CancelledError:
            raise
        except TimeoutError:
            raise SignalRError(f"{what} request timed out after {timeout:g} s") from None
        except Exception as e:
            raise SignalRError(f"{what} request failed: {type(e).__name__}: {e}") from e
        cookies = getattr(response, "cookies", None)
        if cookies is not None:
            for cookie in cookies():
                self._cookies.set_cookie(cookie)
        return response.code, body

    def _fire_abort(self, token: str) -> Deferred[None]:
        """POST /abort; the Deferred fires when answered or failed (never errbacks)."""
        url = self._endpoints.abort(Transport.web_sockets, token)
        d = Deferred.fromCoroutine(
            self._http("POST", url, "abort", min(self._http_timeout, self._abort_timeout))
        )

        def done(result: tuple[int, bytes]) -> None:
            if result[0] != 200:
                self.log.warn("/abort answered HTTP {status}", status=result[0])

        def failed(f: Failure) -> None:
            self.log.warn("/abort failed: {error}", error=f.getErrorMessage())

        return d.addCallbacks(done, failed)

    def _close_pool(self) -> Deferred[None]:
        if self._pool is None:
            return succeed(None)
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def _handshake_headers(self, http_url: str) -> dict[str, str]:
        headers = dict(self._headers)
        request = urllib.request.Request(http_url)
        self._cookies.add_cookie_header(request)
        cookie = request.get_header("Cookie")
        if cookie:
            existing = headers.pop("Cookie", None) or headers.pop("cookie", None)
            headers["Cookie"] = f"{existing}; {cookie}" if existing else cookie
        return headers

    # ------------------------------------------------------------------ transport

    def _open_transport(self, ws_url: str) -> None:
        http_url = ws_url.replace("ws", "http", 1)
        transport = self._transport_factory(
            self._reactor, ws_url, self._handshake_headers(http_url), self._tls, self
        )
        self._transport = transport
        transport.open()

    def transport_opened(self, transport: WebSocketTransport) -> None:
        if transport is not self._transport:
            return
        if self._state is ConnectionState.reconnecting:
            self._cancel(self._attempt_call)
            self._attempt_call = None
            self._cancel(self._deadline_call)
            self._deadline_call = None
            self._set_state(ConnectionState.connected)
            self.log.info(
                "reconnected (connection {connection_id})", connection_id=self.connection_id
            )
            self._start_keepalive()
            self._on_reconnected.fire()

    def frame_received(self, transport: WebSocketTransport, data: bytes) -> None:
        if transport is not self._transport:
            return
        self._last_frame = self._seconds()
        try:
            obj = decode_frame(data)
        except ProtocolError as e:
            self._report_error(e)
            return
        # Fast path for what busy feeds send: {"C":cursor,"M":[{"H","M","A"},…]} while
        # connected.  Same outcome as the general path below, without building the
        # message values: dispatch straight from the decoded JSON.
        if (
            type(obj) is dict
            and len(obj) == 2
            and self._state is ConnectionState.connected
            and type(obj.get("C")) is str
            and type(obj.get("M")) is list
        ):
            self._message_id = obj["C"]
            self._dispatch_plain(transport, obj["M"])
            return
        try:
            frame = frame_from_json(obj, data)
        except ProtocolError as e:
            self._report_error(e)
            return
        kind = type(frame)
        if kind is PersistentResponse:
            self._persistent(frame)  # type: ignore[arg-type]
        elif kind is HubResult:
            self._result(frame)  # type: ignore[arg-type]

    def transport_lost(self, transport: WebSocketTransport, reason: ConnectionClosed) -> None:
        if transport is not self._transport:
            return
        self._transport = None
        state = self._state
        if state is ConnectionState.connecting:
            waiter = self._start_waiter
            if waiter is not None and not waiter.called:
                waiter.errback(reason)
        elif state is ConnectionState.connected:
            self._begin_reconnecting(reason)
        elif state is ConnectionState.reconnecting:
            self._cancel(self._attempt_call)
            self._attempt_call = None
            status = reason.status
            if status in _PERMANENT_RECONNECT_STATUSES:
                self._close_for_good(
                    ConnectionClosed(
                        f"the server refused /reconnect with HTTP {status}: the connection "
                        "no longer exists on the server",
                        reason,
                    )
                )
            else:
                self.log.info("reconnect attempt failed: {reason}", reason=reason.reason)
                self._schedule_reconnect()

    # ------------------------------------------------------------------ receive path

    def _persistent(self, frame: PersistentResponse) -> None:
        if frame.error is not None:
            self._close_for_good(
                ConnectionClosed(f"Error message received from the server: '{frame.error}'.")
            )
            return
        if frame.groups_token is not None:
            self._groups_token = frame.groups_token
        if frame.cursor is not None:
            self._message_id = frame.cursor
        if frame.messages:
            if self._state is ConnectionState.connected:
                dispatch = self._dispatch
                for message in frame.messages:
                    dispatch(message)
                    if self._transport is None:
                        break
            else:
                self._buffer.extend(frame.messages)
        if frame.initialized:
            waiter = self._start_waiter
            if (
                self._state is ConnectionState.connecting
                and waiter is not None
                and not waiter.called
            ):
                waiter.callback(None)
        if frame.reconnect and self._state is ConnectionState.connected:
            self._drop_and_reconnect(
                ConnectionClosed(
                    "the server asked clients to reconnect (T:1, server shutting down)"
                )
            )
        if frame.disconnect:
            self._close_for_good(ConnectionClosed("the server disconnected this connection (D:1)"))

    def _dispatch_plain(self, transport: WebSocketTransport, messages: list[Any]) -> None:
        """Dispatch the elements of ``M`` straight from their decoded JSON (hot path)."""
        routes = self._routes
        for item in messages:
            if type(item) is dict and len(item) == 3:
                hub = item.get("H")
                method = item.get("M")
                args = item.get("A")
                if type(hub) is str and type(method) is str and type(args) is list:
                    route = routes.get(hub)
                    handlers = None if route is None else route.get(method)
                    if handlers is None:
                        handlers = self._route(hub, method)
                    if handlers:
                        self._call_handlers(handlers, args, hub, method)
                        if self._transport is not transport:
                            return  # a handler stopped the connection
                    continue
            self._dispatch(message_from_json(item))
            if self._transport is not transport:
                return

    def _route(self, hub: str, method: str) -> list[Callable[..., object]]:
        """The handlers for a server spelling of hub and method, cached in ``_routes``."""
        routes = self._routes.get(hub)
        handlers = None if routes is None else routes.get(method)
        if handlers is None:
            proxy = self._proxy_for(hub)
            handlers = [] if proxy is None else proxy._handlers_for(method)
            self._routes.setdefault(hub, {})[method] = handlers
        return handlers

    def _call_handlers(
        self, handlers: list[Callable[..., object]], args: Sequence[Any], hub: str, method: str
    ) -> None:
        for handler in handlers:
            try:
                outcome = handler(*args)
            except Exception:
                self._handler_failed(Failure(), hub, method)
                continue
            if outcome is not None:
                self._watch_outcome(outcome, hub, method)

    def _dispatch(self, message: ServerMessage) -> None:
        kind = type(message)
        if kind is ClientInvocation:
            call: ClientInvocation = message  # type: ignore[assignment]
            if call.state:
                proxy = self._proxy_for(call.hub)
                if proxy is not None:
                    proxy.state.update(call.state)
            self._call_handlers(
                self._route(call.hub, call.method), call.args, call.hub, call.method
            )
        elif kind is Progress:
            progress: Progress = message  # type: ignore[assignment]
            pending = self._pending.get(progress.invocation_id)
            if pending is not None and pending.on_progress is not None:
                try:
                    pending.on_progress(progress.data)
                except Exception:
                    self._handler_failed(
                        Failure(), pending.proxy.name, pending.method + " progress"
                    )
        elif kind is HubResult:
            self._result(message)  # type: ignore[arg-type]
        elif kind is MalformedMessage:
            malformed: MalformedMessage = message  # type: ignore[assignment]
            self._report_error(malformed.error)
        else:
            self.log.debug("ignored a non-hub message in M")

    def _proxy_for(self, spelling: str) -> HubProxy | None:
        return self._proxies.get(spelling.lower())

    def _watch_outcome(self, outcome: object, hub: str, method: str) -> None:
        if isinstance(outcome, Deferred):
            d: Deferred[Any] = outcome
        elif hasattr(outcome, "__await__") and hasattr(outcome, "send"):
            d = ensureDeferred(outcome)  # type: ignore[arg-type]
        else:
            return

        def failed(f: Failure) -> None:
            self._handler_failed(f, hub, method)

        d.addErrback(failed)

    def _handler_failed(self, failure: Failure, hub: str, method: str) -> None:
        self.log.failure("handler for {hub}.{method} raised", failure, hub=hub, method=method)
        kind = failure.type.__name__ if failure.type is not None else "error"
        error = SignalRError(
            f"handler for {hub}.{method} raised {kind}: {failure.getErrorMessage()}"
        )
        self._on_error.fire(error)

    def _result(self, result: HubResult) -> None:
        pending = self._pending.pop(result.invocation_id, None)
        if pending is None:
            self.log.debug("result for unknown or expired invocation {id}", id=result.invocation_id)
            return
        if result.state:
            pending.proxy.state.update(result.state)
        if result.error is not None:
            pending.deferred.errback(
                HubError(
                    result.error,
                    result.error_data,
                    result.is_hub_exception,
                    result.stack_trace,
                    pending.proxy.name,
                    pending.method,
                )
            )
        else:
            pending.deferred.callback(result.result)

    def _report_error(self, error: SignalRError) -> None:
        self.log.error("{error}", error=str(error))
        self._on_error.fire(error)

    # ------------------------------------------------------------------ invoke

    def _invoke(
        self,
        proxy: HubProxy,
        method: str,
        args: Sequence[Any],
        on_progress: Callable[[Any], object] | None,
        timeout: float | None,
    ) -> Deferred[Any]:
        if self._state is not ConnectionState.connected or self._transport is None:
            return fail(
                InvalidStateError(f"cannot invoke {proxy.name}.{method} while {self._state.value}")
            )
        invocation_id = next(self._ids)
        try:
            payload = encode_invocation(proxy.name, method, args, invocation_id, proxy.state)
        except TypeError as e:
            return fail(
                TypeError(f"arguments of {proxy.name}.{method} are not JSON-serialisable: {e}")
            )
        if self._max_message_size is not None and len(payload) > self._max_message_size:
            return fail(
                MessageTooLarge(
                    f"invocation of {proxy.name}.{method} is {len(payload)} bytes, over the "
                    f"{self._max_message_size} byte limit (the server drops WebSocket "
                    "messages over 64 KiB unless configured otherwise)"
                )
            )
        key = str(invocation_id)

        def cancel(d: Deferred[Any]) -> None:
            self._pending.pop(key, None)

        deferred: Deferred[Any] = Deferred(cancel)
        self._pending[key] = _Pending(deferred, proxy, method, on_progress)
        try:
            self._transport.send(payload)
        except SignalRError as e:
            self._pending.pop(key, None)
            return fail(e)
        if timeout is None:
            timeout = self._invoke_timeout
        if timeout is not None:
            deferred.addTimeout(timeout, self._reactor)
        return deferred

    def _fail_pending(self, text: str, cause: BaseException | None = None) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.deferred.errback(ConnectionClosed(text, cause))

    # ------------------------------------------------------------------ keep-alive

    def _start_keepalive(self) -> None:
        self._cancel(self._keepalive_call)
        self._keepalive_call = None
        negotiated = self._negotiated
        if negotiated is None or not negotiated.keep_alive_timeout:
            return
        now = self._seconds()
        self._watch_base = now
        self._slow = False
        self._keepalive_call = self._reactor.callLater(
            _on_grid(now, negotiated.keep_alive_timeout / 9), self._check_keepalive
        )

    def _check_keepalive(self) -> None:
        self._keepalive_call = None
        negotiated = self._negotiated
        if (
            negotiated is None
            or negotiated.keep_alive_timeout is None
            or self._state is not ConnectionState.connected
        ):
            return
        timeout = negotiated.keep_alive_timeout
        now = self._seconds()
        idle = now - max(self._last_frame, self._watch_base)
        if idle >= timeout:
            self.log.warn(
                "no keep-alive for {idle:.1f} s (timeout {timeout:g} s): reconnecting",
                idle=idle,
                timeout=timeout,
            )
            self._drop_and_reconnect(
                ConnectionClosed(f"keep-alive timeout: nothing received for {idle:.1f} s")
            )
            return
        if idle >= timeout * 2 / 3:
            if not self._slow:
                self._slow = True
                self.log.info("connection slow: nothing received for {idle:.1f} s", idle=idle)
                self._on_slow.fire()
        else:
            self._slow = False
        # Check again every (timeout - warning) / 3, like Microsoft's clients, but
        # never later than the moment the timeout would expire.
        delay = min(_on_grid(now, timeout / 9), max(timeout - idle, 0.0) + 1e-3)
        self._keepalive_call = self._reactor.callLater(delay, self._check_keepalive)

    # ------------------------------------------------------------------ reconnect

    def _drop_and_reconnect(self, reason: ConnectionClosed) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._begin_reconnecting(reason)

    def _begin_reconnecting(self, reason: ConnectionClosed) -> None:
        self._cancel(self._keepalive_call)
        self._keepalive_call = None
        if self._inactive_too_long():
            return
        self._set_state(ConnectionState.reconnecting)
        if self._state is not ConnectionState.reconnecting:
            return  # a state-change callback stopped the connection
        self.log.warn("connection lost ({reason}); reconnecting", reason=reason.reason)
        self._fail_pending(_RECONNECTING_TEXT, reason)
        self._on_reconnecting.fire(reason)
        if self._state is not ConnectionState.reconnecting:
            return  # a callback stopped the connection
        negotiated = self._negotiated
        window = 30.0 if negotiated is None else negotiated.disconnect_timeout
        self._deadline_call = self._reactor.callLater(window, self._give_up, window)
        self._reconnect_attempt = 0
        self._schedule_reconnect()

    def _inactive_too_long(self) -> bool:
        """
        Microsoft's clients stop instead of reconnecting when nothing was received for
        DisconnectTimeout + KeepAliveTimeout (the "reconnect window"): the server has
        forgotten the connection by then.  This also ends a loop of reconnects that
        open and close again without a frame.  Only applies with keep-alives on.
        """
        negotiated = self._negotiated
        if negotiated is None or not negotiated.keep_alive_timeout:
            return False
        window = negotiated.disconnect_timeout + negotiated.keep_alive_timeout
        idle = self._seconds() - self._last_frame
        if idle <= window:
            return False
        self._close_for_good(
            ConnectionClosed(
                f"nothing received for {idle:.1f} s, more than the reconnect window of "
                f"{window:g} s (DisconnectTimeout + KeepAliveTimeout): the server has "
                "forgotten this connection"
            )
        )
        return True

    def _schedule_reconnect(self) -> None:
        self._cancel(self._reconnect_call)
        delay = self._reconnect_delay
        if callable(delay):
            delay = delay(self._reconnect_attempt)
        self._reconnect_attempt += 1
        self._reconnect_call = self._reactor.callLater(delay, self._attempt_reconnect)

    def _attempt_reconnect(self) -> None:
        self._reconnect_call = None
        token = self._token
        if self._state is not ConnectionState.reconnecting or token is None:
            return
        if self._inactive_too_long():
            return
        url = self._endpoints.reconnect(
            Transport.web_sockets, token, self._message_id, self._groups_token, next(self._tid)
        )
        self.log.debug("reconnecting to {url}", url=redact_url(url))
        self._open_transport(websocket_url(url))
        # An upgrade that never completes must not use up the whole window.
        negotiated = self._negotiated
        limit = 5.0 if negotiated is None else negotiated.transport_connect_timeout
        self._attempt_call = self._reactor.callLater(
            limit, self._attempt_timed_out, self._transport, limit
        )

    def _attempt_timed_out(self, transport: WebSocketTransport | None, limit: float) -> None:
        self._attempt_call = None
        if transport is None or transport is not self._transport:
            return
        self._transport = None
        transport.abort()
        self.log.info("reconnect attempt got no answer within {limit:g} s", limit=limit)
        self._schedule_reconnect()

    def _give_up(self, window: float) -> None:
        self._deadline_call = None
        self._close_for_good(
            ConnectionClosed(
                f"Couldn't reconnect within the configured timeout of {window:g} s, disconnecting."
            )
        )

    def _close_for_good(self, reason: ConnectionClosed) -> None:
        """Lost for good (no /abort, like Microsoft's clients after a timeout or E)."""
        if self._state is ConnectionState.disconnected:
            return
        self.log.error("connection closed: {reason}", reason=reason.reason)
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._token = None
        waiter = self._start_waiter
        if waiter is not None and not waiter.called:
            waiter.errback(reason)
        self._last_close = reason
        closed_waiters = self._end_session(reason)
        self._close_pool()
        for d in closed_waiters:
            d.errback(reason)
        self._on_closed.fire(reason)

    # ------------------------------------------------------------------ stop

    async def _stop(self) -> None:
        if self._state is ConnectionState.disconnected and self._start_task is None:
            await self._close_pool()
            return
        self._stopping = True
        start_task = self._start_task
        if start_task is not None:
            start_task.cancel()
        token, self._token = self._token, None
        transport, self._transport = self._transport, None
        self._last_close = None
        # Taken now: a start() after this stop() completes has waiters of its own.
        closed_waiters = self._end_session(None)
        if token is not None:
            await self._fire_abort(token)
        if transport is not None:
            await transport.close()
        await self._close_pool()
        self.log.info("stopped")
        for d in closed_waiters:
            d.callback(None)
        self._on_closed.fire(None)

    # ------------------------------------------------------------------ helpers

    def _end_session(self, reason: ConnectionClosed | None) -> list[Deferred[None]]:
        """
        What every end of a session (stop, lost for good, failed start) does: cancel
        the timers, fail pending invocations and when_connected() waiters, and become
        disconnected.

        :param reason: why it ended; ``None`` for :meth:`stop`.
        :returns: the when_closed() waiters, for the caller to fire once its own
            cleanup (``/abort``, closing the socket) is done.
        """
        self._cancel_timers()
        self._fail_pending(_DISCONNECTED_TEXT, reason)
        self._fail_connected_waiters(reason or ConnectionClosed("stop() was called"))
        closed_waiters, self._closed_waiters = self._closed_waiters, []
        self._set_state(ConnectionState.disconnected)
        return closed_waiters

    def _cancel_timers(self) -> None:
        for call in (
            self._keepalive_call,
            self._reconnect_call,
            self._deadline_call,
            self._attempt_call,
        ):
            self._cancel(call)
        self._keepalive_call = self._reconnect_call = None
        self._deadline_call = self._attempt_call = None

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

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


def _on_grid(now: float, interval: float) -> float:
    """
    The delay to the next multiple of ``interval`` (at least half an interval away).

    Keep-alive checks of all the connections that share a KeepAliveTimeout land on
    the same instants, so thousands of idle connections wake the reactor a few times
    per interval instead of thousands of times.
    """
    delay = interval - (now % interval)
    return delay if delay >= interval / 2 else delay + interval

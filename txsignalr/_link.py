"""
The link: what goes over the network for one connection, below its state machine —
negotiate, the transports in fallback order, ``/start``, ``/abort``, the receive
channel in use and the sends in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsignalr._classic import ClassicSession
from txsignalr._core_session import MAX_NEGOTIATIONS
from txsignalr._http import HttpSession
from txsignalr._longpolling import LongPollingTransport
from txsignalr._protocol import (
    ClassicRedirect,
    NegotiateResponse,
    Transport,
    parse_response,
    redact_url,
)
from txsignalr._sse import ServerSentEventsTransport
from txsignalr._transport import ITransport, TransportFactory, TransportRequest, TransportSink
from txsignalr._websocket import WebSocketTransport
from txsignalr.errors import (
    ConnectionClosed,
    NegotiationError,
    NoTransportError,
    SignalRError,
    StartError,
)

__all__ = ["DEFAULT_TRANSPORT_FACTORIES", "ClassicLink", "Link", "OpeningSession"]

#: The transports txsignalr has, by wire name.
DEFAULT_TRANSPORT_FACTORIES: Mapping[Transport, TransportFactory] = {
    Transport.web_sockets: WebSocketTransport,
    Transport.server_sent_events: ServerSentEventsTransport,
    Transport.long_polling: LongPollingTransport,
}

#: What the receive channel of each transport is called in messages.
CHANNEL = {
    Transport.web_sockets: "WebSocket",
    Transport.server_sent_events: "event stream",
    Transport.long_polling: "long poll",
}


class _AttemptFailed(Exception):
    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class OpeningSession(Protocol):
    """What :class:`Link` needs of a family session to open its transports."""

    @property
    def connect_timeout(self) -> float:
        """Seconds an attempt may take until the channel is ready."""

    def skip_reason(self, transport: Transport) -> str | None:
        """Why ``transport`` is not worth trying, or ``None``."""

    def connect_request(self, transport: Transport) -> TransportRequest:
        """What opens ``transport``."""


class Link:
    """
    The receive channel, the transport fallback and the sends of one connection, for
    either family.

    :param reactor: for the transports and the deadlines.
    :param session: the family session (URLs, token).
    :param http: the connection's HTTP side.
    :param factories: how each transport is built.
    :param sink: where transports report (the connection).
    :param log: the connection's logger.
    :param abort_timeout: seconds ``/abort`` may take.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        session: OpeningSession,
        http: HttpSession,
        factories: Mapping[Transport, TransportFactory],
        sink: TransportSink,
        log: Logger,
        abort_timeout: float,
    ) -> None:
        self._reactor = reactor
        self._session = session
        self._http = http
        self._factories = factories
        self._sink = sink
        self._log = log
        self._abort_timeout = abort_timeout
        #: the receive channel, while one is open or opening
        self.transport: ITransport | None = None
        #: the transport the connection uses (or is trying, while starting)
        self.in_use: Transport | None = None
        self._waiter: Deferred[Any] | None = None
        self._sends: set[Deferred[bytes]] = set()

    # -- the receive channel

    def open(self, request: TransportRequest) -> ITransport:
        """Build and open the transport for ``request``; it becomes the current one."""
        transport = self._factories[request.transport](
            self._reactor, request, self._http, self._sink
        )
        self.transport = transport
        transport.open()
        return transport

    def detach(self) -> ITransport | None:
        """Forget the current transport (without closing it); returns it."""
        transport, self.transport = self.transport, None
        return transport

    def drop(self) -> None:
        """Abort the current transport, telling nobody."""
        transport = self.detach()
        if transport is not None:
            transport.abort()

    # -- starting

    async def open_first(
        self,
        order: Iterable[Transport],
        attempting: Callable[[], None],
        renew: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """
        Try the transports in order until one delivers the init frame (reported with
        :meth:`init_arrived`); a failed attempt is stopped silently, without ``/abort``.

        :param attempting: called before each attempt (to drop what an earlier one
            buffered).
        :param renew: awaited before an attempt that follows a failed one (ASP.NET
            Core negotiates afresh: the server may have bound the old connection
            token to the transport that failed).
        :raises NoTransportError: when none worked.
        """
        attempts: list[tuple[str, str]] = []
        status: int | None = None
        failed = False
        for transport in order:
            skip = self._session.skip_reason(transport)
            if skip is None and failed and renew is not None:
                # Only right before a transport is really tried, as Microsoft's client.
                await renew()
                failed = False
                skip = self._session.skip_reason(transport)
            if skip is not None:
                attempts.append((transport.value, skip))
                continue
            attempting()
            try:
                await self._attempt(transport)
                return
            except _AttemptFailed as e:
                self._log.info(
                    "{transport} could not connect: {reason}",
                    transport=transport.value,
                    reason=e.reason,
                )
                attempts.append((transport.value, e.reason))
                failed = True
                if e.status is not None:
                    status = e.status
        raise NoTransportError(attempts, status)

    async def _attempt(self, transport: Transport) -> None:
        self.in_use = transport
        waiter: Deferred[Any] = Deferred()
        self._waiter = waiter
        self.open(self._session.connect_request(transport))
        deadline = self._session.connect_timeout
        waiter.addTimeout(deadline, self._reactor)
        try:
            await waiter
        except (TimeoutError, ConnectionClosed) as e:
            self.drop()
            if isinstance(e, TimeoutError):
                raise _AttemptFailed(
                    f"no init frame from the server within {deadline:g} s (TransportConnectTimeout)"
                ) from None
            raise _AttemptFailed(e.reason, e.status) from None
        finally:
            self._waiter = None

    def init_arrived(self) -> None:
        """The init frame (``S:1``) arrived while starting."""
        waiter = self._waiter
        if waiter is not None and not waiter.called:
            waiter.callback(None)

    def start_failed(self, reason: ConnectionClosed) -> None:
        """The channel was lost (or the connection closed) while starting."""
        waiter = self._waiter
        if waiter is not None and not waiter.called:
            waiter.errback(reason)

    # -- sending

    def send(self, payload: bytes) -> Deferred[bytes]:
        """
        Send through the current transport.  What is still in flight when
        :meth:`cancel_sends` runs is cancelled.
        """
        assert self.transport is not None
        sent = self.transport.send(payload)
        if not sent.called:
            self._sends.add(sent)

            def settled(result: object) -> object:
                self._sends.discard(sent)
                return result

            sent.addBoth(settled)
        return sent

    def cancel_sends(self) -> None:
        """Cancel every send still in flight."""
        sends, self._sends = self._sends, set()
        for d in sends:
            d.cancel()


class ClassicLink(Link):
    """The link of a classic connection: negotiate, ``/start`` and ``/abort`` too."""

    def __init__(
        self,
        reactor: IReactorTime,
        session: ClassicSession,
        http: HttpSession,
        factories: Mapping[Transport, TransportFactory],
        sink: TransportSink,
        log: Logger,
        abort_timeout: float,
    ) -> None:
        super().__init__(reactor, session, http, factories, sink, log, abort_timeout)
        self._classic = session

    async def negotiate(self, hub_names: Iterable[str]) -> NegotiateResponse:
        """
        Negotiate from the user's URL, following Azure SignalR redirects (their
        ``AccessToken`` becomes the bearer token), at most 100 times.

        :raises NegotiationError: when negotiate fails or its answer cannot be used.
        """
        session = self._classic
        session.restart()
        names = list(hub_names)
        for _ in range(MAX_NEGOTIATIONS):
            try:
                status, body = await self._http.request(
                    "GET", session.negotiate_url(names), "negotiate"
                )
            except SignalRError as e:
                raise NegotiationError(str(e)) from e
            try:
                negotiated = session.negotiated_answer(status, body)
            except ClassicRedirect as redirect:
                session.follow_redirect(redirect.url)
                if redirect.access_token is not None:
                    self._http.set_bearer(redirect.access_token, redirect.url)
                self._log.info("negotiate redirected to {url}", url=redact_url(redirect.url))
                continue
            self._log.debug("negotiated {negotiated!r}", negotiated=negotiated)
            return negotiated
        raise NegotiationError("Negotiate redirection limit exceeded.")

    async def send_start(self) -> None:
        """
        ``/start``, once the init frame arrived.  Cancelling (stop()) cancels the
        request; losing the channel meanwhile fails it.

        :raises StartError: when ``/start`` fails or does not answer ``started``.
        """
        transport = self.in_use
        assert transport is not None
        request = Deferred.fromCoroutine(
            self._http.request("GET", self._classic.start_url(transport), "start")
        )
        waiter: Deferred[tuple[int, bytes]] = Deferred(lambda _: request.cancel())
        self._waiter = waiter

        def forward(result: object) -> None:
            if not waiter.called:
                waiter.callback(result)  # type: ignore[arg-type]
            elif isinstance(result, Failure):
                result.trap(CancelledError, SignalRError)

        request.addBoth(forward)
        try:
            status, body = await waiter
        except ConnectionClosed as e:
            request.cancel()
            raise StartError(
                f"Error during start request: the {CHANNEL[transport]} closed ({e.reason})"
            ) from None
        except CancelledError:
            raise
        except SignalRError as e:
            raise StartError(f"Error during start request: {e}") from None
        finally:
            self._waiter = None
        if status != 200:
            raise StartError("Error during start request. Stopping the connection.", status, body)
        if parse_response(body) != "started":
            raise StartError(
                f"Invalid start response: {body[:200]!r}. Stopping the connection.",
                status,
                body,
            )

    def fire_abort(self, token: str) -> Deferred[None]:
        """POST /abort; the Deferred fires when answered or failed (never errbacks)."""
        transport = self.in_use or Transport.web_sockets
        url = self._classic.abort_url(transport, token)
        d = Deferred.fromCoroutine(
            self._http.request("POST", url, "abort", min(self._http.timeout, self._abort_timeout))
        )

        def done(result: tuple[int, bytes]) -> None:
            if result[0] != 200:
                self._log.warn("/abort answered HTTP {status}", status=result[0])

        def failed(f: Failure) -> None:
            self._log.warn("/abort failed: {error}", error=f.getErrorMessage())

        return d.addCallbacks(done, failed)

"""
The ASP.NET Core family under :class:`~txsignalr.HubConnection`: negotiate (redirects
and bearer tokens), the transports in fallback order, the handshake, the receive path,
pings and the server timeout, and reconnecting by policy with a fresh negotiate each
time (as Microsoft's TypeScript client's ``HubConnection`` and ``HttpConnection``).
The hub calls themselves are :class:`~txsignalr._core_calls.CoreCalls`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsignalr._core_calls import CoreCalls
from txsignalr._core_codecs import JSON, HubCodec
from txsignalr._core_negotiate import CoreNegotiateResponse, Redirect
from txsignalr._core_protocol import (
    Close,
    Completion,
    HandshakeResponse,
    Invocation,
    Ping,
    StreamItem,
)
from txsignalr._core_resume import STATEFUL_KINDS, StatefulResume
from txsignalr._core_session import CoreSession
from txsignalr._http import HttpSession
from txsignalr._keepalive import KeepAliveWatch
from txsignalr._link import Link
from txsignalr._protocol import Transport, redact_url
from txsignalr._routing import Router
from txsignalr._state import ConnectionState
from txsignalr._stateful import DEFAULT_BUFFER_SIZE, MessageBuffer
from txsignalr._transport import ITransport, TransportFactory
from txsignalr.errors import (
    ConnectionClosed,
    HandshakeError,
    MessageTooLarge,
    NegotiationError,
    ProtocolError,
    SignalRError,
    StartError,
)

if TYPE_CHECKING:
    from txsignalr._connection import HubConnection

__all__ = ["DEFAULT_CORE_RETRY_DELAYS", "CoreEngine", "CorePolicy", "core_policy"]

#: Microsoft's default ``withAutomaticReconnect()`` delays: then it gives up.
DEFAULT_CORE_RETRY_DELAYS = (0.0, 2.0, 10.0, 30.0)

#: ``policy(attempt) -> seconds`` before attempt number ``attempt`` (0 first), or
#: ``None`` to give up.
CorePolicy = Callable[[int], "float | None"]

#: "ask the policy" for _schedule_attempt
_NEXT: Any = object()

_TIMEOUT_TEXT = "Server timeout elapsed without receiving a message from the server."


def core_policy(delay: Any) -> CorePolicy | None:
    """
    The reconnect policy for ``reconnect_delay``: ``None`` (no reconnecting), seconds
    (always that delay), a sequence of seconds (one per attempt, then give up) or a
    ``policy(attempt) -> seconds | None``.
    """
    if delay is None:
        return None
    if callable(delay):
        policy: CorePolicy = delay
        return policy
    if isinstance(delay, (int, float)):
        seconds = float(delay)
        if seconds < 0:
            raise ValueError("reconnect_delay must not be negative")
        return lambda attempt: seconds
    delays = tuple(float(d) for d in delay)
    if any(d < 0 for d in delays):
        raise ValueError("reconnect_delay must not hold negative delays")
    return lambda attempt: delays[attempt] if attempt < len(delays) else None


class CoreEngine:
    """
    One ASP.NET Core hub connection's machinery; :class:`HubConnection` owns the state,
    the events and the waiters and calls in here when its family is Core.

    :param owner: the connection (state, events, waiters).
    :param router: where client-method handlers are found, under ``hub``.
    :param hub: the router's name for this connection's handlers.
    """

    def __init__(
        self,
        owner: HubConnection,
        reactor: IReactorTime,
        url: str,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        http: HttpSession,
        factories: Mapping[Transport, TransportFactory],
        log: Logger,
        router: Router,
        hub: str,
        *,
        transports: tuple[Transport, ...],
        access_token_factory: Callable[[], Any] | None,
        keepalive_interval: float | None,
        server_timeout: float | None,
        reconnect_policy: CorePolicy | None,
        max_receive_size: int,
        invoke_timeout: float | None,
        skip_negotiation: bool,
        stop_timeout: float,
        codec: HubCodec = JSON,
        stateful_reconnect: bool = False,
        stateful_buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        self._owner = owner
        self._reactor = reactor
        self._seconds = reactor.seconds
        self._http = http
        self._log = log
        self._router = router
        self._hub = hub
        self._transports = transports
        self._token_factory = access_token_factory
        self._keepalive_interval = keepalive_interval
        self._server_timeout = server_timeout
        self._policy = reconnect_policy
        self._skip = skip_negotiation
        self._stop_timeout = stop_timeout
        self.session = CoreSession(
            url,
            query,
            keepalive_interval=keepalive_interval or 0.0,
            server_timeout=server_timeout or 0.0,
            max_message_size=max_receive_size,
            codec=codec,
            stateful_reconnect=stateful_reconnect,
        )
        self._buffer_size = stateful_buffer_size
        self.link = Link(reactor, self.session, http, factories, self, log, stop_timeout)
        self._watch = KeepAliveWatch(reactor, self._slow, self._timed_out)
        #: invocations, streams, uploads, client results and the send queue
        self.calls = CoreCalls(
            reactor, self.session, self.link, router, hub, log, invoke_timeout, lambda: owner.state
        )
        self._handshake: Deferred[None] | None = None
        self._buffer: list[Any] = []
        self._ping_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._attempt_task: Deferred[None] | None = None
        self._attempts = 0
        self._last_reason: ConnectionClosed | None = None
        #: stateful reconnect: the receive filter, the Acks and the resumes
        self.stateful = StatefulResume(self)

    # ------------------------------------------------------------------ state

    @property
    def negotiated(self) -> CoreNegotiateResponse | None:
        return self.session.negotiated

    @property
    def connection_id(self) -> str | None:
        return self.session.connection_id

    @property
    def loggable_id(self) -> str | None:
        """The connection id for logs and reprs: hidden after a version 0 negotiate,
        where it is also the connection token."""
        negotiated = self.session.negotiated
        if negotiated is not None and negotiated.negotiate_version == 0:
            return "<hidden: negotiate v0 uses it as the token>"
        return self.session.connection_id

    def _connected(self) -> bool:
        return self._owner.state is ConnectionState.connected

    # ------------------------------------------------------------------ connecting

    async def _authorize(self) -> None:
        await self._http.authorize(self._token_factory)

    async def connect(self, first: tuple[int, bytes] | None = None) -> None:
        """
        Negotiate (following redirects), open the first transport that works and do
        the handshake.

        :param first: a negotiate answer already received (by family detection).
        """
        session = self.session
        self._buffer = []
        if self._skip:
            await self._authorize()
            session.skip_negotiation()
        else:
            await self._negotiate(first)
        order = self._transports
        if not self._skip and self.session.negotiated is not None:
            # The server's list decides what exists; the user's order what comes first.
            offered = set(session.transports())
            order = tuple(t for t in order if t in offered) + tuple(
                t for t in order if t not in offered
            )
        renew = None if self._skip else self._negotiate
        await self.link.open_first(order, self._buffer.clear, renew)
        self.calls.buffer = MessageBuffer(self._buffer_size) if session.stateful else None
        self.stateful.new_connection()
        await self._do_handshake()

    async def _negotiate(self, first: tuple[int, bytes] | None = None) -> None:
        """
        Negotiate from the user's URL, following redirects.  Every negotiate starts
        with the factory's token, not a redirect's (as Microsoft's client, which asks
        the factory before each negotiate).
        """
        session = self.session
        if first is None:
            await self._authorize()
        session.restart()
        while True:
            if first is not None:
                status, body = first
                first = None
            else:
                url = session.negotiate_url()
                try:
                    status, body = await self._http.request("POST", url, "negotiate")
                except SignalRError as e:
                    raise NegotiationError(str(e)) from e
            answer = session.negotiated_answer(status, body)
            if type(answer) is Redirect:
                self._log.info("negotiate redirected to {url}", url=redact_url(answer.url))
                if answer.access_token is not None:
                    self._http.set_bearer(answer.access_token, answer.url)
                continue
            self._log.debug("negotiated {negotiated!r}", negotiated=answer)
            break

    async def _do_handshake(self) -> None:
        waiter: Deferred[None] = Deferred()
        self._handshake = waiter
        limit = self.session.handshake_timeout
        waiter.addTimeout(limit, self._reactor)
        self._watch.last_received = self._seconds()

        def not_sent(f: Failure) -> None:
            self._handshake_failed(ConnectionClosed(f"handshake not sent: {f.getErrorMessage()}"))

        try:
            self._write(self.session.handshake()).addErrback(not_sent)
            await waiter
        except TimeoutError:
            raise HandshakeError(
                f"no handshake answer from the server within {limit:g} s"
            ) from None
        except ConnectionClosed as e:
            raise HandshakeError(f"the connection closed during the handshake: {e.reason}") from e
        finally:
            self._handshake = None

    def _handshake_failed(self, error: SignalRError) -> None:
        waiter = self._handshake
        if waiter is not None and not waiter.called:
            waiter.errback(error)

    async def run_start(self, first: tuple[int, bytes] | None) -> None:
        """start(): connect, then become connected; a failure ends the session."""
        owner = self._owner
        try:
            await self.connect(first)
        except Exception as e:
            if owner._stopping:
                raise ConnectionClosed("stop() was called before start() completed") from None
            self._teardown()
            reason = ConnectionClosed(f"start() failed: {e}", e)
            # Fired before anything else can happen (a stop() in the meantime).
            for d in owner._end_common(reason):
                d.errback(reason)
            self._http.close_idle()
            if isinstance(e, (SignalRError, CancelledError)):
                raise
            raise StartError(f"start failed: {e!r}") from e
        owner._set_state(ConnectionState.connected)
        if not self._connected():
            return  # a state-change callback stopped the connection
        self._log.info(
            "connected to {url} over {transport} (ASP.NET Core, connection {connection_id})",
            url=redact_url(owner._url),
            transport=self._transport_name(),
            connection_id=self.loggable_id,
        )
        self._became_connected()

    def _became_connected(self) -> None:
        # The pooled HTTP socket of negotiate (and of the handshake's POST over SSE and
        # long polling) is not needed while the connection sits idle: release it, so an
        # idle connection holds one socket, as a classic one does.
        self._http.close_idle()
        self._start_keepalive()
        buffered, self._buffer = self._buffer, []
        for message in buffered:
            if not self._connected():
                break
            self._dispatch(message)

    def _transport_name(self) -> str:
        t = self.link.in_use
        return "no transport" if t is None else t.value

    # ------------------------------------------------------------------ transport sink

    def transport_opened(self, transport: ITransport) -> None:
        if transport is self.link.transport:
            self.link.init_arrived()

    def data_received(self, transport: ITransport, data: bytes) -> None:
        if transport is not self.link.transport:
            return
        self._watch.last_received = self._seconds()
        try:
            messages = self.session.receive_plain(data)
        except HandshakeError as e:
            self._handshake_failed(e)
            return
        except MessageTooLarge as e:
            if self._handshake is not None:
                self._handshake_failed(e)
            else:
                self._owner._report_error(e)
                self._close_for_good(ConnectionClosed(str(e), e))
            return
        except ProtocolError as e:
            if self._handshake is not None:
                self._handshake_failed(e)
            else:
                # An unreadable length prefix: nothing after it can be read.
                self._owner._report_error(e)
                self.link.drop()
                self._lost(ConnectionClosed(str(e), e))
            return
        connected = self._connected()
        calls = self.calls
        buffer = calls.buffer
        routes, hub, call_handlers = calls.plain_lane()
        for message in messages:
            kind = type(message)
            if kind is tuple:
                # a plain non-blocking call (the fast lane): straight to its handlers
                # when nothing else has to see it first
                target, arguments = message  # type: ignore[misc]
                if connected and buffer is None:
                    route = routes.get(hub)
                    handlers = None if route is None else route.get(target)
                    if handlers:
                        call_handlers(handlers, arguments, hub, target)
                    else:
                        calls.plain_call(target, arguments)  # routes it, or warns
                    if transport is not self.link.transport:
                        return
                    continue
                message = Invocation(target, tuple(arguments))
                kind = Invocation
            if kind is HandshakeResponse:
                waiter = self._handshake
                if waiter is not None and not waiter.called:
                    waiter.callback(None)  # start() may become connected right here
                connected = self._connected()
                continue
            if buffer is not None and (kind in STATEFUL_KINDS or buffer.awaiting_sequence):
                if not self.stateful.receive(buffer, message):
                    if self.calls.buffer is not buffer:
                        return  # the connection was lost over it
                    continue
            if not connected:
                self._buffer.append(message)
                continue
            self._dispatch(message)
            if transport is not self.link.transport:
                return

    def transport_lost(self, transport: ITransport, reason: ConnectionClosed) -> None:
        if transport is not self.link.transport:
            return
        self.link.detach()
        if self._handshake is not None:
            self._handshake_failed(reason)
            return
        if isinstance(reason.cause, MessageTooLarge) and self._connected():
            # Reconnecting would only fetch the same message again.
            self._owner._report_error(reason.cause)
            self._close_for_good(reason)
        elif self._connected() and not self.calls.resuming:
            self._lost(reason)
        else:
            self.link.start_failed(reason)

    def _lost(self, reason: ConnectionClosed) -> None:
        """The link is gone while connected: resume it statefully, or reconnect."""
        if self.calls.buffer is not None and self.link.in_use is Transport.web_sockets:
            self.stateful.begin(reason)
        else:
            self._begin_reconnecting(reason)

    # ------------------------------------------------------------------ receive path

    def _dispatch(self, message: Any) -> None:
        kind = type(message)
        if kind is Invocation:
            self.calls.client_call(message)
        elif kind is StreamItem:
            self.calls.stream_item(message)
        elif kind is Completion:
            self.calls.completion(message)
        elif kind is Ping:
            pass
        elif kind is Close:
            self._server_closed(message)
        elif isinstance(message, ProtocolError):
            self._owner._report_error(message)
        else:
            self._log.debug("ignored {kind}", kind=kind.__name__)

    def _server_closed(self, message: Close) -> None:
        if message.error is not None:
            reason = ConnectionClosed(f"Server returned an error on close: {message.error}")
        else:
            reason = ConnectionClosed("the server closed the connection")
        self.link.drop()
        if message.allow_reconnect:
            self._begin_reconnecting(reason)
        else:
            self._close_for_good(reason)

    # ------------------------------------------------------------------ sending

    def _write(self, payload: bytes) -> Deferred[None]:
        """Send now (the handshake); no queue, no state check."""
        self.calls.last_sent = self._seconds()
        d = self.link.send(payload)
        return d.addCallback(lambda _: None)

    # ------------------------------------------------------------------ keep-alive

    def _start_keepalive(self) -> None:
        self._stop_keepalive()
        if not self.session.uses_keepalive(self.link.in_use or Transport.web_sockets):
            return
        self._watch.start(self._server_timeout)
        if self._keepalive_interval:
            self._arm_ping()

    def _stop_keepalive(self) -> None:
        self._watch.stop()
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None

    def _arm_ping(self) -> None:
        interval = self._keepalive_interval
        assert interval
        delay = max(self.calls.last_sent + interval - self._seconds(), 0.0)
        self._ping_call = self._reactor.callLater(delay, self._ping_due)

    def _ping_due(self) -> None:
        self._ping_call = None
        interval = self._keepalive_interval
        if not interval or not self._connected():
            return
        calls = self.calls
        if self._seconds() - calls.last_sent >= interval:
            calls.write(self.session.ping(), tracked=False).addErrback(
                calls.log_send_failure, "ping"
            )
        self._arm_ping()

    def _slow(self, idle: float) -> None:
        self._log.info("connection slow: nothing received for {idle:.1f} s", idle=idle)
        self._owner._on_slow.fire()

    def _timed_out(self, idle: float) -> None:
        if not self._connected():
            return
        self._log.warn(
            "nothing received for {idle:.1f} s (server_timeout {timeout:g} s)",
            idle=idle,
            timeout=self._server_timeout,
        )
        self.link.drop()
        self._lost(ConnectionClosed(_TIMEOUT_TEXT))

    # ------------------------------------------------------------------ reconnect

    def _begin_reconnecting(self, reason: ConnectionClosed) -> None:
        self._stop_keepalive()
        self.stateful.stop()
        self.stateful.cancel_ack()
        first = None if self._policy is None else self._delay(0)
        if first is None:
            # No reconnecting at all, as Microsoft's client: closed with the reason.
            self._close_for_good(reason)
            return
        owner = self._owner
        owner._set_state(ConnectionState.reconnecting)
        if owner.state is not ConnectionState.reconnecting:
            return  # a state-change callback stopped the connection
        self.calls.end(reason)
        if owner.state is not ConnectionState.reconnecting:
            return  # a failed call's callback stopped the connection
        self._log.warn("connection lost ({reason}); reconnecting", reason=reason.reason)
        owner._on_reconnecting.fire(reason)
        if owner.state is not ConnectionState.reconnecting:
            return
        self._attempts = 0
        self._last_reason = reason
        self._schedule_attempt(first)

    def _delay(self, attempt: int) -> float | None:
        assert self._policy is not None
        try:
            return self._policy(attempt)
        except Exception as e:
            self._log.error("the reconnect policy raised {error!r}: giving up", error=e)
            return None

    def _schedule_attempt(self, delay: float | None = _NEXT) -> None:
        if delay is _NEXT:
            delay = self._delay(self._attempts)
        last = self._last_reason
        if delay is None:
            text = last.reason if last is not None else "connection lost"
            self._close_for_good(
                ConnectionClosed(
                    f"reconnecting gave up after {self._attempts} attempt(s); last: {text}",
                    last,
                )
            )
            return
        self._attempts += 1
        self._retry_call = self._reactor.callLater(max(float(delay), 0.0), self._attempt)

    def _attempt(self) -> None:
        self._retry_call = None
        task = Deferred.fromCoroutine(self.connect())
        self._attempt_task = task
        task.addCallbacks(self._attempt_succeeded, self._attempt_failed)

    def _attempt_succeeded(self, _: None) -> None:
        self._attempt_task = None
        owner = self._owner
        if owner.state is not ConnectionState.reconnecting:
            self.link.drop()
            return
        owner._set_state(ConnectionState.connected)
        if not self._connected():
            return  # a state-change callback stopped the connection
        self._log.info(
            "reconnected over {transport} (connection {connection_id})",
            transport=self._transport_name(),
            connection_id=self.loggable_id,
        )
        self._became_connected()
        if self._connected():
            owner._on_reconnected.fire()

    def _attempt_failed(self, failure: Failure) -> None:
        self._attempt_task = None
        self.stateful.cancel_ack()
        self.link.drop()
        if failure.check(CancelledError) or self._owner.state is not ConnectionState.reconnecting:
            return
        error = failure.value
        text = str(error) if isinstance(error, Exception) else failure.getErrorMessage()
        self._log.info("reconnect attempt failed: {error}", error=text)
        self._last_reason = ConnectionClosed(f"reconnect attempt failed: {text}", error)
        self._schedule_attempt()

    # ------------------------------------------------------------------ ending

    def _teardown(self, reason: ConnectionClosed | None = None) -> None:
        """Stop every timer, the link and every pending call."""
        self._stop_keepalive()
        self.stateful.stop()
        self.stateful.cancel_ack()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        task, self._attempt_task = self._attempt_task, None
        if task is not None:
            task.cancel()
        self.link.drop()
        self.calls.end(reason)
        self._buffer = []

    def _close_for_good(self, reason: ConnectionClosed) -> None:
        owner = self._owner
        if owner.state is ConnectionState.disconnected:
            return
        self._log.error("connection closed: {reason}", reason=reason.reason)
        # A start() still waiting (handshake) learns why.
        self._handshake_failed(reason)
        self.link.start_failed(reason)
        self._teardown(reason)
        owner._last_close = reason
        waiters = owner._end_common(reason)
        self._http.close_idle()
        for d in waiters:
            d.errback(reason)
        owner._on_closed.fire(reason)

    async def stop(self) -> list[Deferred[None]]:
        """
        Say Close, end the transport (long polling: ``DELETE``), fail what is pending.

        :returns: the when_closed() waiters, for the owner to fire.
        """
        link = self.link
        transport = link.transport
        in_use = link.in_use
        was_connected = self._connected() and transport is not None and not self.calls.resuming
        link.detach()
        delete_url = None
        if in_use is Transport.long_polling and self.session.negotiated is not None:
            delete_url = self.session.delete_url()
        self._teardown(None)
        waiters = self._owner._end_common(None)
        if was_connected and transport is not None:
            sent = transport.send(self.session.close())
            sent.addTimeout(self._stop_timeout, self._reactor)
            try:
                await sent
            except Exception as e:
                self._log.info("Close message not sent: {error}", error=str(e))
        if delete_url is not None:
            try:
                status, _ = await self._http.request(
                    "DELETE", delete_url, "stop", min(self._http.timeout, self._stop_timeout)
                )
                if status not in (200, 202, 204, 404):
                    # 404: the Close before it already ended the connection.
                    self._log.info("DELETE answered HTTP {status}", status=status)
            except SignalRError as e:
                self._log.info("DELETE failed: {error}", error=str(e))
        if transport is not None:
            await transport.close()
        self.session.forget()
        return waiters

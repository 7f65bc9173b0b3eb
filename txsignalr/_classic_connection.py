"""
The classic ASP.NET SignalR 2.x family under :class:`~txsignalr.HubConnection`:
negotiate, the transports in fallback order, the init frame and ``/start``, the receive
path (frames, cursors, groups tokens), invocations with progress and hub state, the
keep-alive watch, ``/reconnect`` within the server's window, and ``/abort`` on stop;
the counterpart of :class:`~txsignalr._core_connection.CoreEngine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsignalr._classic import POLL_MARGIN, ClassicSession
from txsignalr._http import HttpSession
from txsignalr._invocations import Invocations, Pending
from txsignalr._keepalive import KeepAliveWatch
from txsignalr._link import ClassicLink
from txsignalr._protocol import (
    ClientInvocation,
    HubResult,
    MalformedMessage,
    PersistentResponse,
    Progress,
    ServerMessage,
    Transport,
    redact_url,
)
from txsignalr._reconnect import ReconnectLoop, RetryPolicy
from txsignalr._routing import HubProxy, Router
from txsignalr._state import ConnectionState
from txsignalr._transport import ITransport, TransportFactory
from txsignalr.errors import (
    ConnectionClosed,
    InvalidStateError,
    MessageTooLarge,
    ProtocolError,
    SignalRError,
    StartError,
)

if TYPE_CHECKING:
    from txsignalr._connection import HubConnection

__all__ = ["ClassicEngine"]

_RECONNECTING_TEXT = "Connection started reconnecting before invocation result was received."
_DISCONNECTED_TEXT = "Connection was disconnected before invocation result was received."
_PERMANENT_RECONNECT_STATUSES = frozenset({400, 401, 403, 404})


class ClassicEngine:
    """
    One classic hub connection's machinery; :class:`HubConnection` owns the state,
    the events and the waiters and calls in here when its family is classic.  It is
    the transports' sink.
    """

    def __init__(
        self,
        owner: HubConnection,
        reactor: IReactorTime,
        session: ClassicSession,
        http: HttpSession,
        factories: Mapping[Transport, TransportFactory],
        log: Logger,
        router: Router,
        *,
        url: str,
        transports: tuple[Transport, ...],
        access_token_factory: Callable[[], Any] | None,
        reconnect_delay: RetryPolicy,
        max_message_size: int | None,
        invoke_timeout: float | None,
        abort_timeout: float,
    ) -> None:
        self._owner = owner
        self._session = session
        self._http = http
        self._log = log
        self._router = router
        self._url = url
        self._transports = transports
        self._token_factory = access_token_factory
        self._max_message_size = max_message_size
        self._invoke_timeout = invoke_timeout
        self._seconds = reactor.seconds
        self._link = ClassicLink(reactor, session, http, factories, self, log, abort_timeout)
        self._invocations = Invocations(reactor, self._progress_failed)
        self._watch = KeepAliveWatch(reactor, self._slow, self._keepalive_lost)
        self._reconnect = ReconnectLoop(
            reactor, reconnect_delay, self._attempt_reconnect, self._give_up, self._policy_gave_up
        )
        self._dispatch_other = self._dispatch
        self._buffer: list[ServerMessage] = []

    @property
    def link(self) -> ClassicLink:
        """The connection's link (its transport in use)."""
        return self._link

    # ------------------------------------------------------------------ start

    async def run_start(self, authorized: bool = False) -> None:
        link = self._link
        opened = False
        try:
            if not authorized:
                await self._http.authorize(self._token_factory)
            negotiated = await link.negotiate(self._router.names())
            await link.open_first(self._transports, self._buffer.clear)
            opened = True
            await link.send_start()
        except Exception as e:
            if self._owner._stopping:
                # stop() does the cleaning up; tell the caller why start failed.
                raise ConnectionClosed("stop() was called before start() completed") from None
            await self._cleanup_failed_start(opened, e)
            if isinstance(e, (SignalRError, CancelledError)):
                raise
            raise StartError(f"start failed: {e!r}") from e
        # The HTTP socket used for negotiate and /start is not needed until stop():
        # release it now rather than hold a second file descriptor per connection.
        self._http.close_idle()
        self._owner._set_state(ConnectionState.connected)
        if self._owner._state is not ConnectionState.connected:
            return  # a state-change callback stopped the connection
        self._log.info(
            "connected to {url} over {transport} (connection {connection_id})",
            url=redact_url(self._url),
            transport=self._transport_name(),
            connection_id=negotiated.connection_id,
        )
        self._start_keepalive()
        buffered, self._buffer = self._buffer, []
        for message in buffered:
            if self._owner._state is not ConnectionState.connected:
                break
            self._dispatch(message)

    async def _cleanup_failed_start(self, abort: bool, error: Exception) -> None:
        self._link.drop()
        token = self._session.forget()
        # Whoever waits on this session learns that it ended; nothing hangs.
        reason = ConnectionClosed(f"start() failed: {error}", error)
        closed_waiters = self._end_session(reason)
        try:
            if abort and token is not None:
                await self._link.fire_abort(token)
            await self._http.close_idle()
        except CancelledError:
            pass  # stop() came meanwhile: the start still failed for its own reason
        finally:
            for d in closed_waiters:
                d.errback(reason)

    def _transport_name(self) -> str:
        t = self._link.in_use
        return "no transport" if t is None else t.value

    def transport_opened(self, transport: ITransport) -> None:
        if transport is not self._link.transport:
            return
        if self._owner._state is ConnectionState.reconnecting:
            self._reconnect.stop()
            self._owner._set_state(ConnectionState.connected)
            self._log.info(
                "reconnected over {transport} (connection {connection_id})",
                transport=self._transport_name(),
                connection_id=self._owner.connection_id,
            )
            self._start_keepalive()
            self._owner._on_reconnected.fire()

    def data_received(self, transport: ITransport, data: bytes) -> None:
        if transport is not self._link.transport:
            return
        self._watch.last_received = self._seconds()
        try:
            received = self._session.receive(data, self._owner._state is ConnectionState.connected)
        except ProtocolError as e:
            self._owner._report_error(e)
            return
        if type(received) is list:
            self._router.dispatch_plain(received, self._link, transport, self._dispatch_other)
        elif received is not None:
            self._frame(received)

    def transport_lost(self, transport: ITransport, reason: ConnectionClosed) -> None:
        if transport is not self._link.transport:
            return
        self._link.detach()
        state = self._owner._state
        if state is ConnectionState.connecting:
            self._link.start_failed(reason)
        elif state is ConnectionState.connected:
            if isinstance(reason.cause, MessageTooLarge):
                # Reconnecting would only fetch the same message again.
                self._owner._report_error(reason.cause)
                self._close_for_good(reason)
            else:
                self._begin_reconnecting(reason)
        elif state is ConnectionState.reconnecting:
            self._reconnect.attempt_done()
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
                self._log.info("reconnect attempt failed: {reason}", reason=reason.reason)
                self._reconnect.schedule()

    # ------------------------------------------------------------------ receive path

    def _frame(self, frame: Any) -> None:
        kind = type(frame)
        if kind is PersistentResponse:
            self._persistent(frame)
        elif kind is HubResult:
            self._result(frame)

    def _persistent(self, frame: PersistentResponse) -> None:
        if frame.error is not None:
            self._close_for_good(
                ConnectionClosed(f"Error message received from the server: '{frame.error}'.")
            )
            return
        if frame.messages:
            if self._owner._state is ConnectionState.connected:
                link = self._link
                transport = link.transport
                dispatch = self._dispatch
                for message in frame.messages:
                    dispatch(message)
                    if link.transport is not transport:
                        break
            else:
                self._buffer.extend(frame.messages)
        if frame.initialized and self._owner._state is ConnectionState.connecting:
            self._link.init_arrived()
        if frame.reconnect and self._owner._state is ConnectionState.connected:
            self._drop_and_reconnect(
                ConnectionClosed(
                    "the server asked clients to reconnect (T:1, server shutting down)"
                )
            )
        if frame.disconnect:
            self._close_for_good(ConnectionClosed("the server disconnected this connection (D:1)"))

    def _dispatch(self, message: ServerMessage) -> None:
        kind = type(message)
        if kind is ClientInvocation:
            self._router.client_call(message)  # type: ignore[arg-type]
        elif kind is Progress:
            self._invocations.progress(message)  # type: ignore[arg-type]
        elif kind is HubResult:
            self._result(message)  # type: ignore[arg-type]
        elif kind is MalformedMessage:
            self._router.malformed(message)  # type: ignore[arg-type]
        else:
            self._log.debug("ignored a non-hub message in M")

    def _progress_failed(self, pending: Pending) -> None:
        self._router.handler_failed(Failure(), pending.hub, pending.method + " progress")

    def _result(self, result: HubResult) -> None:
        if not self._invocations.result(result):
            self._log.debug(
                "result for unknown or expired invocation {id}", id=result.invocation_id
            )

    # ------------------------------------------------------------------ invoke

    def invoke(
        self,
        proxy: HubProxy,
        method: str,
        args: Sequence[Any],
        on_progress: Callable[[Any], object] | None,
        timeout: float | None,
        sent_only: bool = False,
    ) -> Deferred[Any]:
        if self._owner._state is not ConnectionState.connected or self._link.transport is None:
            return fail(
                InvalidStateError(
                    f"cannot invoke {proxy.name}.{method} while {self._owner._state.value}"
                )
            )
        invocation_id = self._invocations.next_id()
        try:
            payload = self._session.encode_invocation(
                proxy.name, method, args, invocation_id, proxy.state
            )
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
        if sent_only:
            written = self._link.send(payload)
            written.addCallback(self._send_answer)
            return written
        if timeout is None:
            timeout = self._invoke_timeout
        deferred = self._invocations.add(
            invocation_id, proxy.name, method, proxy.state, on_progress, timeout
        )
        sent = self._link.send(payload)
        sent.addCallbacks(self._send_answer, self._send_failed, errbackArgs=(invocation_id,))
        return deferred

    def _send_answer(self, body: bytes) -> None:
        """What came back from an HTTP ``/send``: the hub result (classic)."""
        if not body or self._owner._state is ConnectionState.disconnected:
            return
        try:
            received = self._session.receive(body, False)
        except ProtocolError as e:
            self._owner._report_error(e)
            return
        if received is not None:
            self._frame(received)

    def _send_failed(self, failure: Failure, invocation_id: int) -> None:
        if failure.check(CancelledError):
            return  # stop() cancels sends; it fails the invocations itself
        error = failure.value
        if not isinstance(error, SignalRError):
            error = SignalRError(f"send failed: {failure.getErrorMessage()}")
        self._invocations.fail(invocation_id, error)

    # ------------------------------------------------------------------ keep-alive

    def _start_keepalive(self) -> None:
        transport = self._link.transport
        if transport is not None and transport.inherent_keepalive:
            self._watch.stop()
            return
        self._watch.start(self._session.keepalive_timeout)

    def _slow(self, idle: float) -> None:
        self._log.info("connection slow: nothing received for {idle:.1f} s", idle=idle)
        self._owner._on_slow.fire()

    def _keepalive_lost(self, idle: float) -> None:
        if self._owner._state is not ConnectionState.connected:
            return
        self._log.warn(
            "no keep-alive for {idle:.1f} s (timeout {timeout:g} s): reconnecting",
            idle=idle,
            timeout=self._session.keepalive_timeout,
        )
        self._drop_and_reconnect(
            ConnectionClosed(f"keep-alive timeout: nothing received for {idle:.1f} s")
        )

    # ------------------------------------------------------------------ reconnect

    def _drop_and_reconnect(self, reason: ConnectionClosed) -> None:
        self._link.drop()
        self._begin_reconnecting(reason)

    def _begin_reconnecting(self, reason: ConnectionClosed) -> None:
        self._watch.stop()
        if self._inactive_too_long():
            return
        self._owner._set_state(ConnectionState.reconnecting)
        if self._owner._state is not ConnectionState.reconnecting:
            return  # a state-change callback stopped the connection
        self._log.warn("connection lost ({reason}); reconnecting", reason=reason.reason)
        if self._link.in_use is Transport.web_sockets:
            # As Microsoft's jQuery client: over WebSockets the result of a pending
            # invocation would come on the lost socket; over SSE and long polling it
            # comes in the answer to its own /send, which the drop does not affect.
            self._invocations.fail_all(_RECONNECTING_TEXT, reason)
        self._owner._on_reconnecting.fire(reason)
        if self._owner._state is not ConnectionState.reconnecting:
            return  # a callback stopped the connection
        self._reconnect.begin(self._session.disconnect_timeout)

    def _inactive_too_long(self) -> bool:
        """
        Microsoft's clients stop instead of reconnecting when nothing was received for
        DisconnectTimeout + KeepAliveTimeout (the "reconnect window"): the server has
        forgotten the connection by then.  This also ends a loop of reconnects that
        open and close again without a frame.  With keep-alives off it does not apply;
        over long polling, which has none, a healthy poll is answered at least every
        ConnectionTimeout, so the window is DisconnectTimeout + the poll timeout.
        """
        negotiated = self._session.negotiated
        if negotiated is None:
            return False
        if self._link.in_use is Transport.long_polling:
            window = negotiated.disconnect_timeout + negotiated.connection_timeout + POLL_MARGIN
            parts = "DisconnectTimeout + ConnectionTimeout + 10 s"
        elif negotiated.keep_alive_timeout:
            window = negotiated.disconnect_timeout + negotiated.keep_alive_timeout
            parts = "DisconnectTimeout + KeepAliveTimeout"
        else:
            return False
        idle = self._watch.idle()
        if idle <= window:
            return False
        self._close_for_good(
            ConnectionClosed(
                f"nothing received for {idle:.1f} s, more than the reconnect window of "
                f"{window:g} s ({parts}): the server has forgotten this connection"
            )
        )
        return True

    def _attempt_reconnect(self) -> None:
        transport = self._link.in_use
        if (
            self._owner._state is not ConnectionState.reconnecting
            or self._session.token is None
            or transport is None
        ):
            return
        if self._inactive_too_long():
            return
        request = self._session.reconnect_request(transport)
        self._log.debug("reconnecting to {url}", url=redact_url(request.url))
        opening = self._link.open(request)
        # An attempt that never completes must not use up the whole window.
        limit = self._session.connect_timeout
        self._reconnect.limit_attempt(limit, lambda: self._attempt_timed_out(opening, limit))

    def _attempt_timed_out(self, transport: ITransport, limit: float) -> None:
        if transport is not self._link.transport:
            return
        self._link.drop()
        self._log.info("reconnect attempt got no answer within {limit:g} s", limit=limit)
        self._reconnect.schedule()

    def _policy_gave_up(self, attempts: int) -> None:
        self._close_for_good(
            ConnectionClosed(f"reconnecting gave up after {attempts} attempt(s) (reconnect_delay)")
        )

    def _give_up(self, window: float) -> None:
        self._close_for_good(
            ConnectionClosed(
                f"Couldn't reconnect within the configured timeout of {window:g} s, disconnecting."
            )
        )

    def _close_for_good(self, reason: ConnectionClosed) -> None:
        """Lost for good (no /abort, like Microsoft's clients after a timeout or E)."""
        if self._owner._state is ConnectionState.disconnected:
            return
        self._log.error("connection closed: {reason}", reason=reason.reason)
        self._link.drop()
        self._session.forget()
        self._link.start_failed(reason)
        self._owner._last_close = reason
        closed_waiters = self._end_session(reason)
        self._http.close_idle()
        for d in closed_waiters:
            d.errback(reason)
        self._owner._on_closed.fire(reason)

    async def stop(self) -> list[Deferred[None]]:
        """
        ``/abort`` (so the server runs ``OnDisconnected`` at once), close the
        transport, fail what is pending.

        :returns: the when_closed() waiters, for the owner to fire.
        """
        token = self._session.forget()
        transport = self._link.detach()
        self._owner._last_close = None
        # Taken now: a start() after this stop() completes has waiters of its own.
        closed_waiters = self._end_session(None)
        if token is not None:
            await self._link.fire_abort(token)
        if transport is not None:
            await transport.close()
        return closed_waiters

    def _end_session(self, reason: ConnectionClosed | None) -> list[Deferred[None]]:
        """
        What every end of a session (stop, lost for good, failed start) does: cancel
        the timers and outstanding sends, fail pending invocations and when_connected()
        waiters, and become disconnected.

        :param reason: why it ended; ``None`` for :meth:`stop`.
        :returns: the when_closed() waiters, for the caller to fire once its own
            cleanup (``/abort``, closing the transport) is done.
        """
        self._watch.stop()
        self._reconnect.stop()
        self._invocations.fail_all(_DISCONNECTED_TEXT, reason)
        self._link.cancel_sends()
        return self._owner._end_common(reason)

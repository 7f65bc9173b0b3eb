"""
Stateful reconnect (ASP.NET Core, .NET 8+) in a connection: the receive filter (the
peer's Sequence and Acks, replayed duplicates), the Ack timer, and replacing a dropped
WebSocket with a new one to the same connection token.  The numbering itself is
:class:`txsignalr._stateful.MessageBuffer`; the buffering of what is sent is
:class:`txsignalr._core_calls.CoreCalls`.  :class:`~txsignalr._core_connection.CoreEngine`
owns one and hands it what concerns stateful reconnect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from txsignalr._core_protocol import Ack
from txsignalr._core_protocol import Sequence as SequenceMessage
from txsignalr._protocol import Transport
from txsignalr._stateful import TRACKED, TRACKED_TYPES, MessageBuffer
from txsignalr.errors import ConnectionClosed, ProtocolError

if TYPE_CHECKING:
    from txsignalr._core_connection import CoreEngine

__all__ = ["ACK_INTERVAL", "RESUME_DELAYS", "STATEFUL_KINDS", "StatefulResume"]

#: Stateful reconnect: seconds before each attempt to replace a dropped WebSocket, all
#: well inside the server's 15 s DisconnectTimeout; then the ordinary reconnect runs.
RESUME_DELAYS = (0.0, 1.0, 2.0, 4.0)

#: Seconds after a resume past which a new drop starts the attempts over even when
#: nothing new arrived in between.
_RESUME_RESET = 30.0

#: HTTP answers to a resume that mean the server will not take it back.
_REFUSALS = frozenset({400, 401, 403, 404})

#: Stateful reconnect: seconds after a received message before it is acknowledged (at
#: most one Ack per period, as Microsoft's clients).
ACK_INTERVAL = 1.0

#: What the stateful receive filter looks at (an invalid tracked message still counts).
STATEFUL_KINDS = frozenset({Ack, SequenceMessage, ProtocolError, *TRACKED})


class StatefulResume:
    """
    The stateful-reconnect side of one :class:`~txsignalr._core_connection.CoreEngine`.
    """

    def __init__(self, engine: CoreEngine) -> None:
        self._engine = engine
        self._reactor = engine._reactor
        self._seconds = engine._reactor.seconds
        self._log = engine._log
        self._session = engine.session
        self._link = engine.link
        self._calls = engine.calls
        self._ack_call: IDelayedCall | None = None
        self._call: IDelayedCall | None = None
        self._task: Deferred[None] | None = None
        self._attempts = 0
        self._reason: ConnectionClosed | None = None
        #: how many dropped WebSockets were replaced without losing the connection
        self.resumes = 0
        self._mark = 0
        self._resumed_at = float("-inf")

    def new_connection(self) -> None:
        """A new connection (with a buffer of its own) starts its resume count afresh."""
        self._attempts = 0
        self._mark = 0
        self._resumed_at = float("-inf")

    def receive(self, buffer: MessageBuffer, message: Any) -> bool:
        """
        Stateful reconnect's receive filter: Sequence and Ack are handled here, replayed
        duplicates and whatever precedes the server's Sequence on a new WebSocket are
        dropped.

        :returns: whether ``message`` goes on to be dispatched.
        """
        kind = type(message)
        if kind is SequenceMessage:
            try:
                buffer.sequence(message.sequence_id)
            except ProtocolError as e:
                # Messages were lost: this connection cannot go on.
                self._engine._owner._report_error(e)
                self._link.drop()
                self._engine._begin_reconnecting(ConnectionClosed(str(e), e))
            return False
        if buffer.awaiting_sequence:
            return False
        if kind is Ack:
            try:
                self._calls.acked(message.sequence_id)
            except ProtocolError as e:
                self._engine._owner._report_error(e)
            return False
        if kind in TRACKED or (kind is ProtocolError and message.message_type in TRACKED_TYPES):
            # The server numbered it whether or not it is valid here.
            new = buffer.accept()
            if buffer.received > buffer.acked and self._ack_call is None:
                # A replayed duplicate too: the Ack for it died with the old socket.
                self._ack_call = self._reactor.callLater(ACK_INTERVAL, self.send_ack)
            return new
        return True

    def send_ack(self) -> None:
        """The Ack timer: acknowledge what arrived since the last Ack."""
        self._ack_call = None
        calls = self._calls
        buffer = calls.buffer
        if buffer is None or calls.resuming or self._link.transport is None:
            return
        sequence_id = buffer.ack_due()
        if sequence_id is not None:
            calls.write(self._session.encode_ack(sequence_id), tracked=False).addErrback(
                calls.log_send_failure, "Ack"
            )

    def cancel_ack(self) -> None:
        """Stop the Ack timer."""
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None

    def begin(self, reason: ConnectionClosed) -> None:
        """
        Stateful reconnect: the connection stays connected while a new WebSocket to the
        same connection token replaces the dropped one; calls made meanwhile are
        buffered and everything unacknowledged is replayed.
        """
        self._engine._stop_keepalive()
        self.cancel_ack()
        calls = self._calls
        buffer = calls.buffer
        assert buffer is not None
        now = self._seconds()
        if not buffer.awaiting_sequence and (
            buffer.received > self._mark or now - self._resumed_at > _RESUME_RESET
        ):
            # A socket lost before the server's Sequence came, or one that brought
            # nothing new just after a resume, does not count as resumed: a server
            # that drops every new socket (or replays a message that loses it) cannot
            # keep this going for ever.
            self._attempts = 0
        self._mark = buffer.received
        calls.resuming = True
        buffer.resuming()
        self._reason = reason
        self._log.warn(
            "WebSocket lost ({reason}); resuming the connection (stateful reconnect)",
            reason=reason.reason,
        )
        self._schedule()

    def _schedule(self) -> None:
        attempt = self._attempts
        if attempt >= len(RESUME_DELAYS):
            last = self._reason
            text = last.reason if last is not None else "connection lost"
            self._engine._begin_reconnecting(
                ConnectionClosed(f"could not resume after {attempt} attempt(s): {text}", last)
            )
            return
        self._attempts += 1
        self._call = self._reactor.callLater(RESUME_DELAYS[attempt], self._attempt)

    def _attempt(self) -> None:
        self._call = None
        task = Deferred.fromCoroutine(self._open())
        self._task = task
        task.addCallbacks(self._succeeded, self._failed)

    async def _open(self) -> None:
        session = self._session
        session.resuming = True
        try:
            await self._link.open_first((Transport.web_sockets,), lambda: None)
        finally:
            session.resuming = False

    def _succeeded(self, _: None) -> None:
        self._task = None
        calls = self._calls
        if not self._engine._connected() or calls.buffer is None or not calls.resuming:
            self._link.drop()
            return
        buffer = calls.buffer
        # WebSocket sends are written at once: nothing can come between these.
        for payload in calls.resumed():
            self._link.send(payload).addErrback(calls.log_send_failure, "replay")
        self.resumes += 1
        self._resumed_at = self._seconds()
        self._engine._watch.last_received = self._resumed_at
        self._engine._start_keepalive()
        self._log.info(
            "resumed the connection over a new WebSocket ({unacked} message(s) replayed)",
            unacked=buffer.unacknowledged,
        )
        if buffer.received > buffer.acked and self._ack_call is None:
            self._ack_call = self._reactor.callLater(ACK_INTERVAL, self.send_ack)
        # Last: these fire user callbacks, which may stop the connection.
        calls.replayed()
        calls.release_blocked()

    def _failed(self, failure: Failure) -> None:
        self._task = None
        self._link.drop()
        if (
            failure.check(CancelledError)
            or not self._engine._connected()
            or not self._calls.resuming
        ):
            return
        error = failure.value
        text = str(error) if isinstance(error, Exception) else failure.getErrorMessage()
        status = getattr(error, "status", None)
        if status in _REFUSALS:
            # The server no longer has the connection (404 after its
            # DisconnectTimeout, or it restarted) or will not take this request
            # (400, 401, 403): only a new connection (and token) helps.  Other
            # answers (a proxy's 502 or 503 in a failover) are retried.
            self._log.info("the server refused to resume the connection: {error}", error=text)
            self._engine._begin_reconnecting(
                ConnectionClosed(f"the server refused to resume the connection: {text}", error)
            )
            return
        self._log.info("resume attempt failed: {error}", error=text)
        self._reason = ConnectionClosed(f"resume attempt failed: {text}", error)
        self._schedule()

    def stop(self) -> None:
        """Cancel a resume that is waiting or under way (the connection ends)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

"""
The hub calls of an ASP.NET Core connection: invocations, sends and streams with their
pending Deferreds, client-to-server uploads, client results, and the send queue that
keeps HTTP transports' POSTs in order.  :class:`~txsignalr._core_connection.CoreEngine`
owns one and feeds it what the receive path parses.
"""

from __future__ import annotations

import inspect
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsignalr._core_protocol import Completion, Invocation, StreamItem
from txsignalr._core_session import CoreSession
from txsignalr._link import Link
from txsignalr._protocol import Transport
from txsignalr._routing import Handler, Router
from txsignalr._state import ConnectionState
from txsignalr._stateful import MessageBuffer
from txsignalr._streams import HubStream
from txsignalr.errors import ConnectionClosed, HubError, InvalidStateError, SignalRError

__all__ = ["CoreCalls"]

_CANCELED_TEXT = "Invocation canceled due to the underlying connection being closed."
_NO_RESULT_TEXT = "Client didn't provide a result."
_MULTIPLE_RESULTS_TEXT = "Client provided multiple results."


class _Uploads:
    """The client-to-server streams in flight: cancelled when the session ends."""

    def __init__(self) -> None:
        self.tasks: set[Deferred[None]] = set()

    def add(self, task: Deferred[None]) -> None:
        if task.called:
            return
        self.tasks.add(task)
        task.addBoth(self._done, task)

    def _done(self, result: object, task: Deferred[None]) -> None:
        self.tasks.discard(task)
        if isinstance(result, Failure):
            result.trap(CancelledError, SignalRError)

    def cancel(self) -> None:
        tasks, self.tasks = self.tasks, set()
        for task in tasks:
            task.cancel()


class CoreCalls:
    """
    :param state: the connection's state, read before every call.
    :param router: where client-method handlers are found, under ``hub``.
    :param invoke_timeout: the default seconds an invocation may wait.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        session: CoreSession,
        link: Link,
        router: Router,
        hub: str,
        log: Logger,
        invoke_timeout: float | None,
        state: Callable[[], ConnectionState],
    ) -> None:
        self._reactor = reactor
        self._seconds = reactor.seconds
        self.session = session
        self.link = link
        self._router = router
        self._hub = hub
        self._log = log
        self._invoke_timeout = invoke_timeout
        self._state = state
        self._ids = itertools.count()
        self._calls: dict[str, tuple[str, Deferred[Any] | HubStream]] = {}
        self._uploads = _Uploads()
        self._queue: list[tuple[bytes, Deferred[None]]] = []
        self._in_flight: Deferred[bytes] | None = None
        #: when something was last sent (the ping timer reads it)
        self.last_sent = 0.0
        #: stateful reconnect: the numbering and replay buffer of this connection
        self.buffer: MessageBuffer | None = None
        #: stateful reconnect: a new WebSocket is replacing a dropped one
        self.resuming = False
        #: tracked messages waiting for room in the replay buffer (back-pressure)
        self._blocked: deque[tuple[bytes, Deferred[None]]] = deque()
        #: writes buffered while resuming: they fire once replayed
        self._replay_waiters: list[Deferred[None]] = []
        #: bumped whenever the calls of a connection end (a full reconnect or the
        #: end): what belongs to an older generation is dropped
        self.generation = 0

    def _connected(self) -> bool:
        return self._state() is ConnectionState.connected

    def _can_send(self) -> bool:
        """Connected, with a transport (or one being resumed statefully)."""
        return self._connected() and (self.link.transport is not None or self.resuming)

    def stream_item(self, message: StreamItem) -> None:
        """An item of a server-to-client stream."""
        entry = self._calls.get(message.invocation_id)
        if entry is not None and type(entry[1]) is HubStream:
            entry[1]._item(message.item)

    def completion(self, message: Completion) -> None:
        entry = self._calls.pop(message.invocation_id, None)
        if entry is None:
            # Some servers send a second Completion for a failed call: ignore it.
            self._log.debug("completion for unknown invocation {id}", id=message.invocation_id)
            return
        method, call = entry
        error = message.error
        if type(call) is HubStream:
            call._finish(None if error is None else Failure(HubError(error, method=method)))
            return
        assert isinstance(call, Deferred)
        if error is not None:
            call.errback(HubError(error, method=method))
        else:
            call.callback(message.result)

    def plain_lane(
        self,
    ) -> tuple[dict[str, dict[str, list[Any]]], str, Callable[[list[Any], Any, str, str], None]]:
        """
        What the receive loop needs to call plain calls' handlers without a function
        call of its own per call: the router's route cache, the hub's name, and the
        router's ``call_handlers(handlers, arguments, hub, target)``.  A call whose
        route is not cached, or has no handler, goes to :meth:`plain_call`.
        """
        router = self._router
        return router.routes, self._hub, router.call_handlers

    def plain_call(self, target: str, arguments: list[Any]) -> None:
        """A non-blocking call from the receive path's fast lane (no Invocation value)."""
        if not self._router.call(self._hub, target, arguments):
            self._log.warn("no handler for client method {method!r}", method=target)

    def client_call(self, message: Invocation) -> None:
        invocation_id = message.invocation_id
        if invocation_id is None:
            if not self._router.call(self._hub, message.target, message.arguments):
                self._log.warn("no handler for client method {method!r}", method=message.target)
            return
        # The server waits for a result: it comes from the on() handlers; on_any()
        # callbacks only hear of the call.
        proxy = self._router.proxy_for(self._hub)
        handlers = [] if proxy is None else proxy.result_handlers(message.target)
        observers = [] if proxy is None else proxy.any_handlers(message.target)
        if observers:
            self._router.call_handlers(observers, message.arguments, self._hub, message.target)
        if not handlers:
            self._log.warn(
                "no handler for client method {method!r}; the server waits for its result",
                method=message.target,
            )
            self._answer(invocation_id, error=_NO_RESULT_TEXT)
            return
        generation = self.generation
        d = Deferred.fromCoroutine(self._results(handlers, message))

        def answer(outcome: tuple[Any, str | None]) -> None:
            if self.generation != generation:
                self._log.info(
                    "client result for {id} dropped: the connection changed", id=invocation_id
                )
                return
            result, error = outcome
            self._answer(invocation_id, result=result, error=error)

        d.addCallback(answer)

    async def _results(
        self, handlers: list[Handler], message: Invocation
    ) -> tuple[Any, str | None]:
        """
        Call every handler in turn, as Microsoft's client: the last one's outcome is
        the answer, and more than one returned value is an error.
        """
        result: Any = None
        error: str | None = None
        given = 0
        for handler in handlers:
            try:
                outcome = handler(*message.arguments)
                if inspect.isawaitable(outcome):
                    outcome = await ensureDeferred(outcome)  # type: ignore[arg-type]
            except Exception as e:
                self._router.handler_failed(Failure(), self._hub, message.target)
                error = str(e) or type(e).__name__
                continue
            error = None
            if outcome is not None:
                given += 1
                result = outcome
        if given > 1:
            self._log.error(
                "several handlers of {method!r} returned a result: sending an error",
                method=message.target,
            )
            return None, _MULTIPLE_RESULTS_TEXT
        return result, error

    def _answer(self, invocation_id: str, result: Any = None, error: str | None = None) -> None:
        try:
            if error is None:
                payload = self.session.encode_completion(invocation_id, result)
            else:
                payload = self.session.encode_completion(invocation_id, error=error)
        except TypeError as e:
            payload = self.session.encode_completion(
                invocation_id,
                error=f"the client's result cannot be sent as {self.session.codec.name}: {e}",
            )
        self.write(payload).addErrback(self.log_send_failure, "client result")

    def log_send_failure(self, f: Failure, what: str) -> None:
        self._log.info("{what} not sent: {error}", what=what, error=f.getErrorMessage())

    def write(self, payload: bytes, tracked: bool = True) -> Deferred[None]:
        """
        Send while connected.  Over HTTP transports one POST is in flight at a time and
        what queues meanwhile goes in the next one, so the server reads messages in
        the order they were sent.

        With stateful reconnect a ``tracked`` message (types 1-5) is numbered and kept
        until the server acknowledges it; while the replay buffer is full it waits (the
        Deferred fires once it went out), and while a dropped WebSocket is replaced it
        is only buffered, to be replayed.  Untracked ones (Ping, Ack) are not sent then.
        """
        if self.buffer is not None:
            return self._write_stateful(payload, tracked)
        link = self.link
        if link.transport is None or not self._connected():
            return fail(ConnectionClosed("not connected"))
        self.last_sent = self._seconds()
        if link.in_use is Transport.web_sockets:
            return link.send(payload).addCallback(lambda _: None)
        d: Deferred[None] = Deferred()
        self._queue.append((payload, d))
        if self._in_flight is None:
            self._flush()
        return d

    def _write_stateful(self, payload: bytes, tracked: bool) -> Deferred[None]:
        if not self._can_send():
            return fail(ConnectionClosed("not connected"))
        if not tracked:
            if self.resuming or self.link.transport is None:
                return fail(ConnectionClosed("the WebSocket is being replaced"))
            self.last_sent = self._seconds()
            return self.link.send(payload).addCallback(lambda _: None)
        buffer = self.buffer
        assert buffer is not None
        if self._blocked or not buffer.has_room():
            entry: tuple[bytes, Deferred[None]]

            def unblock(d: Deferred[None]) -> None:
                # Given up on (cancelled, timed out) before it went: it never goes.
                if entry in self._blocked:
                    self._blocked.remove(entry)

            d: Deferred[None] = Deferred(unblock)
            entry = (payload, d)
            self._blocked.append(entry)
            return d
        return self._send_tracked(buffer, payload)

    def _send_tracked(self, buffer: MessageBuffer, payload: bytes) -> Deferred[None]:
        buffer.track(payload)
        if self.resuming or self.link.transport is None:
            # Replayed once the new WebSocket is open; only then has it gone out.
            waiter: Deferred[None] = Deferred()
            self._replay_waiters.append(waiter)
            return waiter
        self.last_sent = self._seconds()
        # A send that fails is not lost: it is in the buffer, replayed on resume.
        self.link.send(payload).addErrback(lambda f: None)
        return succeed(None)

    def replayed(self) -> None:
        """What was buffered while resuming has gone out on the new WebSocket."""
        waiters, self._replay_waiters = self._replay_waiters, []
        for d in waiters:
            d.callback(None)

    def acked(self, sequence_id: int) -> None:
        """
        The server's Ack: release what it has, then send what waited for room.

        :raises ProtocolError: for an Ack of messages never sent.
        """
        buffer = self.buffer
        if buffer is None:
            return
        buffer.ack(sequence_id)
        self.release_blocked()

    def release_blocked(self) -> None:
        """Send what waited for room in the replay buffer, as far as there is room."""
        buffer = self.buffer
        blocked = self._blocked
        while buffer is not None and blocked and buffer.has_room():
            payload, d = blocked.popleft()
            self._send_tracked(buffer, payload).chainDeferred(d)
            buffer = self.buffer  # a callback may have ended the connection

    def resumed(self) -> list[bytes]:
        """
        A new WebSocket replaced the dropped one: what to send on it first (the
        Sequence, then every unacknowledged message), in order; sending resumes.
        """
        buffer = self.buffer
        assert buffer is not None
        first, replay = buffer.replay()
        self.resuming = False
        self.last_sent = self._seconds()
        return [self.session.encode_sequence(first), *replay]

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        if self.link.transport is None:
            for _, d in batch:
                d.errback(ConnectionClosed("not connected"))
            return
        sent = self.link.send(b"".join(p for p, _ in batch))
        self._in_flight = sent

        def done(result: object) -> None:
            self._in_flight = None
            for _, d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            self._flush()

        sent.addBoth(done)

    def _fail_queue(self, reason: ConnectionClosed) -> None:
        queue, self._queue = self._queue, []
        for _, d in queue:
            d.errback(reason)

    def _split_streams(self, args: Sequence[Any]) -> tuple[list[Any], list[tuple[str, Any]]]:
        plain: list[Any] = []
        uploads: list[tuple[str, Any]] = []
        for arg in args:
            if hasattr(arg, "__aiter__"):
                uploads.append((str(next(self._ids)), arg))
            else:
                plain.append(arg)
        return plain, uploads

    def _encode_call(
        self, method: str, args: Sequence[Any], invocation_id: str | None, stream: bool = False
    ) -> tuple[bytes, list[tuple[str, Any]]]:
        plain, uploads = self._split_streams(args)
        ids = [sid for sid, _ in uploads]
        try:
            if stream:
                assert invocation_id is not None
                payload = self.session.encode_stream_invocation(method, plain, invocation_id, ids)
            else:
                payload = self.session.encode_invocation(method, plain, invocation_id, ids)
        except TypeError as e:
            raise TypeError(
                f"arguments of {method} cannot be sent as {self.session.codec.name}: {e}"
            ) from None
        return payload, uploads

    def _not_connected(self, what: str) -> InvalidStateError:
        return InvalidStateError(f"cannot {what} while {self._state().value}")

    def invoke(self, method: str, args: Sequence[Any], timeout: float | None) -> Deferred[Any]:
        if not self._can_send():
            return fail(self._not_connected(f"invoke {method}"))
        invocation_id = str(next(self._ids))
        try:
            payload, uploads = self._encode_call(method, args, invocation_id)
        except TypeError as e:
            return fail(e)

        written: Deferred[None] | None = None

        def cancel(d: Deferred[Any]) -> None:
            self._calls.pop(invocation_id, None)
            if written is not None and not written.called:
                written.cancel()  # still waiting for room: it never goes out

        deferred: Deferred[Any] = Deferred(cancel)
        self._calls[invocation_id] = (method, deferred)
        if timeout is None:
            timeout = self._invoke_timeout
        if timeout is not None:
            deferred.addTimeout(timeout, self._reactor)
        written = self.write(payload)
        written.addErrback(self._call_send_failed, invocation_id)
        self._start_uploads(uploads)
        return deferred

    def send(self, method: str, args: Sequence[Any]) -> Deferred[None]:
        if not self._can_send():
            return fail(self._not_connected(f"send {method}"))
        try:
            payload, uploads = self._encode_call(method, args, None)
        except TypeError as e:
            return fail(e)
        d = self.write(payload)
        self._start_uploads(uploads)
        return d

    def stream(self, method: str, args: Sequence[Any]) -> HubStream:
        if not self._can_send():
            return HubStream.failed(method, self._not_connected(f"stream {method}"))
        invocation_id = str(next(self._ids))
        try:
            payload, uploads = self._encode_call(method, args, invocation_id, stream=True)
        except TypeError as e:
            return HubStream.failed(method, e)
        stream = HubStream(method, invocation_id, self._cancel_stream)
        self._calls[invocation_id] = (method, stream)
        self.write(payload).addErrback(self._call_send_failed, invocation_id)
        self._start_uploads(uploads)
        return stream

    def _cancel_stream(self, stream: HubStream) -> None:
        if self._calls.pop(stream.invocation_id, None) is None:
            return
        if self._connected():
            self.write(self.session.encode_cancel(stream.invocation_id)).addErrback(
                self.log_send_failure, "CancelInvocation"
            )

    def _call_send_failed(self, failure: Failure, invocation_id: str) -> None:
        entry = self._calls.pop(invocation_id, None)
        if entry is None:
            return
        error = failure.value
        if not isinstance(error, SignalRError):
            error = SignalRError(f"send failed: {failure.getErrorMessage()}")
        call = entry[1]
        if type(call) is HubStream:
            call._finish(Failure(error))
        else:
            assert isinstance(call, Deferred)
            call.errback(error)

    def _start_uploads(self, uploads: list[tuple[str, Any]]) -> None:
        for stream_id, source in uploads:
            self._uploads.add(Deferred.fromCoroutine(self._upload(stream_id, source)))

    async def _upload(self, stream_id: str, source: Any) -> None:
        session = self.session
        generation = self.generation
        error: str | None = None
        try:
            async for item in source:
                if self.generation != generation:
                    return
                await self.write(session.encode_stream_item(stream_id, item))
        except (CancelledError, ConnectionClosed):
            return
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        if self.generation == generation:
            await self.write(session.encode_completion(stream_id, error=error))

    def end(self, reason: ConnectionClosed | None) -> None:
        """Fail every pending call and stream, stop uploads and queued sends."""
        self.generation += 1
        self.buffer = None
        self.resuming = False
        error = ConnectionClosed(_CANCELED_TEXT, reason)
        blocked, self._blocked = self._blocked, deque()
        waiters, self._replay_waiters = self._replay_waiters, []
        for d in [*(d for _, d in blocked), *waiters]:
            d.errback(error)
        calls, self._calls = self._calls, {}
        for _, call in calls.values():
            if type(call) is HubStream:
                call._finish(Failure(error))
            else:
                assert isinstance(call, Deferred)
                call.errback(error)
        self._uploads.cancel()
        self._fail_queue(error)
        self.link.cancel_sends()

"""
Server-to-client streams: what :meth:`HubConnection.stream` returns, fed by the receive
path with items and ended by the stream's completion, an error or the connection's end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from txsignalr.errors import SignalRError

__all__ = ["HubStream"]

_OPEN = object()


class HubStream:
    """
    The items a hub method streams to the client.

    Read it with ``async for item in stream`` or with :meth:`each`; :meth:`cancel`
    asks the server to stop (``CancelInvocation``).  Items that arrive before they are
    read wait in the stream, up to ``max_buffered``: past that the stream is cancelled
    and fails with :class:`~txsignalr.SignalRError`, so a reader that stopped reading
    cannot make the connection grow without bound.

    :ivar method: the hub method streaming.
    :ivar invocation_id: the stream's id on the wire.
    """

    def __init__(
        self,
        method: str,
        invocation_id: str,
        cancel: Callable[[HubStream], None] | None,
        max_buffered: int = 100_000,
    ) -> None:
        self.method = method
        self.invocation_id = invocation_id
        self._cancel = cancel
        self._max = max_buffered
        self._items: deque[Any] = deque()
        self._waiter: Deferred[Any] | None = None
        self._each: Callable[[Any], object] | None = None
        self._finished: Deferred[None] | None = None
        # _OPEN while items may come; then None (completed) or the Failure
        self._end: object = _OPEN

    def __repr__(self) -> str:
        state = "open" if self._end is _OPEN else "ended"
        return f"<HubStream {self.method!r} id={self.invocation_id} {state}>"

    @classmethod
    def failed(cls, method: str, error: BaseException) -> HubStream:
        """A stream that could not start."""
        stream = cls(method, "", None)
        stream._end = Failure(error)
        return stream

    @property
    def done(self) -> bool:
        """Whether the stream has ended (completed, failed or cancelled)."""
        return self._end is not _OPEN

    # -- reading

    def __aiter__(self) -> HubStream:
        return self

    def __anext__(self) -> Deferred[Any]:
        if self._each is not None:
            raise RuntimeError("this stream is read with each(); it cannot also be iterated")
        if self._items:
            return succeed(self._items.popleft())
        end = self._end
        if end is None:
            return fail(StopAsyncIteration())
        if isinstance(end, Failure):
            return fail(end)
        if self._waiter is not None:
            raise RuntimeError("the stream is already being awaited")
        waiter: Deferred[Any] = Deferred(self._forget_waiter)
        self._waiter = waiter
        return waiter

    def _forget_waiter(self, waiter: Deferred[Any]) -> None:
        # A read that timed out or was cancelled: the next item waits for the next read.
        if self._waiter is waiter:
            self._waiter = None

    def each(self, callback: Callable[[Any], object]) -> Deferred[None]:
        """
        Call ``callback(item)`` for every item (those already here first).

        :returns: a Deferred that fires with ``None`` when the stream completes or is
            cancelled, and fails with the stream's error (:class:`~txsignalr.HubError`,
            :class:`~txsignalr.ConnectionClosed`, ...).  A callback that raises cancels
            the stream and fails the Deferred with its exception.
        """
        if self._each is not None or self._waiter is not None:
            raise RuntimeError("the stream already has a reader")
        self._each = callback
        finished: Deferred[None] = Deferred()
        self._finished = finished
        while self._items:
            if not self._deliver(self._items.popleft()):
                return finished
        if self._end is not _OPEN:
            self._settle()
        return finished

    def cancel(self) -> None:
        """Stop the stream: the server is told, reading ends as if it completed."""
        if self._end is not _OPEN:
            return
        cancel, self._cancel = self._cancel, None
        self._finish(None)
        if cancel is not None:
            cancel(self)

    # -- fed by the connection

    def _item(self, item: Any) -> None:
        if self._end is not _OPEN:
            return
        if self._each is not None:
            self._deliver(item)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.callback(item)
            return
        self._items.append(item)
        if len(self._items) > self._max:
            self._items.clear()
            cancel, self._cancel = self._cancel, None
            self._finish(
                Failure(
                    SignalRError(
                        f"stream {self.method!r} was cancelled: over {self._max} items "
                        "arrived that were not read"
                    )
                )
            )
            if cancel is not None:
                cancel(self)

    def _deliver(self, item: Any) -> bool:
        assert self._each is not None
        try:
            self._each(item)
        except Exception:
            failure = Failure()
            cancel, self._cancel = self._cancel, None
            self._finish(failure)
            if cancel is not None:
                cancel(self)
            return False
        return True

    def _finish(self, outcome: Failure | None) -> None:
        """End the stream: ``None`` for completion, else the failure."""
        if self._end is not _OPEN:
            return
        self._end = outcome
        self._cancel = None
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if outcome is None:
                waiter.errback(StopAsyncIteration())
            else:
                waiter.errback(outcome)
        if self._each is not None:
            self._settle()

    def _settle(self) -> None:
        finished, self._finished = self._finished, None
        if finished is None:
            return
        end = self._end
        if isinstance(end, Failure):
            finished.errback(end)
        else:
            finished.callback(None)

"""
Pending hub invocations: ids, the Deferreds waiting for results, timeouts, progress
reports, and failing them all when the connection goes away.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from txsignalr._protocol import HubResult, Progress
from txsignalr.errors import ConnectionClosed, HubError

__all__ = ["Invocations", "Pending"]


@attrs.define(slots=True)
class Pending:
    """One invocation waiting for its result."""

    deferred: Deferred[Any]
    hub: str
    method: str
    on_progress: Callable[[Any], object] | None
    #: where the result's hub state changes go (the proxy's ``state``)
    state: dict[str, Any]


class Invocations:
    """
    The invocations waiting for a result, by id (the id as the server echoes it, a string).

    :param clock: where timeouts run.
    :param progress_failed: called as ``progress_failed(pending)`` inside an ``except``
        block when an ``on_progress`` callback raised.
    """

    def __init__(self, clock: IReactorTime, progress_failed: Callable[[Pending], None]) -> None:
        self._clock = clock
        self._pending: dict[str, Pending] = {}
        self._ids = itertools.count()
        self._progress_failed = progress_failed

    def __len__(self) -> int:
        return len(self._pending)

    def next_id(self) -> int:
        """The id for the next invocation."""
        return next(self._ids)

    def add(
        self,
        invocation_id: int,
        hub: str,
        method: str,
        state: dict[str, Any],
        on_progress: Callable[[Any], object] | None,
        timeout: float | None,
    ) -> Deferred[Any]:
        """
        Register an invocation that is about to be sent.

        :returns: the Deferred of its result; cancelling it forgets the invocation, and
            it fails with Twisted's ``TimeoutError`` after ``timeout`` seconds.
        """
        key = str(invocation_id)

        def cancel(d: Deferred[Any]) -> None:
            self._pending.pop(key, None)

        deferred: Deferred[Any] = Deferred(cancel)
        self._pending[key] = Pending(deferred, hub, method, on_progress, state)
        if timeout is not None:
            deferred.addTimeout(timeout, self._clock)
        return deferred

    def discard(self, invocation_id: int) -> None:
        """Forget an invocation that could not be sent."""
        self._pending.pop(str(invocation_id), None)

    def fail(self, invocation_id: int, error: BaseException) -> None:
        """Fail one invocation (say, its ``/send`` request failed)."""
        pending = self._pending.pop(str(invocation_id), None)
        if pending is not None:
            pending.deferred.errback(error)

    def result(self, result: HubResult) -> bool:
        """
        Deliver a hub result to its invocation.

        :returns: whether an invocation was waiting for it.
        """
        pending = self._pending.pop(result.invocation_id, None)
        if pending is None:
            return False
        if result.state:
            pending.state.update(result.state)
        if result.error is not None:
            pending.deferred.errback(
                HubError(
                    result.error,
                    result.error_data,
                    result.is_hub_exception,
                    result.stack_trace,
                    pending.hub,
                    pending.method,
                )
            )
        else:
            pending.deferred.callback(result.result)
        return True

    def progress(self, progress: Progress) -> None:
        """Hand a progress report to its invocation's ``on_progress``."""
        pending = self._pending.get(progress.invocation_id)
        if pending is not None and pending.on_progress is not None:
            try:
                pending.on_progress(progress.data)
            except Exception:
                self._progress_failed(pending)

    def fail_all(self, text: str, cause: BaseException | None = None) -> None:
        """Fail every pending invocation with :class:`~txsignalr.ConnectionClosed`."""
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.deferred.errback(ConnectionClosed(text, cause))

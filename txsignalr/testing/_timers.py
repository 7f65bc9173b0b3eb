"""
Timers of the test server: every delayed call goes through one :class:`Timers`, on the
server's reactor, so that stopping the server can cancel all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Timers"]


class Timers:
    """
    Delayed calls and sleeps on one clock, all cancellable at once.

    :param clock: the reactor (or ``task.Clock``) the calls run on.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._delayed: set[IDelayedCall] = set()
        self._sleeps: set[defer.Deferred[None]] = set()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        """``callLater`` on the clock, remembered until it runs or is cancelled."""
        call: IDelayedCall | None = None

        def run() -> None:
            if call is not None:
                self._delayed.discard(call)
            fn(*args)

        call = self.clock.callLater(delay, run)
        self._delayed.add(call)
        return call

    def cancel(self, call: IDelayedCall | None) -> None:
        """Cancel ``call`` if it is still pending (``None`` is ignored)."""
        if call is None:
            return
        if call.active():
            call.cancel()
        self._delayed.discard(call)

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """:returns: a Deferred fired after ``seconds``; cancelling it cancels the timer."""
        holder: list[IDelayedCall] = []

        def cancel(d: defer.Deferred[None]) -> None:
            self._sleeps.discard(d)
            if holder:
                self.cancel(holder[0])

        d: defer.Deferred[None] = defer.Deferred(cancel)

        def fire() -> None:
            self._sleeps.discard(d)
            d.callback(None)

        holder.append(self.call_later(seconds, fire))
        self._sleeps.add(d)
        return d

    def cancel_all(self) -> None:
        """Cancel every pending sleep (``CancelledError``) and delayed call."""
        for sleep in list(self._sleeps):
            sleep.cancel()
        self._sleeps.clear()
        for call in list(self._delayed):
            if call.active():
                call.cancel()
        self._delayed.clear()

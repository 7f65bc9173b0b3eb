"""
The keep-alive watchdog: warns when nothing arrived for 2/3 of the timeout and reports
the link lost at the full timeout, on the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["KeepAliveWatch", "on_grid"]


def on_grid(now: float, interval: float) -> float:
    """
    The delay to the next multiple of ``interval`` (at least half an interval away).

    Keep-alive checks of all the connections that share a KeepAliveTimeout land on
    the same instants, so thousands of idle connections wake the reactor a few times
    per interval instead of thousands of times.
    """
    delay = interval - (now % interval)
    return delay if delay >= interval / 2 else delay + interval


class KeepAliveWatch:
    """
    Watches :attr:`last_received` (seconds on the clock, set by the receive path).

    :param clock: the clock of every check.
    :param on_slow: called once when the link turns slow (2/3 of the timeout idle).
    :param on_lost: called with the idle seconds at the full timeout; the watch stops.
    """

    def __init__(
        self,
        clock: IReactorTime,
        on_slow: Callable[[float], None],
        on_lost: Callable[[float], None],
    ) -> None:
        self._clock = clock
        self._on_slow = on_slow
        self._on_lost = on_lost
        #: when data last arrived; the only thing the receive path touches
        self.last_received = 0.0
        self._base = 0.0
        self._timeout: float | None = None
        self._slow = False
        self._call: IDelayedCall | None = None

    def start(self, timeout: float | None) -> None:
        """(Re)arm the watch with ``timeout`` seconds; ``None`` or 0 turns it off."""
        self.stop()
        if not timeout:
            return
        now = self._clock.seconds()
        self._timeout = timeout
        self._base = now
        self._slow = False
        self._call = self._clock.callLater(on_grid(now, timeout / 9), self._check)

    def stop(self) -> None:
        """Cancel the next check."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._timeout = None

    def idle(self) -> float:
        """Seconds since data last arrived."""
        return self._clock.seconds() - self.last_received

    def _check(self) -> None:
        self._call = None
        timeout = self._timeout
        if timeout is None:
            return
        now = self._clock.seconds()
        idle = now - max(self.last_received, self._base)
        if idle >= timeout:
            self._timeout = None
            self._on_lost(idle)
            return
        if idle >= timeout * 2 / 3:
            if not self._slow:
                self._slow = True
                self._on_slow(idle)
        else:
            self._slow = False
        if self._timeout is None:
            return  # stopped by the callback
        # Check again every (timeout - warning) / 3, like Microsoft's clients, but
        # never later than the moment the timeout would expire.
        delay = min(on_grid(now, timeout / 9), max(timeout - idle, 0.0) + 1e-3)
        self._call = self._clock.callLater(delay, self._check)

"""
The reconnect loop: a retry policy between attempts, a deadline for each attempt and a
window after which reconnecting gives up, all on the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["ReconnectLoop", "RetryPolicy"]

log = Logger()

#: seconds, or ``policy(attempt) -> seconds`` (``None``: stop trying)
RetryPolicy = float | Callable[[int], "float | None"]


class ReconnectLoop:
    """
    :param clock: where every timer runs.
    :param delay: seconds between attempts, or ``policy(attempt) -> seconds``.
    :param attempt: makes one attempt (called by the loop).
    :param give_up: called with the window's seconds when the window has passed.
    :param exhausted: called with the number of attempts made when the policy
        answers ``None``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        delay: RetryPolicy,
        attempt: Callable[[], None],
        give_up: Callable[[float], None],
        exhausted: Callable[[int], None] | None = None,
    ) -> None:
        self._clock = clock
        self._delay = delay
        self._attempt = attempt
        self._give_up = give_up
        self._exhausted = exhausted
        self._attempts = 0
        self._next: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._attempt_timer: IDelayedCall | None = None

    def begin(self, window: float) -> None:
        """Start reconnecting: the first attempt after one delay, give up after ``window``."""
        self.stop()
        self._attempts = 0
        self._deadline = self._clock.callLater(window, self._expired, window)
        self.schedule()

    def schedule(self) -> None:
        """Make the next attempt after the policy's delay."""
        self._cancel_attempt_timer()
        if self._next is not None and self._next.active():
            self._next.cancel()
        policy = self._delay
        try:
            delay = policy(self._attempts) if callable(policy) else policy
        except Exception:
            log.failure("the reconnect policy raised: giving up")
            delay = None
        if delay is None:
            self.stop()
            if self._exhausted is not None:
                self._exhausted(self._attempts)
            return
        self._attempts += 1
        self._next = self._clock.callLater(delay, self._fire)

    def limit_attempt(self, seconds: float, timed_out: Callable[[], None]) -> None:
        """Call ``timed_out()`` unless :meth:`attempt_done` comes within ``seconds``."""
        self._cancel_attempt_timer()

        def fire() -> None:
            self._attempt_timer = None
            timed_out()

        self._attempt_timer = self._clock.callLater(seconds, fire)

    def attempt_done(self) -> None:
        """The attempt in progress ended (either way): drop its deadline."""
        self._cancel_attempt_timer()

    def stop(self) -> None:
        """Cancel every timer of the loop."""
        for call in (self._next, self._deadline, self._attempt_timer):
            if call is not None and call.active():
                call.cancel()
        self._next = self._deadline = self._attempt_timer = None

    def _cancel_attempt_timer(self) -> None:
        if self._attempt_timer is not None and self._attempt_timer.active():
            self._attempt_timer.cancel()
        self._attempt_timer = None

    def _fire(self) -> None:
        self._next = None
        self._attempt()

    def _expired(self, window: float) -> None:
        self._deadline = None
        self._give_up(window)

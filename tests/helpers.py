"""Helpers shared by the loopback tests: bounded waits on the running reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def within(d: Deferred[Any], seconds: float = 15.0) -> Any:
    """Await ``d``, but fail with ``TimeoutError`` instead of hanging."""
    d.addTimeout(seconds, _reactor())
    return await d


async def wait_until(
    predicate: Callable[[], bool], what: str = "condition", seconds: float = 15.0
) -> None:
    """Let the reactor run until ``predicate()`` holds; fail after ``seconds``."""
    reactor = _reactor()
    deadline = reactor.seconds() + seconds
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)

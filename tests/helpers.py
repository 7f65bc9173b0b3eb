"""Helpers shared by the loopback tests: bounded waits on the running reactor."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.task import deferLater

T = TypeVar("T")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def running_reactor() -> Any:
    """The global reactor the loopback tests run on."""
    return _reactor()


def sleep(seconds: float) -> Deferred[None]:
    """A Deferred fired after ``seconds`` on the running reactor."""
    return deferLater(_reactor(), seconds, lambda: None)


async def within(
    d: Deferred[Any], seconds: float = 15.0, explain: Callable[[], str] | None = None
) -> Any:
    """
    Await ``d``, but fail with ``TimeoutError`` instead of hanging (with
    ``AssertionError(explain())`` when ``explain`` is given).
    """
    d.addTimeout(seconds, _reactor())
    if explain is None:
        return await d
    try:
        return await d
    except TimeoutError:
        raise AssertionError(explain()) from None


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


def bounded(seconds: float = 15.0) -> Callable[[Callable[..., Awaitable[T]]], Any]:
    """Fail the wrapped async test with ``TimeoutError`` after ``seconds``."""

    def deco(fn: Callable[..., Awaitable[T]]) -> Any:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            result: T = await within(ensureDeferred(fn(*args, **kwargs)), seconds)  # type: ignore[arg-type]
            return result

        return wrapper

    return deco

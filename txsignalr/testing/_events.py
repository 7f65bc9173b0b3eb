"""The test server's event log: ``(kind, info)`` pairs tests can read and wait for."""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer

__all__ = ["EventLog"]


class EventLog:
    """
    A bounded log of ``(kind, info)`` events with waiters per kind.

    :param size: how many events are kept (the oldest are dropped).
    """

    def __init__(self, size: int) -> None:
        self.log: deque[tuple[str, dict[str, Any]]] = deque(maxlen=size)
        self._waiters: dict[str, list[defer.Deferred[dict[str, Any]]]] = {}

    def record(self, kind: str, info: dict[str, Any]) -> None:
        """Append an event and fire the waiters for its kind."""
        self.log.append((kind, info))
        for d in self._waiters.pop(kind, []):
            d.callback(info)

    def when_event(self, kind: str) -> defer.Deferred[dict[str, Any]]:
        """:returns: a Deferred fired with the info of the next ``kind`` event."""
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.setdefault(kind, []).append(d)
        return d

    def events(self, kind: str) -> list[dict[str, Any]]:
        """:returns: the info of every ``kind`` event still in the log."""
        return [info for k, info in self.log if k == kind]

"""Observer lists for the connection's events."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

__all__ = ["Observers"]


class Observers:
    """A list of callbacks; a failing one is logged and does not stop the others."""

    __slots__ = ("_callbacks", "_log", "_what")

    def __init__(self, log: Logger, what: str) -> None:
        self._callbacks: list[Callable[..., object]] = []
        self._log = log
        self._what = what

    def add(self, callback: Callable[..., object]) -> Callable[[], None]:
        """Add ``callback``; returns a function that removes it again."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def fire(self, *args: object) -> None:
        """Call every callback with ``args``."""
        for callback in list(self._callbacks):
            try:
                callback(*args)
            except Exception:
                self._log.failure(
                    "{what} callback {callback!r} raised", what=self._what, callback=callback
                )

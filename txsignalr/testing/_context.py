"""
The small interface hubs use to reach clients and time: :class:`HubContext`.

Hubs depend on this, not on the concrete server, so that the server's layers
(transports, connection registry, endpoints) can change without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["HubContext"]


class HubContext(Protocol):
    """What a hub may ask of the server it is registered with (hub names as spelled)."""

    @property
    def reactor(self) -> IReactorTime:
        """The clock every timer runs on."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        """Run ``fn(*args)`` after ``delay`` seconds; cancelled when the server stops."""

    def sleep(self, seconds: float) -> Deferred[None]:
        """:returns: a Deferred fired after ``seconds``, cancelled when the server stops."""

    def send_to_all(self, hub: str, method: str, *args: Any) -> None:
        """Call a client method on every connection that listed ``hub``."""

    def send_to_connection(self, connection_id: str, hub: str, method: str, *args: Any) -> None:
        """Call a client method on one connection."""

    def send_to_group(self, hub: str, group: str, hub_method: str, *args: Any) -> None:
        """Call a client method on every member of a hub group."""

    def publish_to_connection(self, connection_id: str, payload: str) -> None:
        """Publish a raw JSON message to one connection."""

    def report_progress(self, connection_id: str, invocation_id: str, value: Any) -> None:
        """Send a progress message for an invocation to its caller."""

    def add_to_group(self, connection_id: str, hub: str, group: str) -> None:
        """Add a connection to a hub group."""

    def remove_from_group(self, connection_id: str, hub: str, group: str) -> None:
        """Remove a connection from a hub group."""

    def invoke_with_result(self, connection_id: str, method: str, *args: Any) -> Deferred[Any]:
        """ASP.NET Core: invoke a client method and wait for its result."""

    def close_core_connection(
        self, connection_id: str, error: str | None = None, allow_reconnect: bool = False
    ) -> bool:
        """ASP.NET Core: send Close (with ``error``, ``allowReconnect``) and end the connection."""

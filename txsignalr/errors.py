"""
The errors txsignalr raises.

Everything the library raises on purpose derives from :class:`SignalRError`, so an
application can catch the whole family in one place.  Two standard Twisted errors are
used as they are: :class:`twisted.internet.defer.CancelledError` when a caller cancels a
Deferred, and :class:`twisted.internet.defer.TimeoutError` when an invocation times out.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConnectionClosed",
    "HandshakeError",
    "HubError",
    "InvalidStateError",
    "InvalidURL",
    "MessageTooLarge",
    "NegotiationError",
    "NoTransportError",
    "ProtocolError",
    "SignalRError",
    "StartError",
    "TLSConfigError",
]


class SignalRError(Exception):
    """Base class of every error raised by txsignalr."""


class _HTTPAnswerError(SignalRError):
    """
    An error about an HTTP answer: the message, plus the status and body when an
    answer arrived.

    :ivar status: the HTTP status code, or ``None`` when no HTTP answer arrived.
    :ivar body: the response body (bytes, possibly empty), or ``None``.
    """

    def __init__(self, message: str, status: int | None = None, body: bytes | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        body = self.body or b""
        if b"token" in body.lower():
            # A negotiate answer carries the connection token: never print it.
            return f"{self.message} (HTTP {self.status}, body withheld: it holds a token)"
        return f"{self.message} (HTTP {self.status}, body {body[:200]!r})"


class NegotiationError(_HTTPAnswerError):
    """The negotiate request failed or its answer cannot be used."""


class StartError(_HTTPAnswerError):
    """
    The connection could not be started after a successful negotiate: the transport
    failed before the init frame, the init frame did not arrive in time, or ``/start``
    did not answer ``started``.  ``status`` and ``body`` are those of a failed
    ``/start`` or WebSocket upgrade, if any.
    """


class HandshakeError(SignalRError):
    """
    An ASP.NET Core server refused the handshake (``{"error":…}``): say, an unknown hub
    protocol or version.

    :ivar error: the server's error text.
    """

    def __init__(self, error: str):
        super().__init__(f"the server refused the handshake: {error}")
        self.error = error


class ProtocolError(SignalRError):
    """
    The server sent something that is not valid SignalR: a frame that is not JSON (or
    MessagePack), a frame of the wrong shape, a message without a required field.

    :ivar data: the offending payload (truncated to 500 characters in ``str()``).
    :ivar message_type: ASP.NET Core: the hub message type (1-9) of an invalid message
        whose type was readable, else ``None``.
    """

    message_type: int | None = None

    def __init__(self, message: str, data: Any = None):
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        if self.data is None:
            return self.message
        text = self.data if isinstance(self.data, str) else repr(self.data)
        if len(text) > 500:
            text = text[:500] + "..."
        return f"{self.message}: {text}"


class HubError(SignalRError):
    """
    A hub method invocation failed on the server.

    :ivar message: the server's error text (``E``).
    :ivar data: the error data (``D``) of a ``HubException``, else ``None``.
    :ivar is_hub_exception: ``True`` when the server raised a ``HubException`` (``H``).
    :ivar stack_trace: the server's stack trace (``T``) when it sent one.
    :ivar hub: the hub name used for the call.
    :ivar method: the method name used for the call.
    """

    def __init__(
        self,
        message: str,
        data: Any = None,
        is_hub_exception: bool = False,
        stack_trace: str | None = None,
        hub: str | None = None,
        method: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.data = data
        self.is_hub_exception = is_hub_exception
        self.stack_trace = stack_trace
        self.hub = hub
        self.method = method

    def __str__(self) -> str:
        where = f"{self.hub}.{self.method}: " if self.hub and self.method else ""
        if self.data is not None:
            return f"{where}{self.message} (data: {self.data!r})"
        return f"{where}{self.message}"


class ConnectionClosed(SignalRError):
    """
    The connection was closed or lost before an operation could complete.

    :ivar reason: a human-readable reason.
    :ivar cause: the underlying exception, when there is one.
    :ivar status: the HTTP status when the server refused a WebSocket upgrade.
    """

    def __init__(self, reason: str, cause: BaseException | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.cause = cause
        self.status = status

    def __str__(self) -> str:
        if self.cause is not None:
            return f"{self.reason} ({type(self.cause).__name__}: {self.cause})"
        return self.reason


class InvalidStateError(SignalRError):
    """An operation was attempted in a connection state that does not allow it."""


class InvalidURL(SignalRError, ValueError):
    """The connection URL or its query parameters cannot be used."""


class TLSConfigError(SignalRError, ValueError):
    """A CA, client certificate or private key file cannot be read or used."""


class MessageTooLarge(SignalRError):
    """An invocation is larger than the connection's ``max_message_size``."""


class NoTransportError(StartError, ConnectionClosed):
    """
    No transport could open the connection: each one the connection may use was ruled
    out by negotiate or failed before the init frame (refused, an error, no init frame
    within TransportConnectTimeout).

    :ivar attempts: ``(transport name, why)`` for each transport, in the order tried.
    :ivar status: the HTTP status of the last refused attempt, if any.
    """

    def __init__(self, attempts: list[tuple[str, str]], status: int | None = None):
        detail = "; ".join(f"{name}: {why}" for name, why in attempts)
        text = f"No transport could be initialized successfully ({detail})"
        SignalRError.__init__(self, text)
        self.message = self.reason = text
        self.attempts = attempts
        self.status = status
        self.body = None
        self.cause = None

    def __str__(self) -> str:
        return self.message

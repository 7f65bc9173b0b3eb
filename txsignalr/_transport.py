"""
The seam between a connection and its transports.

A transport only opens, sends, closes and hands what it receives upward; it never knows
the protocol family.  What it needs from the family (URLs, how a send body is encoded,
the next long-poll URL) comes in a :class:`TransportRequest` built by the family session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from txsignalr._http import HttpSession
from txsignalr._protocol import Transport, redact_url
from txsignalr.errors import ConnectionClosed, MessageTooLarge, SignalRError

__all__ = [
    "DEFAULT_MAX_RECEIVE_SIZE",
    "HttpTransport",
    "ITransport",
    "TransportFactory",
    "TransportRequest",
    "TransportSink",
]

#: The most bytes one received message may hold by default, for both families:
#: room for an exchange's order-book snapshot, not for a runaway server.
DEFAULT_MAX_RECEIVE_SIZE = 16 * 1024 * 1024


@attrs.frozen
class TransportRequest:
    """
    Everything a transport needs to open one receive channel.

    :ivar transport: which transport this is for.
    :ivar url: the ``http(s)://`` URL that opens the channel (``/connect`` or
        ``/reconnect``); WebSockets map it to ``ws(s)://``.
    :ivar send_url: where HTTP transports POST what the connection sends.
    :ivar send_body: turns an outgoing message into the POST body and its content type.
    :ivar poll: long polling: ``poll() -> (url, delay)``, the next poll's URL and how many
        seconds to wait before sending it, or ``None`` once the session has ended.
    :ivar poll_timeout: long polling: seconds after which a poll that has not been
        answered counts as lost.
    :ivar poll_method: long polling: the method of a poll (classic POSTs, ASP.NET Core
        GETs).
    :ivar max_size: the most bytes one received message (WebSocket message, event,
        poll body) may hold; a larger one loses the channel with
        :class:`~txsignalr.MessageTooLarge` as the cause.
    :ivar frame_binary: WebSockets: whether a message goes as a binary frame
        (``None``: every message is a text frame).
    :ivar join_events: Server-Sent Events: hand the sink the events of one read as one
        message, their data joined, for a family whose events carry a byte stream of
        records (ASP.NET Core) rather than a frame each (classic).
    """

    transport: Transport
    url: str = attrs.field(repr=redact_url)
    send_url: str | None = attrs.field(default=None, repr=lambda u: redact_url(u or ""))
    send_body: Callable[[bytes], tuple[bytes, str]] | None = None
    poll: Callable[[], tuple[str, float] | None] | None = None
    poll_timeout: float | None = None
    poll_method: str = "POST"
    max_size: int = DEFAULT_MAX_RECEIVE_SIZE
    frame_binary: Callable[[bytes], bool] | None = None
    join_events: bool = False


class TransportSink(Protocol):
    """What a transport reports to."""

    def transport_opened(self, transport: ITransport) -> None:
        """The channel is open (upgrade done, stream or first poll answered)."""

    def data_received(self, transport: ITransport, data: bytes) -> None:
        """One message of the channel: a WebSocket message, an SSE event, a poll body."""

    def transport_lost(self, transport: ITransport, reason: ConnectionClosed) -> None:
        """The channel failed or closed on its own; not called after close()/abort()."""


class ITransport(Protocol):
    """A receive channel plus a way to send."""

    #: whether the transport keeps itself alive, so no keep-alive watchdog is needed
    inherent_keepalive: bool

    def open(self) -> None:
        """Start opening; the sink hears ``transport_opened`` or ``transport_lost``."""

    def send(self, data: bytes) -> Deferred[bytes]:
        """
        Send one message.

        :returns: a Deferred of what the server answered in the same exchange (the body
            of an HTTP ``/send``; ``b""`` for WebSockets); it fails with a
            :class:`~txsignalr.SignalRError` when the message could not be sent.
        """

    def close(self, timeout: float = 2.0) -> Deferred[None]:
        """Close gracefully without telling the sink; fires once everything is shut."""

    def abort(self) -> Deferred[None]:
        """Drop everything at once without telling the sink."""


class TransportFactory(Protocol):
    """Builds a transport: ``factory(reactor, request, http, sink)``."""

    def __call__(
        self,
        reactor: IReactorTime,
        request: TransportRequest,
        http: HttpSession,
        sink: TransportSink,
    ) -> ITransport: ...


class HttpTransport:
    """
    What the HTTP transports (Server-Sent Events, long polling) share: each send is a
    POST of its own to the request's ``send_url``, and closing is aborting.
    Subclasses implement :meth:`open` and :meth:`_shut`.
    """

    inherent_keepalive = False

    def __init__(
        self,
        reactor: IReactorTime,
        request: TransportRequest,
        http: HttpSession,
        sink: TransportSink,
    ) -> None:
        self._reactor = reactor
        self._request = request
        self._http = http
        self._sink = sink
        self._done = False

    def send(self, data: bytes) -> Deferred[bytes]:
        """
        POST one message to ``send_url``; the Deferred fires with the answer's body.

        It fails with :class:`~txsignalr.ConnectionClosed` when the request got no
        answer, and with a :class:`~txsignalr.SignalRError` naming the status when
        it was answered with another status than 200.
        """
        return Deferred.fromCoroutine(self._post(data))

    async def _post(self, data: bytes) -> bytes:
        request = self._request
        assert request.send_url is not None and request.send_body is not None
        body, content_type = request.send_body(data)
        try:
            status, answer = await self._http.request(
                "POST",
                request.send_url,
                "send",
                self._http.no_timeout,
                data=body,
                headers={"Content-Type": content_type},
                max_size=request.max_size,
            )
        except MessageTooLarge:
            raise
        except SignalRError as e:
            raise ConnectionClosed(f"the /send request got no answer: {e}", e) from None
        if status != 200:
            raise SignalRError(f"/send answered HTTP {status}: {answer[:200]!r}")
        return answer

    def close(self, timeout: float = 2.0) -> Deferred[None]:
        """Close: for an HTTP transport the same as :meth:`abort`."""
        return self.abort()

    def abort(self) -> Deferred[None]:
        """Stop receiving at once, without telling the sink."""
        self._shut()
        return succeed(None)

    def _lose(self, reason: ConnectionClosed) -> None:
        self._shut()
        self._sink.transport_lost(self, reason)

    def open(self) -> None:
        """Start opening the receive channel."""
        raise NotImplementedError

    def _shut(self) -> None:
        """Stop every request of the receive channel and mark the transport done."""
        raise NotImplementedError

"""
The HTTP server transports: Server-Sent Events (one streaming response, ``data:``
events) and long polling (one held request per poll, answered with one frame).  Each
request becomes a registry channel; hub invocations for both arrive on ``/send``.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from txsignalr.testing._http import JSON
from txsignalr.testing._registry import ConnectionRegistry, ReceiveRequest
from txsignalr.testing._timers import Timers
from txsignalr.testing._wire import encode_text

__all__ = ["HttpTransportSettings", "HttpTransports"]

SSE = "serverSentEvents"
LONG_POLLING = "longPolling"


class HttpTransportSettings(Protocol):
    """The server options the HTTP transports read (live)."""

    connection_timeout: float
    long_poll_delay: float


class _HttpChannel:
    """A registry channel over one twisted.web request."""

    transport_name = ""
    long_poll_delay_ms: int | None = None

    def __init__(self, request: Request, registry: ConnectionRegistry, connection_id: str) -> None:
        self._request = request
        self._registry = registry
        self._connection_id = connection_id
        #: the response is finished or its connection lost: nothing more to write.
        self.done = False
        self.aborted = False
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, failure: Failure) -> None:
        if self.done:
            return
        self.done = True
        self._ended()
        self._registry.detach(self, self._connection_id, lost=True)

    def _ended(self) -> None:
        """Hook: the request is over (cancel timers)."""

    def _write(self, data: bytes) -> None:
        if not self.done:
            self._request.write(data)

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self._ended()
            self._request.finish()

    def send_frame(self, text: str) -> bool:
        raise NotImplementedError

    def send_keepalive(self) -> None:
        raise NotImplementedError

    def close(self, last_frame: str) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the TCP connection the request came on."""
        self.aborted = True
        self._ended()
        transport: Any = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()


class _ServerSentEventsChannel(_HttpChannel):
    transport_name = SSE

    def open(self) -> None:
        self._request.setResponseCode(200)
        self._request.setHeader(b"content-type", b"text/event-stream")
        self._write(b"data: initialized\n\n")

    def send_frame(self, text: str) -> bool:
        self._write(b"data: " + encode_text(text) + b"\n\n")
        return True

    def send_keepalive(self) -> None:
        self._write(b"data: {}\n\n")

    def close(self, last_frame: str) -> None:
        self._finish()


class _LongPollingChannel(_HttpChannel):
    transport_name = LONG_POLLING

    def __init__(
        self,
        request: Request,
        registry: ConnectionRegistry,
        connection_id: str,
        timers: Timers,
        settings: HttpTransportSettings,
    ) -> None:
        super().__init__(request, registry, connection_id)
        self._timers = timers
        self._settings = settings
        self._timer: IDelayedCall | None = None
        delay = settings.long_poll_delay
        self.long_poll_delay_ms = round(delay * 1000) if delay else None

    def open(self) -> None:
        self._request.setResponseCode(200)
        self._request.setHeader(b"content-type", JSON)

    def hold(self) -> None:
        """Not answered at once: send the headers and wait for ``ConnectionTimeout``."""
        if self.done or self.aborted:
            return
        self._write(b"")
        self._timer = self._timers.call_later(self._settings.connection_timeout, self._timeout)

    def _timeout(self) -> None:
        self._timer = None
        if not self._registry.poll_timed_out(self, self._connection_id) and not self.done:
            self._timer = self._timers.call_later(self._settings.connection_timeout, self._timeout)

    def _ended(self) -> None:
        self._timers.cancel(self._timer)
        self._timer = None

    def send_frame(self, text: str) -> bool:
        self._write(encode_text(text))
        self._finish()
        return False

    def send_keepalive(self) -> None:
        self._write(b" ")

    def close(self, last_frame: str) -> None:
        self.send_frame(last_frame)


class HttpTransports:
    """
    Serves SSE and long polling receive requests.

    :param registry: the connection registry.
    :param timers: the server's timers.
    :param settings: the live server options.
    """

    def __init__(
        self, registry: ConnectionRegistry, timers: Timers, settings: HttpTransportSettings
    ) -> None:
        self._registry = registry
        self._timers = timers
        self._settings = settings

    def serve(self, request: Request, receive: ReceiveRequest) -> int:
        """Answer a validated SSE or long polling receive request."""
        cid = receive.connection_id
        if receive.transport == SSE:
            sse = _ServerSentEventsChannel(request, self._registry, cid)
            sse.open()
            self._registry.attach(sse, receive)
            return NOT_DONE_YET
        poll = _LongPollingChannel(request, self._registry, cid, self._timers, self._settings)
        poll.open()
        self._registry.attach(poll, receive)
        poll.hold()
        return NOT_DONE_YET

"""
The long-polling transport: one request opens the channel, then poll after poll (POSTs
for classic, GETs for ASP.NET Core), each held by the server until it has something to
say; sends are POSTs of their own.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txsignalr._http import HttpSession
from txsignalr._httpstream import PollClient, lean_http
from txsignalr._transport import HttpTransport, TransportRequest, TransportSink
from txsignalr.errors import ConnectionClosed, SignalRError

__all__ = ["LongPollingTransport"]

_FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}

#: A ``/reconnect`` poll is held by the server like any poll, so the channel counts
#: as open once the request has stood this long without failing (Microsoft's clients
#: also report "reconnected" before the first poll is answered).
OPEN_GRACE = 0.5


class LongPollingTransport(HttpTransport):
    """
    Long polling on a ``/connect`` or ``/reconnect`` URL, then the request's ``poll()``.

    It carries its own keep-alive: every poll is answered within the server's
    ConnectionTimeout, and one that takes longer than the request's ``poll_timeout``
    counts as lost.
    """

    inherent_keepalive = True

    def __init__(
        self,
        reactor: IReactorTime,
        request: TransportRequest,
        http: HttpSession,
        sink: TransportSink,
    ) -> None:
        assert request.poll is not None
        super().__init__(reactor, request, http, sink)
        self._poll: Deferred[tuple[int, bytes]] | None = None
        self._delay: IDelayedCall | None = None
        self._grace: IDelayedCall | None = None
        self._opened = False
        #: the polls' own kept-alive connection (the session's Agent otherwise)
        self._lean = PollClient(reactor, http) if lean_http(http, request.url) else None

    def open(self) -> None:
        self._grace = self._reactor.callLater(OPEN_GRACE, self._mark_open)
        self._send_poll(self._request.url, "connect")

    def _mark_open(self) -> None:
        self._grace = None
        if not self._opened and not self._done:
            self._opened = True
            self._sink.transport_opened(self)

    def _send_poll(self, url: str, what: str) -> None:
        request = self._request
        if request.poll_method == "POST":
            data: bytes | None = b""
            headers: dict[str, str] | None = _FORM
        else:
            data = headers = None
        # A poll body holds every message since the last poll.
        max_size = 4 * request.max_size
        d: Deferred[tuple[int, bytes]]
        if self._lean is not None and lean_http(self._http, url):
            d = self._lean.request(
                request.poll_method,
                url,
                what,
                request.poll_timeout,
                data=data,
                headers=headers,
                max_size=max_size,
            )
        else:
            d = Deferred.fromCoroutine(
                self._http.request(
                    request.poll_method,
                    url,
                    what,
                    request.poll_timeout,
                    data=data,
                    headers=headers,
                    max_size=max_size,
                )
            )
        self._poll = d
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, answer: tuple[int, bytes]) -> None:
        self._poll = None
        if self._done:
            return
        status, body = answer
        if status == 204:
            # ASP.NET Core: the server ended the connection.
            self._lose(
                ConnectionClosed("the server closed the connection (poll answered HTTP 204)")
            )
            return
        if status != 200:
            self._lose(ConnectionClosed(f"the poll was refused with HTTP {status}", status=status))
            return
        if not self._opened:
            self._cancel_grace()
            self._mark_open()
            if self._done:
                return
        if body.strip():
            self._sink.data_received(self, body)
            if self._done:
                return
        assert self._request.poll is not None
        following = self._request.poll()
        if following is None:
            self._shut()
            return
        url, delay = following
        if delay > 0:
            self._delay = self._reactor.callLater(delay, self._delayed_poll, url)
        else:
            self._send_poll(url, "poll")

    def _delayed_poll(self, url: str) -> None:
        self._delay = None
        if not self._done:
            self._send_poll(url, "poll")

    def _failed(self, failure: Failure) -> None:
        self._poll = None
        if self._done or failure.check(CancelledError):
            return
        error = failure.value
        text = str(error) if isinstance(error, SignalRError) else failure.getErrorMessage()
        self._lose(ConnectionClosed(f"long poll failed: {text}", error))

    def _cancel_grace(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None

    def _shut(self) -> None:
        self._done = True
        self._cancel_grace()
        if self._delay is not None and self._delay.active():
            self._delay.cancel()
        self._delay = None
        poll, self._poll = self._poll, None
        if poll is not None:
            poll.cancel()
        if self._lean is not None:
            self._lean.close()

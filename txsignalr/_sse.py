"""
The Server-Sent Events transport: a streaming GET read incrementally through a small
sans-I/O ``text/event-stream`` parser, and sends as HTTP POSTs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from txsignalr._http import HttpSession
from txsignalr._httpstream import StreamRequest, lean_http
from txsignalr._transport import HttpTransport, TransportRequest, TransportSink
from txsignalr.errors import ConnectionClosed, MessageTooLarge

__all__ = ["EventStreamParser", "ServerSentEventsTransport"]

#: The most one SSE line may hold before the stream counts as broken.
DEFAULT_MAX_EVENT = 16 * 1024 * 1024
#: an unfinished line at most this long is joined to the next chunk (a copy); a
#: longer one is kept in pieces, so that a long event costs time in proportion to it
_GLUE = 64 * 1024


class EventStreamParser:
    """
    Splits a ``text/event-stream`` into the data of its events (WHATWG rules for the
    parts SignalR uses): lines end in CR, LF or CRLF; ``data:`` lines (one optional
    space after the colon) are joined with LF; a blank line ends the event; comments
    (``:…``) and other fields are ignored; an event without data is dropped.

    :param max_size: the most bytes one event (or one unfinished line) may hold.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_size
        #: the start of a line whose end has not arrived yet, as the chunks came
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._data: list[bytes] = []
        self._size = 0
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """
        Add bytes from the stream.  Only the new bytes are scanned, so an event that
        arrives in many chunks costs time in proportion to its size.

        :returns: the data of each event completed by them, in order.
        :raises MessageTooLarge: when an event or a line grows past ``max_size``.
        """
        if not chunk:
            return []
        if self._partial and not self._data and self._partial_size <= min(_GLUE, len(chunk)):
            # A short unfinished line (a read seldom ends with an event): glue it on,
            # so that the chunk starts at a line again and may take the fast lane.
            # (At most as many bytes as the chunk's are copied: time stays linear.)
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
        if not self._partial and not self._data and not self._skip_lf:
            fast = self._whole_events(chunk)
            if fast is not None:
                return fast
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        events: list[bytes] = []
        start = 0
        end = len(chunk)
        while start < end:
            lf = chunk.find(b"\n", start)
            cr = chunk.find(b"\r", start, lf if lf >= 0 else end)
            if cr >= 0:
                stop = cr
                nxt = cr + 1
                if nxt < end:
                    if chunk[nxt] == 0x0A:
                        nxt += 1
                else:
                    self._skip_lf = True  # a CR at the end of a chunk: LF may follow
            elif lf >= 0:
                stop = lf
                nxt = lf + 1
            else:
                break
            line = chunk[start:stop]
            if self._partial:
                self._partial.append(line)
                line = b"".join(self._partial)
                self._partial = []
                self._partial_size = 0
            self._line(line, events)
            start = nxt
        if start < end:
            self._partial.append(chunk[start:])
            self._partial_size += end - start
            if self._partial_size + self._size > self._max:
                raise MessageTooLarge(f"an event-stream event is over the {self._max} byte limit")
        return events

    def _whole_events(self, chunk: bytes) -> list[bytes] | None:
        """
        The common chunk, whole one-line ``data: `` events (as servers write them, one
        or many to a read) and maybe the start of a line: their data without a scan
        line by line, or ``None`` when the chunk holds anything else.
        """
        if not chunk.startswith(b"data: ") or len(chunk) > self._max:
            return None
        if b"\r" in chunk:
            sep, line_end = b"\r\n\r\n", 2
        else:
            sep, line_end = b"\n\n", 0
        pieces = chunk.split(sep)
        tail = pieces.pop()
        k = len(pieces)
        # Every CR and LF is in an event's end, and every event is one data line.
        if (
            not k
            or chunk.count(b"\n") != 2 * k
            or (line_end and chunk.count(b"\r") != 2 * k)
            or chunk.count(sep + b"data: ") != k - 1 + tail.startswith(b"data: ")
        ):
            return None
        if tail:
            self._partial = [tail]
            self._partial_size = len(tail)
        return [p[6:] for p in pieces]

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
                self._size = 0
            return
        if line.startswith(b"data"):
            field, colon, value = line.partition(b":")
            if field != b"data":
                return
            if colon and value.startswith(b" "):
                value = value[1:]
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                raise MessageTooLarge(f"an event-stream event is over the {self._max} byte limit")
        # comments (":...") and the fields event/id/retry are of no use to SignalR


class _StreamProtocol(Protocol):
    def __init__(self, owner: ServerSentEventsTransport) -> None:
        self._owner = owner

    def dataReceived(self, data: bytes) -> None:
        self._owner._chunk(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._owner._ended(reason)


class ServerSentEventsTransport(HttpTransport):
    """
    One event stream from a ``/connect`` or ``/reconnect`` URL.

    The transport is open once the server answered 200 with an event stream; each
    event's data goes to the sink as one message.  Nothing keeps it alive itself: the
    connection's keep-alive watch does.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        request: TransportRequest,
        http: HttpSession,
        sink: TransportSink,
    ) -> None:
        super().__init__(reactor, request, http, sink)
        self._parser = EventStreamParser(request.max_size)
        self._opening: Deferred[IResponse] | None = None
        self._stream: _StreamProtocol | None = None
        self._lean: StreamRequest | None = None

    def open(self) -> None:
        if lean_http(self._http, self._request.url):
            # Our own reader: the stream's chunks decoded a socket read at a time.
            self._lean = StreamRequest(
                self._reactor,
                self._http,
                "GET",
                self._request.url,
                "event stream",
                self,
                headers={"Accept": "text/event-stream"},
            )
            return
        d = self._http.open(
            "GET",
            self._request.url,
            "event stream",
            headers={"Accept": "text/event-stream"},
            unbuffered=True,
        )
        self._opening = d
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, response: IResponse) -> None:
        self._opening = None
        if self._done:
            _drop(response)
            return
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if response.code != 200 or not content_type.lower().startswith(b"text/event-stream"):
            _drop(response)
            self._lose(
                ConnectionClosed(
                    f"the event stream was refused with HTTP {response.code}",
                    status=response.code,
                )
            )
            return
        # Open first: the body may be handed over at once, and its events belong to
        # an open channel (a reconnect must be "connected" before they arrive).
        self._sink.transport_opened(self)
        if self._done:
            _drop(response)
            return
        stream = _StreamProtocol(self)
        self._stream = stream
        response.deliverBody(stream)

    # -- the lean reader's StreamSink

    def stream_head(self, status: int, content_type: bytes) -> bool:
        if self._done:
            return False
        if status != 200 or not content_type.lower().startswith(b"text/event-stream"):
            self._lose(
                ConnectionClosed(f"the event stream was refused with HTTP {status}", status=status)
            )
            return False
        # Open first: events in the same read belong to an open channel.
        self._sink.transport_opened(self)
        return not self._done

    def stream_failed(self, error: Exception) -> None:
        self._lean = None
        if not self._done:
            self._lose(ConnectionClosed("could not open the event stream", error))

    def stream_ended(self) -> None:
        self._lean = None
        if not self._done:
            self._lose(ConnectionClosed("the server ended the event stream"))

    def _failed(self, failure: Failure) -> None:
        self._opening = None
        if not self._done and not failure.check(CancelledError):
            self._lose(ConnectionClosed("could not open the event stream", failure.value))

    def _chunk(self, data: bytes) -> None:
        if self._done:
            return
        try:
            events = self._parser.feed(data)
        except MessageTooLarge as e:
            self._lose(ConnectionClosed(str(e), e))
            return
        if self._request.join_events and len(events) > 1:
            # One read's events as one message: the sink's record splitter does not
            # care where the events were cut, and each event's dispatch costs.
            self._sink.data_received(self, b"".join(events))
            return
        for event in events:
            if self._done:
                return
            self._sink.data_received(self, event)

    #: the lean reader hands each socket read's decoded body straight to the parser
    stream_data = _chunk

    def _ended(self, reason: Failure) -> None:
        self._stream = None
        if not self._done:
            self._lose(ConnectionClosed("the server ended the event stream"))

    def _shut(self) -> None:
        self._done = True
        if self._opening is not None:
            opening, self._opening = self._opening, None
            opening.cancel()
        lean, self._lean = self._lean, None
        if lean is not None:
            lean.close()
        stream, self._stream = self._stream, None
        if stream is not None and stream.transport is not None:
            stream.transport.stopProducing()  # type: ignore[attr-defined]


def _drop(response: Any) -> None:
    """Close an unbuffered response's connection without reading its body."""

    class _Discard(Protocol):
        def connectionMade(self) -> None:
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]

    response.deliverBody(_Discard())

"""The sans-I/O ``text/event-stream`` parser of the SSE transport."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsignalr import MessageTooLarge
from txsignalr._sse import EventStreamParser

# What a real 2.4.3 server sends (transcript 03): LF line ends.
REAL = (
    b"data: initialized\n\n"
    b'data: {"C":"d-98046728-B,0|H,0|I,1","S":1,"M":[]}\n\n'
    b"data: {}\n\n"
)
EXPECTED = [b"initialized", b'{"C":"d-98046728-B,0|H,0|I,1","S":1,"M":[]}', b"{}"]


def feed_all(parser: EventStreamParser, chunks: list[bytes]) -> list[bytes]:
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def test_real_server_stream() -> None:
    """The transcript's bytes give the init marker, the init frame and a keep-alive."""
    assert EventStreamParser().feed(REAL) == EXPECTED


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    """CRLF (Windows hosts), LF and lone CR all end lines."""
    stream = REAL.replace(b"\n", newline)
    assert EventStreamParser().feed(stream) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(REAL.replace(b"\n", b"\r\n")))))
@settings(max_examples=200, deadline=None)
def test_split_at_any_byte_boundary(cuts: list[int]) -> None:
    """Events split across TCP chunks anywhere (CRLF split too) come out whole, once."""
    stream = REAL.replace(b"\n", b"\r\n")
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert feed_all(EventStreamParser(), chunks) == EXPECTED


def test_comments_other_fields_and_multiline_data() -> None:
    """Comments and non-data fields are ignored; data lines join with LF; no space kept."""
    stream = b": hello\nevent: x\nid: 3\ndata:a\ndata:  b\nretry: 5\n\ndata\n\n\n\n"
    assert EventStreamParser().feed(stream) == [b"a\n b", b""]


def test_event_without_data_is_dropped() -> None:
    """A blank line with no data pending yields nothing."""
    assert EventStreamParser().feed(b"\n\n: keep\n\n") == []


def test_oversized_event_is_refused() -> None:
    """An event or an unfinished line past the limit is a MessageTooLarge, not memory."""
    with pytest.raises(MessageTooLarge):
        EventStreamParser(max_size=100).feed(b"data: " + b"x" * 200 + b"\n\n")
    parser = EventStreamParser(max_size=100)
    parser.feed(b"data: " + b"x" * 60)
    with pytest.raises(MessageTooLarge):
        parser.feed(b"x" * 60)


def test_empty_chunk_keeps_a_pending_cr() -> None:
    """An empty read between CR and LF does not turn CRLF into two line ends."""
    parser = EventStreamParser()
    assert feed_all(parser, [b"data: a\r", b"", b"\ndata: b\r\n\r\n"]) == [b"a\nb"]


def test_an_event_in_many_chunks_is_reassembled() -> None:
    """A long event split into many small chunks comes out whole (scanned once)."""
    body = b"x" * 100_000
    stream = b"data: " + body + b"\n\n"
    chunks = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    assert feed_all(EventStreamParser(), chunks) == [body]


class _Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def transport_opened(self, transport: object) -> None:
        pass

    def data_received(self, transport: object, data: bytes) -> None:
        self.messages.append(data)

    def transport_lost(self, transport: object, reason: object) -> None:
        raise AssertionError(f"lost: {reason}")


@pytest.mark.parametrize("join", [False, True])
def test_one_read_of_events_is_one_message_when_the_family_joins_them(join: bool) -> None:
    """ASP.NET Core's events carry a byte stream of records: the events of one read go
    to the sink as one message (one dispatch per read, not per event), in order and
    with nothing lost; classic's events are frames, one message each."""
    from http.cookiejar import CookieJar

    from twisted.internet.task import Clock

    from txsignalr import Transport
    from txsignalr._http import HttpSession
    from txsignalr._sse import ServerSentEventsTransport
    from txsignalr._transport import TransportRequest

    clock = Clock()
    request = TransportRequest(
        Transport.server_sent_events, "http://127.0.0.1:1/hub", join_events=join
    )
    sink = _Sink()
    http = HttpSession(clock, {}, CookieJar(), None, None, 5.0)
    transport = ServerSentEventsTransport(clock, request, http, sink)  # type: ignore[arg-type]
    events = [b'{"type":1,"target":"t","arguments":[%d]}\x1e' % i for i in range(5)]
    wire = b"".join(b"data: " + e + b"\r\n\r\n" for e in events)
    transport.stream_data(wire[:100])  # part of the stream: whole events only go on
    transport.stream_data(wire[100:])
    assert b"".join(sink.messages) == b"".join(events)
    if join:
        assert len(sink.messages) == 2  # one message per read that completed events
    else:
        assert sink.messages == events

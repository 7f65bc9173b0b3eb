"""The lean HTTP/1.1 response reader of the receive paths (sans-I/O) and the event
stream parser's lane for whole events, checked against the line-by-line path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsignalr import MessageTooLarge
from txsignalr._httpstream import (
    MAX_HEAD,
    HttpProtocolError,
    ResponseHead,
    ResponseParser,
)
from txsignalr._sse import EventStreamParser


class Sink:
    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.body: list[bytes] = []
        self.ended: list[bool] = []

    def response_head(self, head: ResponseHead) -> None:
        self.head = head

    def response_body(self, data: bytes) -> None:
        assert self.ended == [], "body after the end"
        self.body.append(data)

    def response_end(self, reusable: bool) -> None:
        self.ended.append(reusable)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    + chunked(b":\r\n\r\n", b"data: {}\x1e\r\n\r\n", b"x" * 300, b"\r\n" * 3)
)
CHUNKED_BODY = b":\r\n\r\ndata: {}\x1e\r\n\r\n" + b"x" * 300 + b"\r\n" * 3


def test_a_chunked_answer_read_at_once() -> None:
    """Head (lower-case names, repeated headers kept), dechunked body in one piece, end."""
    sink = Sink()
    parser = ResponseParser(sink)
    assert parser.feed(CHUNKED) == b""
    assert sink.head is not None and sink.head.status == 200
    assert sink.head.get(b"set-cookie") == [b"a=1", b"b=2"]
    assert sink.head.first(b"content-type") == b"text/event-stream"
    assert sink.body == [CHUNKED_BODY]
    assert sink.ended == [True] and parser.done


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=12))
@settings(max_examples=300, deadline=None)
def test_a_chunked_answer_cut_anywhere(points: list[int]) -> None:
    """However the reads cut it (in the head, a size line, a CRLF, the trailer), the
    same body comes out, once, and the answer ends once."""
    sink = Sink()
    parser = ResponseParser(sink)
    for piece in cut(CHUNKED, points):
        assert parser.feed(piece) == b""
    assert b"".join(sink.body) == CHUNKED_BODY
    assert sink.ended == [True]


@pytest.mark.parametrize(
    ("head", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 5\r\n\r\n", True),
    ],
)
def test_content_length_and_keep_alive(head: bytes, reusable: bool) -> None:
    """A Content-Length body ends at its length; what follows is handed back; the
    connection is reusable as HTTP/1.1 and HTTP/1.0 say."""
    sink = Sink()
    parser = ResponseParser(sink)
    assert parser.feed(head + b"ab") == b""
    assert parser.feed(b"cdeNEXT") == b"NEXT"
    assert b"".join(sink.body) == b"abcde" and sink.ended == [reusable]


def test_interim_answers_and_bodyless_statuses() -> None:
    """A 100 Continue is skipped; a 204 has no body whatever it announces."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"
    )
    assert sink.head is not None and sink.head.status == 204
    assert sink.body == [] and sink.ended == [True]


def test_a_body_to_the_close() -> None:
    """No length and not chunked: the body runs to the close, which ends it."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    parser.feed(b" body")
    assert sink.ended == []
    parser.feed_eof()
    assert b"".join(sink.body) == b"some body" and sink.ended == [False]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-",
    ],
)
def test_a_close_in_the_middle_is_an_error(data: bytes) -> None:
    parser = ResponseParser(Sink())
    parser.feed(data)
    with pytest.raises(HttpProtocolError, match="closed in the middle"):
        parser.feed_eof()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 2000, "too long"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"h" * MAX_HEAD + b"\r\n\r\n", "over the"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"h" * (MAX_HEAD + 10), "over the"),
    ],
)
def test_bad_answers_are_typed_errors(data: bytes, match: str) -> None:
    """What is not an HTTP/1.1 answer, or breaks a bound, is an HttpProtocolError."""
    with pytest.raises(HttpProtocolError, match=match):
        ResponseParser(Sink()).feed(data)


def test_endless_trailers_are_bounded() -> None:
    parser = ResponseParser(Sink())
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
    with pytest.raises(HttpProtocolError, match="trailers"):
        for _ in range(2000):
            parser.feed(b"X-Trailer: " + b"t" * 100 + b"\r\n")


def test_a_huge_chunk_is_streamed() -> None:
    """A chunk announced bigger than a read is handed over as it comes."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n")
    for _ in range(16):
        parser.feed(b"z" * 65536)
    assert sum(map(len, sink.body)) == 0x100000 and sink.ended == []
    parser.feed(b"\r\n0\r\n\r\n")
    assert sink.ended == [True]


# -- the event stream's lane for whole events -------------------------------------------


def line_by_line(chunks: list[bytes]) -> list[bytes]:
    """The reference: the same stream fed one byte at a time (the general path)."""
    parser = EventStreamParser()
    events: list[bytes] = []
    for chunk in chunks:
        for i in range(len(chunk)):
            events.extend(parser.feed(chunk[i : i + 1]))
    return events


_text = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_event = st.one_of(
    _text.map(lambda t: b"data: " + t + b"\r\n\r\n"),
    _text.map(lambda t: b"data: " + t + b"\n\n"),
    _text.map(lambda t: b"data:" + t + b"\r\n\r\n"),
    st.tuples(_text, _text).map(lambda p: b"data: " + p[0] + b"\r\ndata: " + p[1] + b"\r\n\r\n"),
    _text.map(lambda t: b": " + t + b"\r\n"),
    _text.map(lambda t: b"event: " + t + b"\r\n"),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"data: a\r", b"\n\r\n"]),
)


@given(st.lists(_event, max_size=20), st.lists(st.integers(min_value=0), max_size=8))
@settings(max_examples=400, deadline=None)
def test_the_whole_event_lane_gives_what_the_line_scan_gives(
    events: list[bytes], points: list[int]
) -> None:
    """Any stream (whole events, mixed with comments, other fields, multi-line data,
    odd line ends), cut anywhere: the same events as fed byte by byte."""
    stream = b"".join(events)
    chunks = cut(stream, points)
    parser = EventStreamParser()
    got: list[bytes] = []
    for chunk in chunks:
        got.extend(parser.feed(chunk))
    assert got == line_by_line(chunks)


def test_many_whole_events_in_one_read() -> None:
    """A read of many events and the start of the next: each event, then the rest."""
    parser = EventStreamParser()
    read = b"".join(b"data: %d\x1e\r\n\r\n" % i for i in range(100)) + b"data: 10"
    assert parser.feed(read) == [b"%d\x1e" % i for i in range(100)]
    assert parser.feed(b"0\x1e\r\n\r\ndata: 101\x1e\r\n\r\n") == [b"100\x1e", b"101\x1e"]


def test_the_whole_event_lane_keeps_the_bound() -> None:
    """Whole events in one read past max_size still fail as MessageTooLarge."""
    parser = EventStreamParser(max_size=100)
    with pytest.raises(MessageTooLarge):
        parser.feed(b"data: " + b"x" * 200 + b"\r\n\r\n")
    parser = EventStreamParser(max_size=100)
    parser.feed(b"data: " + b"x" * 50)
    with pytest.raises(MessageTooLarge):
        parser.feed(b"x" * 80)


def test_a_close_before_any_answer_says_so() -> None:
    parser = ResponseParser(Sink())
    with pytest.raises(HttpProtocolError, match="before an answer came"):
        parser.feed_eof()

"""
The ASP.NET Core protocol core without I/O: negotiate (txsignalr._core_negotiate), the
handshake, ``0x1E`` framing and JSON hub messages (_core_protocol), and CoreSession
(_core_session).

Golden vectors come from core.md §2, §4, §6.1 and §8, and from real-server transcripts
(Microsoft ASP.NET Core 2.2.2 answers negotiate v0, philippseith/signalr 0.7.0 answers
v1) copied into tests/data/transcripts-core/.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsignalr._core_protocol import (
    CLOSE_RECORD,
    PING,
    PING_RECORD,
    Ack,
    AvailableTransport,
    CancelInvocation,
    Close,
    Completion,
    CoreNegotiateResponse,
    HandshakeParser,
    HandshakeResponse,
    Invocation,
    RecordSeparatorSplitter,
    Redirect,
    Sequence,
    StreamInvocation,
    StreamItem,
    connect_url,
    encode_ack,
    encode_cancel_invocation,
    encode_close,
    encode_completion,
    encode_invocation,
    encode_sequence,
    encode_stream_invocation,
    encode_stream_item,
    handshake_request,
    negotiate_url,
    parse_core_negotiate,
    parse_message,
    parse_record,
)
from txsignalr._core_session import CoreSession
from txsignalr._protocol import Transport, loads
from txsignalr.errors import (
    HandshakeError,
    InvalidURL,
    MessageTooLarge,
    NegotiationError,
    ProtocolError,
)

DATA = Path(__file__).parent / "data" / "transcripts-core"
WS, SSE, LP = Transport.web_sockets, Transport.server_sent_events, Transport.long_polling

# --------------------------------------------------------------------------- transcripts

_LINE = re.compile(r"^\[ *[0-9.]+\] #(\d+) (C->S|S->C) (WS text|chunk|body): (.*)$")


def _bytes(logged: str) -> bytes:
    """A logged payload (a bytes repr without its ``b'…'``) as the bytes on the wire."""
    value = ast.literal_eval("b'" + logged + "'")
    assert isinstance(value, bytes)
    return value


def transcript(name: str) -> list[tuple[int, str, str, bytes]]:
    """``(connection, direction, kind, payload)`` for each logged payload, in order."""
    out = []
    for line in (DATA / name).read_text().splitlines():
        m = _LINE.match(line)
        if m:
            out.append((int(m[1]), m[2], m[3], _bytes(m[4])))
    assert out, name
    return out


def negotiate_body(name: str) -> bytes:
    """The first server body of a transcript: the negotiate answer."""
    return next(p for _, d, k, p in transcript(name) if d == "S->C" and k == "body")


def server_chunks(name: str) -> list[bytes]:
    """
    What the transport hands the session, in order: WebSocket text messages, the
    ``data`` of each SSE event, or the non-empty long-poll bodies after negotiate.
    """
    lines = transcript(name)
    if "WebSockets" in name:
        return [p for _, d, k, p in lines if d == "S->C" and k == "WS text"]
    if "ServerSentEvents" in name:
        stream_conn = next(c for c, d, k, p in lines if k == "chunk" and p.startswith(b":"))
        stream = b"".join(p for c, d, k, p in lines if c == stream_conn and k == "chunk")
        events = []
        for raw in stream.replace(b"\r\n", b"\n").split(b"\n"):
            if raw.startswith(b"data:"):
                events.append(raw[6:] if raw.startswith(b"data: ") else raw[5:])
        return events
    bodies = [p for _, d, k, p in lines if d == "S->C" and k == "body"]
    return bodies[1:]  # after negotiate; empty first poll and /send answers are not logged


def client_payloads(name: str) -> list[bytes]:
    """What Microsoft's client sent after negotiate (WS messages or POST bodies)."""
    return [p for _, d, k, p in transcript(name) if d == "C->S" and k in ("WS text", "body")]


ASPNET_V0 = negotiate_body("aspnet-WebSockets-json.txt")
GO_V1 = negotiate_body("go070-WebSockets-json.txt")
DOTNET8 = (
    b'{"useStatefulReconnect":true,"negotiateVersion":1,'
    b'"connectionId":"807809a5-31bf-470d-9e23-afaee35d8a0d",'
    b'"connectionToken":"05265228-1e2c-46c5-82a1-6a5bcc3f0143",'
    b'"availableTransports":['
    b'{"transport":"WebSockets","transferFormats":["Text","Binary"]},'
    b'{"transport":"ServerSentEvents","transferFormats":["Text"]},'
    b'{"transport":"LongPolling","transferFormats":["Text","Binary"]}]}'
)
REDIRECT = b'{"url":"http://127.0.0.1:18765/hub?foo=bar","accessToken":"tok-from-redirect"}'


# --------------------------------------------------------------------------- negotiate


@pytest.mark.parametrize(
    "base, query, expected",
    [
        (
            "http://127.0.0.1:5200/hub",
            None,
            "http://127.0.0.1:5200/hub/negotiate?negotiateVersion=1",
        ),
        (
            "https://x.service.signalr.net/client/?hub=chat",
            None,
            "https://x.service.signalr.net/client/negotiate?hub=chat&negotiateVersion=1",
        ),
        (
            "http://127.0.0.1:18765/hub?foo=bar",
            None,
            "http://127.0.0.1:18765/hub/negotiate?foo=bar&negotiateVersion=1",
        ),
        ("http://h/hub?negotiateVersion=1", None, "http://h/hub/negotiate?negotiateVersion=1"),
        (
            "ws://h/hub",
            {"a b": "c&d"},
            "http://h/hub/negotiate?a%20b=c%26d&negotiateVersion=1",
        ),
        ("wss://h/hub?x=1", [("y", "2")], "https://h/hub/negotiate?x=1&y=2&negotiateVersion=1"),
    ],
)
def test_negotiate_url_inserts_path_and_keeps_query(base: str, query: Any, expected: str) -> None:
    """/negotiate goes into the path, the query is kept, negotiateVersion=1 added once."""
    assert negotiate_url(base, query) == expected


def test_negotiate_url_asks_for_stateful_reconnect() -> None:
    """stateful_reconnect adds useStatefulReconnect=true (core.md §7.8 observed URL)."""
    assert (
        negotiate_url("http://h/hub", stateful_reconnect=True)
        == "http://h/hub/negotiate?negotiateVersion=1&useStatefulReconnect=true"
    )


@pytest.mark.parametrize(
    "base, query",
    [
        ("ftp://h/hub", None),
        ("http:///hub", None),
        ("http://h/hub#frag", None),
        ("http://h:notaport/hub", None),
        ("http://h/hub?id=1", None),
        ("http://h/hub", {"id": "x"}),
    ],
)
def test_negotiate_url_rejects_unusable_urls(base: str, query: Any) -> None:
    """Non-http URLs, fragments, bad ports and a user 'id' parameter are InvalidURL."""
    with pytest.raises(InvalidURL):
        negotiate_url(base, query)


def test_parse_negotiate_v0_from_aspnet_core_2_2() -> None:
    """ASP.NET Core 2.2 answers v0: the connectionId doubles as the token."""
    answer = parse_core_negotiate(200, ASPNET_V0)
    assert answer == CoreNegotiateResponse(
        negotiate_version=0,
        connection_id="lz1h67LHMyU7jQnUGzzS7A",
        connection_token="lz1h67LHMyU7jQnUGzzS7A",
        available_transports=(
            AvailableTransport("WebSockets", ("Text", "Binary")),
            AvailableTransport("ServerSentEvents", ("Text",)),
            AvailableTransport("LongPolling", ("Text", "Binary")),
        ),
    )
    assert [t.transport for t in answer.available_transports] == [WS, SSE, LP]


def test_parse_negotiate_v1_from_go_server() -> None:
    """The Go server's v1 answer (text/plain, trailing newline) has a separate token."""
    assert GO_V1.endswith(b"\n")
    answer = parse_core_negotiate(200, GO_V1)
    assert isinstance(answer, CoreNegotiateResponse)
    assert answer.negotiate_version == 1
    assert answer.connection_token == "ULET-OTUzCL0GdzJBqlgNw=="
    assert answer.connection_id == "8mSk1FHgkxG-voEegBgt3g=="
    assert [t.name for t in answer.available_transports] == ["WebSockets", "ServerSentEvents"]
    assert answer.transport(LP) is None
    assert answer.transport(SSE) == AvailableTransport("ServerSentEvents", ("Text",))


def test_parse_negotiate_dotnet8_with_stateful_reconnect() -> None:
    """A .NET 8 answer (core.md §2.2) with useStatefulReconnect and fields in its order."""
    answer = parse_core_negotiate(200, DOTNET8)
    assert isinstance(answer, CoreNegotiateResponse)
    assert answer.use_stateful_reconnect is True
    assert answer.connection_token == "05265228-1e2c-46c5-82a1-6a5bcc3f0143"
    assert not parse_core_negotiate(200, ASPNET_V0).use_stateful_reconnect  # type: ignore[union-attr]


def test_parse_negotiate_ignores_unknown_properties_and_transports() -> None:
    """Unknown fields are ignored; an unknown transport name is kept but maps to None."""
    body = (
        b'{"negotiateVersion":1,"connectionId":"c","connectionToken":"t","extra":{"x":1},'
        b'"availableTransports":[{"transport":"Carrier","transferFormats":["Pigeon"],"q":1}]}'
    )
    answer = parse_core_negotiate(200, body)
    assert isinstance(answer, CoreNegotiateResponse)
    assert answer.available_transports == (AvailableTransport("Carrier", ("Pigeon",)),)
    assert answer.available_transports[0].transport is None


def test_parse_negotiate_redirect() -> None:
    """A url (+ accessToken) answer is a Redirect (core.md §2.4)."""
    assert parse_core_negotiate(200, REDIRECT) == Redirect(
        "http://127.0.0.1:18765/hub?foo=bar", "tok-from-redirect"
    )
    assert parse_core_negotiate(200, b'{"url":"https://a/b"}') == Redirect("https://a/b", None)


def test_secrets_are_not_in_reprs() -> None:
    """Tokens (and a v0 connection id, which is the token) stay out of reprs."""
    v1 = parse_core_negotiate(200, GO_V1)
    assert "ULET-OTUzCL0GdzJBqlgNw" not in repr(v1)
    assert "8mSk1FHgkxG-voEegBgt3g==" in repr(v1)
    v0 = parse_core_negotiate(200, ASPNET_V0)
    assert "lz1h67LHMyU7jQnUGzzS7A" not in repr(v0)
    redirect = parse_core_negotiate(200, REDIRECT)
    assert "tok-from-redirect" not in repr(redirect)
    assert "127.0.0.1:18765/hub" in repr(redirect)
    session = CoreSession("http://h/hub")
    session.negotiated_answer(200, REDIRECT)
    session.negotiated_answer(200, GO_V1)
    assert "tok-from-redirect" not in repr(session)
    assert "ULET" not in repr(session)


@pytest.mark.parametrize(
    "status, body, words",
    [
        (404, b"", "404'. Either this is not a SignalR endpoint"),
        (500, b"oops", "'500'"),
        (401, b"", "'401'"),
        (200, b"<html>hello</html>", "not JSON"),
        (200, b"", "not JSON"),
        (200, b"[1,2]", "not a JSON object"),
        (200, b'{"error":"This connection is not allowed."}', "This connection is not allowed."),
        (
            200,
            b'{"Url":"/signalr","ConnectionToken":"x","ConnectionId":"y","ProtocolVersion":"1.5"}',
            "ASP.NET SignalR (classic 2.x)",
        ),
        (200, b'{"ProtocolVersion":"2.1"}', "classic"),
        (200, b'{"ConnectionToken":"x","ConnectionId":"y"}', "classic"),
        (
            200,
            b'{"negotiateVersion":1,"connectionId":"c","availableTransports":[]}',
            "connectionToken",
        ),
        (200, b'{"connectionToken":"t","availableTransports":[]}', "connectionId"),
        (200, b'{"connectionId":"c"}', "availableTransports"),
        (200, b'{"connectionId":"c","availableTransports":{}}', "availableTransports"),
        (200, b'{"connectionId":"c","availableTransports":[1]}', "not an object"),
        (
            200,
            b'{"connectionId":"c","availableTransports":[{"transferFormats":[]}]}',
            "'transport'",
        ),
        (
            200,
            b'{"connectionId":"c","availableTransports":[{"transport":"WebSockets"}]}',
            "transferFormats",
        ),
        (
            200,
            b'{"connectionId":"c","availableTransports":[{"transport":"LongPolling","transferFormats":[1]}]}',
            "transferFormats",
        ),
        (
            200,
            b'{"negotiateVersion":2,"connectionId":"c","connectionToken":"t","availableTransports":[]}',
            "negotiateVersion 2",
        ),
        (
            200,
            b'{"negotiateVersion":"1","connectionId":"c","connectionToken":"t","availableTransports":[]}',
            "negotiateVersion '1'",
        ),
        (
            200,
            b'{"negotiateVersion":true,"connectionId":"c","connectionToken":"t","availableTransports":[]}',
            "negotiateVersion True",
        ),
        (200, b'{"url":42}', "'url'"),
        (200, b'{"url":"http://a/","accessToken":7}', "'accessToken'"),
    ],
)
def test_parse_negotiate_errors(status: int, body: bytes, words: str) -> None:
    """Every unusable answer is a NegotiationError that says why, with status and body."""
    with pytest.raises(NegotiationError) as info:
        parse_core_negotiate(status, body)
    assert words in info.value.message
    assert info.value.status == status
    assert info.value.body == body


def test_negotiate_error_wins_over_redirect() -> None:
    """An 'error' answer fails even if it also carries a url (TS checks error first)."""
    with pytest.raises(NegotiationError, match="nope"):
        parse_core_negotiate(200, b'{"error":"nope","url":"http://a/"}')


def test_connect_url_v0_uses_connection_id() -> None:
    """v0: id= is the connectionId (aspnet transcript: GET /hub?id=lz1h…)."""
    answer = parse_core_negotiate(200, ASPNET_V0)
    assert isinstance(answer, CoreNegotiateResponse)
    assert connect_url("http://127.0.0.1:5200/hub", answer, WS) == (
        "ws://127.0.0.1:5200/hub?id=lz1h67LHMyU7jQnUGzzS7A"
    )
    assert connect_url("http://127.0.0.1:5200/hub", answer, SSE) == (
        "http://127.0.0.1:5200/hub?id=lz1h67LHMyU7jQnUGzzS7A"
    )


def test_connect_url_v1_uses_connection_token() -> None:
    """v1: id= is the connectionToken, never the connectionId (go transcript)."""
    answer = parse_core_negotiate(200, GO_V1)
    assert isinstance(answer, CoreNegotiateResponse)
    assert connect_url("https://h/hub", answer, WS) == "wss://h/hub?id=ULET-OTUzCL0GdzJBqlgNw=="
    assert connect_url("https://h/hub", answer, LP) == "https://h/hub?id=ULET-OTUzCL0GdzJBqlgNw=="
    assert connect_url("http://h/hub?foo=bar", answer, LP) == (
        "http://h/hub?foo=bar&id=ULET-OTUzCL0GdzJBqlgNw=="
    )
    assert connect_url("http://h/hub", answer, LP, {"k": "v"}) == (
        "http://h/hub?k=v&id=ULET-OTUzCL0GdzJBqlgNw=="
    )


def test_connect_url_encodes_tokens_that_would_change_the_query() -> None:
    """A '+', '&' or '/' in a token is percent-encoded; '=' padding stays verbatim."""
    answer = CoreNegotiateResponse(1, "c", "a+b&c/d==", ())
    assert connect_url("http://h/hub", answer, LP) == "http://h/hub?id=a%2Bb%26c%2Fd=="


# --------------------------------------------------------------------------- handshake


def test_handshake_request_bytes() -> None:
    """The handshake is exactly what Microsoft's client sends (core.md §4.1, transcripts)."""
    expected = bytes.fromhex(
        "7b 22 70 72 6f 74 6f 63 6f 6c 22 3a 22 6a 73 6f 6e 22 2c"
        "22 76 65 72 73 69 6f 6e 22 3a 31 7d 1e"
    )
    assert handshake_request() == expected
    assert client_payloads("aspnet-WebSockets-json.txt")[0] == expected
    assert client_payloads("aspnet-LongPolling-json.txt")[0] == expected
    assert handshake_request("json", 2) == b'{"protocol":"json","version":2}\x1e'
    assert handshake_request("messagepack") == b'{"protocol":"messagepack","version":1}\x1e'


def test_handshake_answer_and_the_bytes_after_it() -> None:
    """Data after the handshake answer in the same chunk is returned, not lost."""
    parser = HandshakeParser()
    assert parser.feed(b'{}\x1e{"type":6}\x1e{"ty') == (HandshakeResponse(), b'{"type":6}\x1e{"ty')


def test_handshake_answer_split_at_every_byte() -> None:
    """The answer is found however the stream is cut, and the remainder is intact."""
    stream = b'{"minorVersion":1}\x1e{"type":1,"target":"a","arguments":[]}\x1e'
    for cut in range(len(stream) + 1):
        parser = HandshakeParser()
        first = parser.feed(stream[:cut])
        if first is None:
            found = parser.feed(stream[cut:])
            assert found is not None, cut
            assert found[1] == stream[19:]
        else:
            assert cut >= 19
            assert first == (HandshakeResponse(), stream[19:cut])


def test_handshake_error_names_the_server_text() -> None:
    """An error answer raises HandshakeError carrying the server's text."""
    with pytest.raises(HandshakeError) as info:
        HandshakeParser().feed(b'{"error":"The protocol \'x\' is not supported."}\x1e')
    assert info.value.error == "The protocol 'x' is not supported."
    assert "The protocol 'x' is not supported." in str(info.value)


@pytest.mark.parametrize(
    "answer, words",
    [
        (b'{"type":6}\x1e', "Expected a handshake response"),
        (b"nope\x1e", "not JSON"),
        (b"[]\x1e", "not a JSON object"),
    ],
)
def test_handshake_answer_that_is_not_one(answer: bytes, words: str) -> None:
    """A hub message or garbage where the answer belongs is a ProtocolError."""
    with pytest.raises(ProtocolError, match=words):
        HandshakeParser().feed(answer)


def test_handshake_answer_is_bounded() -> None:
    """Bytes without a separator past max_size fail instead of buffering forever."""
    parser = HandshakeParser(max_size=10)
    assert parser.feed(b'{"a":"12') is None
    with pytest.raises(ProtocolError, match="no record separator"):
        parser.feed(b'345"}')
    with pytest.raises(ProtocolError, match="over 10 bytes"):
        HandshakeParser(max_size=10).feed(b'{"a":"12345"}\x1e')
    assert HandshakeParser(max_size=10).feed(b'{"a":"12"}\x1e') == (HandshakeResponse(), b"")


# --------------------------------------------------------------------------- framing


def test_splitter_golden_chunks() -> None:
    """Several records per chunk, a record split over chunks, and what stays buffered."""
    splitter = RecordSeparatorSplitter()
    assert splitter.feed(b'{"type":6}\x1e{"type":6}\x1e') == [b'{"type":6}', b'{"type":6}']
    assert splitter.feed(b'{"type"') == []
    assert splitter.buffered == 7
    assert splitter.feed(b":7}\x1e{") == [b'{"type":7}']
    assert splitter.buffered == 1
    assert splitter.feed(b"}\x1e\x1e") == [b"{}", b""]
    assert splitter.buffered == 0


@given(
    records=st.lists(st.binary().map(lambda b: b.replace(b"\x1e", b"")), max_size=8),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_splitter_any_chunking(records: list[bytes], cuts: list[int]) -> None:
    """Whatever the chunk boundaries, the records come out whole and in order."""
    stream = b"".join(r + b"\x1e" for r in records)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    splitter = RecordSeparatorSplitter()
    out = []
    last = 0
    for point in [*points, len(stream)]:
        out.extend(splitter.feed(stream[last:point]))
        last = point
    assert out == records
    assert splitter.buffered == 0


def test_splitter_bounds_record_size() -> None:
    """A record over max_size fails with MessageTooLarge, finished or not; max_size fits."""
    assert RecordSeparatorSplitter(max_size=4).feed(b"1234\x1e") == [b"1234"]
    with pytest.raises(MessageTooLarge):
        RecordSeparatorSplitter(max_size=4).feed(b"1\x1e12345\x1e")
    splitter = RecordSeparatorSplitter(max_size=4)
    assert splitter.feed(b"123") == []
    with pytest.raises(MessageTooLarge):
        splitter.feed(b"45")
    assert splitter.buffered == 0


# --------------------------------------------------------------------------- hub messages

PARSE_CASES = [
    # core.md §6.1
    (
        b'{"type":1,"invocationId":"123","target":"Send","arguments":[42,"Test Message"]}',
        Invocation("Send", (42, "Test Message"), "123"),
    ),
    (
        b'{"type":1,"target":"Send","arguments":[42,"Test Message"]}',
        Invocation("Send", (42, "Test Message")),
    ),
    (
        b'{"type":1,"invocationId":"123","target":"Send","arguments":[42],"streamIds":["1"]}',
        Invocation("Send", (42,), "123", ("1",)),
    ),
    (b'{"type":2,"invocationId":"123","item":42}', StreamItem("123", 42)),
    (b'{"type":2,"invocationId":"123","item":null}', StreamItem("123", None)),
    (b'{"type":3,"invocationId":"123"}', Completion("123")),
    (b'{"type":3,"invocationId":"123","result":42}', Completion("123", 42, True)),
    (b'{"type":3,"invocationId":"123","result":null}', Completion("123", None, True)),
    (
        b'{"type":3,"invocationId":"123","error":"It didn\'t work!"}',
        Completion("123", error="It didn't work!"),
    ),
    (
        b'{"type":4,"invocationId":"123","target":"Counter","arguments":[5]}',
        StreamInvocation("123", "Counter", (5,)),
    ),
    (b'{"type":5,"invocationId":"123"}', CancelInvocation("123")),
    (b'{"type":6}', PING),
    (b'{"type":7}', Close()),
    (
        b'{"type":7,"error":"Connection closed with an error."}',
        Close("Connection closed with an error."),
    ),
    (
        b'{"type":7,"error":"Connection closed with an error.","allowReconnect":true}',
        Close("Connection closed with an error.", True),
    ),
    (b'{"type":7,"allowReconnect":true}', Close(None, True)),
    (b'{"type":7,"error":""}', Close("")),
    (b'{"type":8,"sequenceId":1394}', Ack(1394)),
    (b'{"type":9,"sequenceId":1234}', Sequence(1234)),
    # property order is arbitrary (TS client order); headers; unknown properties
    (
        b'{"target":"Echo","arguments":["hello"],"invocationId":"0","type":1}',
        Invocation("Echo", ("hello",), "0"),
    ),
    (
        b'{"type":1,"headers":{"Foo":"Bar"},"target":"m","arguments":[],"future":[1]}',
        Invocation("m", (), headers={"Foo": "Bar"}),
    ),
    (b'{"type":1,"target":"m","arguments":[],"invocationId":null}', Invocation("m", ())),
    (b'{"type":3,"invocationId":"1","error":null,"result":2}', Completion("1", 2, True)),
    (
        b'{"type":1,"invocationId":"s1","target":"getMessage","arguments":["q?"]}',
        Invocation("getMessage", ("q?",), "s1"),
    ),
]


@pytest.mark.parametrize("record, expected", PARSE_CASES)
def test_parse_message_golden(record: bytes, expected: Any) -> None:
    """Each golden JSON record parses to the expected value."""
    assert parse_record(record) == expected


def test_completion_result_absent_differs_from_null() -> None:
    """A void completion and "result":null are different values (core.md quirk 10)."""
    void = parse_message({"type": 3, "invocationId": "1"})
    null = parse_message({"type": 3, "invocationId": "1", "result": None})
    assert isinstance(void, Completion) and isinstance(null, Completion)
    assert void.has_result is False and null.has_result is True
    assert void != null


@pytest.mark.parametrize("kind", [0, 10, 99, -1])
def test_unknown_message_types_are_ignored(kind: int) -> None:
    """Types outside 1..9 parse to None, as the spec requires."""
    assert parse_message({"type": kind, "whatever": [1]}) is None


MALFORMED = [
    [1, 2],
    "x",
    {},
    {"type": "1", "target": "m", "arguments": []},
    {"type": True},
    {"type": 1.0, "target": "m", "arguments": []},
    {"type": 1, "arguments": []},
    {"type": 1, "target": "", "arguments": []},
    {"type": 1, "target": 5, "arguments": []},
    {"type": 1, "target": "m"},
    {"type": 1, "target": "m", "arguments": {}},
    {"type": 1, "target": "m", "arguments": [], "invocationId": 5},
    {"type": 1, "target": "m", "arguments": [], "invocationId": ""},
    {"type": 1, "target": "m", "arguments": [], "streamIds": "1"},
    {"type": 1, "target": "m", "arguments": [], "streamIds": [1]},
    {"type": 1, "target": "m", "arguments": [], "headers": {"a": 1}},
    {"type": 1, "target": "m", "arguments": [], "headers": []},
    {"type": 2, "invocationId": "1"},
    {"type": 2, "item": 1},
    {"type": 3},
    {"type": 3, "invocationId": 3},
    {"type": 3, "invocationId": "1", "error": 5},
    {"type": 3, "invocationId": "1", "error": "e", "result": 1},
    {"type": 4, "target": "m", "arguments": []},
    {"type": 4, "invocationId": "1", "arguments": []},
    {"type": 5},
    {"type": 7, "error": 1},
    {"type": 7, "allowReconnect": "yes"},
    {"type": 8},
    {"type": 8, "sequenceId": "1"},
    {"type": 9, "sequenceId": 1.5},
    {"type": 9, "sequenceId": True},
]


@pytest.mark.parametrize("obj", MALFORMED)
def test_malformed_messages_are_protocol_errors(obj: Any) -> None:
    """A known type with a missing or mistyped field is a ProtocolError."""
    with pytest.raises(ProtocolError):
        parse_message(obj)


@pytest.mark.parametrize("record", [b"", b"{", b"\xff", b"nope"])
def test_records_that_are_not_json(record: bytes) -> None:
    """A record that is not JSON is a ProtocolError."""
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse_record(record)


ENCODE_CASES = [
    # Microsoft's TS client 10.0.11, from the transcripts and core.md §8.1
    (
        encode_invocation("Echo", ["hello"], "0"),
        b'{"target":"Echo","arguments":["hello"],"invocationId":"0","type":1}\x1e',
    ),
    (
        encode_invocation("Add", [2, 3], "1"),
        b'{"target":"Add","arguments":[2,3],"invocationId":"1","type":1}\x1e',
    ),
    (
        encode_invocation("Fail", [], "2"),
        b'{"target":"Fail","arguments":[],"invocationId":"2","type":1}\x1e',
    ),
    (encode_invocation("Notify", ["hi"]), b'{"target":"Notify","arguments":["hi"],"type":1}\x1e'),
    (
        encode_invocation("Sum", [], "5", ["4"]),
        b'{"target":"Sum","arguments":[],"invocationId":"5","streamIds":["4"],"type":1}\x1e',
    ),
    (
        encode_invocation("Up", [], None, ["4"]),
        b'{"target":"Up","arguments":[],"streamIds":["4"],"type":1}\x1e',
    ),
    (
        encode_stream_invocation("Counter", [3, 10], "3"),
        b'{"target":"Counter","arguments":[3,10],"invocationId":"3","type":4}\x1e',
    ),
    (
        encode_stream_invocation("C", [], "3", ["2"]),
        b'{"target":"C","arguments":[],"invocationId":"3","streamIds":["2"],"type":4}\x1e',
    ),
    (encode_stream_item("4", 1), b'{"invocationId":"4","item":1,"type":2}\x1e'),
    (encode_completion("4"), b'{"invocationId":"4","type":3}\x1e'),
    (
        encode_completion("s1", "from-client:q?"),
        b'{"invocationId":"s1","result":"from-client:q?","type":3}\x1e',
    ),
    (encode_completion("s1", None), b'{"invocationId":"s1","result":null,"type":3}\x1e'),
    (encode_completion("4", error="boom"), b'{"error":"boom","invocationId":"4","type":3}\x1e'),
    (encode_cancel_invocation("3"), b'{"invocationId":"3","type":5}\x1e'),
    (PING_RECORD, b'{"type":6}\x1e'),
    (CLOSE_RECORD, b'{"type":7}\x1e'),
    (encode_close(), b'{"type":7}\x1e'),
    (encode_close("e", allow_reconnect=True), b'{"type":7,"error":"e","allowReconnect":true}\x1e'),
    (encode_ack(1), b'{"type":8,"sequenceId":1}\x1e'),
    (encode_sequence(1), b'{"type":9,"sequenceId":1}\x1e'),
    (
        encode_invocation("Echo", ["é"], "0"),
        '{"target":"Echo","arguments":["é"],"invocationId":"0","type":1}\x1e'.encode(),
    ),
]


@pytest.mark.parametrize("encoded, expected", ENCODE_CASES)
def test_encoders_write_microsofts_bytes(encoded: bytes, expected: bytes) -> None:
    """Each encoder writes exactly the bytes Microsoft's client sends."""
    assert encoded == expected


def test_encoders_match_every_client_payload_of_the_transcripts() -> None:
    """Every record Microsoft's client sent in the JSON transcripts is reproduced."""
    ours = {
        handshake_request(),
        PING_RECORD,
        CLOSE_RECORD,
        encode_invocation("Echo", ["hello"], "0"),
        encode_invocation("Add", [2, 3], "1"),
        encode_invocation("Fail", [], "2"),
        encode_stream_invocation("Counter", [3, 10], "3"),
    }
    for name in (
        "aspnet-WebSockets-json.txt",
        "aspnet-ServerSentEvents-json.txt",
        "aspnet-LongPolling-json.txt",
        "go070-WebSockets-json.txt",
        "go070-ServerSentEvents-json.txt",
        "aspnet-keepalive1s-WebSockets-json.txt",
    ):
        sent = client_payloads(name)
        assert sent, name
        assert set(sent) <= ours, (name, set(sent) - ours)


def test_encoded_messages_parse_back() -> None:
    """What the encoders write parses back to the same message."""
    assert parse_record(encode_invocation("Sum", [1], "5", ["4"])[:-1]) == Invocation(
        "Sum", (1,), "5", ("4",)
    )
    assert parse_record(encode_completion("s1", None)[:-1]) == Completion("s1", None, True)
    assert parse_record(encode_completion("4", error="x")[:-1]) == Completion("4", error="x")
    assert parse_record(encode_close("e", True)[:-1]) == Close("e", True)


def test_encode_completion_refuses_result_and_error() -> None:
    """A completion with both a result and an error cannot be written."""
    with pytest.raises(ValueError):
        encode_completion("1", 5, "e")


def test_encode_invocation_refuses_unserialisable_arguments() -> None:
    """Arguments that are not JSON raise TypeError."""
    with pytest.raises(TypeError):
        encode_invocation("m", [object()], "1")


# --------------------------------------------------------------------------- session


def scenario(add: Any, fail: str, extra_fail_completion: bool, ticks: list[int]) -> list[Any]:
    """The transcripts' hub session: Echo, Add, Fail, Counter(3), then ticks."""
    out: list[Any] = [
        HandshakeResponse(),
        Completion("0", "hello", True),
        Completion("1", add, True),
        Completion("2", error=fail),
    ]
    if extra_fail_completion:
        out.append(Completion("2"))  # the Go server's second, empty completion
    out += [StreamItem("3", 0), StreamItem("3", 1), StreamItem("3", 2), Completion("3")]
    out += [Invocation("tick", (n,)) for n in ticks]
    return out


ASPNET_FAIL = (
    "An unexpected error occurred invoking 'Fail' on the server. HubException: Intentional failure"
)

TRANSCRIPTS = {
    "aspnet-WebSockets-json.txt": scenario(5.0, ASPNET_FAIL, False, [10, 11]),
    "aspnet-LongPolling-json.txt": scenario(5.0, ASPNET_FAIL, False, [25, 26]),
    "go070-WebSockets-json.txt": scenario(5, "Intentional failure\n", True, [164, 165]),
}


def receive_all(session: CoreSession, chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(session.receive(chunk))
    return out


def negotiated_session(name: str, transport: Transport) -> CoreSession:
    session = CoreSession("http://127.0.0.1:5200/hub")
    session.negotiated_answer(200, negotiate_body(name))
    session.connect_request(transport)
    return session


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_session_parses_real_server_transcripts(name: str) -> None:
    """Every chunk a real server sent parses to the expected messages, in order."""
    transport = LP if "LongPolling" in name else WS
    session = negotiated_session(name, transport)
    assert receive_all(session, server_chunks(name)) == TRANSCRIPTS[name]
    assert session.handshake_done


def test_session_parses_sse_transcripts() -> None:
    """SSE data from Kestrel (CRLF, split chunks) and from the Go server parses whole."""
    aspnet = receive_all(
        negotiated_session("aspnet-ServerSentEvents-json.txt", SSE),
        server_chunks("aspnet-ServerSentEvents-json.txt"),
    )
    assert aspnet[:8] == scenario(5.0, ASPNET_FAIL, False, [])
    assert all(type(m) is Invocation and m.target == "tick" for m in aspnet[8:])
    assert len(aspnet) > 8
    go = receive_all(
        negotiated_session("go070-ServerSentEvents-json.txt", SSE),
        server_chunks("go070-ServerSentEvents-json.txt"),
    )
    assert [m for m in go if not (type(m) is Invocation and m.target == "tick")] == (
        scenario(5, "Intentional failure\n", True, [])
    )


def test_session_pings_from_the_server() -> None:
    """Server Pings (keepalive transcript) come out as PING values after the handshake."""
    name = "aspnet-keepalive1s-WebSockets-json.txt"
    got = receive_all(negotiated_session(name, WS), server_chunks(name))
    assert got == [HandshakeResponse(), PING, PING]


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_session_stream_split_at_every_byte(name: str) -> None:
    """The whole received stream, cut in two at every byte, gives the same messages."""
    stream = b"".join(server_chunks(name))
    expected = TRANSCRIPTS[name]
    for cut in range(len(stream) + 1):
        session = negotiated_session(name, WS)
        assert receive_all(session, [stream[:cut], stream[cut:]]) == expected, cut


@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_session_stream_any_chunking(cuts: list[int]) -> None:
    """The Go WebSocket stream cut at any set of points gives the same messages."""
    name = "go070-WebSockets-json.txt"
    stream = b"".join(server_chunks(name))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert receive_all(negotiated_session(name, WS), chunks) == TRANSCRIPTS[name]


def test_session_handshake_then_messages_in_one_chunk() -> None:
    """A chunk holding the handshake answer and records yields both; unknown types drop."""
    session = negotiated_session("go070-WebSockets-json.txt", WS)
    assert session.receive(b"{}") == []
    assert not session.handshake_done
    assert session.receive(
        b'\x1e{"type":6}\x1e{"type":42}\x1e{"type":7,"allowReconnect":true}\x1e'
    ) == [
        HandshakeResponse(),
        PING,
        Close(None, True),
    ]


def test_session_handshake_refused() -> None:
    """A handshake error answer raises HandshakeError from receive()."""
    session = negotiated_session("go070-WebSockets-json.txt", WS)
    with pytest.raises(HandshakeError, match="version 2"):
        session.receive(
            b'{"error":"The server does not support version 2 of the \'json\' protocol."}\x1e'
        )


def test_session_bad_records() -> None:
    """A malformed record is reported in place, the rest still read; oversized raise."""
    session = negotiated_session("go070-WebSockets-json.txt", WS)
    session.receive(b"{}\x1e")
    bad, ping = session.receive(b'{"type":1,"arguments":[]}\x1e{"type":6}\x1e')
    assert isinstance(bad, ProtocolError)
    assert ping == PING
    small = CoreSession("http://h/hub", max_message_size=16)
    small.negotiated_answer(200, GO_V1)
    small.connect_request(WS)
    small.receive(b"{}\x1e")
    with pytest.raises(MessageTooLarge):
        small.receive(b'{"type":1,"target":"tick","arguments":[1]}\x1e')


def test_session_connect_requests_per_transport() -> None:
    """WebSockets get the http form (mapped by the transport); HTTP ones send to the same URL."""
    session = CoreSession("http://127.0.0.1:5200/hub")
    with pytest.raises(RuntimeError):
        session.connect_request(WS)
    session.negotiated_answer(200, GO_V1)
    url = "http://127.0.0.1:5200/hub?id=ULET-OTUzCL0GdzJBqlgNw=="
    ws = session.connect_request(WS)
    assert (ws.transport, ws.url, ws.send_url) == (WS, url, None)
    assert session.connect_url(WS) == "ws://127.0.0.1:5200/hub?id=ULET-OTUzCL0GdzJBqlgNw=="
    sse = session.connect_request(SSE)
    assert (sse.url, sse.send_url) == (url, url)
    assert sse.send_body is not None
    assert sse.send_body(b'{"type":6}\x1e') == (b'{"type":6}\x1e', "text/plain;charset=UTF-8")
    lp = session.connect_request(LP)
    assert lp.poll is not None and lp.poll_timeout == 100.0
    first, second = lp.poll(), lp.poll()
    assert first is not None and second is not None
    assert first[0].startswith(url + "&_=") and first[0] != second[0]
    assert session.delete_url() == url
    session.forget()
    assert lp.poll() is None


def test_session_transport_choice() -> None:
    """Transports come in server order; missing ones and non-Text ones are skipped."""
    session = CoreSession("http://h/hub")
    assert session.transports() == ()
    session.negotiated_answer(200, ASPNET_V0)
    assert session.transports() == (WS, SSE, LP)
    session.negotiated_answer(200, GO_V1)
    assert session.transports() == (WS, SSE)
    assert "LongPolling" in (session.skip_reason(LP) or "")
    session.negotiated_answer(
        200,
        b'{"connectionId":"c","availableTransports":[{"transport":"LongPolling","transferFormats":["Text"]},'
        b'{"transport":"WebSockets","transferFormats":["Binary"]}]}',
    )
    assert session.transports() == (LP,)
    assert "Text" in (session.skip_reason(WS) or "")
    assert session.uses_keepalive(WS) and session.uses_keepalive(SSE)
    assert not session.uses_keepalive(LP)
    assert (session.keepalive_interval, session.server_timeout) == (15.0, 30.0)


def test_session_follows_redirects() -> None:
    """A redirect moves negotiate and connect to its URL, with its token (core.md §2.4)."""
    session = CoreSession("http://127.0.0.1:18765/redirect", {"u": "1"})
    assert (
        session.negotiate_url()
        == "http://127.0.0.1:18765/redirect/negotiate?u=1&negotiateVersion=1"
    )
    assert session.negotiated_answer(200, REDIRECT) == Redirect(
        "http://127.0.0.1:18765/hub?foo=bar", "tok-from-redirect"
    )
    assert session.access_token == "tok-from-redirect"
    assert (
        session.negotiate_url() == "http://127.0.0.1:18765/hub/negotiate?foo=bar&negotiateVersion=1"
    )
    session.negotiated_answer(200, GO_V1)
    assert session.connection_id == "8mSk1FHgkxG-voEegBgt3g=="
    assert session.connect_url(WS) == "ws://127.0.0.1:18765/hub?foo=bar&id=ULET-OTUzCL0GdzJBqlgNw=="
    session.restart()
    assert session.access_token is None and session.connection_id is None
    assert (
        session.negotiate_url()
        == "http://127.0.0.1:18765/redirect/negotiate?u=1&negotiateVersion=1"
    )


def test_session_redirect_limit() -> None:
    """The 100th negotiation may not redirect again (TS: 'redirection limit exceeded')."""
    session = CoreSession("http://h/hub")
    for _ in range(99):
        session.negotiated_answer(200, b'{"url":"http://h/next"}')
    with pytest.raises(NegotiationError, match="redirection limit"):
        session.negotiated_answer(200, b'{"url":"http://h/next"}')
    session.restart()
    assert type(session.negotiated_answer(200, b'{"url":"http://h/next"}')) is Redirect


def test_session_refuses_an_unusable_redirect() -> None:
    """A redirect to a non-http URL is a NegotiationError, and the URL is not adopted."""
    session = CoreSession("http://h/hub")
    with pytest.raises(NegotiationError, match="unusable URL"):
        session.negotiated_answer(200, b'{"url":"ftp://elsewhere/hub"}')
    with pytest.raises(NegotiationError, match="unusable URL"):
        session.negotiated_answer(200, b'{"url":"http://elsewhere/hub?id=1"}')
    assert session.negotiate_url() == "http://h/hub/negotiate?negotiateVersion=1"


def test_session_encoders_and_fixed_records() -> None:
    """The session's encoders write the same bytes as the module's."""
    session = CoreSession("http://h/hub")
    assert session.handshake() == client_payloads("go070-WebSockets-json.txt")[0]
    assert session.ping() == client_payloads("go070-WebSockets-json.txt")[1]
    assert session.close() == client_payloads("go070-WebSockets-json.txt")[-1]
    assert (
        session.encode_invocation("Echo", ["hello"], "0")
        == client_payloads("go070-WebSockets-json.txt")[2]
    )
    assert (
        session.encode_stream_invocation("Counter", [3, 10], "3")
        == client_payloads("go070-WebSockets-json.txt")[5]
    )
    assert session.encode_stream_item("4", 2) == b'{"invocationId":"4","item":2,"type":2}\x1e'
    assert session.encode_completion("4") == b'{"invocationId":"4","type":3}\x1e'
    assert (
        session.encode_completion("s1", None) == b'{"invocationId":"s1","result":null,"type":3}\x1e'
    )
    assert session.encode_cancel("3") == b'{"invocationId":"3","type":5}\x1e'


def test_session_rejects_bad_url_at_construction() -> None:
    """A bad URL fails when the session is made, with InvalidURL."""
    with pytest.raises(InvalidURL):
        CoreSession("mailto:x@y")


def test_transcript_reader_sees_the_wire() -> None:
    """The transcript reader decodes escapes (a check on the test's own helper)."""
    chunks = server_chunks("aspnet-WebSockets-json.txt")
    assert chunks[0] == b"{}\x1e"
    assert b"invoking 'Fail'" in chunks[3]
    assert loads(chunks[3][:-1])["error"] == ASPNET_FAIL


def test_session_expects_the_handshake_from_the_start() -> None:
    """A new session looks for the handshake answer first, even before connect_request."""
    session = CoreSession("http://h/hub")
    assert not session.handshake_done
    with pytest.raises(ProtocolError, match="Expected a handshake response"):
        session.receive(b'{"type":6}\x1e')


def test_session_refuses_unasked_stateful_reconnect() -> None:
    """A server that turns on stateful reconnect unasked fails negotiate (as the TS client)."""
    session = CoreSession("http://h/hub")
    with pytest.raises(NegotiationError, match="Stateful Reconnect"):
        session.negotiated_answer(200, DOTNET8)
    assert session.negotiated is None

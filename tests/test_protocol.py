"""Golden vectors for the sans-I/O classic protocol core (transcripts and classic.md §9)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from txsignalr._protocol import (
    CLIENT_PROTOCOL,
    KEEPALIVE,
    ClientInvocation,
    Endpoints,
    HubResult,
    MalformedMessage,
    PersistentResponse,
    Progress,
    RawMessage,
    Transport,
    encode_invocation,
    parse_frame,
    parse_negotiate,
    parse_response,
    redact_url,
    websocket_url,
)
from txsignalr.errors import InvalidURL, NegotiationError, ProtocolError

# Recorded from a real ASP.NET SignalR 2.4.3 server (transcript 01/02).
NEGOTIATE_2_4_3 = (
    b'{"Url":"/signalr","ConnectionToken":"Gg9n8t64uTwri+UiTci5gS25/Zz==",'
    b'"ConnectionId":"db2bbb52-0c82-486b-b637-bb85375e917c","KeepAliveTimeout":4.0,'
    b'"DisconnectTimeout":6.0,"ConnectionTimeout":110.0,"TryWebSockets":true,'
    b'"ProtocolVersion":"1.5","TransportConnectTimeout":5.0,"LongPollDelay":0.0}'
)


def test_negotiate_parses_real_server_body() -> None:
    """Every field of a 2.4.3 negotiate answer is read, in seconds."""
    n = parse_negotiate(NEGOTIATE_2_4_3)
    assert n.url == "/signalr"
    assert n.connection_token == "Gg9n8t64uTwri+UiTci5gS25/Zz=="
    assert n.connection_id == "db2bbb52-0c82-486b-b637-bb85375e917c"
    assert (n.keep_alive_timeout, n.disconnect_timeout) == (4.0, 6.0)
    assert n.connection_timeout == 110.0
    assert n.try_websockets is True
    assert n.protocol_version == "1.5"
    assert n.transport_connect_timeout == 5.0


def test_negotiate_repr_hides_token() -> None:
    """The connection token is a secret and stays out of repr()."""
    n = parse_negotiate(NEGOTIATE_2_4_3)
    assert "Gg9n8t64" not in repr(n)
    assert "db2bbb52" in repr(n)


def test_negotiate_null_keepalive() -> None:
    """KeepAliveTimeout null means no keep-alive monitoring."""
    body = NEGOTIATE_2_4_3.replace(b'"KeepAliveTimeout":4.0', b'"KeepAliveTimeout":null')
    assert parse_negotiate(body).keep_alive_timeout is None


@pytest.mark.parametrize("version", ["1.4", "1.5", "2.0", "2.1"])
def test_negotiate_accepts_versions_1_4_to_2_1(version: str) -> None:
    """Server protocol versions 1.4 through 2.1 are accepted."""
    body = NEGOTIATE_2_4_3.replace(b'"1.5"', json.dumps(version).encode())
    assert parse_negotiate(body).protocol_version == version


@pytest.mark.parametrize("version", ["1.2", "1.3", "2.2", "3.0", "x", None])
def test_negotiate_rejects_other_versions_naming_both(version: str | None) -> None:
    """Any other version is a NegotiationError naming the client and server versions."""
    body = NEGOTIATE_2_4_3.replace(b'"1.5"', json.dumps(version).encode())
    with pytest.raises(NegotiationError) as info:
        parse_negotiate(body)
    assert f"Client version {CLIENT_PROTOCOL}" in str(info.value)
    assert f"server version {version}" in str(info.value)


def test_negotiate_detects_aspnet_core() -> None:
    """An ASP.NET Core negotiate answer is reported as such."""
    core = (
        b'{"negotiateVersion":1,"connectionId":"abc","connectionToken":"def",'
        b'"availableTransports":[{"transport":"WebSockets","transferFormats":["Text"]}]}'
    )
    with pytest.raises(NegotiationError, match=r"ASP\.NET Core"):
        parse_negotiate(core)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"<html><body>Login</body></html>", "not JSON"),
        (b'{"Url":', "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (b'{"ProtocolVersion":"2.0","Error":"no such app"}', "no such app"),
        (b'{"ProtocolVersion":"2.0","RedirectUrl":"https://x","AccessToken":"t"}', "redirect"),
    ],
)
def test_negotiate_bad_bodies(body: bytes, text: str) -> None:
    """Unusable negotiate bodies give a NegotiationError carrying status and body."""
    with pytest.raises(NegotiationError, match=text) as info:
        parse_negotiate(body, 200)
    assert info.value.status == 200
    assert info.value.body == body


@pytest.mark.parametrize("missing", ["ConnectionToken", "ConnectionId"])
def test_negotiate_missing_field(missing: str) -> None:
    """A negotiate answer without a required field names the field."""
    obj = json.loads(NEGOTIATE_2_4_3)
    del obj[missing]
    with pytest.raises(NegotiationError, match=missing):
        parse_negotiate(json.dumps(obj).encode())


def test_negotiate_bad_number() -> None:
    """A timeout that is not a number is rejected with the field name."""
    body = NEGOTIATE_2_4_3.replace(b'"DisconnectTimeout":6.0', b'"DisconnectTimeout":"6"')
    with pytest.raises(NegotiationError, match="DisconnectTimeout"):
        parse_negotiate(body)


def test_start_and_ping_responses() -> None:
    """The literal start/ping bodies (with their spaces) are read; anything else is not."""
    assert parse_response(b'{ "Response": "started" }') == "started"
    assert parse_response(b'{ "Response" : "started"}') == "started"
    assert parse_response(b'{ "Response": "pong" }') == "pong"
    assert parse_response(b"started") is None
    assert parse_response(b'["Response"]') is None
    assert parse_response(b'{ "Response": 1 }') is None
    assert parse_response(b"\xff") is None


# ------------------------------------------------------------------ frames


def test_keepalive() -> None:
    """{} is the keep-alive, also with surrounding whitespace (long polling)."""
    assert parse_frame(b"{}") is KEEPALIVE
    assert parse_frame(b"  {}") is KEEPALIVE


def test_init_frame() -> None:
    """The init frame from transcript 02 carries S:1 and the cursor."""
    f = parse_frame(b'{"C":"d-98046728-B,0|C,0|D,1","S":1,"M":[]}')
    assert f == PersistentResponse(cursor="d-98046728-B,0|C,0|D,1", initialized=True)


def test_groups_token_frame() -> None:
    """A G frame with an empty M updates the groups token only."""
    f = parse_frame(b'{"C":"d-98046728-B,0|C,0|D,2|E,0","G":"VMxf+/k=","M":[]}')
    assert isinstance(f, PersistentResponse)
    assert f.groups_token == "VMxf+/k="
    assert f.messages == ()
    assert not f.initialized


def test_batched_client_invocations() -> None:
    """Several client-method calls in one M keep their order, hub and args."""
    f = parse_frame(
        b'{"C":"d-98046728-B,0|C,0|D,4|E,3|F,2|G,3","M":[{"H":"c3","M":"heartbeat","A":[]},'
        b'{"H":"c3","M":"tick","A":[{"Seq":9,"Ts":"2026-11-26T00:49:36.9990520Z"}]}]}'
    )
    assert isinstance(f, PersistentResponse)
    assert f.messages == (
        ClientInvocation("c3", "heartbeat", ()),
        ClientInvocation("c3", "tick", ({"Seq": 9, "Ts": "2026-11-26T00:49:36.9990520Z"},)),
    )


def test_client_invocation_with_state() -> None:
    """A Clients.Caller call carries state changes in S."""
    f = parse_frame(b'{"C":"x","M":[{"H":"chat","M":"m","A":[1],"S":{"a":2}}]}')
    assert isinstance(f, PersistentResponse)
    assert f.messages[0] == ClientInvocation("chat", "m", (1,), {"a": 2})


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b'{"R":42,"I":"3"}', HubResult("3", 42, True)),
        (b'{"I":"1"}', HubResult("1")),
        (b'{"R":null,"I":"1"}', HubResult("1", None, True)),
        (b'{"R":3,"I":0}', HubResult("0", 3, True)),
        (
            b'{"S":{"counter":6,"lastCalled":"IncrementCounter"},"R":6,"I":"2"}',
            HubResult("2", 6, True, state={"counter": 6, "lastCalled": "IncrementCounter"}),
        ),
        (
            b'{"I":"8","H":true,"E":"Intentional failure from c3.Fail()",'
            b'"D":{"Code":42,"Reason":"requested"}}',
            HubResult(
                "8",
                error="Intentional failure from c3.Fail()",
                is_hub_exception=True,
                error_data={"Code": 42, "Reason": "requested"},
            ),
        ),
        (
            b'{"I":"10","E":"\'NoSuchMethod\' method could not be resolved. '
            b'No method found with that name."}',
            HubResult(
                "10",
                error="'NoSuchMethod' method could not be resolved. "
                "No method found with that name.",
            ),
        ),
        (
            b'{"I":"9","E":"boom","T":"   at Foo.Bar()"}',
            HubResult("9", error="boom", stack_trace="   at Foo.Bar()"),
        ),
    ],
)
def test_hub_results(frame: bytes, expected: HubResult) -> None:
    """Top-level hub results: value, void, numeric id, state, hub and plain errors."""
    assert parse_frame(frame) == expected


def test_progress_routes_by_inner_id() -> None:
    """Progress inside M ({"I":"P|n","P":{"I":"n","D":…}}) is routed by P.I."""
    f = parse_frame(b'{"C":"d-98046728-B,0|C,0|D,8","M":[{"I":"P|11","P":{"I":"11","D":20}}]}')
    assert isinstance(f, PersistentResponse)
    assert f.messages == (Progress("11", 20),)


def test_raw_values_in_m() -> None:
    """Non-hub values in M (raw PersistentConnection data) are kept, not crashed on."""
    f = parse_frame(b'{"C":"1","M":["Test",{"x":1},3]}')
    assert isinstance(f, PersistentResponse)
    assert f.messages == (RawMessage("Test"), RawMessage({"x": 1}), RawMessage(3))


def test_reconnect_and_disconnect_flags() -> None:
    """T:1 asks for a reconnect; D:1 (protocol 1.3) and E end the connection."""
    t = parse_frame(b'{"C":"1","T":1,"M":[]}')
    d = parse_frame(b'{"C":"1","D":1,"M":[]}')
    e = parse_frame(b'{"E":"Azure says no"}')
    assert isinstance(t, PersistentResponse) and t.reconnect
    assert isinstance(d, PersistentResponse) and d.disconnect
    assert isinstance(e, PersistentResponse) and e.error == "Azure says no"


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        (b"not json", "not valid JSON"),
        (b'{"C":"x","M":[', "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b'"str"', "not a JSON object"),
        (b'{"C":"x","M":{}}', "'M' is not an array"),
        (b'{"C":5,"M":[]}', "cursor"),
        (b'{"C":"x","G":1,"M":[]}', "groups token"),
        (b'{"I":1.5}', "invocation id"),
        (b'{"I":"1","S":[1]}', "state"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes, text: str) -> None:
    """Malformed frames raise ProtocolError with the reason and the data."""
    with pytest.raises(ProtocolError, match=text) as info:
        parse_frame(frame)
    assert info.value.data is not None


_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(st.binary(max_size=200))
def test_parse_frame_never_raises_anything_but_protocol_error(data: bytes) -> None:
    """Fuzz: arbitrary bytes either parse or raise ProtocolError, nothing else."""
    try:
        parse_frame(data)
    except ProtocolError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=10,
)


# Values for the SignalR keys: any JSON, or one the key calls for, so that both
# well-formed and malformed frames come up often.
_id = st.text(max_size=4) | st.integers(-(2**53), 2**53)
_object = st.dictionaries(st.text(max_size=3), _json, max_size=3)
_hub_message = {  # the keys of hub messages inside M
    "H": _json | st.text(max_size=4),
    "M": _json | st.text(max_size=4),
    "A": _json | st.lists(_json, max_size=3),
    "S": _json | _object,
    "I": _json | _id,
    "P": _json | st.fixed_dictionaries({}, optional={"I": _json | _id, "D": _json}),
    "R": _json,
}
_message_shapes = (
    st.fixed_dictionaries({}, optional=_hub_message)
    | st.fixed_dictionaries(  # a client method call, its other keys any shape
        {"H": st.text(max_size=4), "M": st.text(max_size=4)},
        optional={k: v for k, v in _hub_message.items() if k not in "HMIP"},
    )
    | st.fixed_dictionaries({"P": st.fixed_dictionaries({"I": _id}, optional={"D": _json})})
    | st.fixed_dictionaries({"I": _id}, optional={"R": _json, "S": _json | _object})
)
_frame_shapes = (
    st.fixed_dictionaries(  # a persistent response
        {},
        optional={
            "C": _json | st.text(max_size=6),
            "M": _json | st.lists(_json | _message_shapes, max_size=4) | st.lists(_message_shapes),
            "S": _json | st.just(1),
            "T": _json | st.just(1),
            "G": _json | st.text(max_size=6),
            "L": _json | st.integers(0, 10_000),
            "D": _json | st.just(1),
            "E": _json,
        },
    )
    | st.fixed_dictionaries(  # a hub result written straight to the channel
        {"I": _json | _id},
        optional={"R": _json, "S": _json | _object, "E": _json, "H": _json, "D": _json},
    )
    | st.fixed_dictionaries(  # a well-formed persistent response with messages
        {"C": st.text(max_size=6), "M": st.lists(_json | _message_shapes, min_size=1, max_size=4)},
        optional={"G": st.text(max_size=6), "S": st.just(1), "L": st.integers(0, 10_000)},
    )
    | st.dictionaries(st.sampled_from(list("CMSTGLDEIRHAP")), _json, max_size=6)
)


def _is_id(value: object) -> bool:
    """An invocation id, as the protocol allows it: a string or an integer (not a bool)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _frame_errors(obj: dict[str, object]) -> list[str]:
    """The ProtocolError messages ``obj`` calls for (empty: it is well-formed): the
    parser's rules restated value by value, so a parser that refuses a good frame,
    or lets a bad one through, fails the test."""
    errors = []
    if "I" in obj:  # a hub result written straight to the channel
        if not _is_id(obj["I"]):
            errors.append("invocation id 'I' is neither a string nor an integer")
        if obj.get("S") is not None and not isinstance(obj["S"], dict):
            errors.append("state 'S' is not a JSON object")
        return errors
    if obj.get("M") is not None and not isinstance(obj["M"], list):
        errors.append("'M' is not an array")
    if obj.get("C") is not None and not isinstance(obj["C"], str):
        errors.append("cursor 'C' is not a string")
    if obj.get("G") is not None and not isinstance(obj["G"], str):
        errors.append("groups token 'G' is not a string")
    if obj.get("L") is not None and (not isinstance(obj["L"], int) or isinstance(obj["L"], bool)):
        errors.append("long poll delay 'L' is not an integer")
    return errors


def _message_kind(item: object) -> type:
    """The message value an element of ``M`` calls for."""
    if not isinstance(item, dict):
        return RawMessage
    if "P" in item:
        progress = item["P"]
        ok = isinstance(progress, dict) and "I" in progress and _is_id(progress["I"])
        return Progress if ok else MalformedMessage
    state_ok = item.get("S") is None or isinstance(item["S"], dict)
    if "I" in item:
        return HubResult if _is_id(item["I"]) and state_ok else MalformedMessage
    if isinstance(item.get("H"), str) and isinstance(item.get("M"), str):
        args_ok = item.get("A") is None or isinstance(item["A"], list)
        return ClientInvocation if args_ok and state_ok else MalformedMessage
    return RawMessage


@_fuzz
@given(_frame_shapes)
def test_parse_frame_fuzz_shapes(obj: dict[str, object]) -> None:
    """Fuzz: a JSON object made of SignalR keys raises ProtocolError exactly when one of
    its values breaks the protocol's rules (and then says which); every other one parses
    into the value its keys call for, with the cursor, groups token and every message
    kept, each as the kind of message it is."""
    errors = _frame_errors(obj)
    data = json.dumps(obj).encode()
    event("malformed" if errors else "well-formed")
    if errors:
        with pytest.raises(ProtocolError) as info:
            parse_frame(data)
        assert info.value.message in errors
        return
    frame = parse_frame(data)
    if not obj:
        assert frame is KEEPALIVE
    elif "I" in obj:
        assert isinstance(frame, HubResult)
        assert frame.invocation_id == str(obj["I"])
        assert frame.has_result == ("R" in obj)
        assert frame.result == obj.get("R")
        assert frame.state == obj.get("S")
        assert frame.is_hub_exception == (obj.get("H") is True)
    else:
        assert isinstance(frame, PersistentResponse)
        assert frame.cursor == obj.get("C")
        assert frame.groups_token == obj.get("G")
        assert frame.long_poll_delay == obj.get("L")
        assert frame.initialized == (obj.get("S") == 1)
        assert frame.reconnect == (obj.get("T") == 1)
        assert frame.disconnect == (obj.get("D") == 1)
        assert frame.error == (None if obj.get("E") is None else str(obj["E"]))
        items = obj.get("M") or []
        assert isinstance(items, list)
        for item in items:
            event(f"message: {_message_kind(item).__name__}")
        assert [type(m) for m in frame.messages] == [_message_kind(m) for m in items]
        for message, item in zip(frame.messages, items, strict=True):
            if isinstance(message, (RawMessage, MalformedMessage)):
                assert message.value == item


# ------------------------------------------------------------------ encoding


def test_encode_invocation_matches_official_clients() -> None:
    """Invocations are {"H","M","A","I"} with S only when state is non-empty."""
    assert encode_invocation("chathub", "Send", ["bob", "hi"], 0) == (
        b'{"H":"chathub","M":"Send","A":["bob","hi"],"I":0}'
    )
    assert encode_invocation("my_hub", "method", [], "0", {}) == (
        b'{"H":"my_hub","M":"method","A":[],"I":"0"}'
    )
    assert json.loads(encode_invocation("chat", "IncrementCounter", [], 2, {"counter": 5})) == {
        "H": "chat",
        "M": "IncrementCounter",
        "A": [],
        "I": 2,
        "S": {"counter": 5},
    }


def test_encode_invocation_unicode_and_nesting() -> None:
    """Non-ASCII text and nested values round-trip (transcript 02 Echo)."""
    value = {"a": [1, 2.5, {"b": None}], "s": "h\u00e9llo \u2603", "t": True}
    decoded = json.loads(encode_invocation("c3", "Echo", [value], 2))
    assert decoded["A"] == [value]


def test_encode_invocation_rejects_unserialisable() -> None:
    """Arguments that are not JSON raise TypeError."""
    with pytest.raises(TypeError):
        encode_invocation("c3", "Echo", [object()], 1)


# ------------------------------------------------------------------ URLs

TOKEN = "AQAAANCMnd8+BFdERjHoAwE/Cl+sBAAAAA=="
TOKEN_ENC = "AQAAANCMnd8%2BBFdERjHoAwE%2FCl%2BsBAAAAA%3D%3D"
CD = "%5B%7B%22name%22%3A%22c3%22%7D%5D"


def test_negotiate_url() -> None:
    """negotiate carries clientProtocol 1.5 and the encoded connectionData."""
    e = Endpoints.from_url("http://h:8080/signalr", ["c3"])
    assert (
        e.negotiate() == f"http://h:8080/signalr/negotiate?clientProtocol=1.5&connectionData={CD}"
    )


def test_token_is_encoded_exactly_once() -> None:
    """+ / = in the token are percent-encoded once (a raw + would become a space)."""
    e = Endpoints.from_url("https://h/signalr", ["c3"])
    url = e.connect(Transport.web_sockets, TOKEN, 4)
    assert f"connectionToken={TOKEN_ENC}&" in url
    assert "%252B" not in url
    assert url.startswith("https://h/signalr/connect?")
    assert url.endswith("&tid=4")
    assert "transport=webSockets" in url
    assert websocket_url(url).startswith("wss://h/signalr/connect?")


def test_reconnect_url_carries_cursor_and_groups_token() -> None:
    """reconnect sends messageId and groupsToken, both encoded once."""
    e = Endpoints.from_url("http://h/signalr", ["c3"])
    url = e.reconnect(Transport.web_sockets, TOKEN, "d-98046728-B,0|C,0|D,1", "a+b/c==", 7)
    assert "/reconnect?" in url
    assert "messageId=d-98046728-B%2C0%7CC%2C0%7CD%2C1" in url
    assert "groupsToken=a%2Bb%2Fc%3D%3D" in url
    assert url.endswith("&tid=7")


def test_reconnect_url_without_groups() -> None:
    """No groupsToken parameter when there is no groups token yet."""
    e = Endpoints.from_url("http://h/signalr", ["c3"])
    assert "groupsToken" not in e.reconnect(Transport.web_sockets, TOKEN, "c", None)


def test_unsafe_character_set_matches_js_client() -> None:
    """The JS UrlFacts unsafe set is encoded like encodeURIComponent would."""
    unsafe = '$&+,/:;=?@ "<>#%{}|\\^[]`'
    url = Endpoints.from_url("http://h/s", None).start(Transport.web_sockets, unsafe)
    expected = "%24%26%2B%2C%2F%3A%3B%3D%3F%40%20%22%3C%3E%23%25%7B%7D%7C%5C%5E%5B%5D%60"
    assert f"connectionToken={expected}" in url


def test_start_abort_ping_urls() -> None:
    """start/abort carry the token and connectionData; ping carries neither."""
    e = Endpoints.from_url("http://h/signalr/", ["c3", "chat"])
    cd = "%5B%7B%22name%22%3A%22c3%22%7D%2C%7B%22name%22%3A%22chat%22%7D%5D"
    assert e.start(Transport.web_sockets, "t") == (
        f"http://h/signalr/start?clientProtocol=1.5&transport=webSockets&connectionData={cd}"
        "&connectionToken=t"
    )
    assert e.abort(Transport.web_sockets, "t").startswith("http://h/signalr/abort?")
    assert e.ping() == "http://h/signalr/ping"


def test_user_query_is_kept_everywhere() -> None:
    """The user's own query (URL and query=) is kept on every request."""
    e = Endpoints.from_url("https://h/signalr?app=1", ["c3"], {"key": "a b&c"})
    for url in (
        e.negotiate(),
        e.connect(Transport.web_sockets, "t"),
        e.reconnect(Transport.web_sockets, "t", "c", None),
        e.start(Transport.web_sockets, "t"),
        e.abort(Transport.web_sockets, "t"),
        e.ping(),
    ):
        assert "app=1" in url
        assert "key=a%20b%26c" in url


@pytest.mark.parametrize(
    "url",
    ["ftp://h/signalr", "h/signalr", "http:///signalr", "http://h:99999/x", "http://h/x#frag", 5],
)
def test_bad_urls(url: object) -> None:
    """Bad URLs raise InvalidURL (a SignalRError and a ValueError)."""
    with pytest.raises(InvalidURL):
        Endpoints.from_url(url, ["c3"])  # type: ignore[arg-type]


def test_reserved_query_names_are_refused() -> None:
    """User query parameters may not reuse SignalR's names."""
    with pytest.raises(InvalidURL, match="connectionToken"):
        Endpoints.from_url("http://h/s", ["c3"], {"connectionToken": "x"})


def test_ws_scheme_is_accepted() -> None:
    """ws:// and wss:// base URLs are mapped to http(s) for the HTTP requests."""
    assert Endpoints.from_url("wss://h/signalr", ["c3"]).base == "https://h/signalr"


def test_redact_url_hides_query_values() -> None:
    """Redacted URLs keep parameter names but hide values and credentials."""
    text = redact_url("https://user:pw@h/signalr/connect?connectionToken=SECRET&x=1")
    assert "SECRET" not in text and "pw" not in text
    assert "connectionToken=" in text


@pytest.mark.parametrize(
    ("item", "text"),
    [
        ({"H": "h", "M": "m", "A": 5}, "arguments"),
        ({"I": "P|1", "P": 5}, "progress"),
        ({"H": "h", "M": "m", "A": [], "S": [1]}, "state"),
        ({"I": 1.5}, "invocation id"),
    ],
)
def test_broken_message_keeps_rest_of_frame(item: dict[str, object], text: str) -> None:
    """A broken element of M is marked; the good ones and the cursor still count."""
    frame = json.dumps(
        {"C": "d-1-A,5", "G": "g", "M": [{"H": "c3", "M": "tick", "A": [1]}, item]}
    ).encode()
    f = parse_frame(frame)
    assert isinstance(f, PersistentResponse)
    assert f.cursor == "d-1-A,5" and f.groups_token == "g"
    assert f.messages[0] == ClientInvocation("c3", "tick", (1,))
    bad = f.messages[1]
    assert isinstance(bad, MalformedMessage)
    assert bad.value == item
    assert text in str(bad.error)

"""
MessagePack and stateful reconnect in HubConnection, in memory: StubTreq for negotiate,
the fake transport, ``task.Clock`` for all time.  Every stateful scenario runs over
both hub protocols.  Loopback tests against the test server are in
``test_core_client.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_connection_unit import FakeTransport
from test_core_unit import TOKEN, Core, core_negotiate
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from txsignalr import ConnectionClosed, ConnectionState, HubConnection, HubError
from txsignalr._core_codecs import HUB_PROTOCOLS, HubCodec
from txsignalr._core_msgpack import MessagePackExt, frame, pack, parse_body
from txsignalr._core_protocol import (
    Ack,
    Completion,
    HubMessage,
    Invocation,
    Sequence,
    StreamInvocation,
    StreamItem,
)
from txsignalr._stateful import TRACKED
from txsignalr.errors import ProtocolError

RS = b"\x1e"


def split(codec: HubCodec, chunks: list[bytes]) -> list[HubMessage | None]:
    splitter = codec.splitter(1 << 20)
    return [codec.parse(r) for chunk in chunks for r in splitter.feed(chunk)]


class H(Core):
    """The Core harness in a given hub protocol, with a server-side encoder."""

    def __init__(self, hub_protocol: str = "json", **kwargs: Any) -> None:
        super().__init__(hub_protocol=hub_protocol, **kwargs)
        self.codec = HUB_PROTOCOLS[hub_protocol]

    def open(self) -> Deferred[None]:
        d = self.conn.start()
        self.flush()
        self.transport.open_ok()
        return d

    def connect(self) -> None:
        d = self.open()
        assert self.transport.sent[0].startswith(b'{"protocol":"' + self.codec.name.encode())
        self.transport.frame(b"{}" + RS)
        assert d.called and d.result is None, d.result
        assert self.conn.state is ConnectionState.connected

    def messages(self, transport: FakeTransport | None = None) -> list[HubMessage | None]:
        """What the client sent on ``transport`` after the handshake, parsed."""
        t = transport or self.transport
        sent = t.sent[1:] if t.sent and t.sent[0].startswith(b'{"protocol"') else t.sent
        return split(self.codec, sent)

    def server_sends(self, *messages: bytes) -> None:
        self.transport.frame(b"".join(messages))

    def tick(self, n: int) -> bytes:
        return self.codec.encode_invocation("tick", [n])

    def result(self, invocation_id: str, value: Any) -> bytes:
        return self.codec.encode_completion(invocation_id, value)


PROTOCOLS = pytest.mark.parametrize("hub_protocol", ["json", "messagepack"])


# -- MessagePack ----------------------------------------------------------------------


def test_messagepack_handshake_is_text_and_messages_binary() -> None:
    h = H("messagepack")
    d = h.open()
    t = h.transport
    assert t.sent == [b'{"protocol":"messagepack","version":1}' + RS]
    frame_binary = t.request.frame_binary
    assert frame_binary is not None
    assert frame_binary(t.sent[0]) is False
    got: list[Any] = []
    h.conn.on("tick", got.append)
    # The handshake answer and a message in the same binary chunk (real server: 7b 7d 1e).
    t.frame(b"{}" + RS + h.tick(15))
    assert d.called and got == [15]
    result = h.conn.invoke("Add", 40, 2)
    assert t.sent[-1] == bytes.fromhex("0c 95 01 80 a1 30 a3 41 64 64 92 28 02")
    assert frame_binary(t.sent[-1]) is True
    t.frame(bytes.fromhex("07 95 03 80 a1 30 03 2a"))
    assert result.result == 42


def test_messagepack_over_long_polling_posts_octet_stream_after_a_text_handshake() -> None:
    h = H("messagepack", transport="longPolling")
    d = h.open()
    t = h.transport
    body = t.request.send_body
    assert body is not None
    assert body(t.sent[0])[1] == "text/plain;charset=UTF-8"
    t.answers[-1].callback(b"")
    t.frame(b"{}" + RS)
    assert d.called
    h.conn.send("Notify", "hi")
    assert body(t.sent[-1]) == (
        bytes.fromhex("0f 95 01 80 c0 a6 4e 6f 74 69 66 79 91 a2 68 69"),
        "application/octet-stream",
    )


def test_messagepack_fallback_skips_server_sent_events() -> None:
    h = H("messagepack", transport=["serverSentEvents", "longPolling"])
    h.open()
    assert [t.request.transport.value for t in FakeTransport.instances] == ["longPolling"]


def test_messagepack_only_sse_fails_naming_the_format() -> None:
    h = H("messagepack", transport="serverSentEvents")
    d = h.conn.start()
    h.flush()
    failure = d.result
    d.addErrback(lambda f: None)
    assert "Binary" in str(failure.value) and "serverSentEvents" in str(failure.value)
    assert FakeTransport.instances == []


def test_messagepack_server_not_offering_binary_is_skipped() -> None:
    h = H("messagepack", transport=["webSockets", "longPolling"])
    h.server.answer = (
        200,
        core_negotiate(
            availableTransports=[
                {"transport": "WebSockets", "transferFormats": ["Text"]},
                {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
            ]
        ),
    )
    h.open()
    assert [t.request.transport.value for t in FakeTransport.instances] == ["longPolling"]


def test_messagepack_bad_length_prefix_loses_the_link_with_a_typed_error() -> None:
    h = H("messagepack")
    h.connect()
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    h.transport.frame(bytes.fromhex("ff ff ff ff ff"))
    assert h.conn.state is ConnectionState.reconnecting
    assert "bigger than 2GB" in str(errors[0])


def test_messagepack_unencodable_argument_is_a_type_error() -> None:
    h = H("messagepack")
    h.connect()
    d = h.conn.invoke("Big", 2**64)
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(TypeError) and "messagepack" in str(failure.value)


def test_unknown_hub_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="'json' or 'messagepack'"):
        Core(hub_protocol="xml")
    with pytest.raises(ValueError, match="only JSON"):
        HubConnection(Clock(), "http://x/s", protocol="classic", hub_protocol="messagepack")
    with pytest.raises(ValueError, match="skip_negotiation"):
        HubConnection(
            Clock(),
            "http://x/s",
            transports=["webSockets"],
            skip_negotiation=True,
            stateful_reconnect=True,
        )


# -- stateful reconnect ---------------------------------------------------------------


def stateful(hub_protocol: str, **kwargs: Any) -> H:
    h = H(hub_protocol, stateful_reconnect=True, **kwargs)
    h.server.answer = (200, core_negotiate(useStatefulReconnect=True))
    return h


@PROTOCOLS
def test_stateful_negotiate_and_handshake_version_2(hub_protocol: str) -> None:
    h = stateful(hub_protocol)
    h.connect()
    assert "useStatefulReconnect=true" in h.server.requests[0][1]
    name = hub_protocol.encode()
    assert h.transport.sent[0] == b'{"protocol":"' + name + b'","version":2}' + RS


def test_stateful_not_agreed_stays_version_1_and_reconnects_plainly() -> None:
    h = H("json", stateful_reconnect=True)
    h.connect()
    assert h.transport.sent[0] == b'{"protocol":"json","version":1}' + RS
    h.transport.lose("gone")
    assert h.conn.state is ConnectionState.reconnecting


def test_stateful_only_over_websockets() -> None:
    h = stateful("json", transport="longPolling")
    h.open()
    assert h.transport.sent[0] == b'{"protocol":"json","version":1}' + RS


@PROTOCOLS
def test_received_messages_are_acked_once_a_second(hub_protocol: str) -> None:
    h = stateful(hub_protocol)
    h.connect()
    got: list[int] = []
    h.conn.on("tick", got.append)
    h.server_sends(h.tick(1), h.tick(2))
    h.clock.advance(0.5)
    h.server_sends(h.tick(3))
    assert not any(type(m) is Ack for m in h.messages())
    h.clock.advance(0.5)
    assert [m for m in h.messages() if type(m) is Ack] == [Ack(3)]
    h.server_sends(h.codec.ping)  # pings are not counted, and need no ack
    h.clock.advance(5)
    assert [m for m in h.messages() if type(m) is Ack] == [Ack(3)]
    assert got == [1, 2, 3]


@PROTOCOLS
def test_drop_resumes_on_the_same_token_without_handshake_and_replays(
    hub_protocol: str,
) -> None:
    h = stateful(hub_protocol)
    h.connect()
    first = h.transport
    got: list[int] = []
    h.conn.on("tick", got.append)
    states: list[Any] = []
    h.conn.on_state_change(lambda old, new: states.append(new))
    slow = h.conn.invoke("Slow")  # 1: acked below
    fast = h.conn.invoke("Fast")  # 2: unacked when the socket drops
    h.server_sends(h.codec.encode_ack(1), h.tick(1), h.tick(2))
    first.lose("socket reset")
    assert h.conn.state is ConnectionState.connected  # resuming is invisible
    sent_during = h.conn.send("During")  # buffered, replayed
    assert not sent_during.called  # it has not gone out yet
    h.clock.advance(0)
    second = h.transport
    assert second is not first
    assert second.request.url == first.request.url and f"id={TOKEN}" in second.request.url
    assert len(h.server.requests) == 1  # no new negotiate
    second.open_ok()
    assert sent_during.called and sent_during.result is None
    assert h.messages(second) == [
        Sequence(2),
        Invocation("Fast", (), "1"),
        Invocation("During", ()),
    ]
    assert not second.sent[0].startswith(b'{"protocol"')  # no new handshake
    # The server replays from 2: tick 2 is a duplicate, tick 3 is new; what came
    # before its Sequence is dropped.
    h.server_sends(h.tick(99))
    h.server_sends(
        h.codec.encode_sequence(2), h.tick(2), h.tick(3), h.result("0", "s"), h.result("1", "f")
    )
    assert got == [1, 2, 3]
    assert slow.result == "s" and fast.result == "f"
    assert ConnectionState.reconnecting not in states
    h.clock.advance(1)
    assert [m for m in h.messages(second) if type(m) is Ack] == [Ack(5)]


@PROTOCOLS
@pytest.mark.parametrize("status", [404, 400, 401, 403])
def test_resume_refused_falls_back_to_the_reconnect_policy(hub_protocol: str, status: int) -> None:
    h = stateful(hub_protocol)
    h.connect()
    pending = h.conn.invoke("Slow")
    reasons: list[ConnectionClosed] = []
    h.conn.on_reconnecting(reasons.append)
    h.transport.lose("socket reset")
    h.clock.advance(0)
    h.transport.lose("No Connection with that ID", status=status)
    assert h.conn.state is ConnectionState.reconnecting
    assert "refused to resume" in reasons[0].reason
    assert pending.result.check(ConnectionClosed)
    pending.addErrback(lambda f: None)
    h.clock.advance(0)
    h.flush()
    assert len(h.server.requests) == 2  # a fresh negotiate
    h.transport.open_ok()
    assert h.transport.sent[0].endswith(b'"version":2}' + RS)
    h.transport.frame(b"{}" + RS)
    assert h.conn.state is ConnectionState.connected
    h.conn.send("Again")
    # A new connection numbers from 1 again.
    assert h.codec.encode_sequence(1) not in h.transport.sent


@PROTOCOLS
def test_resume_retries_network_failures_then_falls_back(hub_protocol: str) -> None:
    h = stateful(hub_protocol, reconnect_delay=None)
    h.connect()
    h.transport.lose("socket reset")
    times = []
    for _ in range(4):
        calls = h.clock.getDelayedCalls()
        h.clock.advance(min(c.getTime() for c in calls) - h.clock.seconds())
        times.append(h.clock.seconds())
        h.transport.lose("connection refused")
    assert times == [0.0, 1.0, 3.0, 7.0]
    assert h.conn.state is ConnectionState.disconnected  # no reconnect policy
    closed = h.conn.when_closed()
    assert "could not resume after 4 attempt(s)" in str(closed.result.value)
    closed.addErrback(lambda f: None)
    assert h.clock.getDelayedCalls() == []


@PROTOCOLS
def test_full_buffer_makes_sends_wait_until_acked(hub_protocol: str) -> None:
    h = stateful(hub_protocol, stateful_buffer_size=60)
    h.connect()
    sends = [h.conn.send("Put", "x" * 20) for _ in range(5)]
    went = [type(m) is Invocation for m in h.messages()].count(True)
    assert 1 <= went < 5
    assert all(d.called for d in sends[:went]) and not any(d.called for d in sends[went:])
    rounds = 0
    while went < 5:
        h.server_sends(h.codec.encode_ack(went))  # room again: the next ones go out
        now = [type(m) is Invocation for m in h.messages()].count(True)
        assert now > went
        assert all(d.called for d in sends[:now]) and not any(d.called for d in sends[now:])
        went, rounds = now, rounds + 1
    assert rounds >= 2
    targets = [m.target for m in h.messages() if type(m) is Invocation]
    assert targets == ["Put"] * 5


@PROTOCOLS
def test_a_sequence_past_what_arrived_reconnects(hub_protocol: str) -> None:
    h = stateful(hub_protocol)
    h.connect()
    h.server_sends(h.tick(1))
    h.transport.lose("socket reset")
    h.clock.advance(0)
    h.transport.open_ok()
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    h.server_sends(h.codec.encode_sequence(5))
    assert "Sequence ID greater" in str(errors[0])
    assert h.conn.state is ConnectionState.reconnecting


@PROTOCOLS
def test_uploads_and_client_results_go_on_across_a_resume(hub_protocol: str) -> None:
    h = stateful(hub_protocol)
    h.connect()
    answers: list[Deferred[str]] = []

    def ask(q: str) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        answers.append(d)
        return d

    h.conn.on("getMessage", ask)
    gate: Deferred[None] = Deferred()

    async def items() -> Any:
        yield 1
        await gate
        yield 2

    total = h.conn.invoke("Sum", items())
    h.server_sends(h.codec.encode_invocation("getMessage", ["q?"], "s1"))
    h.transport.lose("socket reset")
    h.clock.advance(0)
    gate.callback(None)  # the upload goes on while resuming
    answers[0].callback("a")  # so does the client result
    h.transport.open_ok()
    sent = h.messages()
    assert sent[0] == Sequence(1)
    assert StreamItem("1", 2) in sent
    assert Completion("1") in sent
    assert Completion("s1", "a", True) in sent
    assert sent.count(StreamItem("1", 1)) == 1
    h.server_sends(h.codec.encode_sequence(2), h.result("0", 3))
    assert total.result == 3


@PROTOCOLS
def test_stop_while_resuming_cancels_everything(hub_protocol: str) -> None:
    h = stateful(hub_protocol)
    h.connect()
    pending = h.conn.invoke("Slow")
    h.transport.lose("socket reset")
    stopped = h.conn.stop()
    h.clock.advance(5)
    assert stopped.called
    assert h.conn.state is ConnectionState.disconnected
    assert pending.result.check(ConnectionClosed)
    pending.addErrback(lambda f: None)
    assert h.clock.getDelayedCalls() == []


def test_server_timeout_resumes_too() -> None:
    h = stateful("json", server_timeout=30.0, keepalive_interval=None)
    h.connect()
    h.clock.advance(31)
    assert h.conn.state is ConnectionState.connected
    assert FakeTransport.instances[0].aborted
    assert len(FakeTransport.instances) == 2


def test_hub_errors_still_arrive_once() -> None:
    h = stateful("messagepack")
    h.connect()
    d = h.conn.invoke("Fail")
    h.server_sends(h.codec.encode_completion("0", error="boom"))
    h.server_sends(h.codec.encode_completion("0", error="boom"))  # Go server's second one
    assert d.result.check(HubError)
    d.addErrback(lambda f: None)


def test_tracked_kinds() -> None:
    assert StreamInvocation in TRACKED and Ack not in TRACKED


def test_sockets_lost_before_the_servers_sequence_count_as_failed_resumes() -> None:
    """A server that takes every new WebSocket and drops it at once cannot keep the
    client resuming for ever: the attempts run out, then the reconnect policy runs."""
    h = stateful("json", reconnect_delay=None)
    h.connect()
    h.transport.lose("socket reset")
    for _ in range(4):
        calls = h.clock.getDelayedCalls()
        h.clock.advance(min(c.getTime() for c in calls) - h.clock.seconds())
        h.transport.open_ok()
        h.transport.lose("dropped again")
    assert h.conn.state is ConnectionState.disconnected
    closed = h.conn.when_closed()
    assert "could not resume after 4 attempt(s)" in str(closed.result.value)
    closed.addErrback(lambda f: None)


def invalid_tracked(h: H) -> bytes:
    """A tracked message (an Invocation) that the client cannot parse."""
    if h.codec.name == "json":
        return b'{"type":1,"target":"tick"}' + RS  # no "arguments"
    return frame(pack([1, {}, None, "", []]))  # empty target


def acks(h: H, transport: Any = None) -> list[Ack]:
    return [m for m in h.messages(transport) if type(m) is Ack]


# -- found in review ---------------------------------------------------------------


@PROTOCOLS
def test_replayed_duplicates_are_acknowledged_again(hub_protocol: str) -> None:
    """
    The client acked message 1 on the old socket, but that Ack died with it: the
    server's Sequence(1) and its replay of message 1 say so.  Microsoft's TS client
    (MessageBuffer._shouldProcessMessage: ``currentId === _latestReceivedSequenceId``
    -> ``_ackTimer()``) acknowledges again; this client never does, so the server keeps
    (and on every later resume replays) messages the client processed long ago, and
    its replay buffer never drains while it has nothing new to send.
    """
    h = stateful(hub_protocol)
    h.connect()
    got: list[int] = []
    h.conn.on("tick", got.append)
    first = h.transport
    h.server_sends(h.tick(1))
    h.clock.advance(1)
    assert acks(h, first) == [Ack(1)]  # sent, but lost with the socket
    first.lose("socket reset")
    h.clock.advance(0)
    second = h.transport
    second.open_ok()
    h.server_sends(h.codec.encode_sequence(1), h.tick(1))  # it never got our Ack
    assert got == [1]  # the duplicate is dropped: good
    h.clock.advance(5)
    assert acks(h, second) == [Ack(1)]


@PROTOCOLS
def test_an_invalid_tracked_message_still_counts_in_the_sequence(hub_protocol: str) -> None:
    """
    The server numbers every tracked message it sends, valid for this client or not.
    The client reports an unparsable one through on_error and skips it (as the README
    promises) but does not count it, so from then on its count is one behind: it acks
    1 where the server sent 2, and after a resume it takes the server's replay of
    message 2 for a new message and handles it a second time.
    """
    h = stateful(hub_protocol)
    h.connect()
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    got: list[int] = []
    h.conn.on("tick", got.append)
    h.server_sends(invalid_tracked(h), h.tick(2))  # server ids 1 and 2
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError)
    assert got == [2]
    h.clock.advance(1)  # the client acks what it counted
    h.transport.lose("socket reset")
    h.clock.advance(0)
    h.transport.open_ok()
    # The server got Ack(1), so it replays from its message 2.
    h.server_sends(h.codec.encode_sequence(2), h.tick(2))
    assert got == [2], "message 2 was handled twice"


@PROTOCOLS
def test_send_during_a_resume_that_fails_does_not_report_success(hub_protocol: str) -> None:
    """
    README: "The Deferred of send() fires once its message went out".  While the
    WebSocket is being replaced, send() only buffers the message but fires at once.
    When the resume is then refused and the ordinary reconnect runs, the buffer is
    thrown away: the message never went out on any socket, yet send() said it did
    (while invoke() in the same situation fails with ConnectionClosed).
    """
    h = stateful(hub_protocol)
    h.connect()
    first = h.transport
    first.lose("socket reset")
    during = h.conn.send("Order", 42)
    h.clock.advance(0)
    second = h.transport
    second.lose("No Connection with that ID", status=404)  # refused
    assert h.conn.state is ConnectionState.reconnecting
    went_out = [m for t in (first, second) for m in h.messages(t) if type(m) is Invocation]
    assert went_out == []  # it was never sent
    assert during.called
    outcome = during.result
    during.addErrback(lambda f: None)
    assert isinstance(outcome, Failure) and outcome.check(ConnectionClosed), (
        f"send() of a lost message fired with {outcome!r}"
    )


@PROTOCOLS
def test_a_sequence_below_one_is_a_protocol_error(hub_protocol: str) -> None:
    """
    Sequence ids start at 1.  A Sequence(0) (JSON also takes -1; MessagePack refuses
    negatives) sets the expected id below 1, so the next new message counts as a
    duplicate and is dropped without a word.
    """
    h = stateful(hub_protocol)
    h.connect()
    got: list[int] = []
    h.conn.on("tick", got.append)
    h.transport.lose("socket reset")
    h.clock.advance(0)
    h.transport.open_ok()
    errors: list[Any] = []
    h.conn.on_error(errors.append)
    h.server_sends(h.codec.encode_sequence(0), h.tick(1))
    assert got == [] and "Sequence ID below 1" in str(errors[0])
    assert h.conn.state is ConnectionState.reconnecting


@PROTOCOLS
def test_a_blocked_invoke_that_times_out_never_goes_out(hub_protocol: str) -> None:
    """An invocation still waiting for room when its timeout fires is dropped from the
    queue: the server never runs a call the client gave up on."""
    h = stateful(hub_protocol, stateful_buffer_size=10)
    h.connect()
    first = h.conn.send("Fill", "x" * 20)
    late = h.conn.invoke("Late", timeout=1.0)
    h.clock.advance(1.1)
    assert late.called
    late.addErrback(lambda f: None)
    h.server_sends(h.codec.encode_ack(1))
    assert first.called
    assert [m.target for m in h.messages() if type(m) is Invocation] == ["Fill"]


@PROTOCOLS
@pytest.mark.parametrize("status", [503, 502, 409])
def test_a_proxys_503_on_resume_is_retried(hub_protocol: str, status: int) -> None:
    h = stateful(hub_protocol)
    h.connect()
    pending = h.conn.invoke("Slow")
    h.transport.lose("socket reset")
    h.clock.advance(0)
    h.transport.lose("Service Unavailable", status=status)
    assert h.conn.state is ConnectionState.connected
    h.clock.advance(1)
    h.transport.open_ok()
    h.server_sends(h.codec.encode_sequence(1), h.result("0", "done"))
    assert pending.result == "done"


def test_classic_with_stateful_reconnect_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ASP\.NET Core's"):
        HubConnection(Clock(), "http://x/s", protocol="classic", stateful_reconnect=True)


def test_extension_types_reserved_by_messagepack_cannot_be_sent() -> None:
    message = parse_body(bytes.fromhex("95 01 80 c0 a1 74 91 d4 fe 01"))  # ext -2
    assert type(message) is Invocation
    assert message.arguments[0] == MessagePackExt(-2, b"\x01")
    with pytest.raises(TypeError, match="reserved"):
        pack(message.arguments[0])


def _advance_to_next_call(h: Any) -> None:
    calls = h.clock.getDelayedCalls()
    h.clock.advance(min(c.getTime() for c in calls) - h.clock.seconds())


@PROTOCOLS
def test_a_new_connection_starts_its_resume_attempts_afresh(hub_protocol: str) -> None:
    """
    StatefulResume keeps _attempts, _mark and _resumed_at across a full reconnect.
    Connection 1 resumes once, then every resume attempt of its next drop fails (a
    failover answering 503), so the reconnect policy makes connection 2.  When
    connection 2's WebSocket drops a few seconds later, its buffer has received fewer
    messages than connection 1's _mark and the last resume was under 30 s ago, so the
    exhausted count of connection 1 is kept: no resume is even tried, and the
    connection goes *reconnecting* (pending calls failed, new connection id).
    """
    h = stateful(hub_protocol, reconnect_delay=0)
    h.connect()
    h.server_sends(*(h.tick(n) for n in range(1, 6)))  # connection 1 got 5 messages
    h.transport.lose("socket reset")
    h.clock.advance(0)
    h.transport.open_ok()  # resumed (1 attempt used)
    h.server_sends(h.codec.encode_sequence(6))
    assert h.conn.state is ConnectionState.connected
    h.transport.lose("socket reset")
    for _ in range(3):  # every attempt refused by a proxy: attempts exhausted
        _advance_to_next_call(h)
        h.transport.lose("upgrade refused", status=503)
    assert h.conn.state is ConnectionState.reconnecting
    h.clock.advance(0)
    h.flush()
    h.transport.open_ok()
    h.transport.frame(b"{}\x1e")  # connection 2
    assert h.conn.state is ConnectionState.connected
    states: list[ConnectionState] = []
    h.conn.on_state_change(lambda old, new: states.append(new))
    failed: list[Any] = []
    h.conn.invoke("Slow").addErrback(failed.append)
    h.server_sends(h.tick(1))
    h.clock.advance(2)
    h.transport.lose("socket reset")  # connection 2's first drop
    assert ConnectionState.reconnecting not in states, (
        "connection 2 never tried to resume: it inherited connection 1's used-up attempts"
    )
    assert not failed


@PROTOCOLS
def test_stop_from_a_send_callback_fired_by_the_resume_leaves_no_timers(
    hub_protocol: str,
) -> None:
    """
    StatefulResume._succeeded fires the Deferreds of sends buffered while resuming
    (calls.replayed()) and only then restarts the keep-alive watch, the Ping timer and
    the Ack timer.  A callback that stops the connection (the common "send the last
    thing, then stop" pattern) runs in the middle: stop() tears everything down, then
    _succeeded starts the timers again on a closed connection.
    """
    h = stateful(hub_protocol, keepalive_interval=15.0, server_timeout=30.0)
    h.connect()
    h.server_sends(h.tick(1))  # something to acknowledge
    h.transport.lose("socket reset")
    stopped: list[Any] = []
    h.conn.send("Last").addCallback(lambda _: stopped.append(h.conn.stop()))
    h.clock.advance(0)
    h.transport.open_ok()  # resumed: "Last" replayed, its Deferred fires, stop()
    assert stopped and stopped[0].called
    assert h.conn.state is ConnectionState.disconnected
    left = [c for c in h.clock.getDelayedCalls() if c.active()]
    assert left == [], f"timers running after stop(): {left}"


# -- loopback against the test server ----------------------------------------------

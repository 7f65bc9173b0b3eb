"""
Stateful reconnect (ASP.NET Core 8+) on the test server, over real loopback sockets
with a raw client: the negotiate offer, the version-2 handshake over WebSockets, Acks,
the replay after a dropped WebSocket (Sequence first, duplicates dropped both ways),
hub calls that survive the drop, the disconnect timeout, back-pressure and the fault
injection around it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from helpers import running_reactor, sleep, wait_until, within
from server_clients import CoreClient, core_negotiate, fetch, msgpack_frame
from test_core_server import EchoHub as ServerEchoHub
from test_core_server_features import ClockReactor
from twisted.internet import defer, task

from txsignalr.testing import HubCall, SignalRServer


class EchoHub(ServerEchoHub):
    """The test echo hub, and a method calling the client ``count`` times."""

    name = "echo"

    async def Numbered(self, call: HubCall, count: int, delay_ms: int) -> int:
        for i in range(count):
            call.caller.invoke("numbered", i)
            if delay_ms:
                await self.server.sleep(delay_ms / 1000)
        return count

    async def Items(self, call: HubCall, count: int) -> AsyncIterator[int]:
        for i in range(count):
            yield i


pytestmark = pytest.mark.usefixtures("quiet_log")

#: no Acks from the server unless a test waits for them (they are timed)
QUIET = {"core_stateful_reconnect": True, "core_ack_interval": 3600.0}


async def started(**options: Any) -> SignalRServer:
    s = SignalRServer(running_reactor(), [EchoHub()], **{**QUIET, **options})
    await s.listen()
    return s


@pytest.fixture
def server() -> Any:
    s = pytest_twisted.blockon(defer.ensureDeferred(started()))
    yield s
    pytest_twisted.blockon(defer.ensureDeferred(s.stop()))


async def stateful_client(server: SignalRServer, protocol: str = "json") -> CoreClient:
    client = CoreClient(server.core_url("echo"), "WebSockets", protocol=protocol, stateful=True)
    assert await client.connect() == {}
    assert server.events("handshake")[-1]["stateful"] is True
    return client


def record(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\x1e"


def invocation(invocation_id: str, target: str, *args: Any) -> bytes:
    return record({"type": 1, "invocationId": invocation_id, "target": target, "arguments": args})


def invoked(server: SignalRServer) -> list[str | None]:
    """The invocation ids of every invocation the hub ran."""
    return [e["invocation_id"] for e in server.events("invoke")]


async def drop_and_wait(server: SignalRServer, client: CoreClient) -> None:
    """The client's socket dies without a close handshake; the server keeps the connection."""
    suspended = server.when_event("suspended")
    client.drop()
    await within(client.closed, 5)
    await within(suspended, 5)


# -- negotiate and handshake --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_offered_only_when_asked_and_enabled(server: SignalRServer) -> None:
    """useStatefulReconnect comes first in negotiate, only if asked for and allowed."""
    url = server.core_url("echo")
    _ex, body = await core_negotiate(url + "?useStatefulReconnect=true")
    assert list(body)[:2] == ["useStatefulReconnect", "negotiateVersion"]
    assert body["useStatefulReconnect"] is True
    _ex, body = await core_negotiate(url + "?UseStatefulReconnect=True")  # any case
    assert body["useStatefulReconnect"] is True
    for query in ("", "?useStatefulReconnect=false", "?useStatefulReconnect=yes"):
        _ex, body = await core_negotiate(url + query)
        assert "useStatefulReconnect" not in body, query
    off = await started(core_stateful_reconnect=False)
    try:
        _ex, body = await core_negotiate(off.core_url("echo") + "?useStatefulReconnect=true")
        assert "useStatefulReconnect" not in body
    finally:
        await off.stop()


@pytest.mark.parametrize(
    "transport, version, on",
    [
        ("WebSockets", 2, True),
        ("WebSockets", 1, False),
        ("LongPolling", 2, False),
        ("ServerSentEvents", 2, False),
    ],
)
@pytest_twisted.ensureDeferred
async def test_on_only_with_version_2_over_websockets(
    server: SignalRServer, transport: str, version: int, on: bool
) -> None:
    """A version 1 handshake or another transport leave it off, silently as on .NET."""
    client = CoreClient(server.core_url("echo"), transport, stateful=True)
    handshake = record({"protocol": "json", "version": version})
    assert await client.connect(handshake) == {}
    (handshake_event,) = server.events("handshake")
    assert handshake_event["stateful"] is on
    await client.invoke("Echo", 1, invocation_id="1")
    assert await client.record() == {"type": 3, "invocationId": "1", "result": 1}
    if transport == "WebSockets":
        client.drop()
        if on:
            await within(server.when_event("suspended"), 5)
            assert server.core_connections != []
        else:
            await wait_until(lambda: server.core_connections == [], "the connection ended")
            assert server.events("suspended") == []
    else:
        client.drop()


@pytest_twisted.ensureDeferred
async def test_not_offered_means_a_drop_ends_it(server: SignalRServer) -> None:
    """A version 2 handshake without the negotiate offer is an ordinary connection."""
    client = CoreClient(server.core_url("echo"), "WebSockets")
    assert await client.connect(b'{"protocol":"json","version":2}\x1e') == {}
    assert server.events("handshake")[0]["stateful"] is False
    client.drop()
    await wait_until(lambda: server.core_connections == [], "the connection ended")
    ex, _ = await fetch("GET", client.url)
    assert ex.code == 404


# -- acks -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_acks_once_per_interval_after_messages_arrive() -> None:
    """The server acknowledges the highest message received, core_ack_interval after the
    first one, once; Ping and Ack do not count; nothing new, no Ack."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()], core_stateful_reconnect=True)  # type: ignore[arg-type]
    await s.listen()
    try:
        client = await stateful_client(s)
        await client.send(b'{"type":6}\x1e')
        await sleep(0.05)
        clock.advance(5)
        await sleep(0.05)
        assert client.records.pending == []  # a Ping is not numbered
        await client.send(invocation("1", "Nothing") + invocation("2", "Nothing"))
        assert await client.record() == {"type": 3, "invocationId": "1"}
        assert await client.record() == {"type": 3, "invocationId": "2"}
        await client.send(invocation("3", "Nothing"))
        assert await client.record() == {"type": 3, "invocationId": "3"}
        clock.advance(0.9)
        await sleep(0.05)
        assert client.records.pending == []
        clock.advance(0.2)
        assert await client.record() == {"type": 8, "sequenceId": 3}
        await client.send(b'{"type":8,"sequenceId":3}\x1e')
        await sleep(0.05)
        clock.advance(5)
        await sleep(0.05)
        assert client.records.pending == []
        assert s.core_stateful_counts["acks_sent"] == 1
        assert s.core_stateful_counts["acks_received"] == 1
        client.drop()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_acks_again_what_the_client_replays_on_clock() -> None:
    """A client that replays messages already acknowledged (its Ack died with the old
    socket) gets the Ack again after core_ack_interval."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()], core_stateful_reconnect=True)  # type: ignore[arg-type]
    await s.listen()
    try:
        client = await stateful_client(s)
        calls = invocation("1", "Nothing") + invocation("2", "Nothing")
        await client.send(calls)
        assert await client.record() == {"type": 3, "invocationId": "1"}
        assert await client.record() == {"type": 3, "invocationId": "2"}
        clock.advance(1.1)
        assert await client.record() == {"type": 8, "sequenceId": 2}
        await drop_and_wait(s, client)
        await client.reopen()
        assert await client.record() == {"type": 9, "sequenceId": 1}
        assert await client.record() == {"type": 3, "invocationId": "1"}
        assert await client.record() == {"type": 3, "invocationId": "2"}
        await client.send(b'{"type":9,"sequenceId":1}\x1e' + calls)
        await sleep(0.05)
        clock.advance(1.1)
        assert await client.record() == {"type": 8, "sequenceId": 2}
        assert s.core_stateful_counts["duplicates"] == 2
        assert invoked(s) == ["1", "2"]
        client.drop()
    finally:
        await s.stop()


# -- the replay -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_replay_after_a_drop(server: SignalRServer) -> None:
    """After a drop the new socket gets Sequence(first unacknowledged) and the messages
    since; the server drops what comes before the client's Sequence and the messages it
    replays that were handled; new ones are handled."""
    client = await stateful_client(server)
    for i in (1, 2, 3):
        await client.invoke("Echo", i, invocation_id=str(i))
        assert await client.record() == {"type": 3, "invocationId": str(i), "result": i}
    await client.send(b'{"type":8,"sequenceId":1}\x1e')  # the first answer arrived
    await wait_until(lambda: server.core_stateful_counts["acks_received"] == 1, "the Ack")
    await drop_and_wait(server, client)
    (connection_id,) = server.core_connections
    # while it has no socket, hub calls go on: this one is only buffered
    server.send_to_connection(connection_id, "echo", "meanwhile", 4)
    await client.reopen()
    assert await client.record() == {"type": 9, "sequenceId": 2}
    assert await client.record() == {"type": 3, "invocationId": "2", "result": 2}
    assert await client.record() == {"type": 3, "invocationId": "3", "result": 3}
    assert await client.record() == {"type": 1, "target": "meanwhile", "arguments": [4]}
    (resumed,) = server.events("resumed")
    assert (resumed["sequence_id"], resumed["replayed"]) == (2, 3)
    # before the client's Sequence: dropped
    await client.send(invocation("early", "Echo", "dropped"))
    # the client replays its messages 2 and 3 (handled already), then a new one
    await client.send(b'{"type":9,"sequenceId":2}\x1e')
    await client.send(invocation("2", "Echo", 2) + invocation("3", "Echo", 3))
    await client.send(invocation("4", "Echo", 4))
    assert await client.record() == {"type": 3, "invocationId": "4", "result": 4}
    assert invoked(server) == ["1", "2", "3", "4"]
    counts = server.core_stateful_counts
    assert (counts["resumes"], counts["replayed"], counts["duplicates"]) == (1, 3, 2)
    assert server.core_connections == [connection_id]
    assert len(server.events("handshake")) == 1  # no second handshake
    client.drop()


@pytest_twisted.ensureDeferred
async def test_nothing_unacknowledged_sends_the_next_id(server: SignalRServer) -> None:
    """With every message acknowledged the Sequence is the next id, and nothing follows."""
    client = await stateful_client(server)
    await client.invoke("Echo", 1, invocation_id="1")
    await client.record()
    await client.send(b'{"type":8,"sequenceId":1}\x1e')
    await wait_until(lambda: server.core_stateful_counts["acks_received"] == 1, "the Ack")
    await drop_and_wait(server, client)
    await client.reopen()
    assert await client.record() == {"type": 9, "sequenceId": 2}
    await client.send(b'{"type":9,"sequenceId":2}\x1e' + invocation("2", "Echo", 2))
    assert await client.record() == {"type": 3, "invocationId": "2", "result": 2}
    client.drop()


@pytest_twisted.ensureDeferred
async def test_hub_calls_streams_and_client_results_survive(server: SignalRServer) -> None:
    """A stream, a client result and a running method go on across the drop; everything
    arrives once, in order, on the new socket."""
    client = await stateful_client(server)
    ask = {"type": 1, "invocationId": "s1", "target": "getMessage", "arguments": ["q?"]}
    await client.invoke("AskClient", "q?", invocation_id="1")
    assert await client.record() == ask
    await client.invoke("Counter", 6, 20, invocation_id="2", kind=4)
    assert await client.record() == {"type": 2, "invocationId": "2", "item": 0}
    await drop_and_wait(server, client)
    await sleep(0.15)  # the stream runs on meanwhile
    await client.reopen()
    # nothing was acknowledged: the replay starts with the first message (the client
    # result's Invocation, then item 0, which a client drops as duplicates)
    assert await client.record() == {"type": 9, "sequenceId": 1}
    assert await client.record() == ask
    items = []
    while (message := await client.record())["type"] == 2:
        items.append(message["item"])
    assert items == [0, 1, 2, 3, 4, 5]
    assert message == {"type": 3, "invocationId": "2"}
    # the client's answer to the client result, after its own Sequence and replay
    await client.send(b'{"type":9,"sequenceId":1}\x1e')
    stream = record({"type": 4, "invocationId": "2", "target": "Counter", "arguments": [6, 20]})
    await client.send(invocation("1", "AskClient", "q?") + stream)
    await client.send(b'{"type":3,"invocationId":"s1","result":"a!"}\x1e')
    assert await client.record() == {"type": 3, "invocationId": "1", "result": "client said a!"}
    assert [e["target"] for e in server.events("invoke")] == ["AskClient", "Counter"]
    client.drop()


@pytest_twisted.ensureDeferred
async def test_messagepack_sequence_and_ack() -> None:
    """Over MessagePack: [9, id] first on the new socket, [8, id] as the Ack."""
    s = await started(core_ack_interval=0.05)
    try:
        client = await stateful_client(s, "messagepack")
        await client.invoke("Echo", b"\x01", invocation_id="1")
        assert await client.record() == [3, {}, "1", 3, b"\x01"]
        assert await client.record() == [8, 1]
        await drop_and_wait(s, client)
        await client.reopen()
        assert await client.record() == [9, 1]
        assert await client.record() == [3, {}, "1", 3, b"\x01"]
        assert client.binary[-2:] == [True, True]
        await client.send(msgpack_frame([9, 1]) + msgpack_frame([1, {}, "1", "Echo", [b"\x01"]]))
        await client.invoke("Echo", 2, invocation_id="2")
        assert await client.record() == [3, {}, "2", 3, 2]
        assert s.core_stateful_counts["duplicates"] == 1
        client.drop()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_new_socket_replaces_an_open_one(server: SignalRServer) -> None:
    """A new WebSocket while the old one is still open takes over (.NET cancels the old)."""
    client = await stateful_client(server)
    await client.invoke("Echo", 1, invocation_id="1")
    await client.record()
    old = client.closed
    await client.reopen()
    assert await within(old, 5) == 1006  # aborted by the server
    assert await client.record() == {"type": 9, "sequenceId": 1}
    assert await client.record() == {"type": 3, "invocationId": "1", "result": 1}
    assert server.events("suspended") == []
    assert server.core_stateful_counts["resumes"] == 1
    client.drop()


@pytest_twisted.ensureDeferred
async def test_sequence_past_what_arrived_closes(server: SignalRServer) -> None:
    """A client Sequence past the messages the server got closes with .NET's error."""
    client = await stateful_client(server)
    await drop_and_wait(server, client)
    await client.reopen()
    assert await client.record() == {"type": 9, "sequenceId": 1}
    await client.send(b'{"type":9,"sequenceId":5}\x1e')
    assert await client.record() == {"type": 7, "error": "Connection closed with an error."}
    await within(client.closed, 5)
    assert server.core_connections == []


# -- the end ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_disconnect_timeout_then_404_on_clock() -> None:
    """A dropped stateful connection waits core_disconnect_timeout; then it is gone."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()], **QUIET)  # type: ignore[arg-type]
    await s.listen()
    try:
        client = await stateful_client(s)
        (connection_id,) = s.core_connections
        await drop_and_wait(s, client)
        assert s.events("suspended")[0]["timeout"] == 15.0
        clock.advance(14.9)
        assert s.core_connections == [connection_id]
        assert s.events("disconnected") == []
        clock.advance(0.2)
        assert s.core_connections == []
        (ended,) = s.events("disconnected")
        assert (ended["reason"], ended["clean"]) == ("disconnect timeout", False)
        with pytest.raises(ConnectionError, match="404"):
            await client.reopen()
        ex, _ = await fetch("GET", client.url)
        assert ex.code == 404
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_resume_within_the_timeout_on_clock() -> None:
    """Resumed in time, the disconnect timeout no longer applies."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()], **QUIET)  # type: ignore[arg-type]
    await s.listen()
    try:
        client = await stateful_client(s)
        await drop_and_wait(s, client)
        clock.advance(14)
        await client.reopen()
        assert await client.record() == {"type": 9, "sequenceId": 1}
        clock.advance(60)
        await client.send(b'{"type":9,"sequenceId":1}\x1e' + invocation("1", "Echo", 1))
        assert await client.record() == {"type": 3, "invocationId": "1", "result": 1}
        client.drop()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_expire_core_connection_makes_the_resume_fail(server: SignalRServer) -> None:
    """expire_core_connection right after a drop: the new socket gets 404."""
    client = await stateful_client(server)
    (connection_id,) = server.core_connections
    server.drop_all_transports()
    assert server.expire_core_connection(connection_id)
    assert not server.expire_core_connection(connection_id)
    await within(client.closed, 5)
    with pytest.raises(ConnectionError, match="404"):
        await client.reopen()
    (ended,) = server.events("disconnected")
    assert (ended["reason"], ended["clean"]) == ("expired", False)
    assert server.events("suspended") == []


@pytest_twisted.ensureDeferred
async def test_drop_all_transports_suspends_stateful_websockets(server: SignalRServer) -> None:
    """drop_all_transports aborts the TCP connection (no close frame): a stateful
    connection waits, an ordinary one ends."""
    stateful = await stateful_client(server)
    plain = CoreClient(server.core_url("echo"), "WebSockets")
    await plain.connect()
    server.drop_all_transports()
    await within(stateful.closed, 5)
    await within(plain.closed, 5)
    assert stateful.close_code == 1006 and plain.close_code == 1006
    await wait_until(lambda: len(server.core_connections) == 1, "the plain one ended")
    assert len(server.events("suspended")) == 1
    await stateful.reopen()
    assert await stateful.record() == {"type": 9, "sequenceId": 1}
    stateful.drop()


@pytest_twisted.ensureDeferred
async def test_refused_resume(server: SignalRServer) -> None:
    """refuse_transport answers the resume too; the connection waits on for its timeout."""
    client = await stateful_client(server)
    await drop_and_wait(server, client)
    server.refuse_transport("webSockets", 503, b"busy")
    with pytest.raises(ConnectionError):
        await client.reopen()
    (refused,) = server.events("refused")
    assert refused["resume"] is True
    assert len(server.core_connections) == 1
    server.refuse_transport("webSockets", None)
    await client.reopen()
    assert await client.record() == {"type": 9, "sequenceId": 1}
    client.drop()


@pytest.mark.parametrize("how", ["close frame", "Close message"])
@pytest_twisted.ensureDeferred
async def test_a_clean_close_ends_it(server: SignalRServer, how: str) -> None:
    """A close handshake or a Close message from the client ends the connection."""
    client = await stateful_client(server)
    if how == "Close message":
        await client.send(b'{"type":7}\x1e')
    else:
        client._ws.sendClose()
    await within(client.closed, 5)
    await wait_until(lambda: server.core_connections == [], "the connection ended")
    assert server.events("suspended") == []
    with pytest.raises(ConnectionError):
        await client.reopen()


# -- back-pressure ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_full_buffer_holds_messages_until_acks() -> None:
    """Past core_stateful_buffer_size unacknowledged bytes the server holds further
    messages, in order, and sends them as the client's Acks make room."""
    s = await started(core_stateful_buffer_size=200)
    try:
        client = await stateful_client(s)
        await client.invoke("Numbered", 30, 0, invocation_id="1")
        got: list[int] = []
        # each call is 46 bytes: five fill the buffer (the fifth passes 200)
        for _ in range(5):
            message = await client.record()
            got.append(message["arguments"][0])
        await sleep(0.1)
        assert client.records.pending == []
        assert got == [0, 1, 2, 3, 4]
        assert s.core_stateful_counts["held"] == 26  # 25 calls and the Completion
        sequence = 5
        while True:
            await client.send(record({"type": 8, "sequenceId": sequence}))
            message = await client.record()
            sequence += 1
            if message["type"] == 3:
                break
            got.append(message["arguments"][0])
            # the Ack made room for about as many as it released
            while client.records.pending:
                got.append((await client.record())["arguments"][0])
                sequence += 1
        assert message == {"type": 3, "invocationId": "1", "result": 30}
        assert got == list(range(30))
        client.drop()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_a_full_buffer_pauses_a_stream() -> None:
    """A server-to-client stream waits for room instead of piling up held messages."""
    s = await started(core_stateful_buffer_size=100)
    try:
        client = await stateful_client(s)
        await client.invoke("Items", 1000, invocation_id="1", kind=4)
        # each item is 40 bytes: three fill the buffer
        first = [await client.record() for _ in range(3)]
        assert [m["item"] for m in first] == [0, 1, 2]
        await sleep(0.1)
        assert client.records.pending == []
        assert s.core_stateful_counts["held"] == 0
        await client.send(record({"type": 8, "sequenceId": 3}))
        more = [await client.record() for _ in range(3)]
        assert [m["item"] for m in more] == [3, 4, 5]
        await sleep(0.1)
        assert client.records.pending == []
        client.drop()
    finally:
        await s.stop()


# -- StatefulLink, without I/O ----------------------------------------------------------------


def link(limit: int = 10) -> tuple[Any, list[bytes], Any]:
    from collections import Counter

    from txsignalr.testing._core_stateful import StatefulLink

    written: list[bytes] = []
    counts: Counter[str] = Counter()
    return StatefulLink(limit, written.append, counts), written, counts


def test_link_holds_in_order_and_releases_on_acks() -> None:
    """Past the limit messages wait, numbered only when Acks make room, in order."""
    from txsignalr._core_protocol import Ack

    lk, written, counts = link(limit=10)
    for data in (b"aaaaaa", b"bbbbbb", b"cc", b"dd"):
        lk.send(data)
    assert written == [b"aaaaaa", b"bbbbbb"]  # 12 bytes: full
    assert (lk.held, counts["held"]) == (2, 2)
    wait = lk.writable()
    assert wait is not None and not wait.called
    assert lk.received(Ack(1)) is False
    assert written == [b"aaaaaa", b"bbbbbb", b"cc", b"dd"]
    assert lk.held == 0
    assert not wait.called  # 10 bytes unacknowledged: still full
    assert lk.buffer.replay() == (2, [b"bbbbbb", b"cc", b"dd"])
    assert lk.received(Ack(2)) is False
    assert wait.called and lk.writable() is None
    assert lk.received(Ack(99)) is False  # past what was sent: everything, as .NET
    assert lk.buffer.replay() == (5, [])
    assert counts["acks_received"] == 3


def test_link_while_disconnected_and_resumed() -> None:
    """Without a socket messages are numbered but not written; the client's input is
    dropped until its Sequence, then its replays already handled are dropped."""
    from txsignalr._core_protocol import PING, Invocation, Sequence

    lk, written, counts = link(limit=100)
    call = Invocation("Echo", (1,), "1")
    assert lk.received(call) is True
    assert lk.ack_due() == 1
    lk.disconnected()
    lk.send(b"x")
    assert written == [] and lk.ack_due() is None
    assert lk.resume() == (1, [b"x"])
    assert lk.received(call) is False  # before the Sequence
    assert lk.received(PING) is False
    assert lk.received(Sequence(1)) is False
    assert lk.received(call) is False  # message 1 again: handled already
    assert counts["duplicates"] == 1
    assert lk.received(Invocation("Echo", (2,), "2")) is True
    assert lk.received(PING) is True


def test_link_close_cancels_waiters() -> None:
    """When the connection ends a stream waiting for room is cancelled."""
    lk, _written, _counts = link(limit=1)
    lk.send(b"ab")
    wait = lk.writable()
    assert wait is not None
    failures: list[Any] = []
    wait.addErrback(failures.append)
    lk.close()
    assert len(failures) == 1 and failures[0].check(defer.CancelledError)
    assert lk.held == 0

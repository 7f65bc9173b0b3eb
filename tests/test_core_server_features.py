"""
ASP.NET Core SignalR features of the test server over real loopback sockets: streams
both ways and cancel, client results, groups and broadcasts, server Close, pings and
the client timeout (on a ``task.Clock``), redirect and bearer tokens, fault injection
and size limits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from helpers import running_reactor, sleep, wait_until, within
from server_clients import CORE_TRANSPORTS, HANDSHAKE, CoreClient, core_negotiate, fetch
from test_core_server import EchoHub
from twisted.internet import defer, task

from txsignalr.testing import ChatHub, ClientResultError, SignalRServer

transports = pytest.mark.parametrize("transport", CORE_TRANSPORTS)


@pytest.fixture
def server() -> Any:
    s = SignalRServer(running_reactor(), [EchoHub(), ChatHub()])
    pytest_twisted.blockon(defer.ensureDeferred(s.listen()))
    yield s
    pytest_twisted.blockon(defer.ensureDeferred(s.stop()))


async def connected(server: SignalRServer, transport: str, hub: str = "echo") -> CoreClient:
    client = CoreClient(server.core_url(hub), transport)
    assert await client.connect() == {}
    return client


def cid(server: SignalRServer, client: CoreClient) -> str:
    return str(client.neg["connectionId"])


# -- streams --------------------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_server_to_client_stream(server: SignalRServer, transport: str) -> None:
    """StreamInvocation of an async generator: StreamItems, then a void Completion."""
    client = await connected(server, transport)
    await client.invoke("Counter", 3, 5, invocation_id="3", kind=4)
    assert [await client.record() for _ in range(4)] == [
        {"type": 2, "invocationId": "3", "item": 0},
        {"type": 2, "invocationId": "3", "item": 1},
        {"type": 2, "invocationId": "3", "item": 2},
        {"type": 3, "invocationId": "3"},
    ]
    await client.invoke("BadStream", invocation_id="4", kind=4)
    assert await client.record() == {"type": 2, "invocationId": "4", "item": 1}
    assert await client.record() == {
        "type": 3,
        "invocationId": "4",
        "error": "An error occurred on the server while streaming results. "
        "HubException: stream broke",
    }
    client.drop()


@pytest_twisted.ensureDeferred
async def test_stream_kind_mismatch(server: SignalRServer) -> None:
    """Invocation of a stream method and StreamInvocation of a plain one are errors."""
    client = await connected(server, "WebSockets")
    await client.invoke("Counter", 1, 0, invocation_id="1")
    assert await client.record() == {
        "type": 3,
        "invocationId": "1",
        "error": "The client attempted to invoke the streaming 'Counter' method with a "
        "non-streaming invocation.",
    }
    await client.invoke("Echo", 1, invocation_id="2", kind=4)
    assert await client.record() == {
        "type": 3,
        "invocationId": "2",
        "error": "The client attempted to invoke the non-streaming 'Echo' method with a "
        "streaming invocation.",
    }
    client.drop()


@transports
@pytest_twisted.ensureDeferred
async def test_cancel_invocation_stops_stream(server: SignalRServer, transport: str) -> None:
    """CancelInvocation stops an endless stream; .NET then sends a void Completion."""
    client = await connected(server, transport)
    await client.invoke("Forever", invocation_id="9", kind=4)
    assert await client.record() == {"type": 2, "invocationId": "9", "item": 0}
    await client.send(b'{"type":5,"invocationId":"9"}\x1e')
    while True:
        record = await client.record()
        if record["type"] == 3:
            break
        assert record["type"] == 2
    assert record == {"type": 3, "invocationId": "9"}
    await sleep(0.1)
    assert client.records.pending == []
    assert server.events("cancel")[-1]["known"] is True
    client.drop()


@transports
@pytest_twisted.ensureDeferred
async def test_client_to_server_stream(server: SignalRServer, transport: str) -> None:
    """streamIds become async iterators fed by StreamItems, ended by a Completion."""
    client = await connected(server, transport)
    await client.invoke("Sum", invocation_id="5", stream_ids=["4"])
    for n in (1, 2, 3):
        await client.send(
            json.dumps({"invocationId": "4", "item": n, "type": 2}).encode() + b"\x1e"
        )
    await client.send(b'{"invocationId":"4","type":3}\x1e')
    assert await client.record() == {"type": 3, "invocationId": "5", "result": 6}
    await client.invoke("Sum", invocation_id="7", stream_ids=["6"])
    await client.send(b'{"invocationId":"6","type":3,"error":"gave up"}\x1e')
    assert await client.record() == {
        "type": 3,
        "invocationId": "7",
        "error": "An unexpected error occurred invoking 'Sum' on the server. HubException: gave up",
    }
    client.drop()


# -- client results -------------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_client_result_from_hub_method(server: SignalRServer, transport: str) -> None:
    """A hub method awaits call.caller.invoke_with_result: Invocation with id, Completion back."""
    client = await connected(server, transport)
    await client.invoke("AskClient", "q?", invocation_id="6")
    ask = await client.record()
    assert ask == {"type": 1, "invocationId": "s1", "target": "getMessage", "arguments": ["q?"]}
    await client.send(b'{"invocationId":"s1","result":"from-client","type":3}\x1e')
    assert await client.record() == {
        "type": 3,
        "invocationId": "6",
        "result": "client said from-client",
    }
    client.drop()


@pytest_twisted.ensureDeferred
async def test_client_result_errors(server: SignalRServer) -> None:
    """An error Completion fails the Deferred; so does the connection ending."""
    client = await connected(server, "WebSockets")
    connection_id = cid(server, client)
    d = server.invoke_with_result(connection_id, "getValue", 1)
    assert await client.record() == {
        "type": 1,
        "invocationId": "s1",
        "target": "getValue",
        "arguments": [1],
    }
    await client.send(b'{"invocationId":"s1","error":"no value","type":3}\x1e')
    with pytest.raises(ClientResultError, match="no value"):
        await within(d, 5)
    d2 = server.invoke_with_result(connection_id, "getValue", 2)
    assert (await client.record())["invocationId"] == "s2"
    d3 = server.invoke_with_result(connection_id, "getValue", 3)
    assert (await client.record())["invocationId"] == "s3"
    await client.send(b'{"invocationId":"s3","type":3}\x1e')
    assert await within(d3, 5) is None
    client.drop()
    with pytest.raises(ClientResultError):
        await within(d2, 5)
    with pytest.raises(ClientResultError):
        await within(server.invoke_with_result("nobody", "x"), 5)


# -- messaging and groups ---------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_broadcast_groups_and_send_to_connection(
    server: SignalRServer, transport: str
) -> None:
    """send_to_all / groups / send_to_connection reach Core connections of that hub only."""
    a = await connected(server, transport)
    b = await connected(server, "WebSockets")
    other = await connected(server, "WebSockets", hub="chat")
    await a.invoke("Broadcast", "hi", invocation_id="1")
    assert await a.record() == {"type": 1, "target": "receive", "arguments": ["hi"]}
    assert await a.record() == {"type": 3, "invocationId": "1"}
    assert await b.record() == {"type": 1, "target": "receive", "arguments": ["hi"]}
    await a.invoke("JoinGroup", "g", invocation_id="2")
    assert await a.record() == {"type": 3, "invocationId": "2"}
    assert server.groups_of(cid(server, a)) == [("echo", "g")]
    await b.invoke("SendToGroup", "g", "m", invocation_id="3")
    assert await b.record() == {"type": 3, "invocationId": "3"}
    assert await a.record() == {"type": 1, "target": "groupMessage", "arguments": ["g", "m"]}
    await a.invoke("LeaveGroup", "g", invocation_id="4")
    assert await a.record() == {"type": 3, "invocationId": "4"}
    server.send_to_group("echo", "g", "groupMessage", "g", "late")
    server.send_to_connection(cid(server, b), "echo", "direct", 1)
    assert await b.record() == {"type": 1, "target": "direct", "arguments": [1]}
    server.send_to_all("chat", "addMessage", "x", "y")
    assert await other.record() == {"type": 1, "target": "addMessage", "arguments": ["x", "y"]}
    await sleep(0.1)
    assert a.records.pending == [] and b.records.pending == []
    for c in (a, b, other):
        c.drop()


# -- server Close -----------------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_server_close_with_error(server: SignalRServer, transport: str) -> None:
    """close_core_connection sends Close with error/allowReconnect, then ends the transport."""
    client = await connected(server, transport)
    connection_id = cid(server, client)
    assert server.close_core_connection(connection_id, "bye", allow_reconnect=True)
    assert await client.record() == {"type": 7, "error": "bye", "allowReconnect": True}
    result = await within(client.closed, 5)
    if transport == "WebSockets":
        assert result == 1000
    if transport == "LongPolling":
        assert client.poll_statuses[-1] == 204
    assert connection_id not in server.core_connections
    assert not server.close_core_connection(connection_id)
    info = server.events("disconnected")[-1]
    assert (info["family"], info["clean"], info["reason"]) == ("core", False, "server close")


@pytest_twisted.ensureDeferred
async def test_client_close_ends_connection(server: SignalRServer) -> None:
    """A Close from the client ends the connection; the server answers with close 1000."""
    client = await connected(server, "WebSockets")
    await client.send(b'{"type":7}\x1e')
    assert await within(client.closed, 5) == 1000
    assert server.events("disconnected")[-1]["clean"] is True


@pytest_twisted.ensureDeferred
async def test_unknown_types_and_properties_ignored(server: SignalRServer) -> None:
    """Unknown message types, Ack/Sequence and extra properties are ignored."""
    client = await connected(server, "WebSockets")
    await client.send(b'{"type":99,"x":1}\x1e{"type":8,"sequenceId":1}\x1e')
    await client.send(
        b'{"type":1,"invocationId":"1","target":"Echo","arguments":[2],"extra":{"a":1}}\x1e'
    )
    assert await client.record() == {"type": 3, "invocationId": "1", "result": 2}
    client.drop()


@pytest_twisted.ensureDeferred
async def test_malformed_record_closes_with_error(server: SignalRServer) -> None:
    """A record that is not a hub message closes with 'Connection closed with an error.'."""
    client = await connected(server, "WebSockets")
    await client.send(b'{"type":1,"target":"Echo"}\x1e')
    assert await client.record() == {"type": 7, "error": "Connection closed with an error."}
    assert await within(client.closed, 5) == 1000


# -- limits ---------------------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_message_over_limit_closes(server: SignalRServer, transport: str) -> None:
    """A record over 32 KiB closes the connection with a Close error."""
    client = await connected(server, transport)
    big = json.dumps({"type": 1, "target": "Echo", "arguments": ["x" * 40000]}).encode()
    await client.send(big + b"\x1e")
    assert await client.record() == {"type": 7, "error": "Connection closed with an error."}
    await within(client.closed, 5)


@pytest_twisted.ensureDeferred
async def test_message_over_limit_detailed() -> None:
    """With detailed_errors the Close error names the limit like .NET."""
    s = SignalRServer(
        running_reactor(), [EchoHub()], detailed_errors=True, core_max_message_size=100
    )
    await s.listen()
    try:
        client = await connected(s, "WebSockets")
        await client.send(b'{"type":1,"target":"Echo","arguments":["' + b"y" * 200 + b'"]}\x1e')
        assert await client.record() == {
            "type": 7,
            "error": "Connection closed with an error. InvalidDataException: The maximum "
            "message size of 100B was exceeded. The message size can be configured in "
            "AddHubOptions.",
        }
    finally:
        await s.stop()


# -- auth and redirect ------------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_redirect_and_bearer_token(server: SignalRServer, transport: str) -> None:
    """The redirect negotiate answers url + accessToken; /client/ then needs that token."""
    ex, body = await core_negotiate(server.redirect_url("echo"))
    assert ex.code == 200
    assert body["url"] == f"http://127.0.0.1:{server.port}/client/?hub=echo"
    token = body["accessToken"]
    ex, _ = await core_negotiate(body["url"])
    assert ex.code == 401
    ex, _ = await core_negotiate(body["url"], headers={"Authorization": "Bearer wrong"})
    assert ex.code == 401
    client = CoreClient(body["url"], transport, headers={"Authorization": f"Bearer {token}"})
    assert await client.connect() == {}
    ex, _ = await fetch("POST", client.url, b'{"type":6}\x1e')
    assert ex.code == 401
    ex, _ = await fetch("POST", client.url + f"&access_token={token}", b'{"type":6}\x1e')
    assert ex.code == (405 if transport == "WebSockets" else 200)  # past the token check
    await client.invoke("Echo", "via redirect", invocation_id="1")
    assert await client.record() == {"type": 3, "invocationId": "1", "result": "via redirect"}
    client.drop()


@pytest_twisted.ensureDeferred
async def test_access_token_option() -> None:
    """core_access_token (string or validator) guards negotiate and every request."""
    s = SignalRServer(running_reactor(), [EchoHub()], core_access_token=lambda t: t == "good")
    await s.listen()
    try:
        ex, _ = await core_negotiate(s.core_url("echo"))
        assert ex.code == 401
        assert ex.header("www-authenticate") == ["Bearer"]
        client = CoreClient(
            s.core_url("echo"), "LongPolling", headers={"Authorization": "Bearer good"}
        )
        assert await client.connect() == {}
        ex, _ = await fetch("POST", client.url, b'{"type":6}\x1e')
        assert ex.code == 401
        ex, _ = await fetch("POST", client.url + "&access_token=good", b'{"type":6}\x1e')
        assert ex.code == 200
        assert s.events("unauthorized")[0]["family"] == "core"
        client.drop()
    finally:
        await s.stop()


# -- faults -----------------------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_refuse_transport_and_negotiate(server: SignalRServer, transport: str) -> None:
    """refuse_transport answers a Core connection's first transport request; so negotiate."""
    classic = {
        "WebSockets": "webSockets",
        "ServerSentEvents": "serverSentEvents",
        "LongPolling": "longPolling",
    }[transport]
    server.refuse_transport(classic, 503, b"nope")
    _ex, neg = await core_negotiate(server.core_url("echo"))
    url = server.core_url("echo") + "?id=" + neg["connectionToken"]
    headers = {"Accept": "text/event-stream"} if transport == "ServerSentEvents" else {}
    if transport == "WebSockets":
        client = CoreClient(server.core_url("echo"), transport)
        await client.negotiate()
        with pytest.raises(ConnectionError):
            await client.open()
    else:
        ex, body = await fetch("GET", url, None, headers)
        assert (ex.code, body) == (503, b"nope")
    assert server.events("refused")[-1]["family"] == "core"
    server.refuse_transport(classic, None)
    server.refuse_negotiate(500, b"down")
    ex, body = await core_negotiate(server.core_url("echo"))
    assert (ex.code, body) == (500, b"down")
    server.refuse_negotiate(None)


@pytest_twisted.ensureDeferred
async def test_drop_all_transports(server: SignalRServer) -> None:
    """drop_all_transports aborts Core WebSockets and SSE (their connections end)."""
    ws = await connected(server, "WebSockets")
    sse = await connected(server, "ServerSentEvents")
    server.drop_all_transports()
    await within(ws.closed, 5)
    await within(sse.closed, 5)
    await wait_until(lambda: server.core_connections == [], "connections ended")
    reasons = {e["reason"] for e in server.events("disconnected")}
    assert reasons == {"transport lost"}


@pytest_twisted.ensureDeferred
async def test_drop_long_poll_keeps_connection(server: SignalRServer) -> None:
    """A dropped long poll does not end the connection; the next poll carries on."""
    client = await connected(server, "LongPolling")
    await wait_until(lambda: client._poll is not None, "poll")
    await sleep(0.05)
    server.drop_all_transports()
    await within(client.closed, 5)
    connection_id = cid(server, client)
    assert connection_id in server.core_connections
    client._polling = True
    client.closed = defer.Deferred()
    client._next_poll()
    await client.invoke("Echo", 1, invocation_id="1")
    assert await client.record() == {"type": 3, "invocationId": "1", "result": 1}
    client.drop()


@transports
@pytest_twisted.ensureDeferred
async def test_stall_transports(server: SignalRServer, transport: str) -> None:
    """While stalled nothing is sent; unstalling delivers what queued up."""
    client = await connected(server, transport)
    server.stall_transports()
    await client.invoke("Echo", "later", invocation_id="1")
    await sleep(0.2)
    assert client.records.pending == []
    server.stall_transports(False)
    assert await client.record() == {"type": 3, "invocationId": "1", "result": "later"}
    client.drop()


# -- pings and client timeout on a task.Clock ---------------------------------------------


class ClockReactor:
    """Real TCP, time from a task.Clock."""

    def __init__(self, clock: task.Clock) -> None:
        self._clock = clock
        self._real = running_reactor()

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self._clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self._clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@transports
@pytest_twisted.ensureDeferred
async def test_keepalive_and_client_timeout_on_clock(transport: str) -> None:
    """Pings every core_keepalive without sending; client_timeout closes (not on LP)."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()])  # type: ignore[arg-type]
    await s.listen()
    try:
        client = await connected(s, transport)
        await client.send(b'{"type":6}\x1e')  # arms the client timeout (ASP.NET Core 2.2)
        await sleep(0.05)
        clock.advance(14.9)
        await sleep(0.05)
        assert client.records.pending == []
        clock.advance(0.2)
        if transport == "LongPolling":
            await sleep(0.1)
            assert client.records.pending == []  # no pings on long polling
            clock.advance(60)
            await sleep(0.1)
            assert s.core_connections != []
            client.drop()
            return
        assert await client.record(pings=True) == {"type": 6}
        await client.send(b'{"type":6}\x1e')  # restarts the client timeout: now 45.1
        await sleep(0.05)
        clock.advance(15.05)
        assert await client.record(pings=True) == {"type": 6}
        clock.advance(14.8)
        await sleep(0.05)
        assert not client.closed.called
        clock.advance(0.2)
        await within(client.closed, 5)
        await sleep(0.05)
        assert client.records.pending == []  # no Close message, as ASP.NET Core 2.2
        if transport == "WebSockets":
            assert client.close_code == 1000
        assert s.events("timeout")[0]["family"] == "core"
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_long_poll_timeout_and_disconnect_on_clock() -> None:
    """A held poll answers 200 empty after core_poll_timeout; no poll for 15 s ends it."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()])  # type: ignore[arg-type]
    await s.listen()
    try:
        _ex, neg = await core_negotiate(s.core_url("echo"))
        url = s.core_url("echo") + "?id=" + neg["connectionToken"]
        await fetch("GET", url)
        await fetch("POST", url, HANDSHAKE)
        ex, body = await fetch("GET", url)
        assert body == b"{}\x1e"
        from server_clients import request

        held = request("GET", url)
        await sleep(0.1)
        clock.advance(89)
        await sleep(0.05)
        assert not held.body.called
        clock.advance(1.5)
        assert await within(held.body, 5) == b""
        assert held.code == 200
        assert neg["connectionId"] in s.core_connections
        clock.advance(15.5)
        assert s.core_connections == []
        assert s.events("disconnected")[-1]["reason"] == "disconnect timeout"
        ex, body = await fetch("GET", url)
        assert ex.code == 404
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_handshake_timeout_and_unused_negotiate_on_clock() -> None:
    """No handshake within 15 s: 'Handshake was canceled.'; an unused negotiate expires."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()])  # type: ignore[arg-type]
    await s.listen()
    try:
        client = CoreClient(s.core_url("echo"), "WebSockets")
        await client.negotiate()
        await client.open()
        unused = CoreClient(s.core_url("echo"), "WebSockets")
        await unused.negotiate()
        clock.advance(15.5)
        assert await client.record() == {"error": "Handshake was canceled."}
        assert await within(client.closed, 5) == 1000
        ex, body = await fetch("GET", unused.url)
        assert (ex.code, body) == (404, b"No Connection with that ID")
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_detailed_errors() -> None:
    """detailed_errors adds the exception type and text, and the argument count message."""
    s = SignalRServer(running_reactor(), [EchoHub()], detailed_errors=True)
    await s.listen()
    try:
        client = await connected(s, "WebSockets")
        await client.invoke("Crash", invocation_id="1")
        assert await client.record() == {
            "type": 3,
            "invocationId": "1",
            "error": "An unexpected error occurred invoking 'Crash' on the server. "
            "RuntimeError: boom",
        }
        await client.invoke("Add", 1, invocation_id="2")
        assert await client.record() == {
            "type": 3,
            "invocationId": "2",
            "error": "Failed to invoke 'Add' due to an error on the server. "
            "InvalidDataException: Invocation provides 1 argument(s) but target expects 2.",
        }
        client.drop()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_v1_connection_id_is_not_a_token(server: SignalRServer) -> None:
    """With negotiate v1 only the connectionToken opens the connection, not the id."""
    client = CoreClient(server.core_url("echo"), "LongPolling")
    await client.negotiate()
    ex, body = await fetch("GET", server.core_url("echo") + "?id=" + client.neg["connectionId"])
    assert (ex.code, body) == (404, b"No Connection with that ID")
    ex, body = await fetch("GET", client.url)
    assert (ex.code, body) == (200, b"")


@pytest_twisted.ensureDeferred
async def test_classic_caller_has_no_client_results() -> None:
    """Over classic SignalR, call.caller.invoke_with_result fails with ClientResultError."""
    from txsignalr.testing import HubCall

    call = HubCall(SignalRServer(running_reactor(), [EchoHub()]), EchoHub(), "c", "1", {})
    with pytest.raises(ClientResultError):
        await call.caller.invoke_with_result("x")


@pytest_twisted.ensureDeferred
async def test_core_events(server: SignalRServer) -> None:
    """Core events carry family, hub, connection id and transport."""
    client = await connected(server, "ServerSentEvents")
    connection_id = cid(server, client)
    await client.invoke("Echo", 1, invocation_id="1")
    await client.record()
    await client.stop()
    await wait_until(lambda: server.events("disconnected") != [], "disconnected")
    kinds = [k for k, info in server.log if info.get("family") == "core"]
    assert kinds == [
        "negotiate",
        "transport",
        "connect",
        "handshake",
        "connected",
        "invoke",
        "client_close",
        "disconnected",
    ]
    handshake = server.events("handshake")[0]
    assert handshake["ok"] and (handshake["protocol"], handshake["version"]) == ("json", 1)
    invoke = server.events("invoke")[0]
    assert invoke["connection_id"] == connection_id
    assert invoke["transport"] == "ServerSentEvents"
    assert (invoke["target"], invoke["arguments"], invoke["invocation_id"]) == ("Echo", [1], "1")
    assert server.events("disconnected")[0]["clean"] is True


@pytest_twisted.ensureDeferred
async def test_redirect_refused_issues_no_token(server: SignalRServer) -> None:
    """refuse_negotiate answers the redirect negotiate too, without issuing a token."""
    server.refuse_negotiate(403, b"no")
    ex, body = await core_negotiate(server.redirect_url("echo"))
    assert (ex.code, body) == (403, b"no")
    assert server.redirect_tokens == set()


def test_core_path_must_not_collide() -> None:
    """core_path cannot be the classic path or a reserved redirect path."""
    with pytest.raises(ValueError):
        SignalRServer(running_reactor(), [EchoHub()], core_path="/signalr")
    with pytest.raises(ValueError):
        SignalRServer(running_reactor(), [EchoHub()], core_path="/client/")


@pytest_twisted.ensureDeferred
async def test_long_poll_superseded_and_batched(server: SignalRServer) -> None:
    """A newer poll answers the held one 204; records queued between polls come together."""
    from server_clients import request

    _ex, neg = await core_negotiate(server.core_url("echo"))
    url = server.core_url("echo") + "?id=" + neg["connectionToken"]
    await fetch("GET", url)
    await fetch("POST", url, HANDSHAKE)
    _ex, body = await fetch("GET", url)
    assert body == b"{}\x1e"
    first = request("GET", url)
    await sleep(0.05)
    second = request("GET", url)
    assert await within(first.body, 5) == b""
    assert first.code == 204
    echo = b'{"type":1,"invocationId":"%d","target":"Echo","arguments":[%d]}\x1e'
    await fetch("POST", url, echo % (1, 1))
    assert await within(second.body, 5) == b'{"type":3,"invocationId":"1","result":1}\x1e'
    await fetch("POST", url, echo % (2, 2) + echo % (3, 3))
    _ex, body = await fetch("GET", url)
    assert body == (
        b'{"type":3,"invocationId":"2","result":2}\x1e{"type":3,"invocationId":"3","result":3}\x1e'
    )
    await fetch("DELETE", url)


@pytest_twisted.ensureDeferred
async def test_sse_client_gone_ends_connection(server: SignalRServer) -> None:
    """When the event stream's TCP connection goes away, the Core connection ends."""
    client = await connected(server, "ServerSentEvents")
    connection_id = cid(server, client)
    client.drop()
    await wait_until(lambda: connection_id not in server.core_connections, "ended")
    assert server.events("disconnected")[-1]["reason"] == "transport lost"
    ex, _ = await fetch("POST", client.url, b'{"type":6}\x1e')
    assert ex.code == 404


@pytest_twisted.ensureDeferred
async def test_cors_option() -> None:
    """With cors=True Core requests echo Origin and preflights get 204."""
    s = SignalRServer(running_reactor(), [EchoHub()], cors=True)
    await s.listen()
    try:
        origin = {"Origin": "http://example.test"}
        ex, _ = await fetch(
            "OPTIONS",
            s.core_url("echo") + "/negotiate",
            None,
            {**origin, "Access-Control-Request-Headers": "x-requested-with"},
        )
        assert ex.code == 204
        assert ex.header("access-control-allow-origin") == ["http://example.test"]
        assert ex.header("access-control-allow-headers") == ["x-requested-with"]
        ex, _ = await core_negotiate(s.core_url("echo"), headers=origin)
        assert ex.code == 200
        assert ex.header("access-control-allow-credentials") == ["true"]
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_client_timeout_with_close_message_on_clock() -> None:
    """core_timeout_close=True sends Close with allowReconnect before closing."""
    clock = task.Clock()
    s = SignalRServer(ClockReactor(clock), [EchoHub()], core_timeout_close=True)  # type: ignore[arg-type]
    await s.listen()
    try:
        client = await connected(s, "WebSockets")
        await client.send(b'{"type":6}\x1e')
        await sleep(0.05)
        s.core_keepalive = None
        clock.advance(30.5)
        assert await client.record() == {
            "type": 7,
            "error": "Connection closed with an error.",
            "allowReconnect": True,
        }
        assert await within(client.closed, 5) == 1000
    finally:
        await s.stop()

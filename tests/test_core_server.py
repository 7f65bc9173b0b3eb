"""
The ASP.NET Core SignalR side of ``txsignalr.testing.SignalRServer``, over real
loopback sockets with raw clients: negotiate, the three transports' bytes, handshake,
hub messages, streams, client results, groups, Close, auth, faults and limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from helpers import running_reactor, sleep, wait_until, within
from server_clients import CORE_TRANSPORTS, HANDSHAKE, CoreClient, core_negotiate, fetch, request

from txsignalr.testing import ChatHub, HubCall, HubException, SignalRServer
from txsignalr.testing import EchoHub as DemoEchoHub


class EchoHub(DemoEchoHub):
    """The demo echo hub (the transcripts' test hub) and a few more methods."""

    name = "echo"

    def Crash(self, call: HubCall) -> None:
        raise RuntimeError("boom")

    def Nothing(self, call: HubCall) -> None:
        return None

    def Whoami(self, call: HubCall) -> str:
        return call.connection_id

    def CallMe(self, call: HubCall, text: str) -> str:
        call.caller.invoke("called", text)
        return "ok"

    async def Forever(self, call: HubCall) -> AsyncIterator[int]:
        i = 0
        while True:
            await self.server.sleep(0.01)
            yield i
            i += 1

    async def BadStream(self, call: HubCall) -> AsyncIterator[int]:
        yield 1
        raise HubException("stream broke")

    async def AskClient(self, call: HubCall, question: Any) -> Any:
        answer = await call.caller.invoke_with_result("getMessage", question)
        return f"client said {answer}"


@pytest.fixture
def server() -> Any:
    s = SignalRServer(running_reactor(), [EchoHub(), ChatHub()])
    pytest_twisted.blockon(defer_listen(s))
    yield s
    pytest_twisted.blockon(defer_stop(s))


def defer_listen(s: SignalRServer) -> Any:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(s.listen())


def defer_stop(s: SignalRServer) -> Any:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(s.stop())


transports = pytest.mark.parametrize("transport", CORE_TRANSPORTS)


# -- negotiate ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_core_url_layout_and_case(server: SignalRServer) -> None:
    """core_url is {base}/hubs/{hub lower}; the hub name matches in any case."""
    assert server.core_url("echo") == f"http://127.0.0.1:{server.port}/hubs/echo"
    assert server.core_url("ECHO") == server.core_url("echo")
    ex, body = await core_negotiate(f"http://127.0.0.1:{server.port}/hubs/EcHo")
    assert ex.code == 200 and body["negotiateVersion"] == 1


@pytest_twisted.ensureDeferred
async def test_negotiate_v1(server: SignalRServer) -> None:
    """negotiateVersion=1 gets connectionId, connectionToken, the three transports."""
    ex, body = await core_negotiate(server.core_url("echo"))
    assert ex.code == 200
    assert ex.header("content-type") == ["application/json"]
    assert list(body) == [
        "negotiateVersion",
        "connectionId",
        "connectionToken",
        "availableTransports",
    ]
    assert body["negotiateVersion"] == 1
    assert body["connectionId"] != body["connectionToken"]
    assert len(body["connectionId"]) == 22
    assert body["availableTransports"] == [
        {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
        {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
        {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
    ]


@pytest_twisted.ensureDeferred
async def test_negotiate_v0_like_aspnetcore_22(server: SignalRServer) -> None:
    """Without negotiateVersion the answer is v0: connectionId and transports only."""
    _ex, body = await core_negotiate(server.core_url("echo"), version=None)
    assert list(body) == ["connectionId", "availableTransports"]


@pytest_twisted.ensureDeferred
async def test_negotiate_version_option_zero_always_v0() -> None:
    """core_negotiate_version=0 answers v0 even to negotiateVersion=1 (as ASP.NET Core 2.2)."""
    s = SignalRServer(running_reactor(), [EchoHub()], core_negotiate_version=0)
    await s.listen()
    try:
        client = CoreClient(s.core_url("echo"), "WebSockets")
        assert await client.connect() == {}
        assert "connectionToken" not in client.neg
        assert client.token == client.neg["connectionId"]
        await client.invoke("Echo", "v0", invocation_id="0")
        assert await client.record() == {"type": 3, "invocationId": "0", "result": "v0"}
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_negotiate_bad_version(server: SignalRServer) -> None:
    """A non-integer negotiateVersion gets the server's error answer."""
    _ex, body = await core_negotiate(server.core_url("echo"), version="x")  # type: ignore[arg-type]
    assert body == {"error": "The client requested a non-integer protocol version."}


@pytest_twisted.ensureDeferred
async def test_negotiate_get_is_405_and_unknown_hub_404(server: SignalRServer) -> None:
    """Negotiate is POST only; an unknown hub is 404."""
    ex, _ = await fetch("GET", server.core_url("echo") + "/negotiate")
    assert ex.code == 405
    ex, _ = await fetch("POST", f"http://127.0.0.1:{server.port}/hubs/nohub/negotiate")
    assert ex.code == 404


@pytest_twisted.ensureDeferred
async def test_negotiate_transports_option() -> None:
    """transports= limits availableTransports and refuses the others with 404."""
    s = SignalRServer(running_reactor(), [EchoHub()], transports=["longPolling"])
    await s.listen()
    try:
        _ex, body = await core_negotiate(s.core_url("echo"))
        assert [t["transport"] for t in body["availableTransports"]] == ["LongPolling"]
        token = body["connectionToken"]
        ex, text = await fetch(
            "GET", s.core_url("echo") + f"?id={token}", None, {"Accept": "text/event-stream"}
        )
        assert (ex.code, text) == (
            404,
            b"ServerSentEvents transport not supported by this end point type",
        )
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_and_missing_id(server: SignalRServer) -> None:
    """id= missing is 400, unknown id is 404 'No Connection with that ID'."""
    ex, body = await fetch("GET", server.core_url("echo"))
    assert (ex.code, body) == (400, b"Connection ID required")
    ex, body = await fetch("GET", server.core_url("echo") + "?id=nope")
    assert (ex.code, body) == (404, b"No Connection with that ID")
    ex, body = await fetch("POST", server.core_url("echo") + "?id=nope", b"{}\x1e")
    assert (ex.code, body) == (404, b"No Connection with that ID")


# -- handshake and invocations, on every transport --------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_handshake_and_invocations(server: SignalRServer, transport: str) -> None:
    """Handshake {} then Echo/Add/Fail/void/unknown method answered as .NET does."""
    client = CoreClient(server.core_url("echo"), transport)
    assert await client.connect() == {}
    await client.invoke("Echo", "hello", invocation_id="0")
    assert await client.record() == {"type": 3, "invocationId": "0", "result": "hello"}
    await client.invoke("add", 2, 3, invocation_id="1")
    assert await client.record() == {"type": 3, "invocationId": "1", "result": 5}
    await client.invoke("Fail", invocation_id="2")
    assert await client.record() == {
        "type": 3,
        "invocationId": "2",
        "error": "An unexpected error occurred invoking 'Fail' on the server. "
        "HubException: Intentional failure",
    }
    await client.invoke("Crash", invocation_id="3")
    assert await client.record() == {
        "type": 3,
        "invocationId": "3",
        "error": "An unexpected error occurred invoking 'Crash' on the server.",
    }
    await client.invoke("Nothing", invocation_id="4")
    assert await client.record() == {"type": 3, "invocationId": "4"}
    await client.invoke("Missing", invocation_id="5")
    assert await client.record() == {
        "type": 3,
        "invocationId": "5",
        "error": "Failed to invoke 'Missing' due to an error on the server. "
        "HubException: Method does not exist.",
    }
    await client.invoke("Echo", invocation_id="6")
    assert await client.record() == {
        "type": 3,
        "invocationId": "6",
        "error": "Failed to invoke 'Echo' due to an error on the server.",
    }
    # non-blocking: no completion; the next answer is for "7"
    await client.invoke("Echo", "quiet")
    await client.invoke("Echo", "loud", invocation_id="7")
    assert await client.record() == {"type": 3, "invocationId": "7", "result": "loud"}
    await client.stop()
    await within(client.closed, 5)
    await wait_until(lambda: not server.core_connections, "connection gone")


@transports
@pytest_twisted.ensureDeferred
async def test_server_bytes_are_dotnet_order(server: SignalRServer, transport: str) -> None:
    """Records come type first, compact, one 0x1E each (as the transcripts show)."""
    client = CoreClient(server.core_url("echo"), transport)
    await client.negotiate()
    await client.open()
    await client.send(HANDSHAKE)
    assert await within(client.chunks.get(), 5) == b"{}\x1e"
    await client.invoke("Echo", "hello", invocation_id="0")
    assert await within(client.chunks.get(), 5) == (
        b'{"type":3,"invocationId":"0","result":"hello"}\x1e'
    )
    await client.invoke("CallMe", "x", invocation_id="1")
    expected = (
        b'{"type":1,"target":"called","arguments":["x"]}\x1e'
        b'{"type":3,"invocationId":"1","result":"ok"}\x1e'
    )
    got = b""
    while len(got) < len(expected):  # one poll may carry both records
        got += await within(client.chunks.get(), 5)
    assert got == expected
    client.drop()


@transports
@pytest_twisted.ensureDeferred
async def test_handshake_errors(server: SignalRServer, transport: str) -> None:
    """An unknown protocol or version gets {"error":...} and the connection ends."""
    client = CoreClient(server.core_url("echo"), transport)
    answer = await client.connect(b'{"protocol":"xml","version":1}\x1e')
    assert answer == {"error": "The protocol 'xml' is not supported."}
    await within(client.closed, 5)
    client2 = CoreClient(server.core_url("echo"), transport)
    answer = await client2.connect(b'{"protocol":"json","version":3}\x1e')
    assert answer == {"error": "The server does not support version 3 of the 'json' protocol."}
    await within(client2.closed, 5)
    assert [e["ok"] for e in server.events("handshake")] == [False, False]


@transports
@pytest_twisted.ensureDeferred
async def test_data_after_handshake_and_split_records(
    server: SignalRServer, transport: str
) -> None:
    """Records in the handshake's chunk are kept; a record split across chunks is joined."""
    client = CoreClient(server.core_url("echo"), transport)
    await client.negotiate()
    await client.open()
    invoke = b'{"type":1,"invocationId":"a","target":"Echo","arguments":[1]}\x1e'
    await client.send(HANDSHAKE + invoke + invoke[:20])
    assert await client.record() == {}
    assert await client.record() == {"type": 3, "invocationId": "a", "result": 1}
    await client.send(invoke[20:].replace(b'"a"', b'"a"'))
    assert await client.record() == {"type": 3, "invocationId": "a", "result": 1}
    client.drop()


@pytest_twisted.ensureDeferred
async def test_sse_bytes(server: SignalRServer) -> None:
    """SSE: text/event-stream, ':\\r\\n' first, then 'data: <record>\\r\\n\\r\\n'."""
    _ex, neg = await core_negotiate(server.core_url("echo"))
    url = server.core_url("echo") + "?id=" + neg["connectionToken"]
    ex = request("GET", url, headers={"Accept": "text/event-stream"})
    await within(ex.headers_received, 5)
    assert ex.code == 200
    assert ex.header("content-type") == ["text/event-stream"]
    assert ex.header("cache-control") == ["no-cache"]
    post, body = await fetch("POST", url, HANDSHAKE, {"Content-Type": "text/plain;charset=UTF-8"})
    assert (post.code, body) == (200, b"")
    echo = b'{"type":1,"invocationId":"0","target":"Echo","arguments":["a\\nb"]}\x1e'
    await fetch("POST", url, echo)
    await wait_until(lambda: ex.raw.count(b"\r\n\r\n") >= 2, "two events")
    assert bytes(ex.raw) == (
        b':\r\ndata: {}\x1e\r\n\r\ndata: {"type":3,"invocationId":"0","result":"a\\nb"}\x1e\r\n\r\n'
    )
    ex.drop()


def test_sse_event_splits_lines() -> None:
    """A payload with newlines becomes several data: lines (CR trimmed)."""
    from txsignalr.testing._core_wire import sse_event

    assert sse_event(b"a\r\nb\nc") == b"data: a\r\ndata: b\r\ndata: c\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_long_polling_bytes_and_delete(server: SignalRServer) -> None:
    """First poll 200 empty at once, later ones held; DELETE 202 and the poll gets 204."""
    _ex, neg = await core_negotiate(server.core_url("echo"))
    url = server.core_url("echo") + "?id=" + neg["connectionToken"]
    first, body = await fetch("GET", url + "&_=1")
    assert (first.code, body) == (200, b"")
    assert first.header("content-type") == ["application/octet-stream"]
    held = request("GET", url + "&_=2")
    await sleep(0.1)
    assert not held.body.called
    await fetch("POST", url, HANDSHAKE)
    assert await within(held.body, 5) == b"{}\x1e"
    assert held.code == 200
    held = request("GET", url + "&_=3")
    await sleep(0.05)
    ex, body = await fetch("DELETE", url)
    assert (ex.code, body) == (202, b"")
    assert await within(held.body, 5) == b""
    assert held.code == 204
    await wait_until(lambda: server.events("disconnected") != [], "disconnected")
    assert server.events("disconnected")[-1]["family"] == "core"


@pytest_twisted.ensureDeferred
async def test_websocket_post_is_405_delete_400(server: SignalRServer) -> None:
    """A WebSocket connection refuses POST (405) and DELETE (400)."""
    client = CoreClient(server.core_url("echo"), "WebSockets")
    await client.connect()
    ex, body = await fetch("POST", client.url, b"{}")
    assert (ex.code, body) == (405, b"POST requests are not allowed for WebSocket connections.")
    ex, body = await fetch("DELETE", client.url)
    assert ex.code == 400
    client.drop()


@pytest_twisted.ensureDeferred
async def test_skip_negotiation_websocket(server: SignalRServer) -> None:
    """A WebSocket to the hub URL without id= (skipNegotiation) gets a fresh connection."""
    client = CoreClient(server.core_url("echo"), "WebSockets")
    client.neg = {}
    await client.open_without_id()
    await client.send(HANDSHAKE)
    assert await client.record() == {}
    await client.invoke("Whoami", invocation_id="1")
    answer = await client.record()
    assert answer["result"] in server.core_connections
    assert server.events("negotiate")[-1]["skipped"] is True
    client.drop()


@transports
@pytest_twisted.ensureDeferred
async def test_demo_chat_hub_over_core(server: SignalRServer, transport: str) -> None:
    """The demo ChatHub serves Core clients too: Send broadcasts addMessage."""
    client = CoreClient(server.core_url("chat"), transport)
    assert await client.connect() == {}
    await client.invoke("Send", "me", "hello", invocation_id="1")
    assert await client.record() == {
        "type": 1,
        "target": "addMessage",
        "arguments": ["me", "hello"],
    }
    assert await client.record() == {"type": 3, "invocationId": "1"}
    invoke = server.events("invoke")[-1]
    assert (invoke["family"], invoke["target"], invoke["hub"]) == ("core", "Send", "chat")
    client.drop()


@pytest_twisted.ensureDeferred
async def test_second_transport_request_refused(server: SignalRServer) -> None:
    """A second WebSocket is 409; another transport for the same id is 400."""
    client = CoreClient(server.core_url("echo"), "WebSockets")
    await client.connect()
    ex, body = await fetch("GET", client.url, None, {"Accept": "text/event-stream"})
    assert (ex.code, body) == (400, b"Cannot change transports mid-connection")
    again = CoreClient(server.core_url("echo"), "WebSockets")
    again.token = client.token
    with pytest.raises(ConnectionError):
        await again.open()
    client.drop()


@pytest_twisted.ensureDeferred
async def test_demo_c3_hub_over_core() -> None:
    """The demo c3 hub over Core: Subscribe joins groups, ticks arrive as invocations."""
    from txsignalr.testing import C3Hub

    s = SignalRServer(running_reactor(), [C3Hub(interval=0.05), ChatHub()])
    await s.listen()
    try:
        client = CoreClient(s.core_url("c3"), "WebSockets")
        assert await client.connect() == {}
        await client.invoke("Subscribe", ["tick"], invocation_id="1")
        assert await client.record() == {
            "type": 3,
            "invocationId": "1",
            "result": [{"Success": True, "ErrorCode": None}],
        }
        tick = await client.record()
        assert tick["type"] == 1 and tick["target"] == "tick"
        assert set(tick["arguments"][0]) == {"Seq", "Ts"}
        client.drop()
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_demo_echo_hub_ticker_and_client_result() -> None:
    """The demo echo hub ticks tick(n) to every client and relays a client result."""
    s = SignalRServer(running_reactor(), [DemoEchoHub(tick_interval=0.05)])
    await s.listen()
    try:
        client = CoreClient(s.core_url("echo"), "WebSockets")
        assert await client.connect() == {}
        tick = await client.record()
        assert tick["target"] == "tick" and isinstance(tick["arguments"][0], int)
        await client.invoke("AskClient", "q?", invocation_id="1")
        while True:
            record = await client.record()
            if record.get("target") != "tick":
                break
        assert record == {
            "type": 1,
            "invocationId": "s1",
            "target": "getMessage",
            "arguments": ["q?"],
        }
        await client.send(b'{"type":3,"invocationId":"s1","result":"a!"}\x1e')
        while True:
            record = await client.record()
            if record.get("target") != "tick":
                break
        assert record == {"type": 3, "invocationId": "1", "result": "a!"}
        client.drop()
    finally:
        await s.stop()

"""
HubConnection against the test server's ASP.NET Core side over real loopback sockets,
each scenario over every transport (forced, no fallback) unless it concerns one only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from helpers import sleep, wait_until, within
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred

from txsignalr import (
    ConnectionClosed,
    ConnectionState,
    HubConnection,
    HubError,
    InvalidStateError,
    MessageTooLarge,
    NegotiationError,
    NoTransportError,
    Transport,
)
from txsignalr.testing import ChatHub, HubCall, HubException, SignalRServer
from txsignalr.testing import EchoHub as DemoEchoHub

reactor: Any = _reactor

TRANSPORTS = ["webSockets", "serverSentEvents", "longPolling"]
WIRE_NAMES = {
    "webSockets": "WebSockets",
    "serverSentEvents": "ServerSentEvents",
    "longPolling": "LongPolling",
}


class EchoHub(DemoEchoHub):
    """The demo's transcript hub, plus what the client features need."""

    name = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[Any] = []

    def Whoami(self, call: HubCall) -> str:
        return call.connection_id

    def Record(self, call: HubCall, value: Any) -> None:
        self.answers.append(value)

    async def Forever(self, call: HubCall) -> AsyncIterator[int]:
        i = 0
        while True:
            await self.server.sleep(0.01)
            yield i
            i += 1

    async def BadStream(self, call: HubCall) -> AsyncIterator[int]:
        yield 1
        raise HubException("stream broke")

    async def Collect(self, call: HubCall, label: str, items: AsyncIterator[Any]) -> Any:
        got = [item async for item in items]
        return {"label": label, "items": got}

    async def AskClient(self, call: HubCall, question: Any) -> Any:
        try:
            answer = await super().AskClient(call, question)
        except Exception as e:
            return f"client failed: {e}"
        return f"client said {answer}"


#: (transport, hub protocol): every transport in JSON, and MessagePack on those that
#: carry binary (Server-Sent Events do not).
WIRES = [(t, "json") for t in TRANSPORTS] + [
    ("webSockets", "messagepack"),
    ("longPolling", "messagepack"),
]


@pytest.fixture(params=WIRES, ids=[f"{t}-{p}" for t, p in WIRES])
def wire(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def transport(wire: tuple[str, str]) -> str:
    return wire[0]


@pytest.fixture
def hub_protocol(wire: tuple[str, str]) -> str:
    return wire[1]


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[SignalRServer]:
    s = SignalRServer(reactor, hubs=[EchoHub(), ChatHub()])
    await s.listen(port=0, interface="127.0.0.1")
    yield s
    await s.stop()


def echo_hub(server: SignalRServer) -> EchoHub:
    hub = next(h for h in server.hubs if isinstance(h, EchoHub))
    return hub


@pytest_twisted.async_yield_fixture
async def conn(
    server: SignalRServer, transport: str, hub_protocol: str
) -> AsyncIterator[HubConnection]:
    c = HubConnection(
        reactor,
        server.core_url("echo"),
        transports=[transport],
        hub_protocol=hub_protocol,
        reconnect_delay=[0, 0.1, 0.2],
    )
    yield c
    await within(c.stop())


# -- start, invoke, send, client methods -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_start_invoke_error_and_detection(
    server: SignalRServer, conn: HubConnection, transport: str, hub_protocol: str
) -> None:
    """protocol="auto" finds Core; results, hub errors and the connection id, end to end."""
    assert conn.protocol is None
    await within(conn.start())
    assert conn.protocol == "core"
    assert conn.state is ConnectionState.connected
    assert conn.transport is Transport(transport)
    assert await within(conn.invoke("Echo", {"a": [1, 2.5, None], "s": "h\u00e9llo"})) == {
        "a": [1, 2.5, None],
        "s": "h\u00e9llo",
    }
    assert await within(conn.invoke("Add", 2, 3)) == 5
    assert await within(conn.invoke("Whoami")) == conn.connection_id
    with pytest.raises(HubError) as info:
        await within(conn.invoke("fail"))
    assert info.value.message == (
        "An unexpected error occurred invoking 'fail' on the server. "
        "HubException: Intentional failure"
    )
    with pytest.raises(HubError, match="Method does not exist"):
        await within(conn.invoke("NoSuchMethod"))
    handshakes = [e for e in server.events("handshake") if e.get("family") == "core"]
    assert handshakes and handshakes[-1]["transport"] == WIRE_NAMES[transport]
    assert handshakes[-1]["protocol"] == hub_protocol and handshakes[-1]["version"] == 1
    assert conn.hub_protocol == hub_protocol
    with pytest.raises(InvalidStateError, match="classic"):
        conn.hub("c3")


@pytest_twisted.ensureDeferred
async def test_messagepack_payload_types(server: SignalRServer) -> None:
    """bin, timestamps, every integer width and non-string keys round-trip a hub."""
    import datetime

    c = HubConnection(reactor, server.core_url("echo"), hub_protocol="messagepack")
    await within(c.start())
    assert c.transport is Transport.web_sockets
    utc = datetime.timezone.utc
    value = {
        "blob": b"\x00\xff" * 100,
        "when": datetime.datetime(2026, 12, 1, 9, 30, 0, 250000, tzinfo=utc),
        "ints": [0, -1, 255, -(2**63), 2**64 - 1],
        "by_id": {1: "one", 2: "two"},
        "nil": None,
    }
    echoed = await within(c.invoke("Echo", value))
    assert echoed == value
    assert type(echoed["blob"]) is bytes and echoed["when"].tzinfo is not None
    await within(c.stop())


@pytest_twisted.ensureDeferred
async def test_messagepack_skips_server_sent_events(server: SignalRServer) -> None:
    """Fallback never tries SSE for a binary hub protocol; forcing it fails clearly."""
    c = HubConnection(
        reactor,
        server.core_url("echo"),
        hub_protocol="messagepack",
        transports=["serverSentEvents", "longPolling"],
    )
    await within(c.start())
    assert c.transport is Transport.long_polling
    await within(c.stop())
    only_sse = HubConnection(
        reactor,
        server.core_url("echo"),
        hub_protocol="messagepack",
        transports=["serverSentEvents"],
    )
    with pytest.raises(NoTransportError, match="Binary"):
        await within(only_sse.start())


@pytest_twisted.ensureDeferred
async def test_send_client_methods_and_groups(server: SignalRServer, conn: HubConnection) -> None:
    """send() needs no completion; client methods (any case) and groups reach handlers."""
    received: list[Any] = []
    group_messages: list[tuple[str, Any]] = []
    conn.on("RECEIVE", received.append)
    conn.on("groupMessage", lambda g, m: group_messages.append((g, m)))
    await within(conn.start())
    await within(conn.send("Record", 7))
    await wait_until(lambda: echo_hub(server).answers == [7], what="the send")
    await within(conn.invoke("Broadcast", "hello"))
    await wait_until(lambda: received == ["hello"], what="the broadcast")
    await within(conn.invoke("JoinGroup", "g1"))
    await within(conn.invoke("SendToGroup", "g1", "in"))
    await within(conn.invoke("LeaveGroup", "g1"))
    await within(conn.invoke("SendToGroup", "g1", "out"))
    await within(conn.invoke("Broadcast", "after"))
    await wait_until(lambda: received == ["hello", "after"], what="the second broadcast")
    assert group_messages == [("g1", "in")]


# -- streams ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_to_client_streams(server: SignalRServer, conn: HubConnection) -> None:
    """async for, each(), a stream error and cancel() (the server is told)."""
    await within(conn.start())
    got = []
    async for item in conn.stream("Counter", 5, 0):
        got.append(item)
    assert got == [0, 1, 2, 3, 4]

    items: list[int] = []
    await within(conn.stream("Counter", 3, 10).each(items.append))
    assert items == [0, 1, 2]

    bad = conn.stream("BadStream")
    with pytest.raises(HubError, match="stream broke"):
        await within(bad.each(lambda item: None))

    forever = conn.stream("Forever")
    first = await within(forever.__anext__())
    assert first == 0
    forever.cancel()
    await wait_until(lambda: bool(server.events("cancel")), what="CancelInvocation")
    with pytest.raises(StopAsyncIteration):
        await forever.__anext__()
    # The connection is fine afterwards.
    assert await within(conn.invoke("Add", 1, 1)) == 2


@pytest_twisted.ensureDeferred
async def test_client_to_server_streams(conn: HubConnection) -> None:
    """An async iterable argument goes up as a stream; arguments around it stay in place."""
    await within(conn.start())

    async def numbers() -> AsyncIterator[int]:
        for n in range(1, 101):
            if n % 25 == 0:
                await sleep(0.01)
            yield n

    assert await within(conn.invoke("Sum", numbers())) == 5050

    async def words() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    assert await within(conn.invoke("Collect", "x", words())) == {
        "label": "x",
        "items": ["a", "b"],
    }

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ValueError("upload broke")

    with pytest.raises(HubError):
        await within(conn.invoke("Sum", broken()))


# -- client results --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_results(conn: HubConnection) -> None:
    """Plain, Deferred and coroutine results go back; an exception goes back as the error."""
    await within(conn.start())
    remove = conn.on("getMessage", lambda q: f"{q}!")
    assert await within(conn.invoke("AskClient", "plain")) == "client said plain!"
    remove()

    def deferred_answer(q: str) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        reactor.callLater(0.01, d.callback, q.upper())
        return d

    remove = conn.on("getMessage", deferred_answer)
    assert await within(conn.invoke("AskClient", "later")) == "client said LATER"
    remove()

    async def coroutine_answer(q: str) -> int:
        await sleep(0.01)
        return len(q)

    remove = conn.on("getMessage", coroutine_answer)
    assert await within(conn.invoke("AskClient", "four")) == "client said 4"
    remove()

    def failing(q: str) -> str:
        raise ValueError("no answer today")

    remove = conn.on("getMessage", failing)
    answer = await within(conn.invoke("AskClient", "x"))
    assert answer.startswith("client failed") and "no answer today" in answer
    remove()

    answer = await within(conn.invoke("AskClient", "nobody"))
    assert "Client didn't provide a result." in answer


# -- close, reconnect, stop ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_close_with_error_ends_the_connection(
    server: SignalRServer, conn: HubConnection
) -> None:
    """A Close without allowReconnect closes for good with the server's error text."""
    reasons: list[Any] = []
    conn.on_closed(reasons.append)
    await within(conn.start())
    pending = conn.stream("Forever")
    assert server.close_core_connection(conn.connection_id, error="go away")  # type: ignore[arg-type]
    with pytest.raises(ConnectionClosed, match="go away"):
        await within(conn.when_closed())
    assert conn.state is ConnectionState.disconnected
    await wait_until(lambda: bool(reasons), what="on_closed")
    assert "Server returned an error on close: go away" in reasons[0].reason
    with pytest.raises(ConnectionClosed):
        async for _ in pending:
            pass


@pytest_twisted.ensureDeferred
async def test_reconnect_after_drop_and_allow_reconnect_close(
    server: SignalRServer, conn: HubConnection
) -> None:
    """On loss the policy reconnects with a fresh negotiate; pending calls fail at once."""
    reconnecting: list[ConnectionClosed] = []
    reconnected: list[bool] = []
    conn.on_reconnecting(reconnecting.append)
    conn.on_reconnected(lambda: reconnected.append(True))
    await within(conn.start())
    first_id = conn.connection_id
    pending = conn.stream("Forever")
    await within(pending.__anext__())
    server.drop_all_transports()
    with pytest.raises(ConnectionClosed):
        async for _ in pending:
            pass
    await within(conn.when_connected())
    await wait_until(lambda: reconnected == [True], what="on_reconnected")
    assert len(reconnecting) == 1
    assert conn.connection_id != first_id
    assert await within(conn.invoke("Add", 20, 22)) == 42

    assert server.close_core_connection(conn.connection_id, allow_reconnect=True)  # type: ignore[arg-type]
    await wait_until(lambda: reconnected == [True, True], what="the second reconnect")
    assert await within(conn.invoke("Echo", "still here")) == "still here"


@pytest_twisted.ensureDeferred
async def test_stop_tells_the_server(
    server: SignalRServer, conn: HubConnection, transport: str, hub_protocol: str
) -> None:
    """stop() sends Close (and DELETE for long polling); the server sees a clean end."""
    await within(conn.start())
    connection_id = conn.connection_id
    await within(conn.stop())
    assert conn.state is ConnectionState.disconnected
    await wait_until(
        lambda: any(e.get("connection_id") == connection_id for e in server.events("disconnected")),
        what="the server's disconnect",
    )
    ended = [e for e in server.events("disconnected") if e.get("connection_id") == connection_id]
    assert ended[0]["clean"] is True
    # A Close message on every transport (long polling's DELETE follows it).
    assert any(e.get("connection_id") == connection_id for e in server.events("client_close"))
    with pytest.raises(InvalidStateError):
        await conn.invoke("Echo", 1)


@pytest_twisted.ensureDeferred
async def test_reconnect_gives_up_when_the_policy_says_so(
    server: SignalRServer, transport: str, hub_protocol: str
) -> None:
    """The policy returning None closes for good; nothing is left running."""
    c = HubConnection(
        reactor,
        server.core_url("echo"),
        transports=[transport],
        hub_protocol=hub_protocol,
        reconnect_delay=[0.05],
    )
    await within(c.start())
    server.refuse_negotiate(503)
    server.drop_all_transports()
    with pytest.raises(ConnectionClosed, match="gave up after 1 attempt"):
        await within(c.when_closed())
    assert c.state is ConnectionState.disconnected
    await within(c.stop())


# -- negotiate variants ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_negotiate_v0_and_fallback(transport: str, hub_protocol: str) -> None:
    """A v0 server (id = connectionId) and a server offering one transport only."""
    s = SignalRServer(
        reactor,
        hubs=[EchoHub()],
        core_negotiate_version=0,
        transports=[transport],
    )
    await s.listen(port=0, interface="127.0.0.1")
    try:
        c = HubConnection(reactor, s.core_url("echo"), hub_protocol=hub_protocol)
        await within(c.start())
        assert c.transport is Transport(transport)
        assert c.negotiated is not None and c.negotiated.negotiate_version == 0  # type: ignore[union-attr]
        assert await within(c.invoke("Whoami")) == c.connection_id
        await within(c.stop())
    finally:
        await s.stop()


@pytest_twisted.ensureDeferred
async def test_skip_negotiation(server: SignalRServer) -> None:
    """skip_negotiation goes straight to the WebSocket."""
    c = HubConnection(
        reactor,
        server.core_url("echo"),
        protocol="core",
        transports=["webSockets"],
        skip_negotiation=True,
    )
    await within(c.start())
    assert await within(c.invoke("Add", 1, 2)) == 3
    negotiates = [e for e in server.events("negotiate") if e.get("family") == "core"]
    assert [e.get("skipped") for e in negotiates] == [True]
    await within(c.stop())
    with pytest.raises(ValueError, match="only with WebSockets"):
        HubConnection(reactor, server.core_url("echo"), skip_negotiation=True)


@pytest_twisted.ensureDeferred
async def test_access_token_factory_and_redirect(
    server: SignalRServer, transport: str, hub_protocol: str
) -> None:
    """A bearer token from the factory (Deferred too); an Azure-style redirect's token."""
    server.core_access_token = "s3cret"  # type: ignore[attr-defined]
    refused = HubConnection(
        reactor, server.core_url("echo"), transports=[transport], hub_protocol=hub_protocol
    )
    with pytest.raises(NegotiationError, match="401"):
        await within(refused.start())

    calls: list[int] = []

    def factory() -> Deferred[str]:
        calls.append(1)
        d: Deferred[str] = Deferred()
        reactor.callLater(0, d.callback, "s3cret")
        return d

    c = HubConnection(
        reactor,
        server.core_url("echo"),
        transports=[transport],
        hub_protocol=hub_protocol,
        access_token_factory=factory,
    )
    await within(c.start())
    assert await within(c.invoke("Echo", "authorised")) == "authorised"
    assert calls == [1]
    assert "s3cret" not in repr(c)
    await within(c.stop())

    server.core_access_token = None  # type: ignore[attr-defined]
    r = HubConnection(
        reactor, server.redirect_url("echo"), transports=[transport], hub_protocol=hub_protocol
    )
    await within(r.start())
    assert await within(r.invoke("Echo", "via redirect")) == "via redirect"
    assert server.events("redirect")
    await within(r.stop())


@pytest_twisted.ensureDeferred
async def test_one_program_for_both_families(server: SignalRServer) -> None:
    """hub= lets on/invoke/send talk to a classic server with the same code."""
    for url in (server.url, server.core_url("chat")):
        c = HubConnection(reactor, url, hub="chat")
        messages: list[tuple[str, str]] = []
        c.on("addMessage", lambda name, text, got=messages: got.append((name, text)))
        await within(c.start())
        await within(c.invoke("Send", "bob", "hi"))
        await wait_until(lambda got=messages: got == [("bob", "hi")], what=f"the push over {url}")
        assert c.protocol == ("classic" if url == server.url else "core")
        await within(c.stop())
    classic_without_hub = HubConnection(reactor, server.url)
    await within(classic_without_hub.start())
    assert classic_without_hub.protocol == "classic"
    with pytest.raises(InvalidStateError, match="hub="):
        classic_without_hub.invoke("Send", "a", "b")
    await within(classic_without_hub.stop())


@pytest_twisted.ensureDeferred
async def test_numbered_pushes_survive_forced_drops(
    server: SignalRServer, transport: str, hub_protocol: str
) -> None:
    """1,000 numbered pushes with drops between: the policy always brings it back."""
    c = HubConnection(
        reactor,
        server.core_url("echo"),
        transports=[transport],
        hub_protocol=hub_protocol,
        reconnect_delay=0.05,
    )
    seen: list[int] = []
    reconnects: list[bool] = []
    c.on("receive", seen.append)
    c.on_reconnected(lambda: reconnects.append(True))
    await within(c.start())
    sent = 0
    for round_ in range(4):
        for _ in range(250):
            server.send_to_all("echo", "receive", sent)
            sent += 1
        await wait_until(lambda n=sent: len(seen) == n, what="the pushes")
        server.drop_all_transports()
        await wait_until(lambda n=round_ + 1: len(reconnects) == n, what="the reconnect")
    assert seen == list(range(1000))
    assert c.state is ConnectionState.connected
    await within(c.stop())


@pytest_twisted.ensureDeferred
async def test_oversized_message_is_a_clear_error(
    server: SignalRServer, transport: str, hub_protocol: str
) -> None:
    """A message over max_receive_size closes the connection with MessageTooLarge."""
    c = HubConnection(
        reactor,
        server.core_url("echo"),
        transports=[transport],
        hub_protocol=hub_protocol,
        max_receive_size=4096,
    )
    errors: list[Exception] = []
    c.on_error(errors.append)
    await within(c.start())
    assert await within(c.invoke("Echo", "x" * 1000)) == "x" * 1000
    big = c.invoke("Echo", "x" * 10_000)
    with pytest.raises(ConnectionClosed):
        await within(big)
    with pytest.raises(ConnectionClosed) as closed:
        await within(c.when_closed())
    assert isinstance(closed.value.cause, MessageTooLarge), closed.value
    assert "4096" in str(closed.value)
    assert any(isinstance(e, MessageTooLarge) for e in errors)
    await within(c.stop())


class _NeverOpens:
    """A sink in front of the connection that hides transport_opened (a buffering proxy)."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink

    def transport_opened(self, transport: Any) -> None:
        pass

    def data_received(self, transport: Any, data: bytes) -> None:
        self._sink.data_received(transport, data)

    def transport_lost(self, transport: Any, reason: Any) -> None:
        self._sink.transport_lost(transport, reason)


@pytest_twisted.ensureDeferred
async def test_fallback_negotiates_afresh(server: SignalRServer) -> None:
    """After a WebSocket that reached the server failed, SSE gets a new connection token."""
    from txsignalr._websocket import WebSocketTransport

    def websocket_never_opens(reactor: Any, request: Any, http: Any, sink: Any) -> Any:
        return WebSocketTransport(reactor, request, http, _NeverOpens(sink))

    c = HubConnection(
        reactor,
        server.core_url("echo"),
        protocol="core",
        transports=["webSockets", "serverSentEvents"],
        transport_factories={Transport.web_sockets: websocket_never_opens},
    )
    c._core.session.connect_timeout = 0.5  # no public knob; the default is 15 s
    await within(c.start())
    assert c.transport is Transport.server_sent_events
    negotiates = [e for e in server.events("negotiate") if e.get("family") == "core"]
    assert len(negotiates) == 2
    assert await within(c.invoke("Add", 1, 2)) == 3
    await within(c.stop())

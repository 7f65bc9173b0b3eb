"""
HubConnection against the in-process test server over real loopback sockets, each
scenario over every transport (forced, no fallback) unless it concerns one only.

Every test binds 127.0.0.1 port 0 and is bounded in time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from helpers import wait_until, within
from twisted.internet import reactor as _reactor
from twisted.internet.defer import TimeoutError
from twisted.internet.task import deferLater

from txsignalr import (
    ConnectionClosed,
    ConnectionState,
    HubConnection,
    HubError,
    MessageTooLarge,
    NegotiationError,
    NoTransportError,
    Transport,
    decode_deflate_base64,
)
from txsignalr.testing import C3Hub, ChatHub, SignalRServer

reactor: Any = _reactor

TRANSPORTS = ["webSockets", "serverSentEvents", "longPolling"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The transport a scenario is forced onto."""
    name: str = request.param
    return name


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[SignalRServer]:
    s = SignalRServer(
        reactor,
        hubs=[C3Hub(interval=0.2), ChatHub()],
        keepalive=1.0,
        disconnect_timeout=6.0,
        negotiate_cookies={"affinity": "srv1"},
    )
    await s.listen(port=0, interface="127.0.0.1")
    yield s
    await s.stop()


@pytest_twisted.async_yield_fixture
async def conn(server: SignalRServer, transport: str) -> AsyncIterator[HubConnection]:
    c = HubConnection(reactor, server.url, reconnect_delay=0.1, transports=[transport])
    yield c
    await within(c.stop())


@pytest_twisted.ensureDeferred
async def test_invoke_result_error_unknown_method_progress(
    server: SignalRServer, conn: HubConnection
) -> None:
    """Results, hub errors with data, unknown methods and progress, end to end."""
    c3 = conn.hub("c3")
    await within(conn.start())
    assert conn.state is ConnectionState.connected
    assert (
        conn.transport is not None
        and conn.transport.value == server.events("connect")[-1]["transport"]
    )
    assert await within(c3.invoke("Echo", {"a": [1, 2.5, None], "s": "h\u00e9llo"})) == {
        "a": [1, 2.5, None],
        "s": "h\u00e9llo",
    }
    assert await within(c3.invoke("echo", 42)) == 42

    with pytest.raises(HubError) as info:
        await within(c3.invoke("Fail"))
    assert info.value.is_hub_exception
    assert info.value.data == {"Code": 42, "Reason": "requested"}
    assert info.value.message == "Intentional failure from c3.Fail()"

    with pytest.raises(HubError) as unknown:
        await within(c3.invoke("NoSuchMethod", 1))
    # Without detailed errors the real server answers with the generic text.
    assert unknown.value.message == "There was an error invoking Hub method 'c3.NoSuchMethod'."
    assert not unknown.value.is_hub_exception

    progress: list[Any] = []
    result = await within(c3.invoke("Slow", 100, on_progress=progress.append))
    assert result == "slept 100 ms"
    assert progress[:4] == [20, 40, 60, 80]


@pytest_twisted.ensureDeferred
async def test_hub_state_round_trip(server: SignalRServer, conn: HubConnection) -> None:
    """Hub state goes out in S and the server's changes come back into proxy.state."""
    chat = conn.hub("chat")
    await within(conn.start())
    chat.state["counter"] = 5
    chat.state["name"] = "alice"
    assert await within(chat.invoke("IncrementCounter")) == 6
    assert chat.state["counter"] == 6
    assert chat.state["lastCalled"] == "IncrementCounter"
    assert await within(chat.invoke("GetName")) == "alice"


@pytest_twisted.ensureDeferred
async def test_client_calls_on_two_hubs(server: SignalRServer, conn: HubConnection) -> None:
    """Client-method calls on two hubs of one connection reach the right handlers."""
    c3 = conn.hub("c3")
    chat = conn.hub("Chat")
    summaries: list[Any] = []
    messages: list[tuple[str, str]] = []
    c3.on("marketSummaries", lambda payload: summaries.append(decode_deflate_base64(payload)))
    chat.on("addMessage", lambda name, text: messages.append((name, text)))
    await within(conn.start())
    result = await within(c3.invoke("Subscribe", ["market_summaries"]))
    assert result == [{"Success": True, "ErrorCode": None}]
    await within(chat.invoke("Send", "bob", "hi there"))
    await wait_until(lambda: len(summaries) >= 2 and messages, what="pushes on both hubs")
    assert messages == [("bob", "hi there")]
    assert "sequence" in summaries[0]
    assert summaries[1]["sequence"] > summaries[0]["sequence"]


@pytest_twisted.ensureDeferred
async def test_groups_survive_reconnect(server: SignalRServer, conn: HubConnection) -> None:
    """Group membership comes back on /reconnect through the groups token."""
    chat = conn.hub("chat")
    group_messages: list[str] = []
    chat.on("groupMessage", lambda group, text: group_messages.append(text))
    await within(conn.start())
    await within(chat.invoke("JoinGroup", "g1"))
    await wait_until(lambda: conn.groups_token is not None, what="groups token")
    server.drop_all_transports()
    await wait_until(lambda: conn.state is ConnectionState.reconnecting, what="reconnecting")
    await wait_until(lambda: conn.state is ConnectionState.connected, what="reconnected")
    reconnect = server.events("reconnect")[-1]
    assert reconnect["groups_token"]
    server.send_to_group("chat", "g1", "groupMessage", "g1", "after reconnect")
    await wait_until(lambda: group_messages == ["after reconnect"], what="group message")


@pytest_twisted.ensureDeferred
async def test_thousand_pushes_with_five_drops(server: SignalRServer, transport: str) -> None:
    """1,000 numbered pushes with 5 forced drops arrive exactly once and in order."""
    conn = HubConnection(reactor, server.url, reconnect_delay=0.05, transports=[transport])
    c3 = conn.hub("c3")
    received: list[int] = []
    c3.on("numbered", received.append)
    reconnects: list[bool] = []
    conn.on_reconnected(lambda: reconnects.append(True))
    await within(conn.start())
    try:
        sent = 0
        for drop in range(5):
            for _ in range(100):
                sent += 1
                server.send_to_all("c3", "numbered", sent)
            # Let some arrive, then drop while the rest are in flight or unsent.
            await wait_until(lambda s=sent: len(received) >= s - 50, what="first pushes")
            server.drop_all_transports()
            for _ in range(100):
                sent += 1
                server.send_to_all("c3", "numbered", sent)
            await wait_until(lambda n=drop: len(reconnects) > n, what=f"reconnect {drop + 1}")
        assert sent == 1000
        await wait_until(lambda: len(received) >= 1000, seconds=20, what="all pushes")
        await deferLater(reactor, 0.2, lambda: None)  # anything duplicated would show up
        assert received == list(range(1, 1001))
        assert len(server.events("reconnect")) == 5
        assert all(e["message_id"] for e in server.events("reconnect"))
    finally:
        await within(conn.stop())


@pytest.mark.parametrize("transport", ["webSockets", "serverSentEvents"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_keepalive_loss_leads_to_reconnect(
    server: SignalRServer, conn: HubConnection
) -> None:
    """When the server goes silent, the watchdog reports slow, then reconnects."""
    slow: list[bool] = []
    conn.on_slow(lambda: slow.append(True))
    conn.hub("c3")
    await within(conn.start())
    assert conn.negotiated is not None and conn.negotiated.keep_alive_timeout == 2.0
    server.keepalives_enabled = False
    reconnect = server.when_event("reconnect")
    await wait_until(
        lambda: conn.state is ConnectionState.reconnecting, seconds=5, what="reconnecting"
    )
    assert slow == [True]
    server.keepalives_enabled = True
    await within(reconnect)
    await wait_until(lambda: conn.state is ConnectionState.connected, what="reconnected")


@pytest_twisted.ensureDeferred
async def test_disconnect_timeout_exceeded_closes(server: SignalRServer, transport: str) -> None:
    """With the server gone for longer than DisconnectTimeout, the connection closes."""
    conn = HubConnection(reactor, server.url, reconnect_delay=0.5, transports=[transport])
    conn.hub("c3")
    await within(conn.start())
    closed = conn.when_closed()
    pending = conn.hub("c3").invoke("Slow", 5000)
    await server.stop()
    with pytest.raises(ConnectionClosed) as info:
        await within(closed, 15)
    assert "Couldn't reconnect within the configured timeout of 6 s" in str(info.value)
    assert conn.state is ConnectionState.disconnected
    with pytest.raises(ConnectionClosed):
        await within(pending)
    # Restart the server so the fixture's stop() has something to stop.
    await server.listen(port=0, interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_stop_sends_abort_and_leaves_no_delayed_calls(transport: str) -> None:
    """stop() makes the server see /abort; afterwards no timer of ours is left."""
    before = set(reactor.getDelayedCalls())
    server = SignalRServer(reactor, hubs=[C3Hub(interval=0.2)], keepalive=1.0)
    await server.listen(port=0, interface="127.0.0.1")
    conn = HubConnection(reactor, server.url, transports=[transport])
    conn.hub("c3")
    await within(conn.start())
    connection_id = conn.connection_id
    pending = conn.hub("c3").invoke("Slow", 5000)
    aborted = server.when_event("abort")
    closed = conn.when_closed()
    await within(conn.stop())
    info = await within(aborted)
    assert info["connection_id"] == connection_id
    assert info["transport"] == transport
    assert await within(closed) is None
    with pytest.raises(ConnectionClosed):
        await within(pending)
    disconnected = server.events("disconnected")
    assert any(e["connection_id"] == connection_id and e["stop_called"] for e in disconnected)
    await server.stop()
    await deferLater(reactor, 0, lambda: None)
    leftovers = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
    assert leftovers == []


@pytest.mark.parametrize(
    ("status", "body", "content_type", "text"),
    [
        (401, b"", None, "negotiate request failed"),
        (500, b"", None, "negotiate request failed"),
        (200, b"<html><body>Sign in</body></html>", "text/html", "not JSON"),
        (200, b'{"Url": "/signalr", "Conn', "application/json", "not JSON"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_negotiate_refused(
    server: SignalRServer, status: int, body: bytes, content_type: str | None, text: str
) -> None:
    """Refused or garbage negotiate answers give NegotiationError with status and body."""
    server.refuse_negotiate(status, body, content_type)
    conn = HubConnection(reactor, server.url)
    conn.hub("c3")
    with pytest.raises(NegotiationError, match=text) as info:
        await within(conn.start())
    assert info.value.status == status
    assert info.value.body == body
    assert conn.state is ConnectionState.disconnected
    await within(conn.stop())


@pytest_twisted.ensureDeferred
async def test_negotiate_connection_refused() -> None:
    """Nothing listening: NegotiationError naming the failure, no hang."""
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
    number = port.getHost().port
    await port.stopListening()
    conn = HubConnection(reactor, f"http://127.0.0.1:{number}/signalr")
    with pytest.raises(NegotiationError, match="ConnectionRefused"):
        await within(conn.start())
    await within(conn.stop())


@pytest_twisted.ensureDeferred
async def test_cookies_from_negotiate_reach_every_request(
    server: SignalRServer, conn: HubConnection
) -> None:
    """The negotiate cookie is replayed on /connect (or the upgrade) and /start."""
    conn.hub("c3")
    await within(conn.start())
    assert server.events("connect")[-1]["cookies"].get("affinity") == "srv1"
    assert server.events("start")[-1]["cookies"].get("affinity") == "srv1"


@pytest_twisted.ensureDeferred
async def test_invoke_timeout_on_unknown_hub(server: SignalRServer) -> None:
    """An invocation the server never answers (unknown hub) times out instead of hanging."""
    conn = HubConnection(reactor, server.url)
    conn.hub("c3")
    await within(conn.start())
    ghost = conn.hub("nosuchhub")
    with pytest.raises(TimeoutError):
        await within(ghost.invoke("Anything", timeout=0.5))
    await within(conn.stop())


@pytest_twisted.ensureDeferred
async def test_no_secrets_in_logs_even_at_debug_level() -> None:
    """With autobahn/txaio at debug level, tokens, cookies and Authorization stay hidden."""
    import txaio
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    txaio.set_global_log_level("debug")
    server = SignalRServer(
        reactor,
        hubs=[C3Hub(interval=0.1)],
        keepalive=1.0,
        negotiate_cookies={"affinity": "COOKIESECRET"},
    )
    try:
        await server.listen(port=0, interface="127.0.0.1")
        conn = HubConnection(
            reactor, server.url, reconnect_delay=0.05, headers={"Authorization": "Bearer TOPSECRET"}
        )
        c3 = conn.hub("c3")
        await within(conn.start())
        token = conn.negotiated.connection_token if conn.negotiated else "?"
        await within(c3.invoke("Subscribe", ["tick"]))
        server.drop_all_transports()
        await wait_until(lambda: conn.state is ConnectionState.reconnecting, what="drop")
        await wait_until(lambda: conn.state is ConnectionState.connected, what="reconnect")
        await within(conn.stop())
    finally:
        txaio.set_global_log_level("info")
        globalLogPublisher.removeObserver(events.append)
        await server.stop()
    text = "\n".join(formatEvent(e) + " " + repr(e) for e in events)
    assert len(events) > 5
    # The test server's access log is among them (so its redaction is checked too).
    assert "/signalr/start?clientProtocol=…" in text and "connectionToken=…" in text
    encoded = token.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    for secret in (token, encoded, "TOPSECRET", "COOKIESECRET"):
        assert secret not in text, secret


@pytest_twisted.ensureDeferred
async def test_ping(server: SignalRServer, conn: HubConnection) -> None:
    """ping() answers True for the server's pong, and the server sees /ping."""
    conn.hub("c3")
    await within(conn.start())
    assert await within(conn.ping()) is True
    assert server.events("ping") == [{}]


@pytest_twisted.ensureDeferred
async def test_reconnect_refused_after_server_restart_closes_at_once(
    server: SignalRServer, transport: str
) -> None:
    """A restarted server refuses the old token's /reconnect (400): closed at once."""
    conn = HubConnection(reactor, server.url, reconnect_delay=0.05, transports=[transport])
    conn.hub("c3")
    await within(conn.start())
    closed = conn.when_closed()
    port = server.port
    await server.stop()
    await server.listen(port=port, interface="127.0.0.1")
    with pytest.raises(ConnectionClosed) as info:
        await within(closed, 5)  # well inside the 6 s DisconnectTimeout
    assert "refused /reconnect with HTTP 400" in str(info.value)
    assert isinstance(info.value.cause, ConnectionClosed)
    assert info.value.cause.status == 400


# ------------------------------------------------------------------ fallback


async def _fallback_server(**options: Any) -> SignalRServer:
    s = SignalRServer(reactor, hubs=[C3Hub(interval=0.2)], keepalive=1.0, **options)
    await s.listen(port=0, interface="127.0.0.1")
    return s


@pytest_twisted.ensureDeferred
async def test_fallback_when_websockets_are_disabled_on_the_server() -> None:
    """TryWebSockets false: no upgrade is even tried, SSE carries the connection."""
    server = await _fallback_server(transports=("serverSentEvents", "longPolling"))
    conn = HubConnection(reactor, server.url)
    conn.hub("c3")
    try:
        await within(conn.start())
        assert conn.negotiated is not None and conn.negotiated.try_websockets is False
        assert conn.transport is Transport.server_sent_events
        assert [e["transport"] for e in server.events("connect")] == ["serverSentEvents"]
        assert await within(conn.hub("c3").invoke("Echo", "x")) == "x"
    finally:
        await within(conn.stop())
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_fallback_after_refusals_ends_on_long_polling() -> None:
    """Upgrade refused, then SSE refused: the same token connects over long polling."""
    server = await _fallback_server()
    server.refuse_transport("webSockets", 400, b"Not a valid web socket request.")
    server.refuse_transport("serverSentEvents", 500)
    conn = HubConnection(reactor, server.url)
    conn.hub("c3")
    try:
        await within(conn.start())
        assert conn.transport is Transport.long_polling
        refused = [e["transport"] for e in server.events("refused")]
        assert refused == ["webSockets", "serverSentEvents"]
        connects = server.events("connect")
        assert [e["transport"] for e in connects] == ["longPolling"]
        assert server.events("start")[-1]["query"]["transport"] == "longPolling"
        assert await within(conn.hub("c3").invoke("Echo", 7)) == 7
    finally:
        await within(conn.stop())
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_no_transport_works_gives_a_clear_error() -> None:
    """Every transport refused: NoTransportError names each and why; nothing is left."""
    before = set(reactor.getDelayedCalls())
    server = await _fallback_server()
    for name in ("webSockets", "serverSentEvents", "longPolling"):
        server.refuse_transport(name, 403)
    conn = HubConnection(reactor, server.url)
    conn.hub("c3")
    try:
        with pytest.raises(NoTransportError) as info:
            await within(conn.start())
        error = info.value
        assert isinstance(error, ConnectionClosed)
        assert [name for name, _ in error.attempts] == [
            "webSockets",
            "serverSentEvents",
            "longPolling",
        ]
        assert all("403" in why for _, why in error.attempts), error.attempts
        assert error.status == 403
        assert conn.state is ConnectionState.disconnected
    finally:
        await within(conn.stop())
        await server.stop()
    await deferLater(reactor, 0, lambda: None)
    leftovers = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
    assert leftovers == []


@pytest.mark.parametrize("transport", ["serverSentEvents", "longPolling"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_http_transports_keep_pending_invocations_across_a_drop(
    server: SignalRServer, conn: HubConnection
) -> None:
    """Over SSE and long polling a call in flight during a drop still gets its result."""
    c3 = conn.hub("c3")
    await within(conn.start())
    pending = c3.invoke("Slow", 300)
    await wait_until(lambda: server.events("received"), what="the call reached the server")
    server.drop_all_transports()
    await wait_until(lambda: conn.state is ConnectionState.reconnecting, what="reconnecting")
    assert await within(pending) == "slept 300 ms"
    await wait_until(lambda: conn.state is ConnectionState.connected, what="reconnected")


@pytest_twisted.ensureDeferred
async def test_oversized_message_is_a_clear_error(server: SignalRServer, transport: str) -> None:
    """A classic message over max_receive_size closes the connection with MessageTooLarge."""
    c = HubConnection(reactor, server.url, transports=[transport], max_receive_size=4096)
    c3 = c.hub("c3")
    await within(c.start())
    assert await within(c3.invoke("Echo", "x" * 1000)) == "x" * 1000
    if transport != "webSockets":
        # The result comes in the answer to its own /send: only that call fails.
        with pytest.raises(MessageTooLarge):
            await within(c3.invoke("Echo", "x" * 20_000))
        assert await within(c3.invoke("Echo", "small")) == "small"
        # A pushed message over the limit comes on the receive channel.
        server.send_to_all("c3", "bigPush", "x" * 20_000)
    else:
        with pytest.raises(ConnectionClosed):
            await within(c3.invoke("Echo", "x" * 20_000))
    with pytest.raises(ConnectionClosed) as closed:
        await within(c.when_closed())
    assert isinstance(closed.value.cause, MessageTooLarge), closed.value
    await within(c.stop())


@pytest_twisted.ensureDeferred
async def test_azure_style_redirect_is_followed(server: SignalRServer, transport: str) -> None:
    """A classic RedirectUrl/AccessToken answer: negotiate again there, with the bearer."""
    c = HubConnection(reactor, server.classic_redirect_url(), transports=[transport])
    c3 = c.hub("c3")
    await within(c.start())
    assert await within(c3.invoke("Echo", "via azure")) == "via azure"
    (token,) = server.classic_redirect_tokens
    negotiate = server.events("negotiate")[-1]
    assert negotiate["headers"]["authorization"] == f"Bearer {token}"
    assert negotiate["query"]["redirected"] == "1"
    connect = server.events("connect")[-1]
    assert connect["transport"] == transport
    assert token not in repr(c)
    await within(c.stop())

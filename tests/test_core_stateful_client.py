"""
Stateful reconnect and MessagePack end to end: HubConnection against the test server
over real loopback sockets, each scenario in both hub protocols.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from helpers import wait_until, within
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList

from txsignalr import ConnectionClosed, ConnectionState, HubConnection
from txsignalr.testing import EchoHub as DemoEchoHub
from txsignalr.testing import HubCall, SignalRServer

reactor: Any = _reactor

PROTOCOLS = pytest.mark.parametrize("hub_protocol", ["json", "messagepack"])


class FeedHub(DemoEchoHub):
    """Numbered calls both ways; the server records each invocation it ran."""

    name = "feed"

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[int] = []

    def Count(self, call: HubCall, n: int) -> int:
        self.ran.append(n)
        return n * 2


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[SignalRServer]:
    s = SignalRServer(
        reactor,
        hubs=[FeedHub()],
        core_stateful_reconnect=True,
        core_ack_interval=0.05,
        core_stateful_buffer_size=1_000_000,
    )
    await s.listen(port=0, interface="127.0.0.1")
    yield s
    await s.stop()


def feed_hub(server: SignalRServer) -> FeedHub:
    hub = next(h for h in server.hubs if isinstance(h, FeedHub))
    return hub


def connection(server: SignalRServer, hub_protocol: str, **kwargs: Any) -> HubConnection:
    return HubConnection(
        reactor,
        server.core_url("feed"),
        transports=["webSockets"],
        hub_protocol=hub_protocol,
        stateful_reconnect=True,
        **kwargs,
    )


@PROTOCOLS
@pytest_twisted.ensureDeferred
async def test_nothing_lost_or_repeated_through_ten_drops(
    server: SignalRServer, hub_protocol: str
) -> None:
    """
    10,000 numbered client-method calls server to client and 1,000 invocations client
    to server, through 10 forced drops of the WebSocket: every call arrives once, in
    order; every invocation runs once on the server and is answered once; the
    connection never leaves *connected* and keeps its id.
    """
    c = connection(server, hub_protocol)
    seen: list[int] = []
    c.on("receive", seen.append)
    states: list[ConnectionState] = []
    c.on_state_change(lambda old, new: states.append(new))
    await within(c.start())
    connection_id = c.connection_id
    results: list[Deferred[Any]] = []
    pushed = 0
    for round_ in range(10):
        for i in range(100):
            results.append(c.invoke("Count", round_ * 100 + i))
        start = pushed
        for _ in range(1_000):
            server.send_to_all("feed", "receive", pushed)
            pushed += 1
        # Drop in the middle of the stream, with invocations in flight (sent,
        # buffered or unacknowledged) and pushes still on their way.
        await wait_until(lambda s=start: len(seen) >= s + 300, what=f"round {round_} pushes")
        server.drop_all_transports()
        await wait_until(
            lambda r=round_: server.core_stateful_counts["resumes"] == r + 1,
            what=f"resume {round_ + 1}",
        )
    all_answered = DeferredList(results, consumeErrors=True)
    answered = await within(all_answered, 30)
    await wait_until(lambda: len(seen) == pushed, what="every push", seconds=30)
    assert seen == list(range(10_000))
    assert [ok for ok, _ in answered] == [True] * 1_000, [r for ok, r in answered if not ok][:3]
    assert [value for _, value in answered] == [n * 2 for n in range(1_000)]
    assert sorted(feed_hub(server).ran) == list(range(1_000))  # each ran once
    assert c.state is ConnectionState.connected
    assert ConnectionState.reconnecting not in states
    assert c.connection_id == connection_id
    counts = server.core_stateful_counts
    assert counts["resumes"] == 10
    assert counts["acks_sent"] > 0
    # The client acknowledges once a second: the server's buffer drains.
    await wait_until(lambda: server.core_stateful_counts["acks_received"] > 0, what="an Ack")
    await within(c.stop())


@PROTOCOLS
@pytest_twisted.ensureDeferred
async def test_refused_resume_falls_back_to_a_new_connection(
    server: SignalRServer, hub_protocol: str
) -> None:
    """When the server has forgotten the connection, the reconnect policy takes over:
    pending calls fail, then a new connection (new id) is made."""
    c = connection(server, hub_protocol, reconnect_delay=[0, 0.1])
    reconnected: list[bool] = []
    c.on_reconnected(lambda: reconnected.append(True))
    await within(c.start())
    old_id = c.connection_id
    assert old_id is not None
    pending = c.stream("Counter", 1_000_000, 50).each(lambda _: None)
    server.refuse_transport("webSockets", 404)  # the resume is answered 404
    server.drop_all_transports()
    server.expire_core_connection(old_id)
    await wait_until(lambda: c.state is ConnectionState.reconnecting, what="reconnecting")
    server.refuse_transport("webSockets", None)
    with pytest.raises(ConnectionClosed):
        await within(pending)
    await wait_until(lambda: bool(reconnected), what="the new connection")
    assert c.connection_id != old_id
    assert await within(c.invoke("Count", 7)) == 14
    await within(c.stop())


@PROTOCOLS
@pytest_twisted.ensureDeferred
async def test_back_pressure_against_a_slow_acker(hub_protocol: str) -> None:
    """A small client buffer and a server that acks slowly: sends wait for room, go out
    in order, and the server runs each once."""
    server = SignalRServer(
        reactor, hubs=[FeedHub()], core_stateful_reconnect=True, core_ack_interval=0.2
    )
    await server.listen(port=0, interface="127.0.0.1")
    try:
        c = connection(server, hub_protocol, stateful_buffer_size=200)
        await within(c.start())
        sends = [c.send("Count", n) for n in range(50)]
        assert not all(d.called for d in sends)  # the buffer filled up
        await within(DeferredList(sends, fireOnOneErrback=True), 30)
        await wait_until(lambda: len(feed_hub(server).ran) == 50, what="every send")
        assert feed_hub(server).ran == list(range(50))
        await within(c.stop())
    finally:
        await server.stop()


@PROTOCOLS
@pytest_twisted.ensureDeferred
async def test_a_replay_larger_than_max_receive_size_does_not_close_the_connection(
    hub_protocol: str,
) -> None:
    """
    max_receive_size bounds each hub message; a WebSocket message may carry several,
    as the replay after a resume does (Sequence and every unacknowledged message in
    one write): 20 KB of 1 KB pushes under an 8 KiB limit resume, not close.
    """
    server = SignalRServer(reactor, hubs=[DemoEchoHub()], core_stateful_reconnect=True)
    await server.listen(port=0, interface="127.0.0.1")
    try:
        c = HubConnection(
            reactor,
            server.core_url("echo"),
            transports=["webSockets"],
            hub_protocol=hub_protocol,
            stateful_reconnect=True,
            max_receive_size=8192,
        )
        seen: list[int] = []
        c.on("push", lambda n, pad: seen.append(n))
        await within(c.start())
        for n in range(20):
            server.send_to_all("echo", "push", n, "x" * 1000)
        await wait_until(lambda: len(seen) == 20, what="the pushes")
        server.drop_all_transports()  # before the client's Ack (1 s) went out
        await wait_until(lambda: server.core_stateful_counts["resumes"] == 1, what="resume")
        await wait_until(
            lambda: (
                c.state is not ConnectionState.connected
                or server.core_stateful_counts["acks_received"] > 0
            ),
            what="the client to ack the replay, or to close",
        )
        assert c.state is ConnectionState.connected, c.when_closed().result
        assert seen == list(range(20))
        await within(c.stop())
    finally:
        await server.stop()

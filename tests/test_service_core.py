"""
:mod:`txsignalr.service` on ASP.NET Core: the protocol and access-token settings, hub-less
subscriptions and handlers, and re-subscribing after a Core reconnect.

The unit tests drive an in-memory fake under :class:`~twisted.internet.task.Clock`; the
integration tests at the end run the real client against the test server's Core side on
127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from helpers import wait_until, within
from test_service import FakeConnection, FakeInvocation, messages, no_jitter, retry_delays
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from txsignalr import ConnectionClosed, HubConnection, InvalidStateError, NegotiationError
from txsignalr.service import (
    ClientCall,
    ConnectionSettings,
    GaveUpError,
    Handler,
    MissingAccessToken,
    Subscription,
    SubscriptionService,
    core_hub_name,
)

CORE_URL = "http://127.0.0.1:1/hubs/c3"
SUBSCRIBE = Subscription(None, "Subscribe", (["tick"],))


# ------------------------------------------------------------------ the fake


class FakeCoreConnection(FakeConnection):
    """A Core connection: no hub proxies; on/on_any/invoke on the connection itself."""

    def __init__(self, family: str = "core") -> None:
        super().__init__()
        self.family = family
        self.own = self.hub("(own)")  # the connection's own hub, as HubConnection has
        self.hub_calls: list[str] = []

    @property
    def protocol(self) -> str | None:
        return self.family if self.starting is not None and self.starting.called else None

    def hub(self, name: str) -> Any:
        if name != "(own)":
            self.hub_calls.append(name)
        return super().hub(name)

    def on(self, method: str, callback: Callable[..., object]) -> Any:
        return self.own.on(method, callback)

    def on_any(self, callback: Callable[..., object]) -> Any:
        return self.own.on_any(callback)

    def invoke(self, method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        return self.own.invoke(method, *args, timeout=timeout)

    # driving it
    def reconnecting(self, reason: str = "transport lost") -> None:
        for callback in self.reconnecting_callbacks:
            callback(ConnectionClosed(reason))

    def reconnected(self) -> None:
        for callback in self.reconnected_callbacks:
            callback()


class CoreFactory:
    def __init__(self, family: str = "core") -> None:
        self.family = family
        self.connections: list[FakeCoreConnection] = []

    def __call__(self, reactor: object) -> FakeCoreConnection:
        connection = FakeCoreConnection(self.family)
        self.connections.append(connection)
        return connection

    @property
    def last(self) -> FakeCoreConnection:
        return self.connections[-1]


def make(
    subscriptions: tuple[Subscription, ...] = (SUBSCRIBE,),
    handlers: tuple[Handler, ...] = (),
    protocol: str = "core",
    family: str = "core",
    url: str = CORE_URL,
    **kwargs: Any,
) -> tuple[SubscriptionService, Clock, CoreFactory]:
    clock, factory = Clock(), CoreFactory(family)
    kwargs.setdefault("retry_policy", backoffPolicy(jitter=no_jitter))
    service = SubscriptionService(
        clock,
        ConnectionSettings(url, protocol=protocol),
        subscriptions,
        handlers,
        connection_factory=factory,
        **kwargs,
    )
    return service, clock, factory


def invoked(conn: FakeCoreConnection) -> list[tuple[str, str, tuple[Any, ...]]]:
    return [(i.hub, i.method, i.args) for i in conn.invocations]


# ------------------------------------------------------------------ settings


def test_core_hub_name_is_the_last_path_segment() -> None:
    """The Core URL's hub: the end of its path, whatever the query or a trailing slash."""
    assert core_hub_name("https://host/hubs/c3") == "c3"
    assert core_hub_name("https://host/hubs/Chat/?x=1") == "Chat"
    assert core_hub_name("https://host/a%20b") == "a b"
    assert core_hub_name("https://host/") == "hub"


def test_protocol_is_passed_to_the_hub_connection() -> None:
    """protocol is a HubConnection argument; auto by default; any case; checked."""
    assert ConnectionSettings(CORE_URL).protocol == "auto"
    settings = ConnectionSettings(CORE_URL, protocol="Core")
    assert settings.protocol == "core"
    assert settings.connection_arguments()["protocol"] == "core"
    connection = settings.connect(Clock())
    assert isinstance(connection, HubConnection)
    assert connection.protocol == "core"  # fixed, not auto-detected
    connection.stop()
    with pytest.raises(ValueError, match="protocol must be one of auto, classic, core"):
        ConnectionSettings(CORE_URL, protocol="signalr")


def test_access_token_is_read_from_the_environment_each_time(monkeypatch: Any) -> None:
    """access_token_env names a variable read on every call (rotation is picked up);
    the factory given to HubConnection is that reader; the repr names only the variable."""
    monkeypatch.setenv("TXS_TOKEN", "first-token")
    settings = ConnectionSettings(CORE_URL, access_token_env="TXS_TOKEN")
    factory = settings.connection_arguments()["access_token_factory"]
    assert factory() == "first-token"
    monkeypatch.setenv("TXS_TOKEN", "second-token")
    assert factory() == "second-token"
    assert "TXS_TOKEN" in repr(settings)
    assert "token'" not in repr(settings) and "second" not in repr(settings)
    # both are kept out of logs, the rotated one too
    assert {"first-token", "second-token"} <= set(settings.secret_values())


@pytest.mark.parametrize("protocol", ["classic", "auto", "core"])
def test_the_token_is_also_a_header_for_classic(monkeypatch: Any, protocol: str) -> None:
    """A classic connection never calls an access_token_factory (protocol classic, or
    auto with hub proxies): the token is also in the headers, read when the connection
    is made (Core replaces that header before each negotiate)."""
    monkeypatch.setenv("TXS_TOKEN", "classic-token")
    settings = ConnectionSettings(
        CORE_URL, protocol=protocol, headers={"X": "y"}, access_token_env="TXS_TOKEN"
    )
    arguments = settings.connection_arguments()
    assert arguments["headers"] == {"X": "y", "Authorization": "Bearer classic-token"}
    assert arguments["access_token_factory"]() == "classic-token"
    assert dict(settings.headers) == {"X": "y"}


@pytest.mark.parametrize("value", [None, "", "  "])
def test_missing_access_token_is_a_configuration_error(monkeypatch: Any, value: Any) -> None:
    """An unset or empty variable: connect() raises MissingAccessToken (a ValueError),
    so the service gives up at once, saying which variable."""
    if value is None:
        monkeypatch.delenv("TXS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("TXS_TOKEN", value)
    settings = ConnectionSettings(CORE_URL, protocol="core", access_token_env="TXS_TOKEN")
    with pytest.raises(MissingAccessToken, match="environment variable TXS_TOKEN"):
        settings.connect(Clock())
    gave_up: list[GaveUpError] = []
    service = SubscriptionService(Clock(), settings, [SUBSCRIBE], on_gave_up=gave_up.append)
    with capturedLogs() as events:
        service.startService()
    assert len(gave_up) == 1 and "TXS_TOKEN" in str(gave_up[0])
    assert any("configuration error" in m for m in messages(events))


def test_access_token_env_must_be_a_name() -> None:
    """A value that is no variable name (the token itself, say) is refused, unrepeated."""
    with pytest.raises(ValueError, match="not the token itself") as info:
        ConnectionSettings(CORE_URL, access_token_env="eyJhbGciOi.x.y")
    assert "eyJ" not in str(info.value)


def test_access_token_env_and_an_authorization_header_conflict() -> None:
    """Both would set Authorization."""
    with pytest.raises(ValueError, match="cannot be combined"):
        ConnectionSettings(CORE_URL, headers={"authorization": "x"}, access_token_env="T")


def test_the_token_stays_out_of_the_logs(monkeypatch: Any) -> None:
    """A server error echoing the token (plain, or as it was before a rotation) is
    logged redacted, GaveUpError included."""
    monkeypatch.setenv("TXS_TOKEN", "old-secret-token")
    settings = ConnectionSettings(CORE_URL, protocol="core", access_token_env="TXS_TOKEN")
    clock, factory = Clock(), CoreFactory()
    settings.access_token()  # handed out once, then rotated
    monkeypatch.setenv("TXS_TOKEN", "new-secret-token")
    service = SubscriptionService(
        clock, settings, [SUBSCRIBE], connection_factory=factory, max_attempts=2,
        retry_policy=backoffPolicy(jitter=no_jitter),
    )  # fmt: skip
    with capturedLogs() as events:
        service.startService()
        factory.last.fail_start(ConnectionClosed("401 for old-secret-token"))
        clock.advance(1)
        factory.last.fail_start(ConnectionClosed("401 for Bearer new-secret-token"))
    text = "\n".join(messages(events)) + repr(events) + repr(settings)
    assert "gave up" in text
    assert "secret-token" not in text
    assert text.count("<redacted>") >= 2


# ------------------------------------------------------------------ which family


def test_classic_needs_a_hub_everywhere() -> None:
    """Hub-less subscriptions or handlers cannot work on classic."""
    with pytest.raises(ValueError, match="'Subscribe' names no hub"):
        make(protocol="classic")
    with pytest.raises(ValueError, match="handler for 'tick' names no hub"):
        make((), (Handler(None, "tick", print),), protocol="classic")


def test_auto_with_a_hub_named_is_classic_so_all_must_name_one() -> None:
    """With protocol auto, a named hub means classic: hub-less entries are then refused."""
    with pytest.raises(ValueError, match="protocol 'auto' connects as classic"):
        make((SUBSCRIBE, Subscription("c3", "Other")), protocol="auto")


def test_core_refuses_another_hub_than_the_urls() -> None:
    """On Core the URL names the hub: a subscription naming another one is refused."""
    with pytest.raises(ValueError, match="hub 'chat' is another: leave the hub out"):
        make((Subscription("chat", "Send"),))


def test_core_subscribes_and_handles_calls_on_the_connection() -> None:
    """Core: no hub proxies; subscriptions are invoked on the connection, handlers
    registered on it, and calls reported with the URL's hub name. A hub name that
    is the URL's (any case) is accepted."""
    calls: list[ClientCall] = []
    subs = (SUBSCRIBE, Subscription("C3", "Subscribe", (["heartbeat"],)))
    handlers = (Handler(None, "tick", calls.append), Handler("c3", None, calls.append))
    service, _clock, factory = make(subs, handlers, invoke_timeout=4.0)
    service.startService()
    conn = factory.last
    conn.connect()
    assert conn.hub_calls == []
    assert invoked(conn) == [
        ("(own)", "Subscribe", (["tick"],)),
        ("(own)", "Subscribe", (["heartbeat"],)),
    ]
    assert [i.timeout for i in conn.invocations] == [4.0, 4.0]
    conn.answer(0)
    conn.answer(1)
    assert service.subscribed
    conn.own.call("tick", {"Seq": 1})
    assert calls == [
        ClientCall("c3", "tick", ({"Seq": 1},)),
        ClientCall("c3", "tick", ({"Seq": 1},)),
    ]


def test_auto_without_hubs_works_on_core() -> None:
    """protocol auto with nothing naming a hub: the connection itself is used, and a
    Core server is fine."""
    service, _clock, factory = make(protocol="auto")
    service.startService()
    factory.last.connect()
    assert invoked(factory.last) == [("(own)", "Subscribe", (["tick"],))]
    factory.last.answer(0)
    assert service.subscribed


def test_auto_without_hubs_on_a_classic_server_gives_up_clearly() -> None:
    """A hub-less subscription against a classic server: a configuration error, given
    up at once (no retrying), saying what to do."""
    gave_up: list[GaveUpError] = []
    service, clock, factory = make(protocol="auto", family="classic", on_gave_up=gave_up.append)
    with capturedLogs() as events:
        service.startService()
        factory.last.connect()
    assert factory.last.invocations == []
    assert factory.last.stopped
    [error] = gave_up
    assert isinstance(error.reason.value, InvalidStateError)
    assert "is a classic ASP.NET SignalR server" in str(error)
    assert "subscription 'Subscribe' names none: give the hub (HUB.METHOD)" in str(error)
    assert clock.getDelayedCalls() == []
    assert any("not retrying, as this is a configuration error" in m for m in messages(events))


def test_auto_going_classic_hints_at_core_when_negotiate_fails() -> None:
    """protocol auto with a hub named connects as classic; a failed negotiate (a Core
    URL answers 405) logs, once, that protocol 'core' may be meant."""
    service, clock, factory = make((Subscription("c3", "Subscribe"),), protocol="auto")
    with capturedLogs() as events:
        service.startService()
        for _ in range(2):
            factory.last.fail_start(NegotiationError("negotiate answered 405"))
            clock.advance(60)
    hints = [m for m in messages(events) if "use protocol 'core'" in m]
    assert hints == [
        "hubs are named (c3), so protocol 'auto' connects as classic ASP.NET SignalR; if "
        "http://127.0.0.1:1/hubs/c3 is an ASP.NET Core hub, use protocol 'core' (or leave "
        "the hub out)"
    ]
    assert len(factory.connections) == 3  # still retried


# ------------------------------------------------------------------ reconnects


def test_core_reconnect_subscribes_again() -> None:
    """After a Core reconnect (a new server-side connection) every subscription is
    invoked again; meanwhile the service is not subscribed; then 'resubscribed'."""
    second = Subscription(None, "Authenticate", ("key",))
    service, clock, factory = make((SUBSCRIBE, second))
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    conn.answer(1)
    assert service.subscribed
    with capturedLogs() as events:
        conn.reconnecting()
        assert not service.subscribed
        waiter = service.when_subscribed()
        assert not waiter.called
        assert len(conn.invocations) == 2  # nothing while reconnecting
        conn.reconnected()
        assert [i.method for i in conn.invocations[2:]] == ["Subscribe", "Authenticate"]
        conn.answer(2)
        assert not waiter.called
        conn.answer(3)
    assert waiter.called and service.subscribed
    assert len(factory.connections) == 1  # the same HubConnection, reconnected
    text = "\n".join(messages(events))
    assert "subscribing again" in text
    assert "resubscribed 2 subscriptions" in text
    assert clock.getDelayedCalls() == []


def test_core_invocations_cut_by_the_reconnect_are_no_failed_attempts() -> None:
    """A subscription still pending when the Core connection reconnects fails with
    ConnectionClosed: not a failed attempt (max_attempts=1 does not give up), not
    retried on a timer; the reconnect invokes it again."""
    service, clock, factory = make(max_attempts=1)
    service.startService()
    conn = factory.last
    conn.connect()
    conn.refuse(0, ConnectionClosed("Invocation canceled due to the underlying connection"))
    conn.reconnecting()
    assert service.running and clock.getDelayedCalls() == []
    conn.reconnected()
    assert [i.method for i in conn.invocations] == ["Subscribe", "Subscribe"]
    conn.answer(1)
    assert service.subscribed


def test_core_failed_retry_timers_are_dropped_by_a_reconnect() -> None:
    """A retry scheduled for a failed subscription is cancelled by the reconnect,
    which invokes everything again itself."""
    service, clock, factory = make()
    service.startService()
    conn = factory.last
    conn.connect()
    conn.refuse(0, RuntimeError("not yet"))
    assert retry_delays(clock) == [1.0]
    conn.reconnecting()
    assert clock.getDelayedCalls() == []
    conn.reconnected()
    assert len(conn.invocations) == 2


def test_core_connection_lost_while_resubscribing_is_not_a_failed_attempt() -> None:
    """A subscribed Core connection that reconnects and is then lost for good before
    re-subscribing is still a healthy connection lost: reconnect after policy(0)."""
    service, clock, factory = make(max_attempts=1)
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    conn.reconnecting()
    conn.lose("reconnecting gave up")
    assert service.running
    assert retry_delays(clock) == [1.0]
    clock.advance(1)
    assert len(factory.connections) == 2


def test_classic_reconnect_invokes_nothing_again() -> None:
    """Classic keeps the groups across a reconnect: nothing is invoked again."""
    service, _clock, factory = make((Subscription("c3", "Subscribe"),), protocol="classic")
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    conn.reconnecting()
    assert service.subscribed
    conn.reconnected()
    assert len(conn.invocations) == 1
    assert set(conn.hub_calls) == {"c3"}  # classic: through the hub proxy


def test_core_stale_feed_watch_on_the_connection() -> None:
    """A Core subscription's watchdog watches calls on the connection itself."""
    sub = Subscription(None, "Subscribe", (["tick"],), stale_after=5.0, watch=("tick",))
    service, clock, factory = make((sub,))
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    clock.advance(4)
    conn.own.call("tick", 1)
    clock.advance(4)
    assert service.connection is conn
    with capturedLogs() as events:
        clock.advance(1.5)
    assert service.connection is None
    assert any(m.startswith("stale feed: no tick call on c3") for m in messages(events))


def test_core_failure_result_names_the_urls_hub() -> None:
    """A result reporting failure is retried; the error names the Core URL's hub."""
    service, clock, factory = make()
    service.startService()
    factory.last.connect()
    with capturedLogs() as events:
        factory.last.answer(0, {"Success": False})
    assert "c3.Subscribe returned a failure: {'Success': False}" in messages(events)[0]
    assert retry_delays(clock) == [1.0]
    assert SUBSCRIBE.describe() == "Subscribe" and SUBSCRIBE.describe("c3") == "c3.Subscribe"


def test_core_invocation_raising_synchronously_is_retried() -> None:
    """invoke raising at once on Core is a failure, retried like on classic."""
    service, clock, factory = make()
    service.startService()
    conn = factory.last

    def invoke(method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        conn.invocations.append(FakeInvocation("(own)", method, args, timeout))
        raise TypeError("not JSON serialisable")

    conn.invoke = invoke  # type: ignore[method-assign]
    conn.connect()
    assert retry_delays(clock) == [1.0]


# ================================================================== integration


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def make_server(**kwargs: Any) -> Any:
    from txsignalr.testing import C3Hub, SignalRServer

    return SignalRServer(_reactor(), hubs=[C3Hub(interval=0.05)], **kwargs)


def core_service(
    settings: ConnectionSettings, subscriptions: list[Subscription], handlers: list[Handler]
) -> SubscriptionService:
    """The service on its default connection factory (the settings), fast policies."""
    return SubscriptionService(
        _reactor(), settings, subscriptions, handlers,
        retry_policy=backoffPolicy(initialDelay=0.1, maxDelay=0.5, jitter=no_jitter),
    )  # fmt: skip


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("transport", ["webSockets", "serverSentEvents", "longPolling"])
async def test_core_subscription_resumes_after_dropped_transports(transport: str) -> None:
    """A hub-less subscription on the Core URL gets the feed; drop_all_transports()
    (the Core connection ends; the client reconnects as a new one, without groups):
    the service subscribes again and the numbered ticks resume."""
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    seqs: list[int] = []
    calls: list[ClientCall] = []

    def tick(call: ClientCall) -> None:
        calls.append(call)
        seqs.append(call.args[0]["Seq"])

    settings = ConnectionSettings(server.core_url("c3"), protocol="core", transports=[transport])
    service = core_service(settings, [SUBSCRIBE], [Handler(None, "tick", tick)])
    with capturedLogs() as events:
        try:
            service.startService()
            first = await within(service.when_subscribed())
            first_id = first.connection_id
            await wait_until(lambda: len(seqs) >= 3, "ticks before the drop")
            server.drop_all_transports()
            await wait_until(
                lambda: first.connection_id != first_id and service.subscribed,
                "resubscribed on the reconnected connection",
            )
            before = len(seqs)
            await wait_until(lambda: len(seqs) >= before + 3, "ticks after the drop")
            assert service.connection is first  # reconnected, not replaced
        finally:
            await within(service.stopService())
            await server.stop()
    assert {c.hub for c in calls} == {"c3"}
    text = "\n".join(messages(events))
    assert "resubscribed 1 subscriptions" in text
    subscribes = [e for e in server.events("invoke") if e.get("target") == "Subscribe"]
    assert len({e["connection_id"] for e in subscribes}) == 2


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("hub_protocol", ["json", "messagepack"])
async def test_stateful_subscription_loses_no_tick_through_drops(hub_protocol: str) -> None:
    """With stateful reconnect the dropped WebSockets are replaced under the service:
    the same connection, no new subscription, and the numbered ticks have no gap."""
    server = make_server(core_stateful_reconnect=True, core_ack_interval=0.05)
    await server.listen(port=0, interface="127.0.0.1")
    seqs: list[int] = []
    settings = ConnectionSettings(
        server.core_url("c3"),
        protocol="core",
        transports=["webSockets"],
        hub_protocol=hub_protocol,
        stateful_reconnect=True,
    )
    service = core_service(
        settings, [SUBSCRIBE], [Handler(None, "tick", lambda c: seqs.append(c.args[0]["Seq"]))]
    )
    try:
        service.startService()
        connection = await within(service.when_subscribed())
        first_id = connection.connection_id
        for drop in range(4):
            seen = len(seqs)
            await wait_until(lambda n=seen: len(seqs) >= n + 3, f"ticks after {drop} drop(s)")
            if drop < 3:
                server.drop_all_transports()
        assert server.core_stateful_counts["resumes"] == 3
        assert service.connection is connection and connection.connection_id == first_id
    finally:
        await within(service.stopService())
        await server.stop()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
    subscribes = [e for e in server.events("invoke") if e.get("target") == "Subscribe"]
    assert len(subscribes) == 1


@pytest_twisted.ensureDeferred
async def test_auto_detects_core_for_hubless_subscriptions() -> None:
    """protocol auto, nothing naming a hub, on a Core URL: Core, subscribed."""
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    seqs: list[int] = []
    settings = ConnectionSettings(server.core_url("c3"))
    service = core_service(
        settings, [SUBSCRIBE], [Handler(None, "tick", lambda c: seqs.append(c.args[0]["Seq"]))]
    )
    try:
        service.startService()
        connection = await within(service.when_subscribed())
        assert connection.protocol == "core"
        await wait_until(lambda: len(seqs) >= 2, "ticks")
    finally:
        await within(service.stopService())
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_hubless_subscription_on_a_classic_server_gives_up() -> None:
    """protocol auto, hub-less, on the classic URL: the service gives up with a
    clear error instead of retrying for ever."""
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    gave_up: list[GaveUpError] = []
    service = SubscriptionService(
        _reactor(), ConnectionSettings(server.url), [SUBSCRIBE], on_gave_up=gave_up.append
    )
    try:
        service.startService()
        await wait_until(lambda: bool(gave_up), "giving up")
    finally:
        await within(service.stopService())
        await server.stop()
    assert "is a classic ASP.NET SignalR server" in str(gave_up[0])


@pytest_twisted.ensureDeferred
async def test_access_token_from_the_environment_and_rotated(monkeypatch: Any) -> None:
    """core_access_token on the server, the token in an environment variable: the
    service connects; the token rotates (server and variable) and, after a drop,
    the reconnect negotiates with the new one. Neither token is ever logged."""
    server = make_server()
    server.core_access_token = "first-secret-token"
    await server.listen(port=0, interface="127.0.0.1")
    monkeypatch.setenv("TXS_TEST_TOKEN", "first-secret-token")
    seqs: list[int] = []
    settings = ConnectionSettings(
        server.core_url("c3"), protocol="core", access_token_env="TXS_TEST_TOKEN"
    )
    service = core_service(
        settings, [SUBSCRIBE], [Handler(None, "tick", lambda c: seqs.append(c.args[0]["Seq"]))]
    )
    with capturedLogs() as events:
        try:
            service.startService()
            connection = await within(service.when_subscribed())
            first_id = connection.connection_id
            server.core_access_token = "second-secret-token"
            monkeypatch.setenv("TXS_TEST_TOKEN", "second-secret-token")
            server.drop_all_transports()
            await wait_until(
                lambda: connection.connection_id != first_id and service.subscribed,
                "resubscribed on the reconnected connection",
            )
            before = len(seqs)
            await wait_until(lambda: len(seqs) >= before + 2, "ticks with the new token")
        finally:
            await within(service.stopService())
            await server.stop()
    assert server.events("unauthorized") == []
    text = "\n".join(messages(events)) + repr(events)
    assert "resubscribed" in text
    assert "secret-token" not in text


@pytest_twisted.ensureDeferred
async def test_wrong_access_token_is_reported_redacted(monkeypatch: Any) -> None:
    """A token the server refuses (401): the failed attempts are logged, the token not."""
    server = make_server()
    server.core_access_token = "right-token"
    await server.listen(port=0, interface="127.0.0.1")
    monkeypatch.setenv("TXS_TEST_TOKEN", "wrong-secret-token")
    settings = ConnectionSettings(
        server.core_url("c3"), protocol="core", access_token_env="TXS_TEST_TOKEN"
    )
    gave_up: list[GaveUpError] = []
    service = SubscriptionService(
        _reactor(), settings, [SUBSCRIBE], max_attempts=2, on_gave_up=gave_up.append,
        retry_policy=backoffPolicy(initialDelay=0.05, jitter=no_jitter),
    )  # fmt: skip
    with capturedLogs() as events:
        try:
            service.startService()
            await wait_until(lambda: bool(gave_up), "giving up")
        finally:
            await within(service.stopService())
            await server.stop()
    assert len(server.events("unauthorized")) >= 2
    text = "\n".join(messages(events)) + repr(events)
    assert "401" in text
    assert "wrong-secret-token" not in text


def test_core_reconnect_keeps_feeding_the_stale_watchdog() -> None:
    """After a Core reconnect and re-subscribe, a live feed still resets its watchdog."""
    sub = Subscription(None, "Subscribe", (["tick"],), stale_after=5.0, watch=("tick",))
    service, clock, factory = make((sub,))
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    conn.reconnecting()
    conn.reconnected()
    conn.answer(1)
    assert service.subscribed
    for _ in range(8):  # one tick a second for longer than stale_after
        clock.advance(1)
        conn.own.call("tick", 1)
    assert service.connection is conn
    assert len(factory.connections) == 1


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("transport", ["webSockets", "serverSentEvents", "longPolling"])
async def test_core_server_restart_resubscribes_within_the_backoff(transport: str) -> None:
    """The Core server is killed and restarted on the same port, refusing negotiates
    for a while: the service renegotiates (the reconnect policy, then its own retry
    backoff), subscribes again and the numbered ticks resume, in order, none twice."""
    server = make_server()
    port = await server.listen(port=0, interface="127.0.0.1")
    seqs: list[int] = []
    settings = ConnectionSettings(server.core_url("c3"), protocol="core", transports=[transport])
    service = core_service(
        settings, [SUBSCRIBE], [Handler(None, "tick", lambda c: seqs.append(c.args[0]["Seq"]))]
    )
    with capturedLogs() as events:
        try:
            service.startService()
            await within(service.when_subscribed())
            await wait_until(lambda: len(seqs) >= 3, "ticks before the restart")
            await server.stop()
            before = max(seqs)
            server.refuse_negotiate(503, b"restarting")
            await server.listen(port=port, interface="127.0.0.1")
            await wait_until(lambda: len(server.events("negotiate")) >= 2, "a refused negotiate")
            assert not service.subscribed
            server.refuse_negotiate(None)
            await within(service.when_subscribed(), seconds=30)
            await wait_until(lambda: max(seqs) >= before + 3, "ticks after the restart")
        finally:
            await within(service.stopService())
            await server.stop()
    text = "\n".join(messages(events))
    assert "503" in text  # the refused negotiates were reported
    assert "resubscribed 1 subscriptions" in text, text
    after = [s for s in seqs if s > before]
    assert after == sorted(set(after))

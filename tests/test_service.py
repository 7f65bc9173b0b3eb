"""
Unit tests for :mod:`txsignalr.service` under :class:`twisted.internet.task.Clock`.

The connection is a small in-memory fake (``FakeConnection``) built by an injected
``connection_factory``; the integration tests at the end of this module use the real
client against the real test server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from helpers import wait_until, within
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure

from txsignalr import ConnectionClosed, HubConnection, HubError, NegotiationError, Transport
from txsignalr.errors import InvalidURL
from txsignalr.service import (
    ClientCall,
    ConnectionSettings,
    GaveUpError,
    Handler,
    Subscription,
    SubscriptionError,
    SubscriptionService,
    redact,
    reports_success,
)

URL = "http://127.0.0.1:1/signalr"
SUBSCRIBE = Subscription("c3", "Subscribe", (["tick"],))


# ------------------------------------------------------------------ the fake


class FakeInvocation:
    def __init__(self, hub: str, method: str, args: tuple[Any, ...], timeout: float | None):
        self.hub, self.method, self.args, self.timeout = hub, method, args, timeout
        self.deferred: Deferred[Any] = Deferred()


class FakeProxy:
    def __init__(self, connection: FakeConnection, name: str) -> None:
        self.connection = connection
        self.name = name
        self.handlers: dict[str, list[Callable[..., object]]] = {}
        self.catch_all: list[Callable[..., object]] = []

    def on(self, method: str, callback: Callable[..., object]) -> Callable[[], None]:
        self.handlers.setdefault(method.lower(), []).append(callback)
        return lambda: None

    def on_any(self, callback: Callable[..., object]) -> None:
        self.catch_all.append(callback)

    def invoke(self, method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        invocation = FakeInvocation(self.name, method, args, timeout)
        self.connection.invocations.append(invocation)
        return invocation.deferred

    def call(self, method: str, *args: Any) -> None:
        """The server calls client method ``method``."""
        for handler in self.handlers.get(method.lower(), []):
            handler(*args)
        for handler in self.catch_all:
            handler(method, *args)


class FakeConnection:
    def __init__(self) -> None:
        self.proxies: dict[str, FakeProxy] = {}
        self.invocations: list[FakeInvocation] = []
        self.starting: Deferred[None] | None = None
        self.stopped = False
        self.closed_waiters: list[Deferred[None]] = []
        self.reconnecting_callbacks: list[Callable[[ConnectionClosed], object]] = []
        self.reconnected_callbacks: list[Callable[[], object]] = []

    def hub(self, name: str) -> FakeProxy:
        return self.proxies.setdefault(name.lower(), FakeProxy(self, name))

    def start(self) -> Deferred[None]:
        self.starting = Deferred()
        return self.starting

    def stop(self) -> Deferred[None]:
        self.stopped = True
        if self.starting is not None and not self.starting.called:
            self.starting.errback(ConnectionClosed("stopped"))
        waiters, self.closed_waiters = self.closed_waiters, []
        for d in waiters:
            d.callback(None)
        return succeed(None)

    def when_closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.closed_waiters.append(d)
        return d

    def on_reconnecting(self, callback: Callable[[ConnectionClosed], object]) -> None:
        self.reconnecting_callbacks.append(callback)

    def on_reconnected(self, callback: Callable[[], object]) -> None:
        self.reconnected_callbacks.append(callback)

    # driving it
    def connect(self) -> None:
        assert self.starting is not None
        self.starting.callback(None)

    def fail_start(self, error: Exception) -> None:
        assert self.starting is not None
        self.starting.errback(error)

    def lose(self, reason: str = "lost for good") -> None:
        waiters, self.closed_waiters = self.closed_waiters, []
        for d in waiters:
            d.errback(ConnectionClosed(reason))

    def answer(self, index: int, result: Any = None) -> None:
        self.invocations[index].deferred.callback(result)

    def refuse(self, index: int, error: Exception) -> None:
        self.invocations[index].deferred.errback(error)


class Factory:
    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []

    def __call__(self, reactor: object) -> FakeConnection:
        connection = FakeConnection()
        self.connections.append(connection)
        return connection

    @property
    def last(self) -> FakeConnection:
        return self.connections[-1]


def no_jitter() -> float:
    return 0.0


def make(
    subscriptions: tuple[Subscription, ...] = (SUBSCRIBE,),
    handlers: tuple[Handler, ...] = (),
    **kwargs: Any,
) -> tuple[SubscriptionService, Clock, Factory]:
    clock = Clock()
    factory = Factory()
    kwargs.setdefault("retry_policy", backoffPolicy(jitter=no_jitter))
    service = SubscriptionService(
        clock,
        ConnectionSettings(URL),
        subscriptions,
        handlers,
        connection_factory=factory,
        **kwargs,
    )
    return service, clock, factory


def retry_delays(clock: Clock) -> list[float]:
    return [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()]


def messages(events: list[LogEvent] | Any) -> list[str]:
    return [formatEvent(event) for event in events]


@pytest.fixture
def logs() -> Iterator[list[LogEvent]]:
    with capturedLogs() as events:
        yield events  # type: ignore[misc]


# ------------------------------------------------------------------ connecting


def test_start_connects_and_subscribes() -> None:
    """startService builds a connection, starts it and invokes every subscription."""
    second = Subscription("c3", "SubscribeToExchangeDeltas", ("BTC-ETH",))
    service, _clock, factory = make((SUBSCRIBE, second), invoke_timeout=12.0)
    service.startService()
    assert len(factory.connections) == 1
    conn = factory.last
    assert conn.invocations == []  # not before the connection is up
    conn.connect()
    assert [(i.hub, i.method, i.args, i.timeout) for i in conn.invocations] == [
        ("c3", "Subscribe", (["tick"],), 12.0),
        ("c3", "SubscribeToExchangeDeltas", ("BTC-ETH",), 12.0),
    ]


def test_when_subscribed_waits_for_every_subscription() -> None:
    """when_subscribed fires with the connection only after all subscriptions succeed."""
    second = Subscription("c3", "Other")
    service, _clock, factory = make((SUBSCRIBE, second))
    d = service.when_subscribed()
    service.startService()
    factory.last.connect()
    factory.last.answer(0, [{"Success": True}])
    assert not d.called
    assert not service.subscribed
    factory.last.answer(1)
    assert d.result is factory.last
    assert service.subscribed
    assert service.when_subscribed().result is factory.last  # already subscribed


def test_no_subscriptions_is_subscribed_once_connected() -> None:
    """A service with no subscriptions reports subscribed as soon as it connects."""
    service, _clock, factory = make(())
    d = service.when_subscribed()
    service.startService()
    assert not d.called
    factory.last.connect()
    assert d.result is factory.last


def test_proxies_created_before_start() -> None:
    """Every hub (settings, subscriptions, handlers) gets a proxy before start()."""
    clock, factory = Clock(), Factory()
    service = SubscriptionService(
        clock,
        ConnectionSettings(URL, hubs=["extra"]),
        [SUBSCRIBE],
        [Handler("chat", "message", lambda call: None)],
        connection_factory=factory,
    )
    service.startService()
    assert sorted(factory.last.proxies) == ["c3", "chat", "extra"]


def test_backoff_schedule() -> None:
    """Failed connects are retried after 1, 1.5, 2.25 ... seconds, capped at 60."""
    service, clock, factory = make()
    service.startService()
    delays = []
    for _ in range(14):
        factory.last.fail_start(NegotiationError("negotiate failed", 503, b""))
        [delay] = retry_delays(clock)
        delays.append(delay)
        count = len(factory.connections)
        clock.advance(delay - 0.01)
        assert len(factory.connections) == count  # not early
        clock.advance(0.02)
        assert len(factory.connections) == count + 1
    assert delays[:4] == pytest.approx([1.0, 1.5, 2.25, 3.375])
    assert delays[-1] == 60.0
    assert all(factory.connections[i].stopped for i in range(14))  # failed ones released


def test_default_policy_has_jitter_and_cap() -> None:
    """The default policy is Twisted's backoffPolicy: 1 s plus jitter, capped near 60 s."""
    clock, factory = Clock(), Factory()
    service = SubscriptionService(
        clock, ConnectionSettings(URL), [SUBSCRIBE], connection_factory=factory
    )
    service.startService()
    seen = []
    for _ in range(30):
        factory.last.fail_start(NegotiationError("no", 500, b""))
        [delay] = retry_delays(clock)
        seen.append(delay)
        clock.advance(delay)
    assert 1.0 <= seen[0] < 2.0
    assert all(60.0 <= d < 61.0 for d in seen[-5:])
    assert len({round(d, 6) for d in seen[-5:]}) > 1  # jittered, not constant


def test_resubscribes_after_connection_lost() -> None:
    """When the connection is lost for good a new one is made and subscriptions re-run."""
    service, clock, factory = make()
    service.startService()
    first = factory.last
    first.connect()
    first.answer(0)
    assert service.subscribed
    with capturedLogs() as events:
        first.lose("Couldn't reconnect within the configured timeout of 30 s")
        assert not service.subscribed
        assert service.connection is None
        waiting = service.when_subscribed()
        assert retry_delays(clock) == [1.0]
        clock.advance(1.0)
        second = factory.last
        assert second is not first
        second.connect()
        assert [(i.method, i.args) for i in second.invocations] == [("Subscribe", (["tick"],))]
        second.answer(0)
    assert waiting.result is second
    text = "\n".join(messages(events))
    assert "connection lost" in text and "Couldn't reconnect" in text
    assert "resubscribed 1 subscriptions" in text


def test_backoff_resets_after_subscribing() -> None:
    """Once subscribed, the next loss starts the schedule again at the initial delay."""
    service, clock, factory = make()
    service.startService()
    for _ in range(3):
        factory.last.fail_start(NegotiationError("no", 500, b""))
        clock.advance(retry_delays(clock)[0])
    factory.last.connect()
    factory.last.answer(0)
    factory.last.lose()
    assert retry_delays(clock) == [1.0]


def test_loss_before_subscribed_keeps_backing_off() -> None:
    """Connections that drop before subscribing count as failures and back off further."""
    service, clock, factory = make()
    service.startService()
    factory.last.connect()
    factory.last.lose()
    assert retry_delays(clock) == [1.0]
    clock.advance(1.0)
    factory.last.connect()
    factory.last.lose()
    assert retry_delays(clock) == [1.5]


def test_loss_while_subscribing_schedules_only_a_reconnect() -> None:
    """Invocations failing because the connection died do not schedule their own retries."""
    service, clock, factory = make()
    service.startService()
    conn = factory.last
    conn.connect()
    conn.lose()
    conn.refuse(0, ConnectionClosed("the connection was lost"))
    assert retry_delays(clock) == [1.0]


def test_late_events_from_an_abandoned_connection_are_ignored() -> None:
    """A start result or loss from a connection the service gave up on changes nothing."""
    service, clock, factory = make()
    service.startService()
    first = factory.last
    first.connect()
    first.lose()
    clock.advance(1.0)
    first.answer(0)  # late result on the old connection
    first.lose()
    assert not service.subscribed
    assert len(factory.connections) == 2
    assert retry_delays(clock) == []


def test_factory_error_is_retried() -> None:
    """An exception from the connection factory is logged and retried like a failed connect."""
    clock = Clock()
    attempts: list[int] = []
    good = Factory()

    def factory(reactor: object) -> FakeConnection:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("too many open files")
        return good(reactor)

    service = SubscriptionService(
        clock,
        ConnectionSettings(URL),
        [SUBSCRIBE],
        connection_factory=factory,
        retry_policy=backoffPolicy(jitter=no_jitter),
    )
    with capturedLogs() as events:
        service.startService()
    assert "could not create the connection: OSError: too many open files" in messages(events)[-2]
    clock.advance(1.0)
    assert len(good.connections) == 1


@pytest.mark.parametrize(
    "error",
    [InvalidURL("query parameter 'transport' is reserved"), ValueError("Port out of range")],
)
def test_factory_configuration_error_gives_up_at_once(error: Exception) -> None:
    """A factory raising InvalidURL/ValueError (a bad setting) is not retried: the
    service logs an error and gives up at once, even without max_attempts."""
    clock = Clock()
    calls: list[object] = []
    gave_up: list[GaveUpError] = []

    def factory(reactor: object) -> FakeConnection:
        calls.append(reactor)
        raise error

    service = SubscriptionService(
        clock, ConnectionSettings(URL), [SUBSCRIBE], connection_factory=factory,
        on_gave_up=gave_up.append,
    )  # fmt: skip
    waiting = service.when_subscribed()
    with capturedLogs() as events:
        service.startService()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert len(calls) == 1
    assert len(gave_up) == 1 and gave_up[0].attempts == 1
    assert isinstance(waiting.result.value, GaveUpError)
    waiting.addErrback(lambda f: None)
    [error_event] = [e for e in events if e["log_level"].name == "error"]
    assert "not retrying" in formatEvent(error_event)
    assert str(error) in formatEvent(error_event)


def test_invalid_url_from_start_gives_up_at_once() -> None:
    """start() failing with InvalidURL is a configuration error, not retried."""
    gave_up: list[GaveUpError] = []
    service, clock, factory = make(on_gave_up=gave_up.append)
    service.startService()
    factory.last.fail_start(InvalidURL("connection URL has no host"))
    assert len(gave_up) == 1
    assert clock.getDelayedCalls() == []
    assert len(factory.connections) == 1


def test_on_gave_up_raising_is_logged() -> None:
    """An on_gave_up callback that raises is logged; giving up still completes."""

    def boom(error: GaveUpError) -> None:
        raise RuntimeError("boom")

    service, clock, factory = make(max_attempts=1, on_gave_up=boom)
    service.startService()
    with capturedLogs() as events:
        factory.last.fail_start(NegotiationError("no", 503, b""))
    assert any(
        "on_gave_up failed" in formatEvent(e) and e["log_failure"].check(RuntimeError)
        for e in events
        if "log_failure" in e
    )
    assert clock.getDelayedCalls() == []


def test_reconnecting_and_reconnected_are_logged() -> None:
    """The connection's own transport reconnects are logged, without a new connection."""
    service, _clock, factory = make()
    service.startService()
    conn = factory.last
    conn.connect()
    with capturedLogs() as events:
        for callback in conn.reconnecting_callbacks:
            callback(ConnectionClosed("socket closed"))
        for reconnected in conn.reconnected_callbacks:
            reconnected()
    text = messages(events)
    assert any(
        "reconnecting to http://127.0.0.1:1/signalr" in m and "socket closed" in m for m in text
    )
    assert any(m.startswith("reconnected") for m in text)
    assert len(factory.connections) == 1


# ------------------------------------------------------------------ failing subscriptions


def test_hub_error_is_retried_on_the_same_connection() -> None:
    """A subscription failing with HubError is logged and invoked again after the policy delay."""
    service, clock, factory = make()
    service.startService()
    conn = factory.last
    conn.connect()
    with capturedLogs() as events:
        conn.refuse(0, HubError("INVALID_CHANNEL", hub="c3", method="Subscribe"))
    assert "subscription c3.Subscribe failed" in messages(events)[0]
    assert "INVALID_CHANNEL" in messages(events)[0]
    assert retry_delays(clock) == [1.0]
    clock.advance(1.0)
    assert len(conn.invocations) == 2
    conn.refuse(1, HubError("INVALID_CHANNEL"))
    assert retry_delays(clock) == [1.5]
    clock.advance(1.5)
    conn.answer(2)
    assert service.subscribed
    assert len(factory.connections) == 1


def test_failure_result_is_retried() -> None:
    """A result saying Success false fails the subscription (default check) and is retried."""
    service, clock, factory = make()
    d = service.when_subscribed()
    service.startService()
    conn = factory.last
    conn.connect()
    with capturedLogs() as events:
        conn.answer(0, [{"Success": True}, {"Success": False, "ErrorCode": "INVALID_CHANNEL"}])
    assert "INVALID_CHANNEL" in messages(events)[0]
    assert not d.called
    clock.advance(1.0)
    conn.answer(1, [{"Success": True, "ErrorCode": None}])
    assert d.result is conn


def test_user_check_judges_results() -> None:
    """A user-supplied check decides what counts as success."""
    sub = Subscription("c3", "Subscribe", (), check=lambda result: result == "ok")
    service, clock, factory = make((sub,))
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0, {"Success": True})
    assert not service.subscribed
    clock.advance(1.0)
    conn.answer(1, "ok")
    assert service.subscribed


def test_only_the_failing_subscription_is_retried() -> None:
    """Subscriptions that succeeded are not invoked again when another one fails."""
    other = Subscription("c3", "Other")
    service, clock, factory = make((SUBSCRIBE, other))
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    conn.refuse(1, HubError("nope"))
    clock.advance(1.0)
    assert [i.method for i in conn.invocations] == ["Subscribe", "Other", "Other"]


def test_invoke_raising_synchronously_is_retried() -> None:
    """An invoke() that raises (e.g. arguments not JSON) is a failure, retried, not a crash."""
    service, clock, factory = make()
    service.startService()
    conn = factory.last
    calls = []

    def invoke(method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        calls.append(method)
        raise TypeError("not JSON serialisable")

    conn.hub("c3").invoke = invoke  # type: ignore[method-assign]
    conn.connect()
    assert retry_delays(clock) == [1.0]
    clock.advance(1.0)
    assert calls == ["Subscribe", "Subscribe"]


def test_reports_success() -> None:
    """The default check rejects Success false (any capitalisation, in lists too) only."""
    assert reports_success(None)
    assert reports_success([{"Success": True, "ErrorCode": None}])
    assert reports_success({"success": None})
    assert reports_success("done")
    assert not reports_success({"Success": False})
    assert not reports_success({"success": False})
    assert not reports_success([{"Success": True}, {"Success": False}])


def test_subscription_error_names_the_subscription() -> None:
    """SubscriptionError says which invocation failed and with what result."""
    error = SubscriptionError(SUBSCRIBE, {"Success": False})
    assert "c3.Subscribe" in str(error) and "'Success': False" in str(error)
    assert error.subscription is SUBSCRIBE


# ------------------------------------------------------------------ giving up


def test_max_attempts_gives_up() -> None:
    """With max_attempts, the service stops after that many failures and says so."""
    gave_up: list[GaveUpError] = []
    service, clock, factory = make(max_attempts=3, on_gave_up=gave_up.append)
    d = service.when_subscribed()
    service.startService()
    with capturedLogs() as events:
        for _ in range(3):
            factory.last.fail_start(NegotiationError("no", 503, b""))
            clock.advance(60)
    assert len(factory.connections) == 3
    assert clock.getDelayedCalls() == []
    assert len(gave_up) == 1 and gave_up[0].attempts == 3
    assert isinstance(d.result.value, GaveUpError)
    d.addErrback(lambda f: None)
    assert "gave up after 3 failed attempts" in messages(events)[-1]
    later = service.when_subscribed()
    assert isinstance(later.result.value, GaveUpError)
    later.addErrback(lambda f: None)


def test_max_attempts_counts_subscription_failures() -> None:
    """A subscription that keeps failing also exhausts max_attempts and closes the connection."""
    gave_up: list[GaveUpError] = []
    service, clock, factory = make(max_attempts=2, on_gave_up=gave_up.append)
    service.startService()
    conn = factory.last
    conn.connect()
    conn.refuse(0, HubError("bad"))
    clock.advance(1.0)
    assert gave_up == []
    conn.refuse(1, HubError("bad"))
    assert len(gave_up) == 1
    assert conn.stopped
    assert clock.getDelayedCalls() == []


def test_losing_a_subscribed_connection_is_not_a_failed_attempt() -> None:
    """With max_attempts=1, a subscribed connection lost (a server restart) is
    reconnected after policy(0) instead of giving up; a failure after that counts."""
    gave_up: list[GaveUpError] = []
    service, clock, factory = make(max_attempts=1, on_gave_up=gave_up.append)
    service.startService()
    for _ in range(3):
        conn = factory.last
        conn.connect()
        conn.answer(0)
        assert service.subscribed
        conn.lose("server restarted")
        assert gave_up == []
        assert retry_delays(clock) == [1.0]
        clock.advance(1.0)
    assert len(factory.connections) == 4
    factory.last.fail_start(NegotiationError("still restarting", 503, b""))
    assert len(gave_up) == 1 and gave_up[0].attempts == 1


def test_stale_subscribed_connection_is_not_a_failed_attempt() -> None:
    """With max_attempts=1, a subscribed connection going stale reconnects, not gives up."""
    gave_up: list[GaveUpError] = []
    sub = Subscription("c3", "Subscribe", stale_after=5.0)
    service, clock, factory = make((sub,), max_attempts=1, on_gave_up=gave_up.append)
    service.startService()
    factory.last.connect()
    factory.last.answer(0)
    clock.advance(5.0)
    assert factory.last.stopped
    assert gave_up == []
    assert retry_delays(clock) == [1.0]
    clock.advance(1.0)
    assert len(factory.connections) == 2


def test_permanently_silent_feed_backs_off_but_never_gives_up() -> None:
    """Stale connections in a row with no watched call at all reconnect after growing
    delays (policy(0), policy(1), ...) without giving up; one watched call resets it."""
    gave_up: list[GaveUpError] = []
    sub = Subscription("c3", "Subscribe", stale_after=5.0, watch=("tick",))
    service, clock, factory = make((sub,), max_attempts=2, on_gave_up=gave_up.append)
    service.startService()

    def subscribe_and_go_stale(ticks: int = 0) -> float:
        conn = factory.last
        conn.connect()
        conn.answer(len(conn.invocations) - 1)
        for _ in range(ticks):
            conn.hub("c3").call("tick", {})
        clock.advance(5.0)
        assert conn.stopped
        [delay] = retry_delays(clock)
        clock.advance(delay)
        return delay

    delays = [subscribe_and_go_stale() for _ in range(4)]
    assert delays == pytest.approx([1.0, 1.5, 2.25, 3.375])
    assert subscribe_and_go_stale(ticks=1) == 1.0  # the feed spoke: back to policy(0)
    assert subscribe_and_go_stale() == 1.0
    assert gave_up == []
    assert len(factory.connections) == 7


def test_bad_max_attempts() -> None:
    """max_attempts below 1 is refused."""
    with pytest.raises(ValueError, match="max_attempts"):
        make(max_attempts=0)


# ------------------------------------------------------------------ watchdog


def test_stale_feed_forces_a_fresh_connection() -> None:
    """No watched call for stale_after seconds: the connection is dropped and remade."""
    sub = Subscription(
        "c3", "Subscribe", (["market_summaries"],), stale_after=10.0, watch=("marketSummaries",)
    )
    service, clock, factory = make((sub,))
    service.startService()
    conn = factory.last
    conn.connect()
    clock.advance(30)  # not armed until the subscription succeeded
    assert not conn.stopped
    conn.answer(0)
    for _ in range(5):
        clock.advance(9)
        conn.hub("c3").call("marketSummaries", "payload")
    conn.hub("c3").call("heartbeat")  # not a watched method
    assert not conn.stopped
    with capturedLogs() as events:
        clock.advance(10)
    assert conn.stopped
    assert "stale feed: no marketSummaries call on c3 for 10.0s" in messages(events)[0]
    assert not service.subscribed
    clock.advance(1.0)
    assert len(factory.connections) == 2
    factory.last.connect()
    assert [i.method for i in factory.last.invocations] == ["Subscribe"]


def test_watchdog_without_watch_list_counts_every_call() -> None:
    """With no watch list, any client call on the hub keeps the feed alive."""
    sub = Subscription("c3", "Subscribe", (), stale_after=5.0)
    service, clock, factory = make((sub,))
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    for _ in range(4):
        clock.advance(4)
        conn.hub("c3").call("heartbeat")
    assert not conn.stopped
    clock.advance(5)
    assert conn.stopped


def test_stale_after_must_be_positive() -> None:
    """A zero or negative stale_after is refused."""
    with pytest.raises(ValueError, match="stale_after"):
        Subscription("c3", "Subscribe", stale_after=0)


# ------------------------------------------------------------------ handlers


def test_handlers_receive_client_calls() -> None:
    """Method handlers and catch-all handlers get ClientCall values."""
    got: list[ClientCall] = []
    handlers = (Handler("c3", "tick", got.append), Handler("c3", None, got.append))
    service, _clock, factory = make(handlers=handlers)
    service.startService()
    factory.last.connect()
    factory.last.hub("c3").call("tick", {"Seq": 1})
    factory.last.hub("c3").call("heartbeat")
    assert got == [
        ClientCall("c3", "tick", ({"Seq": 1},)),
        ClientCall("c3", "tick", ({"Seq": 1},)),
        ClientCall("c3", "heartbeat", ()),
    ]


def test_handler_exception_is_logged_not_raised() -> None:
    """A failing handler is logged; later calls still reach it."""
    seen = []

    def handler(call: ClientCall) -> None:
        seen.append(call)
        raise RuntimeError("boom")

    service, _clock, factory = make(handlers=(Handler("c3", "tick", handler),))
    service.startService()
    factory.last.connect()
    with capturedLogs() as events:
        factory.last.hub("c3").call("tick", 1)
        factory.last.hub("c3").call("tick", 2)
    assert len(seen) == 2
    assert "handler for c3.tick failed" in messages(events)[0]
    assert events[0]["log_failure"].check(RuntimeError)


def test_calls_from_an_abandoned_connection_are_ignored() -> None:
    """After a connection is replaced its client calls no longer reach handlers."""
    got: list[ClientCall] = []
    service, _clock, factory = make(handlers=(Handler("c3", "tick", got.append),))
    service.startService()
    old = factory.last
    old.connect()
    old.lose()
    old.hub("c3").call("tick", 1)
    assert got == []


# ------------------------------------------------------------------ stopping


def test_stop_while_waiting_to_retry_leaves_no_delayed_calls() -> None:
    """stopService during back-off cancels the retry."""
    service, clock, factory = make()
    service.startService()
    factory.last.fail_start(NegotiationError("no", 503, b""))
    assert clock.getDelayedCalls() != []
    d = service.stopService()
    assert d.called and d.result is None
    assert clock.getDelayedCalls() == []
    clock.advance(120)
    assert len(factory.connections) == 1


def test_stop_when_subscribed_closes_and_cancels_everything() -> None:
    """stopService stops the connection and cancels watchdogs and subscription retries."""
    watched = Subscription("c3", "Subscribe", (), stale_after=10.0)
    failing = Subscription("c3", "Other")
    service, clock, factory = make((watched, failing))
    service.startService()
    conn = factory.last
    conn.connect()
    conn.answer(0)
    conn.refuse(1, HubError("later"))
    assert len(clock.getDelayedCalls()) == 2  # watchdog + retry
    d = service.stopService()
    assert conn.stopped
    assert d.result is None
    assert clock.getDelayedCalls() == []
    assert not service.running


def test_stop_while_connecting() -> None:
    """stopService during start() stops the connection and does not retry."""
    service, clock, factory = make()
    waiting = service.when_subscribed()
    service.startService()
    service.stopService()
    assert factory.last.stopped
    assert clock.getDelayedCalls() == []
    assert isinstance(waiting.result.value, CancelledError)
    waiting.addErrback(lambda f: None)


def test_stop_waits_for_the_connection_to_close() -> None:
    """The stopService Deferred fires only when the connection's stop() does."""
    service, _clock, factory = make()
    service.startService()
    conn = factory.last
    conn.connect()
    closing: Deferred[None] = Deferred()
    conn.stop = lambda: closing  # type: ignore[method-assign]
    d = service.stopService()
    assert not d.called
    closing.callback(None)
    assert d.called


def test_stop_swallows_close_errors() -> None:
    """An error while closing is logged; stopService still succeeds."""
    service, _clock, factory = make()
    service.startService()
    conn = factory.last
    conn.connect()
    closing: Deferred[None] = Deferred()
    conn.stop = lambda: closing  # type: ignore[method-assign]
    with capturedLogs() as events:
        d = service.stopService()
        closing.errback(RuntimeError("socket gone"))
    assert d.result is None
    assert "error while closing the connection" in messages(events)[-1]


def test_restart_after_stop() -> None:
    """A stopped service can be started again and connects afresh."""
    service, _clock, factory = make()
    service.startService()
    service.stopService()
    service.startService()
    assert len(factory.connections) == 2
    factory.last.connect()
    factory.last.answer(0)
    assert service.subscribed


def test_cancelling_when_subscribed_forgets_the_waiter() -> None:
    """A cancelled when_subscribed Deferred is not fired later."""
    service, _clock, factory = make()
    d = service.when_subscribed()
    d.cancel()
    d.addErrback(lambda f: f.trap(CancelledError))
    service.startService()
    factory.last.connect()
    factory.last.answer(0)  # would raise AlreadyCalledError if still registered


def test_stop_waits_for_connections_closing_in_the_background() -> None:
    """A stale connection still closing when stopService is called: the stopService
    Deferred fires only once that earlier stop() completed too."""
    sub = Subscription("c3", "Subscribe", stale_after=5.0)
    service, clock, factory = make((sub,))
    service.startService()
    first = factory.last
    first.connect()
    first.answer(0)
    closing: Deferred[None] = Deferred()
    first.stop = lambda: closing  # type: ignore[method-assign]
    clock.advance(5.0)  # stale: abandoned, its stop() in flight
    clock.advance(1.0)
    second = factory.last
    assert second is not first
    second.connect()
    d = service.stopService()
    assert not d.called
    closing.callback(None)
    assert d.result is None


@pytest.mark.parametrize("how", ["failed start", "gave up"])
def test_stop_waits_for_a_failed_or_given_up_connection(how: str) -> None:
    """Connections closed after a failed start or on giving up are waited for as well."""
    service, _clock, factory = make(max_attempts=1 if how == "gave up" else None)
    service.startService()
    conn = factory.last
    closing: Deferred[None] = Deferred()
    conn.stop = lambda: closing  # type: ignore[method-assign]
    if how == "failed start":
        conn.fail_start(NegotiationError("no", 503, b""))
    else:
        conn.connect()
        conn.refuse(0, HubError("nope"))
    d = service.stopService()
    assert not d.called
    closing.errback(RuntimeError("socket gone"))  # close errors are logged, not raised
    assert d.result is None


def test_waiter_stopping_the_service_fails_the_other_waiters() -> None:
    """A when_subscribed callback that calls stopService: the waiters after it fail
    with CancelledError instead of getting the connection that was just stopped."""
    service, _clock, factory = make()
    service.startService()
    first, second = service.when_subscribed(), service.when_subscribed()
    first.addCallback(lambda connection: service.stopService())
    results: list[object] = []
    second.addBoth(results.append)
    factory.last.connect()
    factory.last.answer(0)
    assert factory.last.stopped
    [result] = results
    assert isinstance(result, Failure) and result.check(CancelledError)


def test_giving_up_while_subscribing_invokes_nothing_more() -> None:
    """When the first invocation fails synchronously and the service gives up, the
    remaining subscriptions are not invoked on the dropped connection."""
    second = Subscription("c3", "Second")
    service, _clock, factory = make((SUBSCRIBE, second), max_attempts=1)
    service.startService()
    conn = factory.last

    def invoke(method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        conn.invocations.append(FakeInvocation("c3", method, args, timeout))
        raise TypeError("not JSON serialisable")

    conn.hub("c3").invoke = invoke  # type: ignore[method-assign]
    conn.connect()
    assert conn.stopped
    assert [i.method for i in conn.invocations] == ["Subscribe"]


# ------------------------------------------------------------------ secrets


def test_logs_never_show_secrets() -> None:
    """Tokens, cookies, headers and the URL password stay out of every log line, reprs
    included, even when an error echoes the exact values (plain or URL-quoted)."""
    clock, factory = Clock(), Factory()
    settings = ConnectionSettings(
        "https://user:p%40ss%2Fword@example.com/signalr?access_token=SECRET1",
        headers={"Authorization": "Bearer SECRET2", "X-Client": "SECRET6 v1"},
        cookies={"session": "SECRET3/x y"},
        query={"apikey": "SECRET4"},
    )
    service = SubscriptionService(
        clock,
        settings,
        [SUBSCRIBE, Subscription("c3", "Other")],
        connection_factory=factory,
        retry_policy=backoffPolicy(jitter=no_jitter),
        max_attempts=3,
    )
    with capturedLogs() as events:
        service.startService()
        factory.last.fail_start(
            NegotiationError("GET /negotiate?access_token=SECRET1&connectionToken=SECRET5 failed")
        )
        clock.advance(1)
        factory.last.fail_start(  # a server echoing what it got, not as key=value
            NegotiationError("401: token 'SECRET2' expired; user p@ss/word; client SECRET6 v1")
        )
        clock.advance(1.5)
        conn = factory.last
        conn.connect()
        conn.answer(0)
        conn.refuse(1, HubError("bad cookie SECRET3/x y (SECRET3%2Fx%20y), key SECRET4"))
        clock.advance(1)
        conn.answer(2)
        for callback in conn.reconnecting_callbacks:
            callback(ConnectionClosed("dropped; sent SECRET3%2Fx+y and SECRET4"))
        conn.lose("closed /reconnect?connectionToken=SECRET5&messageId=1 (SECRET1)")
        clock.advance(1)
        for _ in range(3):
            factory.last.fail_start(RuntimeError("p%40ss%2Fword rejected"))
            clock.advance(60)
    text = "\n".join(messages(events)) + repr(settings) + repr(events)
    assert "gave up" in text  # the GaveUpError message went through the same redaction
    for secret in ("SECRET1", "SECRET2", "SECRET3", "SECRET4", "SECRET5", "SECRET6", "p@ss",
                   "p%40ss"):  # fmt: skip
        assert secret not in text
    assert text.count("<redacted>") >= 10
    assert "https://example.com/signalr" in text


def test_redact() -> None:
    """redact scrubs token-like query values and credential headers."""
    assert redact("x?connectionToken=a%2Fb&transport=webSockets") == (
        "x?connectionToken=<redacted>&transport=webSockets"
    )
    assert redact("Authorization: Bearer abc") == "Authorization: <redacted>"
    assert redact("Cookie: a=b; c=d") == "Cookie: <redacted>"
    assert redact("nothing secret here") == "nothing secret here"


def test_settings_connect_builds_a_hub_connection() -> None:
    """The default factory builds a real HubConnection with the settings."""
    connection = ConnectionSettings(URL, headers={"X": "y"}).connect(Clock())
    assert isinstance(connection, HubConnection)
    assert connection.transports == (
        Transport.web_sockets,
        Transport.server_sent_events,
        Transport.long_polling,
    )
    connection.stop()


def test_settings_connect_passes_the_transports() -> None:
    """The connection the default factory builds tries the settings' transports, in order."""
    settings = ConnectionSettings(URL, transports=["longPolling", Transport.web_sockets])
    connection = settings.connect(Clock())
    assert isinstance(connection, HubConnection)
    assert connection.transports == (Transport.long_polling, Transport.web_sockets)
    assert connection.transport is None
    connection.stop()


def test_settings_transports_are_validated() -> None:
    """transports are read as HubConnection reads them: any case, repeats dropped; an
    unknown name or an empty list is refused when the settings are made."""
    settings = ConnectionSettings(URL, transports=("SERVERSENTEVENTS", "serverSentEvents"))
    assert settings.transports == (Transport.server_sent_events,)
    with pytest.raises(ValueError, match="unknown transport 'sse'"):
        ConnectionSettings(URL, transports=["sse"])
    with pytest.raises(ValueError, match="at least one transport"):
        ConnectionSettings(URL, transports=[])


def test_settings_repr_shows_transports_by_wire_name() -> None:
    """The repr names the transports as the protocol does."""
    settings = ConnectionSettings(URL, transports=["longPolling", "webSockets"])
    assert "transports=('longPolling', 'webSockets')" in repr(settings)


def test_settings_connection_arguments_are_hub_connection_parameters() -> None:
    """Every setting passed on to HubConnection is one of its keyword parameters, under
    the same name, and carries the value given."""
    import inspect

    parameters = inspect.signature(HubConnection).parameters
    settings = ConnectionSettings(
        URL, hubs=["h"], headers={"X": "y"}, query={"k": "v"}, transports=["longPolling"]
    )
    arguments = settings.connection_arguments()
    assert set(arguments) == {
        "headers",
        "cookies",
        "query",
        "tls",
        "transports",
        "protocol",
        "hub_protocol",
        "stateful_reconnect",
        "proxy",
    }
    for name in arguments:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert arguments["headers"] == {"X": "y"}
    assert arguments["transports"] == (Transport.long_polling,)


def test_max_attempts_is_readable() -> None:
    """max_attempts reads back as given; None (never give up) by default."""
    assert SubscriptionService(Clock(), ConnectionSettings(URL)).max_attempts is None
    assert SubscriptionService(Clock(), ConnectionSettings(URL), max_attempts=3).max_attempts == 3


def test_failure_passthrough_for_unexpected_errors() -> None:
    """Errors that are not SignalR errors (e.g. a bug in a check) are still retried."""

    def check(result: object) -> bool:
        raise KeyError("oops")

    service, clock, factory = make((Subscription("c3", "Subscribe", check=check),))
    service.startService()
    factory.last.connect()
    with capturedLogs() as events:
        factory.last.answer(0, {})
    assert "KeyError" in messages(events)[0]
    assert retry_delays(clock) == [1.0]


# ================================================================== integration
#
# The real HubConnection against the real test server on 127.0.0.1 port 0, on the
# global reactor (pytest-twisted).  Every wait is bounded.


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def fast_service(
    url: str,
    subscriptions: list[Subscription],
    handlers: list[Handler],
    **kwargs: Any,
) -> SubscriptionService:
    """A service on the real client, with short delays so the tests run in seconds."""
    from txsignalr import HubConnection

    settings = ConnectionSettings(url)

    def factory(reactor: Any) -> HubConnection:
        return HubConnection(reactor, url, reconnect_delay=0.1, http_timeout=5.0)

    kwargs.setdefault(
        "retry_policy", backoffPolicy(initialDelay=0.1, maxDelay=0.5, jitter=no_jitter)
    )
    return SubscriptionService(
        _reactor(), settings, subscriptions, handlers, connection_factory=factory, **kwargs
    )


def make_server() -> Any:
    from txsignalr.testing import C3Hub, SignalRServer

    return SignalRServer(
        _reactor(), hubs=[C3Hub(interval=0.05)], keepalive=0.5, disconnect_timeout=1.0
    )


@pytest_twisted.ensureDeferred
async def test_server_restart_resubscribes_and_stream_resumes() -> None:
    """Server killed and restarted on the same port (refusing negotiates for a while):
    the service renegotiates, re-subscribes and the numbered tick stream resumes."""
    server = make_server()
    port = await server.listen(port=0, interface="127.0.0.1")
    seqs: list[int] = []
    service = fast_service(
        server.url,
        [Subscription("c3", "Subscribe", (["tick"],))],
        [Handler("c3", "tick", lambda call: seqs.append(call.args[0]["Seq"]))],
    )
    with capturedLogs() as events:
        try:
            service.startService()
            first = await within(service.when_subscribed())
            first_id = first.connection_id
            await wait_until(lambda: len(seqs) >= 3, "ticks before the restart")

            await server.stop()
            before = max(seqs)
            server.refuse_negotiate(503, b"restarting")
            await server.listen(port=port, interface="127.0.0.1")
            await wait_until(lambda: len(server.events("negotiate")) >= 2, "refused negotiates")
            assert not service.subscribed
            server.refuse_negotiate(None)

            second = await within(service.when_subscribed())
            assert second is not first
            assert second.connection_id != first_id
            await wait_until(lambda: max(seqs) >= before + 3, "ticks after the restart")
        finally:
            await within(service.stopService())
            await server.stop()
    text = "\n".join(messages(events))
    assert "connection lost" in text
    assert "503" in text  # the refused negotiates were reported
    assert "resubscribed 1 subscriptions" in text
    after = [s for s in seqs if s > before]
    assert after == sorted(set(after))  # strictly increasing: in order, none twice


@pytest_twisted.ensureDeferred
async def test_failing_subscription_is_retried_until_it_succeeds() -> None:
    """Subscribe to a private topic fails (UNAUTHORIZED) until Authenticate ran; the
    service logs the failure and retries instead of dropping it."""
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    service = fast_service(
        server.url,
        [
            Subscription("c3", "Subscribe", (["private_orders"],)),
            Subscription("c3", "Authenticate", ("key", 1, "random", "signed")),
        ],
        [],
    )
    with capturedLogs() as events:
        try:
            service.startService()
            await within(service.when_subscribed())
        finally:
            await within(service.stopService())
            await server.stop()
    failures = [m for m in messages(events) if "subscription c3.Subscribe failed" in m]
    assert failures and "UNAUTHORIZED" in failures[0]
    invocations = [e for e in server.events("received") if "Subscribe" in e["payload"]]
    assert len(invocations) == 2


@pytest_twisted.ensureDeferred
async def test_hub_error_subscription_keeps_being_retried() -> None:
    """A subscription raising a HubError on the server is retried, never dropped."""
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    service = fast_service(server.url, [Subscription("c3", "Fail")], [])
    with capturedLogs() as events:
        try:
            service.startService()
            await wait_until(
                lambda: len([e for e in server.events("received") if "Fail" in e["payload"]]) >= 3,
                "three invocations of c3.Fail",
            )
            assert not service.subscribed
        finally:
            await within(service.stopService())
            await server.stop()
    assert any("Intentional failure from c3.Fail()" in m for m in messages(events))


@pytest_twisted.ensureDeferred
async def test_silent_feed_forces_a_new_connection() -> None:
    """A watched client method that never arrives makes the service reconnect afresh."""
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    sub = Subscription("c3", "Subscribe", (["heartbeat"],), stale_after=0.3, watch=("tick",))
    service = fast_service(server.url, [sub], [])
    with capturedLogs() as events:
        try:
            service.startService()
            first = await within(service.when_subscribed())
            await wait_until(
                lambda: service.connection is not None and service.connection is not first,
                "a fresh connection",
            )
            second = await within(service.when_subscribed())
            assert second.connection_id != first.connection_id
        finally:
            await within(service.stopService())
            await server.stop()
    assert any(m.startswith("stale feed: no tick call on c3") for m in messages(events))


@pytest_twisted.ensureDeferred
async def test_stop_leaves_nothing_behind() -> None:
    """After stopService (and the server's stop) no delayed call is left on the reactor."""
    reactor = _reactor()
    baseline = set(reactor.getDelayedCalls())
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    sub = Subscription("c3", "Subscribe", (["tick"],), stale_after=5.0)
    service = fast_service(server.url, [sub], [])
    service.startService()
    await within(service.when_subscribed())
    await within(service.stopService())
    await server.stop()
    leftover = [c for c in reactor.getDelayedCalls() if c not in baseline and c.active()]
    assert leftover == []


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_a_stale_connection_still_closing() -> None:
    """A feed goes stale and its connection is still closing when stopService is
    called: stopService fires only once that close completed, and nothing is left on
    the reactor."""
    from txsignalr import HubConnection

    reactor = _reactor()
    baseline = set(reactor.getDelayedCalls())
    server = make_server()
    await server.listen(port=0, interface="127.0.0.1")
    stops: list[Deferred[None]] = []
    gate: Deferred[None] = Deferred()  # holds every stop() open until released

    class Recording(HubConnection):
        def stop(self) -> Deferred[None]:
            stopping = super().stop()
            stops.append(stopping)
            held: Deferred[None] = Deferred()

            def release(_: object) -> None:
                stopping.addBoth(lambda _: held.callback(None))

            gate.addCallback(release)
            return held

    def factory(reactor: Any) -> HubConnection:
        return Recording(reactor, server.url, reconnect_delay=0.1, http_timeout=5.0)

    sub = Subscription("c3", "Subscribe", (["heartbeat"],), stale_after=0.3, watch=("never",))
    service = SubscriptionService(
        reactor, ConnectionSettings(server.url), [sub], [], connection_factory=factory,
        retry_policy=backoffPolicy(initialDelay=30.0, jitter=no_jitter),
    )  # fmt: skip
    try:
        service.startService()
        await within(service.when_subscribed())
        await wait_until(lambda: service.connection is None, "the stale connection dropped")
        assert len(stops) == 1
        stopped = service.stopService()
        assert not stopped.called  # the stale connection's stop() is still held
        gate.callback(None)
        await within(stopped)
        assert all(d.called for d in stops)  # the real stop() finished, /abort and all
    finally:
        if not gate.called:
            gate.callback(None)
        await within(service.stopService())
        await server.stop()
    leftover = [c for c in reactor.getDelayedCalls() if c not in baseline and c.active()]
    assert leftover == []

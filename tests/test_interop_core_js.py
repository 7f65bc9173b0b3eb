"""
Microsoft's ASP.NET Core SignalR client, ``@microsoft/signalr`` 10.0.11 in Node, against
the ASP.NET Core side of :mod:`txsignalr.testing` on 127.0.0.1: the JSON hub protocol
forced in turn to WebSockets, Server-Sent Events and long polling, and
``@microsoft/signalr-protocol-msgpack``'s ``MessagePackHubProtocol`` over WebSockets and
long polling (the two that carry binary); stateful reconnect (``withStatefulReconnect``)
across a WebSocket the server drops.

``tests/js/core_client.js`` is driven one step at a time over stdin (one node process per
scenario and transport), so each test checks what the client reports (its reply to every
step, and its events: client method calls, reconnecting/reconnected/close, its requests)
and what the server saw (its event log and the test hub's own records) after every step.
Expected error texts are those of Microsoft's server (``DefaultHubDispatcher``; see
``transcripts-core/aspnet-*``).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import pytest_twisted
from helpers import sleep, wait_until, within
from twisted.internet import defer, protocol

from txsignalr.testing import ClientResultError, Hub, HubCall, HubException, SignalRServer

#: Seconds a node process may live before the test kills it (its own watchdog: 25 s).
NODE_TIMEOUT = 30.0

TRANSPORTS = ("WebSockets", "ServerSentEvents", "LongPolling")
#: (transport, hub protocol) pairs: JSON on every transport, MessagePack on those that
#: carry binary (the client skips Server-Sent Events for it)
CASES = [(t, "json") for t in TRANSPORTS] + [
    ("WebSockets", "messagepack"),
    ("LongPolling", "messagepack"),
]
each_case = pytest.mark.parametrize("transport, protocol", CASES)
#: the client's transport class for each HttpTransportType.
TRANSPORT_CLASS = {
    "WebSockets": "WebSocketTransport",
    "ServerSentEvents": "ServerSentEventsTransport",
    "LongPolling": "LongPollingTransport",
}
HUB = "interop"
UTC = datetime.timezone.utc
#: what the client logs when the server refuses its WebSocket upgrade
WEBSOCKET_REFUSED = (
    "Error: Failed to start the transport 'WebSockets': Error: WebSocket failed to "
    "connect. The connection could not be found on the server, either the endpoint "
    "may not be a SignalR endpoint, the connection ID is not present on the server, "
    "or there is a proxy blocking WebSockets. If you have multiple servers check "
    "that sticky sessions are enabled."
)


# ------------------------------------------------------------------- the node process


class StepFailed(AssertionError):
    """A step the test expected to succeed was rejected by the client."""


class CoreClient(protocol.ProcessProtocol):
    """
    One ``core_client.js`` process.  :meth:`step` sends a command and returns the
    client's reply; :attr:`events` collects everything else it printed.
    """

    def __init__(self, reactor: Any, description: str) -> None:
        self.reactor = reactor
        self.description = description
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._partial = b""
        self.events: list[dict[str, Any]] = []
        self.exit_code: int | None = None
        self.killed = False
        self._next_id = 0
        self._replies: dict[int, defer.Deferred[dict[str, Any]]] = {}
        self._waiters: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._kill_timer = reactor.callLater(NODE_TIMEOUT, self.kill)

    # -- ProcessProtocol
    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            if raw.strip():
                self._line(raw.decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Any) -> None:
        if self._partial.strip():
            self._line(self._partial.decode("utf-8", "replace"))
        self._partial = b""
        self.exit_code = getattr(reason.value, "exitCode", None)
        if self._kill_timer.active():
            self._kill_timer.cancel()
        pending = [*self._replies.values(), *(d for _, d in self._waiters)]
        self._replies.clear()
        self._waiters.clear()
        for d in pending:
            d.errback(AssertionError(f"node ended\n{self.report()}"))
        self.ended.callback(None)

    def _line(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = {"event": "garbage", "line": line}
        if "reply" in message:
            d = self._replies.pop(message["reply"], None)
            if d is not None:
                d.callback(message)
            return
        self.events.append(message)
        for waiter in list(self._waiters):
            found = waiter[0]()
            if found is not None:
                self._waiters.remove(waiter)
                waiter[1].callback(found)

    # -- reading what the client printed
    def report(self) -> str:
        head = f"{self.description}: exit code {self.exit_code}"
        if self.killed:
            head += f" (killed after {NODE_TIMEOUT} s)"
        out = self.stdout.decode("utf-8", "replace")
        err = self.stderr.decode("utf-8", "replace")
        return f"{head}\n--- stdout\n{out}\n--- stderr\n{err}"

    def named(self, name: str) -> list[dict[str, Any]]:
        """Every event called ``name`` so far, in order."""
        return [e for e in self.events if e["event"] == name]

    def calls(self, method: str) -> list[list[Any]]:
        """The arguments of every call of the client method ``method`` so far."""
        return [e["args"] for e in self.named("call") if e["method"] == method]

    def requests(self) -> list[tuple[str, str, str, int | None]]:
        """The client's requests: ``(via, method, "path query-keys", status)``."""
        return [(e["via"], e["method"], e["path"], e.get("status")) for e in self.named("http")]

    def complaints(self) -> list[str]:
        """What the client logged as warnings or errors, ``"<level>: <message>"``."""
        return [f"{e['level']}: {e['message']}" for e in self.named("log")]

    async def _until(self, found: Callable[[], Any], what: str, timeout: float) -> Any:
        value = found()
        if value is not None:
            return value
        if self.ended.called:
            raise AssertionError(f"node ended before {what}\n{self.report()}")
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append((found, d))
        return await within(d, timeout, lambda: f"no {what} within {timeout} s\n{self.report()}")

    async def event(self, name: str, count: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        """The ``count``-th event called ``name`` (at once if it already came)."""

        def found() -> dict[str, Any] | None:
            seen = self.named(name)
            return seen[count - 1] if len(seen) >= count else None

        result: dict[str, Any] = await self._until(found, f"{name} event #{count}", timeout)
        return result

    async def call(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        """The arguments of the ``count``-th call of client method ``method``."""

        def found() -> list[Any] | None:
            seen = self.calls(method)
            return seen[count - 1] if len(seen) >= count else None

        result: list[Any] = await self._until(found, f"call #{count} of {method}", timeout)
        return result

    # -- steps
    async def attempt(self, op: str, timeout: float = 6.0, **arguments: Any) -> dict[str, Any]:
        """Run one step; :returns: the reply (``ok`` and ``value``, or ``error``)."""
        if self.ended.called:
            raise AssertionError(f"node ended before step {op}\n{self.report()}")
        self._next_id += 1
        # the client's own limit fires first, so a stuck step is reported by the client.
        command = {"id": self._next_id, "op": op, "timeoutMs": int(timeout * 1000) - 500}
        command.update(arguments)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._replies[self._next_id] = d
        assert self.transport is not None
        self.transport.write(json.dumps(command).encode("utf-8") + b"\n")
        reply: dict[str, Any] = await within(
            d, timeout, lambda: f"no reply to {command} within {timeout} s\n{self.report()}"
        )
        return reply

    async def step(self, op: str, timeout: float = 6.0, **arguments: Any) -> Any:
        """Run one step that must succeed; :returns: its value."""
        reply = await self.attempt(op, timeout, **arguments)
        if not reply["ok"]:
            raise StepFailed(f"step {op} {arguments} failed: {reply['error']}\n{self.report()}")
        return reply["value"]

    async def error(self, op: str, timeout: float = 6.0, **arguments: Any) -> str:
        """Run one step that must fail; :returns: the client's error message."""
        reply = await self.attempt(op, timeout, **arguments)
        assert not reply["ok"], f"step {op} {arguments} succeeded: {reply}\n{self.report()}"
        message: str = reply["error"]
        return message

    async def exit(self, complaints: Sequence[str] = (), timeout: float = 5.0) -> None:
        """The ``exit`` step, then the process must end with code 0.

        :param complaints: every warning and error the client logged, in order."""
        assert self.complaints() == list(complaints), self.report()
        await self.step("exit")
        await within(self.ended, timeout, lambda: f"node did not exit\n{self.report()}")
        assert self.exit_code == 0, self.report()

    def kill(self) -> None:
        if self.transport is not None and not self.ended.called:
            self.killed = True
            self.transport.signalProcess("KILL")


# ------------------------------------------------------------------------- the hub


class InteropHub(Hub):
    """The hub of the recorded ASP.NET Core transcripts, plus client results; it
    records what it was asked to do in :attr:`record`."""

    name = "interop"

    def __init__(self) -> None:
        self.record: list[tuple[Any, ...]] = []

    def on_connected(self, connection_id: str) -> None:
        self.record.append(("connected", connection_id))

    def on_disconnected(self, connection_id: str, stop_called: bool) -> None:
        self.record.append(("disconnected", connection_id, stop_called))

    def Echo(self, call: HubCall, value: Any) -> Any:
        return value

    def Add(self, call: HubCall, a: int, b: int) -> int:
        return a + b

    def Void(self, call: HubCall) -> None:
        self.record.append(("Void", call.connection_id))

    def Fail(self, call: HubCall) -> None:
        raise HubException("Intentional failure")

    def GetConnectionId(self, call: HubCall) -> str:
        return call.connection_id

    def Notify(self, call: HubCall, message: str) -> None:
        call.caller.invoke("onNotify", message)

    def Broadcast(self, call: HubCall, message: str) -> None:
        self.send_to_all("receive", message)

    def JoinGroup(self, call: HubCall, group: str) -> None:
        call.groups.add(group)

    def LeaveGroup(self, call: HubCall, group: str) -> None:
        call.groups.remove(group)

    def SendToGroup(self, call: HubCall, group: str, message: str) -> None:
        self.send_to_group(group, "groupMessage", group, message)

    async def Counter(self, call: HubCall, count: int, delay_ms: int) -> AsyncIterator[int]:
        sent = 0
        try:
            for i in range(count):
                yield i
                sent += 1
                await sleep(delay_ms / 1000)
        finally:
            self.record.append(("Counter", count, sent))

    async def FailingStream(self, call: HubCall, count: int) -> AsyncIterator[int]:
        for i in range(count):
            yield i
        raise HubException("stream broke")

    async def Sum(self, call: HubCall, numbers: AsyncIterator[int]) -> int:
        total = 0
        async for n in numbers:
            self.record.append(("Sum item", n))
            total += n
        return total

    async def AskClient(self, call: HubCall, value: int) -> Any:
        return await call.caller.invoke_with_result("GetValue", value)  # type: ignore[attr-defined]

    def Describe(self, call: HubCall, value: Any) -> str:
        """The Python type the server decoded ``value`` to."""
        return type(value).__name__

    def Typed(self, call: HubCall) -> list[Any]:
        """Values JSON has no type for: bytes, a datetime, a map with integer keys."""
        return [b"\x00\xff", datetime.datetime(2018, 1, 1, 11, 24, tzinfo=UTC), {1: "one"}]

    async def Numbered(self, call: HubCall, count: int, delay_ms: int) -> int:
        """``numbered(i)`` on the caller for i in 0..count-1, one every ``delay_ms``."""
        for i in range(count):
            call.caller.invoke("numbered", i)
            await sleep(delay_ms / 1000)
        self.record.append(("Numbered", count))
        return count


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest_twisted.async_yield_fixture
async def make_server(reactor: Any) -> Any:
    """``await make_server(**options)``: a listening server with an :class:`InteropHub`."""
    servers: list[SignalRServer] = []

    async def make(**options: Any) -> SignalRServer:
        settings: dict[str, Any] = {"core_keepalive": 2.0, "core_disconnect_timeout": 2.0}
        settings.update(options)
        srv = SignalRServer(reactor, hubs=[InteropHub()], **settings)
        await srv.listen(port=0, interface="127.0.0.1")
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


@pytest.fixture
def core_client(reactor: Any, js_env: Any) -> Any:
    """``await core_client(url, **options)``: a started ``core_client.js``, killed at teardown."""
    clients: list[CoreClient] = []

    async def start(url: str, **options: Any) -> CoreClient:
        opts = json.dumps({"timeoutMs": 25000, **options})
        client = CoreClient(reactor, f"node core_client.js {url} {opts}")
        script = str(js_env.directory / "core_client.js")
        reactor.spawnProcess(
            client,
            js_env.node,
            [js_env.node, script, url, opts],
            env=dict(os.environ),
            path=str(js_env.directory),
        )
        clients.append(client)
        ready = await client.event("ready", timeout=10.0)
        assert ready["version"] == "10.0.11", ready
        return client

    yield start
    for client in clients:
        client.kill()


def hub_of(server: SignalRServer) -> InteropHub:
    (hub,) = server.hubs
    assert isinstance(hub, InteropHub)
    return hub


def core_events(server: SignalRServer, kind: str, connection_id: str | None = None) -> list[Any]:
    """The server's Core events of one kind (of one connection)."""
    return [
        e
        for e in server.events(kind)
        if e.get("family") == "core"
        and (connection_id is None or e.get("connection_id") == connection_id)
    ]


async def core_event(
    server: SignalRServer, kind: str, connection_id: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Wait for the first Core event ``kind`` of ``connection_id``."""
    await wait_until(
        lambda: bool(core_events(server, kind, connection_id)),
        f"the server's {kind} event for {connection_id}",
        timeout,
    )
    event: dict[str, Any] = core_events(server, kind, connection_id)[0]
    return event


async def assert_stopped(server: SignalRServer, connection_id: str, transport: str) -> None:
    """After the client's stop(): the server ended the connection and ran on_disconnected."""
    disconnected = await core_event(server, "disconnected", connection_id)
    await wait_until(lambda: connection_id not in server.core_connections, "connection gone")
    # (Over SSE the client's unawaited Close POST loses the race with the end of its
    # event stream; a client-closed stream is a clean end, as on ASP.NET Core.)
    assert disconnected["clean"] is True, disconnected
    assert ("disconnected", connection_id, True) in hub_of(server).record


def invoked(server: SignalRServer, connection_id: str) -> list[tuple[str, list[Any], bool]]:
    """``(target, arguments, streaming)`` of every invocation the server received."""
    return [
        (e["target"], e["arguments"], e["streaming"])
        for e in core_events(server, "invoke", connection_id)
    ]


async def start_client(
    core_client: Any, url: str, transport: str | None, protocol: str = "json", **options: Any
) -> tuple[CoreClient, str]:
    """A connected client with recording handlers; :returns: it and its connection id."""
    client = await core_client(url, transport=transport, protocol=protocol, **options)
    for method, mode in (
        ("receive", "record"),
        ("groupMessage", "record"),
        ("onNotify", "record"),
        ("GetValue", "double"),
        ("Refuse", "throw"),
    ):
        await client.step("on", method=method, mode=mode)
    started = await client.step("start")
    assert started["state"] == "Connected", started
    if transport is not None:
        assert started["transport"] == TRANSPORT_CLASS[transport], started
    connection_id: str = started.get("connectionId")
    return client, connection_id


# ------------------------------------------------------------------------------ tests


@each_case
@pytest_twisted.ensureDeferred
async def test_connect_invoke_errors_and_client_methods(
    make_server: Any, core_client: Any, transport: str, protocol: str
) -> None:
    """start, invoke (results, void, hub errors), client methods, broadcasts."""
    server = await make_server()
    hub = hub_of(server)
    client, cid = await start_client(core_client, server.core_url(HUB), transport, protocol)

    # -- what the server saw of the start
    assert cid in server.core_connections
    assert server.core_hub_of(cid) == "interop"
    (negotiate,) = core_events(server, "negotiate")
    assert negotiate["query"] == {"negotiateVersion": "1"}
    assert negotiate["headers"]["x-requested-with"] == "XMLHttpRequest"
    assert negotiate["headers"]["user-agent"].startswith("Microsoft SignalR/10.0 (10.0.11; ")
    (handshake,) = core_events(server, "handshake", cid)
    assert handshake["ok"] is True
    assert (handshake["protocol"], handshake["version"]) == (protocol, 1)
    assert handshake["transport"] == transport
    assert ("connected", cid) in hub.record
    # -- what the client did: negotiate once, then only its transport
    requests = client.requests()
    assert requests[0] == ("fetch", "POST", "/hubs/interop/negotiate negotiateVersion", 200)
    if transport == "WebSockets":
        assert requests[1:] == [("websocket", "GET", "/hubs/interop id", 101)]
    elif transport == "ServerSentEvents":
        assert requests[1] == ("eventsource", "GET", "/hubs/interop id", 200)
        # the handshake goes up with a POST
        assert requests[2:] == [("fetch", "POST", "/hubs/interop id", 200)] * (len(requests) - 2)
    else:
        # the first poll answers at once, then the handshake POST
        assert requests[1] == ("fetch", "GET", "/hubs/interop id&_", 200)
        assert ("fetch", "POST", "/hubs/interop id", 200) in requests[2:]
        assert {r[0] for r in requests[1:]} == {"fetch"}

    # -- results
    value = {"a": [1, 2.5, {"b": None}], "s": "h\u00e9llo \u2603 \U0001f600", "t": True}
    assert await client.step("invoke", method="Echo", args=[value]) == {
        "hasValue": True,
        "result": value,
    }
    assert await client.step("invoke", method="add", args=[2, 3]) == {"hasValue": True, "result": 5}
    # (Microsoft's server answers a void method with "result":null: see notes-core-js.md)
    assert (await client.step("invoke", method="Void"))["result"] is None
    assert ("Void", cid) in hub.record
    assert await client.step("invoke", method="GetConnectionId") == {
        "hasValue": True,
        "result": cid,
    }
    # -- hub errors: the texts of Microsoft's server, as the client reports them
    assert await client.error("invoke", method="Fail") == (
        "An unexpected error occurred invoking 'Fail' on the server. "
        "HubException: Intentional failure"
    )
    assert await client.error("invoke", method="NoSuchMethod", args=[1]) == (
        "Failed to invoke 'NoSuchMethod' due to an error on the server. "
        "HubException: Method does not exist."
    )
    assert await client.error("invoke", method="Add", args=[1]) == (
        "Failed to invoke 'Add' due to an error on the server."
    )
    # still connected after the errors
    assert (await client.step("state"))["state"] == "Connected"

    # -- client methods: from the caller's hub method, a broadcast, the server's API
    assert (await client.step("invoke", method="Notify", args=["hi"]))["result"] is None
    # the call is written before the Completion, so it has been handled already
    assert client.calls("onNotify") == [["hi"]]
    await client.step("invoke", method="Broadcast", args=["to all"])
    assert client.calls("receive") == [["to all"]]
    server.send_to_all(HUB, "receive", {"from": "server", "n": [1, 2]})
    assert await client.call("receive", 2) == [{"from": "server", "n": [1, 2]}]
    server.send_to_connection(cid, HUB, "ReceivE", "only you", 3)
    assert await client.call("receive", 3) == ["only you", 3]
    # a send (no invocationId) runs the method without an answer
    await client.step("send", method="Notify", args=["no answer"])
    assert await client.call("onNotify", 2) == ["no answer"]

    assert invoked(server, cid) == [
        ("Echo", [value], False),
        ("add", [2, 3], False),
        ("Void", [], False),
        ("GetConnectionId", [], False),
        ("Fail", [], False),
        ("NoSuchMethod", [1], False),
        ("Add", [1], False),
        ("Notify", ["hi"], False),
        ("Broadcast", ["to all"], False),
        ("Notify", ["no answer"], False),
    ]
    ids = [e["invocation_id"] for e in core_events(server, "invoke", cid)]
    assert ids == [str(i) for i in range(9)] + [None]

    # -- stop: the server sees the client's Close and the connection ends cleanly
    assert await client.step("stop") == {"state": "Disconnected"}
    assert (await client.event("close"))["error"] is None
    await assert_stopped(server, cid, transport)
    if transport == "LongPolling":
        assert core_events(server, "delete", cid), server.log
        assert ("fetch", "DELETE", "/hubs/interop id", 202) in client.requests()
    elif transport == "WebSockets":
        assert core_events(server, "client_close", cid)[0]["error"] is None
    await client.exit()


@each_case
@pytest_twisted.ensureDeferred
async def test_groups_streams_uploads_and_client_results(
    make_server: Any, core_client: Any, transport: str, protocol: str
) -> None:
    """Groups, server-to-client streams (with cancel), client-to-server streams, client
    results awaited by a hub method and by the server's API."""
    server = await make_server()
    hub = hub_of(server)
    client, cid = await start_client(core_client, server.core_url(HUB), transport, protocol)
    assert core_events(server, "handshake", cid)[0]["protocol"] == protocol

    # -- groups
    await client.step("invoke", method="JoinGroup", args=["g1"])
    assert server.groups_of(cid) == [("interop", "g1")]
    await client.step("invoke", method="SendToGroup", args=["g1", "to group"])
    assert client.calls("groupMessage") == [["g1", "to group"]]
    server.send_to_group(HUB, "g1", "groupMessage", "g1", "from the server")
    assert await client.call("groupMessage", 2) == ["g1", "from the server"]
    server.send_to_group(HUB, "g2", "groupMessage", "g2", "not a member")
    await client.step("invoke", method="LeaveGroup", args=["g1"])
    assert server.groups_of(cid) == []
    await client.step("invoke", method="SendToGroup", args=["g1", "after leaving"])
    # a message to the group would have come before the Completion
    assert client.calls("groupMessage") == [["g1", "to group"], ["g1", "from the server"]]

    # -- server-to-client streams
    assert await client.step("stream", method="Counter", args=[3, 10]) == {
        "items": [0, 1, 2],
        "completed": True,
        "disposed": False,
        "error": None,
    }
    assert ("Counter", 3, 3) in hub.record
    # disposing the subscription sends CancelInvocation; the hub method is stopped
    taken = await client.step("stream", method="Counter", args=[1000, 30], take=3)
    assert taken == {"items": [0, 1, 2], "completed": False, "disposed": True, "error": None}
    cancel = await core_event(server, "cancel", cid)
    assert cancel["known"] is True
    stream_id = cancel["invocation_id"]
    await wait_until(lambda: any(r[:2] == ("Counter", 1000) for r in hub.record), "stream end")
    (stopped,) = [r for r in hub.record if r[:2] == ("Counter", 1000)]
    assert 3 <= stopped[2] < 10, stopped
    # an error in the stream reaches the subscriber after the items sent before it
    assert await client.step("stream", method="FailingStream", args=[2]) == {
        "items": [0, 1],
        "completed": False,
        "disposed": False,
        "error": "An error occurred on the server while streaming results. "
        "HubException: stream broke",
    }
    streams = [e for e in core_events(server, "invoke", cid) if e["streaming"]]
    assert [(e["target"], e["arguments"]) for e in streams] == [
        ("Counter", [3, 10]),
        ("Counter", [1000, 30]),
        ("FailingStream", [2]),
    ]
    assert streams[1]["invocation_id"] == stream_id

    # -- client-to-server stream: a Subject passed as the argument
    assert await client.step("upload", method="Sum", items=[1, 2, 3, 4]) == {
        "hasValue": True,
        "result": 10,
    }
    (upload,) = [e for e in core_events(server, "invoke", cid) if e["target"] == "Sum"][:1]
    assert upload["arguments"] == [] and len(upload["stream_ids"]) == 1, upload
    assert upload["streaming"] is False
    assert [r[1] for r in hub.record if r[0] == "Sum item"] == [1, 2, 3, 4]
    # the client ends the stream with an error: the hub method sees a HubException
    assert await client.error("upload", method="Sum", items=[5], error="client gave up") == (
        "An unexpected error occurred invoking 'Sum' on the server. HubException: client gave up"
    )
    assert [r[1] for r in hub.record if r[0] == "Sum item"] == [1, 2, 3, 4, 5]

    # -- client results: a hub method awaits the client's answer...
    assert await client.step("invoke", method="AskClient", args=[21]) == {
        "hasValue": True,
        "result": 42,
    }
    assert client.calls("GetValue") == [[21]]
    (answer,) = core_events(server, "client_result", cid)
    assert (answer["result"], answer["error"]) == (42, None)
    # ... and so does the server's own API, also for a handler that throws
    assert await within(server.invoke_with_result(cid, "GetValue", 2.5), 5) == 5
    # the client answers a throwing handler with `${error}`
    with pytest.raises(ClientResultError, match=r"^Error: client refuses \[1\]$"):
        await within(server.invoke_with_result(cid, "Refuse", 1), 5)
    with pytest.raises(ClientResultError, match=r"^Client didn't provide a result\.$"):
        await within(server.invoke_with_result(cid, "NoHandler"), 5)
    answers = core_events(server, "client_result", cid)
    assert [(a["result"], a["error"]) for a in answers] == [
        (42, None),
        (5, None),
        (None, "Error: client refuses [1]"),
        (None, "Client didn't provide a result."),
    ]

    assert await client.step("stop") == {"state": "Disconnected"}
    await assert_stopped(server, cid, transport)
    await client.exit(
        [
            "Error: A callback for the method 'refuse' threw error 'Error: client refuses [1]'.",
            "Warning: No client method with the name 'nohandler' found.",
            "Warning: No result given for 'nohandler' method and invocation ID 's4'.",
        ]
    )


@each_case
@pytest_twisted.ensureDeferred
async def test_reconnect_after_a_drop_and_close_from_the_server(
    make_server: Any, core_client: Any, transport: str, protocol: str
) -> None:
    """withAutomaticReconnect: after the server drops the transport the client starts a
    new connection; a Close with an error ends it for good (onclose gets the text); a
    Close with allowReconnect makes it reconnect."""
    server = await make_server()
    client, cid1 = await start_client(
        core_client, server.core_url(HUB), transport, protocol, reconnectDelays=[0, 200, 1000]
    )
    assert core_events(server, "handshake", cid1)[0]["protocol"] == protocol
    await client.step("invoke", method="JoinGroup", args=["g1"])

    server.drop_all_transports()
    reconnecting = await client.event("reconnecting")
    if transport == "ServerSentEvents":
        # the client's SSE transport closes without an error when its stream ends
        assert reconnecting["error"] is None, reconnecting
    else:
        assert isinstance(reconnecting["error"], str), reconnecting
    reconnected = await client.event("reconnected", timeout=8)
    cid2 = reconnected["connectionId"]
    assert cid2 and cid2 != cid1
    assert reconnected["transport"] == TRANSPORT_CLASS[transport]
    assert (await client.step("state"))["state"] == "Connected"
    # the server: the old connection ended uncleanly, a new one negotiated
    assert (await core_event(server, "disconnected", cid1))["clean"] is False
    await wait_until(lambda: cid1 not in server.core_connections, "old connection gone")
    assert cid2 in server.core_connections
    assert len(core_events(server, "negotiate")) == 2
    assert core_events(server, "handshake", cid2)[0]["ok"] is True
    assert core_events(server, "handshake", cid2)[0]["protocol"] == protocol
    # calls work on the new connection; groups did not survive (a full reconnect)
    assert (await client.step("invoke", method="GetConnectionId"))["result"] == cid2
    assert server.groups_of(cid2) == []
    server.send_to_all(HUB, "receive", "after the reconnect")
    assert await client.call("receive") == ["after the reconnect"]

    # Close with an error: no reconnect
    assert server.close_core_connection(cid2, error="Shutting down for the test")
    close = await client.event("close")
    assert close["error"] == "Server returned an error on close: Shutting down for the test"
    assert (await client.step("state"))["state"] == "Disconnected"
    assert len(client.named("reconnecting")) == 1
    (closed,) = core_events(server, "close", cid2)
    assert (closed["error"], closed["allow_reconnect"]) == ("Shutting down for the test", False)
    assert (await core_event(server, "disconnected", cid2))["clean"] is False

    # start again; a Close with allowReconnect: reconnect
    started = await client.step("start")
    cid3 = started["connectionId"]
    assert cid3 in server.core_connections
    assert server.close_core_connection(cid3, error="Come back", allow_reconnect=True)
    again = await client.event("reconnecting", count=2)
    assert again["error"] == "Server returned an error on close: Come back"
    cid4 = (await client.event("reconnected", count=2, timeout=8))["connectionId"]
    assert cid4 not in (cid1, cid2, cid3)
    assert (await client.step("invoke", method="GetConnectionId"))["result"] == cid4
    assert len(client.named("close")) == 1

    assert await client.step("stop") == {"state": "Disconnected"}
    await assert_stopped(server, cid4, transport)
    # the client logged each unexpected end: the drop (as its transport saw it), the Closes
    complaints = client.complaints()
    assert complaints[-2:] == [
        "Error: Connection disconnected with error "
        "'Error: Server returned an error on close: Shutting down for the test'.",
        "Error: Connection disconnected with error "
        "'Error: Server returned an error on close: Come back'.",
    ], complaints
    drop = {
        "WebSockets": [
            "Error: Connection disconnected with error "
            "'Error: WebSocket closed with status code: 1006 (no reason given).'."
        ],
        "ServerSentEvents": [],
        "LongPolling": [
            "Warning: Error from HTTP request. TypeError: fetch failed.",
            "Error: Connection disconnected with error 'TypeError: fetch failed'.",
        ],
    }
    assert complaints[:-2] == drop[transport], complaints
    await client.exit(complaints)


@pytest_twisted.ensureDeferred
async def test_default_transports_fall_back_to_what_the_server_serves(
    make_server: Any, core_client: Any
) -> None:
    """A server serving only long polling: the client with its default transports picks
    it from negotiate and never tries the others."""
    server = await make_server(transports=("longPolling",))
    client, cid = await start_client(core_client, server.core_url(HUB), None)
    assert (await client.step("state"))["transport"] == "LongPollingTransport"
    assert {via for via, _, _, _ in client.requests()} == {"fetch"}
    (handshake,) = core_events(server, "handshake", cid)
    assert handshake["transport"] == "LongPolling"
    assert (await client.step("invoke", method="Add", args=[1, 2]))["result"] == 3
    assert await client.step("stop") == {"state": "Disconnected"}
    await client.exit()


@pytest_twisted.ensureDeferred
async def test_refused_websocket_falls_back_with_a_new_negotiate(
    make_server: Any, core_client: Any
) -> None:
    """When the WebSocket is refused the client negotiates again and starts the next
    transport (Server-Sent Events) on the new connection."""
    server = await make_server()
    server.refuse_transport("webSockets", 500, b"refused for the test")
    client, cid = await start_client(core_client, server.core_url(HUB), None)
    assert (await client.step("state"))["transport"] == "ServerSentEventsTransport"
    (refused,) = core_events(server, "refused")
    assert refused["transport"] == "WebSockets"
    assert refused["connection_id"] != cid
    assert len(core_events(server, "negotiate")) == 2
    vias = [(via, method, status) for via, method, _, status in client.requests()]
    assert vias[:4] == [
        ("fetch", "POST", 200),
        ("websocket", "GET", 500),
        ("fetch", "POST", 200),
        ("eventsource", "GET", 200),
    ]
    assert core_events(server, "handshake", cid)[0]["transport"] == "ServerSentEvents"
    assert (await client.step("invoke", method="Echo", args=["ok"]))["result"] == "ok"
    assert await client.step("stop") == {"state": "Disconnected"}
    await client.exit([WEBSOCKET_REFUSED])


@each_case
@pytest_twisted.ensureDeferred
async def test_azure_style_redirect_with_access_tokens(
    make_server: Any, core_client: Any, transport: str, protocol: str
) -> None:
    """Negotiate at the app answers {url, accessToken}; the client negotiates again at
    the service URL with that token instead of its own, and connects there."""
    server = await make_server()
    client, cid = await start_client(
        core_client, server.redirect_url(HUB), transport, protocol, accessToken="user-token"
    )
    assert core_events(server, "handshake", cid)[0]["protocol"] == protocol
    (redirect,) = core_events(server, "redirect")
    issued = redirect["access_token"]
    assert issued in server.redirect_tokens
    http = client.named("http")
    assert (http[0]["path"], http[0]["auth"], http[0]["status"]) == (
        "/redirect/interop/negotiate negotiateVersion",
        "Bearer user-token",
        200,
    )
    assert (http[1]["path"], http[1]["auth"], http[1]["status"]) == (
        "/client/negotiate hub&negotiateVersion",
        f"Bearer {issued}",
        200,
    )
    transport_request = http[2]
    if transport == "ServerSentEvents":
        # the event stream carries the token in the query
        assert transport_request["path"] == "/client/ hub&id&access_token"
    else:
        assert transport_request["path"].startswith("/client/ hub&id")
        assert transport_request["auth"] == f"Bearer {issued}"
    assert core_events(server, "unauthorized") == []
    assert (await client.step("invoke", method="GetConnectionId"))["result"] == cid
    assert core_events(server, "handshake", cid)[0]["transport"] == transport
    # the token factory was asked once, for the first negotiate only
    assert len(client.named("token")) == 1
    assert await client.step("stop") == {"state": "Disconnected"}
    await client.exit()


@pytest_twisted.ensureDeferred
async def test_bearer_token_required(make_server: Any, core_client: Any) -> None:
    """core_access_token: the right accessTokenFactory connects, a wrong one gets 401."""
    server = await make_server(core_access_token="sekrit")
    client, cid = await start_client(
        core_client, server.core_url(HUB), "WebSockets", accessToken="sekrit"
    )
    assert (await client.step("invoke", method="Echo", args=[1]))["result"] == 1
    assert cid in server.core_connections
    assert core_events(server, "unauthorized") == []
    await client.step("stop")
    await client.exit()

    wrong = await core_client(server.core_url(HUB), transport="WebSockets", accessToken="nope")
    message = await wrong.error("start")
    assert message == (
        "Failed to complete negotiation with the server: Error: Unauthorized: Status code '401'"
    )
    (unauthorized,) = core_events(server, "unauthorized")
    assert unauthorized["negotiate"] is True
    await wrong.exit(
        [
            f"Error: {message}",
            f"Error: Failed to start the connection: Error: {message}",
        ]
    )


@pytest.mark.parametrize("transport", ["WebSockets", "ServerSentEvents"])
@pytest_twisted.ensureDeferred
async def test_server_pings_keep_the_client_alive(
    make_server: Any, core_client: Any, transport: str
) -> None:
    """The server's Pings reset the client's server timeout; without them the client
    gives up with its own error."""
    server = await make_server(core_keepalive=0.2)
    client, cid = await start_client(
        core_client,
        server.core_url(HUB),
        transport,
        serverTimeoutMs=1000,
        keepAliveIntervalMs=300,
    )
    await client.step("sleep", ms=2500)
    assert (await client.step("state"))["state"] == "Connected"
    assert (await client.step("invoke", method="Echo", args=["alive"]))["result"] == "alive"
    server.keepalives_enabled = False
    close = await client.event("close", timeout=4)
    assert close["error"] == "Server timeout elapsed without receiving a message from the server."
    # The client then drops its WebSocket, or closes its event stream (a clean end for
    # the server, which cannot tell why).
    expected = transport == "ServerSentEvents"
    assert (await core_event(server, "disconnected", cid))["clean"] is expected
    await client.exit(
        [
            "Error: Connection disconnected with error 'Error: Server timeout elapsed "
            "without receiving a message from the server.'."
        ]
    )


@pytest.mark.parametrize("transport", ["WebSockets", "ServerSentEvents"])
@pytest_twisted.ensureDeferred
async def test_client_timeout_closes_with_allow_reconnect(
    make_server: Any, core_client: Any, transport: str
) -> None:
    """A client that sends nothing for client_timeout is closed; with core_timeout_close the
    Close carries allowReconnect, so Microsoft's client reconnects."""
    server = await make_server(client_timeout=0.8, core_timeout_close=True)
    client, cid1 = await start_client(
        core_client,
        server.core_url(HUB),
        transport,
        keepAliveIntervalMs=20000,
        reconnectDelays=[0],
    )
    reconnecting = await client.event("reconnecting", timeout=4)
    server.client_timeout = None
    assert reconnecting["error"] == (
        "Server returned an error on close: Connection closed with an error."
    )
    (timeout,) = core_events(server, "timeout", cid1)
    assert timeout["after"] == 0.8
    disconnected = await core_event(server, "disconnected", cid1)
    assert (disconnected["reason"], disconnected["clean"]) == ("client timeout", False)
    cid2 = (await client.event("reconnected", timeout=5))["connectionId"]
    assert cid2 != cid1 and cid2 in server.core_connections
    assert (await client.step("invoke", method="GetConnectionId"))["result"] == cid2
    assert await client.step("stop") == {"state": "Disconnected"}
    await client.exit(
        [
            "Error: Connection disconnected with error 'Error: Server returned an error "
            "on close: Connection closed with an error.'."
        ]
    )


@pytest_twisted.ensureDeferred
async def test_skip_negotiation_over_websockets(make_server: Any, core_client: Any) -> None:
    """skipNegotiation: straight to the WebSocket, no negotiate; the client has no id."""
    server = await make_server()
    client, cid = await start_client(
        core_client, server.core_url(HUB), "WebSockets", skipNegotiation=True
    )
    assert cid is None
    assert client.requests() == [("websocket", "GET", "/hubs/interop ", 101)]
    # The server makes the connection on the fly (no negotiate request).
    assert [e.get("skipped") for e in core_events(server, "negotiate")] == [True]
    (server_id,) = server.core_connections
    assert (await client.step("invoke", method="GetConnectionId"))["result"] == server_id
    assert (await client.step("invoke", method="Add", args=[40, 2]))["result"] == 42
    assert await client.step("stream", method="Counter", args=[2, 0]) == {
        "items": [0, 1],
        "completed": True,
        "disposed": False,
        "error": None,
    }
    assert await client.step("invoke", method="AskClient", args=[4]) == {
        "hasValue": True,
        "result": 8,
    }
    assert await client.step("stop") == {"state": "Disconnected"}
    await assert_stopped(server, server_id, "WebSockets")
    await client.exit()


# ------------------------------------------------------------------------ MessagePack


@pytest.mark.parametrize("transport", ["WebSockets", "LongPolling"])
@pytest_twisted.ensureDeferred
async def test_messagepack_payload_types(
    make_server: Any, core_client: Any, transport: str
) -> None:
    """MessagePackHubProtocol: Uint8Array and Date reach the hub as bytes and datetime
    and come back as they went; the server's bytes, datetimes and integer-keyed maps
    reach the client as Uint8Array, Date and an object; big safe integers survive."""
    server = await make_server()
    client, cid = await start_client(core_client, server.core_url(HUB), transport, "messagepack")
    (handshake,) = core_events(server, "handshake", cid)
    assert (handshake["protocol"], handshake["transport"]) == ("messagepack", transport)
    data = {"$bytes": [0, 1, 254, 255]}
    moment = {"$date": "2024-02-29T23:59:59.123Z"}
    assert await client.step("invoke", method="Echo", args=[data]) == {
        "hasValue": True,
        "result": data,
    }
    assert (await client.step("invoke", method="Describe", args=[data]))["result"] == "bytes"
    assert (await client.step("invoke", method="Echo", args=[moment]))["result"] == moment
    assert (await client.step("invoke", method="Describe", args=[moment]))["result"] == ("datetime")
    for big in (2**53 - 1, -(2**53 - 1), 2**32 + 5):
        assert (await client.step("invoke", method="Echo", args=[big]))["result"] == big
        assert (await client.step("invoke", method="Describe", args=[big]))["result"] == "int"
    nested = {"list": [1.5, None, True, "h\u00e9"], "inner": {"b": data}}
    assert (await client.step("invoke", method="Echo", args=[nested]))["result"] == nested
    assert (await client.step("invoke", method="Typed"))["result"] == [
        {"$bytes": [0, 255]},
        {"$date": "2018-01-01T11:24:00.000Z"},
        {"1": "one"},
    ]
    # client methods get them too, from a broadcast encoded once for MessagePack
    server.send_to_all(HUB, "receive", b"\x07", datetime.datetime(2020, 5, 17, tzinfo=UTC))
    assert await client.call("receive") == [{"$bytes": [7]}, {"$date": "2020-05-17T00:00:00.000Z"}]
    # an upload of binary items
    assert (await client.step("upload", method="Sum", items=[1, 2]))["result"] == 3
    assert await client.step("stop") == {"state": "Disconnected"}
    await assert_stopped(server, cid, transport)
    await client.exit()


@pytest_twisted.ensureDeferred
async def test_messagepack_never_goes_over_server_sent_events(
    make_server: Any, core_client: Any
) -> None:
    """MessagePack needs Binary: forced to Server-Sent Events the client refuses to start
    (without trying the transport); with its defaults and the WebSocket refused it skips
    Server-Sent Events for long polling."""
    server = await make_server()
    forced = await core_client(
        server.core_url(HUB), transport="ServerSentEvents", protocol="messagepack"
    )
    message = await forced.error("start")
    assert message == (
        "Unable to connect to the server with any of the available transports. "
        "WebSockets failed: Error: 'WebSockets' is disabled by the client. "
        "ServerSentEvents failed: Error: 'ServerSentEvents' does not support Binary. "
        "LongPolling failed: Error: 'LongPolling' is disabled by the client."
    )
    assert [r[0] for r in forced.requests()] == ["fetch"]  # only negotiate
    assert core_events(server, "transport") == []
    assert core_events(server, "handshake") == []
    await forced.exit([f"Error: Failed to start the connection: Error: {message}"])

    server.refuse_transport("webSockets", 500, b"refused for the test")
    client, cid = await start_client(core_client, server.core_url(HUB), None, "messagepack")
    assert (await client.step("state"))["transport"] == "LongPollingTransport"
    assert "eventsource" not in {via for via, _, _, _ in client.requests()}
    (handshake,) = core_events(server, "handshake", cid)
    assert (handshake["protocol"], handshake["transport"]) == ("messagepack", "LongPolling")
    assert (await client.step("invoke", method="Add", args=[2, 3]))["result"] == 5
    assert await client.step("stop") == {"state": "Disconnected"}
    await client.exit([WEBSOCKET_REFUSED])


# ------------------------------------------------------------------ stateful reconnect


@pytest.mark.parametrize("protocol", ["json", "messagepack"])
@pytest_twisted.ensureDeferred
async def test_stateful_reconnect_resumes_mid_stream(
    make_server: Any, core_client: Any, protocol: str
) -> None:
    """withStatefulReconnect: the server drops the WebSocket while numbered client-method
    calls and invocations are in flight (some only buffered, as the transport was
    stalled); the client opens a new socket to the same connection, no negotiate, no
    handshake, no onreconnecting; every call arrives once, in order, and every
    invocation is answered once."""
    # the server never Acks during the test, so the client replays all it sent
    server = await make_server(core_stateful_reconnect=True, core_ack_interval=60.0)
    hub = hub_of(server)
    client, cid = await start_client(
        core_client,
        server.core_url(HUB),
        "WebSockets",
        protocol,
        statefulReconnect=True,
        reconnectDelays=[0],
    )
    await client.step("on", method="numbered", mode="record")
    (negotiate,) = core_events(server, "negotiate")
    assert negotiate["query"] == {"negotiateVersion": "1", "useStatefulReconnect": "true"}
    (handshake,) = core_events(server, "handshake", cid)
    assert (handshake["protocol"], handshake["version"], handshake["stateful"]) == (
        protocol,
        2,
        True,
    )

    count = 40
    calls = [{"method": "Numbered", "args": [count, 20]}] + [
        {"method": "Echo", "args": [i]} for i in range(20)
    ]
    many = defer.ensureDeferred(client.step("invokeMany", timeout=20, calls=calls, delayMs=40))
    await client.call("numbered", 8)
    seen = len(core_events(server, "invoke", cid))
    server.stall_transports()
    # invocations arrive and are answered while nothing is written: only buffered
    await wait_until(lambda: len(core_events(server, "invoke", cid)) >= seen + 2, "more calls")
    server.drop_all_transports()
    server.stall_transports(False)
    outcomes = await within(many, 20)

    assert outcomes[0] == {"settled": 1, "result": count}
    assert outcomes[1:] == [{"settled": 1, "result": i} for i in range(20)]
    assert client.calls("numbered") == [[i] for i in range(count)]
    # the server: one resume, with a replay; the client's replays dropped as handled
    assert len(core_events(server, "suspended", cid)) == 1
    (resumed,) = core_events(server, "resumed", cid)
    assert resumed["replayed"] > 0, resumed
    counts = server.core_stateful_counts
    assert counts["resumes"] == 1 and counts["replayed"] == resumed["replayed"]
    assert counts["duplicates"] > 0, counts
    targets = [e["target"] for e in core_events(server, "invoke", cid)]
    assert targets == ["Numbered"] + ["Echo"] * 20
    assert [r for r in hub.record if r[0] == "Numbered"] == [("Numbered", count)]
    # the client: no negotiate, no handshake, no reconnect events, same connection
    assert len(core_events(server, "negotiate")) == 1
    assert len(core_events(server, "handshake")) == 1
    websockets = [r for r in client.requests() if r[0] == "websocket"]
    assert websockets == [("websocket", "GET", "/hubs/interop id", 101)] * 2
    assert client.named("reconnecting") == [] and client.named("reconnected") == []
    assert (await client.step("state"))["connectionId"] == cid
    assert (await client.step("invoke", method="Echo", args=["after"]))["result"] == "after"
    assert cid in server.core_connections
    assert await client.step("stop") == {"state": "Disconnected"}
    await assert_stopped(server, cid, "WebSockets")
    # the drop is not even a warning to the client
    await client.exit([])


@pytest_twisted.ensureDeferred
async def test_stateful_resume_refused_falls_back_to_a_new_connection(
    make_server: Any, core_client: Any
) -> None:
    """When the connection is gone by the time the client's new socket comes (404), the
    client gives the stateful resume up and its automatic reconnect starts afresh."""
    server = await make_server(core_stateful_reconnect=True)
    client, cid1 = await start_client(
        core_client,
        server.core_url(HUB),
        "WebSockets",
        statefulReconnect=True,
        reconnectDelays=[0],
    )
    server.drop_all_transports()
    assert server.expire_core_connection(cid1)
    reconnected = await client.event("reconnected", timeout=8)
    cid2 = reconnected["connectionId"]
    assert cid2 != cid1 and cid2 in server.core_connections
    websockets = [r for r in client.requests() if r[0] == "websocket"]
    assert [status for *_, status in websockets] == [101, 404, 101]
    assert len(core_events(server, "negotiate")) == 2
    assert core_events(server, "resumed") == []
    assert core_events(server, "handshake", cid2)[0]["stateful"] is True
    assert (await client.step("invoke", method="GetConnectionId"))["result"] == cid2
    assert await client.step("stop") == {"state": "Disconnected"}
    # the client reports the drop once, as its resume failed
    await client.exit(
        [
            "Error: Connection disconnected with error "
            "'Error: WebSocket closed with status code: 1006 (no reason given).'."
        ]
    )

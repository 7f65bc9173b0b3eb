"""
Microsoft's classic JavaScript SignalR client (``signalr@2.4.3``, jQuery 3.7.1, in jsdom)
and two third-party Node clients (``node-signalr``, ``signalr-client``) run against
:mod:`txsignalr.testing` on 127.0.0.1.

Each client runs in its own node process (tests/js/*.js) while the server keeps running
in the test's reactor.  A harness prints ``EVENT`` lines as it goes and one ``RESULT``
JSON line; the tests check both what the client observed and what the server logged.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import pytest_twisted
from helpers import sleep, within
from twisted.internet import defer, protocol
from twisted.internet.task import LoopingCall

from txsignalr.testing import C3Hub, ChatHub, SignalRServer

#: Seconds a node process may run before the test kills it (the harnesses' own
#: watchdog fires at 12 s).
NODE_TIMEOUT = 15.0


# ----------------------------------------------------------------------------- harness


class NodeRun(protocol.ProcessProtocol):
    """One harness process: its EVENT lines, its RESULT line, its exit code."""

    def __init__(self, reactor: Any, description: str) -> None:
        self.reactor = reactor
        self.description = description
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._partial = b""
        self.events: list[tuple[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.killed = False
        self._ended: defer.Deferred[None] = defer.Deferred()
        self._event_waiters: dict[str, list[defer.Deferred[Any]]] = {}

    # -- ProcessProtocol
    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Any) -> None:
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self.exit_code = getattr(reason.value, "exitCode", None)
        for waiters in self._event_waiters.values():
            for d in waiters:
                d.errback(AssertionError(f"node ended before the event\n{self.report()}"))
        self._event_waiters.clear()
        self._ended.callback(None)

    def _line(self, line: str) -> None:
        if line.startswith("EVENT "):
            _, name, payload = line.split(" ", 2)
            data = json.loads(payload)
            self.events.append((name, data))
            for d in self._event_waiters.pop(name, []):
                d.callback(data)
        elif line.startswith("RESULT "):
            self.result = json.loads(line[len("RESULT ") :])

    # -- for tests
    def report(self) -> str:
        out = self.stdout.decode("utf-8", "replace")
        err = self.stderr.decode("utf-8", "replace")
        head = f"{self.description}: exit code {self.exit_code}"
        if self.killed:
            head += f" (killed after {NODE_TIMEOUT} s)"
        return f"{head}\n--- stdout\n{out}\n--- stderr\n{err}"

    async def event(self, name: str, timeout: float = 5.0) -> Any:
        """The data of the ``name`` EVENT (at once if already printed)."""
        for seen, data in self.events:
            if seen == name:
                return data
        if self._ended.called:
            raise AssertionError(f"node ended without {name}\n{self.report()}")
        d: defer.Deferred[Any] = defer.Deferred()
        self._event_waiters.setdefault(name, []).append(d)
        return await within(
            d, timeout, lambda: f"no {name} event within {timeout} s\n{self.report()}"
        )

    def command(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode("utf-8") + b"\n")

    async def finished(self, timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
        """Wait for the process to end; kill it after ``timeout``.  :returns: its RESULT."""
        timer = self.reactor.callLater(timeout, self._kill)
        try:
            await self._ended
        finally:
            if timer.active():
                timer.cancel()
        assert self.result is not None, f"no RESULT line\n{self.report()}"
        assert self.exit_code == 0 and self.result.get("ok") is True, self.report()
        return self.result

    def _kill(self) -> None:
        if self.transport is not None and not self._ended.called:
            self.killed = True
            self.transport.signalProcess("KILL")


def spawn(reactor: Any, js_env: Any, script: str, scenario: str, url: str, *extra: str) -> NodeRun:
    """Start ``node tests/js/<script> <scenario> <url> [extra…]`` without blocking the reactor."""
    run = NodeRun(reactor, " ".join(["node", script, scenario, *extra]))
    args = [js_env.node, str(js_env.directory / script), scenario, url, *extra]
    reactor.spawnProcess(run, js_env.node, args, env=dict(os.environ), path=str(js_env.directory))
    return run


def kinds(server: SignalRServer) -> list[str]:
    """The server's log kinds, without keep-alive noise."""
    return [kind for kind, _ in server.log if kind not in ("ping",)]


def received(server: SignalRServer) -> list[dict[str, Any]]:
    """Every hub invocation the server received, decoded."""
    return [json.loads(info["payload"]) for info in server.events("received")]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture
def node(reactor: Any, js_env: Any) -> Any:
    """``node(script, scenario, url)`` starts a harness; any still running at teardown is killed."""
    runs: list[NodeRun] = []

    def start(script: str, scenario: str, url: str, *extra: str) -> NodeRun:
        run = spawn(reactor, js_env, script, scenario, url, *extra)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run._kill()


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> Any:
    srv = SignalRServer(
        reactor,
        hubs=[C3Hub(interval=0.1), ChatHub()],
        keepalive=2.0,
        disconnect_timeout=6.0,
        negotiate_cookies={"affinity": "srv1"},
    )
    await srv.listen(port=0, interface="127.0.0.1")
    yield srv
    await srv.stop()


def assert_clean_session(
    server: SignalRServer, connection_id: str, client_protocol: str, transport: str = "webSockets"
) -> None:
    """negotiate -> connect -> start -> ... -> abort -> disconnected(stop_called) for one id."""
    log = kinds(server)
    for kind in ("negotiate", "connect", "start", "abort", "disconnected"):
        assert kind in log, (kind, log)
    assert log.index("negotiate") < log.index("connect") < log.index("start") < log.index("abort")
    assert "reconnect" not in log, log
    (connect,) = server.events("connect")
    assert connect["connection_id"] == connection_id
    assert connect["query"]["transport"] == transport
    assert connect["transport"] == transport
    assert connect["query"]["clientProtocol"] == client_protocol
    assert server.events("start")[0]["connection_id"] == connection_id
    assert [a["connection_id"] for a in server.events("abort")] == [connection_id]
    assert server.events("disconnected") == [
        {"connection_id": connection_id, "stop_called": True, "transport": transport}
    ]


# ------------------------------------------------------- Microsoft's jQuery client (2.4.3)

JQ = "jq_client.js"
TRANSPORTS = ("webSockets", "serverSentEvents", "longPolling")
#: how each transport's receive requests appear in the harness's request list.
RECEIVE_PREFIX = {"webSockets": "WS", "serverSentEvents": "SSE", "longPolling": "POST"}


def assert_one_transport(requests: list[str], transport: str) -> None:
    """Every request names ``transport`` and there is one /connect: no fallback."""
    assert [r for r in requests if "/connect " in r] == [
        r for r in requests if r.startswith(RECEIVE_PREFIX[transport] + " /signalr/connect ")
    ], requests
    assert len([r for r in requests if "/connect " in r]) == 1, requests
    for r in requests:
        if "/negotiate " not in r:
            assert f"transport={transport}" in r, r


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_jquery_connects_invokes_receives_and_stops(
    node: Any, server: SignalRServer, transport: str
) -> None:
    """The official client connects on each transport, gets results and pushes, and
    /abort ends it."""
    result = await node(JQ, "basic", server.url, transport).finished()
    assert result["transport"] == transport
    assert result["state"] == 1  # $.signalR.connectionState.connected
    requests = result["requests"]
    assert_one_transport(requests, transport)
    paths = [r.split(" ")[:2] for r in requests]
    assert paths[:3] == [
        ["GET", "/signalr/negotiate"],
        [RECEIVE_PREFIX[transport], "/signalr/connect"],
        ["GET", "/signalr/start"],
    ]
    assert paths[-1] == ["POST", "/signalr/abort"]
    sends = [p for p in paths if p[1] == "/signalr/send"]
    polls = [p for p in paths if p[1] == "/signalr/poll"]
    if transport == "webSockets":
        # negotiate, one WebSocket, start, abort - nothing else.
        assert len(paths) == 4, requests
    else:
        assert sends == [["POST", "/signalr/send"]] * 3, requests
        assert (len(polls) > 0) == (transport == "longPolling"), requests
    assert result["echo"] == {
        "ok": True,
        "hasResult": True,
        "result": {"a": [1, 2.5, {"b": None}], "s": "h\u00e9llo \u2603", "t": True},
        "progress": [],
    }
    assert result["echoCase"]["result"] == 42
    assert result["subscribe"]["result"] == [
        {"Success": True, "ErrorCode": None},
        {"Success": True, "ErrorCode": None},
        {"Success": False, "ErrorCode": "INVALID_CHANNEL"},
    ]
    first, second = result["ticks"]
    assert second["Seq"] == first["Seq"] + 1
    assert isinstance(first["Ts"], str)
    assert result["heartbeatArgs"] == 0
    assert result["groupsToken"] is True and result["messageId"] is True
    assert result["stateAfterStop"] == 4  # disconnected

    assert_clean_session(server, result["connectionId"], "2.1", transport)
    assert json.loads(server.events("connect")[0]["query"]["connectionData"]) == [{"name": "c3"}]
    # jsdom keeps the negotiate cookie and sends it on the upgrade and on /start; the
    # eventsource package is outside jsdom's cookie jar.
    expected = {} if transport == "serverSentEvents" else {"affinity": "srv1"}
    assert server.events("connect")[0]["cookies"] == expected
    assert server.events("start")[0]["cookies"] == {"affinity": "srv1"}
    assert [(m["H"], m["M"], m["I"]) for m in received(server)] == [
        ("c3", "Echo", 0),
        ("c3", "echo", 1),
        ("c3", "Subscribe", 2),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_jquery_hub_errors_carry_source_and_data(
    node: Any, server: SignalRServer, transport: str
) -> None:
    """A HubException reaches the client with its data; an unknown method is a plain error."""
    result = await node(JQ, "errors", server.url, transport).finished()
    assert result["transport"] == transport
    assert result["fail"] == {
        "ok": False,
        "message": "Intentional failure from c3.Fail()",
        "source": "HubException",
        "data": {"Code": 42, "Reason": "requested"},
        "progress": [],
    }
    # detailed errors are off: the generic text, built from the client's spelling.
    assert result["unknown"] == {
        "ok": False,
        "message": "There was an error invoking Hub method 'c3.NoSuchMethod'.",
        "source": "Exception",
        "data": "<undefined>",
        "progress": [],
    }
    assert result["after"]["result"] == "still alive"
    assert [m["M"] for m in received(server)] == ["Fail", "NoSuchMethod", "Echo"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_jquery_progress_callbacks(node: Any, server: SignalRServer, transport: str) -> None:
    """Progress reports reach the invocation deferred's .progress() before its result."""
    result = await node(JQ, "progress", server.url, transport).finished()
    assert result["transport"] == transport
    assert result["slow"] == {
        "ok": True,
        "hasResult": True,
        "result": "slept 300 ms",
        "progress": [20, 40, 60, 80, 100],
    }
    assert [(m["H"], m["M"], m["A"], m["I"]) for m in received(server)] == [
        ("c3", "Slow", [300], 0)
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_jquery_hub_state_round_trip(
    node: Any, server: SignalRServer, transport: str
) -> None:
    """Caller state goes up with each call and the changed keys come back into hub.state."""
    result = await node(JQ, "state", server.url, transport).finished()
    assert result["transport"] == transport
    assert result["increment"]["result"] == 6
    assert result["stateAfterIncrement"] == {
        "counter": 6,
        "name": "alice",
        "lastCalled": "IncrementCounter",
    }
    assert result["increment2"]["result"] == 7
    assert result["getName"]["result"] == "alice"
    sent = received(server)
    assert [m["M"] for m in sent] == ["IncrementCounter", "IncrementCounter", "GetName"]
    assert sent[0]["S"] == {"counter": 5, "name": "alice"}
    assert sent[1]["S"] == {"counter": 6, "name": "alice", "lastCalled": "IncrementCounter"}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_jquery_client_methods_on_two_hubs(
    node: Any, server: SignalRServer, transport: str
) -> None:
    """One connection with c3 and chat: each push reaches the handler of its own hub only."""
    result = await node(JQ, "twohubs", server.url, transport).finished()
    assert result["transport"] == transport
    assert result["send"] == {"ok": True, "hasResult": False, "result": None, "progress": []}
    got = result["got"]
    assert got["chatAdd"] == [["alice", "hi all"]]
    assert got["c3Add"] == 0 and got["chatTick"] == 0
    assert got["c3Tick"][1]["Seq"] == got["c3Tick"][0]["Seq"] + 1
    connection_data = json.loads(server.events("connect")[0]["query"]["connectionData"])
    assert sorted(h["name"] for h in connection_data) == ["c3", "chat"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_jquery_groups(node: Any, server: SignalRServer, transport: str) -> None:
    """SendToGroup reaches members only, and no longer after LeaveGroup."""
    result = await node(JQ, "groups", server.url, transport).finished()
    assert (result["transportA"], result["transportB"]) == (transport, transport)
    assert result["groupsTokenA"] is True
    assert result["gotA"] == [["g1", "to group"]]
    assert result["gotB"] == []
    assert len(server.events("connect")) == 2
    assert len(server.events("abort")) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_jquery_reconnects_after_server_drop_without_missing_pushes(
    reactor: Any, node: Any, server: SignalRServer, transport: str
) -> None:
    """After the server drops the TCP connection the client /reconnects with its cursor
    and groups token, and every push (broadcast and group) arrives exactly once, in order."""
    run = node(JQ, "reconnect", server.url, transport)
    await run.event("subscribed")

    sent: list[int] = []

    def push() -> None:
        n = len(sent) + 1
        server.send_to_all("c3", "pushed", {"Seq": n})
        sent.append(n)

    loop = LoopingCall(push)
    loop.clock = reactor
    loop.start(0.05)
    try:
        await sleep(0.4)
        reconnected = defer.ensureDeferred(within(server.when_event("reconnect"), 5))
        sent_before_drop = len(sent)
        server.drop_all_transports()
        info = await reconnected
        sent_while_down = len(sent) - sent_before_drop
        await run.event("reconnected")
        await sleep(0.5)
    finally:
        loop.stop()
    await sleep(0.3)
    run.command("stop")
    result = await run.finished()

    # The pushes made while the socket was gone were replayed from the cursor.
    assert sent_while_down >= 2, sent_while_down
    assert result["pushed"] == sent
    ticks = result["ticks"]
    assert len(ticks) >= 10, ticks
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), ticks
    # The client's own reconnect, on the same transport again.
    names = [name for name, _ in run.events]
    assert names.index("reconnecting") < names.index("reconnected"), names
    assert names.count("reconnected") == 1 and names[-1] == "disconnected", names
    assert result["transportAfterReconnect"] == transport
    prefix = RECEIVE_PREFIX[transport] + " /signalr/reconnect "
    reconnects = [r for r in result["requests"] if r.startswith(prefix)]
    assert len(reconnects) == 1, result["requests"]
    assert_one_transport(result["requests"], transport)
    # What the server saw: one connect, one reconnect carrying messageId and groupsToken
    # (in the query string; long polling puts them in the form body).
    assert len(server.events("connect")) == 1
    assert len(server.events("reconnect")) == 1
    assert info["transport"] == transport
    assert info["query"]["transport"] == transport
    assert info["message_id"] and info["groups_token"]
    if transport != "longPolling":
        assert f"messageId={info['message_id']}" in reconnects[0]
        assert f"groupsToken={info['groups_token']}" in reconnects[0]
        assert info["query"]["messageId"] == info["message_id"]
        assert info["query"]["groupsToken"] == info["groups_token"]
    assert info["cursor_valid"] is True
    assert info["groups"] == ["hg-c3.tick"]
    assert server.events("abort")[-1]["connection_id"] == info["connection_id"]


# ----------------------------------------------------------- third-party Node clients


@pytest_twisted.ensureDeferred
async def test_node_signalr_core_scenario(node: Any, server: SignalRServer) -> None:
    """node-signalr 3.1.0: connect, invoke with a result, a push, stop with /abort."""
    result = await node("node_signalr_client.js", "basic", server.url).finished()
    assert result["state"] == "Connected"
    assert result["echo"] == {"a": [1, 2.5], "s": "x"}
    assert result["subscribe"] == [{"Success": True, "ErrorCode": None}]
    assert result["ticks"][1]["Seq"] == result["ticks"][0]["Seq"] + 1
    assert [(r["line"].split(" ")[:2], r.get("status")) for r in result["requests"]] == [
        (["GET", "/signalr/negotiate"], 200),
        (["GET", "/signalr/connect"], None),  # the WebSocket upgrade
        (["GET", "/signalr/start"], 200),
        (["POST", "/signalr/abort"], 200),
    ]
    (connect,) = server.events("connect")
    assert_clean_session(server, connect["connection_id"], "1.5")
    assert [(m["M"], m["I"]) for m in received(server)] == [("Echo", 0), ("Subscribe", 1)]


@pytest_twisted.ensureDeferred
async def test_signalr_client_core_scenario(node: Any, server: SignalRServer) -> None:
    """signalr-client 0.0.20: connect, invoke with a result, a push (ids start at 1)."""
    result = await node("signalr_client_client.js", "basic", server.url).finished()
    assert result["echo"] == {"err": None, "result": {"a": [1, 2.5], "s": "x"}}
    assert result["subscribe"] == {"err": None, "result": [{"Success": True, "ErrorCode": None}]}
    assert result["ticks"][1]["Seq"] == result["ticks"][0]["Seq"] + 1
    assert [(m["M"], m["I"]) for m in received(server)] == [("Echo", 1), ("Subscribe", 2)]
    log = kinds(server)
    assert log.index("negotiate") < log.index("connect") < log.index("start")


@pytest_twisted.ensureDeferred
async def test_signalr_client_stop_is_seen_as_abort(node: Any, server: SignalRServer) -> None:
    """signalr-client's stop (its /abort names the wrong transport) still ends the connection."""
    result = await node("signalr_client_client.js", "basic", server.url).finished()
    abort = result["requests"][-1]
    assert abort["line"].startswith("POST /signalr/abort ")
    assert "transport=serverSentEvents" in abort["line"]
    (connect,) = server.events("connect")
    # Microsoft's server registers all four transports, so this /abort works there.
    assert abort.get("status") == 200, abort
    assert server.events("abort"), kinds(server)
    assert_clean_session(server, connect["connection_id"], "1.5")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("refused", "fallback"),
    [("webSockets", "serverSentEvents"), ("serverSentEvents", "longPolling")],
)
async def test_jquery_falls_back_when_a_transport_is_refused(
    node: Any, server: SignalRServer, refused: str, fallback: str
) -> None:
    """With refuse_transport the client's first transport fails and it falls back to
    the next one on the same connection token, then works as usual."""
    server.refuse_transport(refused, 500, b"refused for the test")
    result = await node(JQ, "basic", server.url, f"{refused},{fallback}").finished()
    assert result["transport"] == fallback
    assert result["echoCase"]["result"] == 42
    connects = [r for r in result["requests"] if "/connect " in r]
    assert [c.split(" ")[0] for c in connects] == [
        RECEIVE_PREFIX[refused],
        RECEIVE_PREFIX[fallback],
    ]
    assert [e["transport"] for e in server.events("refused")] == [refused]
    assert_clean_session(server, result["connectionId"], "2.1", fallback)

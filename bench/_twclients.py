"""
Benchmark clients that run on Twisted, each in a child process of a benchmark script.

Each ``*_main`` coroutine takes the reactor, the server URL and the workload size and
returns a JSON-able result; :func:`child_main` runs one and hands the result to the
parent with :func:`_common.emit_result`.

The "floor" clients are bare autobahn WebSocket clients doing the least a SignalR
client could do with the same frames: decode the JSON (with the same decoder
txsignalr uses) and count, or send and wait for the echo.  They are the physical
limit of Twisted + autobahn + JSON on this machine.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from _common import ECHO_VALUE, HUB, emit_result, jdumps, jloads, open_fds, pin_cpu, rss_kib


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _raw_ws_url(http_url: str) -> str:
    return "ws" + http_url[4:] + "/connect?transport=webSockets&connectionToken=raw"


#: The cheapest settings autobahn offers, the same txsignalr uses: no timers, no UTF-8
#: validation (the JSON decoder checks UTF-8 anyway), TCP_NODELAY.
CHEAPEST_OPTIONS: dict[str, Any] = {
    "autoPingInterval": 0,
    "autoPingTimeout": 0,
    "openHandshakeTimeout": 0,
    "closeHandshakeTimeout": 0,
    "serverConnectionDropTimeout": 0,
    "utf8validateIncoming": False,
    "tcpNoDelay": True,
}


def _connect_raw(reactor: Any, url: str, protocol: Any) -> Any:
    """Open one bare autobahn WebSocket to the bench server (raw token: no SignalR)."""
    from autobahn.twisted.websocket import WebSocketClientFactory

    ws_url = _raw_ws_url(url)
    factory = WebSocketClientFactory(ws_url)
    factory.protocol = protocol
    factory.setProtocolOptions(**CHEAPEST_OPTIONS)
    parts = urlsplit(ws_url)
    reactor.connectTCP(parts.hostname, parts.port, factory)
    return factory


# --------------------------------------------------------------------- receive


class _Meter:
    """Counts delivered calls and times the span from the first to the last."""

    __slots__ = ("count", "cpu0", "cpu1", "done", "n", "t0", "t1")

    def __init__(self, n: int) -> None:
        from twisted.internet.defer import Deferred

        self.n = n
        self.count = 0
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0
        self.done: Deferred[None] = Deferred()

    def first(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = _cpu()

    def last(self) -> None:
        self.t1 = time.perf_counter()
        self.cpu1 = _cpu()
        self.done.callback(None)

    def result(self) -> dict[str, Any]:
        span = self.t1 - self.t0
        calls = self.n - 1  # the first call starts the clock
        return {
            "calls": self.n,
            "seconds": span,
            "calls_per_s": calls / span if span > 0 else None,
            "cpu_us_per_call": (self.cpu1 - self.cpu0) / calls * 1e6 if calls else None,
        }


async def floor_stream_main(reactor: Any, url: str, n: int) -> dict[str, Any]:
    """Bare autobahn: decode every frame's JSON and count the calls in ``M``."""
    from autobahn.twisted.websocket import WebSocketClientProtocol

    meter = _Meter(n)
    loads = jloads

    class Floor(WebSocketClientProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            msgs = loads(payload).get("M")
            if msgs:
                before = meter.count
                meter.count = after = before + len(msgs)
                if before == 0:
                    meter.first()
                if after >= meter.n and before < meter.n:
                    meter.last()
                    self.sendClose()

    _connect_raw(reactor, url, Floor)
    await meter.done
    return meter.result()


async def txsignalr_stream_main(
    reactor: Any, url: str, n: int, transport: str = "webSockets"
) -> dict[str, Any]:
    """txsignalr over ``transport``: calls delivered to a ``hub.on("tick", handler)``
    handler."""
    from txsignalr import HubConnection

    meter = _Meter(n)

    def on_tick(*args: Any) -> None:
        meter.count += 1
        c = meter.count
        if c == 1:
            meter.first()
        elif c == meter.n:
            meter.last()

    conn = HubConnection(reactor, url, transports=[transport])
    conn.hub(HUB).on("tick", on_tick)
    await conn.start()
    in_use = conn.transport
    await meter.done
    result = meter.result()
    await conn.stop()
    # What the client says it used; the parent checks what the server saw.
    result["transport_in_use"] = None if in_use is None else in_use.value
    return result


# --------------------------------------------------------------------- invoke


def _latencies(samples_ns: list[int], cpu_s: float) -> dict[str, Any]:
    s = sorted(samples_ns)
    k = len(s)

    def pct(p: float) -> float:
        return s[min(k - 1, int(p * k))] / 1000.0

    return {
        "calls": k,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "mean_us": sum(s) / k / 1000.0,
        "cpu_us_per_call": cpu_s / k * 1e6,
    }


async def timed_calls(call: Callable[[int], Any], n: int, warmup: int) -> dict[str, Any]:
    """``await call(i)`` for ``warmup + n`` calls, one at a time; the latencies of the
    last ``n`` and the client's CPU over them, plus ``"last"``, the last result."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    cpu0 = _cpu()
    result = None
    for i in range(warmup + n):
        if i == warmup:
            cpu0 = _cpu()
        t0 = clock()
        result = await call(i)
        t1 = clock()
        if i >= warmup:
            samples.append(t1 - t0)
    return _latencies(samples, _cpu() - cpu0) | {"last": result}


async def floor_echo_main(reactor: Any, url: str, n: int, warmup: int) -> dict[str, Any]:
    """Bare autobahn: send the encoded invocation, wait for the echo, decode it."""
    from autobahn.twisted.websocket import WebSocketClientProtocol
    from twisted.internet.defer import Deferred

    opened: Deferred[Any] = Deferred()
    waiting: list[Deferred[Any]] = []

    class Echo(WebSocketClientProtocol):
        def onOpen(self) -> None:
            opened.callback(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            waiting.pop().callback(jloads(payload))

    _connect_raw(reactor, url, Echo)
    proto = await opened

    def call(i: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        waiting.append(d)
        proto.sendMessage(jdumps({"H": HUB, "M": "Echo", "A": [ECHO_VALUE], "I": i}))
        return d

    out = await timed_calls(call, n, warmup)
    reply = out.pop("last")
    assert reply["A"] == [ECHO_VALUE], reply
    proto.sendClose()
    return out


async def txsignalr_invoke_main(
    reactor: Any, url: str, n: int, warmup: int, transport: str = "webSockets"
) -> dict[str, Any]:
    """txsignalr over ``transport``: ``await hub.invoke("Echo", x)``, one at a time
    (over serverSentEvents and longPolling each call is a form ``POST /send`` whose
    answer carries the result)."""
    from txsignalr import HubConnection

    conn = HubConnection(reactor, url, transports=[transport])
    hub = conn.hub(HUB)
    await conn.start()
    out = await timed_calls(lambda i: hub.invoke("Echo", ECHO_VALUE), n, warmup)
    assert out.pop("last") == ECHO_VALUE, out
    in_use = conn.transport
    await conn.stop()
    out["transport_in_use"] = None if in_use is None else in_use.value
    return out


# --------------------------------------------------------------------- idle


async def _idle_run(
    reactor: Any, n: int, concurrency: int, idle: float, one: Callable[[], Any]
) -> dict[str, Any]:
    """
    Open ``n`` connections with ``one()`` (at most ``concurrency`` at a time) and
    measure RSS and file descriptors per connection, the time to open them all, and
    the CPU the process burns while they sit idle for ``idle`` seconds.
    """
    from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults
    from twisted.internet.task import deferLater

    failures: list[str] = []

    async def guarded() -> None:
        try:
            await one()
        except Exception as e:
            failures.append(f"{type(e).__name__}: {e}")

    await guarded()  # warm up imports and one-off caches before the baseline
    if failures:
        return {"error": failures[0]}
    gc.collect()
    base = rss_kib()
    fds0 = open_fds()
    sem = DeferredSemaphore(concurrency)
    t0, c0 = time.perf_counter(), _cpu()
    await gatherResults([sem.run(lambda: ensureDeferred(guarded())) for _ in range(n)])
    elapsed, connect_cpu = time.perf_counter() - t0, _cpu() - c0
    gc.collect()
    rss = rss_kib()
    fds = open_fds()
    opened = n - len(failures)
    cpu0, w0 = _cpu(), time.perf_counter()
    await deferLater(reactor, idle, lambda: None)
    cpu1, w1 = _cpu(), time.perf_counter()
    result: dict[str, Any] = {
        "connections": opened,
        "failed": len(failures),
        "connect_seconds": elapsed,
        "connections_per_s": opened / elapsed,
        "cpu_ms_per_connection": connect_cpu / max(1, opened) * 1e3,
        "rss_base_kib": base,
        "rss_kib": rss,
        "kib_per_connection": (rss - base) / max(1, opened),
        "fds_per_connection": (fds - fds0) / max(1, opened),
        "idle_cpu_percent": (cpu1 - cpu0) / (w1 - w0) * 100,
    }
    if failures:
        result["error"] = f"{len(failures)} of {n} failed, first: {failures[0]}"
    return result


async def floor_idle_main(
    reactor: Any, url: str, n: int, concurrency: int, idle: float
) -> dict[str, Any]:
    """N bare autobahn WebSockets (no negotiate, no /start): the memory floor."""
    from autobahn.twisted.websocket import WebSocketClientProtocol
    from twisted.internet.defer import Deferred

    protos: list[Any] = []

    class Idle(WebSocketClientProtocol):
        def onOpen(self) -> None:
            protos.append(self)
            self.factory.opened.callback(None)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            jloads(payload)

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            opened = self.factory.opened
            if not opened.called:
                opened.errback(ConnectionError(reason or "closed"))

    def one() -> Deferred[None]:
        factory = _connect_raw(reactor, url, Idle)
        factory.opened = Deferred()
        factory.clientConnectionFailed = lambda c, r: factory.opened.errback(r)
        return factory.opened  # type: ignore[no-any-return]

    return await _idle_run(reactor, n, concurrency, idle, one)


async def txsignalr_idle_main(
    reactor: Any, url: str, n: int, concurrency: int, idle: float, transport: str = "webSockets"
) -> dict[str, Any]:
    """N started txsignalr HubConnections over ``transport``, each with one hub proxy
    and one handler."""
    from txsignalr import HubConnection

    conns: list[Any] = []

    def noop(*args: Any) -> None:
        pass

    async def one() -> None:
        conn = HubConnection(reactor, url, transports=[transport])
        conn.hub(HUB).on("tick", noop)
        await conn.start()
        conns.append(conn)

    return await _idle_run(reactor, n, concurrency, idle, one)


# --------------------------------------------------------------------- entry


def child_main(run: Callable[..., Coroutine[Any, Any, dict[str, Any]]], *args: Any) -> None:
    """Run one client coroutine on the default reactor and emit its result."""
    pin_cpu(int(os.environ.get("BENCH_CPU", "1")))
    from twisted.internet import defer, task

    async def main(reactor: Any) -> None:
        try:
            result = await run(reactor, *args)
        except Exception as e:  # report, do not hang the parent
            result = {"error": f"{type(e).__name__}: {e}"}
        emit_result(result)

    def react_main(reactor: Any) -> Any:
        return defer.ensureDeferred(main(reactor))

    try:
        task.react(react_main)
    except SystemExit:
        pass
    # Do not wait for thousands of sockets to close politely.
    os._exit(0)

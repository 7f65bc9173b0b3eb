"""
ASP.NET Core benchmark clients that run on Twisted, each in a child process of
``core_throughput.py`` (as :mod:`_twclients` is for the classic benchmarks).

* ``txsignalr_*``: ``HubConnection(reactor, url, protocol="core", hub_protocol=…,
  transports=[…])`` receiving the ``tick`` calls (``conn.on``) or the ``Counter``
  stream items (``async for item in conn.stream(…)``).
* ``floor_*``: the least a Core client could do with the same bytes, per transport: a
  bare autobahn WebSocket (the cheapest options, as ``_twclients``), a bare treq
  streaming reader of the event stream (``unbuffered=True`` + ``collect``), or a bare
  treq poll loop; each splits the records (on ``0x1e``, or by varint length) and decodes
  each with orjson / ormsgpack, counting the Invocations (or StreamItems).  Negotiate
  and handshake happen before the clock starts, as for txsignalr.
* ``floor_echo_main`` / ``txsignalr_invoke_main`` (``invoke.py``): the invoke round
  trip, a bare autobahn client encoding each ``Echo`` Invocation and decoding its
  Completion, against ``await conn.invoke("Echo", x)`` over each transport.
* ``txsignalr_idle_main`` (``connections.py``): N started Core connections held idle.
* ``decode_main``: no I/O at all, the cheapest decode of the same pre-encoded records
  in a tight loop (``orjson.loads`` / ``ormsgpack.unpackb`` per record).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from _common import ECHO_VALUE
from _core_server import RS, item_record, split_records, tick_record, varint
from _twclients import CHEAPEST_OPTIONS, _cpu, _idle_run, _Meter, timed_calls

try:
    import ormsgpack
except ImportError:  # pragma: no cover - the MessagePack rows then fail with the reason
    ormsgpack = None


def _after_handshake(protocol: str, kind: int, n: int) -> bytes:
    """What a floor sends after the handshake: for StreamItems (``kind`` 2), the
    ``Counter`` StreamInvocation; for the tick stream, nothing."""
    if kind != 2:
        return b""
    if protocol == "json":
        return b'{"type":4,"invocationId":"0","target":"Counter","arguments":[%d]}' % n + RS
    body = ormsgpack.packb([4, {}, "0", "Counter", [n]])
    return varint(len(body)) + body


HANDSHAKE = {
    "json": b'{"protocol":"json","version":1}' + RS,
    "messagepack": b'{"protocol":"messagepack","version":1}' + RS,
}


def _counter(meter: _Meter, protocol: str, kind: int) -> Any:
    """``records(list_of_record_bytes)``: decode each, count those of type ``kind``."""
    if protocol == "json":
        loads = orjson.loads

        def records(recs: list[bytes]) -> None:
            for r in recs:
                if loads(r)["type"] == kind:
                    c = meter.count = meter.count + 1
                    if c == 1:
                        meter.first()
                    elif c == meter.n:
                        meter.last()

    else:
        unpackb = ormsgpack.unpackb

        def records(recs: list[bytes]) -> None:
            for r in recs:
                if unpackb(r)[0] == kind:
                    c = meter.count = meter.count + 1
                    if c == 1:
                        meter.first()
                    elif c == meter.n:
                        meter.last()

    return records


def _http(reactor: Any) -> tuple[Any, Any]:
    """A treq HTTPClient with a persistent pool of its own (closed by the caller)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    return HTTPClient(Agent(reactor, pool=pool)), pool


async def _negotiate(http: Any, url: str) -> str:
    response = await http.post(url + "/negotiate?negotiateVersion=1")
    body = await response.content()
    token: str = orjson.loads(body)["connectionToken"]
    return f"{url}?id={token}"


async def _core_ws(
    reactor: Any, url: str, protocol: str, received: Callable[[bytes, bool], None]
) -> Any:
    """
    Negotiate, open a bare autobahn WebSocket with the cheapest options and send the
    handshake.  Returns the connected protocol once the handshake is answered; from
    then on autobahn hands each message straight to ``received(payload, is_binary)``.
    """
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet.defer import Deferred

    http, pool = _http(reactor)
    conn_url = await _negotiate(http, url)
    await pool.closeCachedConnections()
    handshaken: Deferred[Any] = Deferred()

    class Floor(WebSocketClientProtocol):
        def onOpen(self) -> None:
            self.sendMessage(HANDSHAKE[protocol])

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            # the handshake answer, {}\x1e: later messages skip this method
            self.onMessage = received  # type: ignore[method-assign]
            handshaken.callback(self)

    ws_url = "ws" + conn_url[4:]
    factory = WebSocketClientFactory(ws_url)
    factory.protocol = Floor
    factory.setProtocolOptions(**CHEAPEST_OPTIONS)
    parts = urlsplit(ws_url)
    reactor.connectTCP(parts.hostname, parts.port, factory)
    return await handshaken


async def floor_ws_main(reactor: Any, url: str, n: int, protocol: str, kind: int) -> dict[str, Any]:
    """Bare autobahn: handshake, then split each message's records and decode them."""
    meter = _Meter(n)
    records = _counter(meter, protocol, kind)

    if protocol == "json":

        def received(payload: bytes, is_binary: bool) -> None:
            records(payload.split(RS)[:-1])

    else:

        def received(payload: bytes, is_binary: bool) -> None:
            records(split_records(payload, "messagepack")[0])

    proto = await _core_ws(reactor, url, protocol, received)
    invocation = _after_handshake(protocol, kind, n)
    if invocation:
        proto.sendMessage(invocation, isBinary=protocol != "json")
    await meter.done
    proto.sendClose()
    return meter.result() | {"transport_in_use": "webSockets", "hub_protocol": protocol}


async def floor_sse_main(
    reactor: Any, url: str, n: int, protocol: str, kind: int
) -> dict[str, Any]:
    """Bare treq: a streaming GET of the event stream; split events, lines, records."""
    from twisted.internet.defer import Deferred

    http, _pool = _http(reactor)
    conn_url = await _negotiate(http, url)
    meter = _Meter(n)
    records = _counter(meter, protocol, kind)
    response = await http.get(conn_url, headers={"Accept": ["text/event-stream"]}, unbuffered=True)
    buf = [b""]
    handshaken: Deferred[None] = Deferred()

    def on_data(data: bytes) -> None:
        events = (buf[0] + data).split(b"\r\n\r\n")
        buf[0] = events.pop()
        for event in events:
            for line in event.split(b"\r\n"):
                if line.startswith(b"data: "):
                    recs = line[6:].split(RS)[:-1]
                    if not handshaken.called:
                        handshaken.callback(None)  # the first event is {}\x1e
                        recs = recs[1:]
                    records(recs)

    import treq

    collected = treq.collect(response, on_data)
    await (await http.post(conn_url, data=HANDSHAKE[protocol])).content()
    await handshaken
    invocation = _after_handshake(protocol, kind, n)
    if invocation:
        await (await http.post(conn_url, data=invocation)).content()
    await meter.done
    # The stream stays open: the child exits right after reporting.
    collected.addErrback(lambda _: None)
    return meter.result() | {"transport_in_use": "serverSentEvents", "hub_protocol": protocol}


async def floor_lp_main(reactor: Any, url: str, n: int, protocol: str, kind: int) -> dict[str, Any]:
    """Bare treq: a poll loop, each body's records split and decoded."""
    http, pool = _http(reactor)
    conn_url = await _negotiate(http, url)
    meter = _Meter(n)
    records = _counter(meter, protocol, kind)
    if protocol == "json":

        def split(payload: bytes) -> list[bytes]:
            return payload.split(RS)[:-1]

    else:

        def split(payload: bytes) -> list[bytes]:
            return split_records(payload, "messagepack")[0]

    await (await http.get(conn_url)).content()  # the first poll: 200 empty
    await (await http.post(conn_url, data=HANDSHAKE[protocol])).content()
    body = await (await http.get(conn_url)).content()
    assert body == b"{}" + RS, body
    invocation = _after_handshake(protocol, kind, n)
    if invocation:
        await (await http.post(conn_url, data=invocation)).content()
    get = http.get
    while not meter.done.called:
        response = await get(conn_url)
        records(split(await response.content()))
    await (await http.delete(conn_url)).content()
    await pool.closeCachedConnections()
    return meter.result() | {"transport_in_use": "longPolling", "hub_protocol": protocol}


async def txsignalr_main(
    reactor: Any, url: str, n: int, protocol: str, transport: str, mode: str
) -> dict[str, Any]:
    """txsignalr: ``conn.on("tick", handler)`` (mode ``stream``), ``async for item in
    conn.stream("Counter", n)`` (mode ``counter``) or ``conn.stream("Counter",
    n).each(callback)`` (mode ``each``)."""
    from txsignalr import HubConnection

    meter = _Meter(n)
    conn = HubConnection(
        reactor,
        url,
        protocol="core",
        hub_protocol=protocol,
        transports=[transport],
        reconnect_delay=None,
    )

    def one(*args: Any) -> None:
        meter.count += 1
        c = meter.count
        if c == 1:
            meter.first()
        elif c == meter.n:
            meter.last()

    if mode == "stream":
        conn.on("tick", one)
    await conn.start()
    in_use = conn.transport
    hub_protocol = conn.hub_protocol
    if mode == "counter":
        async for _ in conn.stream("Counter", n):
            meter.count += 1
            c = meter.count
            if c == 1:
                meter.first()
            elif c == meter.n:
                meter.last()
    elif mode == "each":
        await conn.stream("Counter", n).each(one)
    await meter.done
    result = meter.result()
    await conn.stop()
    # What the client says it used; the parent checks what the server saw.
    result["transport_in_use"] = None if in_use is None else in_use.value
    result["hub_protocol"] = hub_protocol
    return result


async def decode_main(reactor: Any, n: int, protocol: str, mode: str) -> dict[str, Any]:
    """No I/O: decode the same pre-encoded records, one call per record, in a loop."""
    if mode == "stream":
        framed = [tick_record(seq, protocol) for seq in range(n)]
    else:
        framed = [item_record("0", seq, protocol) for seq in range(n)]
    recs = split_records(b"".join(framed), protocol)[0]
    loads = orjson.loads if protocol == "json" else ormsgpack.unpackb
    cpu0, t0 = _cpu(), time.perf_counter()
    for r in recs:
        loads(r)
    t1, cpu1 = time.perf_counter(), _cpu()
    span = t1 - t0
    return {
        "calls": n,
        "seconds": span,
        "calls_per_s": n / span if span > 0 else None,
        "cpu_us_per_call": (cpu1 - cpu0) / n * 1e6,
    }


# --------------------------------------------------------------------- invoke


_NOT_A_RESULT = object()


def _echo_invocation(protocol: str, invocation_id: int) -> bytes:
    """One framed ``Echo(ECHO_VALUE)`` Invocation, as a client encodes it."""
    if protocol == "json":
        return (
            orjson.dumps(
                {
                    "type": 1,
                    "invocationId": str(invocation_id),
                    "target": "Echo",
                    "arguments": [ECHO_VALUE],
                }
            )
            + RS
        )
    body = ormsgpack.packb([1, {}, str(invocation_id), "Echo", [ECHO_VALUE], []])
    return varint(len(body)) + body


async def floor_echo_main(
    reactor: Any, url: str, n: int, warmup: int, protocol: str
) -> dict[str, Any]:
    """Bare autobahn: negotiate and handshake, then encode each ``Echo`` Invocation,
    send it, wait for its Completion and decode it (the Core invoke floor)."""
    from twisted.internet.defer import Deferred

    waiting: list[Deferred[Any]] = []
    # Decode every message; only a Completion answers the waiting call (the server
    # also sends a Ping every 15 s).
    if protocol == "json":

        def decode(payload: bytes) -> Any:
            message = orjson.loads(payload[:-1])
            return message["result"] if message["type"] == 3 else _NOT_A_RESULT

    else:

        def decode(payload: bytes) -> Any:
            message = ormsgpack.unpackb(split_records(payload, "messagepack")[0][0])
            return message[4] if message[0] == 3 else _NOT_A_RESULT

    def received(payload: bytes, is_binary: bool) -> None:
        result = decode(payload)
        if result is not _NOT_A_RESULT and waiting:
            waiting.pop().callback(result)

    proto = await _core_ws(reactor, url, protocol, received)
    binary = protocol != "json"

    def call(i: int) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        waiting.append(d)
        proto.sendMessage(_echo_invocation(protocol, i), isBinary=binary)
        return d

    out = await timed_calls(call, n, warmup)
    assert out.pop("last") == ECHO_VALUE, out
    proto.sendClose()
    return out | {"transport_in_use": "webSockets", "hub_protocol": protocol}


async def txsignalr_invoke_main(
    reactor: Any, url: str, n: int, warmup: int, protocol: str, transport: str
) -> dict[str, Any]:
    """txsignalr: ``await conn.invoke("Echo", x)``, one at a time, over ``transport``
    (over SSE and long polling each Invocation is its own ``POST`` and the Completion
    comes back on the receive channel)."""
    from txsignalr import HubConnection

    conn = HubConnection(
        reactor,
        url,
        protocol="core",
        hub_protocol=protocol,
        transports=[transport],
        reconnect_delay=None,
    )
    await conn.start()
    in_use, hub_protocol = conn.transport, conn.hub_protocol
    out = await timed_calls(lambda i: conn.invoke("Echo", ECHO_VALUE), n, warmup)
    assert out.pop("last") == ECHO_VALUE, out
    await conn.stop()
    out["transport_in_use"] = None if in_use is None else in_use.value
    out["hub_protocol"] = hub_protocol
    return out


# --------------------------------------------------------------------- idle


async def txsignalr_idle_main(
    reactor: Any, url: str, n: int, concurrency: int, idle: float, protocol: str, transport: str
) -> dict[str, Any]:
    """N started Core HubConnections over ``transport``, each with one handler."""
    from txsignalr import HubConnection

    conns: list[Any] = []

    def noop(*args: Any) -> None:
        pass

    async def one() -> None:
        conn = HubConnection(
            reactor,
            url,
            protocol="core",
            hub_protocol=protocol,
            transports=[transport],
        )
        conn.on("tick", noop)
        await conn.start()
        conns.append(conn)

    return await _idle_run(reactor, n, concurrency, idle, one)

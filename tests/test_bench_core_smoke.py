"""
The ASP.NET Core half of the benchmarks: bench/_core_server.py speaks the Core protocol
(txsignalr receives exactly what it sends, over every transport and hub protocol), and
bench/core_throughput.py --smoke runs every row.  Nothing here looks at how fast
anything was.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

BENCH = Path(__file__).resolve().parent.parent / "bench"
WIRES = [
    ("webSockets", "json"),
    ("webSockets", "messagepack"),
    ("serverSentEvents", "json"),
    ("longPolling", "json"),
    ("longPolling", "messagepack"),
]


def _bench_module(name: str) -> Any:
    """A module of bench/ (scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


class _ServerThread:
    """A CoreBenchServer on its own asyncio loop in a thread, so the Twisted reactor
    of the test can run a real txsignalr client against it."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = _bench_module("_core_server").CoreBenchServer(**options)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.server.stop()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def core_server() -> Iterator[Any]:
    st = _ServerThread(ping_interval=0.2)
    yield st.server
    st.stop()


def _connect(url: str, transport: str, hub_protocol: str, **options: Any) -> Any:
    from txsignalr import HubConnection

    return HubConnection(
        reactor,
        url,
        protocol="core",
        hub_protocol=hub_protocol,
        transports=[transport],
        reconnect_delay=None,
        **options,
    )


@pytest.mark.parametrize(("transport", "hub_protocol"), WIRES)
@pytest_twisted.ensureDeferred
async def test_core_bench_server_scenarios(
    core_server: Any, transport: str, hub_protocol: str
) -> None:
    """Over each transport and hub protocol, txsignalr gets from the Core bench server
    exactly the N ticks of `stream` in order (4 to a message), the echo of its argument
    from `echo`, N stream items then the end from `counter` (twice on one connection),
    and stays connected on `idle` across pings; the server records every handshake's
    transport and hub protocol."""
    n = 23
    ticks: list[int] = []
    got_all: defer.Deferred[None] = defer.Deferred()

    def on_tick(value: Any) -> None:
        ticks.append(value["Seq"])
        if len(ticks) == n:
            got_all.callback(None)

    conn = _connect(core_server.url("stream", n=n, batch=4), transport, hub_protocol)
    conn.on("tick", on_tick)
    await conn.start()
    await got_all.addTimeout(10, reactor)
    assert (conn.transport.value, conn.hub_protocol) == (transport, hub_protocol)
    await conn.stop()
    assert ticks == list(range(n))

    conn = _connect(core_server.url("echo"), transport, hub_protocol)
    await conn.start()
    value = {"a": [1, 2.5, {"b": None}], "s": "h\u00e9llo \u2603", "t": True}
    assert await conn.invoke("Echo", value, timeout=10) == value
    assert await conn.invoke("Echo", 7, timeout=10) == 7
    await conn.stop()

    conn = _connect(core_server.url("counter", n=n, batch=5), transport, hub_protocol)
    await conn.start()
    for _ in range(2):
        items = [item async for item in conn.stream("Counter", n)]
        assert [i["Seq"] for i in items] == list(range(n))
    await conn.stop()

    # Pings every 0.2 s keep a 0.6 s server timeout happy (long polling has no timer).
    conn = _connect(core_server.url("idle"), transport, hub_protocol, server_timeout=0.6)
    await conn.start()
    await deferLater(reactor, 1.0, lambda: None)
    assert conn.state.value == "connected"
    await conn.stop()
    assert core_server.connects == [(transport, hub_protocol)] * 4


class _HTTP:
    """A minimal HTTP/1.1 client on one socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _HTTP:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def request(self, method: str, target: str, body: bytes = b"", accept: str = "") -> None:
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if accept:
            head += f"Accept: {accept}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)

    async def head(self) -> tuple[int, dict[str, str]]:
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), headers

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers = await self.head()
        return status, headers, await self.reader.readexactly(int(headers["content-length"]))

    async def chunk(self) -> bytes:
        size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
        data = await self.reader.readexactly(size)
        assert await self.reader.readexactly(2) == b"\r\n"
        return data


def test_core_bench_server_long_polling_and_sse_wire() -> None:
    """The Core bench server's wire, byte for byte: negotiate v1 lists the three
    transports with their formats; a long-polling connection's first GET answers 200
    empty, the handshake POST 200, the next polls `{}` then K records each as
    application/octet-stream, and after DELETE (202) a held poll gets 204; an SSE stream
    starts with the `:` comment and carries `data:` events with CRLF line ends, each in its
    own HTTP chunk as Kestrel writes them."""
    server_mod = _bench_module("_core_server")

    async def scenario() -> None:
        server = server_mod.CoreBenchServer()
        port = await server.start()
        base = "/core/stream/n=5/batch=2/hub"
        try:
            http = await _HTTP.open(port)
            http.request("POST", f"{base}/negotiate?negotiateVersion=1")
            status, _, body = await http.response()
            neg = json.loads(body)
            assert status == 200 and neg["negotiateVersion"] == 1 and neg["connectionId"]
            assert neg["availableTransports"] == [
                {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
                {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
                {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
            ]
            q = f"{base}?id={neg['connectionToken']}"
            poll, send = http, await _HTTP.open(port)
            poll.request("GET", q + "&_=1")
            assert await poll.response() == (200, {"content-type": "application/octet-stream",
                                                   "content-length": "0"}, b"")  # fmt: skip
            poll.request("GET", q + "&_=2")
            send.request("POST", q, b'{"protocol":"json","version":1}\x1e')
            assert (await send.response())[0] == 200
            assert (await poll.response())[2] == b"{}\x1e"
            bodies = []
            for i in range(3):
                poll.request("GET", f"{q}&_={3 + i}")
                status, headers, body = await poll.response()
                assert (status, headers["content-type"]) == (200, "application/octet-stream")
                bodies.append(body)
            records = [json.loads(r) for b in bodies for r in b.split(b"\x1e")[:-1]]
            assert [len(b.split(b"\x1e")) - 1 for b in bodies] == [2, 2, 1]
            assert [r["arguments"][0]["Seq"] for r in records] == [0, 1, 2, 3, 4]
            assert all((r["type"], r["target"]) == (1, "tick") for r in records)
            poll.request("GET", q + "&_=9")
            held = asyncio.ensure_future(poll.response())
            await asyncio.sleep(0.05)
            assert not held.done()
            send.request("DELETE", q)
            assert (await send.response())[0] == 202
            assert (await held)[0] == 204

            http = await _HTTP.open(port)
            http.request("POST", f"{base}/negotiate?negotiateVersion=1")
            token = json.loads((await http.response())[2])["connectionToken"]
            stream = await _HTTP.open(port)
            stream.request("GET", f"{base}?id={token}", accept="text/event-stream")
            status, headers = await stream.head()
            assert (status, headers["content-type"]) == (200, "text/event-stream")
            assert await stream.chunk() == b":\r\n"
            http.request("POST", f"{base}?id={token}", b'{"protocol":"json","version":1}\x1e')
            assert (await http.response())[0] == 200
            assert await stream.chunk() == b"data: {}\x1e\r\n\r\n"
            events = [await stream.chunk() for _ in range(3)]  # one HTTP chunk each
            assert all(e.startswith(b"data: ") and e.endswith(b"\x1e\r\n\r\n") for e in events)
            seqs = [
                [json.loads(r)["arguments"][0]["Seq"] for r in e[6:-4].split(b"\x1e")[:-1]]
                for e in events
            ]
            assert seqs == [[0, 1], [2, 3], [4]]
        finally:
            await server.stop()
        assert server.connects == [("longPolling", "json"), ("serverSentEvents", "json")]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_core_msgpack_framing_round_trips() -> None:
    """The bench server's MessagePack records are varint-framed arrays in the layout
    Microsoft's server writes ([1, {}, None, "tick", [value], []] for a tick); its own
    splitter gives them back whole."""
    m = _bench_module("_core_server")
    import ormsgpack

    data = b"".join(m.tick_record(i, "messagepack") for i in range(300))
    data += m.completion_record("7", "messagepack", "x" * 200)
    records, rest = m.split_records(data + b"\x85", "messagepack")
    assert rest == b"\x85"
    values = [ormsgpack.unpackb(r) for r in records]
    assert values[0] == [1, {}, None, "tick", [{"Seq": 0, "Ts": m.TS}], []]
    assert [v[4][0]["Seq"] for v in values[:-1]] == list(range(300))
    assert values[-1] == [3, {}, "7", 3, "x" * 200]
    assert m.varint(127) == b"\x7f" and m.varint(128) == b"\x80\x01"


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _assert_figures(name: str, client: dict[str, Any]) -> None:
    assert "error" not in client, (name, client)
    for key in ("calls_per_s", "us_per_call", "cpu_us_per_call", "client_seconds"):
        assert _positive(client[key]), (name, key, client)


def _run_core_bench(script: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=BENCH.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote" in proc.stdout, proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["benchmark"] == script and data["smoke"] is True
    assert data["environment"]["python"]
    return data


@pytest.mark.parametrize("script", ["core_throughput", "core_stream"])
def test_core_throughput_smoke(tmp_path: Path, script: str, js_env: Any) -> None:
    """core_throughput.py / core_stream.py --smoke run every row (JSON over the three
    transports, MessagePack over WebSockets and long polling) with txsignalr (for the
    stream also read with each()), its transport floor and Microsoft's Node client
    (which must run: the js_env fixture installs tests/js with npm ci), plus a
    decode-only floor per hub protocol; each run handshook with the transport and hub
    protocol asked, and every figure and ratio is positive."""
    data = _run_core_bench(script, tmp_path)
    assert data["mode"] == ("stream" if script == "core_throughput" else "counter")
    assert data["node"].startswith("@microsoft/signalr 10.0.11 on Node v"), data["node"]
    assert set(data["decode"]) == {"json", "messagepack"}
    for protocol, decode in data["decode"].items():
        assert "error" not in decode, (protocol, decode)
        assert _positive(decode["calls_per_s"]) and _positive(decode["cpu_us_per_call"])
    assert list(data["rows"]) == [
        "json/webSockets",
        "json/serverSentEvents",
        "json/longPolling",
        "messagepack/webSockets",
        "messagepack/longPolling",
    ]
    for row, result in data["rows"].items():
        protocol, transport = row.split("/")
        clients = {"floor", "txsignalr", "node"}
        if script == "core_stream":
            clients.add("txsignalr-each")  # conn.stream(...).each(callback)
        assert set(result["clients"]) == clients
        for name, client in result["clients"].items():
            _assert_figures(f"{row} {name}", client)
            assert [r["handshakes_seen"] for r in client["runs"]] == [[[transport, protocol]]]
            assert [r["transport_in_use"] for r in client["runs"]] == [transport]
        for key in ("ratio_txsignalr_vs_floor", "ratio_txsignalr_vs_decode",
                    "ratio_txsignalr_vs_node"):  # fmt: skip
            assert _positive(result[key]), (row, key, result)


def test_core_bench_server_refuses_messagepack_over_sse() -> None:
    """A MessagePack handshake over SSE is refused as .NET refuses it (an error
    handshake answer, then the stream ends) and is not recorded as a connect."""
    server_mod = _bench_module("_core_server")

    async def scenario() -> None:
        server = server_mod.CoreBenchServer()
        port = await server.start()
        base = "/core/stream/n=5/batch=1/hub"
        try:
            http = await _HTTP.open(port)
            http.request("POST", f"{base}/negotiate?negotiateVersion=1")
            token = json.loads((await http.response())[2])["connectionToken"]
            stream = await _HTTP.open(port)
            stream.request("GET", f"{base}?id={token}", accept="text/event-stream")
            assert (await stream.head())[0] == 200
            assert await stream.chunk() == b":\r\n"
            http.request(
                "POST", f"{base}?id={token}", b'{"protocol":"messagepack","version":1}\x1e'
            )
            assert (await http.response())[0] == 200
            event = await stream.chunk()
            assert event.startswith(b"data: ") and event.endswith(b"\x1e\r\n\r\n")
            assert json.loads(event[6:-5]) == {
                "error": "Cannot use the 'messagepack' protocol on the current transport. "
                "The transport does not support 'Binary' transfer format."
            }
            assert await stream.chunk() == b""  # the end of the chunked body
        finally:
            await server.stop()
        assert server.connects == []

    asyncio.run(asyncio.wait_for(scenario(), 30))

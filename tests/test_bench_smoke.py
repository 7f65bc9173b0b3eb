"""
The benchmarks in ``bench/`` keep working: each runs in ``--smoke`` mode, exits 0 and
writes well-formed JSON; the bench server speaks each transport as the protocol says.
Nothing here looks at how fast anything was.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
#: The signalr-async release bench/peer.py installs (its PEER_VERSION).
PEER_VERSION = "3.0.0"


def run_smoke(name: str, tmp_path: Path, timeout: float) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote" in proc.stdout, proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["benchmark"] == name
    assert data["smoke"] is True
    assert data["environment"]["python"]
    return data


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def assert_throughput(client: dict[str, Any]) -> None:
    assert "error" not in client, client
    for key in ("calls_per_s", "us_per_call", "cpu_us_per_call", "client_seconds"):
        assert positive(client[key]), (key, client)


def test_throughput_smoke(tmp_path: Path) -> None:
    """throughput.py --smoke measures the floor and txsignalr and their ratio."""
    data = run_smoke("throughput", tmp_path, timeout=180)
    assert data["calls"] > 0
    assert set(data["clients"]) == {"floor", "txsignalr"}
    for client in data["clients"].values():
        assert_throughput(client)
    assert positive(data["ratio_txsignalr_vs_floor"])


def test_peer_smoke(tmp_path: Path) -> None:
    """peer.py --smoke installs signalr-async (its pinned version, in bench/.peer-venv)
    and measures it beside txsignalr and the floor; a peer it could not install or run
    fails the test, with the reason peer.py recorded."""
    data = run_smoke("peer", tmp_path, timeout=900)
    clients = data["clients"]
    assert set(clients) == {"floor", "txsignalr", "signalr-async"}
    assert_throughput(clients["floor"])
    assert_throughput(clients["txsignalr"])
    peer = clients["signalr-async"]
    assert "error" not in peer, (
        "bench/peer.py could not measure signalr-async: "
        f"{peer['error']} (it pip-installs signalr-async and the aiohttp it works with, "
        "pinned by PEER_VERSION and PEER_AIOHTTP in bench/peer.py, into bench/.peer-venv)"
    )
    assert_throughput(peer)
    assert data["peer_version"].startswith(f"{PEER_VERSION} with aiohttp "), data
    assert positive(data["ratio_txsignalr_vs_peer"])


@pytest.mark.parametrize("transport", ["webSockets", "serverSentEvents", "longPolling"])
def test_throughput_smoke_per_transport(tmp_path: Path, transport: str) -> None:
    """throughput.py --smoke --transport X: txsignalr receives over X (the server saw it
    connect with X and nothing else) and gets figures."""
    out = tmp_path / f"throughput-{transport}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"), "--smoke", "--transport", transport,
         "--json", str(out)],
        capture_output=True, text=True, timeout=180, cwd=BENCH.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["transport"] == transport
    floor, ours = data["clients"]["floor"], data["clients"]["txsignalr"]
    assert_throughput(floor)
    assert_throughput(ours)
    assert [run["transports_seen"] for run in ours["runs"]] == [[transport]]
    assert positive(data["ratio_txsignalr_vs_floor"])


# ------------------------------------------------------------------ the bench server


def _bench_server() -> Any:
    """bench/_common.py's BenchServer (bench/ is scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCH))
    return _common.BenchServer


class _HTTP:
    """A minimal HTTP/1.1 client on one socket, enough to speak to the bench server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _HTTP:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, target: str, form: dict[str, str] | None = None) -> None:
        body = urlencode(form).encode() if form is not None else b""
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if form is not None:
            head += "Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n"
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

    def close(self) -> None:
        self.writer.close()


def _calls(frame: Any) -> list[int]:
    return [m["A"][0]["Seq"] for m in frame["M"]]


async def _negotiate(port: int, base: str) -> str:
    http = await _HTTP.open(port)
    await http.request("GET", f"{base}/negotiate?clientProtocol=1.5")
    status, _, body = await http.response()
    http.close()
    assert status == 200
    token: str = json.loads(body)["ConnectionToken"]
    return token


async def _call(port: int, method: str, target: str, form: dict[str, str] | None = None) -> bytes:
    http = await _HTTP.open(port)
    await http.request(method, target, form)
    status, _, body = await http.response()
    http.close()
    assert status == 200, (target, status, body)
    return body


def test_bench_server_speaks_server_sent_events() -> None:
    """The bench server's SSE channel: a chunked text/event-stream of `data: initialized`,
    the S:1 init frame, then after /start one `data:` event per frame; /send answers the
    hub result; /abort ends the stream."""

    async def scenario() -> None:
        server = _bench_server()()
        port = await server.start()
        base = "/stream/frames=3/batch=2/signalr"
        try:
            q = f"transport=serverSentEvents&connectionToken={await _negotiate(port, base)}"
            stream = await _HTTP.open(port)
            await stream.request("GET", f"{base}/connect?{q}")
            status, headers = await stream.head()
            assert (status, headers["content-type"]) == (200, "text/event-stream")
            assert headers["transfer-encoding"] == "chunked"
            assert await stream.chunk() == (
                b'data: initialized\n\ndata: {"C":"d-98046728-B,0|C,0|D,1","S":1,"M":[]}\n\n'
            )
            assert json.loads(await _call(port, "GET", f"{base}/start?{q}")) == {
                "Response": "started"
            }
            events = (await stream.chunk()).split(b"\n\n")
            assert events[-1] == b""
            assert all(e.startswith(b"data: ") for e in events[:-1])
            frames = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
            assert [_calls(f) for f in frames] == [[0, 1], [2, 3], [4, 5]]
            invocation = json.dumps({"H": "c3", "M": "Subscribe", "A": [["tick"]], "I": 7})
            answer = await _call(port, "POST", f"{base}/send?{q}", {"data": invocation})
            assert json.loads(answer) == {"I": "7"}
            await _call(port, "POST", f"{base}/abort?{q}", {})
            assert await stream.chunk() == b""  # the last chunk: the response is over
            stream.close()
        finally:
            await server.stop()
        assert server.connects == ["serverSentEvents"]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_bench_server_speaks_long_polling() -> None:
    """The bench server's long polling: POST /connect answers the S:1 init frame; each
    POST /poll, after /start, answers the frame after its messageId (form body or query)
    as one persistent response; past the last one the poll is held until /abort."""

    async def scenario() -> None:
        server = _bench_server()()
        port = await server.start()
        base = "/stream/frames=3/batch=2/signalr"
        try:
            q = f"transport=longPolling&connectionToken={await _negotiate(port, base)}"
            init = json.loads(await _call(port, "POST", f"{base}/connect?{q}", {}))
            assert init == {"C": "d-98046728-B,0|C,0|D,1", "S": 1, "M": []}
            poll = await _HTTP.open(port)  # one kept-alive socket for every poll
            await poll.request("POST", f"{base}/poll?{q}", {"messageId": init["C"]})
            await asyncio.sleep(0)
            await _call(port, "GET", f"{base}/start?{q}")
            status, headers, body = await poll.response()
            assert (status, headers["content-type"]) == (200, "application/json; charset=UTF-8")
            frames = [json.loads(body)]
            await poll.request("POST", f"{base}/poll?{q}", {"messageId": frames[-1]["C"]})
            frames.append(json.loads((await poll.response())[2]))
            await poll.request(
                "POST", f"{base}/poll?{q}&{urlencode({'messageId': frames[-1]['C']})}"
            )
            frames.append(json.loads((await poll.response())[2]))
            assert [_calls(f) for f in frames] == [[0, 1], [2, 3], [4, 5]]
            assert len({f["C"] for f in frames}) == 3
            await poll.request("POST", f"{base}/poll?{q}", {"messageId": frames[-1]["C"]})
            held = asyncio.ensure_future(poll.response())
            await asyncio.sleep(0.05)
            assert not held.done()
            await _call(port, "POST", f"{base}/abort?{q}", {})
            assert json.loads((await held)[2]) == {"C": frames[-1]["C"], "M": []}
            poll.close()
        finally:
            await server.stop()
        assert server.connects == ["longPolling"]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_msgpack_libs_smoke(tmp_path: Path) -> None:
    """msgpack_libs.py --smoke installs both libraries (pinned) and times every shape."""
    data = run_smoke("msgpack_libs", tmp_path, timeout=600)
    assert "error" not in data, data
    assert set(data["versions"]) == {"msgpack", "ormsgpack"}
    assert data["shapes"]
    for shape, row in data["shapes"].items():
        for key in ("msgpack_decode_ns", "ormsgpack_decode_ns", "msgpack_encode_ns"):
            assert positive(row[key]), (shape, key)
    assert all(all(c.values()) for c in data["capabilities"].values()), data["capabilities"]

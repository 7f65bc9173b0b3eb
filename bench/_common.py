"""
Shared pieces of the txsignalr benchmarks.

* :class:`BenchServer`: a tiny asyncio SignalR "server" that is never the bottleneck.
  It answers ``/negotiate``, ``/start``, ``/abort`` and ``/ping``, does the WebSocket
  handshake, and then, depending on the scenario named in the URL path, writes
  pre-encoded WebSocket frames as fast as the socket takes them (``stream``), answers
  hub invocations or echoes raw messages (``echo``), or just keeps the socket open
  with keep-alives (``idle``).  It runs in the parent process of each benchmark; the
  client under test runs in a child process, so each gets one of the two cores.
* Child-process plumbing (:func:`run_child`), results files, tables and RSS helpers.

This module uses only the standard library (plus orjson when installed), so the
signalr-async peer client, which runs in its own virtualenv, can share the frame
builders.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

try:
    import orjson

    def jloads(data: bytes | str) -> Any:
        return orjson.loads(data)

    def jdumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - the peer venv has no orjson

    def jloads(data: bytes | str) -> Any:
        return json.loads(data)

    def jdumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
RESULT_PREFIX = "BENCH-RESULT "
HUB = "c3"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: The Echo argument used by the invoke benchmark (the transcript's Echo payload).
ECHO_VALUE: Any = {"a": [1, 2.5, {"b": None}], "s": "h\u00e9llo \u2603", "t": True}


# ----------------------------------------------------------------- frames


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One unmasked, unfragmented server-to-client WebSocket frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


#: The init frame (``S:1``) every receive channel starts with, and its cursor.
INIT_CURSOR = "d-98046728-B,0|C,0|D,1"
INIT_FRAME = b'{"C":"%s","S":1,"M":[]}' % INIT_CURSOR.encode()

#: The transports the bench server speaks, by their wire names.
TRANSPORTS = ("webSockets", "serverSentEvents", "longPolling")


def tick_cursor(seq: int) -> str:
    """The cursor (``C``) of stream frame number ``seq``."""
    return f"d-98046728-B,0|C,0|D,4|E,{seq:X}|F,4|G,4"


def tick_payload(seq: int, batch: int) -> bytes:
    """
    A persistent response carrying ``batch`` ``c3.tick`` client-method calls, shaped
    like the frames in transcript 02 (cursor, then ``M``).
    """
    calls = ",".join(
        f'{{"H":"c3","M":"tick","A":[{{"Seq":{seq * batch + i},'
        f'"Ts":"2026-11-26T00:49:37.3991840Z"}}]}}'
        for i in range(batch)
    )
    return f'{{"C":"{tick_cursor(seq)}","M":[{calls}]}}'.encode()


def sse_event(payload: bytes) -> bytes:
    """One Server-Sent Events ``data:`` event (classic.md §1.3, transcript 03)."""
    return b"data: " + payload + b"\n\n"


def http_chunk(data: bytes) -> bytes:
    """One chunk of a ``Transfer-Encoding: chunked`` body, as the real server streams SSE."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def http_response(
    status: int,
    body: bytes,
    content_type: bytes = b"application/json; charset=UTF-8",
    keep_alive: bool = True,
) -> bytes:
    """A complete HTTP/1.1 response with a ``Content-Length``."""
    close = b"" if keep_alive else b"Connection: close\r\n"
    return b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status,
        content_type,
        close,
        len(body),
        body,
    )


def stream_chunks(
    frames: int, batch: int, chunk_size: int = 256 * 1024, transport: str = "webSockets"
) -> list[bytes]:
    """
    ``frames`` pre-encoded frames, joined into frame-aligned chunks of about
    ``chunk_size`` bytes (so a keep-alive can be written between two chunks): WebSocket
    frames, or for ``serverSentEvents`` ``data:`` events, each chunk one HTTP chunk.
    For ``longPolling`` each element is one whole poll response (one frame).
    """
    if transport == "longPolling":
        return [http_response(200, tick_payload(seq, batch)) for seq in range(frames)]
    encode = ws_frame if transport == "webSockets" else sse_event
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for seq in range(frames):
        f = encode(tick_payload(seq, batch))
        current.append(f)
        size += len(f)
        if size >= chunk_size:
            chunks.append(b"".join(current))
            current, size = [], 0
    if current:
        chunks.append(b"".join(current))
    if transport == "serverSentEvents":
        chunks = [http_chunk(c) for c in chunks]
    return chunks


# ----------------------------------------------------------------- server


async def read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    """
    Read one HTTP/1.1 request: ``(method, target, headers, body)`` with header names
    lower-cased, or ``None`` once the client closed the socket.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target = lines[0].split(" ", 2)[:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return method, target, headers, body


def ws_upgrade_response(headers: dict[str, str]) -> bytes:
    """The ``101 Switching Protocols`` answer to a WebSocket upgrade request."""
    key = headers.get("sec-websocket-key", "").encode()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
    )


class _Conn:
    """The server side of one connection's receive channel (a WebSocket, an SSE
    response, or the long polls of one connection token)."""

    def __init__(
        self, transport: str, writer: asyncio.StreamWriter | None, scenario: dict[str, str]
    ) -> None:
        self.transport = transport
        self.writer = writer  # None for long polling: each poll has its own
        self.scenario = scenario
        self.started = asyncio.Event()
        self.aborted = asyncio.Event()
        self.closed = False


class BenchServer:
    """
    A SignalR-shaped server for benchmarks, listening on 127.0.0.1.

    The scenario is taken from the URL path: ``/<scenario>/<k>=<v>/…/signalr``:

    * ``stream/frames=N/batch=B``: after ``/start`` (or at once for the raw
      connection token ``raw``) write N pre-encoded frames of B calls each.
    * ``echo``: answer ``{"H","M","A","I"}`` invocations with ``{"R":A[0],"I":I}``;
      with the raw token, echo every text message verbatim.
    * ``idle``: nothing but keep-alives.

    The receive channel is the transport the client asks for (classic.md §1.3, §1.5):
    a WebSocket; ``GET /connect?transport=serverSentEvents``, a chunked
    ``text/event-stream`` response of ``data: initialized`` then one ``data:`` event
    per frame; or ``POST /connect?transport=longPolling``, which answers the init
    frame, and ``POST /poll``, each answering one frame (``batch`` calls) as a single
    persistent response picked by the poll's ``messageId`` (query or form body), or
    held until ``/abort`` once the stream is over.  SSE and long polling send with a
    form ``POST /send`` (``data=…``), answered in its body.

    Every open WebSocket and SSE stream gets a ``{}`` keep-alive every ``keep_alive``
    seconds, as a real server with the default KeepAlive (10 s) does.
    :attr:`connects` lists the transport of every ``/connect``, in order.
    """

    def __init__(self, keep_alive: float = 10.0, http_keep_alive: bool = True) -> None:
        self.keep_alive = keep_alive
        #: when False, HTTP responses say ``Connection: close`` and the socket closes,
        #: so a client's connection pool cannot keep one socket per connection.
        self.http_keep_alive = http_keep_alive
        self.accept_errors = 0
        self.first_accept_error: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tokens = 0
        self._by_token: dict[str, _Conn] = {}
        self._sockets: set[_Conn] = set()  # WebSockets and SSE streams
        self._chunks: dict[tuple[str, int, int], list[bytes]] = {}
        #: per (frames, batch): poll messageId -> index of the next frame to send
        self._next_frame: dict[tuple[int, int], dict[str, int]] = {}
        self._ka_task: asyncio.Task[None] | None = None
        self.port = 0
        self.http_requests = 0
        self.ws_connections = 0
        self.connects: list[str] = []

    def prepare_stream(self, frames: int, batch: int, transport: str = "webSockets") -> None:
        """Pre-encode a stream before the clock starts."""
        key = (transport, frames, batch)
        if key not in self._chunks:
            self._chunks[key] = stream_chunks(frames, batch, transport=transport)
        if transport == "longPolling" and (frames, batch) not in self._next_frame:
            after = {tick_cursor(seq): seq + 1 for seq in range(frames)}
            after[INIT_CURSOR] = 0
            self._next_frame[(frames, batch)] = after

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        default = loop.get_exception_handler()

        def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # accept() failing with EMFILE repeats thousands of times: count, keep one.
            if "accept" in str(context.get("message", "")):
                self.accept_errors += 1
                if self.first_accept_error is None:
                    self.first_accept_error = (
                        f"{context.get('message')}: {context.get('exception')}"
                    )
            elif default is not None:
                default(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(quiet)
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, backlog=4096, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ka_task = asyncio.ensure_future(self._keep_alives())
        return self.port

    def url(self, scenario: str, **params: object) -> str:
        parts = [scenario] + [f"{k}={v}" for k, v in params.items()]
        return f"http://127.0.0.1:{self.port}/{'/'.join(parts)}/signalr"

    async def stop(self) -> None:
        if self._ka_task is not None:
            self._ka_task.cancel()
        for conn in list(self._by_token.values()):
            conn.aborted.set()  # releases held polls
        for conn in list(self._sockets):
            if conn.writer is not None:
                conn.writer.close()
        if self._server is not None:
            self._server.close()

    async def _keep_alives(self) -> None:
        frames = {"webSockets": ws_frame(b"{}"), "serverSentEvents": http_chunk(sse_event(b"{}"))}
        while True:
            await asyncio.sleep(self.keep_alive)
            for conn in list(self._sockets):
                if not conn.closed and conn.writer is not None:
                    conn.writer.write(frames[conn.transport])

    @staticmethod
    def _scenario(path: str) -> dict[str, str]:
        segments = [s for s in path.split("/") if s]
        scenario = {"name": segments[0] if segments else ""}
        for seg in segments[1:]:
            if "=" in seg:
                k, v = seg.split("=", 1)
                scenario[k] = v
        return scenario

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                _, target, headers, body = request
                self.http_requests += 1
                url = urlsplit(target)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
                transport = query.get("transport", "")
                receive = url.path.endswith(("/connect", "/reconnect", "/poll"))
                if url.path.endswith("/connect"):
                    self.connects.append(transport)
                if headers.get("upgrade", "").lower() == "websocket":
                    await self._websocket(reader, writer, url.path, query, headers)
                    return
                if receive and transport == "serverSentEvents":
                    await self._event_stream(reader, writer, url.path, query)
                    return
                if receive and transport == "longPolling":
                    response = await self._long_poll(url.path, query, form)
                else:
                    status, answer = self._http(url.path, query, form)
                    response = http_response(status, answer, keep_alive=self.http_keep_alive)
                writer.write(response)
                if not self.http_keep_alive:
                    await writer.drain()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _register(self, transport: str, writer: Any, path: str, token: str) -> _Conn:
        conn = _Conn(transport, writer, self._scenario(path))
        if token == "raw":
            conn.started.set()
        else:
            self._by_token[token] = conn
        return conn

    def _http(
        self, path: str, query: dict[str, str], form: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if path.endswith("/negotiate"):
            self._tokens += 1
            return 200, jdumps(
                {
                    "Url": path[: -len("/negotiate")],
                    "ConnectionToken": f"tok{self._tokens}",
                    "ConnectionId": f"00000000-0000-0000-0000-{self._tokens:012d}",
                    "KeepAliveTimeout": self.keep_alive * 2,
                    "DisconnectTimeout": 30.0,
                    "ConnectionTimeout": 110.0,
                    "TryWebSockets": True,
                    "ProtocolVersion": "1.5",
                    "TransportConnectTimeout": 5.0,
                    "LongPollDelay": 0.0,
                }
            )
        if path.endswith("/start"):
            conn = self._by_token.get(query.get("connectionToken", ""))
            if conn is None:
                return 400, b"unknown connection token"
            conn.started.set()
            return 200, b'{ "Response": "started" }'
        if path.endswith("/abort"):
            conn = self._by_token.pop(query.get("connectionToken", ""), None)
            if conn is not None:
                conn.aborted.set()
                if conn.transport == "webSockets" and conn.writer is not None and not conn.closed:
                    conn.writer.write(ws_frame(struct.pack("!H", 1000), opcode=8))
            return 200, b""
        if path.endswith("/ping"):
            return 200, b'{ "Response": "pong" }'
        if path.endswith("/send"):
            conn = self._by_token.get(query.get("connectionToken", ""))
            if conn is None:
                return 400, b"unknown connection token"
            return 200, self._answer((form or {}).get("data", ""), conn.scenario)
        return 404, b"not found"

    @staticmethod
    def _answer(data: str | bytes, scenario: dict[str, str]) -> bytes:
        """The hub result for one invocation (``echo``: its first argument), or ``b""``."""
        msg = jloads(data) if data else None
        if not isinstance(msg, dict) or "I" not in msg:
            return b""
        if scenario["name"] != "echo":
            return jdumps({"I": str(msg["I"])})
        args = msg.get("A") or [None]
        return jdumps({"R": args[0], "I": str(msg["I"])})

    async def _event_stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        query: dict[str, str],
    ) -> None:
        """An SSE receive channel: chunked ``text/event-stream`` until abort or close."""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        token = query.get("connectionToken", "")
        conn = self._register("serverSentEvents", writer, path, token)
        self._sockets.add(conn)
        initial = sse_event(b"initialized")
        if path.endswith("/connect") and token != "raw":
            initial += sse_event(INIT_FRAME)
        writer.write(http_chunk(initial))
        pump: asyncio.Task[None] | None = None
        if conn.scenario["name"] == "stream":
            pump = asyncio.ensure_future(self._stream(conn))

        async def until_closed() -> None:
            while await reader.read(65536):
                pass

        closed = asyncio.ensure_future(until_closed())
        aborted = asyncio.ensure_future(conn.aborted.wait())
        try:
            await asyncio.wait({closed, aborted}, return_when=asyncio.FIRST_COMPLETED)
            if conn.aborted.is_set():
                writer.write(b"0\r\n\r\n")  # the end of the chunked body
                await writer.drain()
        finally:
            conn.closed = True
            self._sockets.discard(conn)
            if self._by_token.get(token) is conn:
                del self._by_token[token]
            for task in (pump, closed, aborted):
                if task is not None:
                    task.cancel()

    async def _long_poll(self, path: str, query: dict[str, str], form: dict[str, str]) -> bytes:
        """One long-polling receive request: the init frame, or the next frame."""
        token = query.get("connectionToken", "")
        keep = self.http_keep_alive
        if path.endswith("/connect"):
            self._register("longPolling", None, path, token)
            return http_response(200, INIT_FRAME, keep_alive=keep)
        conn = self._by_token.get(token)
        if conn is None:
            return http_response(400, b"unknown connection token", keep_alive=keep)
        cursor = query.get("messageId") or form.get("messageId") or INIT_CURSOR
        if conn.scenario["name"] == "stream":
            frames = int(conn.scenario.get("frames", "1000"))
            batch = int(conn.scenario.get("batch", "1"))
            self.prepare_stream(frames, batch, "longPolling")
            index = self._next_frame[(frames, batch)].get(cursor, 0)
            if index < frames:
                await _first(conn.started.wait(), conn.aborted.wait())
                if not conn.aborted.is_set():
                    if keep:
                        return self._chunks[("longPolling", frames, batch)][index]
                    return http_response(200, tick_payload(index, batch), keep_alive=False)
        # Nothing to send: hold the poll as a real server does (ConnectionTimeout).
        try:
            await asyncio.wait_for(conn.aborted.wait(), 110.0)
        except asyncio.TimeoutError:
            pass
        return http_response(200, b'{"C":"%s","M":[]}' % cursor.encode(), keep_alive=keep)

    async def _websocket(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
    ) -> None:
        writer.write(ws_upgrade_response(headers))
        token = query.get("connectionToken", "")
        ws = self._register("webSockets", writer, path, token)
        self._sockets.add(ws)
        self.ws_connections += 1
        raw = token == "raw"
        if not raw:
            writer.write(ws_frame(INIT_FRAME))
        pump: asyncio.Task[None] | None = None
        if ws.scenario["name"] == "stream":
            pump = asyncio.ensure_future(self._stream(ws))
        try:
            await self._read_frames(reader, ws, raw)
        finally:
            ws.closed = True
            self._sockets.discard(ws)
            if self._by_token.get(token) is ws:
                del self._by_token[token]
            if pump is not None:
                pump.cancel()

    async def _stream(self, conn: _Conn) -> None:
        frames = int(conn.scenario.get("frames", "1000"))
        batch = int(conn.scenario.get("batch", "1"))
        self.prepare_stream(frames, batch, conn.transport)
        chunks = self._chunks[(conn.transport, frames, batch)]
        writer = conn.writer
        assert writer is not None
        await conn.started.wait()
        for chunk in chunks:
            if conn.closed:
                return
            writer.write(chunk)
            await writer.drain()

    async def _read_frames(self, reader: asyncio.StreamReader, ws: _Conn, raw: bool) -> None:
        echo = ws.scenario["name"] == "echo"
        writer = ws.writer
        while True:
            frame = await read_ws_frame(reader)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 8:
                if not ws.closed:
                    writer.write(ws_frame(payload[:2], opcode=8))
                    ws.closed = True
                    await writer.drain()
                return
            if opcode == 9:
                writer.write(ws_frame(payload, opcode=10))
            elif opcode == 1 and echo:
                if raw:
                    writer.write(ws_frame(payload))
                else:
                    answer = self._answer(payload, ws.scenario)
                    if answer:
                        writer.write(ws_frame(answer))


async def _first(*waits: Any) -> None:
    """Wait until the first of these awaitables is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """Read one (client-masked) WebSocket frame: ``(opcode, payload)``, or ``None`` at EOF."""
    try:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b""
        payload = await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if mask:
        payload = _unmask(payload, mask)
    return b0 & 0x0F, payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


# ----------------------------------------------------------------- processes


def pin_cpu(cpu: int) -> None:
    """
    Pin this process to one CPU when there are at least two (best effort).

    The CPUs to choose from are those this process could use before the first
    benchmark process pinned itself (``BENCH_CPUS``, inherited by children), so a
    child of a parent pinned to CPU 0 can still pin itself to CPU 1.
    """
    try:
        known = os.environ.get("BENCH_CPUS")
        cpus = [int(c) for c in known.split(",")] if known else sorted(os.sched_getaffinity(0))
        os.environ["BENCH_CPUS"] = ",".join(map(str, cpus))
        if len(cpus) >= 2:
            os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})
    except (AttributeError, OSError, ValueError):
        pass


def cpu_id(cpu: int) -> int | None:
    """The CPU :func:`pin_cpu` would pin ``cpu`` to, or ``None`` when it would not pin
    (for ``taskset -c`` of child processes that are not Python)."""
    known = os.environ.get("BENCH_CPUS")
    try:
        cpus = [int(c) for c in known.split(",")] if known else sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError, ValueError):
        return None
    return cpus[cpu % len(cpus)] if len(cpus) >= 2 else None


def emit_result(result: dict[str, Any]) -> None:
    """Child side: hand one JSON result to the parent on stdout."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


async def run_child(
    argv: Sequence[str], timeout: float, python: str | None = None
) -> dict[str, Any]:
    """
    Run a benchmark client in a child process pinned to the other CPU and return
    the result it emitted, or ``{"error": …}`` when it failed or timed out.
    """
    cmd = [python or sys.executable, *argv]
    env = dict(os.environ)
    env["PYTHONPATH"] = child_pythonpath()
    env["BENCH_CPU"] = "1"
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in out.decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = err.decode(errors="replace").strip().splitlines()[-6:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def child_pythonpath() -> str:
    """
    ``PYTHONPATH`` for child processes: this checkout and ``bench/``.  Set
    ``BENCH_TXSIGNALR`` to another checkout's root to benchmark its ``txsignalr``
    (A/B-test a patch against the same server, floor and peer).
    """
    other = os.environ.get("BENCH_TXSIGNALR", "")
    paths = (other, str(REPO), str(BENCH_DIR), os.environ.get("PYTHONPATH", ""))
    return os.pathsep.join(p for p in paths if p)


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted``; returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# ----------------------------------------------------------------- reporting


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    for mod in ("twisted", "autobahn", "orjson", "ormsgpack"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", None) or str(getattr(m, "version", "?"))
        except ImportError:
            info[mod] = None
    info["txsignalr_path"] = os.environ.get("BENCH_TXSIGNALR") or str(REPO)
    return info


def write_results(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``path``) and return its path."""
    payload = {
        "benchmark": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        **payload,
    }
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i and n else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny run that finishes in seconds")
    p.add_argument("--n", type=int, default=None, help="workload size (see --help of each)")
    p.add_argument(
        "--json", type=Path, default=None, help="results file (default bench/results/<name>.json)"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    return p


def run_parent(main: Callable[[], Any]) -> None:
    """Run the parent's asyncio main pinned to CPU 0."""
    pin_cpu(0)
    sys.exit(asyncio.run(main()) or 0)

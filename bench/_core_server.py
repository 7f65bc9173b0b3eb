"""
An ASP.NET Core SignalR-shaped bench server that is never the bottleneck.

:class:`CoreBenchServer` sits beside :class:`_common.BenchServer` (it shares its HTTP,
WebSocket and chunking helpers) and speaks the Core protocol (core.md): ``POST
{base}/negotiate?negotiateVersion=1``, the handshake on every transport, then a
scenario named in the URL path, ``/core/<scenario>/<k>=<v>/…/hub``:

* ``stream/n=N/batch=K``: once the handshake is answered, N pre-encoded ``tick``
  Invocations (``{"Seq":n,"Ts":…}``), K records per WebSocket message / SSE event /
  long-poll response, written as fast as the socket takes them.
* ``counter/n=N/batch=K``: a ``StreamInvocation`` (any target, ``Counter`` in the
  benchmarks) is answered with N pre-encoded ``StreamItem`` messages of the same
  tick value, K per message, then the ``Completion``.
* ``echo``: an ``Invocation`` with an ``invocationId`` is answered with a Completion
  whose result is its first argument (``{"type":3,"invocationId":id,"result":x}``).
* ``idle``: nothing but a Ping every ``ping_interval`` (15 s, the server default) on
  WebSockets and SSE; long polls are held ``poll_timeout`` (90 s) and answered empty.

Transports, by what the request looks like (core.md §3): a WebSocket upgrade on
``GET {base}?id=TOKEN`` (text frames for JSON, binary for MessagePack); ``GET`` with
``Accept: text/event-stream`` (chunked, ``:`` comment first, one ``data:`` event per
message; JSON only); any other ``GET`` is a long poll (the first answers ``200`` empty
at once, later ones the next message, ``204`` once the connection is over); ``POST``
sends (``200`` empty), ``DELETE`` ends a long-polling connection (``202``).  HTTP
connections are kept alive as long as the client likes.

:attr:`CoreBenchServer.connects` records the ``(transport, hub protocol)`` of every
completed handshake, in order.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from _common import (
    http_chunk,
    http_response,
    read_request,
    read_ws_frame,
    ws_frame,
    ws_upgrade_response,
)

try:
    import ormsgpack

    packb: Callable[[Any], bytes] | None = ormsgpack.packb
    unpackb: Callable[[bytes], Any] | None = ormsgpack.unpackb
except ImportError:  # pragma: no cover - MessagePack rows then say why
    packb = unpackb = None

RS = b"\x1e"
#: The timestamp every tick carries (the shape of the classic benchmark's frames).
TS = "2026-11-26T00:49:37.3991840Z"
PROTOCOLS = ("json", "messagepack")
#: txsignalr's transport names -> the names in a Core negotiate response.
CORE_NAMES = {
    "webSockets": "WebSockets",
    "serverSentEvents": "ServerSentEvents",
    "longPolling": "LongPolling",
}
HANDSHAKE_OK = b"{}" + RS
PING = {"json": b'{"type":6}' + RS, "messagepack": b"\x02\x91\x06"}
_OCTETS = b"application/octet-stream"


def varint(n: int) -> bytes:
    """The MessagePack framing's length prefix (core.md §5.2)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tick_value(seq: int) -> dict[str, Any]:
    return {"Seq": seq, "Ts": TS}


def _pack(value: Any) -> bytes:
    if packb is None:
        raise RuntimeError("ormsgpack is not installed: pip install 'txsignalr[messagepack]'")
    body = packb(value)
    return varint(len(body)) + body


def tick_record(seq: int, protocol: str) -> bytes:
    """One framed ``tick`` Invocation (no invocation id, as a server's ``SendAsync``)."""
    if protocol == "json":
        return (
            b'{"type":1,"target":"tick","arguments":[{"Seq":%d,"Ts":"%s"}]}' % (seq, TS.encode())
            + RS
        )
    # .NET always writes 6 elements, StreamIds [] when there are none (core.md)
    return _pack([1, {}, None, "tick", [tick_value(seq)], []])


def item_record(invocation_id: str, seq: int, protocol: str) -> bytes:
    """One framed StreamItem carrying the tick value ``seq``."""
    if protocol == "json":
        return (
            b'{"type":2,"invocationId":%s,"item":{"Seq":%d,"Ts":"%s"}}'
            % (orjson.dumps(invocation_id), seq, TS.encode())
            + RS
        )
    return _pack([2, {}, invocation_id, tick_value(seq)])


def completion_record(invocation_id: str, protocol: str, *result: Any) -> bytes:
    """A framed Completion: void (no ``result``), or with the one result given."""
    if protocol == "json":
        head = b'{"type":3,"invocationId":%s' % orjson.dumps(invocation_id)
        if result:
            return head + b',"result":' + orjson.dumps(result[0]) + b"}" + RS
        return head + b"}" + RS
    if result:
        return _pack([3, {}, invocation_id, 3, result[0]])
    return _pack([3, {}, invocation_id, 2])


def messages(records: list[bytes], batch: int) -> list[bytes]:
    """Join framed records ``batch`` at a time: one transport message each."""
    return [b"".join(records[i : i + batch]) for i in range(0, len(records), batch)]


def wrap(
    msgs: list[bytes], transport: str, protocol: str, chunk_size: int = 256 * 1024
) -> list[bytes]:
    """
    Transport messages as the bytes to write: WebSocket frames or SSE events (each in
    its own HTTP chunk) joined in message-aligned writes of about ``chunk_size``, or for
    long polling one whole ``200`` response per message.
    """
    if transport == "longPolling":
        return [http_response(200, m, _OCTETS) for m in msgs]
    if transport == "webSockets":
        opcode = 1 if protocol == "json" else 2

        def encode(m: bytes) -> bytes:
            return ws_frame(m, opcode)

    else:
        # One HTTP chunk per event, as Kestrel flushes each event (many chunks to a
        # write): clients' chunked decoders then see the real server's framing.

        def encode(m: bytes) -> bytes:
            return http_chunk(sse_data(m))

    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for m in msgs:
        f = encode(m)
        current.append(f)
        size += len(f)
        if size >= chunk_size:
            chunks.append(b"".join(current))
            current, size = [], 0
    if current:
        chunks.append(b"".join(current))
    return chunks


def sse_data(payload: bytes) -> bytes:
    """One SSE event as an ASP.NET Core server writes it (CRLF line ends)."""
    return b"data: " + payload + b"\r\n\r\n"


def split_records(buffer: bytes, protocol: str) -> tuple[list[bytes], bytes]:
    """Complete records in ``buffer`` (without framing) and the incomplete rest."""
    if protocol == "json":
        *records, rest = buffer.split(RS)
        return records, rest
    out: list[bytes] = []
    pos, end = 0, len(buffer)
    while pos < end:
        size = shift = 0
        i = pos
        while i < end:
            b = buffer[i]
            i += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            break
        if i + size > end:
            break
        out.append(buffer[i : i + size])
        pos = i + size
    return out, buffer[pos:]


class _Conn:
    """One Core connection (one connection token) and its receive channel."""

    def __init__(self, token: str, scenario: dict[str, str]) -> None:
        self.token = token
        self.scenario = scenario
        self.transport = ""
        self.protocol = ""  # set by the handshake
        self.writer: asyncio.StreamWriter | None = None  # WebSocket or SSE response
        self.buffer = b""
        self.closed = False
        self.pump: asyncio.Task[None] | None = None
        # long polling
        self.polled = False
        self.pending: list[bytes] = []
        self.lp_stream: list[bytes] = []
        self.lp_index = 0
        self.wake = asyncio.Event()
        self.done = asyncio.Event()

    @property
    def handshaken(self) -> bool:
        return bool(self.protocol)

    def send(self, data: bytes) -> None:
        """Send framed records now (WebSocket, SSE) or with the next poll."""
        if self.closed:
            return
        if self.transport == "longPolling":
            self.pending.append(data)
            self.wake.set()
            return
        assert self.writer is not None
        if self.transport == "webSockets":
            # MessagePack goes in binary frames, the handshake answer too (as .NET sends it)
            self.writer.write(ws_frame(data, 2 if self.protocol == "messagepack" else 1))
        else:
            self.writer.write(http_chunk(sse_data(data)))

    def close(self) -> None:
        if self.closed:
            return
        if self.transport == "webSockets" and self.writer is not None:
            self.writer.write(ws_frame(struct.pack("!H", 1000), opcode=8))
        elif self.transport == "serverSentEvents" and self.writer is not None:
            self.writer.write(b"0\r\n\r\n")
        self.closed = True
        self.wake.set()
        self.done.set()
        if self.pump is not None:
            self.pump.cancel()


class CoreBenchServer:
    """
    The Core bench server on 127.0.0.1 (see the module docstring for the scenarios).

    :param ping_interval: seconds between the Pings every handshaken WebSocket and SSE
        stream gets (the .NET default KeepAliveInterval, 15 s).
    :param poll_timeout: seconds a long poll with nothing to send is held (90 s).
    """

    def __init__(
        self, ping_interval: float = 15.0, poll_timeout: float = 90.0, http_keep_alive: bool = True
    ) -> None:
        self.ping_interval = ping_interval
        self.poll_timeout = poll_timeout
        self.http_keep_alive = http_keep_alive
        self.port = 0
        self.http_requests = 0
        #: ``(transport, hub protocol)`` of every completed handshake, in order.
        self.connects: list[tuple[str, str]] = []
        self._server: asyncio.AbstractServer | None = None
        self._tokens = 0
        self._conns: dict[str, _Conn] = {}
        self._cache: dict[tuple[Any, ...], list[bytes]] = {}
        self._ping_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", port, limit=1 << 20, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ping_task = asyncio.ensure_future(self._pings())
        return self.port

    def url(self, scenario: str, **params: object) -> str:
        parts = ["core", scenario] + [f"{k}={v}" for k, v in params.items()]
        return f"http://127.0.0.1:{self.port}/{'/'.join(parts)}/hub"

    async def stop(self) -> None:
        if self._ping_task is not None:
            self._ping_task.cancel()
        for conn in list(self._conns.values()):
            conn.close()
            if conn.writer is not None:
                conn.writer.close()
        self._conns.clear()
        if self._server is not None:
            self._server.close()

    def prepare(self, scenario: str, n: int, batch: int, transport: str, protocol: str) -> None:
        """Pre-encode a ``stream`` (or a ``counter`` with invocation id ``"0"``…``"2"``,
        the ids clients start with) before the clock starts."""
        if scenario == "stream":
            self._stream_chunks(n, batch, transport, protocol)
        else:
            for invocation_id in ("0", "1", "2"):
                self._counter_chunks(invocation_id, n, batch, transport, protocol)

    # ------------------------------------------------------------ pre-encoded streams

    def _stream_chunks(self, n: int, batch: int, transport: str, protocol: str) -> list[bytes]:
        key = ("stream", n, batch, transport, protocol)
        if key not in self._cache:
            records = [tick_record(seq, protocol) for seq in range(n)]
            self._cache[key] = wrap(messages(records, batch), transport, protocol)
        return self._cache[key]

    def _counter_chunks(
        self, invocation_id: str, n: int, batch: int, transport: str, protocol: str
    ) -> list[bytes]:
        key = ("counter", invocation_id, n, batch, transport, protocol)
        if key not in self._cache:
            records = [item_record(invocation_id, seq, protocol) for seq in range(n)]
            msgs = messages(records, batch) or [b""]
            msgs[-1] += completion_record(invocation_id, protocol)
            self._cache[key] = wrap(msgs, transport, protocol)
        return self._cache[key]

    def _start_pump(self, conn: _Conn, chunks: list[bytes]) -> None:
        if conn.transport == "longPolling":
            conn.lp_stream, conn.lp_index = chunks, 0
            conn.wake.set()
        else:
            conn.pump = asyncio.ensure_future(self._pump(conn, chunks))

    async def _pump(self, conn: _Conn, chunks: list[bytes]) -> None:
        writer = conn.writer
        assert writer is not None
        try:
            for chunk in chunks:
                if conn.closed:
                    return
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            return

    async def _pings(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            for conn in list(self._conns.values()):
                if conn.handshaken and conn.transport != "longPolling" and conn.writer:
                    if conn.pump is None or conn.pump.done():
                        conn.send(PING[conn.protocol])

    # ------------------------------------------------------------ what clients send

    def _received(self, conn: _Conn, data: bytes) -> None:
        buffer = conn.buffer + data
        if not conn.handshaken:
            head, sep, rest = buffer.partition(RS)
            if not sep:
                conn.buffer = buffer
                return
            self._handshake(conn, head)
            buffer = rest
            if conn.closed:
                return
        records, conn.buffer = split_records(buffer, conn.protocol)
        for record in records:
            if record:
                self._message(conn, record)

    def _handshake(self, conn: _Conn, head: bytes) -> None:
        try:
            request = orjson.loads(head)
            protocol = request["protocol"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            protocol = None
        if protocol not in PROTOCOLS or (protocol == "messagepack" and packb is None):
            conn.send(
                b'{"error":"The protocol \'%s\' is not supported."}' % str(protocol).encode() + RS
            )
            conn.close()
            return
        if protocol == "messagepack" and conn.transport == "serverSentEvents":
            conn.send(
                b'{"error":"Cannot use the \'messagepack\' protocol on the current transport. '
                b"The transport does not support 'Binary' transfer format.\"}" + RS
            )
            conn.close()
            return
        conn.protocol = protocol
        self.connects.append((conn.transport, protocol))
        conn.send(HANDSHAKE_OK)
        if conn.scenario["name"] == "stream":
            n, batch = self._size(conn)
            self._start_pump(conn, self._stream_chunks(n, batch, conn.transport, protocol))

    @staticmethod
    def _size(conn: _Conn) -> tuple[int, int]:
        return int(conn.scenario.get("n", "1000")), int(conn.scenario.get("batch", "1"))

    def _message(self, conn: _Conn, record: bytes) -> None:
        """One hub message from the client: answer invocations, start streams."""
        if conn.protocol == "json":
            msg = orjson.loads(record)
            kind = msg.get("type")
            invocation_id = msg.get("invocationId")
            args = msg.get("arguments") or [None]
        else:
            assert unpackb is not None
            msg = unpackb(record)
            kind = msg[0]
            invocation_id = msg[2] if kind in (1, 4, 5) and len(msg) > 2 else None
            args = (msg[4] if len(msg) > 4 else None) or [None]
        if kind == 1 and invocation_id is not None:
            if conn.scenario["name"] == "echo":
                conn.send(completion_record(invocation_id, conn.protocol, args[0]))
            else:
                conn.send(completion_record(invocation_id, conn.protocol))
        elif kind == 4 and invocation_id is not None:
            n, batch = self._size(conn)
            self._start_pump(
                conn, self._counter_chunks(invocation_id, n, batch, conn.transport, conn.protocol)
            )
        elif kind == 5 and conn.pump is not None:
            conn.pump.cancel()
        elif kind == 7:
            conn.close()

    # ------------------------------------------------------------ HTTP

    def _conn(self, query: dict[str, str]) -> _Conn | None:
        key = query.get("id", "")
        # pysignalr 1.3.3 and signalrcore 1.0.2 send the connectionId where negotiate
        # v1 asks for the connectionToken (a .NET server would answer 404): take it too,
        # so the peers can be measured at all (each result says which id it used).
        if key.startswith("id") and key[2:].isdigit():
            key = "tok" + key[2:]
        return self._conns.get(key)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        keep = self.http_keep_alive
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                self.http_requests += 1
                url = urlsplit(target)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.endswith("/negotiate"):
                    response = self._negotiate(url.path, keep)
                else:
                    conn = self._conn(query)
                    if conn is None:
                        response = http_response(
                            404, b"No Connection with that ID", b"text/plain", keep
                        )
                    elif headers.get("upgrade", "").lower() == "websocket":
                        await self._websocket(reader, writer, conn, headers)
                        return
                    elif method == "GET" and "text/event-stream" in headers.get("accept", ""):
                        await self._event_stream(reader, writer, conn)
                        return
                    elif method == "GET":
                        response = await self._poll(conn, keep)
                    elif method == "POST":
                        if not conn.transport:
                            conn.transport = "longPolling"  # a send before any GET
                        self._received(conn, body)
                        response = http_response(200, b"", b"text/plain", keep)
                    elif method == "DELETE":
                        conn.close()
                        self._conns.pop(conn.token, None)
                        response = http_response(202, b"", b"text/plain", keep)
                    else:
                        response = http_response(405, b"", b"text/plain", keep)
                writer.write(response)
                if not keep:
                    await writer.drain()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _negotiate(self, path: str, keep: bool) -> bytes:
        self._tokens += 1
        token = f"tok{self._tokens}"
        self._conns[token] = _Conn(token, self._scenario(path[: -len("/negotiate")]))
        body = orjson.dumps(
            {
                "negotiateVersion": 1,
                "connectionId": f"id{self._tokens}",
                "connectionToken": token,
                "availableTransports": [
                    {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
                    {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
                    {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
                ],
            }
        )
        return http_response(200, body, b"application/json", keep)

    @staticmethod
    def _scenario(path: str) -> dict[str, str]:
        segments = [s for s in path.split("/") if s]
        if segments and segments[0] == "core":
            segments = segments[1:]
        scenario = {"name": segments[0] if segments else ""}
        for seg in segments[1:]:
            if "=" in seg:
                k, v = seg.split("=", 1)
                scenario[k] = v
        return scenario

    async def _poll(self, conn: _Conn, keep: bool) -> bytes:
        conn.transport = conn.transport or "longPolling"
        if not conn.polled:
            conn.polled = True
            return http_response(200, b"", _OCTETS, keep)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll_timeout
        while True:
            if conn.closed:
                return http_response(204, b"", _OCTETS, keep)
            if conn.pending:
                body = b"".join(conn.pending)
                conn.pending.clear()
                return http_response(200, body, _OCTETS, keep)
            if conn.lp_index < len(conn.lp_stream):
                conn.lp_index += 1
                if keep:
                    return conn.lp_stream[conn.lp_index - 1]
                return conn.lp_stream[conn.lp_index - 1].replace(
                    b"\r\n", b"\r\nConnection: close\r\n", 1
                )
            conn.wake.clear()
            left = deadline - loop.time()
            if left <= 0:
                return http_response(200, b"", _OCTETS, keep)
            try:
                await asyncio.wait_for(conn.wake.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _websocket(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Conn,
        headers: dict[str, str],
    ) -> None:
        writer.write(ws_upgrade_response(headers))
        conn.transport, conn.writer = "webSockets", writer
        try:
            while True:
                frame = await read_ws_frame(reader)
                if frame is None:
                    return
                opcode, payload = frame
                if opcode == 8:
                    if not conn.closed:
                        writer.write(ws_frame(payload[:2], opcode=8))
                        conn.closed = True
                        await writer.drain()
                    return
                if opcode == 9:
                    writer.write(ws_frame(payload, opcode=10))
                elif opcode in (0, 1, 2):
                    self._received(conn, payload)
        finally:
            conn.close()
            conn.closed = True
            self._conns.pop(conn.token, None)

    async def _event_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache,no-store\r\nPragma: no-cache\r\n"
            b"Content-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n"
            + http_chunk(b":\r\n")
        )
        conn.transport, conn.writer = "serverSentEvents", writer

        async def until_closed() -> None:
            while await reader.read(65536):
                pass

        closed = asyncio.ensure_future(until_closed())
        done = asyncio.ensure_future(conn.done.wait())
        try:
            await asyncio.wait({closed, done}, return_when=asyncio.FIRST_COMPLETED)
            if done.done():
                await writer.drain()
        finally:
            conn.closed = True
            if conn.pump is not None:
                conn.pump.cancel()
            self._conns.pop(conn.token, None)
            closed.cancel()
            done.cancel()

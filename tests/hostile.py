"""
A small hostile SignalR server for the reliability tests: raw TCP, so it can send
what no well-behaved server would (garbage after a valid handshake, truncated and
endless frames, a stream that drips, answers that never come, a huge header).

It speaks just enough of both families to get a client to the point where the fault
is injected: negotiate (classic GET, ASP.NET Core POST), the WebSocket upgrade, the
Server-Sent Events stream, ``/start``, ``/send`` and ``/abort``.  What it does at each
point is a :class:`Behaviour`; every connection it saw is kept for the assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.protocol import Factory, Protocol

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: a classic negotiate answer with short timeouts, so faults end in seconds
CLASSIC_NEGOTIATE = {
    "Url": "/signalr",
    "ConnectionToken": "hostile-token",
    "ConnectionId": "hostile-id",
    "KeepAliveTimeout": 2.0,
    "DisconnectTimeout": 3.0,
    "ConnectionTimeout": 110.0,
    "TryWebSockets": True,
    "ProtocolVersion": "1.5",
    "TransportConnectTimeout": 2.0,
    "LongPollDelay": 0.0,
}
CORE_NEGOTIATE = {
    "negotiateVersion": 1,
    "connectionId": "hostile-id",
    "connectionToken": "hostile-token",
    "availableTransports": [
        {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
        {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
        {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
    ],
}
CLASSIC_INIT = b'{"C":"d-1,0|A,0","S":1,"M":[]}'


def ws_frame(payload: bytes, opcode: int = 1, length: int | None = None) -> bytes:
    """A server (unmasked) WebSocket frame; ``length`` overrides the announced size."""
    n = len(payload) if length is None else length
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.path = urlsplit(target).path
        self.query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
        self.headers = headers
        self.body = body

    @property
    def websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


class Behaviour:
    """What the server does; override the hooks a scenario needs."""

    core = False
    #: the last receive channel opened (a WebSocket or an event stream)
    stream: HostileConnection | None = None

    def negotiate(self, conn: HostileConnection, request: Request) -> None:
        conn.json(CORE_NEGOTIATE if self.core else CLASSIC_NEGOTIATE)

    def websocket(self, conn: HostileConnection, request: Request) -> None:
        self.stream = conn
        conn.accept_websocket(request)
        if not self.core:
            conn.write(ws_frame(CLASSIC_INIT))

    def websocket_data(self, conn: HostileConnection, data: bytes) -> None:
        """Client frames (masked); the Core handshake is answered with ``{}``."""
        if self.core and not conn.handshaken and b"\x1e" in conn.unmask_all(data):
            conn.handshaken = True
            conn.write(ws_frame(b"{}\x1e"))
            self.handshaken(conn)

    def handshaken(self, conn: HostileConnection) -> None:
        pass

    def event_stream(self, conn: HostileConnection, request: Request) -> None:
        self.stream = conn
        conn.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        if not self.core:
            conn.write(b"data: initialized\n\ndata: " + CLASSIC_INIT + b"\n\n")

    def start(self, conn: HostileConnection, request: Request) -> None:
        conn.json({"Response": "started"})
        if self.stream is not None:
            from twisted.internet import reactor

            reactor.callLater(0.05, self.after_start, self.stream)  # type: ignore[attr-defined]

    def after_start(self, stream: HostileConnection) -> None:
        """Classic: what to send on the receive channel once ``/start`` was answered."""

    def send(self, conn: HostileConnection, request: Request) -> None:
        conn.json({})

    def other(self, conn: HostileConnection, request: Request) -> None:
        conn.answer(200, b"", b"text/plain")


class HostileConnection(Protocol):
    def __init__(self, server: HostileServer) -> None:
        self.server = server
        self.buffer = b""
        self.requests: list[Request] = []
        self.upgraded = False
        self.handshaken = False
        self.lost = False
        self._client_bytes = b""

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded:
            self.server.behaviour.websocket_data(self, data)
            return
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and not self.upgraded:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            size = int(headers.get("content-length", "0"))
            if len(rest) < size:
                return
            body, self.buffer = rest[:size], rest[size:]
            request = Request(method, target, headers, body)
            self.requests.append(request)
            self.server.requests.append(request)
            self._route(request)

    def _route(self, request: Request) -> None:
        b = self.server.behaviour
        path = request.path.rstrip("/")
        if path.endswith("/negotiate"):
            b.negotiate(self, request)
        elif request.websocket:
            b.websocket(self, request)
        elif "text/event-stream" in request.headers.get("accept", "") or (
            request.query.get("transport") == "serverSentEvents" and path.endswith("/connect")
        ):
            b.event_stream(self, request)
        elif path.endswith("/start"):
            b.start(self, request)
        elif path.endswith("/send") or (self.server.behaviour.core and request.method == "POST"):
            b.send(self, request)
        else:
            b.other(self, request)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    # -- writing ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.lost:
            self.transport.write(data)  # type: ignore[union-attr]

    def answer(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        self.write(
            b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status, content_type, len(body), body)
        )

    def json(self, value: Any) -> None:
        self.answer(200, json.dumps(value).encode())

    def accept_websocket(self, request: Request) -> None:
        key = request.headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.upgraded = True

    def unmask_all(self, data: bytes) -> bytes:
        """The payloads of the client's (masked) frames seen so far, joined."""
        self._client_bytes += data
        out = b""
        buf = self._client_bytes
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            pos = 2
            if n == 126:
                n = struct.unpack("!H", buf[2:4])[0]
                pos = 4
            elif n == 127:
                n = struct.unpack("!Q", buf[2:10])[0]
                pos = 10
            if len(buf) < pos + 4 + n:
                break
            mask = buf[pos : pos + 4]
            payload = buf[pos + 4 : pos + 4 + n]
            out += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            buf = buf[pos + 4 + n :]
        return out

    def drip(self, data: bytes, interval: float, clock: Any) -> None:
        """Write ``data`` one byte every ``interval`` seconds."""

        def step(i: int) -> None:
            if self.lost or i >= len(data):
                return
            self.write(data[i : i + 1])
            clock.callLater(interval, step, i + 1)

        step(0)


class HostileServer(Factory):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections: list[HostileConnection] = []
        self.requests: list[Request] = []
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> HostileConnection:
        return HostileConnection(self)

    def listen(self, reactor: Any) -> str:
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        for conn in self.connections:
            if not conn.lost and conn.transport is not None:
                conn.transport.abortConnection()  # type: ignore[attr-defined]
        if self.port is not None:
            await self.port.stopListening()


def behaviour(**hooks: Callable[..., None]) -> Behaviour:
    """A Behaviour with some hooks replaced (``core=True`` for ASP.NET Core)."""
    b = Behaviour()
    for name, hook in hooks.items():
        if name == "core":
            b.core = bool(hook)
        else:
            setattr(b, name, hook.__get__(b))
    return b

"""
The WebSocket receive path in-process, without sockets: what one delivered call costs.

A real ``HubConnection`` (classic, Core JSON or Core MessagePack) is connected through
txsignalr's real WebSocket protocol, whose TCP side is a ``StringTransport``; the
server's bytes (unmasked frames, K calls each, pre-encoded) are then fed to the
protocol's ``dataReceived`` in 64 KiB reads, as Twisted reads a socket.  The floor is
a bare autobahn client with the same options, doing the least a client could with the
same bytes (decode each frame, or each record, and count).

It prints µs of CPU per delivered call (median of ``--repeat`` runs in one process).
For figures that do not move with the load on a shared machine, ``--callgrind`` runs
it under callgrind twice with different ``--n`` and divides the difference in
instructions (slow: about a minute and a half a run, mostly Twisted's imports):

    python bench/callgrind_receive.py [--case classic|json|msgpack|all] [--batch K]
        [--n CALLS] [--repeat R] [--client txsignalr|floor|both] [--callgrind] [--smoke]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TS = "2026-12-01T00:00:00.000Z"
READ = 65536
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(payload: bytes, binary: bool = False) -> bytes:
    """One unmasked FIN frame, as a server sends it."""
    head = bytes([0x82 if binary else 0x81])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


def classic_message(seq: int, batch: int) -> bytes:
    calls = ",".join(
        f'{{"H":"c3","M":"tick","A":[{{"Seq":{seq * batch + i},"Ts":"{TS}"}}]}}'
        for i in range(batch)
    )
    return f'{{"C":"d-98046728-B,{seq}|C,0|D,4","M":[{calls}]}}'.encode()


def json_message(seq: int, batch: int) -> bytes:
    return b"".join(
        b'{"type":1,"target":"tick","arguments":[{"Seq":%d,"Ts":"%s"}]}\x1e'
        % (seq * batch + i, TS.encode())
        for i in range(batch)
    )


def msgpack_message(seq: int, batch: int) -> bytes:
    import ormsgpack

    from txsignalr._core_msgpack import _varint

    out = b""
    for i in range(batch):
        body = ormsgpack.packb([1, {}, None, "tick", [{"Seq": seq * batch + i, "Ts": TS}]])
        out += _varint(len(body)) + body
    return out


CASES: dict[str, tuple[Callable[[int, int], bytes], bool]] = {
    "classic": (classic_message, False),
    "json": (json_message, False),
    "msgpack": (msgpack_message, True),
}


def stream(case: str, frames: int, batch: int) -> list[bytes]:
    """The server's bytes for ``frames`` messages, cut into ``READ``-byte reads."""
    make, binary = CASES[case]
    data = b"".join(ws_frame(make(i, batch), binary) for i in range(frames))
    return [data[i : i + READ] for i in range(0, len(data), READ)]


def handshake(proto: Any, transport: Any) -> None:
    """Answer the client's opening handshake with a 101."""
    request = transport.value().decode("latin-1")
    key = re.search(r"Sec-WebSocket-Key: (\S+)", request, re.I).group(1)  # type: ignore[union-attr]
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    transport.clear()
    proto.dataReceived(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )


_OPTIONS = dict(
    autoPingInterval=0,
    autoPingTimeout=0,
    openHandshakeTimeout=0,
    closeHandshakeTimeout=0,
    serverConnectionDropTimeout=0,
    utf8validateIncoming=False,
    tcpNoDelay=True,
)


class _Counter:
    count = 0


def floor_protocol(case: str, counter: _Counter) -> Any:
    """A bare autobahn client, connected, that decodes and counts."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet.testing import StringTransport

    from txsignalr._protocol import loads

    if case == "classic":

        def on_message(self: Any, payload: bytes, is_binary: bool) -> None:
            counter.count += len(loads(payload)["M"])

    elif case == "json":

        def on_message(self: Any, payload: bytes, is_binary: bool) -> None:
            records = payload.split(b"\x1e")
            records.pop()
            for r in records:
                loads(r)
            counter.count += len(records)

    else:
        import ormsgpack

        unpackb = ormsgpack.unpackb

        def on_message(self: Any, payload: bytes, is_binary: bool) -> None:
            view = memoryview(payload)
            i, n = 0, len(payload)
            while i < n:
                length = shift = 0
                while True:
                    b = payload[i]
                    i += 1
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                unpackb(view[i : i + length])
                i += length
                counter.count += 1

    proto_class = type("Floor", (WebSocketClientProtocol,), {"onMessage": on_message})
    factory = WebSocketClientFactory("ws://127.0.0.1:1/x")
    factory.protocol = proto_class
    factory.setProtocolOptions(**_OPTIONS)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    handshake(proto, transport)
    return proto


def txsignalr_protocol(case: str, counter: _Counter) -> Any:
    """A started HubConnection over txsignalr's own WebSocket protocol."""
    from treq.testing import StubTreq
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from txsignalr import HubConnection, Transport
    from txsignalr._websocket import WebSocketTransport, _ClientFactory

    class Server(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            path = request.path.decode()
            if case == "classic":
                if path.endswith("/negotiate"):
                    return json.dumps(
                        {
                            "Url": "/signalr",
                            "ConnectionToken": "tok",
                            "ConnectionId": "id-1",
                            "KeepAliveTimeout": 20.0,
                            "DisconnectTimeout": 30.0,
                            "ConnectionTimeout": 110.0,
                            "TryWebSockets": True,
                            "ProtocolVersion": "1.5",
                            "TransportConnectTimeout": 5.0,
                            "LongPollDelay": 0.0,
                        }
                    ).encode()
                return b'{ "Response": "started" }'
            return json.dumps(
                {
                    "negotiateVersion": 1,
                    "connectionId": "c-1",
                    "connectionToken": "tok",
                    "availableTransports": [
                        {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}
                    ],
                }
            ).encode()

    protos: list[Any] = []

    class Harness(WebSocketTransport):
        def open(self) -> None:
            factory = _ClientFactory(self, self._url, self._headers)
            factory.setProtocolOptions(
                **_OPTIONS,
                maxMessagePayloadSize=self._max_size,
                maxFramePayloadSize=self._max_size,
            )
            proto = factory.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            self._protocol = proto
            protos.append((proto, transport))
            handshake(proto, transport)

    clock = Clock()
    stub = StubTreq(Server())
    kwargs: dict[str, Any] = {}
    if case != "classic":
        kwargs = {
            "protocol": "core",
            "hub_protocol": "messagepack" if case == "msgpack" else "json",
        }
    url = "http://127.0.0.1/signalr" if case == "classic" else "http://127.0.0.1/hub"
    conn = HubConnection(
        clock,
        url,
        http_client=stub,
        transport_factories={Transport.web_sockets: Harness},
        transports=["webSockets"],
        reconnect_delay=None,
        **kwargs,
    )

    def tick(*args: Any) -> None:
        counter.count += 1

    if case == "classic":
        conn.hub("c3").on("tick", tick)
    else:
        conn.on("tick", tick)
    d = conn.start()
    stub.flush()
    proto, _ = protos[-1]
    if case == "classic":
        proto.dataReceived(ws_frame(b'{"C":"d-1-A,0","S":1,"M":[]}'))
    else:
        proto.dataReceived(ws_frame(b"{}\x1e"))
    stub.flush()
    assert d.called, "the harness connection did not start"
    return proto


def run(case: str, client: str, n: int, batch: int) -> dict[str, Any]:
    frames = max(1, n // batch)
    reads = stream(case, frames, batch)
    counter = _Counter()
    make = txsignalr_protocol if client == "txsignalr" else floor_protocol
    proto = make(case, counter)
    received = proto.dataReceived
    c0 = time.process_time()
    for chunk in reads:
        received(chunk)
    c1 = time.process_time()
    calls = frames * batch
    if counter.count != calls:
        raise SystemExit(f"{case}/{client}: {counter.count} calls delivered, {calls} sent")
    return {"calls": calls, "cpu_us_per_call": (c1 - c0) / calls * 1e6}


def instructions(case: str, client: str, n: int, batch: int) -> int:
    """Total Ir of one run of this script under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            os.path.abspath(__file__),
            "--case",
            case,
            "--client",
            client,
            "--n",
            str(n),
            "--batch",
            str(batch),
            "--repeat",
            "1",
        ]
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        with open(out) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind output")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument("--client", choices=["txsignalr", "floor", "both"], default="both")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--callgrind", action="store_true", help="instructions per call")
    p.add_argument("--repeat", type=int, default=None, help="runs per figure (median)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    repeat = args.repeat or (1 if args.smoke else 5)
    cases = list(CASES) if args.case == "all" else [args.case]
    clients = ["floor", "txsignalr"] if args.client == "both" else [args.client]
    for case in cases:
        if case == "msgpack":
            try:
                import ormsgpack  # noqa: F401
            except ImportError:
                print("msgpack: ormsgpack is not installed")
                continue
        row = []
        for client in clients:
            if args.callgrind:
                n = args.n or (2_000 if args.smoke else 20_000)
                small = instructions(case, client, n // 2, args.batch)
                big = instructions(case, client, n, args.batch)
                calls = max(1, n // args.batch) * args.batch
                calls_small = max(1, n // 2 // args.batch) * args.batch
                per = (big - small) / (calls - calls_small)
                row.append(f"{client} {per:,.0f} Ir/call")
            else:
                n = args.n or (5_000 if args.smoke else 100_000)
                runs = [run(case, client, n, args.batch)["cpu_us_per_call"] for _ in range(repeat)]
                row.append(f"{client} {statistics.median(runs):.2f} us/call")
        print(f"{case} batch={args.batch}: " + ", ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

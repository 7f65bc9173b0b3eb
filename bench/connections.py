"""
Connections: N idle connections in one client process.

For each N (1,000 and 10,000 by default) a child process opens N connections to the
benchmark server (parent process), at most ``--concurrency`` starting at a time, and
reports the RSS and file descriptors each connection adds, the time to open them all,
and the CPU the process uses while they sit idle (keep-alive timers).

* ``floor``: bare autobahn WebSockets (no negotiate, no ``/start``);
* ``txsignalr``: started ``HubConnection`` objects over WebSockets, one hub proxy
  and handler each;
* ``txsignalr serverSentEvents`` / ``txsignalr longPolling``: the same over the other
  transports (at the smallest N only, unless ``--all-transports-at-every-n``);
* ``core <hub protocol> <transport>``: started ASP.NET Core ``HubConnection``
  objects, one handler each, against ``_core_server.CoreBenchServer``'s ``idle``
  scenario (a Ping every 15 s on WebSockets and SSE, long polls held 90 s): JSON over
  every transport and MessagePack over WebSockets at the smallest N, JSON over
  WebSockets at every N (``--no-core`` skips them).

Round trips to open one classic connection (each ``HubConnection`` owns a treq
``HTTPConnectionPool(persistent=True)``, Twisted's default ``maxPersistentPerHost``
of 2, and closes its idle pooled sockets once started):

* webSockets: TCP connect + ``GET /negotiate``; a second TCP connect + the WebSocket
  upgrade (the server pushes the init frame with the 101); ``GET /start`` on the
  pooled negotiate socket: 3 HTTP round trips, 2 TCP handshakes;
* serverSentEvents: ``GET /negotiate``; ``GET /connect`` (the event stream, reusing
  the pooled negotiate socket, which it then holds); ``GET /start`` on a new socket:
  3 round trips, 2 TCP handshakes;
* longPolling: ``GET /negotiate``; ``POST /connect`` (answers the init frame);
  ``GET /start``; then the first ``POST /poll``, held by the server: 3 round trips
  before started, plus the poll.

Round trips to open one Core connection: ``POST /negotiate?negotiateVersion=1``;
the transport's connect (the WebSocket upgrade, the event stream, or the first poll,
which the server answers at once); the handshake (sent as the first WebSocket
message, or ``POST``-ed over SSE and long polling) and its answer: 3 round trips on
every transport (long polling then holds the next poll).

The classic server sends ``{}`` keep-alives every 10 s (negotiate ``KeepAliveTimeout`` 20 s)
and keeps HTTP connections alive as long as the client wants, like a real server.

    python bench/connections.py [--smoke] [--n CONNECTIONS]
"""

from __future__ import annotations

import sys
from argparse import SUPPRESS
from typing import Any

from _common import (
    BENCH_DIR,
    TRANSPORTS,
    BenchServer,
    common_args,
    raise_fd_limit,
    ratio,
    run_child,
    run_parent,
    table,
    write_results,
)
from _core_server import CoreBenchServer

NAME = "connections"
#: (hub protocol, transport) of the ASP.NET Core rows.
CORE_ROWS = [
    ("json", "webSockets"),
    ("json", "serverSentEvents"),
    ("json", "longPolling"),
    ("messagepack", "webSockets"),
]


def _args() -> Any:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=100, help="connections starting at once")
    p.add_argument("--idle", type=float, default=None, help="seconds to measure idle CPU")
    p.add_argument(
        "--all-transports-at-every-n",
        action="store_true",
        help="run serverSentEvents and longPolling at every N, not only the smallest",
    )
    p.add_argument("--no-core", action="store_true", help="skip the ASP.NET Core rows")
    p.add_argument("--transport", choices=TRANSPORTS, default="webSockets", help=SUPPRESS)
    p.add_argument("--hub-protocol", default="", help=SUPPRESS)
    return p.parse_args()


async def parent(args: Any) -> int:
    sizes = [args.n] if args.n else ([50] if args.smoke else [1_000, 10_000])
    idle = args.idle if args.idle is not None else (0.5 if args.smoke else 10.0)
    timeout = 60.0 if args.smoke else 600.0
    limit = raise_fd_limit(1 << 20)
    me = str(BENCH_DIR / "connections.py")
    rows = []
    notes = []
    results: dict[str, dict[str, Any]] = {}
    for n in sizes:
        every = n == sizes[0] or args.all_transports_at_every_n
        rows_here = [
            ("floor", "floor", "", "webSockets"),
            ("txsignalr", "txsignalr", "", "webSockets"),
        ]
        if every:
            rows_here += [(f"txsignalr {t}", "txsignalr", "", t) for t in TRANSPORTS[1:]]
        if not args.no_core:
            rows_here += [
                (f"core {protocol} {t}", "txsignalr", protocol, t)
                for protocol, t in CORE_ROWS
                if every or (protocol, t) == ("json", "webSockets")
            ]
        for client, child_kind, hub_protocol, transport in rows_here:
            # HTTP keep-alive on, as a real server has it: txsignalr releases its pooled
            # HTTP connection once connected, leaving one socket per connection.
            keep_alive = True
            server: Any = (
                CoreBenchServer(http_keep_alive=keep_alive)
                if hub_protocol
                else BenchServer(http_keep_alive=keep_alive)
            )
            await server.start()
            try:
                r = await run_child(
                    [
                        me,
                        "--child",
                        child_kind,
                        "--transport",
                        transport,
                        "--hub-protocol",
                        hub_protocol,
                        "--url",
                        server.url("idle"),
                        "--n",
                        str(n),
                        "--concurrency",
                        str(args.concurrency),
                        "--idle",
                        str(idle),
                    ],
                    timeout,
                )
            finally:
                await server.stop()
            r["server_http_keep_alive"] = keep_alive
            r["transport"] = transport
            want: Any = (transport, hub_protocol) if hub_protocol else transport
            if hub_protocol:
                r["hub_protocol"] = hub_protocol
            seen = sorted(set(server.connects))
            if child_kind != "floor" and "error" not in r and seen != [want]:
                r["error"] = f"asked for {want}, the server saw {seen}"
            if getattr(server, "accept_errors", None):
                r["server_accept_errors"] = server.accept_errors
                r["server_first_accept_error"] = server.first_accept_error
            key = f"{client}@{n}"
            results[key] = r
            label = client if keep_alive else client + " *"
            if not keep_alive:
                notes.append(
                    f"* server answered HTTP with 'Connection: close': {n:,} connections x "
                    f"2 sockets (WebSocket + pooled HTTP) would not fit the {limit:,} fd limit"
                )
            if "kib_per_connection" in r:
                rows.append(
                    [
                        label,
                        n,
                        r["connections"],
                        r["kib_per_connection"],
                        r["fds_per_connection"],
                        r["connect_seconds"],
                        r["connections_per_s"],
                        r["cpu_ms_per_connection"],
                        r["idle_cpu_percent"],
                    ]
                )
                if r.get("error"):
                    notes.append(f"{key}: {r['error']}")
            else:
                rows.append([label, n, "n/a", "-", "-", "-", "-", "-", "-"])
                notes.append(f"{key}: {r.get('error')}")
    ours = results.get(f"txsignalr@{sizes[0]}", {}).get("kib_per_connection")
    floor = results.get(f"floor@{sizes[0]}", {}).get("kib_per_connection")
    summary = {
        "sizes": sizes,
        "concurrency": args.concurrency,
        "idle_seconds": idle,
        "fd_limit": limit,
        "smoke": args.smoke,
        "clients": results,
        "target_kib_per_connection": 32,
        "target_connections_per_s": 1000,
        "round_trips_to_open": {
            "webSockets": ["GET /negotiate", "WebSocket upgrade (init frame)", "GET /start"],
            "serverSentEvents": ["GET /negotiate", "GET /connect (init frame)", "GET /start"],
            "longPolling": ["GET /negotiate", "POST /connect (init frame)", "GET /start"],
        },
        "core_round_trips_to_open": {
            "webSockets": ["POST /negotiate", "WebSocket upgrade", "handshake message"],
            "serverSentEvents": ["POST /negotiate", "GET (event stream)", "POST handshake"],
            "longPolling": ["POST /negotiate", "GET (first poll)", "POST handshake"],
        },
        "ratio_kib_txsignalr_vs_floor": ratio(ours, floor),
    }
    path = write_results(NAME, summary, args.json)
    print(
        f"idle connections (fd limit {limit}, {args.concurrency} starting at once, "
        f"idle CPU over {idle:g} s)"
    )
    print(
        table(
            [
                "client",
                "N",
                "open",
                "KiB/conn",
                "fds/conn",
                "connect s",
                "conn/s",
                "cpu ms/conn",
                "idle CPU %",
            ],
            rows,
        )
    )
    for note in notes:
        print(note)
    print("target: <= 32 KiB RSS per idle txsignalr connection, >= 1,000 connections/s")
    print(
        "round trips to open: negotiate, connect (WebSocket upgrade / event stream / "
        "first long poll), /start = 3, on a per-connection pool (maxPersistentPerHost 2)"
    )
    print(f"wrote {path}")
    return 0


def child(args: Any) -> None:
    raise_fd_limit(1 << 20)
    from _twclients import child_main, floor_idle_main, txsignalr_idle_main

    if args.hub_protocol:
        import _core_clients as core

        child_main(
            core.txsignalr_idle_main,
            args.url,
            args.n,
            args.concurrency,
            args.idle,
            args.hub_protocol,
            args.transport,
        )
    elif args.child == "floor":
        child_main(floor_idle_main, args.url, args.n, args.concurrency, args.idle)
    else:
        child_main(
            txsignalr_idle_main, args.url, args.n, args.concurrency, args.idle, args.transport
        )


if __name__ == "__main__":
    a = _args()
    if a.child:
        child(a)
    else:
        run_parent(lambda: parent(a))
    sys.exit(0)

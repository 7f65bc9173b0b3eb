"""
Connections: N idle connections in one client process.

For each N (1,000 and 10,000 by default) a child process opens N connections to the
benchmark server (parent process), at most ``--concurrency`` starting at a time, and
reports the RSS and file descriptors each connection adds, the time to open them all,
and the CPU the process uses while they sit idle (keep-alive timers).

* ``floor``: bare autobahn WebSockets (no negotiate, no ``/start``);
* ``txsignalr``: started ``HubConnection`` objects, one hub proxy and handler each.

The server sends ``{}`` keep-alives every 10 s (negotiate ``KeepAliveTimeout`` 20 s)
and keeps HTTP connections alive as long as the client wants, like a real server.

    python bench/connections.py [--smoke] [--n CONNECTIONS]
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    BENCH_DIR,
    BenchServer,
    common_args,
    raise_fd_limit,
    ratio,
    run_child,
    run_parent,
    table,
    write_results,
)

NAME = "connections"


def _args() -> Any:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=100, help="connections starting at once")
    p.add_argument("--idle", type=float, default=None, help="seconds to measure idle CPU")
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
        for client in ("floor", "txsignalr"):
            # HTTP keep-alive on, as a real server has it: txsignalr releases its pooled
            # HTTP connection once connected, leaving one socket per connection.
            keep_alive = True
            server = BenchServer(http_keep_alive=keep_alive)
            await server.start()
            try:
                r = await run_child(
                    [
                        me,
                        "--child",
                        client,
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
            if server.accept_errors:
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
                        r["idle_cpu_percent"],
                    ]
                )
                if r.get("error"):
                    notes.append(f"{key}: {r['error']}")
            else:
                rows.append([label, n, "n/a", "-", "-", "-", "-", "-"])
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
        "ratio_kib_txsignalr_vs_floor": ratio(ours, floor),
    }
    path = write_results(NAME, summary, args.json)
    print(
        f"idle connections (fd limit {limit}, {args.concurrency} starting at once, "
        f"idle CPU over {idle:g} s)"
    )
    print(
        table(
            ["client", "N", "open", "KiB/conn", "fds/conn", "connect s", "conn/s", "idle CPU %"],
            rows,
        )
    )
    for note in notes:
        print(note)
    print("target: <= 32 KiB RSS per idle txsignalr connection")
    print(f"wrote {path}")
    return 0


def child(args: Any) -> None:
    raise_fd_limit(1 << 20)
    from _twclients import child_main, floor_idle_main, txsignalr_idle_main

    run = {"floor": floor_idle_main, "txsignalr": txsignalr_idle_main}[args.child]
    child_main(run, args.url, args.n, args.concurrency, args.idle)


if __name__ == "__main__":
    a = _args()
    if a.child:
        child(a)
    else:
        run_parent(lambda: parent(a))
    sys.exit(0)

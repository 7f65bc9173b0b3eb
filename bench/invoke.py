"""
Invoke round trip: p50/p99 of ``await hub.invoke("Echo", x)``, one call at a time.

Rows, all in one run, each client in a child process:

* ``raw echo``: a bare autobahn client sends the same invocation JSON and waits for
  the server to echo the bytes back, then decodes them (the floor);
* ``txsignalr``: ``hub.invoke("Echo", x)`` over WebSockets against the same minimal
  server, which answers ``{"R":x,"I":id}`` (so the difference is the client's own
  overhead);
* ``txsignalr serverSentEvents`` / ``txsignalr longPolling``: the same calls over the
  other transports.  There each invocation is a form ``POST /send`` on a pooled
  keep-alive HTTP connection and the result comes back in that answer's body (not on
  the receive channel), so a call costs an HTTP request/response through treq instead
  of one WebSocket frame each way;
* ``txsignalr vs testing server`` (informational): the same calls against
  ``txsignalr.testing.SignalRServer`` with ``C3Hub`` in its own process, which adds
  that server's hub dispatch;
* ``core <hub protocol> raw echo`` / ``core <hub protocol> <transport>``: ASP.NET
  Core, against ``_core_server.CoreBenchServer``'s ``echo`` scenario (a Completion
  whose result is the first argument).  The floor is a bare autobahn client that
  encodes each Invocation, sends it, and decodes the Completion; txsignalr's rows are
  ``await conn.invoke("Echo", x)`` over each transport (MessagePack not over SSE,
  which carries text only).  Over SSE and long polling the Invocation is a ``POST``
  and the Completion comes back on the receive channel (the event stream, or the
  held poll), so a call costs an HTTP request plus one message received.

    python bench/invoke.py [--smoke] [--n CALLS]
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from _common import (
    BENCH_DIR,
    TRANSPORTS,
    BenchServer,
    child_pythonpath,
    common_args,
    pin_cpu,
    ratio,
    run_child,
    run_parent,
    table,
    write_results,
)

NAME = "invoke"

#: (row, child, transport) of the rows against the bench server.
CLASSIC_ROWS = [("raw echo", "floor", "webSockets")] + [
    ("txsignalr" if t == "webSockets" else f"txsignalr {t}", "txsignalr", t) for t in TRANSPORTS
]
#: (row, child, hub protocol, transport) of the rows against the Core bench server;
#: each txsignalr row is compared with the raw echo of its hub protocol.
CORE_ROWS = [
    row
    for protocol in ("json", "messagepack")
    for row in [(f"core {protocol} raw echo", "floor", protocol, "webSockets")]
    + [
        (f"core {protocol} {t}", "txsignalr", protocol, t)
        for t in TRANSPORTS
        if not (protocol == "messagepack" and t == "serverSentEvents")
    ]
]


def _args() -> Any:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--warmup", type=int, default=None, help="calls before measuring")
    p.add_argument(
        "--no-testing-server", action="store_true", help="skip the row against txsignalr.testing"
    )
    p.add_argument("--serve-testing", action="store_true", help=argparse_suppress())
    p.add_argument(
        "--transport", choices=TRANSPORTS, default="webSockets", help=argparse_suppress()
    )
    p.add_argument("--no-core", action="store_true", help="skip the ASP.NET Core rows")
    p.add_argument("--hub-protocol", default="", help=argparse_suppress())
    return p.parse_args()


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


async def _testing_server(timeout: float) -> tuple[asyncio.subprocess.Process, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = child_pythonpath()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH_DIR / "invoke.py"),
        "--serve-testing",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    url = line.decode().strip()
    if not url.startswith("http"):
        err = b""
        if proc.stderr is not None:
            proc.kill()
            err = await proc.stderr.read()
        raise RuntimeError(
            "testing server did not start: " + " | ".join(err.decode().splitlines()[-4:])
        )
    return proc, url


async def parent(args: Any) -> int:
    n = args.n or (200 if args.smoke else 10_000)
    warmup = args.warmup if args.warmup is not None else (50 if args.smoke else 500)
    timeout = 60.0 if args.smoke else 600.0
    me = str(BENCH_DIR / "invoke.py")
    server = BenchServer()
    await server.start()
    url = server.url("echo")
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, child, transport in CLASSIC_ROWS:
            connects = len(server.connects)
            results[name] = r = await _run(me, child, url, n, warmup, timeout, transport)
            seen = sorted(set(server.connects[connects:]))
            if child != "floor" and "error" not in r and seen != [transport]:
                results[name] = {"error": f"asked for {transport}, the server saw {seen}"}
    finally:
        await server.stop()
    if not args.no_testing_server:
        name = "txsignalr vs testing server"
        try:
            proc, turl = await _testing_server(30.0)
        except Exception as e:
            results[name] = {"error": str(e)}
        else:
            try:
                results[name] = await _run(me, "txsignalr", turl, n, warmup, timeout)
            finally:
                proc.kill()
                await proc.wait()
    if not args.no_core:
        results.update(await _core_rows(me, n, warmup, timeout))
    classic_floor = floor = results["raw echo"].get("p50_us")
    rows = []
    notes = []
    for name, r in results.items():
        if "p50_us" not in r:
            rows.append([name, "n/a", "-", "-", "-", "-", "-"])
            notes.append(f"{name}: {r.get('error')}")
            continue
        floor = classic_floor
        if name.startswith("core "):
            floor = results[" ".join(name.split()[:2]) + " raw echo"].get("p50_us")
        rows.append(
            [
                name,
                r["p50_us"],
                r["p90_us"],
                r["p99_us"],
                r["mean_us"],
                r["cpu_us_per_call"],
                f"{ratio(r['p50_us'], floor):.2f}x" if floor else "-",
            ]
        )
    ours = results["txsignalr"].get("p50_us")
    summary = {
        "calls": n,
        "warmup": warmup,
        "smoke": args.smoke,
        "server": "bench/_common.py BenchServer echo scenario (minimal asyncio server)",
        "clients": results,
        "ratio_p50_txsignalr_vs_raw_echo": ratio(ours, classic_floor),
        "target_ratio_p50": 1.1,
    }
    path = write_results(NAME, summary, args.json)
    print(f"invoke round trip: {n:,} sequential calls of Echo(x) after {warmup} warm-up calls")
    print(
        table(
            ["client", "p50 us", "p90 us", "p99 us", "mean us", "client cpu us", "p50 vs raw"], rows
        )
    )
    for note in notes:
        print(note)
    r = summary["ratio_p50_txsignalr_vs_raw_echo"]
    print(
        f"txsignalr p50 / raw echo p50 = {r:.2f} (target <= 1.1)"
        if r
        else "txsignalr p50 / raw echo p50 = n/a"
    )
    print(f"wrote {path}")
    return 0


async def _run(
    me: str, child: str, url: str, n: int, warmup: int, timeout: float, *extra: str
) -> dict[str, Any]:
    """One client child: ``child`` (floor or txsignalr) against ``url``, with the
    transport (and more options) in ``extra``."""
    args = [me, "--child", child, "--url", url, "--n", str(n), "--warmup", str(warmup)]
    if extra:
        args += ["--transport", *extra]
    return await run_child(args, timeout)


async def _core_rows(me: str, n: int, warmup: int, timeout: float) -> dict[str, dict[str, Any]]:
    """The ASP.NET Core rows, against the Core bench server's ``echo`` scenario."""
    from _core_server import CoreBenchServer

    server = CoreBenchServer()
    await server.start()
    url = server.url("echo")
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, child, protocol, transport in CORE_ROWS:
            connects = len(server.connects)
            results[name] = r = await _run(
                me, child, url, n, warmup, timeout, transport, "--hub-protocol", protocol
            )
            seen = sorted(set(server.connects[connects:]))
            if "error" not in r and seen != [(transport, protocol)]:
                results[name] = {
                    "error": f"asked for {transport}/{protocol}, the server saw {seen}"
                }
    finally:
        await server.stop()
    return results


def serve_testing() -> None:
    """Run txsignalr.testing.SignalRServer with C3Hub until stdin closes."""
    pin_cpu(0)
    from twisted.internet import defer, task
    from twisted.internet.protocol import Protocol
    from twisted.internet.stdio import StandardIO

    from txsignalr.testing import C3Hub, SignalRServer

    async def main(reactor: Any) -> None:
        server = SignalRServer(reactor, hubs=[C3Hub()])
        await server.listen(0, "127.0.0.1")
        print(server.url, flush=True)
        gone: defer.Deferred[None] = defer.Deferred()

        class Watch(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                gone.callback(None)

        StandardIO(Watch(), reactor=reactor)
        await gone

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


def child(args: Any) -> None:
    from _twclients import child_main, floor_echo_main, txsignalr_invoke_main

    if args.hub_protocol:
        import _core_clients as core

        if args.child == "floor":
            child_main(core.floor_echo_main, args.url, args.n, args.warmup, args.hub_protocol)
        else:
            child_main(
                core.txsignalr_invoke_main,
                args.url,
                args.n,
                args.warmup,
                args.hub_protocol,
                args.transport,
            )
    elif args.child == "floor":
        child_main(floor_echo_main, args.url, args.n, args.warmup)
    else:
        child_main(txsignalr_invoke_main, args.url, args.n, args.warmup, args.transport)


if __name__ == "__main__":
    a = _args()
    if a.serve_testing:
        serve_testing()
    elif a.child:
        child(a)
    else:
        run_parent(lambda: parent(a))

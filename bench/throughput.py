"""
Receive throughput: hub client-method calls per second delivered to a handler.

A server that is never the bottleneck (pre-encoded frames written straight to the
socket, in the parent process) streams N persistent-response frames carrying
``c3.tick`` calls to a client in a child process:

* ``floor``: a bare autobahn WebSocket client that decodes each frame's JSON and
  counts the calls, nothing else: the physical limit of Twisted + autobahn + JSON
  here (always over WebSockets, whatever ``--transport`` says);
* ``txsignalr``: ``HubConnection(..., transports=[TRANSPORT])`` with
  ``hub("c3").on("tick", handler)``, over ``--transport``: ``webSockets`` (the
  default), ``serverSentEvents`` (one ``data:`` event per frame) or ``longPolling``
  (one frame per poll response).  A run on which the server saw the client connect
  with another transport counts as failed.

Each client runs ``--repeat`` times, interleaved; the median is reported.

    python bench/throughput.py [--smoke] [--n CALLS] [--batch CALLS_PER_FRAME]
        [--transport webSockets|serverSentEvents|longPolling]
"""

from __future__ import annotations

import resource
import statistics
import sys
from typing import Any

from _common import (
    BENCH_DIR,
    TRANSPORTS,
    BenchServer,
    common_args,
    ratio,
    run_child,
    run_parent,
    table,
    write_results,
)

NAME = "throughput"
CLIENTS = ("floor", "txsignalr")


def _args(argv: list[str] | None = None) -> Any:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument(
        "--batch", type=int, default=1, help="calls per frame (the server batches up to 10)"
    )
    p.add_argument("--repeat", type=int, default=None, help="runs per client (median reported)")
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="webSockets",
        help="the transport txsignalr receives over (default webSockets)",
    )
    return p.parse_args(argv)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r.get("calls_per_s")]
    if not good:
        return {"error": runs[-1].get("error", "no result") if runs else "not run", "runs": runs}
    rates = [r["calls_per_s"] for r in good]
    cpu = [r["cpu_us_per_call"] for r in good if r.get("cpu_us_per_call")]
    out: dict[str, Any] = {
        "calls_per_s": statistics.median(rates),
        "calls_per_s_best": max(rates),
        "us_per_call": 1e6 / statistics.median(rates),
        "cpu_us_per_call": statistics.median(cpu) if cpu else None,
        "server_cpu_s": statistics.median(r["server_cpu_s"] for r in good),
        "client_seconds": statistics.median(r["seconds"] for r in good),
        "runs": runs,
    }
    if len(good) < len(runs):
        out["error"] = next(r["error"] for r in runs if "error" in r)
    return out


async def measure(
    clients: dict[str, list[str]],
    n: int,
    batch: int,
    repeat: int,
    timeout: float,
    transports: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """
    Run every client ``repeat`` times against one server; ``clients`` maps a name to
    the command line (after the interpreter) of its child process, in which ``{url}``
    is replaced.  A client whose name ends in ``@python`` is not used: see ``peer.py``.
    ``transports`` maps a client to the transport it must connect with (default
    ``webSockets``); a run in which the server saw any other fails.
    """
    expected = {name: "webSockets" for name in clients} | (transports or {})
    server = BenchServer()
    await server.start()
    frames = max(1, n // batch)
    calls = frames * batch
    for transport in set(expected.values()):
        server.prepare_stream(frames, batch, transport)
    url = server.url("stream", frames=frames, batch=batch)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
    try:
        for _ in range(repeat):
            for name, argv in clients.items():
                python = None
                if argv and argv[0].startswith("python="):
                    python, argv = argv[0][len("python=") :], argv[1:]
                cmd = [a.replace("{url}", url).replace("{n}", str(calls)) for a in argv]
                cpu0 = _cpu()
                connects = len(server.connects)
                result = await run_child(cmd, timeout, python=python)
                seen = sorted(set(server.connects[connects:]))
                result["transports_seen"] = seen
                if seen != [expected[name]] and "error" not in result:
                    result = {
                        "error": f"asked to connect with {expected[name]}, but the server "
                        f"saw {', '.join(seen) or 'no connect'}",
                        "transports_seen": seen,
                    }
                # The server's own CPU over the whole child run (handshake included):
                # well under the client's, so the server was never the bottleneck.
                result["server_cpu_s"] = _cpu() - cpu0
                runs[name].append(result)
    finally:
        await server.stop()
    return {name: _summarise(r) for name, r in runs.items()}


def default_clients(transport: str = "webSockets") -> dict[str, list[str]]:
    me = str(BENCH_DIR / "throughput.py")
    return {
        name: [me, "--child", name, "--url", "{url}", "--n", "{n}", "--transport", transport]
        for name in CLIENTS
    }


def report(results: dict[str, dict[str, Any]], baseline: str = "floor") -> str:
    base = results.get(baseline, {}).get("calls_per_s")
    rows = []
    notes = []
    for name, r in results.items():
        rate = r.get("calls_per_s")
        if rate is None:
            rows.append([name, "n/a", "-", "-", "-"])
            notes.append(f"{name}: {r.get('error')}")
            continue
        rows.append(
            [
                name,
                rate,
                r["us_per_call"],
                r.get("cpu_us_per_call") or "-",
                f"{ratio(rate, base):.2f}x" if base else "-",
            ]
        )
    text = table(["client", "calls/s", "us/call", "cpu us/call", f"vs {baseline}"], rows)
    return "\n".join([text, *notes])


async def parent(args: Any) -> int:
    n = args.n or (5_000 if args.smoke else 200_000)
    repeat = args.repeat or (1 if args.smoke else 3)
    timeout = 60.0 if args.smoke else 600.0
    results = await measure(
        default_clients(args.transport),
        n,
        args.batch,
        repeat,
        timeout,
        transports={"txsignalr": args.transport},
    )
    floor = results["floor"].get("calls_per_s")
    ours = results["txsignalr"].get("calls_per_s")
    summary = {
        "calls": max(1, n // args.batch) * args.batch,
        "batch": args.batch,
        "repeat": repeat,
        "smoke": args.smoke,
        "transport": args.transport,
        "clients": results,
        "ratio_txsignalr_vs_floor": ratio(ours, floor),
        "target_ratio_vs_floor": 0.95,
    }
    path = write_results(NAME, summary, args.json)
    print(
        f"receive throughput: {summary['calls']:,} calls, {args.batch} per frame, "
        f"txsignalr over {args.transport} (floor over webSockets), median of {repeat}"
    )
    print(report(results))
    r = summary["ratio_txsignalr_vs_floor"]
    print(f"txsignalr / floor = {r:.2f} (target >= 0.95)" if r else "txsignalr / floor = n/a")
    print(f"wrote {path}")
    return 0


def child(args: Any) -> None:
    from _twclients import child_main, floor_stream_main, txsignalr_stream_main

    if args.child == "floor":
        child_main(floor_stream_main, args.url, args.n)
    else:
        child_main(txsignalr_stream_main, args.url, args.n, args.transport)


if __name__ == "__main__":
    a = _args()
    if a.child:
        child(a)
    else:
        run_parent(lambda: parent(a))
    sys.exit(0)

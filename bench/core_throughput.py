"""
ASP.NET Core receive throughput: hub messages per second delivered to the application.

The Core bench server (``_core_server.py``, in this process, pinned to CPU 0) sends
N pre-encoded ``tick`` Invocations (``--mode stream``, the default) or answers a
``Counter`` StreamInvocation with N pre-encoded StreamItems (``--mode counter``, what
``core_stream.py`` runs), ``--batch`` records per WebSocket message / SSE event /
long-poll response.  For each row (hub protocol over transport: JSON over
webSockets, serverSentEvents and longPolling, MessagePack over webSockets and
longPolling) three clients run in child processes pinned to CPU 1:

* ``txsignalr``: ``HubConnection(reactor, url, protocol="core", hub_protocol=P,
  transports=[T])`` with ``conn.on("tick", handler)`` (or ``async for item in
  conn.stream("Counter", N)``);
* ``floor``: the bare transport client (autobahn WebSocket, treq streaming GET of the
  event stream, or a treq poll loop) splitting and decoding every record;
* ``node``: Microsoft's ``@microsoft/signalr`` 10.0.11 (``tests/js/node_modules``);
* in ``--mode counter`` also ``txsignalr-each``: the same stream read with
  ``conn.stream("Counter", N).each(callback)``.

Plus per hub protocol a ``decode`` row: the cheapest decode of the same records in a
tight loop, no I/O.  A run in which the server saw the client handshake with another
transport or hub protocol than asked counts as failed.  Clients run ``--repeat``
times, interleaved; the median is reported.

    python bench/core_throughput.py [--smoke] [--n N] [--lp-n N] [--batch K]
        [--repeat R] [--rows json/webSockets,messagepack/longPolling,...]
        [--mode stream|counter]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
from typing import Any

from _common import (
    BENCH_DIR,
    REPO,
    common_args,
    cpu_id,
    ratio,
    run_child,
    run_parent,
    table,
    write_results,
)
from _core_server import CoreBenchServer

NAME = "core_throughput"
ROWS = (
    "json/webSockets",
    "json/serverSentEvents",
    "json/longPolling",
    "messagepack/webSockets",
    "messagepack/longPolling",
)
#: The clients of each row, by mode (``counter`` adds ``stream.each(callback)``).
CLIENTS = {
    "stream": ("floor", "txsignalr", "node"),
    "counter": ("floor", "txsignalr", "txsignalr-each", "node"),
}
NODE_SCRIPT = BENCH_DIR / "node_core_client.js"
NODE_MODULES = REPO / "tests" / "js" / "node_modules"


def _args(argv: list[str] | None = None, mode: str = "stream") -> Any:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1, help="records per transport message")
    p.add_argument("--repeat", type=int, default=None, help="runs per client (median reported)")
    p.add_argument(
        "--lp-n", type=int, default=None, help="messages for longPolling rows (default n/20)"
    )
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated rows (default all: {','.join(ROWS)})",
    )
    p.add_argument("--mode", choices=("stream", "counter"), default=mode)
    p.add_argument("--protocol", default="json", help=argparse.SUPPRESS)
    p.add_argument("--transport", default="webSockets", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r.get("calls_per_s") and "error" not in r]
    if not good:
        return {"error": runs[-1].get("error", "no result") if runs else "not run", "runs": runs}
    rates = [r["calls_per_s"] for r in good]
    cpu = [r["cpu_us_per_call"] for r in good if r.get("cpu_us_per_call")]
    out: dict[str, Any] = {
        "calls_per_s": statistics.median(rates),
        "calls_per_s_best": max(rates),
        "us_per_call": 1e6 / statistics.median(rates),
        "cpu_us_per_call": statistics.median(cpu) if cpu else None,
        "server_cpu_s": statistics.median(r.get("server_cpu_s", 0.0) for r in good),
        "client_seconds": statistics.median(r["seconds"] for r in good),
        "runs": runs,
    }
    if len(good) < len(runs):
        out["error"] = next(r["error"] for r in runs if "error" in r)
    return out


def node_missing() -> str | None:
    """Why the Node client cannot run here, or ``None``."""
    if shutil.which("node") is None:
        return "node is not on PATH (Node >= 20.19 runs @microsoft/signalr)"
    if not (NODE_MODULES / "@microsoft" / "signalr").is_dir():
        return f"{NODE_MODULES}/@microsoft/signalr is missing: run (cd tests/js && npm ci)"
    return None


def child_command(name: str, row: str, url: str, n: int, mode: str) -> list[str] | str:
    """The command line of one client's child process, or why it cannot run."""
    protocol, transport = row.split("/")
    if name == "node":
        why = node_missing()
        if why:
            return why
        cpu = cpu_id(1)
        pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
        return [*pin, "node", str(NODE_SCRIPT), url, transport, protocol, str(n), mode]
    me = str(BENCH_DIR / "core_throughput.py")
    return [sys.executable, me, "--child", name, "--url", url, "--n", str(n),
            "--protocol", protocol, "--transport", transport, "--mode", mode]  # fmt: skip


async def _run(cmd: list[str], timeout: float) -> dict[str, Any]:
    return await run_child(cmd[1:], timeout, python=cmd[0])


async def measure(
    rows: list[str], n: int, lp_n: int, batch: int, repeat: int, timeout: float, mode: str
) -> dict[str, Any]:
    server = CoreBenchServer()
    await server.start()
    sizes = {row: lp_n if row.endswith("longPolling") else n for row in rows}
    protocols = sorted({row.split("/")[0] for row in rows})
    for row in rows:
        protocol, transport = row.split("/")
        server.prepare(mode, sizes[row], batch, transport, protocol)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        row: {name: [] for name in CLIENTS[mode]} for row in rows
    }
    decode_runs: dict[str, list[dict[str, Any]]] = {p: [] for p in protocols}
    try:
        for _ in range(repeat):
            for protocol in protocols:
                me = str(BENCH_DIR / "core_throughput.py")
                cmd = [sys.executable, me, "--child", "decode", "--n", str(n)]
                cmd += ["--protocol", protocol, "--mode", mode]
                decode_runs[protocol].append(await _run(cmd, timeout))
            for row in rows:
                protocol, transport = row.split("/")
                url = server.url(mode, n=sizes[row], batch=batch)
                for name in CLIENTS[mode]:
                    command = child_command(name, row, url, sizes[row], mode)
                    if isinstance(command, str):
                        runs[row][name].append({"error": command})
                        continue
                    cpu0 = _cpu()
                    seen_before = len(server.connects)
                    result = await _run(command, timeout)
                    seen = [list(c) for c in server.connects[seen_before:]]
                    result["handshakes_seen"] = seen
                    said = [result.get("transport_in_use"), result.get("hub_protocol")]
                    if "error" not in result and (seen != [[transport, protocol]] or said != [
                        transport, protocol
                    ]):  # fmt: skip
                        result = {
                            "error": f"asked for {protocol} over {transport}, but the server "
                            f"saw {seen or 'no handshake'} and the client said {said}",
                            "handshakes_seen": seen,
                        }
                    # The server's CPU over the whole child run (start-up included).
                    result["server_cpu_s"] = _cpu() - cpu0
                    runs[row][name].append(result)
    finally:
        await server.stop()
    out: dict[str, Any] = {"rows": {}, "decode": {}}
    for protocol, r in decode_runs.items():
        out["decode"][protocol] = _summarise(r)
    for row in rows:
        clients = {name: _summarise(r) for name, r in runs[row].items()}
        ours = clients["txsignalr"].get("calls_per_s")
        decode = out["decode"][row.split("/")[0]]
        out["rows"][row] = {
            "calls": sizes[row] if mode == "counter" else max(1, sizes[row] // batch) * batch,
            "clients": clients,
            "ratio_txsignalr_vs_floor": ratio(ours, clients["floor"].get("calls_per_s")),
            "ratio_txsignalr_vs_decode": ratio(ours, decode.get("calls_per_s")),
            "ratio_txsignalr_vs_node": ratio(ours, clients["node"].get("calls_per_s")),
            "cpu_ratio_txsignalr_vs_floor": ratio(
                clients["txsignalr"].get("cpu_us_per_call"), clients["floor"].get("cpu_us_per_call")
            ),
        }
        if "txsignalr-each" in clients:
            out["rows"][row]["ratio_txsignalr_each_vs_node"] = ratio(
                clients["txsignalr-each"].get("calls_per_s"), clients["node"].get("calls_per_s")
            )
    return out


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def report(results: dict[str, Any]) -> str:
    lines = []
    notes = []
    for protocol, r in results["decode"].items():
        rate = r.get("calls_per_s")
        cpu = r.get("cpu_us_per_call") or "-"
        lines.append([f"{protocol}/decode", "decode", rate or "n/a", cpu, "-", "-", "-"])
        if rate is None:
            notes.append(f"{protocol}/decode: {r.get('error')}")
    for row, data in results["rows"].items():
        clients = data["clients"]
        floor = clients["floor"].get("calls_per_s")
        decode = results["decode"][row.split("/")[0]].get("calls_per_s")
        node = clients["node"].get("calls_per_s")
        for name in clients:
            r = clients[name]
            rate = r.get("calls_per_s")
            if rate is None:
                lines.append([row, name, "n/a", "-", "-", "-", "-"])
                notes.append(f"{row} {name}: {r.get('error')}")
                continue
            lines.append(
                [
                    row,
                    name,
                    rate,
                    r.get("cpu_us_per_call") or "-",
                    _x(ratio(rate, floor)),
                    _x(ratio(rate, decode)),
                    _x(ratio(rate, node)) if name.startswith("txsignalr") else "-",
                ]
            )
    head = ["row", "client", "msgs/s", "cpu us/msg", "vs floor", "vs decode", "txsignalr/node"]
    return "\n".join([table(head, lines), *notes])


def _node_versions(results: dict[str, Any]) -> str:
    """Which Node and @microsoft/signalr the node rows ran, from their first good run."""
    for data in results["rows"].values():
        for run in data["clients"]["node"]["runs"]:
            if "node" in run:
                return f"@microsoft/signalr {run['signalr']} on Node {run['node']}"
    return "no node run succeeded"


async def parent(args: Any) -> int:
    n = args.n or (2_000 if args.smoke else 100_000)
    lp_n = args.lp_n or (300 if args.smoke else max(1, n // 20))
    repeat = args.repeat or (1 if args.smoke else 3)
    timeout = 60.0 if args.smoke else 900.0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"unknown rows {unknown}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    results = await measure(rows, n, lp_n, args.batch, repeat, timeout, args.mode)
    summary = {
        "mode": args.mode,
        "calls": n,
        "long_polling_calls": lp_n,
        "batch": args.batch,
        "repeat": repeat,
        "smoke": args.smoke,
        "node": node_missing() or _node_versions(results),
        **results,
    }
    path = write_results(args.json_name, summary, args.json)
    what = "tick Invocations" if args.mode == "stream" else "Counter StreamItems"
    print(
        f"ASP.NET Core receive throughput: {n:,} {what} ({lp_n:,} over long polling), "
        f"{args.batch} per message, median of {repeat}"
    )
    print(report(results))
    print(f"wrote {path}")
    return 0


def child(args: Any) -> None:
    from _core_clients import (
        decode_main,
        floor_lp_main,
        floor_sse_main,
        floor_ws_main,
        txsignalr_main,
    )
    from _twclients import child_main

    kind = 1 if args.mode == "stream" else 2
    if args.child == "decode":
        child_main(decode_main, args.n, args.protocol, args.mode)
    elif args.child in ("txsignalr", "txsignalr-each"):
        mode = "each" if args.child == "txsignalr-each" else args.mode
        child_main(txsignalr_main, args.url, args.n, args.protocol, args.transport, mode)
    else:
        floors = {
            "webSockets": floor_ws_main,
            "serverSentEvents": floor_sse_main,
            "longPolling": floor_lp_main,
        }
        child_main(floors[args.transport], args.url, args.n, args.protocol, kind)


def main(mode: str = "stream", name: str = NAME) -> None:
    a = _args(mode=mode)
    a.json_name = name
    if a.child:
        child(a)
    else:
        run_parent(lambda: parent(a))
    sys.exit(0)


if __name__ == "__main__":
    main()

"""
Peers: txsignalr beside the other Python SignalR clients, classic and ASP.NET Core.

* **Classic**: the receive-throughput scenario of ``throughput.py`` for
  ``signalr-async`` (the only maintained Python client for classic ASP.NET SignalR
  with invocation results), txsignalr and the floor, against the classic bench server.
* **ASP.NET Core**: the receive scenario (N ``tick`` calls to a handler) and the echo
  scenario (p50/p99 of sequential ``invoke("Echo", x)``) for ``pysignalr``,
  ``signalrcore``, ``aiosignalr``, ``signalr-async`` (``netcore``) and txsignalr, each
  with the JSON and MessagePack hub protocols, over WebSockets (the one transport
  every peer has).  Until the Core bench server exists they run against
  ``txsignalr.testing`` in a process of its own (``_peer_core_server.py``), so the
  figures include that server; :func:`_peers.core_peer_rows` takes any Core URL.

Every peer is installed, pinned (``_peers.PEERS`` says why), into its own venv under
``bench/`` (git-ignored), created on first use.  When a peer cannot be installed or
run, its row says why instead of showing a number.

    python bench/peer.py [--smoke] [--n CALLS] [--batch CALLS_PER_FRAME]
        [--core-n CALLS] [--echo-n CALLS] [--no-core]
"""

from __future__ import annotations

import sys
from typing import Any

from _common import BENCH_DIR, common_args, ratio, run_parent, table, write_results
from _core_server import CoreBenchServer
from _peers import PEERS, core_peer_rows, ensure_peer
from throughput import default_clients, measure, report

NAME = "peer"
PEER = "signalr-async"
#: The pins and their reasons are in ``_peers.PEERS``: signalr-async 3.0.0 needs
#: aiohttp<3.11 (it sends through aiohttp's private ``WebSocketWriter.send``).
PEER_VERSION = PEERS[PEER].requirements[0].split("==", 1)[1]
PEER_AIOHTTP = PEERS[PEER].requirements[1]


def _args() -> Any:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1, help="calls per frame")
    p.add_argument("--repeat", type=int, default=None, help="runs per client (median reported)")
    p.add_argument("--peer-version", default=PEER_VERSION, help="signalr-async version")
    p.add_argument(
        "--peer-aiohttp",
        default=PEER_AIOHTTP,
        help="aiohttp requirement for the peer venv ('' = whatever pip picks)",
    )
    p.add_argument("--core-n", type=int, default=None, help="Core receive: tick calls")
    p.add_argument("--echo-n", type=int, default=None, help="Core echo: round trips")
    p.add_argument("--no-core", action="store_true", help="only the classic rows")
    return p.parse_args()


async def core_section(args: Any, repeat: int, timeout: float) -> dict[str, Any]:
    """The Core peer rows against the Core bench server (pre-encoded frames)."""
    n = args.core_n or (2_000 if args.smoke else 100_000)
    echo_n = args.echo_n or (200 if args.smoke else 2_000)
    warmup = 20 if args.smoke else 200
    server = CoreBenchServer()
    try:
        await server.start()
        for protocol in ("json", "messagepack"):
            server.prepare("stream", n, 1, "webSockets", protocol)
        ticks_url = server.url("stream", n=n, batch=1)
        echo_url = server.url("echo")
        receive = await core_peer_rows(ticks_url, n, repeat=repeat, timeout=timeout)
        echo = await core_peer_rows(
            echo_url, echo_n, scenario="echo", repeat=repeat, warmup=warmup, timeout=timeout
        )
    except Exception as e:
        return {"error": f"Core rows not run: {type(e).__name__}: {e}"}
    finally:
        await server.stop()
    return {
        "server": "bench/_core_server.py CoreBenchServer (pre-encoded frames)",
        "transport": "webSockets",
        "calls": n,
        "echo_calls": echo_n,
        "echo_warmup": warmup,
        "receive": receive,
        "echo": echo,
        "ratio_txsignalr_vs_best_peer": {
            p: _vs_best_peer(receive, p) for p in ("json", "messagepack")
        },
    }


def _vs_best_peer(rows: dict[str, dict[str, Any]], protocol: str) -> float | None:
    """txsignalr's calls/s over the fastest peer's, with one hub protocol."""
    ours = rows.get(f"txsignalr {protocol}", {}).get("calls_per_s")
    peers = [
        r.get("calls_per_s") or 0.0
        for k, r in rows.items()
        if k.endswith(f" {protocol}") and not k.startswith("txsignalr ")
    ]
    return ratio(ours, max(peers, default=0.0))


def core_report(core: dict[str, Any]) -> str:
    if "error" in core:
        return str(core["error"])
    lines = [
        f"ASP.NET Core, {core['transport']}, against {core['server']}: receive "
        f"{core['calls']:,} tick calls; echo {core['echo_calls']:,} round trips"
    ]
    rows, notes = [], []
    for key, r in core["receive"].items():
        e = core["echo"].get(key, {})
        if r.get("calls_per_s") is None and e.get("p50_us") is None:
            rows.append([key, "n/a", "-", "-", "-", "-", "-"])
        else:
            rows.append(
                [
                    key,
                    r.get("calls_per_s") or "n/a",
                    r.get("cpu_us_per_call") or "-",
                    r.get("cpu_us_per_call_all") or "-",
                    e.get("p50_us") or "n/a",
                    e.get("p99_us") or "-",
                    e.get("cpu_us_per_call") or "-",
                ]
            )
        for what, row in (("receive", r), ("echo", e)):
            if "error" in row:
                notes.append(f"{key} {what}: {row['error']}")
        for w in r.get("workarounds") or []:
            notes.append(f"{key}: {w}")
    headers = ["client", "calls/s", "cpu us/call", "cpu us/call all", "echo p50 us",
               "echo p99 us", "cpu us/echo"]  # fmt: skip
    lines.append(table(headers, rows))
    lines.extend(sorted(set(notes)))
    return "\n".join(lines)


async def parent(args: Any) -> int:
    n = args.n or (5_000 if args.smoke else 200_000)
    repeat = args.repeat or (1 if args.smoke else 3)
    timeout = 60.0 if args.smoke else 600.0
    python, detail = ensure_peer(
        PEER, requirements=(f"{PEER}=={args.peer_version}", args.peer_aiohttp)
    )
    clients = default_clients()
    if python is not None:
        clients[PEER] = [
            f"python={python}",
            str(BENCH_DIR / "_peer_client.py"),
            "--url",
            "{url}",
            "--n",
            "{n}",
        ]
    results = await measure(clients, n, args.batch, repeat, timeout)
    if python is None:
        results[PEER] = {"error": detail}
    else:
        results[PEER]["version"] = detail
    ours = results["txsignalr"].get("calls_per_s")
    theirs = results[PEER].get("calls_per_s")
    summary = {
        "calls": max(1, n // args.batch) * args.batch,
        "batch": args.batch,
        "repeat": repeat,
        "smoke": args.smoke,
        "peer": PEER,
        "peer_version": detail if python else None,
        "clients": results,
        "ratio_txsignalr_vs_peer": ratio(ours, theirs),
        "ratio_txsignalr_vs_floor": ratio(ours, results["floor"].get("calls_per_s")),
        "target_ratio_vs_peer": 2.0,
    }
    if not args.no_core:
        summary["core"] = await core_section(args, repeat, timeout)
    path = write_results(NAME, summary, args.json)
    print(
        f"classic receive throughput vs {PEER} {detail if python else ''}: "
        f"{summary['calls']:,} calls, {args.batch} per frame, median of {repeat}"
    )
    print(report(results))
    r = summary["ratio_txsignalr_vs_peer"]
    print(f"txsignalr / {PEER} = {r:.2f} (target >= 2)" if r else f"txsignalr / {PEER} = n/a")
    if "core" in summary:
        print()
        print(core_report(summary["core"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    a = _args()
    run_parent(lambda: parent(a))
    sys.exit(0)

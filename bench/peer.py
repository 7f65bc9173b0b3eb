"""
Peer: the receive-throughput scenario for ``signalr-async``, txsignalr and the floor.

``signalr-async`` is the only maintained Python client for classic ASP.NET SignalR
with invocation results.  The script installs it into its own virtualenv,
``bench/.peer-venv`` (created on first use, git-ignored), then streams the same
pre-encoded frames to the three clients in one run (see ``throughput.py``).  When the
peer cannot be installed or does not work against the classic protocol, the table
says why instead of showing a number.

    python bench/peer.py [--smoke] [--n CALLS] [--batch CALLS_PER_FRAME]
"""

from __future__ import annotations

import sys
from typing import Any

from _common import BENCH_DIR, common_args, ratio, run_parent, write_results
from _peers import PEERS, ensure_peer
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
    return p.parse_args()


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
    path = write_results(NAME, summary, args.json)
    print(
        f"receive throughput vs {PEER} {detail if python else ''}: {summary['calls']:,} calls, "
        f"{args.batch} per frame, median of {repeat}"
    )
    print(report(results))
    r = summary["ratio_txsignalr_vs_peer"]
    print(f"txsignalr / {PEER} = {r:.2f} (target >= 2)" if r else f"txsignalr / {PEER} = n/a")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    a = _args()
    run_parent(lambda: parent(a))
    sys.exit(0)

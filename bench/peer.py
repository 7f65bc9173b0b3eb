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

import subprocess
import sys
import venv
from typing import Any

from _common import BENCH_DIR, common_args, ratio, run_parent, write_results
from throughput import default_clients, measure, report

NAME = "peer"
PEER = "signalr-async"
PEER_VERSION = "3.0.0"
#: signalr-async 3.0.0 sends through aiohttp's private ``WebSocketWriter.send``,
#: renamed ``send_frame`` in aiohttp 3.11: with the aiohttp pip picks by default every
#: send fails (``AttributeError: 'WebSocketWriter' object has no attribute 'send'``),
#: starting with the ``{}`` ping signalr-async sends right after ``/start``, so
#: ``start()`` itself fails.  Pin the last aiohttp it works with.
PEER_AIOHTTP = "aiohttp<3.11"
VENV = BENCH_DIR / ".peer-venv"


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


def ensure_peer(version: str, aiohttp: str) -> tuple[str | None, str]:
    """
    Make sure the peer virtualenv has ``signalr-async==version`` (and ``aiohttp``).

    :returns: ``(python, detail)``: the venv's interpreter and the installed version,
        or ``(None, reason)`` when it cannot be installed or imported.
    """
    python = VENV / "bin" / "python"
    check = [
        str(python),
        "-c",
        "import importlib.metadata as m, signalr_async.net; "
        "print(m.version('signalr-async'), 'with aiohttp', m.version('aiohttp'))",
    ]
    stamp = VENV / "requirements.txt"
    wanted = f"{PEER}=={version}\n{aiohttp}\n"
    if python.exists():
        r = subprocess.run(check, capture_output=True, text=True, timeout=60)
        if r.returncode == 0 and stamp.exists() and stamp.read_text() == wanted:
            return str(python), r.stdout.strip()
    else:
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        except Exception as e:
            return None, f"could not create {VENV}: {e}"
    r = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{PEER}=={version}",
            *([aiohttp] if aiohttp else []),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        tail = [line for line in r.stderr.splitlines() if "WARNING" not in line][-3:]
        return None, f"pip install {PEER}=={version} failed: " + " | ".join(tail)
    r = subprocess.run(check, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return None, f"{PEER} installed but does not import: " + r.stderr.strip().splitlines()[-1]
    stamp.write_text(wanted)
    return str(python), r.stdout.strip()


async def parent(args: Any) -> int:
    n = args.n or (5_000 if args.smoke else 200_000)
    repeat = args.repeat or (1 if args.smoke else 3)
    timeout = 60.0 if args.smoke else 600.0
    python, detail = ensure_peer(args.peer_version, args.peer_aiohttp)
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

"""
Soak: RSS over time while connections reconnect all the time, so a leak shows.

One process runs ``txsignalr.testing.SignalRServer`` and ``--connections`` clients of
each family and transport (classic and ASP.NET Core; webSockets, serverSentEvents,
longPolling); the server calls ``tick`` on every client every ``--tick`` seconds and
drops every transport every ``--drop-every`` seconds, so each client reconnects (and
a Core client is a new connection each time).  Every ``--sample`` seconds the script
prints the process's RSS, its open file descriptors, the reactor's timers and the
ticks delivered; at the end, the RSS growth per hour over the second half of the run
(the first half warms caches and pools up).  Minutes, not seconds: not run in CI
(``--smoke`` runs 6 seconds, for the smoke test).

    python bench/soak.py [--minutes 10] [--connections 5] [--drop-every 2]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

from _common import open_fds, rss_kib, table, write_results

NAME = "soak"
TRANSPORTS = ("webSockets", "serverSentEvents", "longPolling")


def _args() -> Any:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a 6-second run")
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (10)")
    p.add_argument("--connections", type=int, default=5, help="clients per family x transport")
    p.add_argument("--drop-every", type=float, default=2.0, help="seconds between drops (2)")
    p.add_argument("--tick", type=float, default=0.05, help="seconds between ticks (0.05)")
    p.add_argument("--sample", type=float, default=None, help="seconds between samples")
    p.add_argument("--json", type=Path, default=None, help="results file")
    return p.parse_args()


async def soak(reactor: Any, args: Any) -> dict[str, Any]:
    from twisted.internet.task import deferLater

    from txsignalr import ConnectionState, HubConnection
    from txsignalr.testing import EchoHub, SignalRServer

    seconds = 6.0 if args.smoke else args.minutes * 60
    sample = args.sample or (1.0 if args.smoke else max(5.0, seconds / 60))
    server = SignalRServer(reactor, hubs=[EchoHub(tick_interval=args.tick)])
    await server.listen(port=0, interface="127.0.0.1")
    clients: list[HubConnection] = []
    ticks = [0]

    def on_tick(*_: Any) -> None:
        ticks[0] += 1

    for family in ("classic", "core"):
        for transport in TRANSPORTS:
            for _ in range(args.connections):
                url = server.url if family == "classic" else server.core_url("echo")
                conn = HubConnection(
                    reactor,
                    url,
                    protocol=family,
                    transports=[transport],
                    reconnect_delay=0.05 if family == "classic" else (lambda attempt: 0.05),
                )
                proxy: Any = conn.hub("echo") if family == "classic" else conn
                proxy.on("tick", on_tick)
                clients.append(conn)
    for conn in clients:
        await conn.start()

    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    next_drop = start + args.drop_every
    drops = 0
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        if now >= next_drop:
            server.drop_all_transports()
            drops += 1
            next_drop = now + args.drop_every
        await deferLater(reactor, min(sample, args.drop_every) / 4, lambda: None)
        if not samples or now - samples[-1]["t"] - start >= sample:
            gc.collect()
            samples.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "rss_kib": rss_kib(),
                    "fds": open_fds(),
                    "timers": len(reactor.getDelayedCalls()),
                    "ticks": ticks[0],
                    "connected": sum(c.state is ConnectionState.connected for c in clients),
                    "drops": drops,
                }
            )
            s = samples[-1]
            print(
                f"{s['t']:>7.1f} s  rss {s['rss_kib']:>7} KiB  fds {s['fds']:>4}  "
                f"timers {s['timers']:>4}  ticks {s['ticks']:>8}  connected "
                f"{s['connected']}/{len(clients)}  drops {s['drops']}",
                flush=True,
            )
    for conn in clients:
        await conn.stop()
    await server.stop()
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] or samples
    span_h = max(1e-9, (half[-1]["t"] - half[0]["t"]) / 3600)
    growth = (half[-1]["rss_kib"] - half[0]["rss_kib"]) / span_h if len(half) > 1 else None
    return {
        "seconds": seconds,
        "clients": len(clients),
        "drops": drops,
        "ticks": ticks[0],
        "rss_kib_first": samples[0]["rss_kib"],
        "rss_kib_last": samples[-1]["rss_kib"],
        "rss_kib_growth_per_hour_second_half": growth,
        "fds_first": samples[0]["fds"],
        "fds_last": samples[-1]["fds"],
        "samples": samples,
    }


def main() -> int:
    args = _args()
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    out: dict[str, Any] = {}

    def done(result: Any) -> None:
        out.update(result)
        reactor.stop()  # type: ignore[attr-defined]

    def failed(f: Any) -> None:
        out["error"] = f.getTraceback()
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(  # type: ignore[attr-defined]
        lambda: ensureDeferred(soak(reactor, args)).addCallbacks(done, failed)
    )
    reactor.run()  # type: ignore[attr-defined]
    if "error" in out:
        print(out["error"], file=sys.stderr)
        return 1
    growth = out["rss_kib_growth_per_hour_second_half"]
    print(
        table(
            ["clients", "drops", "ticks", "RSS first/last KiB", "RSS growth KiB/h (2nd half)"],
            [
                [
                    out["clients"],
                    out["drops"],
                    out["ticks"],
                    f"{out['rss_kib_first']}/{out['rss_kib_last']}",
                    "-" if growth is None else round(growth),
                ]
            ],
        )
    )
    path = write_results(NAME, {"smoke": args.smoke, **out}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

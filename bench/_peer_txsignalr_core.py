"""
The txsignalr row beside the Core peers: the same receive and echo scenarios, over
ASP.NET Core WebSockets with JSON or MessagePack, in a child process (the main venv)
run exactly as the peers' scripts are, against the same server.

    .venv/bin/python bench/_peer_txsignalr_core.py --scenario receive --url URL --n N
        [--protocol json|messagepack] [--warmup W]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _peer_common import ECHO_VALUE, cpu, latencies
from _twclients import _Meter, child_main


def _conn(reactor: Any, url: str, protocol: str) -> Any:
    from txsignalr import HubConnection

    return HubConnection(
        reactor, url, protocol="core", hub_protocol=protocol, transports=["webSockets"]
    )


async def receive_main(reactor: Any, url: str, n: int, protocol: str) -> dict[str, Any]:
    meter = _Meter(n)

    def on_tick(*args: Any) -> None:
        meter.count += 1
        c = meter.count
        if c == 1:
            meter.first()
        elif c == meter.n:
            meter.last()

    conn = _conn(reactor, url, protocol)
    conn.on("tick", on_tick)
    cpu_start = cpu()  # as _peer_common.Meter.starting()
    await conn.start()
    await meter.done
    result = meter.result()
    result["cpu_us_per_call_all"] = (meter.cpu1 - cpu_start) / n * 1e6
    if result["calls_per_s"]:
        result["us_per_call"] = 1e6 / result["calls_per_s"]
    await conn.stop()
    return result


async def echo_main(reactor: Any, url: str, n: int, protocol: str, warmup: int) -> dict[str, Any]:
    conn = _conn(reactor, url, protocol)
    await conn.start()
    samples: list[int] = []
    clock = time.perf_counter_ns
    cpu0 = cpu()
    result: Any = None
    for i in range(warmup + n):
        if i == warmup:
            cpu0 = cpu()
        t0 = clock()
        result = await conn.invoke("Echo", ECHO_VALUE)
        t1 = clock()
        if i >= warmup:
            samples.append(t1 - t0)
    cpu_s = cpu() - cpu0
    await conn.stop()
    if result != ECHO_VALUE:
        raise RuntimeError(f"Echo gave {result!r}")
    return latencies(samples, cpu_s)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", choices=("receive", "echo"), default="receive")
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--protocol", choices=("json", "messagepack"), default="json")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    if args.scenario == "receive":
        child_main(receive_main, args.url, args.n, args.protocol)
    else:
        child_main(echo_main, args.url, args.n, args.protocol, args.warmup)


if __name__ == "__main__":
    main()

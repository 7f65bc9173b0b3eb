"""
The throughput client for the peer library, ``signalr-async`` (classic ``net`` API).

Runs inside ``bench/.peer-venv`` (asyncio + aiohttp; no Twisted, no txsignalr), so it
imports only the standard library, ``signalr_async`` and ``_common``.  The handler is
a coroutine function: signalr-async runs plain functions through
``loop.run_in_executor`` (a thread per call), so a coroutine is its fastest path.

    .peer-venv/bin/python bench/_peer_client.py --url URL --n CALLS
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import time
from typing import Any

from _common import HUB, emit_result, pin_cpu


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def stream(url: str, n: int, timeout: float) -> dict[str, Any]:
    from signalr_async.net import Client, Hub

    logging.getLogger("signalr_async").setLevel(logging.WARNING)
    state = {"count": 0, "t0": 0.0, "t1": 0.0, "cpu0": 0.0, "cpu1": 0.0}
    done = asyncio.Event()

    async def on_tick(*args: Any) -> None:
        state["count"] += 1
        c = state["count"]
        if c == 1:
            state["t0"], state["cpu0"] = time.perf_counter(), _cpu()
        elif c == n:
            state["t1"], state["cpu1"] = time.perf_counter(), _cpu()
            done.set()

    hub = Hub(HUB)
    hub.on("tick", on_tick)
    client = Client(url, [hub])
    await client.start()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await client.stop()
    span = state["t1"] - state["t0"]
    calls = n - 1
    return {
        "calls": n,
        "seconds": span,
        "calls_per_s": calls / span if span > 0 else None,
        "cpu_us_per_call": (state["cpu1"] - state["cpu0"]) / calls * 1e6 if calls else None,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    pin_cpu(1)
    try:
        result = asyncio.run(stream(args.url, args.n, args.timeout))
    except Exception as e:
        result = {"error": f"signalr-async failed: {type(e).__name__}: {e}"}
    emit_result(result)


if __name__ == "__main__":
    main()

"""
The peer client for ``signalr-async`` over ASP.NET Core (its ``netcore`` API;
WebSockets only; JSON or MessagePack).  Runs in ``bench/.peer-venv`` (the venv of
the classic row, with the same aiohttp<3.11 pin), stdlib + signalr_async +
``_common`` only.

Its Core client takes a base URL and a hub whose name is the last path segment
(``Client("http://host/hubs", Hub("ticks"))`` connects to ``/hubs/ticks``), so the
hub URL is split there.  The handler is a coroutine function: signalr-async runs
plain functions through ``loop.run_in_executor`` (a thread per call), and even a
coroutine gets a task of its own per call.  ``await hub.invoke(method, *args)``
returns the Completion's result.

    .peer-venv/bin/python bench/_peer_signalr_async_core.py --scenario receive --url URL --n N
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from _peer_common import ECHO_VALUE, Meter, cpu, latencies, main


def _client(url: str, protocol: str) -> tuple[Any, Any]:
    from signalr_async.netcore import Client, Hub
    from signalr_async.netcore.protocols import JsonProtocol, MessagePackProtocol

    logging.getLogger("signalr_async").setLevel(logging.CRITICAL)
    base, _, name = url.rstrip("/").rpartition("/")
    hub = Hub(name)
    proto = MessagePackProtocol() if protocol == "messagepack" else JsonProtocol()
    return Client(base, hub, connection_options={"protocol": proto}), hub


async def receive(url: str, n: int, protocol: str, timeout: float, meter: Meter) -> None:
    client, hub = _client(url, protocol)
    done = asyncio.Event()

    async def on_tick(*args: Any) -> None:
        if meter.tick():
            done.set()

    hub.on("tick", on_tick)
    meter.starting()
    await asyncio.wait_for(client.start(), timeout)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await client.stop()


async def echo(url: str, n: int, protocol: str, timeout: float, warmup: int) -> dict[str, Any]:
    client, hub = _client(url, protocol)
    await asyncio.wait_for(client.start(), timeout)
    try:
        samples: list[int] = []
        clock = time.perf_counter_ns
        cpu0 = cpu()
        result: Any = None
        for i in range(warmup + n):
            if i == warmup:
                cpu0 = cpu()
            t0 = clock()
            result = await asyncio.wait_for(hub.invoke("Echo", ECHO_VALUE), timeout)
            t1 = clock()
            if i >= warmup:
                samples.append(t1 - t0)
        if result != ECHO_VALUE:
            raise RuntimeError(f"Echo gave {result!r}")
        return latencies(samples, cpu() - cpu0)
    finally:
        await client.stop()


if __name__ == "__main__":
    main("signalr-async", receive, echo)

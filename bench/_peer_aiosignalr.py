"""
The peer client for ``aiosignalr`` (ASP.NET Core only, despite the name it shares
with nothing classic; WebSockets, Server-Sent Events and long polling; JSON or
MessagePack; it also ships a server).  Runs in its venv
(``bench/.peer-venvs/aiosignalr``), stdlib + aiosignalr + ``_common`` only.

``HubConnection(protocol=...)``, ``on(target, handler)`` (called with the arguments
spread, plain or coroutine functions), ``await start(url, transports={...})`` and
``await invoke(target, *args)``, which returns the Completion's result.

    .peer-venvs/aiosignalr/bin/python bench/_peer_aiosignalr.py --scenario receive --url URL --n N
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _peer_common import ECHO_VALUE, Meter, cpu, latencies, main


async def _start(url: str, protocol: str, timeout: float, handlers: dict[str, Any]) -> Any:
    from aiosignalr.client import HubConnection

    conn = HubConnection(protocol=protocol)
    for target, handler in handlers.items():
        conn.on(target, handler)
    await asyncio.wait_for(conn.start(url, transports={"WebSockets"}), timeout)
    return conn


async def receive(url: str, n: int, protocol: str, timeout: float, meter: Meter) -> None:
    done = asyncio.Event()

    def on_tick(*args: Any) -> None:
        if meter.tick():
            done.set()

    import aiosignalr.client  # noqa: F401  (imports are not the receive)

    meter.starting()
    conn = await _start(url, protocol, timeout, {"tick": on_tick})
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await conn.stop()


async def echo(url: str, n: int, protocol: str, timeout: float, warmup: int) -> dict[str, Any]:
    conn = await _start(url, protocol, timeout, {})
    try:
        samples: list[int] = []
        clock = time.perf_counter_ns
        cpu0 = cpu()
        result: Any = None
        for i in range(warmup + n):
            if i == warmup:
                cpu0 = cpu()
            t0 = clock()
            result = await asyncio.wait_for(conn.invoke("Echo", ECHO_VALUE), timeout)
            t1 = clock()
            if i >= warmup:
                samples.append(t1 - t0)
        if result != ECHO_VALUE:
            raise RuntimeError(f"Echo gave {result!r}")
        return latencies(samples, cpu() - cpu0)
    finally:
        await conn.stop()


if __name__ == "__main__":
    main("aiosignalr", receive, echo)

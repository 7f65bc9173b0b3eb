"""
The peer client for ``pysignalr`` (ASP.NET Core; WebSockets only; JSON or
MessagePack).  Runs in its venv (``bench/.peer-venvs/pysignalr``), stdlib +
pysignalr + ``_common`` only.

pysignalr's ``SignalRClient.run()`` is the whole connection's life (negotiate,
connect, handshake, read loop, reconnect with backoff), so it runs as a task that
is cancelled at the end; ``on_open`` says when the handshake is done.  Handlers are
coroutine functions called with the argument list.  ``send(method, args,
on_invocation=cb)`` is its invoke: ``cb`` gets the CompletionMessage, whose
``result`` is the hub method's result.

    .peer-venvs/pysignalr/bin/python bench/_peer_pysignalr.py --scenario receive --url URL --n N
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _peer_common import ECHO_VALUE, Meter, cpu, latencies, main


def _client(url: str, protocol: str) -> Any:
    from pysignalr.client import SignalRClient

    if protocol == "messagepack":
        from pysignalr.protocol.messagepack import MessagepackProtocol

        return SignalRClient(url, protocol=MessagepackProtocol())
    return SignalRClient(url)


async def _until(client: Any, what: asyncio.Future[Any], timeout: float) -> Any:
    """Run the client until ``what`` is done (or the client's run ends, or times out)."""
    runner = asyncio.ensure_future(client.run())
    try:
        done, _ = await asyncio.wait(
            {runner, what}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if what in done:
            return what.result()
        if runner in done:
            runner.result()
            raise RuntimeError("pysignalr's run() ended early")
        raise TimeoutError(f"no result in {timeout:.0f} s")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def receive(url: str, n: int, protocol: str, timeout: float, meter: Meter) -> None:
    client = _client(url, protocol)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_tick(args: Any) -> None:
        if meter.tick():
            done.set_result(None)

    client.on("tick", on_tick)
    meter.starting()
    await _until(client, done, timeout)


async def echo(url: str, n: int, protocol: str, timeout: float, warmup: int) -> dict[str, Any]:
    client = _client(url, protocol)
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()

    async def on_open() -> None:
        if not opened.done():
            opened.set_result(None)

    client.on_open(on_open)

    async def calls() -> dict[str, Any]:
        await opened
        samples: list[int] = []
        clock = time.perf_counter_ns
        cpu0 = cpu()
        result: Any = None
        for i in range(warmup + n):
            if i == warmup:
                cpu0 = cpu()
            reply: asyncio.Future[Any] = loop.create_future()

            async def on_completion(message: Any, reply: asyncio.Future[Any] = reply) -> None:
                reply.set_result(message)

            t0 = clock()
            await client.send("Echo", [ECHO_VALUE], on_invocation=on_completion)
            message = await reply
            t1 = clock()
            if i >= warmup:
                samples.append(t1 - t0)
            if getattr(message, "error", None):
                raise RuntimeError(f"Echo failed: {message.error}")
            result = message.result
        if result != ECHO_VALUE:
            raise RuntimeError(f"Echo gave {result!r}")
        return latencies(samples, cpu() - cpu0)

    work = asyncio.ensure_future(calls())
    try:
        out: dict[str, Any] = await _until(client, work, timeout)
    finally:
        work.cancel()
    return out


if __name__ == "__main__":
    main("pysignalr", receive, echo)

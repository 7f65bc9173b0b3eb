"""
Talk to an ASP.NET Core SignalR hub: invoke, a hub error, a client method, a
server-to-client stream, a client-to-server stream and a client result.

With no arguments it starts the embedded test server (``txsignalr.testing``) on
127.0.0.1 and uses its ``echo`` hub over ASP.NET Core SignalR; with ``--url`` it
connects to a real hub with the same methods instead (the hub of Microsoft's samples:
Echo, Add, Fail, Broadcast -> receive, Counter, Sum, AskClient -> getMessage)::

    python examples/core_echo.py
    python examples/core_echo.py --transport longPolling
    python examples/core_echo.py --hub-protocol messagepack
    python examples/core_echo.py --url https://host/hubs/echo --token-env ECHO_TOKEN
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater, react

from txsignalr import HubConnection, HubError, SignalRError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the hub URL (default: start the demo server)")
    parser.add_argument(
        "--transport",
        action="append",
        help="webSockets, serverSentEvents or longPolling (repeatable; default: all)",
    )
    parser.add_argument("--token-env", help="read a bearer token from this variable")
    parser.add_argument(
        "--hub-protocol",
        default="json",
        choices=("json", "messagepack"),
        help="the hub protocol (messagepack needs pip install 'txsignalr[messagepack]')",
    )
    return parser.parse_args(argv)


async def main(reactor: Any, argv: list[str]) -> None:
    args = parse_args(argv)
    server = None
    url = args.url
    if url is None:
        from txsignalr.testing import EchoHub, SignalRServer

        server = SignalRServer(reactor, hubs=[EchoHub()])
        await server.listen(port=0, interface="127.0.0.1")
        url = server.core_url("echo")
        print(f"demo server listening at {url}", flush=True)

    token_factory = None
    if args.token_env:
        variable = args.token_env
        token_factory = lambda: os.environ[variable]  # noqa: E731

    conn = HubConnection(
        reactor,
        url,
        transports=args.transport or ("webSockets", "serverSentEvents", "longPolling"),
        access_token_factory=token_factory,
        hub_protocol=args.hub_protocol,
    )
    received: Deferred[Any] = Deferred()
    conn.on("receive", lambda message: received.callback(message) if not received.called else None)
    conn.on("getMessage", lambda question: f"the client's answer to {question!r}")
    try:
        await conn.start()
        transport = conn.transport.value  # type: ignore[union-attr]
        print(f"connected: {conn.protocol} over {transport} ({conn.hub_protocol})")
        print("Add(2, 3) =", await conn.invoke("Add", 2, 3))
        try:
            await conn.invoke("Fail")
        except HubError as e:
            print("Fail() raised:", e.message)

        await conn.send("Broadcast", "hello")
        print("receive:", await received)

        items = [item async for item in conn.stream("Counter", 3, 10)]
        print("Counter(3) streamed", items)

        async def numbers() -> AsyncIterator[int]:
            for n in range(1, 11):
                await deferLater(reactor, 0, lambda: None)
                yield n

        print("Sum(1..10) =", await conn.invoke("Sum", numbers()))
        print("AskClient:", await conn.invoke("AskClient", "ready?"))
    except SignalRError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        await conn.stop()
        if server is not None:
            await server.stop()


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))

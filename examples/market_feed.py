"""
Print decoded market summaries from an exchange-style SignalR hub.

With no arguments it starts the embedded demo server (``txsignalr.testing``) on
127.0.0.1 and subscribes to it; with ``--url`` it connects to a real classic ASP.NET
SignalR 2.x server instead::

    python examples/market_feed.py                      # demo server, 20 updates
    python examples/market_feed.py --count 0            # run until Ctrl-C
    python examples/market_feed.py --url https://socket-v3.example.com/signalr
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react

from txsignalr import ConnectionClosed, HubConnection, SignalRError, decode_deflate_base64


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="SignalR endpoint (default: start the demo server)")
    parser.add_argument("--hub", default="c3", help="hub name (default: c3)")
    parser.add_argument(
        "--topic",
        action="append",
        help="topic to Subscribe to (repeatable; default: market_summaries)",
    )
    parser.add_argument(
        "--count", type=int, default=20, help="stop after this many updates (0: never)"
    )
    return parser.parse_args(argv)


async def main(reactor: Any, argv: list[str]) -> None:
    args = parse_args(argv)
    server = None
    url = args.url
    if url is None:
        from txsignalr.testing import C3Hub, SignalRServer

        server = SignalRServer(reactor, hubs=[C3Hub(interval=0.2)])
        await server.listen(port=0, interface="127.0.0.1")
        url = server.url
        print(f"demo server listening at {url}", flush=True)

    connection = HubConnection(reactor, url)
    hub = connection.hub(args.hub)
    done: Deferred[None] = Deferred()
    seen = 0

    def on_summaries(payload: Any) -> None:
        nonlocal seen
        try:
            summary = decode_deflate_base64(payload)
        except SignalRError as e:
            print(f"undecodable payload: {e}", file=sys.stderr)
            return
        seen += 1
        for delta in summary.get("deltas", []):
            print(
                f"#{summary.get('sequence')} {delta.get('symbol'):>8} "
                f"high={delta.get('high')} low={delta.get('low')} "
                f"change={delta.get('percentChange')}%",
                flush=True,
            )
        if args.count and seen >= args.count and not done.called:
            done.callback(None)

    hub.on("marketSummaries", on_summaries)
    connection.on_reconnecting(lambda reason: print(f"reconnecting: {reason}", file=sys.stderr))
    connection.on_reconnected(lambda: print("reconnected", file=sys.stderr))

    def interrupted(*_: object) -> None:
        if not done.called:
            reactor.callFromThread(done.callback, None)

    signal.signal(signal.SIGINT, interrupted)
    try:
        await connection.start()
        results = await hub.invoke("Subscribe", args.topic or ["market_summaries"], timeout=30)
        print(f"subscribed: {results}", flush=True)
        closed = connection.when_closed()
        closed.addErrback(lambda f: done.called or done.errback(f))
        await done
    except ConnectionClosed as e:
        print(f"connection lost for good: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except SignalRError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        await connection.stop()
        if server is not None:
            await server.stop()


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))

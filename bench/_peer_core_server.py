"""
A stand-in ASP.NET Core bench server for the peer rows: ``txsignalr.testing``'s
``SignalRServer`` in a process of its own (Twisted; the peers are asyncio or threads
and run in their own processes anyway), pinned to CPU 0.

It serves two hubs, following the Core bench server's contract:

* ``ticks``: right after a connection's handshake, ``N`` Invocations target ``tick``
  with arguments ``[{"Seq": n, "Ts": "..."}]``, one per transport message (the real
  bench server batches K per message; this one cannot);
* ``echo``: ``Echo(x)`` answers a Completion with result ``x``.

All ``N`` ticks are encoded and queued in one go, before the first leaves, so the
client is timed against a full socket rather than against this server's encoder.
It prints ``CORE-SERVER <ticks url> <echo url>`` once listening and runs until its
stdin closes.

    .venv/bin/python bench/_peer_core_server.py --n CALLS
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from _common import pin_cpu

TS = "2026-11-26T00:49:37.3991840Z"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, required=True, help="tick calls per connection")
    args = p.parse_args()
    pin_cpu(0)

    from twisted.internet import defer, stdio, task
    from twisted.internet.protocol import Protocol

    from txsignalr.testing import Hub, HubCall, SignalRServer

    class TicksHub(Hub):
        name = "ticks"

        def on_connected(self, connection_id: str) -> None:
            for seq in range(args.n):
                self.send_to_connection(connection_id, "tick", {"Seq": seq, "Ts": TS})

    class EchoBenchHub(Hub):
        name = "echo"

        def Echo(self, call: HubCall, value: Any) -> Any:
            return value

    class Stdin(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            done.callback(None)

    done: defer.Deferred[None] = defer.Deferred()

    async def run(reactor: Any) -> None:
        server = SignalRServer(reactor, hubs=[TicksHub(), EchoBenchHub()])
        await server.listen(port=0, interface="127.0.0.1")
        sys.stdout.write(f"CORE-SERVER {server.core_url('ticks')} {server.core_url('echo')}\n")
        sys.stdout.flush()
        stdio.StandardIO(Stdin())
        await done
        await server.stop()

    task.react(lambda r: defer.ensureDeferred(run(r)))


if __name__ == "__main__":
    main()
    os._exit(0)

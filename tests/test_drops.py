"""
Forced drops during a numbered stream, for every transport of both families.

A :class:`faultproxy.FaultProxy` sits between the client and ``txsignalr.testing``'s
server.  The server sends ``N`` numbered ``num(i)`` calls; after every ``N / DROPS``
of them, at a random point, the proxy cuts every connection (half of them in the
middle of what the server is sending).  Meanwhile the client invokes ``Echo`` every
``N / INVOKES`` messages.  Then the figures: messages lost, duplicated and out of
order; invocations that never finished; timers and file descriptors left after
``stop()``.

Classic ASP.NET SignalR resumes from its cursor, and ASP.NET Core with stateful
reconnect replays what it missed, so there every figure must be 0.  Plain ASP.NET
Core reconnects to a new connection: what the server sent while none was open is
gone (the test reports that gap), but nothing may arrive twice or out of order.

``TXS_DROPS_N`` / ``TXS_DROPS`` change the size (defaults 100,000 and 100);
``TXS_FIGURES=DIR`` writes each configuration's figures to ``DIR/drops-*.json``.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from faultproxy import FaultProxy
from helpers import sleep, wait_until, within
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred

from txsignalr import ConnectionState, HubConnection, SignalRError
from txsignalr.testing import EchoHub, SignalRServer

reactor: Any = _reactor

N = int(os.environ.get("TXS_DROPS_N", "100000"))
DROPS = int(os.environ.get("TXS_DROPS", "100"))
INVOKES = 50
#: messages the server sends per reactor turn
BATCH = 100
#: the most messages the server runs ahead of what the client received (flow control,
#: so that the drops fall while the stream is being delivered, not after it was queued)
WINDOW = 1000

CONFIGS = [
    ("classic", "webSockets", False),
    ("classic", "serverSentEvents", False),
    ("classic", "longPolling", False),
    ("core", "webSockets", False),
    ("core", "serverSentEvents", False),
    ("core", "longPolling", False),
    ("core", "webSockets", True),
]


def open_sockets() -> int:
    """The process's open sockets (other descriptors, such as a /dev/null some library
    opens on first use, are not the connection's)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def figures(seen: list[int], n: int) -> dict[str, int]:
    unique = set(seen)
    out_of_order = sum(1 for a, b in itertools.pairwise(seen) if b <= a)
    return {
        "sent": n,
        "received": len(seen),
        "lost": n - len(unique & set(range(n))),
        "duplicated": len(seen) - len(unique),
        "out_of_order": out_of_order,
    }


@pytest.mark.parametrize(
    ("family", "transport", "stateful"),
    CONFIGS,
    ids=[f"{f}-{t}{'-stateful' if s else ''}" for f, t, s in CONFIGS],
)
@pytest_twisted.ensureDeferred
async def test_drops_during_a_numbered_stream(family: str, transport: str, stateful: bool) -> None:
    rng = random.Random(f"{family}{transport}{stateful}")
    gc.collect()
    fds_before = open_sockets()
    timers_before = set(reactor.getDelayedCalls())

    server = SignalRServer(
        reactor,
        hubs=[EchoHub()],
        buffer_size=N,  # the classic bus keeps every message for a cursor to resume from
        core_stateful_reconnect=stateful,
        core_stateful_buffer_size=10_000_000,
    )
    await server.listen(port=0, interface="127.0.0.1")
    assert server.port is not None
    proxy = FaultProxy(reactor, server.port)
    port = proxy.listen()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/signalr" if family == "classic" else f"{base}/hubs/echo"
    conn = HubConnection(
        reactor,
        url,
        protocol=family,
        transports=[transport],
        reconnect_delay=0.01 if family == "classic" else (lambda attempt: 0.01),
        stateful_reconnect=stateful,
        http_timeout=5.0,
        invoke_timeout=None,
    )
    hub: Any = conn.hub("echo") if family == "classic" else conn
    seen: list[int] = []
    hub.on("num", seen.append)
    reconnects: list[Any] = []
    #: how many messages had been sent when the connection last became connected
    connected_at = [0]
    sent = 0

    def state_changed(old: ConnectionState, new: ConnectionState) -> None:
        if new is ConnectionState.reconnecting:
            reconnects.append(new)
        elif new is ConnectionState.connected:
            connected_at[0] = sent

    conn.on_state_change(state_changed)
    calls: list[Deferred[Any]] = []
    outcomes: dict[str, int] = {"answered": 0, "failed": 0}

    def settle(d: Deferred[Any], k: int) -> None:
        def ok(result: Any) -> None:
            assert result == k
            outcomes["answered"] += 1

        def failed(f: Any) -> None:
            assert f.check(SignalRError), f
            outcomes["failed"] += 1

        d.addCallbacks(ok, failed)

    try:
        await within(conn.start())
        if family == "classic":
            await sleep(0.05)  # let the /start answer settle before the stream begins
        every = max(1, N // DROPS)
        drop_at = {k * every + rng.randrange(every) for k in range(DROPS)}
        invoke_every = max(1, N // INVOKES)
        pending_drop = False

        paced = [0.0]

        async def keep_pace() -> None:
            t0 = reactor.seconds()
            deadline = t0 + 5
            # messages sent before the last reconnect of a plain Core connection are
            # gone for good: only wait for those sent since
            floor = sent - WINDOW
            while reactor.seconds() < deadline and (
                conn.state is not ConnectionState.connected
                or ((seen[-1] if seen else -1) < floor and connected_at[0] <= floor)
            ):
                await sleep(0.002)
            paced[0] += reactor.seconds() - t0

        while sent < N:
            for i in range(sent, min(N, sent + BATCH)):
                server.send_to_all("echo", "num", i)
                pending_drop = pending_drop or i in drop_at
                if pending_drop and conn.state is ConnectionState.connected:
                    pending_drop = False
                    if rng.random() < 0.5:
                        proxy.cut_next = True
                    else:
                        proxy.cut()
                if i % invoke_every == 0:
                    d = hub.invoke("Echo", i)
                    settle(d, i)
                    calls.append(d)
            sent = min(N, sent + BATCH)
            await sleep(0)
            await keep_pace()
        proxy.cut_next = False
        # Everything the protocol can still deliver arrives once the stream is over.
        await wait_until(
            lambda: (
                (seen[-1:] == [N - 1] or (family == "core" and not stateful))
                and conn.state is ConnectionState.connected
            ),
            "the end of the stream",
            seconds=60,
        )
        await sleep(0.5)  # and nothing more after it
        for d in calls:
            await within(d, seconds=30)
        resumes = server.core_stateful_counts["resumes"]
    finally:
        await within(conn.stop())
        await proxy.stop()
        await server.stop()

    result = figures(seen, N)
    hung = sum(1 for d in calls if not d.called)
    await sleep(1.0)  # pooled HTTP connections close on a later reactor turn
    gc.collect()
    result.update(
        drops=proxy.cuts,
        mid_frame_cuts=proxy.mid_frame_cuts,
        reconnects=len(reconnects),
        stateful_resumes=resumes,
        paced_seconds=round(paced[0], 2),
        invocations=len(calls),
        answered=outcomes["answered"],
        failed=outcomes["failed"],
        hung=hung,
        timers_left=len(set(reactor.getDelayedCalls()) - timers_before),
        sockets_left=open_sockets() - fds_before,
    )
    line = f"drops {family} {transport}{' stateful' if stateful else ''}: {json.dumps(result)}"
    print(line)
    where = os.environ.get("TXS_FIGURES")
    if where:
        name = f"drops-{family}-{transport}{'-stateful' if stateful else ''}.json"
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / name).write_text(json.dumps(result, indent=1) + "\n")

    assert result["drops"] >= DROPS * 0.9, result  # a cut asked for at the very end may not come
    # the cuts were really felt: a reconnect each, or (stateful) a resumed socket each
    assert result["reconnects" if not stateful else "stateful_resumes"] >= DROPS // 2, result
    assert result["hung"] == 0, result
    assert result["timers_left"] == 0, result
    assert result["sockets_left"] <= 0, result
    assert result["duplicated"] == 0, result
    assert result["out_of_order"] == 0, result
    if family == "classic" or stateful:
        assert result["lost"] == 0, result
    else:
        assert result["lost"] < N, result  # the stream resumed after each drop

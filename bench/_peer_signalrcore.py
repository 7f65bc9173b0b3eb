"""
The peer client for ``signalrcore`` (ASP.NET Core; WebSockets, Server-Sent Events and
long polling; JSON or MessagePack).  Runs in its venv
(``bench/.peer-venvs/signalrcore``), stdlib + signalrcore + ``_common`` only.

signalrcore is threaded, not asyncio: ``start()`` negotiates and starts a reader
thread, handlers are plain functions called on that thread with the argument list,
and ``invoke(method, args, on_invocation=cb)`` calls ``cb`` with the
CompletionMessage (its ``result``) on the reader thread.  The benchmark asks for
WebSockets explicitly (``options={"transport": HttpTransportType.web_sockets}``) and
for MessagePack with ``with_hub_protocol(HubProtocolEncoding.binary)``.  Its
``signalrcore.aio`` API is the same client run through ``asyncio.to_thread``, so the
threaded API is the cheaper one to measure.

    .peer-venvs/signalrcore/bin/python bench/_peer_signalrcore.py --scenario receive --url URL --n N
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from _peer_common import ECHO_VALUE, Meter, cpu, latencies, main

#: Set when the negotiate answer had to be skipped (see :func:`_connect`).
WORKAROUNDS: list[str] = []


def _connect(url: str, protocol: str, timeout: float, handlers: dict[str, Any]) -> Any:
    """
    Start a connection over WebSockets.  Two signalrcore 1.0.2 quirks are worked
    around here:

    * it takes the hub protocol's version from the *negotiate* version (``version=
      negotiate_response.negotiate_version``), so after a version 0 negotiate it asks
      for ``{"protocol":"json","version":0}``, which txsignalr.testing refuses; the
      protocol object is therefore passed in, with version 1;
    * it requires ``negotiateVersion`` in the negotiate answer, which ASP.NET Core
      2.2 (and txsignalr.testing, which answers as 2.2 does) leave out of a version 0
      answer, and asking for version 1 does not help (it then connects with the
      ``connectionId`` where v1 needs the ``connectionToken``: 404).  When negotiate
      fails that way, it connects again with ``skip_negotiation`` (a direct
      ``ws://`` connection, which the Core servers accept) and says so in the result.
    """
    from signalrcore.hub_connection_builder import HubConnectionBuilder
    from signalrcore.protocol.json_hub_protocol import JsonHubProtocol
    from signalrcore.protocol.messagepack_protocol import MessagePackHubProtocol
    from signalrcore.types import HttpTransportType

    def attempt(skip: bool) -> Any:
        options = {"transport": HttpTransportType.web_sockets, "skip_negotiation": skip}
        target = "ws" + url[len("http") :] if skip and url.startswith("http") else url
        builder = HubConnectionBuilder().with_url(target, options=options)
        builder = builder.configure_logging(logging.CRITICAL)
        proto = MessagePackHubProtocol(1) if protocol == "messagepack" else JsonHubProtocol(1)
        conn = builder.with_hub_protocol(proto).build()
        opened = threading.Event()
        conn.on_open(opened.set)
        for target_name, handler in handlers.items():
            conn.on(target_name, handler)
        if conn.start() is False:
            raise RuntimeError("start() returned False")
        if not opened.wait(timeout):
            conn.stop()
            raise TimeoutError(f"not open after {timeout:.0f} s")
        return conn

    try:
        return attempt(False)
    except Exception as e:
        if type(e).__name__ != "NegotiateValidationError":
            raise
        WORKAROUNDS.append(f"negotiate refused ({e}): connected with skip_negotiation")
        return attempt(True)


def receive(url: str, n: int, protocol: str, timeout: float, meter: Meter) -> None:
    done = threading.Event()

    def on_tick(args: Any) -> None:
        if meter.tick():
            done.set()

    import signalrcore.hub_connection_builder  # noqa: F401  (imports are not the receive)

    meter.starting()
    conn = _connect(url, protocol, timeout, {"tick": on_tick})
    try:
        if not done.wait(timeout):
            raise TimeoutError(f"got {meter.count} of {n} ticks in {timeout:.0f} s")
    finally:
        conn.stop()
    meter.notes.extend(WORKAROUNDS)


def echo(url: str, n: int, protocol: str, timeout: float, warmup: int) -> dict[str, Any]:
    conn = _connect(url, protocol, timeout, {})
    errors: list[Any] = []
    conn.on_error(errors.append)
    try:
        samples: list[int] = []
        clock = time.perf_counter_ns
        cpu0 = cpu()
        result: Any = None
        for i in range(warmup + n):
            if i == warmup:
                cpu0 = cpu()
            replied = threading.Event()
            box: list[Any] = []

            def on_completion(
                message: Any, box: list[Any] = box, replied: threading.Event = replied
            ) -> None:
                box.append(message)
                replied.set()

            t0 = clock()
            conn.invoke("Echo", [ECHO_VALUE], on_invocation=on_completion)
            if not replied.wait(timeout):
                raise TimeoutError(f"no Echo completion in {timeout:.0f} s ({errors})")
            t1 = clock()
            if i >= warmup:
                samples.append(t1 - t0)
            result = box[0].result
        if result != ECHO_VALUE:
            raise RuntimeError(f"Echo gave {result!r}")
        return {**latencies(samples, cpu() - cpu0), "workarounds": WORKAROUNDS}
    finally:
        conn.stop()


if __name__ == "__main__":
    main("signalrcore", receive, echo)

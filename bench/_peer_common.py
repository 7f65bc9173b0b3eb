"""
What every peer client script shares: the command line, the meter of the receive
scenario, the percentiles of the echo scenario, and the result line.

Peer scripts run inside the peers' own venvs (no Twisted, no txsignalr), so this
imports only the standard library and ``_common``.  A script gives :func:`main` one
function per scenario it runs, plain or ``async``:

* ``receive(url, n, protocol, timeout, meter)``: call ``meter.starting()``, connect,
  register a handler for client method ``tick`` that
  calls ``meter.tick()`` (true on the N-th call), wait for the N-th, disconnect;
* ``echo(url, n, protocol, timeout, warmup)``: ``warmup + n`` sequential
  ``invoke("Echo", ECHO_VALUE)``, returning :func:`latencies` of the last ``n``.

    <venv>/bin/python bench/_peer_X.py --scenario receive|echo --url URL --n N
        [--protocol json|messagepack] [--warmup W] [--timeout S]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Any

from _common import ECHO_VALUE, emit_result, pin_cpu

__all__ = ["ECHO_VALUE", "Meter", "cpu", "latencies", "main"]


def cpu() -> float:
    """This process's CPU time (user + system), every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Counts ``tick`` calls and times the span from the first to the N-th."""

    __slots__ = ("count", "cpu0", "cpu1", "cpu_start", "n", "notes", "t0", "t1")

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = 0.0
        self.cpu_start: float | None = None
        #: what the client had to work around, reported with the figures
        self.notes: list[str] = []

    def starting(self) -> None:
        """Call just before connecting: the CPU of the whole receive starts here.

        Some peers run handlers later than they parse (signalr-async makes a task per
        call; aiosignalr and signalr-async can even run every handler before
        ``start()`` returns), so the span from the first handler call to the N-th can
        miss parsing done before the first.  CPU from here to the N-th call misses
        nothing; it includes negotiate and handshake (a few ms, once), and waiting for
        the server costs no CPU.
        """
        self.cpu_start = cpu()

    def tick(self) -> bool:
        """Count one call; true when it is the N-th."""
        self.count = c = self.count + 1
        if c == 1:
            self.t0, self.cpu0 = time.perf_counter(), cpu()
        if c == self.n:
            self.t1, self.cpu1 = time.perf_counter(), cpu()
            return True
        return False

    def result(self) -> dict[str, Any]:
        if self.count < self.n:
            return {"error": f"got {self.count} of {self.n} tick calls"}
        span = self.t1 - self.t0
        calls = self.n - 1  # the first call starts the clock
        return {
            "calls": self.n,
            "workarounds": self.notes,
            "seconds": span,
            "calls_per_s": calls / span if span > 0 else None,
            "us_per_call": span / calls * 1e6 if calls else None,
            "cpu_us_per_call": (self.cpu1 - self.cpu0) / calls * 1e6 if calls else None,
            "cpu_us_per_call_all": (
                (self.cpu1 - self.cpu_start) / self.n * 1e6 if self.cpu_start is not None else None
            ),
        }


def latencies(samples_ns: list[int], cpu_s: float) -> dict[str, Any]:
    """Percentiles of round trips in microseconds (the keys ``invoke.py`` reports)."""
    s = sorted(samples_ns)
    k = len(s)

    def pct(p: float) -> float:
        return s[min(k - 1, int(p * k))] / 1000.0

    return {
        "calls": k,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "mean_us": sum(s) / k / 1000.0,
        "cpu_us_per_call": cpu_s / k * 1e6,
    }


def _run(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def main(
    name: str,
    receive: Callable[..., Any] | None,
    echo: Callable[..., Any] | None,
) -> None:
    """Parse the command line, run the scenario, emit the result and exit at once
    (some peers leave threads or tasks behind that would hang a polite exit)."""
    p = argparse.ArgumentParser(description=f"{name} peer client")
    p.add_argument("--scenario", choices=("receive", "echo"), default="receive")
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--protocol", choices=("json", "messagepack"), default="json")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    pin_cpu(int(os.environ.get("BENCH_CPU", "1")))
    logging.basicConfig(level=logging.CRITICAL)
    try:
        if args.scenario == "receive":
            if receive is None:
                raise NotImplementedError(f"{name} has no receive client")
            meter = Meter(args.n)
            _run(receive, args.url, args.n, args.protocol, args.timeout, meter)
            result = meter.result()
        else:
            if echo is None:
                raise NotImplementedError(f"{name} gives no invocation results")
            result = _run(echo, args.url, args.n, args.protocol, args.timeout, args.warmup)
    except BaseException as e:  # report, do not hang the parent
        result = {"error": f"{name} failed: {type(e).__name__}: {e}"}
    emit_result(result)
    os._exit(0)

"""
Profile opening classic connections: N started ``HubConnection`` objects, as in
``connections.py``, in a child process, under cProfile (``--profile``) or timed
only (the client's CPU per connection, in batches, to see whether it grows with
the number of live connections).

    python bench/profile_connect.py [--n N] [--transport T] [--profile] [--top K]
        [--gc-freeze] [--callgrind]

``--gc-freeze`` calls ``gc.freeze()`` after every batch in the *benchmark client*:
a diagnosis of how much of the growth is the cyclic collector walking the live
connections, not something the library does.

``--callgrind`` runs the client under ``valgrind --tool=callgrind`` twice, with
``--n`` and ``2 * --n`` connections (one batch each, one at a time), and prints the
difference in instructions per connection (slow: the imports alone take about a
minute under valgrind).  Run one at a time on a machine that is not busy: the
transports' timeouts still run on the wall clock, and a client slowed down too much
by other work fails connections (reported) or handles more of the server's
keep-alives and timers per connection than it would otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    BENCH_DIR,
    TRANSPORTS,
    BenchServer,
    common_args,
    raise_fd_limit,
    run_child,
    run_parent,
)


def _args() -> Any:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--transport", choices=TRANSPORTS, default="webSockets")
    p.add_argument(
        "--core", action="store_true", help="ASP.NET Core connections (bench/_core_server.py)"
    )
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000, help="connections per timed batch")
    p.add_argument("--profile", action="store_true", help="run under cProfile")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--sort", default="tottime")
    p.add_argument("--gc-freeze", action="store_true")
    p.add_argument(
        "--begin-logging",
        action="store_true",
        help="start twisted.logger with no observer (no start-up buffer of events)",
    )
    p.add_argument("--types", type=int, default=0, help="show the K types that grew most")
    p.add_argument("--dump", default="", help="write the cProfile stats to this file")
    p.add_argument("--profile-last", action="store_true", help="profile only the last batch")
    p.add_argument(
        "--callgrind", action="store_true", help="instructions per connection under callgrind"
    )
    return p.parse_args()


async def parent(args: Any) -> int:
    n = args.n or (50 if args.smoke else 1000)
    server: Any
    if args.core:
        from _core_server import CoreBenchServer

        server = CoreBenchServer()
    else:
        server = BenchServer()
    await server.start()
    argv = [
        str(BENCH_DIR / "profile_connect.py"),
        "--child",
        "txsignalr",
        "--url",
        server.url("idle"),
        "--n",
        str(n),
        "--transport",
        args.transport,
        "--concurrency",
        str(args.concurrency),
        "--batch",
        str(args.batch),
        "--top",
        str(args.top),
        "--sort",
        args.sort,
    ]
    if args.profile:
        argv.append("--profile")
    if args.gc_freeze:
        argv.append("--gc-freeze")
    if args.dump:
        argv += ["--dump", args.dump]
    if args.begin_logging:
        argv.append("--begin-logging")
    if args.types:
        argv += ["--types", str(args.types)]
    if args.core:
        argv.append("--core")
    if args.profile_last:
        argv.append("--profile-last")
    if args.callgrind:
        try:
            return await _callgrind(args, argv, n)
        finally:
            await server.stop()
    try:
        r = await run_child(argv, 1200.0)
    finally:
        await server.stop()
    if "error" in r:
        print(r["error"])
        return 1
    print(f"{'Core ' if args.core else ''}{args.transport}, N={n}, concurrency {args.concurrency}")
    for i, b in enumerate(r["batches"]):
        print(
            f"  batch {i}: live {b['live']:>6}  conn/s {b['per_s']:7.1f}  "
            f"cpu ms/conn {b['cpu_ms']:.3f}  gc ms/conn {b['gc_ms']:.3f}  "
            f"gc s/runs {b['gc']} objects {b['objects']}"
        )
    print(f"  total cpu ms/conn {r['cpu_ms']:.3f}")
    if "calls_per_connection" in r:
        print(f"  Python function calls per connection (cProfile) {r['calls_per_connection']:.0f}")
    print(f"  RSS KiB per connection {r['kib_per_connection']:.1f}")
    for name, count in r.get("types", []):
        print(f"  {count / n:8.2f} {name} per connection")
    if r.get("profile"):
        print(r["profile"])
    return 0


async def _callgrind(args: Any, argv: list[str], n: int) -> int:
    """Instructions per connection: two runs under callgrind, n and 2n connections."""
    import re
    import tempfile

    # A plain run first writes the bytecode caches, whose compiling would otherwise
    # count in whichever run under callgrind imports a module first.
    warm = list(argv)
    warm[warm.index("--n") + 1] = "1"
    r = await run_child(warm, 600.0)
    if "error" in r:
        print(r["error"])
        return 1
    totals = []
    for k in (n, 2 * n):
        run_argv = list(argv)
        run_argv[run_argv.index("--n") + 1] = str(k)
        run_argv[run_argv.index("--batch") + 1] = str(k)
        # one at a time: under valgrind many at once miss the transports' timeouts
        run_argv[run_argv.index("--concurrency") + 1] = "1"
        with tempfile.NamedTemporaryFile(suffix=".cg") as out:
            cmd = ["--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable]
            r = await run_child(cmd + run_argv, 3600.0, python="valgrind")
            if "error" in r:
                print(r["error"])
                return 1
            text = open(out.name, encoding="utf-8", errors="replace").read()
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        assert m, "no totals in the callgrind output"
        totals.append(int(m.group(1)))
    per = (totals[1] - totals[0]) / n
    family = "Core " if args.core else ""
    print(f"{family}{args.transport}: {per:,.0f} instructions per connection (callgrind, n={n})")
    return 0


def child(args: Any) -> None:
    raise_fd_limit(1 << 20)
    from _twclients import _cpu, child_main

    async def run(reactor: Any, url: str) -> dict[str, Any]:
        import cProfile
        import gc
        import io
        import pstats
        import time

        from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults

        from txsignalr import HubConnection

        gc_time = [0.0, 0.0, 0.0]
        gc_runs = [0, 0, 0]
        gc_start = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                gc_start[0] = _cpu()
            else:
                gc_time[info["generation"]] += _cpu() - gc_start[0]
                gc_runs[info["generation"]] += 1

        gc.callbacks.append(on_gc)
        conns: list[Any] = []
        failures: list[str] = []

        def noop(*a: Any) -> None:
            pass

        async def one() -> None:
            try:
                conn = HubConnection(reactor, url, transports=[args.transport])
                if args.core:
                    conn.on("tick", noop)
                else:
                    conn.hub("c3").on("tick", noop)
                await conn.start()
                conns.append(conn)
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}")

        from _common import rss_kib

        if args.begin_logging:
            from twisted.logger import globalLogBeginner

            globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)
        await one()
        if failures:
            return {"error": failures[0]}
        gc.collect()
        rss0 = rss_kib()

        def census() -> dict[str, int]:
            from collections import Counter

            return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())

        types0 = census() if args.types else {}
        prof = cProfile.Profile() if args.profile else None
        sem = DeferredSemaphore(args.concurrency)
        batches = []
        total = 0.0
        left = args.n
        while left > 0:
            k = min(args.batch, left)
            left -= k
            c0, w0 = _cpu(), time.perf_counter()
            g0 = sum(gc_time)
            if prof is not None and (left == 0 or not args.profile_last):
                prof.enable()
            await gatherResults([sem.run(lambda: ensureDeferred(one())) for _ in range(k)])
            if prof is not None and (left == 0 or not args.profile_last):
                prof.disable()
            c, w = _cpu() - c0, time.perf_counter() - w0
            total += c
            batches.append(
                {
                    "live": len(conns),
                    "cpu_ms": c / k * 1e3,
                    "per_s": k / w,
                    "gc_ms": (sum(gc_time) - g0) / k * 1e3,
                    "gc": [round(t, 3) for t in gc_time] + list(gc_runs),
                    "objects": len(gc.get_objects()),
                }
            )
            if args.gc_freeze:
                gc.freeze()
        gc.collect()
        out: dict[str, Any] = {
            "batches": batches,
            "cpu_ms": total / args.n * 1e3,
            "kib_per_connection": (rss_kib() - rss0) / args.n,
        }
        if args.types:
            grown = census()
            for k, v in types0.items():
                grown[k] -= v
            out["types"] = sorted(grown.items(), key=lambda kv: -kv[1])[: args.types]
        if failures:
            out["error"] = f"{len(failures)} failed, first: {failures[0]}"
        if prof is not None:
            s = io.StringIO()
            if args.dump:
                prof.dump_stats(args.dump)
            stats = pstats.Stats(prof, stream=s)
            out["calls_per_connection"] = stats.total_calls / args.n  # type: ignore[attr-defined]
            if args.top:
                stats.sort_stats(args.sort).print_stats(args.top)
            out["profile"] = s.getvalue()
        return out

    child_main(run, args.url)


if __name__ == "__main__":
    a = _args()
    if a.child:
        child(a)
    else:
        run_parent(lambda: parent(a))
    sys.exit(0)

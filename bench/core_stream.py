"""
ASP.NET Core server-to-client stream throughput: StreamItems per second.

The same rows and clients as ``core_throughput.py`` (see there), in ``--mode counter``:
each client sends a ``Counter`` StreamInvocation and the Core bench server answers N
pre-encoded StreamItems (``--batch`` per message) and the Completion.  txsignalr reads
them with ``async for item in conn.stream("Counter", N)``, Node with
``connection.stream("Counter", N).subscribe(...)``.

    python bench/core_stream.py [--smoke] [--n N] [--lp-n N] [--batch K] [--repeat R]
        [--rows ...]
"""

from __future__ import annotations

from core_throughput import main

if __name__ == "__main__":
    main(mode="counter", name="core_stream")

"""bench/soak.py keeps working: its 6-second smoke run samples RSS, fds and timers
while every client reconnects, and ends with every client stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_soak_smoke(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "soak.py"),
            "--smoke",
            "--drop-every",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "soak" and data["smoke"] is True
    assert data["clients"] == 30
    assert data["drops"] >= 3
    samples = data["samples"]
    assert len(samples) >= 3
    assert all(s["rss_kib"] > 0 and s["fds"] > 0 for s in samples)
    assert samples[-1]["ticks"] > samples[0]["ticks"]  # ticks kept coming through the drops
    assert max(s["connected"] for s in samples) == data["clients"]

"""
The benchmarks in ``bench/`` keep working: each runs in ``--smoke`` mode, exits 0 and
writes well-formed JSON.  Nothing here looks at how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_smoke(name: str, tmp_path: Path, timeout: float) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote" in proc.stdout, proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["benchmark"] == name
    assert data["smoke"] is True
    assert data["environment"]["python"]
    return data


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def assert_throughput(client: dict[str, Any]) -> None:
    assert "error" not in client, client
    for key in ("calls_per_s", "us_per_call", "cpu_us_per_call", "client_seconds"):
        assert positive(client[key]), (key, client)


def test_throughput_smoke(tmp_path: Path) -> None:
    """throughput.py --smoke measures the floor and txsignalr and their ratio."""
    data = run_smoke("throughput", tmp_path, timeout=180)
    assert data["calls"] > 0
    assert set(data["clients"]) == {"floor", "txsignalr"}
    for client in data["clients"].values():
        assert_throughput(client)
    assert positive(data["ratio_txsignalr_vs_floor"])


def test_invoke_smoke(tmp_path: Path) -> None:
    """invoke.py --smoke gives latency percentiles for raw echo and txsignalr."""
    data = run_smoke("invoke", tmp_path, timeout=180)
    assert set(data["clients"]) == {"raw echo", "txsignalr", "txsignalr vs testing server"}
    for name, client in data["clients"].items():
        assert "error" not in client, (name, client)
        assert client["calls"] == data["calls"]
        for key in ("p50_us", "p90_us", "p99_us", "mean_us"):
            assert positive(client[key]), (name, key, client)
        assert client["p50_us"] <= client["p90_us"] <= client["p99_us"]
    assert positive(data["ratio_p50_txsignalr_vs_raw_echo"])


def test_connections_smoke(tmp_path: Path) -> None:
    """connections.py --smoke opens every connection and reports memory and fds."""
    data = run_smoke("connections", tmp_path, timeout=180)
    (n,) = data["sizes"]
    assert set(data["clients"]) == {f"floor@{n}", f"txsignalr@{n}"}
    for name, client in data["clients"].items():
        assert "error" not in client, (name, client)
        assert client["connections"] == n
        assert client["failed"] == 0
        for key in ("connect_seconds", "connections_per_s", "rss_kib", "fds_per_connection"):
            assert positive(client[key]), (name, key, client)
        assert isinstance(client["kib_per_connection"], float)


def test_peer_smoke(tmp_path: Path) -> None:
    """peer.py --smoke measures signalr-async, or says exactly why it could not."""
    data = run_smoke("peer", tmp_path, timeout=900)
    clients = data["clients"]
    assert set(clients) == {"floor", "txsignalr", "signalr-async"}
    assert_throughput(clients["floor"])
    assert_throughput(clients["txsignalr"])
    peer = clients["signalr-async"]
    if "calls_per_s" in peer:
        assert positive(peer["calls_per_s"]), peer
        assert positive(data["ratio_txsignalr_vs_peer"])
        assert data["peer_version"].startswith("3.0.0")
    else:
        # Not installable here (no registry) or broken: the reason is recorded.
        assert isinstance(peer["error"], str) and peer["error"], peer
        assert data["ratio_txsignalr_vs_peer"] is None

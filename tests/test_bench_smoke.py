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
#: The signalr-async release bench/peer.py installs (its PEER_VERSION).
PEER_VERSION = "3.0.0"


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
    """peer.py --smoke installs signalr-async (its pinned version, in bench/.peer-venv)
    and measures it beside txsignalr and the floor; a peer it could not install or run
    fails the test, with the reason peer.py recorded."""
    data = run_smoke("peer", tmp_path, timeout=900)
    clients = data["clients"]
    assert set(clients) == {"floor", "txsignalr", "signalr-async"}
    assert_throughput(clients["floor"])
    assert_throughput(clients["txsignalr"])
    peer = clients["signalr-async"]
    assert "error" not in peer, (
        "bench/peer.py could not measure signalr-async: "
        f"{peer['error']} (it pip-installs signalr-async and the aiohttp it works with, "
        "pinned by PEER_VERSION and PEER_AIOHTTP in bench/peer.py, into bench/.peer-venv)"
    )
    assert_throughput(peer)
    assert data["peer_version"].startswith(f"{PEER_VERSION} with aiohttp "), data
    assert positive(data["ratio_txsignalr_vs_peer"])

"""
The Python peers of the benchmarks install and run: ``bench/peer.py --smoke`` installs
every peer from PyPI at its pinned version (each in its venv under ``bench/``, reused
between runs: a cold install of all four takes about 1.5 minutes, a warm check about
a second each) and gets positive figures from each, classic and ASP.NET Core, JSON
and MessagePack, receive and echo.  A peer that could not be installed or run fails
its test with the reason the benchmark recorded.  Nothing here looks at how fast
anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _peers_module() -> Any:
    """bench/_peers.py (bench/ is scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        import _peers
    finally:
        sys.path.remove(str(BENCH))
    return _peers


_peers = _peers_module()
CORE_ROWS = [
    f"{name} {protocol}" for name in _peers.CORE_CLIENTS for protocol in _peers.HUB_PROTOCOLS
]


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _why(row: dict[str, Any]) -> str:
    name = row.get("_name", "")
    peer = _peers.PEERS.get(name.split(" ", 1)[0])
    pins = f" (pinned: {', '.join(peer.requirements)}; venv {peer.venv})" if peer else ""
    return f"bench/peer.py could not measure {name}: {row.get('error')}{pins}"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("peers") / "peer.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "peer.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["benchmark"] == "peer" and data["smoke"] is True
    return data


def test_classic_signalr_async_receives(smoke: dict[str, Any]) -> None:
    """signalr-async (classic) gets positive receive figures beside txsignalr."""
    row = {"_name": "signalr-async", **smoke["clients"]["signalr-async"]}
    assert "error" not in row, _why(row)
    for key in ("calls_per_s", "us_per_call", "cpu_us_per_call"):
        assert positive(row[key]), (key, row)


@pytest.mark.parametrize("name", CORE_ROWS)
def test_core_row_receives(smoke: dict[str, Any], name: str) -> None:
    """Each Core client and hub protocol receives every tick and has positive figures."""
    core = smoke["core"]
    assert "error" not in core, core["error"]
    row = {"_name": name, **core["receive"][name]}
    assert "error" not in row, _why(row)
    assert core["calls"] > 0
    for key in ("calls_per_s", "us_per_call", "cpu_us_per_call", "cpu_us_per_call_all"):
        assert positive(row[key]), (key, row)
    assert [run["calls"] for run in row["runs"]] == [core["calls"]] * len(row["runs"])


@pytest.mark.parametrize("name", CORE_ROWS)
def test_core_row_echoes(smoke: dict[str, Any], name: str) -> None:
    """Each Core client and hub protocol gets Echo results back, with percentiles."""
    core = smoke["core"]
    assert "error" not in core, core["error"]
    row = {"_name": name, **core["echo"][name]}
    assert "error" not in row, _why(row)
    for key in ("p50_us", "p90_us", "p99_us", "mean_us", "cpu_us_per_call"):
        assert positive(row[key]), (key, row)
    assert row["p50_us"] <= row["p99_us"]


def test_every_peer_reports_its_pinned_version(smoke: dict[str, Any]) -> None:
    """The installed version of every peer is the one pinned in bench/_peers.py."""
    versions = {"signalr-async": smoke["peer_version"]}
    for name, row in smoke["core"]["receive"].items():
        if not name.startswith("txsignalr "):
            versions[name.split(" ", 1)[0]] = row.get("version")
    for name, peer in _peers.PEERS.items():
        pinned = peer.requirements[0].split("==", 1)[1]
        assert str(versions.get(name, "")).startswith(pinned + " "), (name, versions)


def test_unsupported_runs_say_why() -> None:
    """Asking a peer for what it does not do gives a reason, not a gap."""
    assert "does not speak classic" in _peers.unsupported("pysignalr", "classic", "receive", "json")
    assert "unknown peer" in _peers.unsupported("nosuchpeer", "core", "receive", "json")
    assert _peers.unsupported("signalr-async", "core", "echo", "messagepack") is None
    python, why = _peers.ensure_peer("nosuchpeer")
    assert python is None and "unknown peer" in why

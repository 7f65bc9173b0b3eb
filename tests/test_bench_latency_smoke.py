"""
bench/invoke.py and bench/connections.py cover every row by default: each --smoke run
exits 0 and writes well-formed JSON with a positive figure in every row.  Nothing here
looks at how fast anything was.
"""

from __future__ import annotations

from pathlib import Path

from test_bench_smoke import positive, run_smoke

CLASSIC_INVOKE_ROWS = {
    "raw echo",
    "txsignalr",
    "txsignalr serverSentEvents",
    "txsignalr longPolling",
    "txsignalr vs testing server",
}
#: (hub protocol, transport) of the ASP.NET Core rows: MessagePack is not carried by SSE.
CORE_WIRES = [
    ("json", "webSockets"),
    ("json", "serverSentEvents"),
    ("json", "longPolling"),
    ("messagepack", "webSockets"),
    ("messagepack", "longPolling"),
]
INVOKE_ROWS = (
    CLASSIC_INVOKE_ROWS
    | {f"core {p} {t}" for p, t in CORE_WIRES}
    | {"core json raw echo", "core messagepack raw echo"}
)


def test_invoke_smoke_has_a_row_per_transport(tmp_path: Path) -> None:
    """invoke.py --smoke gives p50/p90/p99 for the raw echo and txsignalr over each
    transport, classic and ASP.NET Core (JSON and MessagePack), each row over the
    transport and hub protocol it asked for (the script checks what the server saw)."""
    data = run_smoke("invoke", tmp_path, timeout=180)
    assert set(data["clients"]) == INVOKE_ROWS
    for name, client in data["clients"].items():
        assert "error" not in client, (name, client)
        assert client["calls"] == data["calls"]
        for key in ("p50_us", "p90_us", "p99_us", "mean_us", "cpu_us_per_call"):
            assert positive(client[key]), (name, key, client)
        assert client["p50_us"] <= client["p90_us"] <= client["p99_us"]
    for transport in ("serverSentEvents", "longPolling"):
        assert data["clients"][f"txsignalr {transport}"]["transport_in_use"] == transport
    assert data["clients"]["txsignalr"]["transport_in_use"] == "webSockets"
    assert positive(data["ratio_p50_txsignalr_vs_raw_echo"])
    for protocol, transport in CORE_WIRES:
        client = data["clients"][f"core {protocol} {transport}"]
        assert (client["transport_in_use"], client["hub_protocol"]) == (transport, protocol)


def test_connections_smoke_has_a_row_per_transport(tmp_path: Path) -> None:
    """connections.py --smoke opens every connection over each transport and reports
    memory, fds, the connect rate and the CPU per connection, with the round trips."""
    data = run_smoke("connections", tmp_path, timeout=180)
    (n,) = data["sizes"]
    rows = {
        "floor": "webSockets",
        "txsignalr": "webSockets",
        "txsignalr serverSentEvents": "serverSentEvents",
        "txsignalr longPolling": "longPolling",
        "core json webSockets": "webSockets",
        "core json serverSentEvents": "serverSentEvents",
        "core json longPolling": "longPolling",
        "core messagepack webSockets": "webSockets",
    }
    assert set(data["clients"]) == {f"{name}@{n}" for name in rows}
    for name, transport in rows.items():
        client = data["clients"][f"{name}@{n}"]
        assert "error" not in client, (name, client)
        assert client["transport"] == transport
        assert client["connections"] == n
        assert client["failed"] == 0
        for key in (
            "connect_seconds",
            "connections_per_s",
            "cpu_ms_per_connection",
            "rss_kib",
            "fds_per_connection",
        ):
            assert positive(client[key]), (name, key, client)
        assert isinstance(client["kib_per_connection"], float)
        if name.startswith("core "):
            assert client["hub_protocol"] == name.split()[1]
    assert set(data["round_trips_to_open"]) == {"webSockets", "serverSentEvents", "longPolling"}
    assert positive(data["target_connections_per_s"])

"""The runnable examples work out of the box (they are what README.rst points at)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.utils import getProcessOutputAndValue

from txsignalr.testing import C3Hub, SignalRServer

reactor: Any = _reactor
ROOT = Path(__file__).resolve().parent.parent


async def run_example(*args: str, timeout: float = 60) -> tuple[str, str, int]:
    d = getProcessOutputAndValue(
        sys.executable,
        [str(ROOT / "examples" / "market_feed.py"), *args],
        env=dict(os.environ),
        path=str(ROOT),
        reactor=reactor,
    )
    d.addTimeout(timeout, reactor)
    out, err, code = await d
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_market_feed_against_embedded_demo_server() -> None:
    """By default the example starts the demo server and prints decoded summaries."""
    out, err, code = await run_example("--count", "3")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("#")]
    assert len(lines) == 6  # two symbols per summary
    assert {line.split()[1] for line in lines} == {"BTC-USD", "ETH-USD"}
    assert "subscribed: [{'Success': True, 'ErrorCode': None}]" in out


@pytest_twisted.ensureDeferred
async def test_market_feed_with_url() -> None:
    """Given --url it connects to that server instead."""
    server = SignalRServer(reactor, hubs=[C3Hub(interval=0.1)])
    await server.listen(port=0, interface="127.0.0.1")
    try:
        out, err, code = await run_example("--url", server.url, "--count", "2")
    finally:
        await server.stop()
    assert code == 0, err
    assert "demo server" not in out
    assert len([line for line in out.splitlines() if line.startswith("#")]) == 4
    assert len(server.events("negotiate")) == 1


@pytest_twisted.ensureDeferred
async def test_market_feed_bad_url_is_a_clear_error() -> None:
    """A dead URL gives a one-line error and exit code 1, not a traceback."""
    _out, err, code = await run_example("--url", "http://127.0.0.1:9/signalr")
    assert code == 1
    assert "error: " in err and "negotiate" in err
    assert "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_core_echo_against_embedded_demo_server() -> None:
    """examples/core_echo.py walks the ASP.NET Core API against the demo server."""
    for transports in (
        (),
        ("--transport", "longPolling"),
        ("--hub-protocol", "messagepack", "--transport", "longPolling"),
        ("--hub-protocol", "messagepack"),
    ):
        d = getProcessOutputAndValue(
            sys.executable,
            [str(ROOT / "examples" / "core_echo.py"), *transports],
            env=dict(os.environ),
            path=str(ROOT),
            reactor=reactor,
        )
        d.addTimeout(60, reactor)
        out_bytes, err_bytes, code = await d
        out, err = out_bytes.decode(), err_bytes.decode()
        assert code == 0, err
        expected = "longPolling" if "longPolling" in transports else "webSockets"
        hub_protocol = "messagepack" if "messagepack" in transports else "json"
        assert f"connected: core over {expected} ({hub_protocol})" in out
        assert "Add(2, 3) = 5" in out
        assert "HubException: Intentional failure" in out
        assert "receive: hello" in out
        assert "Counter(3) streamed [0, 1, 2]" in out
        assert "Sum(1..10) = 55" in out
        assert "AskClient: the client's answer to 'ready?'" in out

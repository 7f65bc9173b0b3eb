"""README.rst stays true: its two set-up commands, and its test-server example."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from txsignalr import HubConnection, HubError

reactor: Any = _reactor
ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()


def setup_commands() -> list[str]:
    return [
        line.strip()
        for line in README.splitlines()
        if line.strip().startswith("python3 -m venv .venv")
    ]


def test_exactly_two_setup_commands() -> None:
    """One command runs the main job, one runs the tests; nothing else to set up."""
    commands = setup_commands()
    assert len(commands) == 2, commands
    main, tests = commands
    assert "pytest" not in main
    assert tests.endswith("-m pytest")
    assert "'.[test]'" in tests


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run extracts and runs exactly the README's test command."""
    ci = (ROOT / ".ci" / "run").read_text()
    pattern = re.search(r"grep -m1 -E '([^']+)' README\.rst", ci)
    assert pattern is not None
    matches = [line for line in README.splitlines() if re.search(pattern.group(1), line)]
    assert matches and matches[0].strip() == setup_commands()[1]


def readme_hub_example() -> str:
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", README)
    block = next(b for b in blocks if "class Prices(Hub)" in b)
    code = textwrap.dedent(block)
    return code.split("server = SignalRServer(")[0]


@pytest_twisted.ensureDeferred
async def test_readme_hub_example_works() -> None:
    """The custom hub shown in README.rst behaves as described, end to end."""
    namespace: dict[str, Any] = {}
    exec(readme_hub_example(), namespace)
    from txsignalr.testing import SignalRServer

    server = SignalRServer(reactor, hubs=[namespace["Prices"]()], keepalive=1.0)
    await server.listen(port=0, interface="127.0.0.1")
    conn = HubConnection(reactor, server.url)
    prices = conn.hub("prices")
    quoted: list[str] = []
    prices.on("quoted", quoted.append)
    try:
        d = conn.start()
        d.addTimeout(10, reactor)
        await d
        assert await prices.invoke("quote", "ABC", timeout=10) == {"symbol": "ABC", "bid": 1.0}
        with pytest.raises(HubError) as info:
            await prices.invoke("Quote", "XXX", timeout=10)
        assert info.value.data == {"symbol": "XXX"}
        progress: list[int] = []
        assert await prices.invoke("Backfill", 3, on_progress=progress.append, timeout=10) == 3
        assert progress == [0, 1, 2]
        assert quoted == ["ABC"]
    finally:
        await conn.stop()
        await server.stop()

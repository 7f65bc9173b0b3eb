"""
The connect path's shortcuts: address literals connect without name resolution, and
a connection opened by host name still works end to end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from helpers import within
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

from txsignalr import ConnectionState, HubConnection
from txsignalr._http import tcp_endpoint
from txsignalr.testing import C3Hub, SignalRServer

reactor: Any = _reactor

TRANSPORTS = ["webSockets", "serverSentEvents", "longPolling"]


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", TCP4ClientEndpoint),
        ("10.1.2.3", TCP4ClientEndpoint),
        ("::1", TCP6ClientEndpoint),
        ("fe80::1", TCP6ClientEndpoint),
        ("localhost", HostnameEndpoint),
        ("example.com", HostnameEndpoint),
        ("127.0.0.1.example.com", HostnameEndpoint),
    ],
)
def test_tcp_endpoint_resolves_only_names(host: str, kind: type) -> None:
    """No resolver round trip for an address literal; names still go through one."""
    assert type(tcp_endpoint(reactor, host, 80)) is kind


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[SignalRServer]:
    s = SignalRServer(reactor, hubs=[C3Hub(interval=0.2)], keepalive=1.0)
    await s.listen(port=0, interface="127.0.0.1")
    yield s
    await s.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_connect_by_address_and_by_name(
    server: SignalRServer, transport: str, host: str
) -> None:
    """Negotiate, connect and /start, then a call, by address literal and by name."""
    url = server.url.replace("127.0.0.1", host)
    assert host in url
    conn = HubConnection(reactor, url, transports=[transport])
    try:
        await within(conn.start())
        assert conn.state is ConnectionState.connected
        assert conn.transport is not None and conn.transport.value == transport
        assert await within(conn.hub("c3").invoke("Echo", [1, "x"])) == [1, "x"]
    finally:
        await within(conn.stop())
    assert [e["transport"] for e in server.events("connect")] == [transport]

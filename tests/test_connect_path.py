"""
The connect path's shortcuts: address literals connect without name resolution, and
a connection opened by host name still works end to end.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar
from typing import Any

import pytest
import pytest_twisted
from helpers import within
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txsignalr import ConnectionState, HubConnection
from txsignalr._http import HttpSession, tcp_endpoint
from txsignalr.errors import SignalRError
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


class _Echo(Resource):
    """Answers with what it got: method, URI, Cookie header and body; sets a cookie."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.addCookie(b"affinity", b"srv1", path=b"/")
        body = request.content.read() if request.content is not None else b""
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "cookie": (request.getHeader(b"cookie") or b"").decode(),
                "length": (request.getHeader(b"content-length") or b"").decode(),
                "type": (request.getHeader(b"content-type") or b"").decode(),
                "body": body.decode(),
            }
        ).encode()


@pytest_twisted.async_yield_fixture
async def echo_url() -> AsyncIterator[str]:
    port = reactor.listenTCP(0, Site(_Echo()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_own_client_cookies_body_and_url_encoding(echo_url: str) -> None:
    """
    The session's own client: a plain URL goes out as it is, one that is not a URI
    yet is percent-encoded as treq would, the body is sent with its length, and the
    server's cookie lands in the jar and goes back on the next request.
    """
    jar = CookieJar()
    http = HttpSession(reactor, {"X-Key": "v"}, jar, None, None, 10.0)
    try:
        status, body = await within(
            Deferred.fromCoroutine(
                http.request(
                    "POST",
                    echo_url + "/signalr/send?transport=longPolling&a=%2F",
                    "send",
                    data=b"data=%7B%7D",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            )
        )
        first = json.loads(body)
        assert status == 200
        assert first["method"] == "POST"
        assert first["uri"] == "/signalr/send?transport=longPolling&a=%2F"
        assert (first["body"], first["length"]) == ("data=%7B%7D", "11")
        assert first["type"] == "application/x-www-form-urlencoded"
        assert first["cookie"] == ""
        assert [c.value for c in jar if c.name == "affinity"] == ["srv1"]

        status, body = await within(
            Deferred.fromCoroutine(
                http.request("GET", echo_url + "/signalr/p a?name=h\u00e9", "ping")
            )
        )
        second = json.loads(body)
        assert second["uri"] == "/signalr/p%20a?name=h%C3%A9"
        assert second["cookie"] == "affinity=srv1"
        assert second["body"] == "" and second["method"] == "GET"
    finally:
        await within(http.close_idle())


class _SlowResponse:
    """An IResponse whose body the test delivers."""

    code = 200

    def __init__(self) -> None:
        self.reader: Any = None

    def deliverBody(self, reader: Any) -> None:
        self.reader = reader


class _HeldClient:
    """A treq-like client whose answers the test fires."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


def _held_session() -> tuple[Clock, _HeldClient, HttpSession]:
    clock = Clock()
    client = _HeldClient()
    return clock, client, HttpSession(clock, {}, CookieJar(), None, client, 10.0)


def test_each_phase_of_a_request_has_its_own_limit() -> None:
    """Headers after 9 s and the body 9 s later: within the 10 s of each phase."""
    clock, client, http = _held_session()
    got: list[Any] = []
    Deferred.fromCoroutine(http.request("GET", "http://127.0.0.1:1/x", "start")).addBoth(got.append)
    clock.advance(9)
    response = _SlowResponse()
    client.pending[0].callback(response)
    assert got == []
    clock.advance(9)
    response.reader.dataReceived(b"ok")
    response.reader.connectionLost(Failure(ResponseDone()))
    assert got == [(200, b"ok")]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_stalled_phase_times_out(phase: str) -> None:
    """No answer, or no end of its body, within 10 s: a clear error, no timer left."""
    clock, client, http = _held_session()
    got: list[Any] = []
    Deferred.fromCoroutine(http.request("GET", "http://127.0.0.1:1/x", "start")).addBoth(got.append)
    if phase == "body":
        clock.advance(5)
        client.pending[0].callback(_SlowResponse())
    clock.advance(9.9)
    assert got == []
    clock.advance(0.2)
    assert len(got) == 1 and isinstance(got[0], Failure)
    assert got[0].check(SignalRError)
    assert str(got[0].value) == "start request timed out after 10 s"
    assert clock.getDelayedCalls() == []


def test_a_request_chained_on_an_inner_deferred_times_out() -> None:
    """The agent stack's Deferred fires into another one that never fires: still a timeout."""
    inner: Deferred[Any] = Deferred()

    class _Chained:
        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            outer: Deferred[Any] = Deferred()
            outer.callback(None)
            outer.addCallback(lambda _: inner)  # called, but waiting on inner
            return outer

    clock = Clock()
    http = HttpSession(clock, {}, CookieJar(), None, _Chained(), 10.0)
    got: list[Any] = []
    Deferred.fromCoroutine(http.request("GET", "http://127.0.0.1:1/x", "negotiate")).addBoth(
        got.append
    )
    clock.advance(10.1)
    assert inner.called  # cancelled through the chain
    assert len(got) == 1 and isinstance(got[0], Failure)
    assert str(got[0].value) == "negotiate request timed out after 10 s"
    assert clock.getDelayedCalls() == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


FAMILY_WIRES = (
    [("classic", t, "json") for t in TRANSPORTS]
    + [("core", t, "json") for t in TRANSPORTS]
    + [("core", "webSockets", "messagepack"), ("core", "longPolling", "messagepack")]
)


@pytest.mark.parametrize(
    ("family", "transport", "hub_protocol"),
    FAMILY_WIRES,
    ids=[f"{f}-{t}-{p}" for f, t, p in FAMILY_WIRES],
)
@pytest_twisted.ensureDeferred
async def test_an_idle_connection_holds_one_socket(
    family: str, transport: str, hub_protocol: str
) -> None:
    """Once started, a connection releases the pooled HTTP socket of negotiate (and of
    /start or the handshake's POST): one socket per idle connection on every family and
    transport, which is what bench/connections.py's fds/conn counts.  The server runs
    in this process, so each TCP connection is two descriptors here."""
    server = SignalRServer(reactor, hubs=[C3Hub()])
    await server.listen(port=0, interface="127.0.0.1")
    url = server.url if family == "classic" else server.core_url("c3")
    conn = HubConnection(
        reactor,
        url,
        protocol=family,
        transports=[transport],
        hub_protocol=hub_protocol,
        reconnect_delay=None,
    )
    base = _open_fds()
    try:
        await within(conn.start())
        deadline = reactor.seconds() + 5
        while _open_fds() - base > 2 and reactor.seconds() < deadline:
            await deferLater(reactor, 0.02, lambda: None)
        assert _open_fds() - base == 2, sorted(os.listdir("/proc/self/fd"))
        assert conn.state is ConnectionState.connected
    finally:
        await within(conn.stop())
        await server.stop()

"""
HTTP proxies: ``proxy=`` / ``--proxy`` and the ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
``NO_PROXY`` environment, against a real proxy server (proxy.py, run as a
subprocess on 127.0.0.1) in front of ``txsignalr.testing``, over every transport of
both families, TLS included.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers import within
from twisted.internet import reactor as _reactor
from twisted.internet.ssl import CertificateOptions

from txsignalr import HubConnection, InvalidURL, NegotiationError, tls_policy
from txsignalr._proxy import ProxyURL, proxy_for
from txsignalr.testing import C3Hub, EchoHub, SignalRServer

reactor: Any = _reactor

FAMILIES = ["classic", "core"]
TRANSPORTS = ["webSockets", "serverSentEvents", "longPolling"]


class RunningProxy:
    def __init__(self, tmp: Path, *extra: str) -> None:
        port_file = tmp / "port"
        self.log = tmp / "proxy.log"
        self._out = self.log.open("w")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0"),
                *("--port-file", str(port_file), "--num-workers", "1", "--num-acceptors", "1"),
                *extra,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proxy.py did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def tunnels(self) -> list[str]:
        """The CONNECT targets proxy.py logged so far."""
        self._out.flush()
        return [
            line.split(" - CONNECT ", 1)[1].split(" ", 1)[0]
            for line in self.log.read_text().splitlines()
            if " - CONNECT " in line
        ]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._out.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    p = RunningProxy(tmp_path_factory.mktemp("proxy"))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    p = RunningProxy(tmp_path_factory.mktemp("auth-proxy"), "--basic-auth", "user:pr0xy-pass")
    yield p
    p.stop()


async def wait_tunnels(proxy: RunningProxy, target: str, seconds: float = 5.0) -> list[str]:
    """proxy.py writes its access log line when a tunnel closes: wait for it."""
    from helpers import sleep

    deadline = time.monotonic() + seconds
    while target not in proxy.tunnels() and time.monotonic() < deadline:
        await sleep(0.05)
    return proxy.tunnels()


def connection(server: SignalRServer, family: str, transport: str, **kw: Any) -> HubConnection:
    url = server.url if family == "classic" else server.core_url("echo")
    conn = HubConnection(reactor, url, protocol=family, transports=[transport], **kw)
    if family == "classic":
        conn.hub("c3")
    return conn


async def echo(conn: HubConnection, family: str, value: str) -> Any:
    target: Any = conn.hub("c3") if family == "classic" else conn
    return await within(target.invoke("Echo", value, timeout=10))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_every_transport_through_the_proxy(
    proxy: RunningProxy, family: str, transport: str
) -> None:
    server = SignalRServer(reactor, hubs=[C3Hub(interval=1.0), EchoHub()])
    await server.listen(port=0, interface="127.0.0.1")
    target = f"127.0.0.1:{server.port}"
    try:
        conn = connection(server, family, transport, proxy=proxy.url)
        await within(conn.start())
        assert await echo(conn, family, "via the proxy") == "via the proxy"
        await within(conn.stop())
    finally:
        await server.stop()
    assert target in await wait_tunnels(proxy, target)


@pytest.fixture(scope="module")
def tls_files() -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from test_tls import make_cert
    from twisted.internet.ssl import Certificate, PrivateCertificate

    ca_key, ca_cert, _ = make_cert("proxy test CA", ca=True)
    _, _, server_pem = make_cert("127.0.0.1", issuer=(ca_key, ca_cert))
    return {
        "ca": Certificate.loadPEM(ca_cert.public_bytes(serialization.Encoding.PEM)),
        "server": PrivateCertificate.loadPEM(server_pem),
    }


@pytest.mark.parametrize(
    ("family", "transport"),
    [
        ("classic", "webSockets"),
        ("classic", "longPolling"),
        ("core", "webSockets"),
        ("core", "serverSentEvents"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_tls_server_behind_the_proxy(
    proxy: RunningProxy, tls_files: dict[str, Any], family: str, transport: str
) -> None:
    """https and wss through CONNECT: the TLS session is with the server, end to end
    (the certificate checked is the server's), the proxy sees only host and port."""
    server_cert = tls_files["server"]
    options = CertificateOptions(
        privateKey=server_cert.privateKey.original, certificate=server_cert.original
    )
    server = SignalRServer(reactor, hubs=[C3Hub(interval=1.0), EchoHub()])
    await server.listen(port=0, interface="127.0.0.1", tls=options)
    target = f"127.0.0.1:{server.port}"
    try:
        assert server.url.startswith("https://")
        conn = connection(
            server, family, transport, proxy=proxy.url, tls=tls_policy(tls_files["ca"])
        )
        await within(conn.start())
        assert await echo(conn, family, "tls via proxy") == "tls via proxy"
        await within(conn.stop())
        refused = connection(server, family, transport, proxy=proxy.url)
        with pytest.raises(NegotiationError):  # verification still on through the tunnel
            await within(refused.start())
        await within(refused.stop())
    finally:
        await server.stop()
    assert target in await wait_tunnels(proxy, target)


@pytest_twisted.ensureDeferred
async def test_the_environment_and_no_proxy(proxy: RunningProxy, monkeypatch: Any) -> None:
    """HTTP_PROXY is used by default; NO_PROXY sends a host direct; proxy=False too."""
    server = SignalRServer(reactor, hubs=[EchoHub()])
    await server.listen(port=0, interface="127.0.0.1")
    target = f"127.0.0.1:{server.port}"
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        direct = connection(server, "core", "webSockets", proxy=False)
        await within(direct.start())
        await within(direct.stop())
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        bypassed = connection(server, "core", "serverSentEvents")
        await within(bypassed.start())
        await within(bypassed.stop())
        assert target not in await wait_tunnels(proxy, target, seconds=1.0)
        monkeypatch.delenv("NO_PROXY")
        via = connection(server, "core", "longPolling")
        await within(via.start())
        assert await echo(via, "core", "env") == "env"
        await within(via.stop())
    finally:
        await server.stop()
    assert target in await wait_tunnels(proxy, target)


@pytest_twisted.ensureDeferred
async def test_proxy_credentials(auth_proxy: RunningProxy) -> None:
    """A proxy asking for credentials: without them, a NegotiationError naming the
    407; with user:password in the proxy URL it works, and the password is nowhere
    in the connection's repr or errors."""
    server = SignalRServer(reactor, hubs=[EchoHub()])
    await server.listen(port=0, interface="127.0.0.1")
    try:
        without = connection(server, "core", "webSockets", proxy=auth_proxy.url)
        with pytest.raises(NegotiationError, match="407") as info:
            await within(without.start())
        await within(without.stop())
        assert "pr0xy-pass" not in str(info.value)
        url = auth_proxy.url.replace("http://", "http://user:pr0xy-pass@")
        for transport in TRANSPORTS:
            conn = connection(server, "core", transport, proxy=url)
            await within(conn.start())
            assert await echo(conn, "core", transport) == transport
            assert "pr0xy-pass" not in repr(conn)
            await within(conn.stop())
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_proxy_that_is_down() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conn = HubConnection(
        reactor, "http://127.0.0.1:1/hubs/echo", protocol="core", proxy=f"http://127.0.0.1:{port}"
    )
    with pytest.raises(NegotiationError, match="could not connect to the proxy"):
        await within(conn.start())
    await within(conn.stop())


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://h.example/x", {"HTTPS_PROXY": "p:3128"}, "p:3128"),
        ("wss://h.example/x", {"https_proxy": "http://p:1", "HTTPS_PROXY": "http://q:2"}, "p:1"),
        ("http://h.example/x", {"HTTPS_PROXY": "p:3128"}, None),
        ("http://h.example/x", {"HTTP_PROXY": "p:8080"}, "p:8080"),
        ("ws://h.example/x", {"ALL_PROXY": "p:9"}, "p:9"),
        ("https://h.example/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": "example"}, None),
        ("https://h.example/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": "ample"}, "p:1"),
        ("https://h.example/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": ".example"}, None),
        ("https://h.example/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": "h.example"}, None),
        ("https://h.example/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": "h.example:80"}, "p:1"),
        ("https://h.example/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": "h.example:443"}, None),
        ("https://10.1.2.3/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": "10.0.0.0/8"}, None),
        ("https://10.1.2.3/x", {"HTTPS_PROXY": "p:1", "no_proxy": "a, *"}, None),
        ("https://[::1]:5/x", {"HTTPS_PROXY": "p:1", "NO_PROXY": "::1"}, None),
    ],
)
def test_which_proxy_a_url_takes(url: str, env: dict[str, str], expected: str | None) -> None:
    found = proxy_for(url, None, env)
    assert (None if found is None else f"{found.host}:{found.port}") == expected


def test_proxy_urls() -> None:
    p = ProxyURL.parse("http://al%40ice:s3cr%3At@proxy.example:3128")
    assert (p.host, p.port) == ("proxy.example", 3128)
    import base64

    assert p.authorization == "Basic " + base64.b64encode(b"al@ice:s3cr:t").decode()
    assert "s3cr" not in repr(p) and "s3cr" not in str(p)
    assert ProxyURL.parse("proxy.example").port == 80
    for bad in ("https://p:1", "socks5://p:1", "http://:1", "http://p:x"):
        with pytest.raises(InvalidURL) as info:
            ProxyURL.parse(bad)
        assert "proxy URL" in str(info.value)
    assert proxy_for("https://h/", "http://explicit:1", {"HTTPS_PROXY": "p:2"}).port == 1  # type: ignore[union-attr]
    assert proxy_for("https://h/", False, {"HTTPS_PROXY": "p:2"}) is None


def test_cli_proxy_option() -> None:
    """--proxy reaches the connection settings (password hidden in their repr); a
    proxy URL that cannot be used is a usage error."""
    from twisted.python import usage

    from txsignalr import tap

    options = tap.Options()
    options.parseOptions(
        [
            "--url",
            "https://h.example/hubs/feed",
            "--protocol",
            "core",
            "--proxy",
            "http://u:pw-secret@proxy.example:3128",
        ]
    )
    settings = options.settings(options["url"])
    assert settings.proxy == "http://u:pw-secret@proxy.example:3128"
    assert settings.connection_arguments()["proxy"] == settings.proxy
    assert "pw-secret" not in repr(settings)
    assert "pw-secret" in settings.secret_values()
    with pytest.raises(usage.UsageError, match="--proxy: proxy URL 'socks5://p:1'"):
        tap.Options().parseOptions(
            [
                "--url",
                "https://h.example/hubs/feed",
                "--protocol",
                "core",
                "--proxy",
                "socks5://p:1",
            ]
        )

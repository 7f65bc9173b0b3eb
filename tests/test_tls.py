"""TLS: verification on by default, a custom CA, and a client certificate (wss + https)."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import wait_until, within
from twisted.internet import reactor as _reactor
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate

from txsignalr import (
    HubConnection,
    NegotiationError,
    TLSConfigError,
    tls_policy,
    tls_policy_from_files,
)
from txsignalr.testing import C3Hub, EchoHub, SignalRServer

reactor: Any = _reactor


def make_cert(
    common_name: str,
    issuer: tuple[Any, Any] | None = None,
    ca: bool = False,
    san: str = "127.0.0.1",
) -> tuple[Any, Any, bytes]:
    """A certificate for ``san`` (an IP address or a DNS name) or a CA, returning
    (key, cert, PEM of cert+key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_key, issuer_cert = issuer if issuer else (key, None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(san)]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, cert, pem


def _general_name(san: str) -> Any:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca_key, ca_cert, _ = make_cert("txsignalr test CA", ca=True)
    _, _, server_pem = make_cert("127.0.0.1", issuer=(ca_key, ca_cert))
    _, _, client_pem = make_cert("client", issuer=(ca_key, ca_cert))
    ca = Certificate.loadPEM(ca_cert.public_bytes(serialization.Encoding.PEM))
    return {
        "ca_pair": (ca_key, ca_cert),
        "ca": ca,
        "server": PrivateCertificate.loadPEM(server_pem),
        "client": PrivateCertificate.loadPEM(client_pem),
    }


async def start_tls_server(pki: dict[str, Any], require_client_cert: bool) -> SignalRServer:
    server_cert: PrivateCertificate = pki["server"]
    options = CertificateOptions(
        privateKey=server_cert.privateKey.original,
        certificate=server_cert.original,
        verify=require_client_cert,
        caCerts=[pki["ca"].original] if require_client_cert else None,
        requireCertificate=require_client_cert,
    )
    server = SignalRServer(reactor, hubs=[C3Hub(interval=1.0)])
    await server.listen(port=0, interface="127.0.0.1", tls=options)
    return server


@pytest_twisted.ensureDeferred
async def test_custom_ca_connects_over_wss(pki: dict[str, Any]) -> None:
    """With the test CA trusted, https negotiate and the wss socket both work."""
    server = await start_tls_server(pki, require_client_cert=False)
    try:
        assert server.url.startswith("https://")
        conn = HubConnection(reactor, server.url, tls=tls_policy(trust_root=pki["ca"]))
        hub = conn.hub("c3")
        d = conn.start()
        d.addTimeout(10, reactor)
        await d
        echo = hub.invoke("Echo", "over tls", timeout=10)
        assert await echo == "over tls"
        await conn.stop()
        assert server.events("connect")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_verification_is_on_by_default(pki: dict[str, Any]) -> None:
    """Without trusting the CA the connection is refused (no silent insecure mode)."""
    server = await start_tls_server(pki, require_client_cert=False)
    try:
        conn = HubConnection(reactor, server.url)
        conn.hub("c3")
        d = conn.start()
        d.addTimeout(10, reactor)
        with pytest.raises(NegotiationError, match="negotiate request failed"):
            await d
        assert server.events("negotiate") == []
        await conn.stop()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_client_certificate(pki: dict[str, Any]) -> None:
    """A server requiring a client certificate accepts ours and refuses its absence."""
    server = await start_tls_server(pki, require_client_cert=True)
    try:
        without = HubConnection(reactor, server.url, tls=tls_policy(trust_root=pki["ca"]))
        without.hub("c3")
        d = without.start()
        d.addTimeout(10, reactor)
        with pytest.raises(NegotiationError):
            await d
        await without.stop()

        conn = HubConnection(
            reactor,
            server.url,
            tls=tls_policy(trust_root=pki["ca"], client_certificate=pki["client"]),
        )
        conn.hub("c3")
        d = conn.start()
        d.addTimeout(10, reactor)
        await d
        assert server.events("start")
        await conn.stop()
    finally:
        await server.stop()


# -- every family and transport, the CLI's PEM files -------------------------------------

FAMILIES = ["classic", "core"]
TRANSPORTS = ["webSockets", "serverSentEvents", "longPolling"]


def self_signed(common_name: str = "127.0.0.1") -> PrivateCertificate:
    """A leaf certificate for 127.0.0.1 that signs itself (no CA anywhere)."""
    _, _, pem = make_cert(common_name)
    return PrivateCertificate.loadPEM(pem)


async def tls_server(certificate: PrivateCertificate, ca: Any = None) -> SignalRServer:
    options = CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        verify=ca is not None,
        caCerts=[ca.original] if ca is not None else None,
        requireCertificate=ca is not None,
    )
    server = SignalRServer(reactor, hubs=[C3Hub(interval=1.0), EchoHub()])
    await server.listen(port=0, interface="127.0.0.1", tls=options)
    return server


def connection(server: SignalRServer, family: str, transport: str, **kw: Any) -> HubConnection:
    url = server.url if family == "classic" else server.core_url("echo")
    conn = HubConnection(reactor, url, transports=[transport], protocol=family, **kw)
    if family == "classic":
        conn.hub("c3")
    return conn


async def echo(conn: HubConnection, family: str, value: str) -> Any:
    target = conn.hub("c3") if family == "classic" else conn
    return await target.invoke("Echo", value, timeout=10)


async def refused(conn: HubConnection) -> NegotiationError:
    d = conn.start()
    d.addTimeout(10, reactor)
    with pytest.raises(NegotiationError, match="negotiate request failed") as info:
        await d
    await conn.stop()
    return info.value


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_every_transport_verifies_and_offers_the_client_certificate(
    pki: dict[str, Any], family: str, transport: str
) -> None:
    """Over each transport of each family: https + wss with a custom CA and a client
    certificate the server requires; without the certificate the server refuses."""
    server = await tls_server(pki["server"], ca=pki["ca"])
    try:
        conn = connection(
            server,
            family,
            transport,
            tls=tls_policy(trust_root=pki["ca"], client_certificate=pki["client"]),
        )
        d = conn.start()
        d.addTimeout(10, reactor)
        await d
        assert conn.transport is not None and conn.transport.value == transport
        assert await echo(conn, family, f"{family} {transport}") == f"{family} {transport}"
        await conn.stop()
        await refused(connection(server, family, transport, tls=tls_policy(pki["ca"])))
    finally:
        await server.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_a_self_signed_server_is_refused_by_default(family: str, transport: str) -> None:
    """No tls= at all: the platform's trust store, which does not know a self-signed
    certificate, so the connection is refused before any request reaches the server."""
    server = await tls_server(self_signed())
    try:
        await refused(connection(server, family, transport))
        assert server.events("negotiate") == []
    finally:
        await server.stop()


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_the_hostname_is_checked(pki: dict[str, Any], family: str) -> None:
    """A certificate from the trusted CA, but for another name, is refused."""
    _, _, pem = make_cert("elsewhere.example", issuer=pki["ca_pair"], san="elsewhere.example")
    server = await tls_server(PrivateCertificate.loadPEM(pem))
    try:
        await refused(
            connection(server, family, "webSockets", tls=tls_policy(trust_root=pki["ca"]))
        )
        assert server.events("negotiate") == []
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def pem_files(pki: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CA, the client certificate and its key as separate PEM files, the client
    certificate and key together, an encrypted key, and a key of another pair."""
    d = tmp_path_factory.mktemp("pem")
    ca_key, ca_cert = pki["ca_pair"]
    client_key, client_cert, client_pem = make_cert("client", issuer=(ca_key, ca_cert))
    other_key, _, _ = make_cert("other", issuer=(ca_key, ca_cert))
    pem = serialization.Encoding.PEM
    files = {
        "ca": ca_cert.public_bytes(pem),
        "cert": client_cert.public_bytes(pem),
        "key": client_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "both": client_pem,
        "encrypted": client_key.private_bytes(
            pem,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "other-key": other_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "garbage": b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        "text": b"no PEM here\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = d / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(
    ("ca", "cert", "key", "message"),
    [
        ("missing", None, None, "CA file '{missing}' cannot be read: No such file"),
        ("text", None, None, "CA file '{text}' holds no PEM certificate"),
        ("garbage", None, None, "'{garbage}': not a valid PEM certificate"),
        (None, "text", None, "client certificate '{text}' holds no PEM certificate"),
        (None, "cert", None, "'{cert}' holds no PEM private key and no separate key file"),
        (None, "cert", "text", "'{text}' holds no PEM private key"),
        (None, "cert", "encrypted", "'{encrypted}': the private key is encrypted"),
        (None, "cert", "other-key", "the private key in '{other-key}' does not belong"),
        (None, None, "key", "a client key needs its client certificate"),
    ],
)
def test_pem_files_that_cannot_be_used(
    pem_files: dict[str, Path], ca: str | None, cert: str | None, key: str | None, message: str
) -> None:
    """Each unusable file gives a TLSConfigError naming the file and the problem."""
    paths = {**{k: str(v) for k, v in pem_files.items()}, "missing": "/nonexistent/ca.pem"}
    with pytest.raises(TLSConfigError) as info:
        tls_policy_from_files(
            *(paths[name] if name is not None else None for name in (ca, cert, key))
        )
    assert message.format_map(paths) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ca", "/nonexistent/ca.pem"], "CA file '/nonexistent/ca.pem' cannot be read"),
        (["--client-key", "{key}"], "--client-key needs --client-cert"),
        (["--client-cert", "{cert}"], "holds no PEM private key"),
        (["--ca", "{ca}", "--ca", "{ca}"], "--ca given twice"),
        (["--client-cert", "{cert}", "--client-key", "{other-key}"], "does not belong"),
    ],
)
def test_cli_refuses_unusable_tls_files(
    pem_files: dict[str, Path], args: list[str], message: str
) -> None:
    """twistd signalr reports a bad --ca/--client-cert/--client-key as a usage error."""
    from twisted.python import usage

    from txsignalr import tap

    paths = {k: str(v) for k, v in pem_files.items()}
    options = tap.Options()
    with pytest.raises(usage.UsageError) as info:
        options.parseOptions(
            ["--url", "https://127.0.0.1:1/signalr", "--hub", "c3"]
            + [a.format_map(paths) for a in args]
        )
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("family", "transport"), [("classic", "webSockets"), ("core", "serverSentEvents")]
)
@pytest_twisted.ensureDeferred
async def test_cli_tls_options_reach_a_server_requiring_a_client_certificate(
    pki: dict[str, Any],
    pem_files: dict[str, Path],
    tmp_path: Path,
    family: str,
    transport: str,
) -> None:
    """--ca, --client-cert and --client-key (separate files): the service connects to
    a server that requires the certificate and writes the calls it receives."""
    from txsignalr import tap

    server = SignalRServer(reactor, hubs=[C3Hub(interval=0.05), EchoHub(tick_interval=0.05)])
    options_tls = CertificateOptions(
        privateKey=pki["server"].privateKey.original,
        certificate=pki["server"].original,
        verify=True,
        caCerts=[pki["ca"].original],
        requireCertificate=True,
    )
    await server.listen(port=0, interface="127.0.0.1", tls=options_tls)
    out = tmp_path / "calls.jsonl"
    if family == "classic":
        what = ["--url", server.url, "--subscribe", 'c3.Subscribe:[["tick"]]', "--on", "c3.tick"]
    else:
        what = ["--url", server.core_url("echo"), "--protocol", "core", "--on", "tick"]
    options = tap.Options()
    options.parseOptions(
        [
            *what,
            *("--transport", transport, "--output", str(out), "--ca", str(pem_files["ca"])),
            *("--client-cert", str(pem_files["cert"]), "--client-key", str(pem_files["key"])),
        ]
    )
    root = tap.makeService(options)
    root.startService()

    def lines() -> list[Any]:
        text = out.read_text() if out.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    try:
        await wait_until(lambda: len(lines()) >= 3, "three tick lines over TLS")
    finally:
        d = root.stopService()
        if d is not None:
            await within(d)
        await server.stop()
    assert {r["method"] for r in lines()} == {"tick"}
    assert server.events("connect")[0]["transport"].lower() == transport.lower()

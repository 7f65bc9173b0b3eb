"""TLS: verification on by default, a custom CA, and a client certificate (wss + https)."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _reactor
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate

from txsignalr import HubConnection, NegotiationError, tls_policy
from txsignalr.testing import C3Hub, SignalRServer

reactor: Any = _reactor


def make_cert(
    common_name: str, issuer: tuple[Any, Any] | None = None, ca: bool = False
) -> tuple[Any, Any, bytes]:
    """A certificate for 127.0.0.1 (or a CA), returning (key, cert, PEM of cert+key)."""
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
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, cert, pem


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca_key, ca_cert, _ = make_cert("txsignalr test CA", ca=True)
    _, _, server_pem = make_cert("127.0.0.1", issuer=(ca_key, ca_cert))
    _, _, client_pem = make_cert("client", issuer=(ca_key, ca_cert))
    ca = Certificate.loadPEM(ca_cert.public_bytes(serialization.Encoding.PEM))
    return {
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

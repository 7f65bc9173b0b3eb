"""TLS settings for the HTTP requests and the WebSocket."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet.ssl import (
    Certificate,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from txsignalr.errors import TLSConfigError

__all__ = ["tls_policy", "tls_policy_from_files"]

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_KEY = re.compile(
    rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.S
)


@implementer(IPolicyForHTTPS)
class _ClientTLSPolicy:
    """Verifies the server against ``trust_root`` and offers ``client_certificate``."""

    def __init__(
        self,
        trust_root: Certificate | Any | None,
        client_certificate: PrivateCertificate | None,
    ) -> None:
        self._trust_root = trust_root
        self._client_certificate = client_certificate

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(
            hostname.decode("idna"),
            trustRoot=self._trust_root,
            clientCertificate=self._client_certificate,
        )


def tls_policy(
    trust_root: Certificate | Any | None = None,
    client_certificate: PrivateCertificate | None = None,
) -> IPolicyForHTTPS:
    """
    A TLS policy for :class:`~txsignalr.HubConnection` (``tls=``), built on Twisted's
    :func:`~twisted.internet.ssl.optionsForClientTLS`.  Server certificates are always
    verified; hostname checks stay on.

    :param trust_root: the CA to trust instead of the platform's trust store: a
        :class:`~twisted.internet.ssl.Certificate` (e.g. ``Certificate.loadPEM(pem)``)
        or anything ``optionsForClientTLS`` accepts as ``trustRoot``.
    :param client_certificate: a client certificate with its private key
        (``PrivateCertificate.loadPEM(cert_and_key_pem)``) for mutual TLS.
    :returns: an :class:`~twisted.web.iweb.IPolicyForHTTPS` used for ``/negotiate``,
        ``/start``, ``/abort`` and the ``wss://`` handshake alike.
    """
    return _ClientTLSPolicy(trust_root, client_certificate)


def tls_policy_from_files(
    ca: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> IPolicyForHTTPS:
    """
    :func:`tls_policy` from PEM files, as ``twistd signalr --ca --client-cert
    --client-key`` takes them.  Verification and hostname checks stay on.

    :param ca: PEM file of the CA certificate(s) to trust instead of the platform's
        trust store (one or more ``CERTIFICATE`` blocks).
    :param client_cert: PEM file of the client certificate for mutual TLS; it may
        hold the private key too.
    :param client_key: PEM file of the client certificate's private key (not
        encrypted), when it is not in ``client_cert``.
    :raises TLSConfigError: a file cannot be read, holds no certificate or key, holds
        an encrypted key, or the key does not belong to the certificate.
    """
    trust_root = None
    if ca is not None:
        pems = _CERTIFICATE.findall(_read(ca, "CA file"))
        if not pems:
            raise TLSConfigError(f"CA file {str(ca)!r} holds no PEM certificate")
        trust_root = trustRootFromCertificates([_certificate(pem, ca) for pem in pems])
    if client_key is not None and client_cert is None:
        raise TLSConfigError("a client key needs its client certificate")
    certificate = None
    if client_cert is not None:
        certificate = _client_certificate(client_cert, client_key)
    return tls_policy(trust_root, certificate)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from None


def _certificate(pem: bytes, path: str | Path) -> Certificate:
    try:
        return Certificate.loadPEM(pem)
    except Exception as e:  # pyOpenSSL's crypto.Error, or a decoding error
        raise TLSConfigError(f"{str(path)!r}: not a valid PEM certificate ({e})") from None


def _client_certificate(cert_path: str | Path, key_path: str | Path | None) -> PrivateCertificate:
    cert_pem = _read(cert_path, "client certificate")
    found = _CERTIFICATE.search(cert_pem)
    if found is None:
        raise TLSConfigError(f"client certificate {str(cert_path)!r} holds no PEM certificate")
    certificate = _certificate(found.group(0), cert_path)
    key_source = cert_path if key_path is None else key_path
    key_pem = cert_pem if key_path is None else _read(key_path, "client key")
    key = _KEY.search(key_pem)
    if key is None:
        hint = " and no separate key file was given" if key_path is None else ""
        raise TLSConfigError(f"{str(key_source)!r} holds no PEM private key{hint}")
    if key.group(1) == b"ENCRYPTED PRIVATE KEY":
        raise TLSConfigError(
            f"{str(key_source)!r}: the private key is encrypted; decrypt it first "
            "(openssl pkey -in KEY -out PLAIN-KEY) and keep that file private"
        )
    try:
        pair = KeyPair.load(key.group(0), FILETYPE_PEM)
    except Exception as e:
        raise TLSConfigError(f"{str(key_source)!r}: not a valid PEM private key ({e})") from None
    try:
        joined: PrivateCertificate = PrivateCertificate.fromCertificateAndKeyPair(certificate, pair)
    except Exception:
        raise TLSConfigError(
            f"the private key in {str(key_source)!r} does not belong to the client "
            f"certificate in {str(cert_path)!r}"
        ) from None
    return joined

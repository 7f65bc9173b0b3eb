"""TLS settings for the HTTP requests and the WebSocket."""

from __future__ import annotations

from typing import Any

from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["tls_policy"]


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

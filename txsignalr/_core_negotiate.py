"""
ASP.NET Core SignalR negotiate, without I/O: the negotiate URL, the answer (v0, v1, a
redirect, an error) and the URL that opens a transport.

Reference: ``core.md`` §2; the real-server transcripts in ``transcripts-core/``
(ASP.NET Core 2.2 answers v0, the Go server v1).
"""

from __future__ import annotations

from collections import abc
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlunsplit

import attrs

from txsignalr._protocol import (
    Transport,
    _JSONError,
    loads,
    redact_url,
    split_url,
    websocket_url,
)
from txsignalr.errors import InvalidURL, NegotiationError

__all__ = [
    "CORE_TRANSPORT_NAMES",
    "AvailableTransport",
    "CoreNegotiateResponse",
    "Redirect",
    "connect_url",
    "negotiate_url",
    "parse_core_negotiate",
]

#: The wire name of each transport in ``availableTransports``.
CORE_TRANSPORT_NAMES: Final = {
    Transport.web_sockets: "WebSockets",
    Transport.server_sent_events: "ServerSentEvents",
    Transport.long_polling: "LongPolling",
}
_TRANSPORT_BY_NAME: Final = {name: t for t, name in CORE_TRANSPORT_NAMES.items()}


# ------------------------------------------------------------------ negotiate


def _with_query(
    base_url: str, query: Mapping[str, str] | abc.Sequence[tuple[str, str]] | None
) -> str:
    """The base URL (http(s)) with the user's extra query parameters appended."""
    scheme, netloc, path, existing = split_url(base_url)
    pairs = [] if query is None else list(query.items() if isinstance(query, Mapping) else query)
    for key, _ in [*parse_qsl(existing, keep_blank_values=True), *pairs]:
        if key == "id":
            raise InvalidURL("query parameter 'id' is reserved by the SignalR protocol")
    extra = [f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in pairs]
    joined = "&".join([p for p in (existing, *extra) if p])
    return urlunsplit((scheme, netloc, path, joined, ""))


def negotiate_url(
    base_url: str,
    query: Mapping[str, str] | abc.Sequence[tuple[str, str]] | None = None,
    *,
    stateful_reconnect: bool = False,
) -> str:
    """
    The ``POST`` URL of negotiate: ``/negotiate`` inserted into the path, the URL's
    own query and ``query`` kept, ``negotiateVersion=1`` added unless present.

    :param base_url: the hub URL, ``http(s)://host/hub[?…]`` (``ws(s)`` accepted).
    :param query: extra query parameters for every request.
    :param stateful_reconnect: ask for stateful reconnect (``useStatefulReconnect=true``).
    :raises InvalidURL: for a URL that is not absolute http(s), or a reserved ``id``.
    """
    scheme, netloc, path, existing = split_url(_with_query(base_url, query))
    path = path + ("negotiate" if path.endswith("/") else "/negotiate")
    keys = {k for k, _ in parse_qsl(existing, keep_blank_values=True)}
    parts = [existing] if existing else []
    if "negotiateVersion" not in keys:
        parts.append("negotiateVersion=1")
    if stateful_reconnect and "useStatefulReconnect" not in keys:
        parts.append("useStatefulReconnect=true")
    return urlunsplit((scheme, netloc, path, "&".join(parts), ""))


@attrs.frozen
class AvailableTransport:
    """
    One entry of ``availableTransports``.

    :ivar name: the wire name (``WebSockets``, ``ServerSentEvents``, ``LongPolling`` or
        one this client does not know).
    :ivar transfer_formats: the formats it carries (``Text``, ``Binary``), server order.
    """

    name: str
    transfer_formats: tuple[str, ...]

    @property
    def transport(self) -> Transport | None:
        """The transport, or ``None`` when this client does not know the name."""
        return _TRANSPORT_BY_NAME.get(self.name)


@attrs.frozen(repr=False)
class CoreNegotiateResponse:
    """
    A usable negotiate answer.

    :ivar negotiate_version: 0 (no ``connectionToken``) or 1.
    :ivar connection_id: the public connection id.
    :ivar connection_token: what goes into ``id=`` of every later request: the
        ``connectionToken`` (v1) or the ``connectionId`` (v0).  A secret, never in
        ``repr()``.
    :ivar available_transports: in server (preference) order.
    :ivar use_stateful_reconnect: the server agreed to stateful reconnect.
    """

    negotiate_version: int
    connection_id: str
    connection_token: str
    available_transports: tuple[AvailableTransport, ...]
    use_stateful_reconnect: bool = False

    def transport(self, transport: Transport) -> AvailableTransport | None:
        """The entry for ``transport``, or ``None`` when the server does not offer it."""
        name = CORE_TRANSPORT_NAMES[transport]
        for entry in self.available_transports:
            if entry.name == name:
                return entry
        return None

    def __repr__(self) -> str:
        # With v0 the connection id is the token: hide it as well.
        shown = "<redacted>" if self.negotiate_version == 0 else repr(self.connection_id)
        names = [t.name for t in self.available_transports]
        return (
            f"CoreNegotiateResponse(negotiate_version={self.negotiate_version!r}, "
            f"connection_id={shown}, available_transports={names!r}, "
            f"use_stateful_reconnect={self.use_stateful_reconnect!r}, "
            "connection_token=<redacted>)"
        )


@attrs.frozen(repr=False)
class Redirect:
    """
    A negotiate answer that says "negotiate again at ``url``" (Azure SignalR Service).

    :ivar url: where to negotiate next; also the base of the transport URLs after it.
    :ivar access_token: the bearer token to use from now on, or ``None``.  A secret,
        never in ``repr()``.
    """

    url: str
    access_token: str | None = None

    def __repr__(self) -> str:
        token = "None" if self.access_token is None else "<redacted>"
        return f"Redirect(url={redact_url(self.url)!r}, access_token={token})"


def _required_str(obj: Mapping[str, Any], key: str, status: int, body: bytes) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise NegotiationError(f"negotiate response has no {key!r} string", status, body)
    return value


def _transports(value: Any, status: int, body: bytes) -> tuple[AvailableTransport, ...]:
    if not isinstance(value, list):
        raise NegotiationError(
            "negotiate response has no 'availableTransports' array", status, body
        )
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            raise NegotiationError("an 'availableTransports' entry is not an object", status, body)
        name = entry.get("transport")
        formats = entry.get("transferFormats")
        if not isinstance(name, str):
            raise NegotiationError(
                "an 'availableTransports' entry has no 'transport'", status, body
            )
        if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
            raise NegotiationError(
                f"transport {name!r} has no 'transferFormats' array of strings", status, body
            )
        out.append(AvailableTransport(name, tuple(formats)))
    return tuple(out)


class ClassicAnswer(NegotiationError):
    """A classic ASP.NET SignalR server answered an ASP.NET Core negotiate."""


def parse_core_negotiate(status: int, body: bytes) -> CoreNegotiateResponse | Redirect:
    """
    Read an ASP.NET Core negotiate answer.

    :returns: the negotiated connection, or a :class:`Redirect` to follow.
    :raises NegotiationError: when the status is not 200, the body is not a JSON object,
        the server refused (``error``), a classic ASP.NET SignalR server answered, a
        required field is missing or wrong, or the negotiate version is unknown.
    """
    if status != 200:
        hint = (
            " Either this is not a SignalR endpoint or there is a proxy blocking the connection."
            if status == 404
            else ""
        )
        raise NegotiationError(
            f"Unexpected status code returned from negotiate '{status}'.{hint}", status, body
        )
    try:
        obj = loads(body)
    except _JSONError:
        raise NegotiationError(
            "negotiate response is not JSON (is the URL a SignalR endpoint?)", status, body
        ) from None
    if not isinstance(obj, dict):
        raise NegotiationError("negotiate response is not a JSON object", status, body)
    error = obj.get("error")
    if error is not None:
        raise NegotiationError(f"the server refused the negotiation: {error}", status, body)
    if "ProtocolVersion" in obj or "ConnectionToken" in obj:
        raise ClassicAnswer(
            "Detected a connection attempt to an ASP.NET SignalR (classic 2.x) server; "
            "the ASP.NET Core protocol cannot talk to it",
            status,
            body,
        )
    url = obj.get("url")
    if url is not None:
        if not isinstance(url, str) or not url:
            raise NegotiationError("negotiate redirect 'url' is not a string", status, body)
        token = obj.get("accessToken")
        if token is not None and not isinstance(token, str):
            raise NegotiationError("negotiate redirect 'accessToken' is not a string", status, body)
        return Redirect(url, token)
    version = obj.get("negotiateVersion", 0)
    if version is None:
        version = 0
    if type(version) is not int or version not in (0, 1):
        raise NegotiationError(
            f"negotiate answered an unknown negotiateVersion {version!r} (this client "
            "speaks 0 and 1)",
            status,
            body,
        )
    connection_id = _required_str(obj, "connectionId", status, body)
    token = _required_str(obj, "connectionToken", status, body) if version >= 1 else connection_id
    return CoreNegotiateResponse(
        negotiate_version=version,
        connection_id=connection_id,
        connection_token=token,
        available_transports=_transports(obj.get("availableTransports"), status, body),
        use_stateful_reconnect=obj.get("useStatefulReconnect") is True,
    )


def _http_connect_url(base_url: str, token: str) -> str:
    sep = "&" if "?" in base_url else "?"
    # Verbatim like the TS client for URL-safe tokens ('=' of base64 padding too);
    # anything that would change the query's meaning is percent-encoded.
    return f"{base_url}{sep}id={quote(token, safe='=')}"


def connect_url(
    base_url: str,
    negotiated: CoreNegotiateResponse,
    transport: Transport,
    query: Mapping[str, str] | abc.Sequence[tuple[str, str]] | None = None,
) -> str:
    """
    The URL that opens ``transport``: ``{base}?…&id=<token>``, ``ws(s)://`` for
    WebSockets.

    :param base_url: the URL that was negotiated last (after any redirect).
    :param negotiated: the negotiate answer (its token goes into ``id``).
    :param query: extra query parameters, as given to :func:`negotiate_url`.
    """
    url = _http_connect_url(_with_query(base_url, query), negotiated.connection_token)
    return websocket_url(url) if transport is Transport.web_sockets else url

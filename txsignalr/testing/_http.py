"""
twisted.web plumbing of the test server: what a request carried (:class:`RequestInfo`),
answers with the real server's headers, the resources, the access log line and the TCP
connection tracker that lets ``stop()`` drop everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import attrs
from twisted.internet import defer
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Request

from txsignalr._protocol import redact_url

__all__ = [
    "JSON",
    "NOSNIFF",
    "TEXT",
    "DispatchResource",
    "RequestInfo",
    "RootResource",
    "TrackingFactory",
    "access_log_line",
    "empty_500",
    "parse_cookies",
    "respond",
]

JSON = b"application/json; charset=UTF-8"
TEXT = b"text/plain"
NOSNIFF = b"x-content-type-options"
_FORM = "application/x-www-form-urlencoded"
_COOKIE_ATTRIBUTES = frozenset(
    {"path", "domain", "expires", "max-age", "secure", "httponly", "samesite", "priority"}
)

Renderer = Callable[[Request], "bytes | int"]


def parse_cookies(values: Iterable[str]) -> dict[str, str]:
    """
    Read ``Cookie`` headers tolerantly: ``a=b; c=d`` pairs, ignoring items without
    ``=`` and cookie attributes such as ``Path=/`` that some clients forward.
    """
    cookies: dict[str, str] = {}
    for header in values:
        for item in header.split(";"):
            name, sep, value = item.strip().partition("=")
            name = name.strip()
            if not sep or not name or name.lower() in _COOKIE_ATTRIBUTES:
                continue
            cookies[name] = value.strip()
    return cookies


def _pairs(raw: bytes) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8"):
        values.setdefault(key, value)
    return values


def _find(values: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in values.items():
        if key.lower() == lowered:
            return value
    return None


@attrs.frozen
class RequestInfo:
    """What the server read from one HTTP request (query, headers, cookies, form body)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    cookies: dict[str, str]
    form: dict[str, str] = attrs.field(factory=dict)

    def arg(self, name: str) -> str | None:
        """A query value, the name matched case-insensitively like ASP.NET."""
        return _find(self.query, name)

    def form_arg(self, name: str) -> str | None:
        """A value of the form-encoded body, the name matched case-insensitively."""
        return _find(self.form, name)

    def query_or_form(self, name: str) -> str | None:
        """The query value, else the form value (``LongPollingTransport``, server 2.2+)."""
        value = self.arg(name)
        return self.form_arg(name) if value is None else value

    @classmethod
    def from_request(cls, request: Request) -> RequestInfo:
        """Read a twisted.web request (its body only when form-encoded)."""
        uri = request.uri
        query = _pairs(uri.split(b"?", 1)[1] if b"?" in uri else b"")
        headers: dict[str, str] = {}
        cookie_values: list[str] = []
        for name, values in request.requestHeaders.getAllRawHeaders():
            text_values = [v.decode("latin-1") for v in values]
            headers[name.decode("latin-1").lower()] = ", ".join(text_values)
            if name.lower() == b"cookie":
                cookie_values.extend(text_values)
        form: dict[str, str] = {}
        if headers.get("content-type", "").lower().startswith(_FORM) and request.content:
            request.content.seek(0)
            form = _pairs(request.content.read())
        return cls(
            path=request.path.decode("utf-8", "replace"),
            query=query,
            headers=headers,
            cookies=parse_cookies(cookie_values),
            form=form,
        )


def respond(request: Request, status: int, body: bytes, content_type: bytes | None) -> bytes:
    """Answer with ``body``; no ``Content-Type`` at all when ``content_type`` is ``None``."""
    request.setResponseCode(status)
    if content_type is None:
        request.defaultContentType = None
    else:
        request.setHeader(b"content-type", content_type)
    return body


def empty_500(request: Request) -> bytes:
    """The real server's answer to an unknown hub or bad ``connectionData``: a bare 500."""
    request.responseHeaders.removeHeader(NOSNIFF)
    return respond(request, 500, b"", None)


def access_log_line(timestamp: str, request: Request) -> str:
    """An access log line without query values: they carry connection tokens."""
    uri = redact_url(request.uri.decode("latin-1"))
    return f'"{request.method.decode("latin-1")} {uri}" {request.code} {request.sentLength or "-"}'


class TrackingFactory(WrappingFactory):
    """Remembers every TCP connection (HTTP or upgraded) so ``stop()`` can drop them."""

    def __init__(self, site: Any) -> None:
        super().__init__(site)  # type: ignore[no-untyped-call]
        self._closed: dict[ProtocolWrapper, defer.Deferred[None]] = {}

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)  # type: ignore[no-untyped-call]
        self._closed[p] = defer.Deferred()

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)  # type: ignore[no-untyped-call]
        d = self._closed.pop(p, None)
        if d is not None:
            d.callback(None)

    def abort_all(self) -> defer.Deferred[Any]:
        """Abort every TCP connection; the Deferred fires when all are gone."""
        waits = list(self._closed.values())
        for p in list(self._closed):
            transport: Any = p.transport
            if transport is not None:
                transport.abortConnection()
        return defer.gatherResults(waits, consumeErrors=True)


class DispatchResource(Resource):
    """A leaf resource handing every request to ``render``."""

    isLeaf = True

    def __init__(self, render: Renderer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._render = render

    def render(self, request: Request) -> bytes | int:
        return self._render(request)


class RootResource(Resource):
    """Root of the server's own Site: the SignalR path and below, else 404."""

    isLeaf = True

    def __init__(self, path: Callable[[], str], render: Renderer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._path = path
        self._render = render

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("utf-8", "replace").lower()
        base = self._path().lower()
        if path == base or path.startswith(base + "/"):
            return self._render(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", TEXT)
        return b"Not Found"

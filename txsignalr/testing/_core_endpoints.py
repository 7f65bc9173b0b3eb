"""
The ASP.NET Core HTTP endpoints of the test server, with the status codes and texts of
``HttpConnectionDispatcher``:

* ``POST {core_path}/{hub}/negotiate[?negotiateVersion=1]``: v1 or v0 answer;
* ``{core_path}/{hub}?id=…``: WebSocket upgrade, SSE (``GET`` with
  ``Accept: text/event-stream``), long polling (other ``GET``), ``POST`` (send) and
  ``DELETE`` (stop long polling);
* ``POST /redirect/{hub}/negotiate``: an Azure SignalR Service style redirect to
  ``/client/?hub={hub}``, whose requests need the bearer token the redirect issued.

Also :class:`ServerRoot`, the root resource that routes to the classic or the Core
endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from txsignalr._protocol import dumps
from txsignalr.testing._core_registry import CLASSIC_NAMES, CoreConnection, CoreRegistry, new_id
from txsignalr.testing._core_transports import CoreHttpTransports, CoreWebSockets
from txsignalr.testing._core_wire import CORE_TRANSPORTS, negotiate_body, redirect_body
from txsignalr.testing._events import EventLog
from txsignalr.testing._http import TEXT, RequestInfo, respond
from txsignalr.testing._hubs import Hub

__all__ = [
    "CLASSIC_REDIRECT_PATH",
    "REDIRECT_PATH",
    "SERVICE_PATH",
    "CoreEndpoints",
    "ServerRoot",
]

_log = Logger(namespace="txsignalr.testing")

#: Where :meth:`SignalRServer.redirect_url` points (``/redirect/{hub}``).
REDIRECT_PATH = "/redirect"
#: Where a classic negotiate answers with an Azure SignalR style redirect.
CLASSIC_REDIRECT_PATH = "/classic-redirect"
#: The Azure-like service URL a redirect sends clients to (``/client/?hub={hub}``).
SERVICE_PATH = "/client"

Refusal = tuple[int, bytes, "bytes | None"]
TokenCheck = Callable[[str], bool]


class CoreEndpointSettings(Protocol):
    """The server options the Core endpoints read (live)."""

    core_path: str
    transports: tuple[str, ...]
    core_negotiate_version: int
    core_stateful_reconnect: bool
    core_access_token: str | TokenCheck | None
    core_max_message_size: int
    cors: bool


class Refusals(Protocol):
    negotiate_refusal: Refusal | None
    transport_refusals: dict[str, Refusal]


def bearer_token(info: RequestInfo) -> str | None:
    """The access token of a request: ``Authorization: Bearer …``, else ``access_token=``."""
    header = info.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return info.arg("access_token")


class CoreEndpoints:
    """ASP.NET Core HTTP dispatch for every hub."""

    def __init__(
        self,
        settings: CoreEndpointSettings,
        hubs: dict[str, Hub],
        registry: CoreRegistry,
        events: EventLog,
        websockets: CoreWebSockets,
        http: CoreHttpTransports,
        refusals: Refusals,
        base_url: Callable[[], str],
    ) -> None:
        self._settings = settings
        self._hubs = hubs
        self._registry = registry
        self._events = events
        self._websockets = websockets
        self._http = http
        self._refusals = refusals
        self._base_url = base_url
        #: access tokens issued by redirects (accepted under ``/client/``).
        self.redirect_tokens: set[str] = set()

    def _event(self, kind: str, **info: Any) -> None:
        info["family"] = "core"
        self._events.record(kind, info)

    # -- routing ----------------------------------------------------------------------

    def route(self, path: str, info: RequestInfo) -> tuple[str, Hub, bool] | None:
        """
        :returns: ``(area, hub, is_negotiate)`` for a Core path (area ``"hub"``,
            ``"redirect"`` or ``"service"``), or ``None``.
        """
        lowered = path.lower().rstrip("/")
        negotiate = lowered.endswith("/negotiate")
        if negotiate:
            lowered = lowered[: -len("/negotiate")]
        for area, base in (
            ("hub", self._settings.core_path.lower()),
            ("redirect", REDIRECT_PATH),
        ):
            if lowered.startswith(base + "/"):
                hub = self._hubs.get(lowered[len(base) + 1 :])
                if hub is not None:
                    return area, hub, negotiate
                return None
        if lowered == SERVICE_PATH:
            hub = self._hubs.get((info.arg("hub") or "").lower())
            if hub is not None:
                return "service", hub, negotiate
        return None

    def render(self, request: Request, area: str, hub: Hub, negotiate: bool) -> bytes | int:
        info = RequestInfo.from_request(request)
        method = request.method.decode("latin-1").upper()
        origin = info.headers.get("origin")
        if self._settings.cors and origin:
            request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
            request.setHeader(b"access-control-allow-credentials", b"true")
            if method == "OPTIONS":
                request.setHeader(b"access-control-allow-methods", b"GET, POST, DELETE")
                wanted = info.headers.get("access-control-request-headers")
                if wanted:
                    request.setHeader(b"access-control-allow-headers", wanted.encode("latin-1"))
                return respond(request, 204, b"", None)
        token = bearer_token(info)
        if area == "service":
            authorized = token is not None and token in self.redirect_tokens
        else:
            authorized = self._check_token(token)
        if not authorized:
            self._event("unauthorized", path=info.path, hub=hub.name, negotiate=negotiate)
            request.setHeader(b"www-authenticate", b"Bearer")
            return respond(request, 401, b"", None)
        if negotiate:
            if method != "POST":
                return respond(request, 405, b"", None)
            if area == "redirect":
                return self._redirect(request, info, hub)
            return self._negotiate(request, info, hub, token if area == "service" else None)
        if area == "redirect":
            return respond(request, 404, b"", None)
        return self._connection_request(request, info, hub, method, token, area)

    def _check_token(self, token: str | None) -> bool:
        required = self._settings.core_access_token
        if required is None:
            return True
        if token is None:
            return False
        if callable(required):
            try:
                return bool(required(token))
            except Exception:
                _log.failure("the access token check raised")
                return False
        return token == required

    # -- negotiate --------------------------------------------------------------------

    def _served(self) -> list[str]:
        return [
            name for name in CORE_TRANSPORTS if CLASSIC_NAMES[name] in self._settings.transports
        ]

    def _negotiate(
        self, request: Request, info: RequestInfo, hub: Hub, required_token: str | None
    ) -> bytes:
        self._event(
            "negotiate", hub=hub.name, query=info.query, headers=info.headers, cookies=info.cookies
        )
        refusal = self._refusals.negotiate_refusal
        if refusal is not None:
            status, body, content_type = refusal
            return respond(request, status, body, content_type)
        requested = info.arg("negotiateVersion")
        version = 0
        if requested is not None:
            try:
                version = int(requested)
            except ValueError:
                error = {"error": "The client requested a non-integer protocol version."}
                return respond(request, 200, dumps(error), b"application/json")
            if version < 0:
                error = {
                    "error": f"The client requested version '{version}', but the server "
                    "does not support this version."
                }
                return respond(request, 200, dumps(error), b"application/json")
        v1 = version >= 1 and self._settings.core_negotiate_version >= 1
        # .NET: only when the server allows it and the client asks (bool.TryParse)
        asked = (info.arg("useStatefulReconnect") or "").strip().lower() == "true"
        stateful = asked and self._settings.core_stateful_reconnect
        conn = self._registry.create(hub, v1, stateful)
        conn.required_token = required_token
        body = negotiate_body(conn.id, conn.token if v1 else None, self._served(), stateful)
        return respond(request, 200, body, b"application/json")

    def _redirect(self, request: Request, info: RequestInfo, hub: Hub) -> bytes:
        refusal = self._refusals.negotiate_refusal
        if refusal is not None:
            self._event("redirect", hub=hub.name, url=None, access_token=None, query=info.query)
            status, body, content_type = refusal
            return respond(request, status, body, content_type)
        token = new_id()
        self.redirect_tokens.add(token)
        url = f"{self._base_url()}{SERVICE_PATH}/?hub={hub.name.lower()}"
        self._event("redirect", hub=hub.name, url=url, access_token=token, query=info.query)
        return respond(request, 200, redirect_body(url, token), b"application/json")

    # -- connection requests ----------------------------------------------------------

    def _connection_request(
        self,
        request: Request,
        info: RequestInfo,
        hub: Hub,
        method: str,
        token: str | None,
        area: str,
    ) -> bytes | int:
        connection_token = info.arg("id")
        if connection_token is None:
            if method == "GET" and "websocket" in info.headers.get("upgrade", "").lower():
                # skipNegotiation: the connection is made on the fly (GetOrCreateConnection).
                fresh = self._registry.create(hub, v1=True)
                fresh.required_token = token if area == "service" else None
                self._event(
                    "negotiate",
                    hub=hub.name,
                    query=info.query,
                    headers=info.headers,
                    cookies=info.cookies,
                    skipped=True,
                )
                return self._receive(request, info, fresh)
            return respond(request, 400, b"Connection ID required", TEXT)
        conn = self._registry.by_token.get(connection_token)
        if conn is None or conn.hub is not hub:
            return respond(request, 404, b"No Connection with that ID", TEXT)
        if conn.required_token is not None and token != conn.required_token:
            self._event("unauthorized", path=info.path, hub=hub.name, negotiate=False)
            request.setHeader(b"www-authenticate", b"Bearer")
            return respond(request, 401, b"", None)
        if method == "GET":
            return self._receive(request, info, conn)
        if method == "POST":
            return self._send(request, conn)
        if method == "DELETE":
            if conn.transport != "LongPolling":
                return respond(
                    request,
                    400,
                    b"Cannot terminate this connection using the DELETE endpoint.",
                    TEXT,
                )
            self._event("delete", connection_id=conn.id, hub=hub.name, transport=conn.transport)
            self._http.delete(conn)
            return respond(request, 202, b"", TEXT)
        return respond(request, 405, b"", None)

    def _receive(self, request: Request, info: RequestInfo, conn: CoreConnection) -> bytes | int:
        if "websocket" in info.headers.get("upgrade", "").lower():
            transport = "WebSockets"
        elif "text/event-stream" in info.headers.get("accept", "").lower():
            transport = "ServerSentEvents"
        else:
            transport = "LongPolling"
        if CLASSIC_NAMES[transport] not in self._settings.transports:
            return respond(
                request,
                404,
                f"{transport} transport not supported by this end point type".encode(),
                TEXT,
            )
        if conn.transport is not None and conn.transport != transport:
            return respond(request, 400, b"Cannot change transports mid-connection", TEXT)
        first = conn.transport is None
        # stateful reconnect: a new WebSocket replaces the connection's old one
        resume = not first and conn.stateful is not None and not conn.closed
        refusal = self._refusals.transport_refusals.get(CLASSIC_NAMES[transport])
        if refusal is not None and (first or resume):
            self._event("refused", connection_id=conn.id, transport=transport, resume=resume)
            status, body, content_type = refusal
            return respond(request, status, body, content_type)
        if transport == "LongPolling":
            return self._http.poll(request, conn)
        if (not first and not resume) or conn.closed:
            return respond(request, 409, b"", None)
        self._event(
            "transport",
            connection_id=conn.id,
            transport=transport,
            query=info.query,
            headers=info.headers,
            cookies=info.cookies,
            resume=resume,
        )
        if transport == "WebSockets":
            return self._websockets.render(request, conn, resume)
        return self._http.sse(request, conn)

    def _send(self, request: Request, conn: CoreConnection) -> bytes:
        if conn.transport == "WebSockets":
            return respond(
                request, 405, b"POST requests are not allowed for WebSocket connections.", TEXT
            )
        body = b""
        if request.content is not None:
            request.content.seek(0)
            limit = 4 * self._settings.core_max_message_size + 64 * 1024
            body = request.content.read(limit + 1)
            if len(body) > limit:
                return respond(request, 413, b"", None)
        conn.receive(body)
        return respond(request, 200, b"", TEXT)


class ServerRoot(Resource):
    """The root of the server's own Site: the classic path, the Core paths, else 404."""

    isLeaf = True

    def __init__(
        self,
        classic_path: Callable[[], str],
        classic: Callable[[Request], bytes | int],
        core: CoreEndpoints,
        classic_redirect: Callable[[Request], bytes] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._classic_path = classic_path
        self._classic = classic
        self._core = core
        self._classic_redirect = classic_redirect

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode("utf-8", "replace")
        lowered = path.lower()
        base = self._classic_path().lower()
        if lowered == base or lowered.startswith(base + "/"):
            return self._classic(request)
        if self._classic_redirect is not None and lowered == CLASSIC_REDIRECT_PATH + "/negotiate":
            return self._classic_redirect(request)
        info = RequestInfo.from_request(request)
        route = self._core.route(path, info)
        if route is not None:
            return self._core.render(request, *route)
        request.setResponseCode(404)
        request.setHeader(b"content-type", TEXT)
        return b"Not Found"

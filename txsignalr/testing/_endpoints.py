"""
The classic HTTP endpoints of the test server: dispatch on the path suffix and the
``transport`` query value like ``PersistentConnection.ProcessRequest`` (negotiate, ping,
then transport, token and hubs checked; start, abort, send, and receive requests handed
to the server transports), with the real server's status codes and texts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from txsignalr.testing._events import EventLog
from txsignalr.testing._http import (
    JSON,
    NOSNIFF,
    TEXT,
    RequestInfo,
    empty_500,
    respond,
)
from txsignalr.testing._hubs import Hub, run_hooks
from txsignalr.testing._registry import ConnectionRegistry, ReceiveRequest
from txsignalr.testing._transport_http import HttpTransports
from txsignalr.testing._transport_ws import WebSocketTransport
from txsignalr.testing._wire import (
    encode_text,
    negotiate_body,
    parse_connection_data,
    resolve_protocol,
)

__all__ = ["ClassicEndpoints", "EndpointSettings"]

_log = Logger(namespace="txsignalr.testing")

#: lower-cased name -> the spelling used in events and frames.
TRANSPORT_NAMES = {
    "websockets": "webSockets",
    "serversentevents": "serverSentEvents",
    "longpolling": "longPolling",
    "foreverframe": "foreverFrame",
}
#: the transports the test server can serve (forever frame is only accepted on
#: ``/start``, ``/abort`` and ``/send``, as a registered transport of the real server).
SERVED_TRANSPORTS = ("webSockets", "serverSentEvents", "longPolling")

Refusal = tuple[int, bytes, "bytes | None"]


class EndpointSettings(Protocol):
    """The server options the endpoints read (live: tests may change them)."""

    keepalive: float | None
    disconnect_timeout: float
    transport_connect_timeout: float
    connection_timeout: float
    negotiate_cookies: dict[str, str]
    cors: bool
    transports: tuple[str, ...]
    long_poll_delay: float


class ClassicEndpoints:
    """
    Classic SignalR 2.x HTTP dispatch.

    :param settings: the live server options.
    :param hubs: lower-cased hub name -> hub.
    :param registry: the connection registry.
    :param events: the event log.
    :param websockets: the WebSockets server transport.
    :param http_transports: the SSE and long polling server transports.
    """

    def __init__(
        self,
        settings: EndpointSettings,
        hubs: dict[str, Hub],
        registry: ConnectionRegistry,
        events: EventLog,
        websockets: WebSocketTransport,
        http_transports: HttpTransports,
    ) -> None:
        self._settings = settings
        self._hubs = hubs
        self._registry = registry
        self._events = events
        self._websockets = websockets
        self._http_transports = http_transports
        #: ``(status, body, content type)`` answered to every negotiate, or ``None``.
        self.negotiate_refusal: Refusal | None = None
        #: transport name -> the answer to its connect and reconnect requests.
        self.transport_refusals: dict[str, Refusal] = {}

    def render(self, request: Request) -> bytes | int:
        """Answer one request below the connection URL."""
        request.setHeader(NOSNIFF, b"nosniff")
        info = RequestInfo.from_request(request)
        origin = info.headers.get("origin")
        if self._settings.cors and origin:
            request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
            request.setHeader(b"access-control-allow-credentials", b"true")
        path = info.path.lower()
        if path.endswith("/negotiate"):
            return self._negotiate(request, info)
        if path.endswith("/ping"):
            self._events.record("ping", {})
            return respond(request, 200, b'{ "Response": "pong" }', JSON)
        transport = TRANSPORT_NAMES.get((info.arg("transport") or "").lower())
        if transport is None or (
            transport not in self._settings.transports and transport != "foreverFrame"
        ):
            return respond(request, 400, b"Protocol error: Unknown transport.", None)
        token = info.arg("connectionToken")
        if token is None:
            return respond(request, 400, b"Protocol error: Missing connection token.", None)
        connection_id = self._registry.protector.connection_id(token)
        if connection_id is None:
            return respond(request, 400, b"The ConnectionId is in the incorrect format.", None)
        try:
            hubs = self.resolve_hubs(info.arg("connectionData"))
        except (KeyError, ValueError) as e:
            _log.info("rejecting request: {error}", error=str(e))
            return empty_500(request)
        if path.endswith("/start"):
            return self._start(request, info, connection_id, hubs, transport)
        if path.endswith("/abort"):
            return self._abort(request, connection_id, transport)
        if transport == "webSockets":
            if "websocket" not in info.headers.get("upgrade", "").lower():
                return respond(request, 400, b"Not a valid web socket request.", None)
        elif path.endswith("/send"):
            return self._send(request, info, connection_id, transport)
        elif transport == "foreverFrame":
            return respond(
                request,
                400,
                b"Protocol error: the foreverFrame transport is not served by txsignalr.testing.",
                None,
            )
        receive = self._receive_request(info, connection_id, hubs, path, transport)
        refusal = self.transport_refusals.get(transport)
        if refusal is not None and receive.kind != "poll":
            self._events.record("refused", {"connection_id": connection_id, "transport": transport})
            status, body, content_type = refusal
            return respond(request, status, body, content_type)
        if transport == "webSockets":
            return self._websockets.render(request, receive)
        return self._http_transports.serve(request, receive)

    def _receive_request(
        self,
        info: RequestInfo,
        connection_id: str,
        hubs: tuple[Hub, ...],
        path: str,
        transport: str,
    ) -> ReceiveRequest:
        _version, protocol = resolve_protocol(info.arg("clientProtocol"))
        if path.endswith("/connect"):
            kind = "connect"
        elif transport == "longPolling" and not path.endswith("/reconnect"):
            kind = "poll"
        else:
            kind = "reconnect"
        return ReceiveRequest(
            connection_id=connection_id,
            kind=kind,
            hubs=hubs,
            protocol=protocol,
            message_id=info.query_or_form("messageId"),
            groups_token=info.query_or_form("groupsToken"),
            info=info,
            transport=transport,
        )

    def resolve_hubs(self, connection_data: str | None) -> tuple[Hub, ...]:
        """
        :raises KeyError: for an unknown hub name.
        :raises ValueError: for malformed ``connectionData`` or duplicate names.
        """
        names = parse_connection_data(connection_data)
        hubs: list[Hub] = []
        for name in names:
            hub = self._hubs.get(name.lower())
            if hub is None:
                raise KeyError(f"'{name}' Hub could not be resolved.")
            if hub in hubs:
                raise ValueError("Duplicate Hub names found.")
            hubs.append(hub)
        return tuple(hubs)

    def _negotiate(self, request: Request, info: RequestInfo) -> bytes:
        self._events.record(
            "negotiate", {"query": info.query, "headers": info.headers, "cookies": info.cookies}
        )
        if self.negotiate_refusal is not None:
            status, body, content_type = self.negotiate_refusal
            return respond(request, status, body, content_type)
        try:
            self.resolve_hubs(info.arg("connectionData"))
        except (KeyError, ValueError) as e:
            _log.info("negotiate refused: {error}", error=str(e))
            return empty_500(request)
        version, _ = resolve_protocol(info.arg("clientProtocol"))
        connection_id = str(uuid.uuid4())
        suffix_start = len(info.path) - len("/negotiate")
        for name, value in self._settings.negotiate_cookies.items():
            request.addCookie(name.encode("utf-8"), value.encode("utf-8"), path=b"/")
        keepalive = self._settings.keepalive
        body = negotiate_body(
            url=info.path[:suffix_start],
            connection_token=self._registry.protector.connection_token(connection_id),
            connection_id=connection_id,
            keepalive_timeout=None if keepalive is None else 2 * keepalive,
            disconnect_timeout=self._settings.disconnect_timeout,
            connection_timeout=self._settings.connection_timeout,
            try_websockets="webSockets" in self._settings.transports,
            protocol_version=version,
            transport_connect_timeout=self._settings.transport_connect_timeout,
            long_poll_delay=self._settings.long_poll_delay,
        )
        return respond(request, 200, body, JSON)

    def _start(
        self,
        request: Request,
        info: RequestInfo,
        connection_id: str,
        hubs: tuple[Hub, ...],
        transport: str,
    ) -> int:
        self._events.record(
            "start",
            {
                "connection_id": connection_id,
                "transport": transport,
                "query": info.query,
                "headers": info.headers,
                "cookies": info.cookies,
            },
        )
        answer = answer_later(request)
        d = run_hooks(hubs, lambda h: h.on_connected(connection_id))
        d.addCallback(lambda _: answer(200, b'{ "Response": "started" }', JSON))
        return NOT_DONE_YET

    def _abort(self, request: Request, connection_id: str, transport: str) -> bytes:
        self._events.record("abort", {"connection_id": connection_id, "transport": transport})
        self._registry.abort(connection_id)
        return respond(request, 200, b"", TEXT)

    def _send(
        self, request: Request, info: RequestInfo, connection_id: str, transport: str
    ) -> bytes | int:
        """
        ``/send`` (SSE, long polling): the hub result is the response body, after what
        the method published (progress, caller calls) went out on the receive channel.
        Malformed input or an unknown hub is a bare 500, as on the real server.
        """
        data = info.form_arg("data")
        if data is None:
            data = info.arg("data")
        if data is None:
            self._events.record(
                "received",
                {"connection_id": connection_id, "payload": None, "transport": transport},
            )
            return empty_500(request)
        d = self._registry.receive(connection_id, data, transport)
        if d is None:
            return empty_500(request)
        answer = answer_later(request)
        registry = self._registry

        def after_stall(frame: str) -> defer.Deferred[str]:
            return registry.when_unstalled().addCallback(lambda _: frame)

        def deliver(frame: str) -> None:
            registry.flush_connection(connection_id)
            answer(200, encode_text(frame), JSON)

        d.addCallback(after_stall)
        d.addCallback(deliver)
        d.addErrback(
            lambda f: _log.failure(
                "could not answer /send of connection {connection_id}",
                failure=f,
                connection_id=connection_id,
            )
        )
        return NOT_DONE_YET


def answer_later(request: Request) -> Callable[[int, bytes, bytes | None], None]:
    """:returns: ``answer(status, body, content_type)``, a no-op once the client left."""
    finished: list[bool] = []
    request.notifyFinish().addBoth(lambda _: finished.append(True))

    def answer(status: int, body: bytes, content_type: bytes | None) -> None:
        if finished:
            return
        request.setResponseCode(status)
        if content_type is None:
            request.defaultContentType = None
        else:
            request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()

    return answer

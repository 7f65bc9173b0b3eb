"""
Raw clients of the three classic transports for the test server's own tests: HTTP
exchanges through ``twisted.web.client.Agent`` (bytes as sent, streaming bodies, a way
to walk away) and one small client per transport behind one interface, so that a
scenario can be run over webSockets, serverSentEvents and longPolling alike.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any
from urllib.parse import quote, urlencode

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from helpers import running_reactor, within
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from txsignalr.testing import SignalRServer

TRANSPORTS = ("webSockets", "serverSentEvents", "longPolling")


def _reactor() -> Any:
    return running_reactor()


FORM = "application/x-www-form-urlencoded; charset=UTF-8"


def cd(*hubs: str) -> str:
    """``connectionData`` for ``hubs``, percent-encoded."""
    return quote(json.dumps([{"name": h} for h in hubs]), safe="")


_DONE = Failure(ResponseDone())


class _Body(Protocol):
    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def dataReceived(self, data: bytes) -> None:
        self._exchange._data(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._exchange._ended(reason)


class Exchange:
    """
    One HTTP request: ``response`` fires with the headers, ``body`` with every body
    byte once the response ends (it fails when the connection is lost first);
    ``on_data`` sees the body as it streams.
    """

    def __init__(self, method: str, url: str, body: bytes | None, headers: dict[str, str]):
        reactor = _reactor()
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        self.raw = bytearray()
        self.on_data: Any = None
        self.response: Any = None
        self.body: defer.Deferred[bytes] = defer.Deferred()
        self.headers_received: defer.Deferred[Any] = defer.Deferred()
        self._proto: _Body | None = None
        self._request = agent.request(
            method.encode(),
            url.encode(),
            Headers({k: [v] for k, v in headers.items()}),
            producer,
        )
        self._request.addCallbacks(self._got, self._failed)
        # Nobody may be waiting for the headers: a failure shows up on ``body`` too.
        self.headers_received.addErrback(lambda _: None)

    def _got(self, response: Any) -> None:
        self.response = response
        self._proto = _Body(self)
        response.deliverBody(self._proto)
        self.headers_received.callback(response)

    def _failed(self, failure: Failure) -> None:
        self.headers_received.errback(failure)
        self.body.errback(failure)

    def _data(self, data: bytes) -> None:
        self.raw += data
        if self.on_data is not None:
            self.on_data(data)

    def _ended(self, reason: Failure) -> None:
        if self.body.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.body.callback(bytes(self.raw))
        else:
            self.body.errback(reason)

    @property
    def code(self) -> int:
        return int(self.response.code)

    def header(self, name: str) -> list[str] | None:
        values = self.response.headers.getRawHeaders(name)
        return None if values is None else [str(v) for v in values]

    def drop(self) -> None:
        """Walk away: close the TCP connection, whatever the state of the request."""
        self.body.addErrback(lambda _: None)
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.stopProducing()
        elif not self._request.called:
            self._request.cancel()


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Exchange:
    """Start an HTTP request (form content type when there is a body)."""
    hdrs = dict(headers or {})
    if body is not None:
        hdrs.setdefault("Content-Type", FORM)
    return Exchange(method, url, body, hdrs)


async def fetch(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[Exchange, bytes]:
    """Make a request and read the whole body (bounded)."""
    ex = request(method, url, body, headers)
    data = await within(ex.body, 10)
    return ex, data


def query(token: str, transport: str, *hubs: str) -> str:
    return (
        f"transport={transport}&clientProtocol=1.5&connectionToken={quote(token, safe='')}"
        f"&connectionData={cd(*hubs)}"
    )


async def negotiate(server: SignalRServer, *hubs: str) -> dict[str, Any]:
    _ex, body = await fetch(
        "GET", f"{server.url}/negotiate?clientProtocol=1.5&connectionData={cd(*hubs)}"
    )
    result: dict[str, Any] = json.loads(body)
    return result


class SseEvents:
    """Splits an SSE body into ``data:`` payloads, pushed on ``events``."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.events: defer.DeferredQueue[str] = defer.DeferredQueue()
        self._buffer = b""
        exchange.on_data = self._feed

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            text = event.decode("utf-8")
            assert text.startswith("data: "), text
            self.events.put(text[len("data: ") :])


class _WsProtocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.sink(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed: {reason}"))
        if not self.factory.closed.called:
            self.factory.closed.callback(wasClean)


class TransportClient:
    """
    A minimal classic client on one transport: connect, /start, invoke, reconnect with
    its cursor and groups token, walk away.  Frames (persistent responses and ``{}``)
    land on ``frames``; hub results are returned by :meth:`invoke`.
    """

    def __init__(self, server: SignalRServer, transport: str, *hubs: str) -> None:
        self.server = server
        self.transport = transport
        self.hubs = hubs
        self.frames: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.cursor: str | None = None
        self.groups_token: str | None = None
        self.neg: dict[str, Any] = {}
        self.channel_closed: defer.Deferred[Any] = defer.Deferred()
        self._results: dict[str, defer.Deferred[Any]] = {}
        self._ws: Any = None
        self._sse: Exchange | None = None
        self._poll: Exchange | None = None
        self._polling = False

    # -- URLs
    def url(self, command: str) -> str:
        return f"{self.server.url}/{command}?" + query(
            self.neg["ConnectionToken"], self.transport, *self.hubs
        )

    def _resume_query(self) -> str:
        extra = {}
        if self.cursor is not None:
            extra["messageId"] = self.cursor
        if self.groups_token is not None:
            extra["groupsToken"] = self.groups_token
        return urlencode(extra)

    # -- frames
    def _frame(self, value: Any) -> None:
        if isinstance(value, dict) and "C" in value:
            self.cursor = value["C"]
            self.groups_token = value.get("G", self.groups_token)
        if isinstance(value, dict) and "I" in value and "C" not in value and "M" not in value:
            d = self._results.pop(value["I"], None)
            if d is not None:
                d.callback(value)
                return
        self.frames.put(value)

    async def frame(self, keepalives: bool = False, timeout: float = 5.0) -> Any:
        while True:
            value = await within(self.frames.get(), timeout)
            if value == {} and not keepalives:
                continue
            return value

    async def messages_until(self, count: int, timeout: float = 5.0) -> list[Any]:
        """Messages (inside ``M``) until ``count`` of them arrived."""
        out: list[Any] = []
        while len(out) < count:
            out += (await self.frame(timeout=timeout)).get("M", [])
        return out

    # -- lifecycle
    async def connect(self, start: bool = True) -> Any:
        """Negotiate, open the receive channel, read the init frame, /start."""
        self.neg = await negotiate(self.server, *self.hubs)
        await self._open("connect")
        init = await self.frame()
        assert init.get("S") == 1, init
        if start:
            _ex, body = await fetch("GET", self.url("start"))
            assert body == b'{ "Response": "started" }', body
        await self.held()
        return init

    async def held(self) -> None:
        """Long polling: wait until the current poll is held (its headers arrived)."""
        if self._poll is not None:
            await within(self._poll.headers_received, 5)

    async def reconnect(self) -> None:
        await self._open("reconnect")

    async def _open(self, command: str) -> None:
        url = self.url(command)
        if command == "reconnect" and self.transport != "longPolling":
            url += "&" + self._resume_query()
        self.channel_closed = defer.Deferred()
        if self.transport == "webSockets":
            factory = WebSocketClientFactory(url.replace("http://", "ws://"))
            factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
            factory.protocol = _WsProtocol
            factory.sink = self._frame
            factory.opened = defer.Deferred()
            factory.closed = self.channel_closed
            connectWS(factory)
            self._ws = await within(factory.opened, 5)
        elif self.transport == "serverSentEvents":
            ex = request("GET", url, headers={"Accept": "text/event-stream"})
            self._sse = ex
            events = SseEvents(ex)
            ex.body.addBoth(self._sse_ended)

            def parsed(text: str) -> None:
                if text != "initialized":
                    self._frame(json.loads(text))
                events.events.get().addCallback(parsed)

            events.events.get().addCallback(parsed)
            await within(ex.headers_received, 5)
        else:
            body = b"" if command == "connect" else self._resume_query().encode()
            self._start_poll("POST", url, body)

    def _sse_ended(self, result: Any) -> None:
        if not self.channel_closed.called:
            self.channel_closed.callback(True)

    def _start_poll(self, method: str, url: str, body: bytes) -> None:
        ex = request(method, url, body)
        self._poll = ex
        self._polling = True
        ex.body.addCallbacks(self._polled, self._poll_failed, callbackArgs=(ex,))

    def _polled(self, body: bytes, ex: Exchange) -> None:
        text = body.decode("utf-8").lstrip(" ")
        self._frame(json.loads(text))
        if self._polling and self._poll is ex:
            self._start_poll("POST", self.url("poll"), self._resume_query().encode())
        elif not self.channel_closed.called:
            self.channel_closed.callback(True)

    def _poll_failed(self, failure: Failure) -> None:
        self._polling = False
        if not self.channel_closed.called:
            self.channel_closed.callback(True)

    def drop(self) -> None:
        """The client goes away without /abort."""
        if self._ws is not None:
            self._ws.transport.abortConnection()
        if self._sse is not None:
            self._sse.drop()
        if self._poll is not None:
            self._polling = False
            self._poll.drop()

    async def abort(self) -> None:
        """Stop polling, then ``/abort`` (as the official clients stop)."""
        self._polling = False
        await fetch("POST", self.url("abort"), b"")

    # -- invocations
    async def invoke(self, hub: str, method: str, args: list[Any], invocation_id: int) -> Any:
        message = {"H": hub, "M": method, "A": args, "I": invocation_id}
        if self.transport == "webSockets":
            d: defer.Deferred[Any] = defer.Deferred()
            self._results[str(invocation_id)] = d
            self._ws.sendMessage(json.dumps(message).encode("utf-8"))
            return await within(d, 5)
        ex, body = await fetch(
            "POST", self.url("send"), urlencode({"data": json.dumps(message)}).encode()
        )
        assert ex.code == 200, (ex.code, body)
        assert ex.header("content-type") == ["application/json; charset=UTF-8"]
        return json.loads(body)


# -- ASP.NET Core SignalR raw clients -------------------------------------------------

CORE_TRANSPORTS = ("WebSockets", "ServerSentEvents", "LongPolling")
RS = b"\x1e"
HANDSHAKE = b'{"protocol":"json","version":1}\x1e'
MSGPACK_HANDSHAKE = b'{"protocol":"messagepack","version":1}\x1e'


def msgpack_frame(message: list[Any]) -> bytes:
    """A MessagePack hub message with its varint length prefix."""
    from txsignalr._core_msgpack import frame, pack

    return frame(pack(message))


async def core_negotiate(
    url: str, version: int | None = 1, headers: dict[str, str] | None = None
) -> tuple[Exchange, Any]:
    """``POST {url}/negotiate[?negotiateVersion=N]``: the exchange and the parsed body."""
    base, _, q = url.partition("?")
    params = [p for p in q.split("&") if p]
    if version is not None:
        params.append(f"negotiateVersion={version}")
    target = base.rstrip("/") + "/negotiate" + ("?" + "&".join(params) if params else "")
    ex, body = await fetch("POST", target, None, headers)
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body
    return ex, parsed


class _CoreWs(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.sink(payload, isBinary)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.clean = wasClean
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed: {code} {reason}"))
        if not self.factory.closed.called:
            self.factory.closed.callback(code)


class CoreClient:
    """
    A raw ASP.NET Core SignalR client on one transport.  What the server sends lands
    on ``chunks`` (one per WebSocket message / SSE event / poll body; for WebSockets
    ``binary`` says which were binary messages) and, split, on ``records``: parsed
    JSON (the handshake answer included), or with ``protocol="messagepack"`` the JSON
    handshake answer and then each message as the decoded MessagePack array.
    """

    def __init__(
        self,
        url: str,
        transport: str,
        headers: dict[str, str] | None = None,
        version: int | None = 1,
        protocol: str = "json",
        stateful: bool = False,
    ) -> None:
        self.base = url
        self.transport = transport
        self.headers = dict(headers or {})
        self.version = version
        self.protocol = protocol
        #: ask for stateful reconnect (negotiate query) and send a version 2 handshake
        self.stateful = stateful
        self.binary: list[bool] = []
        self._answered = False
        self._splitter: Any = None
        self.neg: Any = None
        self.token = ""
        self.chunks: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        self.records: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.raw = bytearray()
        self.closed: defer.Deferred[Any] = defer.Deferred()
        self.close_code: Any = None
        self.poll_statuses: list[int] = []
        self._buffer = b""
        self._ws: Any = None
        self._sse: Exchange | None = None
        self._polling = False
        self._poll: Exchange | None = None

    @property
    def url(self) -> str:
        sep = "&" if "?" in self.base else "?"
        return f"{self.base}{sep}id={self.token}"

    def _chunk(self, data: bytes) -> None:
        self.chunks.put(data)
        if self.protocol == "messagepack":
            self._msgpack_chunk(data)
            return
        self._buffer += data
        *done, self._buffer = self._buffer.split(RS)
        for record in done:
            self.records.put(json.loads(record))

    def _msgpack_chunk(self, data: bytes) -> None:
        from txsignalr._core_msgpack import VarIntSplitter, unpack

        if not self._answered:
            self._buffer += data
            end = self._buffer.find(RS)
            if end < 0:
                return
            answer, data = self._buffer[:end], self._buffer[end + 1 :]
            self._buffer = b""
            self._answered = True
            self._splitter = VarIntSplitter(2**31 - 1)
            self.records.put(json.loads(answer))
        for body in self._splitter.feed(data):
            self.records.put(unpack(body))

    def _ws_message(self, payload: bytes, binary: bool) -> None:
        self.binary.append(binary)
        self._chunk(payload)

    async def negotiate(self) -> Any:
        url = self.base
        if self.stateful:
            url += ("&" if "?" in url else "?") + "useStatefulReconnect=true"
        ex, self.neg = await core_negotiate(url, self.version, self.headers)
        assert ex.code == 200, (ex.code, self.neg)
        self.token = self.neg.get("connectionToken") or self.neg["connectionId"]
        return self.neg

    async def open(self) -> None:
        """Open the transport (after :meth:`negotiate`)."""
        if self.transport == "WebSockets":
            factory = WebSocketClientFactory(
                self.url.replace("http://", "ws://"), headers=self.headers or None
            )
            factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
            factory.protocol = _CoreWs
            factory.sink = self._ws_message
            factory.opened = defer.Deferred()
            factory.closed = self.closed
            self.closed.addCallback(self._set_code)
            connectWS(factory)
            self._ws = await within(factory.opened, 5)
        elif self.transport == "ServerSentEvents":
            ex = request("GET", self.url, headers={"Accept": "text/event-stream", **self.headers})
            self._sse = ex
            buffer = [b""]

            def feed(data: bytes) -> None:
                buffer[0] += data
                while b"\r\n\r\n" in buffer[0]:
                    event, buffer[0] = buffer[0].split(b"\r\n\r\n", 1)
                    lines = [ln for ln in event.split(b"\r\n") if ln != b":" and ln != b""]
                    payload = b"\n".join(ln[len(b"data: ") :] for ln in lines)
                    if payload:
                        self._chunk(payload)
                # the opening comment
                if buffer[0] == b":\r\n":
                    buffer[0] = b""

            ex.on_data = feed

            def ended(result: Any) -> None:
                if not self.closed.called:
                    self.closed.callback("ended" if isinstance(result, bytes) else "lost")

            ex.body.addBoth(ended)
            await within(ex.headers_received, 5)
            assert ex.code == 200, ex.code
        else:
            ex, body = await fetch("GET", self.url + "&_=1", None, self.headers)
            assert (ex.code, body) == (200, b""), (ex.code, body)
            self._polling = True
            self._next_poll()

    async def reopen(self) -> None:
        """
        A new WebSocket to the same ``id=`` (a stateful reconnect: no handshake); what it
        receives goes on to ``chunks`` and ``records``.
        """
        self.closed = defer.Deferred()
        self.close_code = None
        self._buffer = b""
        if self._splitter is not None:
            from txsignalr._core_msgpack import VarIntSplitter

            self._splitter = VarIntSplitter(2**31 - 1)
        await self.open()

    async def open_without_id(self) -> None:
        """A WebSocket to the bare hub URL (``skipNegotiation``)."""
        factory = WebSocketClientFactory(self.base.replace("http://", "ws://"))
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        factory.protocol = _CoreWs
        factory.sink = lambda payload, binary: self._chunk(payload)
        factory.opened = defer.Deferred()
        factory.closed = self.closed
        connectWS(factory)
        self._ws = await within(factory.opened, 5)

    def _set_code(self, code: Any) -> Any:
        self.close_code = code
        return code

    def _next_poll(self) -> None:
        ex = request("GET", self.url + "&_=2", None, self.headers)
        self._poll = ex

        def done(body: bytes) -> None:
            self.poll_statuses.append(ex.code)
            if ex.code == 200:
                if body:
                    self._chunk(body)
                if self._polling:
                    self._next_poll()
                    return
            self._polling = False
            if not self.closed.called:
                self.closed.callback(ex.code)

        def failed(f: Failure) -> None:
            self._polling = False
            if not self.closed.called:
                self.closed.callback("lost")

        ex.body.addCallbacks(done, failed)

    async def connect(self, handshake: bytes | None = None) -> Any:
        """Negotiate, open, send the handshake; :returns: the handshake answer."""
        if handshake is None:
            handshake = MSGPACK_HANDSHAKE if self.protocol == "messagepack" else HANDSHAKE
            if self.stateful:
                handshake = handshake.replace(b'"version":1', b'"version":2')
        await self.negotiate()
        await self.open()
        await self.send(handshake, binary=False)
        return await self.record()

    async def send(self, data: bytes, binary: bool | None = None) -> Exchange | None:
        """
        Send bytes: a WebSocket message (binary for MessagePack unless ``binary`` is
        ``False``, as Microsoft's client sends its handshake as text) or a POST.
        """
        if binary is None:
            binary = self.protocol == "messagepack"
        if self.transport == "WebSockets":
            self._ws.sendMessage(data, isBinary=binary)
            return None
        content_type = "application/octet-stream" if binary else "text/plain;charset=UTF-8"
        ex, body = await fetch(
            "POST", self.url, data, {"Content-Type": content_type, **self.headers}
        )
        assert ex.code == 200, (ex.code, body)
        return ex

    async def send_message(self, *message: Any) -> None:
        """One MessagePack hub message, e.g. ``send_message(6)`` for a Ping."""
        await self.send(msgpack_frame(list(message)))

    async def invoke(
        self,
        target: str,
        *args: Any,
        invocation_id: str | None = None,
        kind: int = 1,
        stream_ids: list[str] | None = None,
    ) -> None:
        if self.protocol == "messagepack":
            # Microsoft's client: 5 elements without stream ids
            packed: list[Any] = [kind, {}, invocation_id, target, list(args)]
            if stream_ids:
                packed.append(stream_ids)
            await self.send_message(*packed)
            return
        message: dict[str, Any] = {"target": target, "arguments": list(args), "type": kind}
        if invocation_id is not None:
            message["invocationId"] = invocation_id
        if stream_ids:
            message["streamIds"] = stream_ids
        await self.send(json.dumps(message).encode() + RS)

    async def record(self, timeout: float = 5.0, pings: bool = False) -> Any:
        while True:
            value = await within(self.records.get(), timeout)
            if value in ({"type": 6}, [6]) and not pings:
                continue
            return value

    async def stop(self) -> None:
        """Stop like the TS client: Close, then close the transport (DELETE on LP)."""
        self._polling = False
        close = b"\x03\x92\x07\xc0" if self.protocol == "messagepack" else b'{"type":7}\x1e'
        if self.transport == "WebSockets":
            await self.send(close)
            self._ws.sendClose()
        elif self.transport == "ServerSentEvents":
            await self.send(close)
            assert self._sse is not None
            self._sse.drop()
        else:
            await fetch("DELETE", self.url, None, self.headers)

    def drop(self) -> None:
        self._polling = False
        if self._ws is not None:
            self._ws.transport.abortConnection()
        if self._sse is not None:
            self._sse.drop()
        if self._poll is not None:
            self._poll.drop()

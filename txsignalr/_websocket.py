"""
The WebSocket transport: an autobahn client protocol that only opens, sends, closes
and hands received frames upward.

autobahn's own timers (auto-ping, opening/closing handshake timeouts, server drop
timeout) are switched off: they run on txaio's global loop rather than the reactor the
connection was given, so tests driving time with ``task.Clock`` could not control them.
The connection applies its own deadlines on the injected clock instead.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS

from txsignalr._http import HttpSession, tcp_endpoint
from txsignalr._protocol import websocket_url
from txsignalr._proxy import TunnelEndpoint
from txsignalr._transport import TransportRequest, TransportSink
from txsignalr.errors import ConnectionClosed, MessageTooLarge

__all__ = ["QuietAutobahnLog", "WebSocketTransport"]


_UPGRADE_FAILED = re.compile(r"upgrade failed \[(\d{3})\]")


class QuietAutobahnLog:
    """
    autobahn's logger for our sockets: warnings and errors go to twisted.logger;
    debug, trace and info are dropped, because autobahn logs the whole opening
    handshake there (the URL with the connection token, Cookie, Authorization).
    """

    _log = Logger(namespace="txsignalr.websocket")

    def _drop(self, *args: object, **kwargs: object) -> None:
        pass

    trace = debug = info = _drop

    def warn(self, fmt: str, **kwargs: object) -> None:
        self._log.warn("autobahn: " + fmt, **kwargs)

    def error(self, fmt: str, **kwargs: object) -> None:
        self._log.error("autobahn: " + fmt, **kwargs)

    critical = error

    def failure(
        self, fmt: str | None = None, failure: Failure | None = None, **kwargs: Any
    ) -> None:
        self._log.failure("autobahn: " + (fmt or "failure"), failure, **kwargs)


#: the options autobahn copies from the factory to each protocol when it connects
_CONFIG_ATTRS: Final[tuple[str, ...]] = tuple(WebSocketClientProtocol.CONFIG_ATTRS)

_OPEN: Final = WebSocketClientProtocol.STATE_OPEN
_CLOSED: Final = WebSocketClientProtocol.STATE_CLOSED

#: A partial frame longer than this is left to autobahn, which collects its payload
#: chunk by chunk instead of joining the buffer again on every read.
_FAST_PARTIAL: Final = 256 * 1024


class _ClientProtocol(WebSocketClientProtocol):
    """
    Forwards autobahn's callbacks to the owning :class:`WebSocketTransport`, and
    receives the common frames itself.

    Once open, a server sends unmasked, unfragmented text or binary frames almost
    always; :meth:`dataReceived` cuts those out of the read and hands their payloads
    straight to the transport's sink.  Anything else (a control frame, a fragment,
    RSV bits, a mask, a reserved opcode, a frame over the size limit, a long partial
    frame, a closing handshake) and everything after it in the read goes through
    autobahn's own processing, frame by frame, until it is back between messages.
    """

    owner: WebSocketTransport | None = None
    log = QuietAutobahnLog()
    _busy = False
    _later: list[bytes] | None = None
    #: autobahn's _connectionMade copies these options from the factory and formats
    #: all of them with pprint for a debug line (about 0.25 ms a connection, though
    #: QuietAutobahnLog drops the line): :meth:`_connectionMade` copies them itself.
    CONFIG_ATTRS: list[str] = []

    def _connectionMade(self) -> None:
        factory = self.factory
        for name in _CONFIG_ATTRS:
            if not hasattr(self, name):
                setattr(self, name, getattr(factory, name))
        super()._connectionMade()  # type: ignore[no-untyped-call]

    def startHandshake(self) -> None:
        # autobahn's own formats the transport details with pprint for a debug line
        # (about 0.15 ms) and goes through a txaio future for onConnecting, which we
        # do not override: send the handshake the factory describes straight away.
        factory = self.factory
        self._actuallyStartHandshake(  # type: ignore[no-untyped-call]
            ConnectingRequest(
                host=factory.host,
                port=factory.port,
                resource=factory.resource,
                headers=factory.headers,
                useragent=factory.useragent,
                origin=factory.origin,
                protocols=factory.protocols,
            )
        )

    def dataReceived(self, data: bytes) -> None:
        if self.state != _OPEN or self.owner is None:
            super().dataReceived(data)
            return
        if self._busy:
            # A handler made the transport deliver more synchronously: keep the
            # order by letting the outer call take it after what it holds.
            if self._later is None:
                self._later = []
            self._later.append(data)
            return
        self._busy = True
        try:
            self._receive(data)
            while self._later:
                more = b"".join(self._later)
                self._later = None
                if self.state == _OPEN:
                    self._receive(more)
                else:
                    super().dataReceived(more)
        finally:
            self._busy = False

    def _receive(self, data: bytes) -> None:
        held: bytes = self.data
        buf = held + data if held else data
        owner = self.owner
        assert owner is not None
        deliver = owner._sink.data_received
        limit: int = self.maxMessagePayloadSize  # type: ignore[attr-defined]
        end = len(buf)
        pos = 0
        while True:
            if self.state == _OPEN and self.current_frame is None and not self.inside_message:
                left = end - pos
                if left < 2:
                    self.data = buf[pos:] if left else b""
                    return
                b0 = buf[pos]
                size = buf[pos + 1]
                # FIN, no RSV, text or binary; unmasked (a 7-bit length below 0x80)
                if b0 == 0x81 or b0 == 0x82:
                    if size < 126:
                        start = pos + 2
                    elif size == 126:
                        if left < 4:
                            self.data = buf[pos:]
                            return
                        size = (buf[pos + 2] << 8) | buf[pos + 3]
                        start = pos + 4 if size >= 126 else -1
                    elif size == 127:
                        if left < 10:
                            self.data = buf[pos:]
                            return
                        size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                        start = pos + 10 if 65536 <= size <= 0x7FFFFFFFFFFFFFFF else -1
                    else:
                        start = -1  # masked
                    if start >= 0 and (limit <= 0 or size <= limit):
                        stop = start + size
                        if stop <= end:
                            pos = stop
                            deliver(owner, buf[start:stop])
                            continue
                        if stop - pos <= _FAST_PARTIAL:
                            self.data = buf[pos:]
                            return
            # autobahn's own path, one step at a time, until between messages again
            self.data = buf[pos:]
            if self.state == _CLOSED:
                return
            while True:
                more = self.processData()
                if self.state == _CLOSED or not more:
                    return
                if self.state == _OPEN and self.current_frame is None and not self.inside_message:
                    break
            buf = self.data
            self.data = b""
            end = len(buf)
            pos = 0

    def onOpen(self) -> None:
        owner = self.factory.owner
        self.owner = owner
        owner._opened(self)

    def onMessageEnd(self) -> None:
        # The hot path.  autobahn's own onMessageEnd also fires its "message" event,
        # building Deferreds for every message that nobody listens to (about 2.5 µs
        # a frame); hand the payload straight to the connection instead.
        if not self.failedByMe:
            owner = self.owner
            if owner is not None:
                owner._sink.data_received(owner, b"".join(self.message_data))
        self.message_data = None  # type: ignore[assignment]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.owner._closed(wasClean, code, reason)


class _ClientFactory(WebSocketClientFactory):
    protocol = _ClientProtocol

    log = QuietAutobahnLog()
    noisy = False

    def __init__(self, owner: WebSocketTransport, url: str, headers: dict[str, str]) -> None:
        super().__init__(url, headers=headers)  # type: ignore[no-untyped-call]
        self.owner = owner


class WebSocketTransport:
    """
    One WebSocket to a SignalR ``/connect`` or ``/reconnect`` URL.

    :param reactor: the reactor (TCP and time).
    :param request: the channel's URL (mapped to ``ws://`` or ``wss://``).
    :param http: the connection's HTTP side, for the handshake headers (custom
        headers, cookies) and the TLS policy.
    :param sink: where opening, frames and loss are reported.
    """

    inherent_keepalive = False

    def __init__(
        self,
        reactor: IReactorTime,
        request: TransportRequest,
        http: HttpSession,
        sink: TransportSink,
    ) -> None:
        self._reactor = reactor
        self._url = websocket_url(request.url)
        self._max_size = request.max_size
        self._binary = request.frame_binary
        self._headers = http.handshake_headers(request.url)
        self._tls: IPolicyForHTTPS | None = http.tls
        self._proxy = http.proxy_for(self._url)
        self._sink = sink
        self._protocol: WebSocketClientProtocol | None = None
        self._open = False
        self._connecting: Deferred[Any] | None = None
        self._done = False
        self._close_timer: Any = None
        self._closed_waiters: list[Deferred[None]] = []

    def open(self) -> None:
        """Start connecting; the sink hears ``transport_opened`` or ``transport_lost``."""
        parts = urlsplit(self._url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        factory: WebSocketClientFactory = _ClientFactory(self, self._url, self._headers)
        factory.setProtocolOptions(
            autoPingInterval=0,
            autoPingTimeout=0,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            # Frames from a SignalR server are text; do not spend time validating
            # UTF-8 twice: the JSON decoder rejects invalid UTF-8 anyway.
            utf8validateIncoming=False,
            tcpNoDelay=True,
            maxMessagePayloadSize=self._max_size,
            maxFramePayloadSize=self._max_size,
        )
        proxy = self._proxy
        endpoint: Any = (
            tcp_endpoint(self._reactor, host, port)
            if proxy is None
            else TunnelEndpoint(self._reactor, proxy, host, port)
        )
        if secure:
            policy = self._tls
            if policy is None:
                from twisted.web.client import BrowserLikePolicyForHTTPS

                policy = BrowserLikePolicyForHTTPS()
            creator = policy.creatorForNetloc(host.encode("idna"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        d = endpoint.connect(factory)
        self._connecting = d

        def connected(protocol: Any) -> None:
            # TCP is up; the upgrade may still be pending.  Keep the protocol so
            # close()/abort() can drop a socket whose handshake never completes.
            self._connecting = None
            self._protocol = protocol
            if self._done:
                protocol.dropConnection(abort=True)

        def failed(f: Failure) -> None:
            self._connecting = None
            if not self._done:
                self._finish(ConnectionClosed("could not connect the WebSocket", f.value))

        d.addCallbacks(connected, failed)

    # -- called by the protocol

    def _opened(self, protocol: WebSocketClientProtocol) -> None:
        self._protocol = protocol
        self._open = True
        if self._done:
            protocol.dropConnection(abort=True)
            return
        self._sink.transport_opened(self)

    def _closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        waiters, self._closed_waiters = self._closed_waiters, []
        if not self._done:
            text = reason or ""
            status = _UPGRADE_FAILED.search(text)
            if status is not None:
                closed = ConnectionClosed(
                    f"WebSocket upgrade refused with HTTP {status.group(1)}",
                    status=int(status.group(1)),
                )
            elif "exceeds payload limit" in text or code == 1009:
                too_large = MessageTooLarge(
                    f"a WebSocket message from the server is over the {self._max_size} byte "
                    "limit (max_receive_size)"
                )
                closed = ConnectionClosed(str(too_large), too_large)
            elif was_clean:
                closed = ConnectionClosed(f"WebSocket closed by the server (code {code})")
            else:
                closed = ConnectionClosed(f"WebSocket lost: {text or 'connection dropped'}")
            self._finish(closed)
        for w in waiters:
            w.callback(None)

    def _finish(self, reason: ConnectionClosed) -> None:
        self._done = True
        self._sink.transport_lost(self, reason)

    # -- used by the connection

    def send(self, data: bytes) -> Deferred[bytes]:
        """
        Send one message (a text frame, or binary when the request's ``frame_binary``
        says so); nothing comes back in the same exchange.
        """
        protocol = self._protocol
        if protocol is None or self._done or not self._open:
            return fail(ConnectionClosed("the WebSocket is not open"))
        # autobahn holds what is sent to the received-message limit too; that limit
        # is max_receive_size, which is not meant to bound sending.
        options: Any = protocol
        limit = options.maxMessagePayloadSize
        options.maxMessagePayloadSize = 0
        try:
            binary = self._binary
            protocol.sendMessage(data, binary is not None and binary(data))
        finally:
            options.maxMessagePayloadSize = limit
        return succeed(b"")

    def close(self, timeout: float = 2.0) -> Deferred[None]:
        """
        Close without telling the sink (the caller already decided what happens next).

        Sends a close frame and drops the TCP connection if the server has not closed
        it within ``timeout`` seconds on the injected clock.

        :returns: a Deferred that fires once the socket is gone.
        """
        return self._shut(graceful=True, timeout=timeout)

    def abort(self) -> Deferred[None]:
        """Drop the TCP connection at once, without telling the sink."""
        return self._shut(graceful=False, timeout=0.0)

    def _shut(self, graceful: bool, timeout: float) -> Deferred[None]:
        self._done = True
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        protocol = self._protocol
        if protocol is None or protocol.state == WebSocketClientProtocol.STATE_CLOSED:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        if graceful and protocol.state == WebSocketClientProtocol.STATE_OPEN:
            protocol.sendClose(1000)
            clock: IReactorTime = self._reactor
            self._close_timer = clock.callLater(timeout, self._force_drop)
        else:
            protocol.dropConnection(abort=True)
        return d

    def _force_drop(self) -> None:
        self._close_timer = None
        protocol = self._protocol
        if protocol is not None and protocol.state != WebSocketClientProtocol.STATE_CLOSED:
            protocol.dropConnection(abort=True)

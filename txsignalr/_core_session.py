"""
The ASP.NET Core family session, without I/O: one connection's negotiate state
(redirects included), its transport requests, the handshake and the receive path, in
either hub protocol (JSON or MessagePack, :mod:`txsignalr._core_codecs`); the
counterpart of :class:`txsignalr._classic.ClassicSession`.
"""

from __future__ import annotations

import itertools
from collections import abc
from collections.abc import Mapping
from typing import Any, Final

from txsignalr._core_codecs import JSON, HubCodec
from txsignalr._core_negotiate import (
    CORE_TRANSPORT_NAMES,
    CoreNegotiateResponse,
    Redirect,
    _http_connect_url,
    _with_query,
    negotiate_url,
    parse_core_negotiate,
)
from txsignalr._core_protocol import (
    _NO_RESULT,
    DEFAULT_MAX_MESSAGE_SIZE,
    HandshakeParser,
    HandshakeResponse,
    HubMessage,
    Invocation,
    PlainCall,
    handshake_request,
)
from txsignalr._protocol import Transport, redact_url, websocket_url
from txsignalr._transport import TransportRequest
from txsignalr.errors import InvalidURL, NegotiationError, ProtocolError

__all__ = ["MAX_NEGOTIATIONS", "POLL_TIMEOUT", "CoreSession"]

#: Negotiations one start may take, redirects included, before it fails (TS client).
MAX_NEGOTIATIONS: Final = 100

#: Seconds a held long poll may take before it counts as lost: the server's PollTimeout
#: (90 s) plus a margin, as the TS client's 100 s.
POLL_TIMEOUT: Final = 100.0

#: How many times max_message_size one WebSocket message or SSE event may hold.
_CHUNK_MESSAGES: Final = 4

_SEND_CONTENT_TYPE: Final = "text/plain;charset=UTF-8"
_BINARY_CONTENT_TYPE: Final = "application/octet-stream"


def _text_body(payload: bytes) -> tuple[bytes, str]:
    """The POST body of a Core send: the records themselves, as text."""
    return payload, _SEND_CONTENT_TYPE


class CoreSession:
    """
    One ASP.NET Core connection's protocol state.

    Negotiate (following redirects), the transport URLs, the handshake and the
    receive path: first the handshake answer, then the hub protocol's messages.

    :param url: the user's hub URL.
    :param query: the user's extra query parameters (not carried over a redirect).
    :param keepalive_interval: seconds without sending after which a Ping is due.
    :param server_timeout: seconds without receiving after which the link counts as lost.
    :param max_message_size: the most bytes one received message may hold.
    :param codec: the hub protocol (JSON or MessagePack).
    :param stateful_reconnect: ask for stateful reconnect in negotiate.
    """

    #: Seconds the server may take to answer the handshake.
    handshake_timeout = 15.0

    def __init__(
        self,
        url: str,
        query: Mapping[str, str] | abc.Sequence[tuple[str, str]] | None = None,
        *,
        keepalive_interval: float = 15.0,
        server_timeout: float = 30.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        codec: HubCodec = JSON,
        stateful_reconnect: bool = False,
    ) -> None:
        self._start_url = _with_query(url, query)  # validates: InvalidURL now
        self.codec = codec
        self.stateful_requested = stateful_reconnect
        self.keepalive_interval = keepalive_interval
        self.server_timeout = server_timeout
        self._max = max_message_size
        self._url = self._start_url
        self._negotiations = 0
        self.access_token: str | None = None
        self.negotiated: CoreNegotiateResponse | None = None
        self._handshake: HandshakeParser | None = HandshakeParser()
        self._splitter = codec.splitter(max_message_size)
        self._polls = itertools.count(1)
        self._skipped = False
        #: the transport of the last connect request
        self._transport: Transport | None = None
        #: the handshake last made (sent as text even in a binary hub protocol)
        self._handshake_record = b""
        #: the next connect request replaces a dropped WebSocket: no handshake
        self.resuming = False
        #: seconds a transport may take to open
        self.connect_timeout = 15.0

    def __repr__(self) -> str:
        state = "negotiated" if self.negotiated is not None else "new"
        return f"<CoreSession {redact_url(self._url)} {state}>"

    # -- negotiate

    def negotiate_url(self) -> str:
        """The next negotiate URL: the user's URL, or the last redirect's."""
        return negotiate_url(self._url, stateful_reconnect=self.stateful_requested)

    def restart(self) -> None:
        """Start over from the user's URL (a full reconnect); redirects are forgotten."""
        self._url = self._start_url
        self._negotiations = 0
        self.access_token = None
        self.negotiated = None
        self._skipped = False
        self._transport = None
        self.resuming = False

    def skip_negotiation(self) -> None:
        """
        Connect without negotiate (``skipNegotiation``): WebSockets only, straight to
        the hub URL, without a connection id.
        """
        self.restart()
        self._skipped = True

    def negotiated_answer(self, status: int, body: bytes) -> CoreNegotiateResponse | Redirect:
        """
        Read a negotiate answer.  A :class:`Redirect` moves the session to its URL (and
        its access token, if any): negotiate again at :meth:`negotiate_url`.

        :raises NegotiationError: when the answer cannot be used, or after too many
            redirects.
        """
        answer = parse_core_negotiate(status, body)
        self._negotiations += 1
        if type(answer) is Redirect:
            if self._negotiations >= MAX_NEGOTIATIONS:
                raise NegotiationError("Negotiate redirection limit exceeded.")
            try:
                _with_query(answer.url, None)
            except InvalidURL as e:
                raise NegotiationError(f"negotiate redirected to an unusable URL: {e}") from None
            self._url = answer.url
            if answer.access_token is not None:
                self.access_token = answer.access_token
            return answer
        assert type(answer) is CoreNegotiateResponse
        if answer.use_stateful_reconnect and not self.stateful_requested:
            # Not asked for: the handshake says version 1, as the TS client.
            raise NegotiationError(
                "Client didn't negotiate Stateful Reconnect but the server did.", status, body
            )
        self.negotiated = answer
        return answer

    @property
    def connection_id(self) -> str | None:
        """The public connection id, once negotiated."""
        return None if self.negotiated is None else self.negotiated.connection_id

    @property
    def stateful(self) -> bool:
        """
        Whether stateful reconnect applies to the transport of the last connect
        request: asked for, agreed by the server, and over WebSockets.
        """
        negotiated = self.negotiated
        return (
            negotiated is not None
            and negotiated.use_stateful_reconnect
            and self._transport is Transport.web_sockets
        )

    def skip_reason(self, transport: Transport) -> str | None:
        """Why the negotiate answer rules ``transport`` out for the hub protocol, or ``None``."""
        codec = self.codec
        if codec.binary and transport is Transport.server_sent_events:
            return (
                f"Server-Sent Events carry only the Text transfer format, not the "
                f"{codec.name} hub protocol's Binary"
            )
        if self._skipped:
            if transport is Transport.web_sockets:
                return None
            return "negotiation was skipped, which only WebSockets allow"
        negotiated = self.negotiated
        if negotiated is None:
            return "not negotiated"
        entry = negotiated.transport(transport)
        if entry is None:
            return f"the server does not offer {CORE_TRANSPORT_NAMES[transport]}"
        if codec.transfer_format not in entry.transfer_formats:
            return (
                f"the server's {entry.name} does not carry the {codec.transfer_format} "
                "transfer format"
            )
        return None

    def transports(self) -> tuple[Transport, ...]:
        """The transports to try, in the server's order (known ones that carry the hub
        protocol)."""
        if self.negotiated is None:
            return ()
        out = []
        for entry in self.negotiated.available_transports:
            transport = entry.transport
            if transport is not None and self.skip_reason(transport) is None:
                out.append(transport)
        return tuple(out)

    def uses_keepalive(self, transport: Transport) -> bool:
        """Whether Pings and the server timeout apply (not over long polling)."""
        return transport is not Transport.long_polling

    # -- transport requests

    def _connect_http_url(self) -> str:
        if self._skipped:
            return self._url
        if self.negotiated is None:
            raise RuntimeError("no connection token: negotiate first")
        return _http_connect_url(self._url, self.negotiated.connection_token)

    def connect_url(self, transport: Transport) -> str:
        """The URL that opens ``transport`` (``ws(s)://`` for WebSockets)."""
        url = self._connect_http_url()
        return websocket_url(url) if transport is Transport.web_sockets else url

    def delete_url(self) -> str:
        """Where long polling sends its ``DELETE`` on stop."""
        return self._connect_http_url()

    def connect_request(self, transport: Transport) -> TransportRequest:
        """
        What opens ``transport``; the receive path then waits for the handshake (unless
        :attr:`resuming`: a WebSocket that replaces a dropped one has none).
        """
        url = self._connect_http_url()
        self._transport = transport
        self._handshake = None if self.resuming else HandshakeParser()
        self._splitter = self.codec.splitter(self._max)
        size = self._max
        # The hub protocol's splitter holds each message to max_message_size; one
        # WebSocket message or event may carry several (a batch, a stateful replay),
        # as long polling's bodies may (its transport allows 4x on its own).
        chunk = _CHUNK_MESSAGES * size
        binary = self.codec.binary
        if transport is Transport.web_sockets:
            return TransportRequest(
                transport, url, max_size=chunk, frame_binary=self._frame_binary if binary else None
            )
        body = self._binary_body if binary else _text_body
        if transport is Transport.server_sent_events:
            return TransportRequest(transport, url, url, body, max_size=chunk, join_events=True)
        return TransportRequest(
            transport,
            url,
            url,
            body,
            self._next_poll,
            POLL_TIMEOUT,
            poll_method="GET",
            max_size=size,
        )

    def _frame_binary(self, payload: bytes) -> bool:
        # The handshake goes as a text frame, as Microsoft's client sends it.
        return payload != self._handshake_record

    def _binary_body(self, payload: bytes) -> tuple[bytes, str]:
        if payload == self._handshake_record:
            return payload, _SEND_CONTENT_TYPE
        return payload, _BINARY_CONTENT_TYPE

    def _next_poll(self) -> tuple[str, float] | None:
        if self.negotiated is None:
            return None
        return f"{self._connect_http_url()}&_={next(self._polls)}", 0.0

    def forget(self) -> None:
        """End the session: the token is dropped, long polling stops."""
        self.negotiated = None

    # -- handshake and receive

    def handshake(self) -> bytes:
        """
        The handshake record to send once the transport is open: version 2 when
        stateful reconnect applies (.NET 8 servers need it for that), else 1, which
        every server takes.
        """
        record = handshake_request(self.codec.name, 2 if self.stateful else 1)
        self._handshake_record = record
        return record

    @property
    def handshake_done(self) -> bool:
        """Whether the handshake answer has arrived."""
        return self._handshake is None

    def receive(self, data: bytes) -> list[HubMessage | HandshakeResponse | ProtocolError]:
        """
        Parse one received chunk (WebSocket message, SSE event, poll body).

        Until the handshake answer has arrived it is looked for first; a
        :class:`HandshakeResponse` then heads the list, followed by the messages that
        came in the same chunk.  Unknown message types are left out; a message that is
        not valid is a :class:`~txsignalr.ProtocolError` in the list, and the messages
        after it are still read.

        :raises HandshakeError: when the server refused the handshake.
        :raises ProtocolError: when the handshake answer is not one, or (MessagePack)
            a length prefix is not valid: nothing after it can be read.
        :raises MessageTooLarge: for a message over ``max_message_size``.
        """
        out: list[HubMessage | HandshakeResponse | ProtocolError] = []
        for message in self.receive_plain(data):
            if type(message) is tuple:
                target, arguments = message
                message = Invocation(target, tuple(arguments))
            out.append(message)  # type: ignore[arg-type]
        return out

    def receive_plain(
        self, data: bytes
    ) -> list[HubMessage | HandshakeResponse | ProtocolError | PlainCall]:
        """
        :meth:`receive` for the connection's fast lane: a plain non-blocking call
        comes as a ``(target, arguments)`` tuple, not as an :class:`Invocation`.
        """
        out: list[HubMessage | HandshakeResponse | ProtocolError | PlainCall] = []
        handshake = self._handshake
        if handshake is not None:
            found = handshake.feed(data)
            if found is None:
                return out
            self._handshake = None
            response, data = found
            out.append(response)
            if not data:
                return out
        self.codec.parse_plain_many(self._splitter.feed(data), out)  # type: ignore[arg-type]
        return out

    # -- sending

    def ping(self) -> bytes:
        """The Ping message."""
        return self.codec.ping

    def close(self) -> bytes:
        """The Close message sent on stop."""
        return self.codec.close

    def encode_invocation(
        self,
        target: str,
        arguments: abc.Sequence[Any],
        invocation_id: str | None,
        stream_ids: abc.Sequence[str] = (),
    ) -> bytes:
        """
        :raises TypeError: when an argument cannot be encoded in the hub protocol.
        """
        return self.codec.encode_invocation(target, arguments, invocation_id, stream_ids)

    def encode_stream_invocation(
        self,
        target: str,
        arguments: abc.Sequence[Any],
        invocation_id: str,
        stream_ids: abc.Sequence[str] = (),
    ) -> bytes:
        """:raises TypeError: when an argument cannot be encoded in the hub protocol."""
        return self.codec.encode_stream_invocation(target, arguments, invocation_id, stream_ids)

    def encode_stream_item(self, stream_id: str, item: Any) -> bytes:
        """An item of an upload stream."""
        return self.codec.encode_stream_item(stream_id, item)

    def encode_completion(
        self, invocation_id: str, result: Any = _NO_RESULT, error: str | None = None
    ) -> bytes:
        """The end of an upload stream, or the answer to a client-result invocation."""
        return self.codec.encode_completion(invocation_id, result, error)

    def encode_cancel(self, invocation_id: str) -> bytes:
        """Stop a server-to-client stream."""
        return self.codec.encode_cancel(invocation_id)

    def encode_ack(self, sequence_id: int) -> bytes:
        """Stateful reconnect: everything up to ``sequence_id`` arrived."""
        return self.codec.encode_ack(sequence_id)

    def encode_sequence(self, sequence_id: int) -> bytes:
        """Stateful reconnect: the first message replayed on a new socket."""
        return self.codec.encode_sequence(sequence_id)

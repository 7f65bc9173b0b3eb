"""
The ASP.NET Core SignalR wire protocol (JSON hub protocol), without I/O.

Negotiate (v0 and v1, redirects), the handshake, ``0x1E`` record framing and the JSON
hub messages, as plain values; plus :class:`CoreSession`, the Core family session that
holds one connection's state.  No reactor, no sockets: the Twisted side feeds this
module bytes and acts on what it returns.

Reference: ``core.md`` §2 (negotiate), §4 (handshake), §5.1 (framing), §6 / §6.1 (hub
messages), and the real-server transcripts in ``transcripts-core/``.
"""

from __future__ import annotations

import enum
import itertools
from collections import abc
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import attrs

from txsignalr._protocol import Transport, _JSONError, dumps, loads, redact_url, websocket_url
from txsignalr._transport import TransportRequest
from txsignalr.errors import (
    HandshakeError,
    InvalidURL,
    MessageTooLarge,
    NegotiationError,
    ProtocolError,
)

__all__ = [
    "CLOSE_RECORD",
    "CORE_TRANSPORT_NAMES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "PING",
    "PING_RECORD",
    "RECORD_SEPARATOR",
    "Ack",
    "AvailableTransport",
    "CancelInvocation",
    "Close",
    "Completion",
    "CoreNegotiateResponse",
    "CoreSession",
    "HandshakeParser",
    "HandshakeResponse",
    "HubMessage",
    "Invocation",
    "MessageType",
    "Ping",
    "RecordSeparatorSplitter",
    "Redirect",
    "Sequence",
    "StreamInvocation",
    "StreamItem",
    "connect_url",
    "encode_ack",
    "encode_cancel_invocation",
    "encode_close",
    "encode_completion",
    "encode_invocation",
    "encode_sequence",
    "encode_stream_invocation",
    "encode_stream_item",
    "handshake_request",
    "negotiate_url",
    "parse_core_negotiate",
    "parse_message",
    "parse_record",
]

#: The byte that ends every JSON record (and the handshake), ASCII Record Separator.
RECORD_SEPARATOR: Final = b"\x1e"
_RS: Final = 0x1E

#: The most bytes one received record (or the handshake answer) may hold by default.
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024

#: The wire name of each transport in ``availableTransports``.
CORE_TRANSPORT_NAMES: Final = {
    Transport.web_sockets: "WebSockets",
    Transport.server_sent_events: "ServerSentEvents",
    Transport.long_polling: "LongPolling",
}
_TRANSPORT_BY_NAME: Final = {name: t for t, name in CORE_TRANSPORT_NAMES.items()}

#: Redirects a negotiate may answer with, at most, before the start fails (TS client).
MAX_NEGOTIATIONS: Final = 100

#: Seconds past the server's PollTimeout (90 s) a held poll may take (TS allows 100 s).
POLL_TIMEOUT: Final = 100.0

_SEND_CONTENT_TYPE: Final = "text/plain;charset=UTF-8"


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


# ------------------------------------------------------------------ negotiate


def _split_base(base_url: str) -> tuple[str, str, str, str]:
    """``(scheme, netloc, path, query)`` of an http(s) base URL, ws(s) mapped to http(s)."""
    if not isinstance(base_url, str):
        raise InvalidURL(f"connection URL must be a string, not {type(base_url).__name__}")
    try:
        parts = urlsplit(base_url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise InvalidURL(f"invalid connection URL {redact_url(base_url)!r}: {e}") from None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https"):
        raise InvalidURL(
            f"connection URL must start with http:// or https://: {redact_url(base_url)!r}"
        )
    if not parts.hostname:
        raise InvalidURL(f"connection URL has no host: {redact_url(base_url)!r}")
    if parts.fragment:
        raise InvalidURL(f"connection URL must not have a fragment: {redact_url(base_url)!r}")
    return scheme, parts.netloc, parts.path, parts.query


def _with_query(
    base_url: str, query: Mapping[str, str] | abc.Sequence[tuple[str, str]] | None
) -> str:
    """The base URL (http(s)) with the user's extra query parameters appended."""
    scheme, netloc, path, existing = _split_base(base_url)
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
    scheme, netloc, path, existing = _split_base(_with_query(base_url, query))
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


def _negotiate_error(message: str, status: int, body: bytes) -> NegotiationError:
    return NegotiationError(message, status, body)


def _required_str(obj: Mapping[str, Any], key: str, status: int, body: bytes) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _negotiate_error(f"negotiate response has no {key!r} string", status, body)
    return value


def _transports(value: Any, status: int, body: bytes) -> tuple[AvailableTransport, ...]:
    if not isinstance(value, list):
        raise _negotiate_error(
            "negotiate response has no 'availableTransports' array", status, body
        )
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            raise _negotiate_error("an 'availableTransports' entry is not an object", status, body)
        name = entry.get("transport")
        formats = entry.get("transferFormats")
        if not isinstance(name, str):
            raise _negotiate_error(
                "an 'availableTransports' entry has no 'transport'", status, body
            )
        if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
            raise _negotiate_error(
                f"transport {name!r} has no 'transferFormats' array of strings", status, body
            )
        out.append(AvailableTransport(name, tuple(formats)))
    return tuple(out)


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
        raise _negotiate_error(
            f"Unexpected status code returned from negotiate '{status}'.{hint}", status, body
        )
    try:
        obj = loads(body)
    except _JSONError:
        raise _negotiate_error(
            "negotiate response is not JSON (is the URL a SignalR endpoint?)", status, body
        ) from None
    if not isinstance(obj, dict):
        raise _negotiate_error("negotiate response is not a JSON object", status, body)
    error = obj.get("error")
    if error is not None:
        raise _negotiate_error(f"the server refused the negotiation: {error}", status, body)
    if "ProtocolVersion" in obj or "ConnectionToken" in obj:
        raise _negotiate_error(
            "Detected a connection attempt to an ASP.NET SignalR (classic 2.x) server; "
            "the ASP.NET Core protocol cannot talk to it",
            status,
            body,
        )
    url = obj.get("url")
    if url is not None:
        if not isinstance(url, str) or not url:
            raise _negotiate_error("negotiate redirect 'url' is not a string", status, body)
        token = obj.get("accessToken")
        if token is not None and not isinstance(token, str):
            raise _negotiate_error("negotiate redirect 'accessToken' is not a string", status, body)
        return Redirect(url, token)
    version = obj.get("negotiateVersion", 0)
    if version is None:
        version = 0
    if type(version) is not int or version not in (0, 1):
        raise _negotiate_error(
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


# ------------------------------------------------------------------ handshake


def handshake_request(protocol: str = "json", version: int = 1) -> bytes:
    """The handshake record the client sends first: ``{"protocol":…,"version":…}␞``."""
    return dumps({"protocol": protocol, "version": version}) + RECORD_SEPARATOR


@attrs.frozen
class HandshakeResponse:
    """The server accepted the handshake (``{}␞``)."""


_HANDSHAKE_OK: Final = HandshakeResponse()


class HandshakeParser:
    """
    Finds the handshake answer at the start of the received byte stream.

    :param max_size: the most bytes the answer may take before its ``0x1E``.
    """

    def __init__(self, max_size: int = 64 * 1024) -> None:
        self._max = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> tuple[HandshakeResponse, bytes] | None:
        """
        Add received bytes.

        :returns: ``None`` while the answer is incomplete; then the answer and the bytes
            after its ``0x1E`` (hub records that came in the same chunk).
        :raises HandshakeError: when the server refused the handshake.
        :raises ProtocolError: when the answer is not a handshake answer, or grows past
            ``max_size``.
        """
        buffer = self._buffer
        start = len(buffer)
        buffer += data
        end = buffer.find(_RS, start)
        if end < 0:
            if len(buffer) > self._max:
                self._buffer = bytearray()
                raise ProtocolError(
                    f"the handshake answer has no record separator in its first {self._max} bytes"
                )
            return None
        if end > self._max:
            self._buffer = bytearray()
            raise ProtocolError(f"the handshake answer is over {self._max} bytes")
        record = bytes(buffer[:end])
        rest = bytes(buffer[end + 1 :])
        self._buffer = bytearray()
        try:
            obj = loads(record)
        except _JSONError:
            raise ProtocolError("the handshake answer is not JSON", _text(record)) from None
        if type(obj) is not dict:
            raise ProtocolError("the handshake answer is not a JSON object", _text(record))
        if "type" in obj:
            raise ProtocolError("Expected a handshake response from the server.", _text(record))
        error = obj.get("error")
        if error is not None:
            raise HandshakeError(str(error))
        return _HANDSHAKE_OK, rest


# ------------------------------------------------------------------ framing


class RecordSeparatorSplitter:
    """
    Splits a received byte stream into ``0x1E``-terminated records, however the stream
    was cut into chunks.

    :param max_size: the most bytes one record may hold (without its ``0x1E``).
    """

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._max = max_size
        self._buffer = b""

    @property
    def buffered(self) -> int:
        """How many bytes of an unfinished record are held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add received bytes.

        :returns: the records completed by them, in order, without their ``0x1E``.
        :raises MessageTooLarge: when a record is, or grows, over ``max_size``; what is
            buffered is dropped (the connection cannot continue).
        """
        if self._buffer:
            data = self._buffer + data
        records = data.split(RECORD_SEPARATOR)
        tail = records.pop()
        self._buffer = tail
        limit = self._max
        if len(tail) > limit or (
            len(data) - len(tail) - len(records) > limit and any(len(r) > limit for r in records)
        ):
            self._buffer = b""
            raise MessageTooLarge(f"a received message is over the {limit} byte limit")
        return records


# ------------------------------------------------------------------ hub messages


class MessageType(enum.IntEnum):
    """The ``type`` of a hub message."""

    invocation = 1
    stream_item = 2
    completion = 3
    stream_invocation = 4
    cancel_invocation = 5
    ping = 6
    close = 7
    ack = 8
    sequence = 9


Headers = Mapping[str, str]


@attrs.frozen
class Invocation:
    """
    A method call (type 1).

    :ivar target: the method name.
    :ivar arguments: the arguments.
    :ivar invocation_id: ``None`` for a non-blocking call that must not be answered.
    :ivar stream_ids: ids of the streams the caller uploads for this call.
    :ivar headers: the message headers, or ``None``.
    """

    target: str
    arguments: tuple[Any, ...]
    invocation_id: str | None = None
    stream_ids: tuple[str, ...] = ()
    headers: Headers | None = None


@attrs.frozen
class StreamItem:
    """One item of a stream (type 2); ``invocation_id`` is the stream's id."""

    invocation_id: str
    item: Any
    headers: Headers | None = None


@attrs.frozen
class Completion:
    """
    The end of an invocation or stream (type 3).

    :ivar result: the return value (``None`` also when there is none: see
        ``has_result``).
    :ivar has_result: whether ``result`` was present (``"result":null`` is a result).
    :ivar error: the error text, or ``None`` on success.
    """

    invocation_id: str
    result: Any = None
    has_result: bool = False
    error: str | None = None
    headers: Headers | None = None


@attrs.frozen
class StreamInvocation:
    """A call whose results come back as a stream (type 4)."""

    invocation_id: str
    target: str
    arguments: tuple[Any, ...]
    stream_ids: tuple[str, ...] = ()
    headers: Headers | None = None


@attrs.frozen
class CancelInvocation:
    """Stop a stream (type 5)."""

    invocation_id: str
    headers: Headers | None = None


@attrs.frozen
class Ping:
    """A keep-alive (type 6)."""


#: The one Ping value; :func:`parse_message` returns this instance.
PING: Final = Ping()


@attrs.frozen
class Close:
    """
    The peer closes the connection (type 7).

    :ivar error: why, or ``None`` for a normal close (``""`` still counts as an error).
    :ivar allow_reconnect: the client may reconnect automatically.
    """

    error: str | None = None
    allow_reconnect: bool = False


@attrs.frozen
class Ack:
    """Stateful reconnect: every tracked message up to ``sequence_id`` arrived (type 8)."""

    sequence_id: int


@attrs.frozen
class Sequence:
    """Stateful reconnect: the id of the next (replayed) tracked message (type 9)."""

    sequence_id: int


HubMessage = (
    Invocation
    | StreamItem
    | Completion
    | StreamInvocation
    | CancelInvocation
    | Ping
    | Close
    | Ack
    | Sequence
)


def _id(obj: dict[str, Any], name: str) -> str:
    value = obj.get("invocationId")
    if type(value) is not str or not value:
        if "invocationId" not in obj:
            raise ProtocolError(f"{name} message without 'invocationId'", obj)
        raise ProtocolError(f"{name} message whose 'invocationId' is not a string", obj)
    return value


def _headers(obj: dict[str, Any]) -> Headers | None:
    headers = obj.get("headers")
    if headers is None:
        return None
    if type(headers) is not dict or not all(type(v) is str for v in headers.values()):
        raise ProtocolError("'headers' is not an object of strings", obj)
    return headers


def _call(obj: dict[str, Any], name: str) -> tuple[str, tuple[Any, ...], tuple[str, ...]]:
    target = obj.get("target")
    if type(target) is not str or not target:
        raise ProtocolError(f"{name} message without a 'target' string", obj)
    args = obj.get("arguments")
    if type(args) is not list:
        if "arguments" not in obj:
            raise ProtocolError("Missing required property 'arguments'.", obj)
        raise ProtocolError(f"{name} message whose 'arguments' is not an array", obj)
    streams = obj.get("streamIds")
    if streams is None:
        stream_ids: tuple[str, ...] = ()
    elif type(streams) is list and all(type(s) is str for s in streams):
        stream_ids = tuple(streams)
    else:
        raise ProtocolError(f"{name} message whose 'streamIds' is not an array of strings", obj)
    return target, tuple(args), stream_ids


def _invocation(obj: dict[str, Any]) -> Invocation:
    target, args, streams = _call(obj, "Invocation")
    invocation_id = None if obj.get("invocationId") is None else _id(obj, "Invocation")
    return Invocation(target, args, invocation_id, streams, _headers(obj))


def _stream_item(obj: dict[str, Any]) -> StreamItem:
    if "item" not in obj:
        raise ProtocolError("StreamItem message without 'item'", obj)
    return StreamItem(_id(obj, "StreamItem"), obj["item"], _headers(obj))


def _completion(obj: dict[str, Any]) -> Completion:
    invocation_id = _id(obj, "Completion")
    error = obj.get("error")
    has_result = "result" in obj
    if error is not None:
        if type(error) is not str:
            raise ProtocolError("Completion message whose 'error' is not a string", obj)
        if has_result:
            raise ProtocolError("The 'error' and 'result' properties are mutually exclusive.", obj)
    return Completion(invocation_id, obj.get("result"), has_result, error, _headers(obj))


def _stream_invocation(obj: dict[str, Any]) -> StreamInvocation:
    target, args, streams = _call(obj, "StreamInvocation")
    return StreamInvocation(_id(obj, "StreamInvocation"), target, args, streams, _headers(obj))


def _cancel(obj: dict[str, Any]) -> CancelInvocation:
    return CancelInvocation(_id(obj, "CancelInvocation"), _headers(obj))


def _ping(obj: dict[str, Any]) -> Ping:
    return PING


def _close(obj: dict[str, Any]) -> Close:
    error = obj.get("error")
    if error is not None and type(error) is not str:
        raise ProtocolError("Close message whose 'error' is not a string", obj)
    allow = obj.get("allowReconnect")
    if allow is not None and type(allow) is not bool:
        raise ProtocolError("Close message whose 'allowReconnect' is not a boolean", obj)
    return Close(error, allow is True)


def _sequence_id(obj: dict[str, Any], name: str) -> int:
    value = obj.get("sequenceId")
    if type(value) is not int:
        raise ProtocolError(f"{name} message without an integer 'sequenceId'", obj)
    return value


def _ack(obj: dict[str, Any]) -> Ack:
    return Ack(_sequence_id(obj, "Ack"))


def _sequence(obj: dict[str, Any]) -> Sequence:
    return Sequence(_sequence_id(obj, "Sequence"))


_PARSERS: Final[dict[Any, Callable[[dict[str, Any]], HubMessage]]] = {
    1: _invocation,
    2: _stream_item,
    3: _completion,
    4: _stream_invocation,
    5: _cancel,
    6: _ping,
    7: _close,
    8: _ack,
    9: _sequence,
}


def parse_message(obj: Any) -> HubMessage | None:
    """
    Build the message value of one decoded JSON record.

    Unknown properties are ignored.

    :returns: the message, or ``None`` for a type this client does not know (the spec
        says to ignore those).
    :raises ProtocolError: when the record is not an object, has no integer ``type``, or
        a known type misses a required field or has one of the wrong type.
    """
    if type(obj) is not dict:
        raise ProtocolError("a hub message is not a JSON object", obj)
    kind = obj.get("type")
    if type(kind) is not int:
        if "type" not in obj:
            raise ProtocolError("Missing required property 'type'.", obj)
        raise ProtocolError("a hub message whose 'type' is not an integer", obj)
    parser = _PARSERS.get(kind)
    if parser is None:
        return None
    return parser(obj)


def parse_record(record: bytes) -> HubMessage | None:
    """Decode one record (without its ``0x1E``) and parse it (see :func:`parse_message`)."""
    try:
        obj = loads(record)
    except _JSONError:
        raise ProtocolError("a hub message is not valid JSON", _text(record)) from None
    return parse_message(obj)


# ------------------------------------------------------------------ encoding
# Key order and compactness are those of Microsoft's TypeScript client (10.x).

#: ``{"type":6}␞``, the keep-alive the client sends.
PING_RECORD: Final = b'{"type":6}\x1e'
#: ``{"type":7}␞``, what the client sends when it stops.
CLOSE_RECORD: Final = b'{"type":7}\x1e'


def encode_invocation(
    target: str,
    arguments: abc.Sequence[Any],
    invocation_id: str | None = None,
    stream_ids: abc.Sequence[str] = (),
) -> bytes:
    """
    An Invocation record; no ``invocation_id`` makes it non-blocking.

    :raises TypeError: when an argument is not JSON-serialisable.
    """
    message: dict[str, Any] = {"target": target, "arguments": list(arguments)}
    if invocation_id is not None:
        message["invocationId"] = invocation_id
    if stream_ids:
        message["streamIds"] = list(stream_ids)
    message["type"] = 1
    return dumps(message) + RECORD_SEPARATOR


def encode_stream_invocation(
    target: str,
    arguments: abc.Sequence[Any],
    invocation_id: str,
    stream_ids: abc.Sequence[str] = (),
) -> bytes:
    """A StreamInvocation record (the server answers with StreamItems)."""
    message: dict[str, Any] = {
        "target": target,
        "arguments": list(arguments),
        "invocationId": invocation_id,
    }
    if stream_ids:
        message["streamIds"] = list(stream_ids)
    message["type"] = 4
    return dumps(message) + RECORD_SEPARATOR


def encode_stream_item(invocation_id: str, item: Any) -> bytes:
    """A StreamItem record of an upload stream (``invocation_id`` = the stream id)."""
    return dumps({"invocationId": invocation_id, "item": item, "type": 2}) + RECORD_SEPARATOR


_NO_RESULT: Final[Any] = object()


def encode_completion(
    invocation_id: str, result: Any = _NO_RESULT, error: str | None = None
) -> bytes:
    """
    A Completion record: with ``error``, with ``result`` (``None`` gives
    ``"result":null``), or neither (void / end of an upload stream).
    """
    if error is not None:
        if result is not _NO_RESULT:
            raise ValueError("a completion has a result or an error, not both")
        message: dict[str, Any] = {"error": error, "invocationId": invocation_id}
    elif result is _NO_RESULT:
        message = {"invocationId": invocation_id}
    else:
        message = {"invocationId": invocation_id, "result": result}
    message["type"] = 3
    return dumps(message) + RECORD_SEPARATOR


def encode_cancel_invocation(invocation_id: str) -> bytes:
    """A CancelInvocation record (stop a stream)."""
    return dumps({"invocationId": invocation_id, "type": 5}) + RECORD_SEPARATOR


def encode_close(error: str | None = None, allow_reconnect: bool = False) -> bytes:
    """A Close record; plain ``{"type":7}␞`` unless an error or ``allow_reconnect``."""
    message: dict[str, Any] = {"type": 7}
    if error is not None:
        message["error"] = error
    if allow_reconnect:
        message["allowReconnect"] = True
    return dumps(message) + RECORD_SEPARATOR


def encode_ack(sequence_id: int) -> bytes:
    """An Ack record."""
    return dumps({"type": 8, "sequenceId": sequence_id}) + RECORD_SEPARATOR


def encode_sequence(sequence_id: int) -> bytes:
    """A Sequence record."""
    return dumps({"type": 9, "sequenceId": sequence_id}) + RECORD_SEPARATOR


# ------------------------------------------------------------------ session


def _text_body(payload: bytes) -> tuple[bytes, str]:
    """The POST body of a Core send: the records themselves, as text."""
    return payload, _SEND_CONTENT_TYPE


class CoreSession:
    """
    One ASP.NET Core connection's protocol state (JSON hub protocol).

    Negotiate (following redirects), the transport URLs, the handshake and the
    receive path: first the handshake answer, then ``0x1E`` records.

    :param url: the user's hub URL.
    :param query: the user's extra query parameters (not carried over a redirect).
    :param keepalive_interval: seconds without sending after which a Ping is due.
    :param server_timeout: seconds without receiving after which the link counts as lost.
    :param max_message_size: the most bytes one received record may hold.
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
    ) -> None:
        self._start_url = _with_query(url, query)  # validates: InvalidURL now
        self.keepalive_interval = keepalive_interval
        self.server_timeout = server_timeout
        self._max = max_message_size
        self._url = self._start_url
        self._negotiations = 0
        self.access_token: str | None = None
        self.negotiated: CoreNegotiateResponse | None = None
        self._handshake: HandshakeParser | None = HandshakeParser()
        self._splitter = RecordSeparatorSplitter(max_message_size)
        self._polls = itertools.count(1)

    def __repr__(self) -> str:
        state = "negotiated" if self.negotiated is not None else "new"
        return f"<CoreSession {redact_url(self._url)} {state}>"

    # -- negotiate

    def negotiate_url(self) -> str:
        """The next negotiate URL: the user's URL, or the last redirect's."""
        return negotiate_url(self._url)

    def restart(self) -> None:
        """Start over from the user's URL (a full reconnect); redirects are forgotten."""
        self._url = self._start_url
        self._negotiations = 0
        self.access_token = None
        self.negotiated = None

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
        self.negotiated = answer
        return answer

    @property
    def connection_id(self) -> str | None:
        """The public connection id, once negotiated."""
        return None if self.negotiated is None else self.negotiated.connection_id

    def skip_reason(self, transport: Transport) -> str | None:
        """Why the negotiate answer rules ``transport`` out for JSON, or ``None``."""
        negotiated = self.negotiated
        if negotiated is None:
            return "not negotiated"
        entry = negotiated.transport(transport)
        if entry is None:
            return f"the server does not offer {CORE_TRANSPORT_NAMES[transport]}"
        if "Text" not in entry.transfer_formats:
            return f"the server's {entry.name} does not carry the Text transfer format"
        return None

    def transports(self) -> tuple[Transport, ...]:
        """The transports to try, in the server's order (known, JSON-capable ones)."""
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
        """What opens ``transport``; the receive path then waits for the handshake."""
        url = self._connect_http_url()
        self._handshake = HandshakeParser()
        self._splitter = RecordSeparatorSplitter(self._max)
        if transport is Transport.web_sockets:
            return TransportRequest(transport, url)
        if transport is Transport.server_sent_events:
            return TransportRequest(transport, url, url, _text_body)
        return TransportRequest(transport, url, url, _text_body, self._next_poll, POLL_TIMEOUT)

    def _next_poll(self) -> tuple[str, float] | None:
        if self.negotiated is None:
            return None
        return f"{self._connect_http_url()}&_={next(self._polls)}", 0.0

    def forget(self) -> None:
        """End the session: the token is dropped, long polling stops."""
        self.negotiated = None

    # -- handshake and receive

    def handshake(self) -> bytes:
        """The handshake record to send once the transport is open."""
        return handshake_request("json", 1)

    @property
    def handshake_done(self) -> bool:
        """Whether the handshake answer has arrived."""
        return self._handshake is None

    def receive(self, data: bytes) -> list[HubMessage | HandshakeResponse]:
        """
        Parse one received chunk (WebSocket message, SSE event, poll body).

        Until the handshake answer has arrived it is looked for first; a
        :class:`HandshakeResponse` then heads the list, followed by the messages that
        came in the same chunk.  Unknown message types are left out.

        :raises HandshakeError: when the server refused the handshake.
        :raises ProtocolError: for data that is not the Core JSON protocol.
        :raises MessageTooLarge: for a record over ``max_message_size``.
        """
        out: list[HubMessage | HandshakeResponse] = []
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
        for record in self._splitter.feed(data):
            message = parse_record(record)
            if message is not None:
                out.append(message)
        return out

    # -- sending

    def ping(self) -> bytes:
        """The Ping record."""
        return PING_RECORD

    def close(self) -> bytes:
        """The Close record sent on stop."""
        return CLOSE_RECORD

    def encode_invocation(
        self,
        target: str,
        arguments: abc.Sequence[Any],
        invocation_id: str | None,
        stream_ids: abc.Sequence[str] = (),
    ) -> bytes:
        """
        :raises TypeError: when an argument is not JSON-serialisable.
        """
        return encode_invocation(target, arguments, invocation_id, stream_ids)

    def encode_stream_invocation(
        self,
        target: str,
        arguments: abc.Sequence[Any],
        invocation_id: str,
        stream_ids: abc.Sequence[str] = (),
    ) -> bytes:
        """:raises TypeError: when an argument is not JSON-serialisable."""
        return encode_stream_invocation(target, arguments, invocation_id, stream_ids)

    def encode_stream_item(self, stream_id: str, item: Any) -> bytes:
        """An item of an upload stream."""
        return encode_stream_item(stream_id, item)

    def encode_completion(
        self, invocation_id: str, result: Any = _NO_RESULT, error: str | None = None
    ) -> bytes:
        """The end of an upload stream, or the answer to a client-result invocation."""
        return encode_completion(invocation_id, result, error)

    def encode_cancel(self, invocation_id: str) -> bytes:
        """Stop a server-to-client stream."""
        return encode_cancel_invocation(invocation_id)

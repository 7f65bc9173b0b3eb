"""
The ASP.NET Core SignalR wire protocol (JSON hub protocol), without I/O.

The handshake, ``0x1E`` record framing and the JSON hub messages as plain values; the
negotiate functions of :mod:`txsignalr._core_negotiate` are re-exported here, and
:class:`txsignalr._core_session.CoreSession` holds one connection's state.  No reactor,
no sockets: the Twisted side feeds this module bytes and acts on what it returns.

Reference: ``core.md`` §4 (handshake), §5.1 (framing), §6 / §6.1 (hub messages), and
the real-server transcripts in ``transcripts-core/``.
"""

from __future__ import annotations

import enum
from collections import abc
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from txsignalr._core_negotiate import (
    CORE_TRANSPORT_NAMES,
    AvailableTransport,
    CoreNegotiateResponse,
    Redirect,
    connect_url,
    negotiate_url,
    parse_core_negotiate,
)
from txsignalr._protocol import _JSONError, _loads, dumps, loads, not_json
from txsignalr.errors import HandshakeError, MessageTooLarge, ProtocolError

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
    "parse_record_plain",
]

#: The byte that ends every JSON record (and the handshake), ASCII Record Separator.
RECORD_SEPARATOR: Final = b"\x1e"
_RS: Final = 0x1E

#: The most bytes one received record (or the handshake answer) may hold by default.
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


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
        elif data[-1:] == RECORD_SEPARATOR and len(data) <= self._max:
            # whole records only, none of them over the limit: the common chunk
            records = data.split(RECORD_SEPARATOR)
            records.pop()
            return records
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
    if type(value) is not int or value < 0:
        raise ProtocolError(f"{name} message without a non-negative integer 'sequenceId'", obj)
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
    try:
        return parser(obj)
    except ProtocolError as e:
        e.message_type = kind
        raise


#: A plain non-blocking call as the receive path's fast lane takes it: (target, arguments).
PlainCall = tuple[str, list[Any]]


def parse_record_plain(record: bytes) -> HubMessage | PlainCall | None:
    """
    :func:`parse_record`, except that the common record, a non-blocking call
    ``{"type":1,"target":…,"arguments":[…]}`` with nothing else, comes back as a
    ``(target, arguments)`` tuple without building its :class:`Invocation`.
    """
    return parse_one(parse_records_plain, record)


def parse_one(
    parse_many: Callable[[list[bytes], list[HubMessage | ProtocolError | PlainCall]], None],
    data: bytes,
) -> HubMessage | PlainCall | None:
    """One record or body through a hub protocol's ``parse_plain_many``: its message,
    ``None`` for one a client ignores; raises its :class:`ProtocolError`."""
    out: list[HubMessage | ProtocolError | PlainCall] = []
    parse_many([data], out)
    if not out:
        return None
    message = out[0]
    if isinstance(message, ProtocolError):
        raise message
    return message


def parse_records_plain(
    records: list[bytes], out: list[HubMessage | ProtocolError | PlainCall]
) -> None:
    """
    :func:`parse_record_plain` of each record, in one loop: what each gives is appended
    to ``out`` in order, a :class:`~txsignalr.errors.ProtocolError` included (the
    record is skipped and the others are still read); messages a client ignores add
    nothing.
    """
    append = out.append
    for record in records:
        try:
            obj = _loads(record)
        except _JSONError as e:
            append(not_json(e, record))
            continue
        if type(obj) is dict and len(obj) == 3:
            kind = obj.get("type")
            target = obj.get("target")
            args = obj.get("arguments")
            if kind == 1 and type(kind) is int and type(target) is str and target:
                if type(args) is list:
                    append((target, args))
                    continue
        try:
            message = parse_message(obj)
        except ProtocolError as e:
            append(e)
            continue
        if message is not None:
            append(message)


def parse_record(record: bytes) -> HubMessage | None:
    """
    Decode one record (without its ``0x1E``) and parse it (see :func:`parse_message`).

    :raises ProtocolError: when it is not JSON, or not a valid hub message.
    """
    message = parse_record_plain(record)
    if type(message) is tuple:
        return Invocation(message[0], tuple(message[1]))
    return message  # type: ignore[return-value]


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

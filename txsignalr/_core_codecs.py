"""
The two ASP.NET Core hub protocols behind one interface: JSON (``0x1E`` records, text)
and MessagePack (varint-prefixed arrays, binary).  A :class:`HubCodec` frames, parses
and encodes hub messages; the session and the test server pick one by its wire name.
"""

from __future__ import annotations

from collections import abc
from typing import Any, Final, Protocol

from txsignalr import _core_msgpack as _mp
from txsignalr import _core_protocol as _json
from txsignalr._core_protocol import _NO_RESULT, HubMessage, PlainCall
from txsignalr.errors import ProtocolError

__all__ = ["HUB_PROTOCOLS", "JSON", "MESSAGEPACK", "HubCodec", "Splitter", "hub_codec"]


class Splitter(Protocol):
    """Cuts a received byte stream into one hub message's bytes each."""

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished message held."""

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data``, in order."""


class HubCodec(Protocol):
    """
    One hub protocol.

    :ivar name: the wire name in the handshake (``"json"``, ``"messagepack"``).
    :ivar transfer_format: ``"Text"`` or ``"Binary"``, as negotiate lists them.
    :ivar binary: whether messages go as binary (WebSocket binary frames,
        ``application/octet-stream`` bodies).
    :ivar ping: the framed Ping; :ivar close: the framed Close a client sends on stop.
    """

    name: str
    transfer_format: str
    binary: bool
    ping: bytes
    close: bytes

    def splitter(self, max_size: int) -> Splitter: ...

    def parse(self, record: bytes) -> HubMessage | None:
        """
        :returns: the message, ``None`` for an unknown type.
        :raises ProtocolError: for a message that is not valid.
        """

    def parse_plain(self, record: bytes) -> HubMessage | PlainCall | None:
        """:meth:`parse`, with a plain non-blocking call as ``(target, arguments)``."""

    def parse_plain_many(
        self, records: list[bytes], out: list[HubMessage | ProtocolError | PlainCall]
    ) -> None:
        """
        :meth:`parse_plain` of each record, appended to ``out`` in order; a record
        that is not valid appends its :class:`~txsignalr.errors.ProtocolError`, and
        messages a client ignores append nothing.
        """

    def encode_invocation(
        self,
        target: str,
        arguments: abc.Sequence[Any],
        invocation_id: str | None = None,
        stream_ids: abc.Sequence[str] = (),
    ) -> bytes: ...

    def encode_stream_invocation(
        self,
        target: str,
        arguments: abc.Sequence[Any],
        invocation_id: str,
        stream_ids: abc.Sequence[str] = (),
    ) -> bytes: ...

    def encode_stream_item(self, invocation_id: str, item: Any) -> bytes: ...

    def encode_completion(
        self, invocation_id: str, result: Any = _NO_RESULT, error: str | None = None
    ) -> bytes: ...

    def encode_cancel(self, invocation_id: str) -> bytes: ...

    def encode_close(self, error: str | None = None, allow_reconnect: bool = False) -> bytes: ...

    def encode_ack(self, sequence_id: int) -> bytes: ...

    def encode_sequence(self, sequence_id: int) -> bytes: ...


class _JsonCodec:
    name = "json"
    transfer_format = "Text"
    binary = False
    ping = _json.PING_RECORD
    close = _json.CLOSE_RECORD

    def splitter(self, max_size: int) -> Splitter:
        return _json.RecordSeparatorSplitter(max_size)

    parse = staticmethod(_json.parse_record)
    parse_plain = staticmethod(_json.parse_record_plain)
    parse_plain_many = staticmethod(_json.parse_records_plain)
    encode_invocation = staticmethod(_json.encode_invocation)
    encode_stream_invocation = staticmethod(_json.encode_stream_invocation)
    encode_stream_item = staticmethod(_json.encode_stream_item)
    encode_completion = staticmethod(_json.encode_completion)
    encode_cancel = staticmethod(_json.encode_cancel_invocation)
    encode_close = staticmethod(_json.encode_close)
    encode_ack = staticmethod(_json.encode_ack)
    encode_sequence = staticmethod(_json.encode_sequence)

    def __repr__(self) -> str:
        return "<hub protocol json>"


class _MessagePackCodec:
    name = "messagepack"
    transfer_format = "Binary"
    binary = True
    ping = _mp.PING_FRAME
    close = _mp.CLOSE_FRAME

    def splitter(self, max_size: int) -> Splitter:
        return _mp.VarIntSplitter(max_size)

    parse = staticmethod(_mp.parse_body)
    parse_plain = staticmethod(_mp.parse_body_plain)
    parse_plain_many = staticmethod(_mp.parse_bodies_plain)
    encode_invocation = staticmethod(_mp.encode_invocation)
    encode_stream_invocation = staticmethod(_mp.encode_stream_invocation)
    encode_stream_item = staticmethod(_mp.encode_stream_item)
    encode_completion = staticmethod(_mp.encode_completion)
    encode_cancel = staticmethod(_mp.encode_cancel_invocation)
    encode_close = staticmethod(_mp.encode_close)
    encode_ack = staticmethod(_mp.encode_ack)
    encode_sequence = staticmethod(_mp.encode_sequence)

    def __repr__(self) -> str:
        return "<hub protocol messagepack>"


#: The JSON hub protocol.
JSON: Final[HubCodec] = _JsonCodec()
#: The MessagePack hub protocol (needs the ``txsignalr[messagepack]`` extra to be used).
MESSAGEPACK: Final[HubCodec] = _MessagePackCodec()

#: Wire name -> codec.
HUB_PROTOCOLS: Final[dict[str, HubCodec]] = {"json": JSON, "messagepack": MESSAGEPACK}


def hub_codec(name: str) -> HubCodec:
    """
    The codec for ``hub_protocol=``.

    :raises ValueError: for a name that is not ``"json"`` or ``"messagepack"``.
    :raises ImportError: for ``"messagepack"`` without its extra installed.
    """
    codec = HUB_PROTOCOLS.get(name)
    if codec is None:
        raise ValueError(f"hub_protocol must be 'json' or 'messagepack', not {name!r}")
    if codec is MESSAGEPACK:
        _mp.require()
    return codec

"""
The ASP.NET Core hub protocols as the test server speaks them: each connection gets one
:class:`ServerCodec` from its handshake.  Reading (framing and parsing what the client
sends) is the client library's own :class:`~txsignalr._core_codecs.HubCodec`; writing
follows Microsoft's .NET server (JSON records ``type`` first; MessagePack Invocations
of 6 elements and Closes of 3, :mod:`._core_wire`).  MessagePack is offered when its
library (``ormsgpack``, the ``txsignalr[messagepack]`` extra) is installed.

Reference: ``core.md`` §4, §5, §6.1, §6.2.
"""

from __future__ import annotations

from collections import abc
from typing import Any, Final, Protocol

from txsignalr import _core_codecs, _core_msgpack
from txsignalr._core_codecs import HubCodec, Splitter
from txsignalr._core_protocol import _NO_RESULT, HubMessage
from txsignalr.testing import _core_wire

__all__ = ["JSON", "MESSAGEPACK", "ServerCodec", "server_codecs"]


class ServerCodec(Protocol):
    """
    One hub protocol, server side.

    :ivar name: the handshake name (``"json"``, ``"messagepack"``).
    :ivar transfer_format: ``"Text"`` or ``"Binary"``.
    :ivar version: the highest protocol version accepted in the handshake.
    :ivar binary: whether what it writes goes in WebSocket binary frames.
    :ivar ping: the framed Ping the server sends as its keep-alive.
    """

    name: str
    version: int
    transfer_format: str
    binary: bool
    ping: bytes

    def splitter(self, max_size: int) -> Splitter:
        """Cuts what the client sends into messages of at most ``max_size`` bytes."""

    def parse(self, record: bytes) -> HubMessage | None:
        """
        :returns: the client's message, ``None`` for an unknown type.
        :raises ProtocolError: for a message that is not valid.
        """

    def invocation(
        self, target: str, arguments: abc.Sequence[Any], invocation_id: str | None = None
    ) -> bytes:
        """
        An Invocation of a client method (with ``invocation_id``: a client result).

        :raises TypeError: when an argument cannot be encoded.
        """

    def stream_item(self, invocation_id: str, item: Any) -> bytes:
        """A StreamItem.  :raises TypeError: when ``item`` cannot be encoded."""

    def completion(
        self, invocation_id: str, result: Any = _NO_RESULT, error: str | None = None
    ) -> bytes:
        """
        A Completion: with ``error``, with ``result``, or void.

        :raises TypeError: when ``result`` cannot be encoded.
        """

    def close(self, error: str | None = None, allow_reconnect: bool = False) -> bytes:
        """A Close."""

    def ack(self, sequence_id: int) -> bytes:
        """An Ack (stateful reconnect)."""

    def sequence(self, sequence_id: int) -> bytes:
        """A Sequence (stateful reconnect)."""


class _Reading:
    """Reading is the client library's codec's."""

    _reader: HubCodec

    def splitter(self, max_size: int) -> Splitter:
        return self._reader.splitter(max_size)

    def parse(self, record: bytes) -> HubMessage | None:
        return self._reader.parse(record)


class _JsonServerCodec(_Reading):
    name = "json"
    version = 2
    transfer_format = "Text"
    binary = False
    ping = _core_wire.PING
    _reader = _core_codecs.JSON

    invocation = staticmethod(_core_wire.invocation_record)
    stream_item = staticmethod(_core_wire.stream_item_record)
    completion = staticmethod(_core_wire.completion_record)
    close = staticmethod(_core_wire.close_record)
    ack = staticmethod(_core_codecs.JSON.encode_ack)
    sequence = staticmethod(_core_codecs.JSON.encode_sequence)

    def __repr__(self) -> str:
        return "<server hub protocol json>"


class _MessagePackServerCodec(_Reading):
    name = "messagepack"
    version = 2
    transfer_format = "Binary"
    binary = True
    ping = _core_msgpack.PING_FRAME
    _reader = _core_codecs.MESSAGEPACK

    invocation = staticmethod(_core_wire.msgpack_invocation)
    # the client's layouts of these are .NET's too
    stream_item = staticmethod(_core_msgpack.encode_stream_item)
    completion = staticmethod(_core_msgpack.encode_completion)
    close = staticmethod(_core_wire.msgpack_close)
    ack = staticmethod(_core_msgpack.encode_ack)
    sequence = staticmethod(_core_msgpack.encode_sequence)

    def __repr__(self) -> str:
        return "<server hub protocol messagepack>"


#: The JSON hub protocol.
JSON: Final[ServerCodec] = _JsonServerCodec()
#: The MessagePack hub protocol (usable when ormsgpack is installed).
MESSAGEPACK: Final[ServerCodec] = _MessagePackServerCodec()

_ALL: Final = {"json": JSON, "messagepack": MESSAGEPACK}
_JSON_ONLY: Final = {"json": JSON}


def server_codecs() -> dict[str, ServerCodec]:
    """:returns: handshake name -> codec, for every protocol this server can speak."""
    return _ALL if _core_msgpack.available() else _JSON_ONLY

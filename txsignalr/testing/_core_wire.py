"""
What the Core test server writes and reads, without I/O: hub message records in the
key order of Microsoft's .NET server (``type`` first), the two MessagePack messages
whose .NET layout differs from the client's (Invocation, Close), the negotiate answers (v0 like
ASP.NET Core 2.2, v1 with ``connectionToken``, a redirect, an error), the handshake
request checks with the server's error texts, and Server-Sent Events framing.

Reference: ``core.md`` §2.2, §3.2, §4, §6.1, §6.2; ``transcripts-core/aspnet-*``.
"""

from __future__ import annotations

from collections import abc
from typing import Any, Final

from txsignalr._core_msgpack import frame, pack
from txsignalr._core_protocol import _NO_RESULT
from txsignalr._protocol import _JSONError, dumps, loads

__all__ = [
    "CORE_TRANSPORTS",
    "HANDSHAKE_OK",
    "PING",
    "RS",
    "HandshakeFailed",
    "close_record",
    "completion_record",
    "invocation_record",
    "msgpack_close",
    "msgpack_invocation",
    "negotiate_body",
    "parse_handshake",
    "redirect_body",
    "sse_event",
    "stream_item_record",
]

RS: Final = b"\x1e"
#: The handshake answer: ``{}␞``.
HANDSHAKE_OK: Final = b"{}\x1e"
#: The server's keep-alive: ``{"type":6}␞``.
PING: Final = b'{"type":6}\x1e'

#: Wire name -> transfer formats, in the order the real server lists them.
CORE_TRANSPORTS: Final = {
    "WebSockets": ("Text", "Binary"),
    "ServerSentEvents": ("Text",),
    "LongPolling": ("Text", "Binary"),
}


def _record(message: dict[str, Any]) -> bytes:
    return dumps(message) + RS


def invocation_record(
    target: str, arguments: abc.Sequence[Any], invocation_id: str | None = None
) -> bytes:
    """``{"type":1[,"invocationId":…],"target":…,"arguments":[…]}␞`` (.NET order)."""
    message: dict[str, Any] = {"type": 1}
    if invocation_id is not None:
        message["invocationId"] = invocation_id
    message["target"] = target
    message["arguments"] = list(arguments)
    return _record(message)


def stream_item_record(invocation_id: str, item: Any) -> bytes:
    """``{"type":2,"invocationId":…,"item":…}␞``."""
    return _record({"type": 2, "invocationId": invocation_id, "item": item})


def completion_record(
    invocation_id: str, result: Any = _NO_RESULT, error: str | None = None
) -> bytes:
    """A Completion: with ``error``, with ``result`` (``None`` is ``null``), or void."""
    message: dict[str, Any] = {"type": 3, "invocationId": invocation_id}
    if error is not None:
        message["error"] = error
    elif result is not _NO_RESULT:
        message["result"] = result
    return _record(message)


def close_record(error: str | None = None, allow_reconnect: bool = False) -> bytes:
    """``{"type":7[,"error":…][,"allowReconnect":true]}␞`` (.NET writes the flag only when true)."""
    message: dict[str, Any] = {"type": 7}
    if error is not None:
        message["error"] = error
    if allow_reconnect:
        message["allowReconnect"] = True
    return _record(message)


def msgpack_invocation(
    target: str, arguments: abc.Sequence[Any], invocation_id: str | None = None
) -> bytes:
    """
    A MessagePack Invocation as .NET writes it: always 6 elements
    ``[1, {}, id or nil, target, arguments, []]`` (Microsoft's clients write 5 when
    there are no stream ids; ASP.NET Core 2.2, before streams, wrote 5 too).

    :raises TypeError: when an argument cannot be encoded.
    """
    return frame(pack([1, {}, invocation_id, target, list(arguments), []]))


def msgpack_close(error: str | None = None, allow_reconnect: bool = False) -> bytes:
    """A MessagePack Close as .NET writes it: ``[7, error or nil, allowReconnect]``."""
    return frame(pack([7, error or None, allow_reconnect]))


def negotiate_body(
    connection_id: str,
    connection_token: str | None,
    transports: abc.Iterable[str],
    stateful_reconnect: bool = False,
) -> bytes:
    """
    The negotiate answer: v1 (``negotiateVersion``, ``connectionId``,
    ``connectionToken``) when ``connection_token`` is given, else v0 like ASP.NET Core
    2.2 (``connectionId`` and ``availableTransports`` only).

    :param transports: wire names (``WebSockets``...), in preference order.
    :param stateful_reconnect: write ``"useStatefulReconnect":true`` (first, as
        ``NegotiateProtocol.WriteResponse`` does).
    """
    body: dict[str, Any] = {}
    if stateful_reconnect:
        body["useStatefulReconnect"] = True
    if connection_token is not None:
        body["negotiateVersion"] = 1
    body["connectionId"] = connection_id
    if connection_token is not None:
        body["connectionToken"] = connection_token
    body["availableTransports"] = [
        {"transport": name, "transferFormats": list(CORE_TRANSPORTS[name])} for name in transports
    ]
    return dumps(body)


def redirect_body(url: str, access_token: str | None) -> bytes:
    """An Azure SignalR Service style redirect: ``{"url":…,"accessToken":…}``."""
    body: dict[str, Any] = {"url": url}
    if access_token is not None:
        body["accessToken"] = access_token
    return dumps(body)


class HandshakeFailed(Exception):
    """The handshake request is refused; ``str(e)`` is the text for ``{"error":…}``."""


def parse_handshake(record: bytes, supported: abc.Mapping[str, int]) -> tuple[str, int]:
    """
    Check a handshake request (without its ``0x1E``).

    :param supported: the protocols the server speaks and the highest version of each.
    :returns: ``(protocol, version)``.
    :raises HandshakeFailed: with the .NET server's text.
    """
    try:
        obj = loads(record)
    except _JSONError:
        raise HandshakeFailed("An unexpected error occurred during connection handshake.") from None
    if type(obj) is not dict:
        raise HandshakeFailed("An unexpected error occurred during connection handshake.")
    protocol = obj.get("protocol")
    version = obj.get("version")
    if type(protocol) is not str or type(version) is not int:
        raise HandshakeFailed("An unexpected error occurred during connection handshake.")
    highest = supported.get(protocol)
    if highest is None:
        raise HandshakeFailed(f"The protocol '{protocol}' is not supported.")
    if not 1 <= version <= highest:
        raise HandshakeFailed(
            f"The server does not support version {version} of the '{protocol}' protocol."
        )
    return protocol, version


def handshake_error(text: str) -> bytes:
    """``{"error":…}␞``."""
    return _record({"error": text})


def sse_event(payload: bytes) -> bytes:
    """
    One Server-Sent Event as Kestrel writes it: each line of ``payload`` as
    ``data: <line>\\r\\n`` (a trailing ``\\r`` trimmed), then ``\\r\\n``.
    """
    lines = payload.split(b"\n")
    out = bytearray()
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        out += b"data: " + line + b"\r\n"
    out += b"\r\n"
    return bytes(out)

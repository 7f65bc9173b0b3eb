"""
Sans-I/O wire helpers of the test server: what the classic ASP.NET SignalR 2.x server
puts on the wire (negotiate documents, persistent responses, hub results, client
invocations, progress messages) and how it reads what clients send.

Nothing here touches a reactor; every function maps plain values to text and back.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

__all__ = [
    "MAX_PROTOCOL",
    "MIN_PROTOCOL",
    "Invocation",
    "client_invocation",
    "dumps",
    "encode_text",
    "hub_result",
    "negotiate_body",
    "parse_connection_data",
    "parse_invocation",
    "persistent_response",
    "progress_message",
    "resolve_protocol",
]

MIN_PROTOCOL = (1, 2)
MAX_PROTOCOL = (2, 0)

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+)(?:\.(\d+))?)?\s*$")


def dumps(value: Any) -> str:
    """
    Serialise like Json.NET with default settings: compact, UTF-8 text kept as is,
    doubles always with a fractional part (``4.0``).

    :param value: any JSON value.
    :returns: the JSON text.
    :raises TypeError: when the value is not JSON serialisable.
    :raises ValueError: for NaN/infinity, which Json.NET would not write as JSON numbers.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_text(text: str) -> bytes:
    """
    Encode text as UTF-8 the way .NET's ``Encoding.UTF8`` does: a lone UTF-16 surrogate
    (valid in JSON from JavaScript, ``"\\ud83d"``) becomes U+FFFD instead of failing,
    while a surrogate pair split over two code points is still joined.

    :param text: any Python string.
    :returns: valid UTF-8.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        utf16 = text.encode("utf-16-le", "surrogatepass")
        return utf16.decode("utf-16-le", "replace").encode("utf-8")


def _loads(text: str) -> Any:
    """``json.loads`` that reports too deeply nested input as malformed."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def resolve_protocol(client_protocol: str | None) -> tuple[str, tuple[int, ...]]:
    """
    Resolve the protocol version the way ``ProtocolResolver.Resolve`` does: parse as a
    .NET ``Version`` (two to four numeric parts), clamp to [1.2, 2.0]; a missing or
    unparsable value gives 1.2.

    :param client_protocol: the ``clientProtocol`` query value, if any.
    :returns: the version text for the negotiate document and the version as a tuple.
    """
    match = _VERSION.match(client_protocol or "")
    if match is None:
        return "1.2", MIN_PROTOCOL
    parts = tuple(int(p) for p in match.groups() if p is not None)
    if parts > MAX_PROTOCOL:
        return "2.0", MAX_PROTOCOL
    if parts < MIN_PROTOCOL:
        return "1.2", MIN_PROTOCOL
    return ".".join(str(p) for p in parts), parts


def negotiate_body(
    *,
    url: str,
    connection_token: str,
    connection_id: str,
    keepalive_timeout: float | None,
    disconnect_timeout: float,
    connection_timeout: float,
    try_websockets: bool,
    protocol_version: str,
    transport_connect_timeout: float,
    long_poll_delay: float,
) -> bytes:
    """
    Build the negotiate document, properties in the order the 2.1.2+ server writes them.

    :returns: the UTF-8 JSON body.
    """
    document = {
        "Url": url,
        "ConnectionToken": connection_token,
        "ConnectionId": connection_id,
        "KeepAliveTimeout": None if keepalive_timeout is None else float(keepalive_timeout),
        "DisconnectTimeout": float(disconnect_timeout),
        "ConnectionTimeout": float(connection_timeout),
        "TryWebSockets": try_websockets,
        "ProtocolVersion": protocol_version,
        "TransportConnectTimeout": float(transport_connect_timeout),
        "LongPollDelay": float(long_poll_delay),
    }
    return dumps(document).encode("utf-8")


def parse_connection_data(text: str | None) -> list[str]:
    """
    Read the ``connectionData`` query value: a JSON array of ``{"name": hub}`` objects,
    the key matched case-insensitively.

    :param text: the decoded query value, or ``None`` when absent.
    :returns: the hub names as sent (possibly empty).
    :raises ValueError: when the value is not such an array (or nested too deeply).
    """
    if text is None or text == "":
        return []
    data = _loads(text)
    if not isinstance(data, list):
        raise ValueError("connectionData is not a JSON array")
    names: list[str] = []
    for item in data:
        if not isinstance(item, dict):
            raise ValueError("connectionData element is not an object")
        found = [v for k, v in item.items() if isinstance(k, str) and k.lower() == "name"]
        if len(found) != 1 or not isinstance(found[0], str):
            raise ValueError("connectionData element has no name")
        names.append(found[0])
    return names


def persistent_response(
    cursor: str,
    messages: list[str],
    *,
    initialized: bool = False,
    groups_token: str | None = None,
    long_poll_delay_ms: int | None = None,
) -> str:
    """
    Build a persistent response frame with the server's key order ``C,S,T,G,L,M``.

    :param cursor: the message id (written raw, as the server does; our cursors need
        no escaping).
    :param messages: the raw JSON text of each message, in order.
    :param initialized: add ``"S":1`` (the init frame).
    :param groups_token: add ``"G"`` with this groups token.
    :param long_poll_delay_ms: add ``"L"`` (long polling with a ``LongPollDelay``).
    :returns: the frame text.
    """
    parts = ['{"C":"', cursor, '"']
    if initialized:
        parts.append(',"S":1')
    if groups_token is not None:
        parts.append(',"G":')
        parts.append(dumps(groups_token))
    if long_poll_delay_ms is not None:
        parts.append(',"L":')
        parts.append(str(long_poll_delay_ms))
    parts.append(',"M":[')
    parts.append(",".join(messages))
    parts.append("]}")
    return "".join(parts)


def hub_result(
    invocation_id: str,
    *,
    result: Any = None,
    state: dict[str, Any] | None = None,
    error: str | None = None,
    is_hub_exception: bool = False,
    error_data: Any = None,
    stack_trace: str | None = None,
) -> str:
    """
    Build a hub result (``HubResponse``), keys in the order ``S,R,I,P,H,E,T,D`` with
    nulls omitted; ``R`` is omitted for ``None`` (void and null returns look alike).

    :raises TypeError: when the result, state or error data are not JSON serialisable.
    """
    document: dict[str, Any] = {}
    if state:
        document["S"] = state
    if result is not None:
        document["R"] = result
    document["I"] = invocation_id
    if is_hub_exception:
        document["H"] = True
    if error is not None:
        document["E"] = error
    if stack_trace is not None:
        document["T"] = stack_trace
    if is_hub_exception and error_data is not None:
        document["D"] = error_data
    return dumps(document)


def client_invocation(
    hub: str, method: str, args: tuple[Any, ...] | list[Any], state: dict[str, Any] | None = None
) -> str:
    """
    Build a client method call ``{"H","M","A"[,"S"]}`` as carried inside ``M``.

    :param hub: the hub's server spelling.
    :param state: changed caller state, only for calls on the caller.
    :raises TypeError: when an argument is not JSON serialisable.
    """
    document: dict[str, Any] = {"H": hub, "M": method, "A": list(args)}
    if state:
        document["S"] = state
    return dumps(document)


def progress_message(invocation_id: str, value: Any) -> str:
    """
    Build a progress message ``{"I":"P|id","P":{"I":"id","D":value}}``.

    :raises TypeError: when the value is not JSON serialisable.
    """
    return dumps({"I": "P|" + invocation_id, "P": {"I": invocation_id, "D": value}})


@attrs.frozen
class Invocation:
    """
    A hub invocation sent by a client.

    :ivar hub: the hub name as the client spelled it.
    :ivar method: the method name as the client spelled it.
    :ivar args: the raw arguments.
    :ivar invocation_id: the id, always as a string (clients may send numbers).
    :ivar state: the caller state sent in ``S`` (empty when absent).
    """

    hub: str
    method: str
    args: tuple[Any, ...]
    invocation_id: str
    state: dict[str, Any]


def _id_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError("invocation id missing or not a number/string")
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise ValueError("invocation id is not a number or string")


def parse_invocation(text: str) -> Invocation:
    """
    Parse a client hub invocation ``{"H","M","A","I"[,"S"]}``.

    :raises ValueError: when the text is not a JSON object of that shape (or is nested
        too deeply to parse).
    """
    data = _loads(text)
    if not isinstance(data, dict):
        raise ValueError("invocation is not a JSON object")
    hub = data.get("H")
    method = data.get("M")
    if not isinstance(hub, str) or not isinstance(method, str):
        raise ValueError("invocation has no hub or method name")
    args = data.get("A", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise ValueError("invocation arguments are not an array")
    state = data.get("S") or {}
    if not isinstance(state, dict):
        raise ValueError("invocation state is not an object")
    return Invocation(hub, method, tuple(args), _id_text(data.get("I")), dict(state))

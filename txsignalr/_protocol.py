"""
The classic ASP.NET SignalR 2.x wire protocol, without I/O.

Everything here works on plain values: URLs are built from strings, frames are parsed
from bytes into immutable message values, and invocations are encoded to bytes.  No
reactor, no sockets; the Twisted adapters in :mod:`txsignalr._connection` and
:mod:`txsignalr._websocket` feed this module and act on what it returns.

Reference: ``classic.md`` §1-§5 and the transcripts recorded from a real 2.4.3 server.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import attrs

from txsignalr.errors import InvalidURL, NegotiationError, ProtocolError

_orjson: Any
try:  # orjson is optional: it makes the receive path a good deal faster.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _orjson = None

__all__ = [
    "ALL_TRANSPORTS",
    "CLIENT_PROTOCOL",
    "KEEPALIVE",
    "ClientInvocation",
    "Endpoints",
    "Frame",
    "HubResult",
    "KeepAlive",
    "MalformedMessage",
    "NegotiateResponse",
    "PersistentResponse",
    "Progress",
    "RawMessage",
    "ServerMessage",
    "Transport",
    "decode_frame",
    "dumps",
    "encode_invocation",
    "frame_from_json",
    "loads",
    "message_from_json",
    "parse_frame",
    "parse_negotiate",
    "parse_response",
    "redact_url",
    "split_url",
    "transport_order",
    "websocket_url",
]

#: The protocol version this client announces.  1.5 gives the delayed ``/start`` and
#: hub progress, and is what the 2.2/2.3 clients sent; every 2.2+ server answers 1.5.
CLIENT_PROTOCOL: Final = "1.5"

#: Oldest and newest server protocol versions accepted in a negotiate answer
#: (the .NET 2.4.3 client accepts the same range).
MIN_SERVER_PROTOCOL: Final = (1, 4)
MAX_SERVER_PROTOCOL: Final = (2, 1)


# --------------------------------------------------------------------------- JSON

if _orjson is not None:
    _orjson_loads = _orjson.loads
    _orjson_dumps = _orjson.dumps

    def loads(data: bytes | str) -> Any:
        """Decode JSON (orjson when installed)."""
        return _orjson_loads(data)

    def dumps(value: Any) -> bytes:
        """Encode compact JSON as UTF-8 bytes (orjson when installed)."""
        encoded: bytes = _orjson_dumps(value)
        return encoded

    _JSONError: tuple[type[Exception], ...] = (_orjson.JSONDecodeError, ValueError, TypeError)
else:  # pragma: no cover - exercised where orjson is absent
    _json_decoder = json.JSONDecoder()
    _json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def loads(data: bytes | str) -> Any:
        """Decode JSON (orjson when installed)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8")
        return _json_decoder.decode(data.strip())

    def dumps(value: Any) -> bytes:
        """Encode compact JSON as UTF-8 bytes (orjson when installed)."""
        return _json_encoder.encode(value).encode("utf-8")

    _JSONError = (ValueError, TypeError)


# ------------------------------------------------------------------ message values


class Transport(str, enum.Enum):
    """
    The transports, by the names they have on the wire (the ``transport`` query
    parameter).  ``Transport("webSockets")`` and ``Transport.web_sockets`` are the same.
    """

    web_sockets = "webSockets"
    server_sent_events = "serverSentEvents"
    long_polling = "longPolling"


#: Every transport, in the order the official clients try them.
ALL_TRANSPORTS: Final = (
    Transport.web_sockets,
    Transport.server_sent_events,
    Transport.long_polling,
)


def transport_order(names: Iterable[str | Transport]) -> tuple[Transport, ...]:
    """
    Read a preference order of transports.

    :param names: wire names (``"webSockets"``, ``"serverSentEvents"``, ``"longPolling"``,
        matched case-insensitively) or :class:`Transport` values, most preferred first.
    :returns: the transports, duplicates removed.
    :raises ValueError: for an unknown name or an empty list.
    """
    if isinstance(names, (str, Transport)):
        names = [names]
    by_name = {t.value.lower(): t for t in Transport}
    order: list[Transport] = []
    for name in names:
        transport = name if isinstance(name, Transport) else by_name.get(str(name).lower())
        if transport is None:
            known = ", ".join(t.value for t in Transport)
            raise ValueError(f"unknown transport {name!r}: use {known}")
        if transport not in order:
            order.append(transport)
    if not order:
        raise ValueError("transports must name at least one transport")
    return tuple(order)


@attrs.frozen
class KeepAlive:
    """The ``{}`` keep-alive frame: activity, but no message."""


#: The one keep-alive value; ``parse_frame`` returns this instance.
KEEPALIVE: Final = KeepAlive()


@attrs.frozen
class ClientInvocation:
    """
    A server-to-client method call found inside a persistent response's ``M``.

    :ivar hub: the hub name as the server spells it (match case-insensitively).
    :ivar method: the client method name as the server spells it.
    :ivar args: the arguments.
    :ivar state: caller state changes (``S``) to merge into the hub proxy, or ``None``.
    """

    hub: str
    method: str
    args: tuple[Any, ...]
    state: Mapping[str, Any] | None = None


@attrs.frozen
class Progress:
    """
    A progress report for a pending invocation (``{"I":"P|n","P":{"I":"n","D":…}}``).

    :ivar invocation_id: the id of the invocation it belongs to (string).
    :ivar data: the reported value.
    """

    invocation_id: str
    data: Any


@attrs.frozen
class HubResult:
    """
    The outcome of a hub method invocation (``{"I":…,"R":…}`` or with ``E``).

    :ivar invocation_id: the invocation id, always a string.
    :ivar result: the return value (``None`` for void or null returns).
    :ivar has_result: whether ``R`` was present.
    :ivar error: the error message, or ``None`` on success.
    :ivar is_hub_exception: whether the server raised a ``HubException`` (``H``).
    :ivar error_data: the ``HubException`` error data (``D``).
    :ivar stack_trace: the server stack trace (``T``), when sent.
    :ivar state: changed hub state keys (``S``) to merge into the proxy, or ``None``.
    """

    invocation_id: str
    result: Any = None
    has_result: bool = False
    error: str | None = None
    is_hub_exception: bool = False
    error_data: Any = None
    stack_trace: str | None = None
    state: Mapping[str, Any] | None = None


@attrs.frozen
class RawMessage:
    """A value inside ``M`` that is not a hub message (raw PersistentConnection data)."""

    value: Any


@attrs.frozen
class MalformedMessage:
    """
    An element of ``M`` that looks like a hub message but is broken (say, arguments
    that are not an array).  The rest of the frame, its cursor included, still counts;
    the connection reports this one as a :class:`~txsignalr.ProtocolError`.
    """

    value: Any
    error: ProtocolError


ServerMessage = ClientInvocation | Progress | HubResult | RawMessage | MalformedMessage


@attrs.frozen
class PersistentResponse:
    """
    A ``{"C":…,"M":[…]}`` frame from the receive channel.

    :ivar cursor: the message id to resume from (``C``), or ``None`` when absent.
    :ivar messages: the messages (``M``), in order.
    :ivar initialized: ``S:1``, the init frame that triggers ``/start``.
    :ivar reconnect: ``T:1``, the server asks the client to reconnect.
    :ivar groups_token: the new groups token (``G``), or ``None``.
    :ivar long_poll_delay: ``L`` in milliseconds, or ``None``.
    :ivar disconnect: ``D:1`` (protocol 1.3 and older), the server disconnected us.
    :ivar error: ``E``, a global server error that ends the connection.
    """

    cursor: str | None
    messages: tuple[ServerMessage, ...] = ()
    initialized: bool = False
    reconnect: bool = False
    groups_token: str | None = None
    long_poll_delay: int | None = None
    disconnect: bool = False
    error: str | None = None


Frame = KeepAlive | PersistentResponse | HubResult


# ------------------------------------------------------------------ frame parsing


def _invocation_id(value: Any, frame: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError("invocation id 'I' is neither a string nor an integer", frame)


def _optional_state(value: Any, frame: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("state 'S' is not a JSON object", frame)
    return value


def _hub_result(obj: dict[str, Any]) -> HubResult:
    error = obj.get("E")
    if error is not None and not isinstance(error, str):
        error = str(error)
    trace = obj.get("T")
    if trace is not None and not isinstance(trace, str):
        trace = str(trace)
    return HubResult(
        invocation_id=_invocation_id(obj["I"], obj),
        result=obj.get("R"),
        has_result="R" in obj,
        error=error,
        is_hub_exception=obj.get("H") is True,
        error_data=obj.get("D"),
        stack_trace=trace,
        state=_optional_state(obj.get("S"), obj),
    )


def _message(item: Any) -> ServerMessage:
    if type(item) is not dict:
        return RawMessage(item)
    if "P" in item:
        progress = item["P"]
        if type(progress) is not dict or "I" not in progress:
            raise ProtocolError("progress message without a 'P.I' invocation id", item)
        return Progress(_invocation_id(progress["I"], item), progress.get("D"))
    if "I" in item:
        return _hub_result(item)
    hub = item.get("H")
    method = item.get("M")
    if type(hub) is str and type(method) is str:
        args = item.get("A")
        if args is None:
            args_t: tuple[Any, ...] = ()
        elif type(args) is list:
            args_t = tuple(args)
        else:
            raise ProtocolError("client method call whose arguments 'A' are not an array", item)
        state = item.get("S")
        if state is not None and type(state) is not dict:
            raise ProtocolError("state 'S' is not a JSON object", item)
        return ClientInvocation(hub, method, args_t, state)
    return RawMessage(item)


def message_from_json(item: Any) -> ServerMessage:
    """One element of ``M`` as a message value; broken ones as :class:`MalformedMessage`."""
    try:
        return _message(item)
    except ProtocolError as e:
        return MalformedMessage(item, e)


#: what the receive path decodes with: orjson itself, without the wrapper's call
_loads: Any = _orjson_loads if _orjson is not None else loads


def parse_frame(data: bytes | str) -> Frame:
    """
    Parse one frame from the receive channel.

    :param data: the frame: a WebSocket text message, an SSE ``data:`` payload or a
        long-poll body (leading whitespace is tolerated).
    :returns: :data:`KEEPALIVE`, a :class:`PersistentResponse` or, for results written
        straight to the socket, a :class:`HubResult`.
    :raises ProtocolError: when the frame is not JSON or not a SignalR frame.
    """
    return frame_from_json(decode_frame(data), data)


def decode_frame(data: bytes | str) -> Any:
    """
    Decode a frame's JSON.

    :raises ProtocolError: when it is not valid JSON.
    """
    try:
        return _loads(data)
    except _JSONError as e:
        raise not_json(e, data) from None


def not_json(error: Exception, data: bytes | str) -> ProtocolError:
    """The error for received bytes the JSON decoder refused with ``error``."""
    return ProtocolError(f"frame is not valid JSON ({error})", _text(data))


def frame_from_json(obj: Any, data: bytes | str) -> Frame:
    """
    Build the frame value from a frame's decoded JSON (see :func:`parse_frame`).

    :param obj: the decoded JSON.
    :param data: the raw frame, for error messages.
    :raises ProtocolError: when it is not a SignalR frame.
    """
    if type(obj) is not dict:
        raise ProtocolError("frame is not a JSON object", _text(data))
    if not obj:
        return KEEPALIVE
    try:
        if "I" in obj:
            return _hub_result(obj)
        messages = obj.get("M")
        if messages is None:
            parsed: tuple[ServerMessage, ...] = ()
        elif type(messages) is list:
            # A broken element is kept as MalformedMessage: dropping the whole frame
            # (and its cursor) would lose the good messages in it for good.
            parsed = tuple([message_from_json(m) for m in messages])
        else:
            raise ProtocolError("'M' is not an array", obj)
        cursor = obj.get("C")
        if cursor is not None and type(cursor) is not str:
            raise ProtocolError("cursor 'C' is not a string", obj)
        groups = obj.get("G")
        if groups is not None and type(groups) is not str:
            raise ProtocolError("groups token 'G' is not a string", obj)
        error = obj.get("E")
        delay = obj.get("L")
        if delay is not None and (type(delay) is not int):
            raise ProtocolError("long poll delay 'L' is not an integer", obj)
        return PersistentResponse(
            cursor=cursor,
            messages=parsed,
            initialized=obj.get("S") == 1,
            reconnect=obj.get("T") == 1,
            groups_token=groups,
            long_poll_delay=delay,
            disconnect=obj.get("D") == 1,
            error=None if error is None else str(error),
        )
    except ProtocolError as e:
        if e.data is not obj:
            raise
        raise ProtocolError(e.message, _text(data)) from None


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    return bytes(data).decode("utf-8", "replace")


# ---------------------------------------------------------------- encoding


def encode_invocation(
    hub: str,
    method: str,
    args: Sequence[Any],
    invocation_id: int | str,
    state: Mapping[str, Any] | None = None,
) -> bytes:
    """
    Encode a client-to-server hub invocation.

    :param hub: the hub name.
    :param method: the server method name.
    :param args: the arguments (any JSON values).
    :param invocation_id: the id the result will carry back (as a string).
    :param state: the hub proxy state, sent only when non-empty.
    :returns: the UTF-8 JSON text, ``{"H":…,"M":…,"A":[…],"I":…[,"S":{…}]}``.
    :raises TypeError: when an argument is not JSON-serialisable.
    """
    message: dict[str, Any] = {"H": hub, "M": method, "A": list(args), "I": invocation_id}
    if state:
        message["S"] = dict(state)
    return dumps(message)


# ---------------------------------------------------------------- negotiate


def _parse_version(text: str) -> tuple[int, int] | None:
    parts = text.split(".")
    if len(parts) < 2:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def _seconds(obj: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NegotiationError(f"negotiate field {key!r} is not a number: {value!r}")
    if value < 0:
        raise NegotiationError(f"negotiate field {key!r} is negative: {value!r}")
    return float(value)


@attrs.frozen(repr=False)
class NegotiateResponse:
    """
    The server's answer to ``/negotiate``.  Times are in seconds.

    The connection token is a secret: it is left out of ``repr()``.
    """

    url: str
    connection_token: str
    connection_id: str
    keep_alive_timeout: float | None
    disconnect_timeout: float
    connection_timeout: float
    try_websockets: bool
    protocol_version: str
    transport_connect_timeout: float
    long_poll_delay: float

    def __repr__(self) -> str:
        return (
            f"NegotiateResponse(connection_id={self.connection_id!r}, "
            f"protocol_version={self.protocol_version!r}, "
            f"keep_alive_timeout={self.keep_alive_timeout!r}, "
            f"disconnect_timeout={self.disconnect_timeout!r}, "
            f"try_websockets={self.try_websockets!r}, connection_token=<redacted>)"
        )


class ClassicRedirect(NegotiationError):
    """
    A classic negotiate answered with a redirect (Azure SignalR Service): negotiate
    again at ``url``, with ``access_token`` as the bearer token.
    """

    def __init__(self, url: str, access_token: str | None, status: int, body: bytes) -> None:
        super().__init__(
            "the server answered negotiate with a redirect (Azure SignalR Service)", status, body
        )
        self.url = url
        self.access_token = access_token


def parse_negotiate(body: bytes, status: int = 200) -> NegotiateResponse:
    """
    Parse and check a classic negotiate answer.

    :param body: the response body.
    :param status: the HTTP status, for error messages.
    :returns: the negotiated connection parameters.
    :raises ClassicRedirect: for a redirect (a :class:`NegotiationError` too).
    :raises NegotiationError: when the body is not a usable classic negotiate answer:
        not JSON, an ASP.NET Core server, an error document, a missing field, or a
        protocol version outside 1.4-2.1.
    """
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise NegotiationError(
            "negotiate response is not JSON (is the URL a SignalR endpoint?)", status, body
        ) from None
    if not isinstance(obj, dict):
        raise NegotiationError("negotiate response is not a JSON object", status, body)
    if "ConnectionToken" not in obj and (
        "availableTransports" in obj or "negotiateVersion" in obj or "connectionId" in obj
    ):
        raise NegotiationError(
            "Detected a connection attempt to an ASP.NET Core SignalR server. This client "
            "only supports connecting to an ASP.NET SignalR (classic 2.x) server.",
            status,
            body,
        )
    if obj.get("Error") is not None:
        raise NegotiationError(
            f"Error message received from the server: '{obj['Error']}'.", status, body
        )
    if obj.get("RedirectUrl") is not None:
        url = obj["RedirectUrl"]
        token = obj.get("AccessToken")
        if (
            not isinstance(url, str)
            or not url
            or (token is not None and not isinstance(token, str))
        ):
            raise NegotiationError("negotiate answered an unusable redirect", status, body)
        raise ClassicRedirect(url, token, status, body)
    version = obj.get("ProtocolVersion")
    parsed = _parse_version(version) if isinstance(version, str) else None
    if parsed is None or not (MIN_SERVER_PROTOCOL <= parsed <= MAX_SERVER_PROTOCOL):
        raise NegotiationError(
            "You are using a version of the client that isn't compatible with the server. "
            f"Client version {CLIENT_PROTOCOL}, server version {version}.",
            status,
            body,
        )
    for key in ("ConnectionToken", "ConnectionId"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise NegotiationError(f"negotiate response has no {key}", status, body)
    url = obj.get("Url")
    try:
        return NegotiateResponse(
            url=url if isinstance(url, str) else "",
            connection_token=obj["ConnectionToken"],
            connection_id=obj["ConnectionId"],
            keep_alive_timeout=_seconds(obj, "KeepAliveTimeout", None),
            disconnect_timeout=_seconds(obj, "DisconnectTimeout", 30.0) or 30.0,
            connection_timeout=_seconds(obj, "ConnectionTimeout", 110.0) or 110.0,
            try_websockets=obj.get("TryWebSockets", True) is not False,
            protocol_version=version,  # type: ignore[arg-type]
            transport_connect_timeout=_seconds(obj, "TransportConnectTimeout", 5.0) or 5.0,
            long_poll_delay=_seconds(obj, "LongPollDelay", 0.0) or 0.0,
        )
    except NegotiationError as e:
        raise NegotiationError(e.message, status, body) from None


def parse_response(body: bytes) -> str | None:
    """
    Read the ``Response`` word of a ``/start`` (``{ "Response": "started" }``) or
    ``/ping`` (``{ "Response": "pong" }``) answer.

    :returns: the word, or ``None`` when the body is not such a document.
    """
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    word = obj.get("Response") if isinstance(obj, dict) else None
    return word if isinstance(word, str) else None


# ---------------------------------------------------------------- URLs


def _enc(value: str) -> str:
    """Percent-encode a query value exactly once (like ``encodeURIComponent``)."""
    return quote(value, safe="")


def connection_data(hub_names: Iterable[str]) -> str:
    """
    The ``connectionData`` JSON for a set of hubs: ``[{"name":"c3"},…]``.

    :param hub_names: hub names, in the order the proxies were created.
    """
    return json.dumps([{"name": name} for name in hub_names], separators=(",", ":"))


@attrs.frozen
class Endpoints:
    """
    Builds every classic SignalR URL from the user's base URL.

    URLs are built from the base URL the user gave, never from negotiate's ``Url``
    field, which is wrong behind path-rewriting proxies.  The user's own query
    parameters (from the base URL and ``query``) are kept on every request.

    :ivar base: the base URL without query, e.g. ``https://host/signalr``.
    :ivar user_query: the user's query parameters, already encoded as ``k=v`` pairs.
    :ivar connection_data: the encoded ``connectionData`` value, or ``None`` for a raw
        persistent connection.
    """

    base: str
    user_query: tuple[str, ...]
    connection_data: str | None

    @classmethod
    def from_url(
        cls,
        url: str,
        hub_names: Iterable[str] | None = None,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> Endpoints:
        """
        :param url: the connection URL, ``http(s)://host[:port]/path`` (``ws``/``wss``
            are accepted and mapped to ``http``/``https``); a query string is kept.
        :param hub_names: the hubs for ``connectionData``; ``None`` for no hubs.
        :param query: extra query parameters sent on every request.
        :raises InvalidURL: when the URL is not an absolute http(s) URL, or a query
            parameter reuses a name SignalR reserves.
        """
        scheme, netloc, path, url_query = split_url(url)
        base = urlunsplit((scheme, netloc, path.rstrip("/"), "", ""))
        pairs: list[tuple[str, str]] = parse_qsl(url_query, keep_blank_values=True)
        if query is not None:
            items = query.items() if isinstance(query, Mapping) else query
            pairs.extend((str(k), str(v)) for k, v in items)
        for key, _ in pairs:
            if key in _RESERVED:
                raise InvalidURL(f"query parameter {key!r} is reserved by the SignalR protocol")
        names = None if hub_names is None else list(hub_names)
        return cls(
            base=base,
            user_query=tuple(f"{_enc(k)}={_enc(v)}" for k, v in pairs),
            connection_data=None if names is None else _enc(connection_data(names)),
        )

    def _query(self, *pairs: tuple[str, str | None]) -> str:
        out = [f"{k}={_enc(v)}" for k, v in pairs if v is not None]
        if self.connection_data is not None:
            # Kept after the fixed parameters as the official clients do.
            out.insert(min(len(out), 2), f"connectionData={self.connection_data}")
        out.extend(self.user_query)
        return "&".join(out)

    def negotiate(self) -> str:
        """``GET {base}/negotiate?clientProtocol=…&connectionData=…``."""
        return f"{self.base}/negotiate?{self._query(('clientProtocol', CLIENT_PROTOCOL))}"

    def _transport_url(
        self,
        command: str,
        transport: Transport,
        token: str,
        *extra: tuple[str, str | None],
    ) -> str:
        query = self._query(
            ("clientProtocol", CLIENT_PROTOCOL),
            ("transport", transport.value),
            ("connectionToken", token),
            *extra,
        )
        return f"{self.base}/{command}?{query}"

    def connect(
        self,
        transport: Transport,
        token: str,
        tid: int | None = None,
    ) -> str:
        """The ``/connect`` URL (http form; see :func:`websocket_url`)."""
        return self._transport_url(
            "connect", transport, token, ("tid", None if tid is None else str(tid))
        )

    def reconnect(
        self,
        transport: Transport,
        token: str,
        message_id: str | None,
        groups_token: str | None,
        tid: int | None = None,
    ) -> str:
        """The ``/reconnect`` URL carrying the last cursor and groups token."""
        return self._transport_url(
            "reconnect",
            transport,
            token,
            ("messageId", message_id),
            ("groupsToken", groups_token),
            ("tid", None if tid is None else str(tid)),
        )

    def poll(
        self,
        transport: Transport,
        token: str,
        message_id: str | None,
        groups_token: str | None,
    ) -> str:
        """
        The long-polling ``/poll`` URL, the cursor and groups token in the query string
        (read by every 2.1+ server, unlike the form body that only 2.2+ reads).
        """
        return self._transport_url(
            "poll", transport, token, ("messageId", message_id), ("groupsToken", groups_token)
        )

    def send(self, transport: Transport, token: str) -> str:
        """``POST {base}/send?…``, how the HTTP transports send."""
        return self._transport_url("send", transport, token)

    def start(self, transport: Transport, token: str) -> str:
        """``GET {base}/start?…``, sent after the init frame."""
        return self._transport_url("start", transport, token)

    def abort(self, transport: Transport, token: str) -> str:
        """``POST {base}/abort?…``, sent on a deliberate stop."""
        return self._transport_url("abort", transport, token)

    def ping(self) -> str:
        """``GET {base}/ping``."""
        if self.user_query:
            return f"{self.base}/ping?{'&'.join(self.user_query)}"
        return f"{self.base}/ping"


_RESERVED: Final = frozenset(
    {
        "clientProtocol",
        "transport",
        "connectionToken",
        "connectionData",
        "messageId",
        "groupsToken",
        "tid",
        "frameId",
        "callback",
    }
)


def split_url(url: str) -> tuple[str, str, str, str]:
    """
    Check a connection URL (both families) and split it.

    :returns: ``(scheme, netloc, path, query)``, with ``ws``/``wss`` mapped to
        ``http``/``https``.
    :raises InvalidURL: when it is not an absolute http(s) URL without a fragment.
    """
    if not isinstance(url, str):
        raise InvalidURL(f"connection URL must be a string, not {type(url).__name__}")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise InvalidURL(f"invalid connection URL {redact_url(url)!r}: {e}") from None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https"):
        raise InvalidURL(f"connection URL must start with http:// or https://: {redact_url(url)!r}")
    if not parts.hostname:
        raise InvalidURL(f"connection URL has no host: {redact_url(url)!r}")
    if parts.fragment:
        raise InvalidURL(f"connection URL must not have a fragment: {redact_url(url)!r}")
    return scheme, parts.netloc, parts.path, parts.query


def websocket_url(http_url: str) -> str:
    """Map an ``http(s)://`` URL to the matching ``ws(s)://`` URL."""
    if http_url.startswith("https:"):
        return "wss:" + http_url[6:]
    if http_url.startswith("http:"):
        return "ws:" + http_url[5:]
    return http_url


def redact_url(url: str) -> str:
    """The URL without user info and with its query values hidden, for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    keys = [p.split("=", 1)[0] for p in parts.query.split("&") if p]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(f"{k}=…" for k in keys), ""))

"""
The classic ASP.NET SignalR 2.x family session, without I/O: every URL of one
connection, the connection token, the cursor (``messageId``) and groups token, what the
transports need to open and poll, and the parsing of what they receive (with the fast
path for plain ``{"C","M"}`` frames).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from txsignalr._protocol import (
    Endpoints,
    Frame,
    NegotiateResponse,
    PersistentResponse,
    Transport,
    decode_frame,
    encode_invocation,
    frame_from_json,
    parse_negotiate,
)
from txsignalr._transport import DEFAULT_MAX_RECEIVE_SIZE, TransportRequest
from txsignalr.errors import InvalidURL, NegotiationError, ProtocolError

__all__ = ["ClassicSession"]

_FORM = "application/x-www-form-urlencoded; charset=UTF-8"
#: How long past ConnectionTimeout a held poll may take before it counts as lost
#: (Microsoft's jQuery client allows 10 s).
POLL_MARGIN = 10.0


def _form_body(payload: bytes) -> tuple[bytes, str]:
    """The ``data=<payload>`` form body of a classic ``/send``."""
    return urlencode({"data": payload.decode("utf-8")}).encode("ascii"), _FORM


class ClassicSession:
    """
    One classic connection's protocol state.

    :param url: the user's connection URL.
    :param query: the user's extra query parameters.
    :param max_receive_size: the most bytes one received message may hold.
    """

    def __init__(
        self,
        url: str,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        max_receive_size: int = DEFAULT_MAX_RECEIVE_SIZE,
    ) -> None:
        self._url = url
        self._start_url = url
        #: the most bytes one received message may hold
        self.max_receive_size = max_receive_size
        self._query = query
        # Validate now so a bad URL fails at construction with InvalidURL.
        self.endpoints = Endpoints.from_url(url, [], query)
        self.negotiated: NegotiateResponse | None = None
        self.token: str | None = None
        self.message_id: str | None = None
        self.groups_token: str | None = None
        self._poll_delay_ms: int | None = None
        self._tid = itertools.cycle(range(11))

    # -- negotiate

    def negotiate_url(self, hub_names: Iterable[str]) -> str:
        """Start a new session for these hubs; the negotiate URL."""
        self.endpoints = Endpoints.from_url(self._url, list(hub_names), self._query)
        return self.endpoints.negotiate()

    def restart(self) -> None:
        """A new start() begins at the user's URL; redirects are forgotten."""
        self._url = self._start_url

    def follow_redirect(self, url: str) -> None:
        """
        Negotiate (and connect) at a redirect's URL from now on; its query string is
        kept on every request, as the official clients do.

        :raises NegotiationError: when the URL is unusable.
        """
        try:
            Endpoints.from_url(url, [], self._query)
        except InvalidURL as e:
            raise NegotiationError(f"negotiate redirected to an unusable URL: {e}") from None
        self._url = url

    def negotiated_answer(self, status: int, body: bytes) -> NegotiateResponse:
        """
        Read the negotiate answer and adopt its token; the cursor starts afresh.

        :raises NegotiationError: when the answer cannot be used.
        """
        if status == 405:
            # ASP.NET Core's negotiate is a POST; it answers a GET with 405.
            raise NegotiationError(
                "negotiate answered 405 Method Not Allowed: this looks like an ASP.NET Core "
                "SignalR server, and this client speaks classic ASP.NET SignalR 2.x",
                status,
                body,
            )
        if status != 200:
            raise NegotiationError("negotiate request failed", status, body)
        negotiated = parse_negotiate(body, status)
        self.negotiated = negotiated
        self.token = negotiated.connection_token
        self.message_id = None
        self.groups_token = None
        self._poll_delay_ms = None
        return negotiated

    def skip_reason(self, transport: Transport) -> str | None:
        """Why the negotiate answer rules ``transport`` out, or ``None``."""
        negotiated = self.negotiated
        if (
            transport is Transport.web_sockets
            and negotiated is not None
            and not negotiated.try_websockets
        ):
            return "the server does not accept WebSockets (negotiate TryWebSockets is false)"
        return None

    @property
    def keepalive_timeout(self) -> float | None:
        """The server's KeepAliveTimeout (``None``: no keep-alives)."""
        return None if self.negotiated is None else self.negotiated.keep_alive_timeout

    @property
    def connect_timeout(self) -> float:
        """Seconds a transport may take to open (TransportConnectTimeout)."""
        return 5.0 if self.negotiated is None else self.negotiated.transport_connect_timeout

    @property
    def disconnect_timeout(self) -> float:
        """How long the server keeps a connection without a transport."""
        return 30.0 if self.negotiated is None else self.negotiated.disconnect_timeout

    # -- transport requests

    def _token(self) -> str:
        if self.token is None:
            raise RuntimeError("no connection token: negotiate first")
        return self.token

    def _request(self, transport: Transport, url: str) -> TransportRequest:
        size = self.max_receive_size
        if transport is Transport.web_sockets:
            return TransportRequest(transport, url, max_size=size)
        send_url = self.endpoints.send(transport, self._token())
        if transport is Transport.server_sent_events:
            return TransportRequest(transport, url, send_url, _form_body, max_size=size)
        negotiated = self.negotiated
        timeout = 110.0 if negotiated is None else negotiated.connection_timeout
        return TransportRequest(
            transport,
            url,
            send_url,
            _form_body,
            self._next_poll,
            timeout + POLL_MARGIN,
            max_size=size,
        )

    def connect_request(self, transport: Transport) -> TransportRequest:
        """What opens the receive channel of a new connection (``/connect``)."""
        tid = None if transport is Transport.long_polling else next(self._tid)
        return self._request(transport, self.endpoints.connect(transport, self._token(), tid))

    def reconnect_request(self, transport: Transport) -> TransportRequest:
        """What resumes the connection from the cursor (``/reconnect``)."""
        tid = None if transport is Transport.long_polling else next(self._tid)
        url = self.endpoints.reconnect(
            transport, self._token(), self.message_id, self.groups_token, tid
        )
        return self._request(transport, url)

    def _next_poll(self) -> tuple[str, float] | None:
        if self.token is None:
            return None  # the session ended (stop, lost for good): no more polls
        url = self.endpoints.poll(
            Transport.long_polling, self.token, self.message_id, self.groups_token
        )
        if self._poll_delay_ms is not None:
            return url, self._poll_delay_ms / 1000.0
        negotiated = self.negotiated
        return url, 0.0 if negotiated is None else negotiated.long_poll_delay

    def start_url(self, transport: Transport) -> str:
        """``/start``, sent once the init frame arrived."""
        return self.endpoints.start(transport, self._token())

    def abort_url(self, transport: Transport, token: str) -> str:
        """``/abort`` for ``token`` (the session may already have forgotten it)."""
        return self.endpoints.abort(transport, token)

    def ping_url(self) -> str:
        """``/ping``."""
        return self.endpoints.ping()

    # -- messages

    def encode_invocation(
        self,
        hub: str,
        method: str,
        args: Sequence[Any],
        invocation_id: int,
        state: Mapping[str, Any],
    ) -> bytes:
        """
        :raises TypeError: when an argument is not JSON-serialisable.
        """
        return encode_invocation(hub, method, args, invocation_id, state)

    def receive(self, data: bytes, connected: bool) -> list[Any] | Frame | None:
        """
        Parse one message of the receive channel (or a ``/send`` answer).

        The cursor and groups token are kept here.  While connected, a plain
        ``{"C":cursor,"M":[…]}`` frame (what busy feeds send) comes back as its raw
        ``M`` list, for the router's fast path; anything else as a frame value.

        :returns: the ``M`` list, a :data:`~txsignalr._protocol.Frame`, or ``None`` for
            the SSE ``initialized`` marker.
        :raises ProtocolError: when the data is not a classic frame.
        """
        try:
            obj = decode_frame(data)
        except ProtocolError:
            if data == b"initialized":
                return None  # the SSE stream's first event
            raise
        if (
            connected
            and type(obj) is dict
            and len(obj) == 2
            and type(obj.get("C")) is str
            and type(obj.get("M")) is list
        ):
            self.message_id = obj["C"]
            messages: list[Any] = obj["M"]
            return messages
        frame = frame_from_json(obj, data)
        if type(frame) is PersistentResponse:
            persistent: PersistentResponse = frame
            if persistent.error is None:
                if persistent.groups_token is not None:
                    self.groups_token = persistent.groups_token
                if persistent.cursor is not None:
                    self.message_id = persistent.cursor
                if persistent.long_poll_delay is not None:
                    self._poll_delay_ms = persistent.long_poll_delay
        return frame

    def forget(self) -> str | None:
        """End the session: the token (returned, for ``/abort``) and cursors are dropped."""
        token, self.token = self.token, None
        return token

"""
One ASP.NET Core SignalR connection of the test server, :class:`CoreConnection`: from
negotiate to its end, in exactly one hub (handshake and hub protocol, framing, pings,
client timeout, Close, stateful reconnect; its hub calls are
:class:`~txsignalr.testing._core_calls.CoreCalls`), and what it needs of the transport
that carries it (:class:`CoreChannel`) and of the server's options (:class:`CoreSettings`).

Transports hand a connection received bytes (:meth:`CoreConnection.receive`) and give
it a channel to write to; the :class:`~txsignalr.testing._core_registry.CoreRegistry`
keeps every connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from txsignalr._core_codecs import Splitter
from txsignalr._core_protocol import Close
from txsignalr.errors import MessageTooLarge, ProtocolError
from txsignalr.testing._core_calls import CoreCalls
from txsignalr.testing._core_codecs import JSON, ServerCodec, server_codecs
from txsignalr.testing._core_hubs import ClientResultError
from txsignalr.testing._core_stateful import StatefulLink
from txsignalr.testing._core_wire import (
    CORE_TRANSPORTS,
    HANDSHAKE_OK,
    RS,
    HandshakeFailed,
    handshake_error,
    parse_handshake,
)
from txsignalr.testing._hubs import Hub, run_hooks
from txsignalr.testing._timers import Timers

if TYPE_CHECKING:
    from txsignalr.testing._core_registry import CoreRegistry

__all__ = ["CoreChannel", "CoreConnection", "CoreSettings"]

_log = Logger(namespace="txsignalr.testing")


class CoreChannel(Protocol):
    """Where a Core connection's bytes go (a WebSocket, an SSE response, long polling)."""

    def write(self, data: bytes, binary: bool) -> None:
        """
        Send bytes (one WebSocket message, one SSE event, or poll data); ``binary``:
        as a WebSocket binary message.
        """

    def end(self) -> None:
        """End politely (WebSocket close 1000, SSE response finished, polls get 204)."""

    def abort(self) -> None:
        """Drop the TCP connection under the channel."""


class CoreSettings(Protocol):
    """The server options Core connections read (live)."""

    core_keepalive: float | None
    client_timeout: float | None
    core_timeout_close: bool
    core_max_message_size: int
    core_handshake_timeout: float
    core_disconnect_timeout: float
    core_stateful_buffer_size: int
    core_ack_interval: float
    detailed_errors: bool
    keepalives_enabled: bool


class CoreConnection:
    """
    One Core connection, from negotiate to its end.

    :ivar id: the public connection id (``Context.ConnectionId``).
    :ivar token: what goes into ``id=`` (the connection token, or the id for v0).
    :ivar transport: ``"WebSockets"``, ``"ServerSentEvents"``, ``"LongPolling"`` or
        ``None`` before the first transport request.
    :ivar codec: the hub protocol of the handshake (JSON until then).
    :ivar stateful_offered: negotiate answered ``useStatefulReconnect``.
    :ivar stateful: the connection's stateful reconnect, when the handshake (version 2,
        over WebSockets) turned it on, else ``None``.
    """

    def __init__(self, registry: CoreRegistry, hub: Hub, connection_id: str, token: str) -> None:
        self.registry = registry
        self.hub = hub
        self.id = connection_id
        self.token = token
        self.transport: str | None = None
        self.channel: CoreChannel | None = None
        #: bearer token every request of this connection must carry (redirects).
        self.required_token: str | None = None
        self.handshake_done = False
        self.closed = False
        self.protocol: tuple[str, int] | None = None
        self.codec: ServerCodec = JSON
        #: messages go as WebSocket binary messages (MessagePack, after the handshake)
        self._binary = False
        self.groups: set[str] = set()
        #: written while stalled (or, long polling, not yet polled).
        self.pending = bytearray()
        self._handshake = bytearray()
        self._splitter: Splitter | None = None
        #: the hub calls both ways
        self.calls = CoreCalls(self)
        self._keepalive_call: IDelayedCall | None = None
        self._timeout_call: IDelayedCall | None = None
        self._expiry_call: IDelayedCall | None = None
        self.stateful_offered = False
        self.stateful: StatefulLink | None = None
        self._ack_call: IDelayedCall | None = None

    @property
    def settings(self) -> CoreSettings:
        return self.registry.settings

    @property
    def timers(self) -> Timers:
        return self.registry.timers

    def event(self, kind: str, **info: Any) -> None:
        """Log a Core event of this connection (its id, hub and transport added)."""
        info.setdefault("connection_id", self.id)
        info.setdefault("hub", self.hub.name)
        info.setdefault("transport", self.transport)
        info["family"] = "core"
        self.registry.events.record(kind, info)

    # -- channel ----------------------------------------------------------------------

    def attach(self, channel: CoreChannel, transport: str) -> None:
        """The transport opened (WebSocket up, SSE stream started, first poll)."""
        self.transport = transport
        self.channel = channel
        self.timers.cancel(self._expiry_call)
        self._expiry_call = self.timers.call_later(
            self.settings.core_handshake_timeout, self._handshake_timed_out
        )
        self.event("connect")

    def send(self, data: bytes) -> None:
        """
        Write encoded hub messages (types 1-5) to the client (queued while stalled); with
        stateful reconnect each is numbered and kept until acknowledged.
        """
        if self.closed:
            return
        if self.stateful is not None:
            self.stateful.send(data)
            return
        self._out(data)

    def _send_control(self, data: bytes) -> None:
        """Ping, Close, Ack: never numbered; lost while a stateful connection has no socket."""
        if self.closed or (self.stateful is not None and not self.stateful.connected):
            return
        self._out(data)

    def _out(self, data: bytes) -> None:
        if self.registry.stalled or self.channel is None:
            self.pending += data
            return
        self._write(data)

    def writable(self) -> defer.Deferred[None] | None:
        """
        :returns: ``None``, or while a stateful connection's buffer is full a Deferred
            fired when the client's Acks made room.
        """
        return None if self.stateful is None else self.stateful.writable()

    def _write(self, data: bytes) -> None:
        assert self.channel is not None
        try:
            self.channel.write(data, self._binary)
        except Exception:
            _log.failure(
                "could not write to Core connection {connection_id}", connection_id=self.id
            )
        self._schedule_keepalive()

    def flush(self) -> None:
        """Write what queued up while stalled."""
        if self.pending and self.channel is not None and not self.registry.stalled:
            data, self.pending = bytes(self.pending), bytearray()
            self._write(data)

    def flush_on_end(self) -> None:
        """The connection ends: write what is pending, stalled or not."""
        if self.pending and self.channel is not None:
            data, self.pending = bytes(self.pending), bytearray()
            self.channel.write(data, self._binary)

    def _schedule_keepalive(self) -> None:
        interval = self.settings.core_keepalive
        if interval is None or not self.handshake_done or self.closed:
            return
        if self.transport == "LongPolling":
            return  # inherent keep-alive: no pings
        self.timers.cancel(self._keepalive_call)
        self._keepalive_call = self.timers.call_later(interval, self._ping)

    def _ping(self) -> None:
        self._keepalive_call = None
        if self.closed:
            return
        if self.registry.stalled or not self.settings.keepalives_enabled:
            self._schedule_keepalive()
            return
        self._send_control(self.codec.ping)
        if self.channel is None or self.registry.stalled:
            self._schedule_keepalive()

    # -- receiving --------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the client: the handshake first, then its hub protocol's messages."""
        if self.closed:
            return
        if not self.handshake_done:
            self._handshake += data
            end = self._handshake.find(RS)
            limit = self.settings.core_max_message_size
            if end < 0:
                if len(self._handshake) > limit:
                    self._fail_handshake("Handshake was canceled.")
                return
            if end > limit:
                self._fail_handshake("Handshake was canceled.")
                return
            record = bytes(self._handshake[:end])
            rest = bytes(self._handshake[end + 1 :])
            self._handshake = bytearray()
            codecs = server_codecs()
            try:
                name, version = parse_handshake(
                    record, {name: codec.version for name, codec in codecs.items()}
                )
            except HandshakeFailed as e:
                self._fail_handshake(str(e))
                return
            codec = codecs[name]
            assert self.transport is not None
            if codec.transfer_format not in CORE_TRANSPORTS[self.transport]:
                self._fail_handshake(
                    f"Cannot use the '{name}' protocol on the current transport. The "
                    f"transport does not support '{codec.transfer_format}' transfer format."
                )
                return
            self.protocol = (name, version)
            self.codec = codec
            self._splitter = codec.splitter(limit)
            self._handshake_ok()
            if not rest or self.closed:
                return
            data = rest
        if self.settings.client_timeout is not None and self.transport != "LongPolling":
            # ASP.NET Core 2.2: the client timeout starts with the first message after
            # the handshake, and any received data restarts it.
            self.timers.cancel(self._timeout_call)
            self._timeout_call = self.timers.call_later(
                self.settings.client_timeout, self._timed_out
            )
        assert self._splitter is not None
        try:
            records = self._splitter.feed(data)
        except MessageTooLarge:
            limit = self.settings.core_max_message_size
            self.close(
                self.closed_error(
                    f"InvalidDataException: The maximum message size of {limit}B was exceeded. "
                    "The message size can be configured in AddHubOptions."
                )
            )
            return
        except ProtocolError as e:
            self.close(self.closed_error(f"InvalidDataException: {e.message}"))
            return
        parse = self.codec.parse
        stateful = self.stateful
        for record in records:
            if self.closed:
                return
            try:
                message = parse(record)
            except ProtocolError as e:
                self.close(self.closed_error(f"InvalidDataException: {e.message}"))
                return
            if message is None:
                continue
            if stateful is not None:
                try:
                    handle = stateful.received(message)
                except ProtocolError as e:
                    self.close(self.closed_error(f"InvalidOperationException: {e.message}"))
                    return
                # a new message, or (after the client's Sequence) one to acknowledge again
                if self._ack_call is None and stateful.buffer.received > stateful.buffer.acked:
                    self._ack_call = self.timers.call_later(
                        self.settings.core_ack_interval, self._send_ack
                    )
                if not handle:
                    continue
            try:
                self._dispatch(message)
            except Exception:
                _log.failure(
                    "Core connection {connection_id} could not handle a message",
                    connection_id=self.id,
                )

    def closed_error(self, detail: str) -> str:
        """The Close error text: .NET's, with ``detail`` when ``detailed_errors``."""
        text = "Connection closed with an error."
        return f"{text} {detail}" if self.settings.detailed_errors else text

    def _fail_handshake(self, text: str) -> None:
        self.event("handshake", ok=False, error=text)
        self._out(handshake_error(text))
        self.registry.end(self, clean=False, reason="handshake failed", send_close=False)

    def _handshake_ok(self) -> None:
        self.handshake_done = True
        self._binary = self.codec.binary
        self.timers.cancel(self._expiry_call)
        self._expiry_call = None
        assert self.protocol is not None
        name, version = self.protocol
        # .NET turns it off for a version 1 handshake; it needs a WebSocket
        if self.stateful_offered and version >= 2 and self.transport == "WebSockets":
            self.stateful = StatefulLink(
                self.settings.core_stateful_buffer_size, self._out, self.registry.stateful_counts
            )
        self.event(
            "handshake", ok=True, protocol=name, version=version, stateful=self.stateful is not None
        )
        self._out(HANDSHAKE_OK)
        self.event("connected")
        run_hooks([self.hub], lambda h: h.on_connected(self.id))

    def _handshake_timed_out(self) -> None:
        self._expiry_call = None
        if not self.handshake_done and not self.closed:
            self._fail_handshake("Handshake was canceled.")

    def _timed_out(self) -> None:
        self._timeout_call = None
        if self.closed:
            return
        self.event("timeout", after=self.settings.client_timeout)
        if self.settings.core_timeout_close:
            # Newer servers abort with AbortAllowReconnect: a Close with an error first.
            detail = (
                "OperationCanceledException: Client hasn't sent a message/ping within the "
                "configured ClientTimeoutInterval."
            )
            self._send_control(self.codec.close(self.closed_error(detail), allow_reconnect=True))
        # ASP.NET Core 2.2 closes the transport without a Close message.
        self.registry.end(self, clean=False, reason="client timeout", send_close=False)

    # -- hub messages -----------------------------------------------------------------

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Close):
            self.event("client_close", error=message.error)
            self.registry.end(self, clean=True, reason="client close", send_close=False)
        else:
            self.calls.dispatch(message)

    def invoke_client(self, method: str, args: tuple[Any, ...]) -> None:
        """A non-blocking Invocation of a client method."""
        if self.handshake_done:
            self.send(self.codec.invocation(method, args))

    def invoke_with_result(self, method: str, args: tuple[Any, ...]) -> defer.Deferred[Any]:
        """An Invocation with an id; fires with the client's result."""
        if self.closed or not self.handshake_done:
            return defer.fail(ClientResultError(f"connection {self.id} is not open"))
        return self.calls.invoke_with_result(method, args)

    def close(self, error: str | None = None, allow_reconnect: bool = False) -> None:
        """Send Close (with ``error``/``allowReconnect``) and end the connection."""
        if self.closed:
            return
        self.event("close", error=error, allow_reconnect=allow_reconnect)
        if self.handshake_done:
            self._send_control(self.codec.close(error, allow_reconnect))
        self.registry.end(self, clean=error is None, reason="server close", send_close=False)

    def shutdown(self, reason: str) -> None:
        """Release everything this connection holds (the registry already forgot it)."""
        for call in (self._keepalive_call, self._timeout_call, self._expiry_call, self._ack_call):
            self.timers.cancel(call)
        self._keepalive_call = self._timeout_call = self._expiry_call = self._ack_call = None
        if self.stateful is not None:
            self.stateful.close()
        self.calls.shutdown(reason)

    def expire_later(self, delay: float) -> None:
        """End the connection after ``delay`` unless :meth:`keep` is called."""
        self.timers.cancel(self._expiry_call)
        self._expiry_call = self.timers.call_later(delay, self._expired)

    def keep(self) -> None:
        self.timers.cancel(self._expiry_call)
        self._expiry_call = None

    def _expired(self) -> None:
        self._expiry_call = None
        self.registry.end(self, clean=False, reason="disconnect timeout", send_close=False)
        self.registry.forget(self)

    # -- stateful reconnect -------------------------------------------------------------

    def suspend(self) -> bool:
        """
        The WebSocket dropped (not closed by the client): a stateful connection waits
        ``core_disconnect_timeout`` for the client's new socket, its hub calls, streams
        and client results going on meanwhile.

        :returns: ``False`` when the connection has no stateful reconnect (it ends).
        """
        link = self.stateful
        if link is None or self.closed:
            return False
        link.disconnected()
        self.channel = None
        for call in (self._keepalive_call, self._timeout_call):
            self.timers.cancel(call)
        self._keepalive_call = self._timeout_call = None
        # what was waiting for an unstall is in the replay buffer, or is not needed
        self.pending = bytearray()
        self.expire_later(self.settings.core_disconnect_timeout)
        self.event(
            "suspended",
            unacknowledged=link.buffer.unacknowledged,
            held=link.held,
            timeout=self.settings.core_disconnect_timeout,
        )
        return True

    def resume(self, channel: CoreChannel) -> None:
        """
        The client's new WebSocket (same ``id=``, no handshake): Sequence, then the
        unacknowledged messages again; the client's messages are dropped until its own
        Sequence, and those it replays that were handled already.
        """
        link = self.stateful
        if link is None or self.closed:
            channel.abort()
            return
        old, self.channel = self.channel, channel
        if old is not None:
            old.abort()  # .NET cancels the previous socket of the connection
        self.keep()
        # a message the drop cut in two is lost with the old socket
        self._splitter = self.codec.splitter(self.settings.core_max_message_size)
        self.pending = bytearray()
        sequence_id, replay = link.resume()
        counts = self.registry.stateful_counts
        counts["resumes"] += 1
        counts["replayed"] += len(replay)
        self.event("resumed", sequence_id=sequence_id, replayed=len(replay))
        self._out(self.codec.sequence(sequence_id) + b"".join(replay))
        if self._ack_call is None and link.buffer.received > link.buffer.acked:
            self._ack_call = self.timers.call_later(self.settings.core_ack_interval, self._send_ack)

    def _send_ack(self) -> None:
        self._ack_call = None
        link = self.stateful
        if link is None or self.closed:
            return
        sequence_id = link.ack_due()
        if sequence_id is not None:
            self.registry.stateful_counts["acks_sent"] += 1
            self._send_control(self.codec.ack(sequence_id))

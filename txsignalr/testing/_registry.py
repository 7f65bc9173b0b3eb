"""
The connection registry of the test server: SignalR connections, which outlive their
receive channels (a WebSocket, an SSE response, a held long poll), and everything that
happens to them whatever the transport: attach a channel (connect, reconnect, poll),
detach it (socket lost, poll answered), expire after the disconnect timeout, resume from
a cursor and groups token, receive hub invocations, flush bus messages as frames and
send keep-alives.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txsignalr.testing._bus import MessageBus
from txsignalr.testing._context import HubContext
from txsignalr.testing._events import EventLog
from txsignalr.testing._http import RequestInfo
from txsignalr.testing._hubs import Hub, HubCall, invoke_hub_method, run_hooks
from txsignalr.testing._timers import Timers
from txsignalr.testing._tokens import Protector
from txsignalr.testing._wire import client_invocation, parse_invocation, persistent_response

__all__ = ["Channel", "Connection", "ConnectionRegistry", "ReceiveRequest", "Settings"]

_log = Logger(namespace="txsignalr.testing")

MAX_MESSAGES_PER_FRAME = 10  # ForeverTransport.MaxMessages


def connection_topic(connection_id: str) -> str:
    """The bus topic of messages addressed to one connection."""
    return "c-" + connection_id


def hub_topic(hub: Hub) -> str:
    """The bus topic of a hub's broadcasts."""
    return "h-" + hub.name


def group_topic(hub: Hub, group: str) -> str:
    """The bus topic of a hub group."""
    return "hg-" + hub.name + "." + group


def split_group_topic(topic: str) -> tuple[str, str]:
    """``(hub name, group)`` of a group topic made by :func:`group_topic`."""
    hub_name, _, group = topic[3:].partition(".")
    return hub_name, group


class Channel(Protocol):
    """
    A server transport's receive channel: where a connection's frames go.

    :ivar transport_name: ``webSockets``, ``serverSentEvents`` or ``longPolling``.
    :ivar long_poll_delay_ms: ``L`` to put in frames (long polling), else ``None``.
    """

    transport_name: str
    long_poll_delay_ms: int | None

    def send_frame(self, text: str) -> bool:
        """Write one frame.  :returns: whether the channel takes more frames."""

    def send_keepalive(self) -> None:
        """Write the transport's keep-alive."""

    def abort(self) -> None:
        """Drop the TCP connection under the channel."""

    def close(self, last_frame: str) -> None:
        """End the channel politely (after ``/abort``); ``last_frame`` for long polling."""


class Settings(Protocol):
    """The server options the registry reads (live: tests may change them)."""

    keepalives_enabled: bool
    disconnect_timeout: float
    disconnect_threshold: float
    detailed_errors: bool
    buffer_size: int


@attrs.frozen
class ReceiveRequest:
    """
    A validated receive request: connect, reconnect or (long polling) poll.

    :ivar kind: ``"connect"``, ``"reconnect"`` or ``"poll"``.
    """

    connection_id: str
    kind: str
    hubs: tuple[Hub, ...]
    protocol: tuple[int, ...]
    message_id: str | None
    groups_token: str | None
    info: RequestInfo
    transport: str


class Connection:
    """Server-side state of one SignalR connection (it outlives its channels)."""

    def __init__(self, connection_id: str, hubs: tuple[Hub, ...], transport: str) -> None:
        self.id = connection_id
        self.hubs = hubs
        self.transport = transport
        self.groups: set[str] = set()
        #: group topic -> its position when the server added the connection to it: where
        #: replay starts for a client whose cursor predates the join.
        self.joined_at: dict[str, int] = {}
        self.positions: dict[str, int] = {}
        self.channel: Channel | None = None
        self.init_pending = False
        #: drop_all_transports found no held long poll: drop the next one.
        self.drop_next_poll = False
        self.groups_dirty = False
        self.flush_call: IDelayedCall | None = None
        self.disconnect_call: IDelayedCall | None = None

    def topics(self) -> list[str]:
        return [connection_topic(self.id)] + [hub_topic(h) for h in self.hubs] + sorted(self.groups)


class ConnectionRegistry:
    """
    Every SignalR connection of one server instance, with its bus and token key.

    :param settings: the live server options.
    :param hubs: lower-cased hub name -> hub.
    :param timers: where every timer goes (cancelled when the server stops).
    :param events: the event log.
    :param context: what hub calls get as their server.
    """

    def __init__(
        self,
        settings: Settings,
        hubs: dict[str, Hub],
        timers: Timers,
        events: EventLog,
        context: HubContext,
    ) -> None:
        self._settings = settings
        self._hubs = hubs
        self._timers = timers
        self._events = events
        self._context = context
        self._keepalive_loop: LoopingCall | None = None
        self.stalled = False
        self._unstalled: list[defer.Deferred[None]] = []
        self.reset()

    def reset(self) -> None:
        """Fresh key, cursor prefix, bus and connections: a restarted server."""
        self.protector = Protector()
        self.bus = MessageBus(os.urandom(4).hex().upper(), self._settings.buffer_size)
        self.connections: dict[str, Connection] = {}
        self.stalled = False
        self._unstalled = []

    # -- hubs and lifecycle hooks ------------------------------------------------------

    def hub(self, hub: Hub | str) -> Hub:
        """:raises KeyError: for a hub that is not registered."""
        name = hub.name if isinstance(hub, Hub) else hub
        found = self._hubs.get(name.lower())
        if found is None:
            raise KeyError(f"no hub named {name!r}")
        return found

    # -- channels ----------------------------------------------------------------------

    def attach(self, channel: Channel, request: ReceiveRequest) -> None:
        """A receive channel opened: connect, reconnect (resume) or poll."""
        ctx = request
        conn = self.connections.get(ctx.connection_id)
        if conn is not None and conn.drop_next_poll:
            conn.drop_next_poll = False
            if ctx.kind == "poll":
                channel.abort()
                return
        if conn is not None:
            self._cancel_timers(conn)
            old = conn.channel
            if old is not None and old is not channel:
                conn.channel = None
                old.abort()
        info: dict[str, Any] = {
            "connection_id": ctx.connection_id,
            "transport": ctx.transport,
            "query": ctx.info.query,
            "headers": ctx.info.headers,
            "cookies": ctx.info.cookies,
        }
        known_connection = conn is not None
        if ctx.kind == "connect" or conn is None:
            if ctx.kind != "connect":
                _log.info(
                    "{kind} of unknown connection {connection_id}: accepted",
                    kind=ctx.kind,
                    connection_id=ctx.connection_id,
                )
            conn = Connection(ctx.connection_id, ctx.hubs, ctx.transport)
            self.connections[conn.id] = conn
        conn.hubs = ctx.hubs
        conn.transport = ctx.transport
        conn.channel = channel
        if ctx.kind == "connect":
            conn.groups = set()
            conn.joined_at = {}
            conn.positions = self.bus.positions_for(conn.topics())
            conn.groups_dirty = False
            self._events.record("connect", info)
            if ctx.protocol < (1, 4):
                run_hooks(conn.hubs, lambda h: h.on_connected(conn.id))
            conn.init_pending = True
            self.flush(conn)
            return
        token_groups, cursor = self._resume(conn, ctx, known_connection)
        if ctx.kind == "reconnect":
            info.update(
                {
                    "message_id": ctx.message_id,
                    "groups_token": ctx.groups_token,
                    "cursor_valid": cursor is not None,
                    "groups": sorted(conn.groups),
                    "token_groups": sorted(token_groups),
                }
            )
            self._events.record("reconnect", info)
            self.flush(conn)
            run_hooks(conn.hubs, lambda h: h.on_reconnected(conn.id))
        else:
            self._events.record(
                "poll",
                {
                    "connection_id": conn.id,
                    "transport": ctx.transport,
                    "message_id": ctx.message_id,
                    "groups_token": ctx.groups_token,
                    "cursor_valid": cursor is not None,
                },
            )
            self.flush(conn)

    def _resume(
        self, conn: Connection, ctx: ReceiveRequest, known_connection: bool
    ) -> tuple[set[str], dict[str, int] | None]:
        """Set positions and groups from a reconnect's or poll's cursor and groups token."""
        known = {h.name for h in self._hubs.values()}
        token_groups = {
            g
            for g in self.protector.groups(ctx.groups_token, conn.id)
            if g.startswith("hg-") and split_group_topic(g)[0] in known
        }
        cursor = self.bus.parse_cursor(ctx.message_id)
        if not known_connection:
            # Forgotten (late reconnect): only the groups token knows the groups.
            conn.groups = token_groups
            conn.joined_at = {}
            conn.groups_dirty = False
            conn.positions = self.bus.positions_for(conn.topics(), cursor)
            return token_groups, cursor
        # The server's groups are authoritative: it may have changed them while the
        # client was away, or the G frame of a change may have been lost with the
        # socket.  A group missing from the client's cursor was joined after that
        # cursor: replay it from the join, not from "now".
        if ctx.kind == "poll" and ctx.groups_token is None:
            # A client without a token yet: a change made between two polls is still
            # owed to it (the flag), but an empty token is no reason to send one.
            token_groups = set(conn.groups)
        else:
            conn.groups_dirty = conn.groups_dirty or conn.groups != token_groups
        if ctx.kind == "poll" and cursor is None:
            resume = dict(conn.positions)
        else:
            resume = dict(cursor or {})
            if cursor is not None:
                for topic in conn.groups:
                    if topic not in resume and topic in conn.joined_at:
                        resume[topic] = conn.joined_at[topic]
        conn.positions = self.bus.positions_for(conn.topics(), resume)
        return token_groups, cursor

    def detach(self, channel: Channel, connection_id: str, lost: bool) -> None:
        """
        A channel ended: the socket or response was lost (``lost``), or a long poll was
        answered.  The connection expires unless a new channel comes within
        ``disconnect_timeout + disconnect_threshold``.
        """
        conn = self.connections.get(connection_id)
        if conn is None or conn.channel is not channel:
            return
        conn.channel = None
        self._cancel_timers(conn)
        if lost:
            self._events.record(
                "socket_closed", {"connection_id": conn.id, "transport": channel.transport_name}
            )
        conn.disconnect_call = self._timers.call_later(
            self._settings.disconnect_timeout + self._settings.disconnect_threshold,
            self._expire,
            conn,
        )

    def abort(self, connection_id: str) -> None:
        """``/abort``: end the channel politely and the connection at once."""
        conn = self.connections.pop(connection_id, None)
        if conn is None:
            return
        self._cancel_timers(conn)
        channel, conn.channel = conn.channel, None
        if channel is not None:
            channel.close(self.empty_frame(conn, channel))
        self._disconnected(conn, stop_called=True)

    def poll_timed_out(self, channel: Channel, connection_id: str) -> bool:
        """
        A held long poll reached ``ConnectionTimeout``: answer it with no messages.

        :returns: ``False`` while transports are stalled (the poll stays held).
        """
        if self.stalled:
            return False
        conn = self.connections.get(connection_id)
        if conn is None or conn.channel is not channel:
            channel.abort()
            return True
        self._deliver(conn, channel, self.empty_frame(conn, channel))
        return True

    def empty_frame(self, conn: Connection, channel: Channel) -> str:
        """``{"C":<cursor>,"M":[]}`` at the connection's positions."""
        return persistent_response(
            self.bus.format_cursor(conn.positions),
            [],
            long_poll_delay_ms=channel.long_poll_delay_ms,
        )

    def _cancel_timers(self, conn: Connection) -> None:
        self._timers.cancel(conn.flush_call)
        self._timers.cancel(conn.disconnect_call)
        conn.flush_call = None
        conn.disconnect_call = None

    def _disconnected(self, conn: Connection, stop_called: bool) -> None:
        self.bus.forget(connection_topic(conn.id))
        run_hooks(conn.hubs, lambda h: h.on_disconnected(conn.id, stop_called))
        self._events.record(
            "disconnected",
            {"connection_id": conn.id, "stop_called": stop_called, "transport": conn.transport},
        )

    def _expire(self, conn: Connection) -> None:
        conn.disconnect_call = None
        if self.connections.get(conn.id) is conn and conn.channel is None:
            del self.connections[conn.id]
            self._cancel_timers(conn)
            self._disconnected(conn, stop_called=False)

    def shutdown(self) -> None:
        """Forget every channel without callbacks and drop its TCP connection (stop)."""
        self.stop_keepalive()
        for conn in self.connections.values():
            channel, conn.channel = conn.channel, None
            conn.flush_call = None
            conn.disconnect_call = None
            if channel is not None:
                channel.abort()
        self._unstalled = []

    # -- invocations -------------------------------------------------------------------

    def receive(self, connection_id: str, text: str, transport: str) -> defer.Deferred[str] | None:
        """
        A hub invocation from a client.

        :returns: a Deferred firing with the result frame (it never fails), or ``None``
            when the invocation is ignored (unknown connection or hub, malformed).
        """
        self._events.record(
            "received", {"connection_id": connection_id, "payload": text, "transport": transport}
        )
        if connection_id not in self.connections:
            return None
        try:
            invocation = parse_invocation(text)
        except ValueError as e:
            _log.info("ignoring a malformed hub invocation: {error}", error=str(e))
            return None
        hub = self._hubs.get(invocation.hub.lower())
        if hub is None:
            _log.info("ignoring an invocation of unknown hub {hub}", hub=invocation.hub)
            return None
        call = HubCall(
            self._context, hub, connection_id, invocation.invocation_id, invocation.state
        )
        return invoke_hub_method(hub, call, invocation, self._settings.detailed_errors)

    def flush_connection(self, connection_id: str, channel: Channel | None = None) -> None:
        """Send what is pending now (before a hub result), on ``channel`` if given."""
        conn = self.connections.get(connection_id)
        if conn is not None and (channel is None or conn.channel is channel):
            self.flush(conn)

    # -- frames ------------------------------------------------------------------------

    def schedule_flush(self, conn: Connection) -> None:
        if conn.flush_call is None and conn.channel is not None:
            conn.flush_call = self._timers.call_later(0, self.flush, conn)

    def flush(self, conn: Connection) -> None:
        """Send the connection everything after its cursor, up to 10 messages a frame."""
        self._timers.cancel(conn.flush_call)
        conn.flush_call = None
        if self.stalled:
            return
        try:
            while conn.channel is not None and self._send_next_frame(conn, conn.channel):
                pass
        except Exception:
            # The positions were not advanced: the next flush sends these messages again.
            _log.failure(
                "could not send a frame to connection {connection_id}", connection_id=conn.id
            )

    def _deliver(self, conn: Connection, channel: Channel, frame: str) -> bool:
        more = channel.send_frame(frame)
        if not more:
            self.detach(channel, conn.id, lost=False)
        return more

    def _send_next_frame(self, conn: Connection, channel: Channel) -> bool:
        """
        Send the init frame, or the next frame (up to 10 messages and/or a new groups
        token), then advance the connection's positions.

        :returns: whether another frame may follow on this channel.
        """
        if conn.init_pending:
            frame = persistent_response(
                self.bus.format_cursor(conn.positions),
                [],
                initialized=True,
                long_poll_delay_ms=channel.long_poll_delay_ms,
            )
            conn.init_pending = False
            self._deliver(conn, channel, frame)
            self.schedule_flush(conn)  # the rest goes in a later turn
            return False
        entries = self.bus.read(conn.positions, MAX_MESSAGES_PER_FRAME)
        if not entries and not conn.groups_dirty:
            return False
        positions = dict(conn.positions)
        for entry in entries:
            positions[entry.topic] = entry.message_id
        token = None
        if conn.groups_dirty:
            token = self.protector.groups_token(conn.id, sorted(conn.groups))
        frame = persistent_response(
            self.bus.format_cursor(positions),
            [e.payload for e in entries],
            groups_token=token,
            long_poll_delay_ms=channel.long_poll_delay_ms,
        )
        more = channel.send_frame(frame)
        conn.positions = positions  # only once the frame is out
        if token is not None:
            conn.groups_dirty = False
        if not more:
            self.detach(channel, conn.id, lost=False)
        return more

    def start_keepalive(self, interval: float) -> None:
        """Send keep-alives on every channel every ``interval`` seconds."""
        loop = LoopingCall(self._keepalive_tick)
        loop.clock = self._timers.clock
        loop.start(interval, now=False)
        self._keepalive_loop = loop

    def stop_keepalive(self) -> None:
        if self._keepalive_loop is not None and self._keepalive_loop.running:
            self._keepalive_loop.stop()
        self._keepalive_loop = None

    def _keepalive_tick(self) -> None:
        if not self._settings.keepalives_enabled or self.stalled:
            return
        for conn in list(self.connections.values()):
            if conn.channel is not None:
                try:
                    conn.channel.send_keepalive()
                except Exception:
                    _log.failure(
                        "could not send a keep-alive to connection {connection_id}",
                        connection_id=conn.id,
                    )

    # -- faults ------------------------------------------------------------------------

    def drop_all(self) -> None:
        """
        Drop the TCP connection of every channel (the connections live on).  A long
        polling connection between two polls has its next poll dropped instead.
        """
        for conn in list(self.connections.values()):
            if conn.channel is not None:
                conn.channel.abort()
            elif conn.transport == "longPolling":
                conn.drop_next_poll = True

    def stall(self, stalled: bool) -> None:
        """Keep channels open but send nothing; unstalling sends what queued up."""
        if stalled:
            self.stalled = True
            return
        if not self.stalled:
            return
        self.stalled = False
        for conn in list(self.connections.values()):
            self.flush(conn)
        waiters, self._unstalled = self._unstalled, []
        for d in waiters:
            d.callback(None)

    def when_unstalled(self) -> defer.Deferred[None]:
        """:returns: a Deferred fired now, or when transports are no longer stalled."""
        if not self.stalled:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._unstalled.append(d)
        return d

    # -- messaging ---------------------------------------------------------------------

    def publish(self, topic: str, payload: str) -> None:
        self.bus.publish(topic, payload)
        for conn in self.connections.values():
            if topic in conn.positions:
                self.schedule_flush(conn)

    def publish_to_connection(self, connection_id: str, payload: str) -> None:
        if connection_id in self.connections:
            self.publish(connection_topic(connection_id), payload)

    def send_to_all(self, hub: Hub | str, method: str, args: tuple[Any, ...]) -> None:
        h = self.hub(hub)
        self.publish(hub_topic(h), client_invocation(h.name, method, args))

    def send_to_group(self, hub: Hub | str, group: str, method: str, args: tuple[Any, ...]) -> None:
        h = self.hub(hub)
        self.publish(group_topic(h, group), client_invocation(h.name, method, args))

    def add_to_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        conn = self.connections.get(connection_id)
        if conn is None:
            _log.info(
                "add_to_group: unknown connection {connection_id}", connection_id=connection_id
            )
            return
        topic = group_topic(self.hub(hub), group)
        if topic not in conn.groups:
            conn.groups.add(topic)
            conn.joined_at[topic] = conn.positions[topic] = self.bus.latest(topic)
            conn.groups_dirty = True
            self.schedule_flush(conn)

    def remove_from_group(self, connection_id: str, hub: Hub | str, group: str) -> None:
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        topic = group_topic(self.hub(hub), group)
        if topic in conn.groups:
            conn.groups.discard(topic)
            conn.joined_at.pop(topic, None)
            conn.positions.pop(topic, None)
            conn.groups_dirty = True
            self.schedule_flush(conn)

    def groups_of(self, connection_id: str) -> list[tuple[str, str]]:
        conn = self.connections.get(connection_id)
        if conn is None:
            return []
        return [split_group_topic(topic) for topic in sorted(conn.groups)]

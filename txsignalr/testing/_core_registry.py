"""
The ASP.NET Core SignalR side of the test server: :class:`CoreRegistry`, every Core
connection (:class:`~txsignalr.testing._core_connection.CoreConnection`) of one server,
their tokens and groups, broadcasts and fault injection.
"""

from __future__ import annotations

import base64
import os
from collections import Counter
from typing import Any

from txsignalr.testing._context import HubContext
from txsignalr.testing._core_codecs import ServerCodec
from txsignalr.testing._core_connection import CoreChannel, CoreConnection, CoreSettings
from txsignalr.testing._events import EventLog
from txsignalr.testing._hubs import Hub, run_hooks
from txsignalr.testing._timers import Timers

__all__ = ["CoreChannel", "CoreConnection", "CoreRegistry", "CoreSettings", "new_id"]

#: Wire transport name -> the classic spelling used by fault injection and ``transports=``.
CLASSIC_NAMES = {
    "WebSockets": "webSockets",
    "ServerSentEvents": "serverSentEvents",
    "LongPolling": "longPolling",
}


def new_id() -> str:
    """16 random bytes, base64url without padding: how .NET makes ids and tokens."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


class CoreRegistry:
    """
    Every Core connection of one server: tokens, hubs, groups, broadcasts.

    :param settings: the live server options.
    :param timers: the server's timers.
    :param events: the event log.
    :param context: what hub calls get as their server.
    """

    def __init__(
        self, settings: CoreSettings, timers: Timers, events: EventLog, context: HubContext
    ) -> None:
        self.settings = settings
        self.timers = timers
        self.events = events
        self.context = context
        self.stalled = False
        self.reset()

    def reset(self) -> None:
        self.by_token: dict[str, CoreConnection] = {}
        self.by_id: dict[str, CoreConnection] = {}
        self.stalled = False
        #: stateful reconnect counters (see ``SignalRServer.core_stateful_counts``)
        self.stateful_counts: Counter[str] = Counter()

    # -- lifecycle --------------------------------------------------------------------

    def create(self, hub: Hub, v1: bool, stateful: bool = False) -> CoreConnection:
        """
        A negotiated connection; it expires unless a transport comes in time.

        :param stateful: negotiate offered stateful reconnect.
        """
        connection_id = new_id()
        token = new_id() if v1 else connection_id
        conn = CoreConnection(self, hub, connection_id, token)
        conn.stateful_offered = stateful
        self.by_token[token] = conn
        self.by_id[connection_id] = conn
        conn.expire_later(self.settings.core_disconnect_timeout)
        return conn

    def end(self, conn: CoreConnection, clean: bool, reason: str, send_close: bool) -> None:
        """
        End a connection: end its channel politely (long polling: the pending data is
        still delivered, then 204), run ``on_disconnected``, log ``disconnected``.
        """
        if conn.closed:
            return
        conn.closed = True
        self.by_id.pop(conn.id, None)
        conn.shutdown(reason)
        channel = conn.channel
        if channel is not None:
            conn.flush_on_end()
            channel.end()
        if conn.transport != "LongPolling" or channel is None:
            self.forget(conn)
        if conn.handshake_done:
            run_hooks([conn.hub], lambda h: h.on_disconnected(conn.id, clean))
        conn.event("disconnected", reason=reason, clean=clean)

    def forget(self, conn: CoreConnection) -> None:
        """Drop the connection's token: later requests get 404."""
        if self.by_token.get(conn.token) is conn:
            del self.by_token[conn.token]
        self.by_id.pop(conn.id, None)

    def lost(
        self,
        conn: CoreConnection,
        channel: CoreChannel,
        clean: bool = False,
        resumable: bool = False,
    ) -> None:
        """
        The WebSocket or SSE stream went away; ``clean`` when the client ended it
        (ASP.NET Core runs ``OnDisconnectedAsync(null)`` for a closed event stream);
        ``resumable`` when it dropped without a close handshake, which a connection with
        stateful reconnect survives (:meth:`CoreConnection.suspend`).
        """
        if conn.channel is not channel:
            return
        conn.channel = None
        if resumable and conn.suspend():
            return
        self.end(
            conn,
            clean=clean,
            reason="client closed the stream" if clean else "transport lost",
            send_close=False,
        )

    def expire(self, conn: CoreConnection) -> None:
        """End a connection at once as its disconnect timeout would: its transport is
        dropped (no Close), its token forgotten."""
        channel, conn.channel = conn.channel, None
        if channel is not None:
            channel.abort()
        self.end(conn, clean=False, reason="expired", send_close=False)
        self.forget(conn)

    def shutdown(self) -> None:
        """Forget every connection, dropping channels without callbacks (server stop)."""
        for conn in list(self.by_token.values()) + list(self.by_id.values()):
            conn.closed = True
            conn.shutdown("server stopped")
            channel, conn.channel = conn.channel, None
            if channel is not None:
                channel.abort()
        self.reset()

    # -- lookups ----------------------------------------------------------------------

    def connection(self, connection_id: str) -> CoreConnection | None:
        conn = self.by_id.get(connection_id)
        return conn if conn is not None and not conn.closed else None

    def open_connections(self, hub: Hub | None = None) -> list[CoreConnection]:
        return [
            c
            for c in self.by_id.values()
            if c.handshake_done and not c.closed and (hub is None or c.hub is hub)
        ]

    # -- messaging --------------------------------------------------------------------

    def send_to_all(self, hub: Hub, method: str, args: tuple[Any, ...]) -> None:
        self._broadcast(self.open_connections(hub), method, args)

    def send_to_group(self, hub: Hub, group: str, method: str, args: tuple[Any, ...]) -> None:
        members = [c for c in self.open_connections(hub) if group in c.groups]
        self._broadcast(members, method, args)

    @staticmethod
    def _broadcast(connections: list[CoreConnection], method: str, args: tuple[Any, ...]) -> None:
        """
        One Invocation to each connection, encoded once per hub protocol.

        :raises TypeError: when a protocol cannot encode the arguments, after every
            connection of the protocols that can got them.
        """
        encoded: dict[ServerCodec, bytes | TypeError] = {}
        failed: TypeError | None = None
        for conn in connections:
            codec = conn.codec
            record = encoded.get(codec)
            if record is None:
                try:
                    record = encoded[codec] = codec.invocation(method, args)
                except TypeError as e:
                    record = encoded[codec] = e
            if isinstance(record, TypeError):
                failed = record
                continue
            conn.send(record)
        if failed is not None:
            raise failed

    def send_to_connection(self, connection_id: str, method: str, args: tuple[Any, ...]) -> None:
        conn = self.connection(connection_id)
        if conn is not None:
            conn.invoke_client(method, args)

    # -- faults -----------------------------------------------------------------------

    def drop_all(self) -> None:
        for conn in list(self.by_token.values()):
            if conn.channel is not None:
                conn.channel.abort()

    def stall(self, stalled: bool) -> None:
        was, self.stalled = self.stalled, stalled
        if was and not stalled:
            for conn in list(self.by_token.values()):
                conn.flush()

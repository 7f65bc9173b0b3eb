"""
Stateful reconnect (ASP.NET Core 8+, ``AllowStatefulReconnects``) on the test server's
side of one connection: :class:`StatefulLink` numbers the hub messages the server
sends and keeps them until the client acknowledges them, holds further messages while
that buffer is full, filters what the client replays after a new WebSocket, and says
what to send first on the new socket.  Its bookkeeping is the shared
:class:`~txsignalr._stateful.MessageBuffer`; it writes through the connection and
knows no transport.

Reference: ``core.md`` §7.8; .NET ``MessageBuffer.cs`` (server and .NET client).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable

from twisted.internet import defer

from txsignalr._core_protocol import Ack, HubMessage, Sequence
from txsignalr._stateful import TRACKED, MessageBuffer

__all__ = ["StatefulLink"]


class StatefulLink:
    """
    One connection's stateful reconnect, while it lasts.

    :param limit: bytes of unacknowledged messages after which further messages wait
        (``core_stateful_buffer_size``).
    :param write: writes one numbered message to the client now (or queues it while the
        server is stalled).
    :param counts: the server's counters (``duplicates``, ``held``, ``acks_received``),
        updated in place.
    :ivar connected: a WebSocket carries the connection; ``False`` between a drop and
        the client's new socket.
    """

    def __init__(self, limit: int, write: Callable[[bytes], None], counts: Counter[str]) -> None:
        self.buffer = MessageBuffer(limit)
        self.connected = True
        self._write = write
        self._counts = counts
        #: messages not numbered yet: they wait for room in the buffer, in order
        self._held: deque[bytes] = deque()
        self._waiters: list[defer.Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<StatefulLink {self.buffer!r} held={len(self._held)} connected={self.connected}>"

    @property
    def held(self) -> int:
        """How many messages wait for room in the buffer."""
        return len(self._held)

    # -- what the server sends

    def send(self, data: bytes) -> None:
        """Number and write one hub message (types 1-5), or hold it while the buffer is
        full; while disconnected it is only kept, for the replay."""
        if self._held or not self.buffer.has_room():
            self._held.append(data)
            self._counts["held"] += 1
            return
        self._track(data)

    def _track(self, data: bytes) -> None:
        self.buffer.track(data)
        if self.connected:
            self._write(data)

    def _acked(self, sequence_id: int) -> None:
        buffer = self.buffer
        self._counts["acks_received"] += 1
        # .NET releases everything on an Ack past the last message sent
        buffer.ack(min(sequence_id, buffer.sent))
        held = self._held
        while held and buffer.has_room():
            self._track(held.popleft())
        if not held and buffer.has_room():
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                if not d.called:
                    d.callback(None)

    def writable(self) -> defer.Deferred[None] | None:
        """
        :returns: ``None`` when a message sent now would be written (or buffered while
            disconnected) at once, else a Deferred that fires when the client's Acks
            have made room (a stream waits on it, as a .NET hub stream waits on its
            writer).
        """
        if not self._held and self.buffer.has_room():
            return None
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    # -- what the client sends

    def received(self, message: HubMessage) -> bool:
        """
        Screen one message from the client.

        :returns: whether to handle it: ``False`` for Ack and Sequence (handled here),
            for everything before the client's Sequence on a new socket, and for a
            replayed message already handled.
        :raises ProtocolError: for a Sequence past what arrived.
        """
        buffer = self.buffer
        if isinstance(message, Sequence):
            buffer.sequence(message.sequence_id)
            return False
        if buffer.awaiting_sequence:
            return False
        if isinstance(message, Ack):
            self._acked(message.sequence_id)
            return False
        if type(message) in TRACKED:
            if buffer.accept():
                return True
            self._counts["duplicates"] += 1
            return False
        return True

    def ack_due(self) -> int | None:
        """The id to acknowledge now (marked as sent), or ``None`` when nothing is new."""
        if not self.connected:
            return None
        return self.buffer.ack_due()

    # -- the socket

    def disconnected(self) -> None:
        """The WebSocket dropped: keep numbering and buffering, write nothing."""
        self.connected = False

    def resume(self) -> tuple[int, list[bytes]]:
        """
        A new WebSocket carries the connection: drop the client's messages until its
        Sequence.

        :returns: the Sequence id to send first and the messages to replay after it.
        """
        self.connected = True
        self.buffer.resuming()
        return self.buffer.replay()

    def close(self) -> None:
        """The connection ended: nothing waits for room any more."""
        self._held.clear()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.cancel()

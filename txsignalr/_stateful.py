"""
Stateful reconnect (ASP.NET Core, .NET 8+) without I/O: the numbering, replay buffer,
acknowledgements and duplicate filter that one side of a connection keeps, so that a
dropped WebSocket can be replaced without losing or repeating a message.  The client
(:class:`~txsignalr._core_connection.CoreEngine`) and the test server each keep one
:class:`MessageBuffer` per connection.

Rules (``core.md`` §7.8, Microsoft's ``MessageBuffer.ts`` / ``MessageBuffer.cs``):

- each side numbers the *tracked* messages it sends (Invocation, StreamItem,
  Completion, StreamInvocation, CancelInvocation) from 1 and keeps them until the peer
  acknowledges them with ``Ack(n)`` (everything up to ``n`` arrived);
- the receiver counts tracked messages as they arrive and acknowledges the highest;
- after a new socket is opened each side first sends ``Sequence(s)``, ``s`` the number
  of the first message it replays (or the next number when nothing is unacknowledged),
  then replays; the receiver takes ``s`` as the number of the next message and drops
  what it has already processed.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from txsignalr._core_protocol import (
    CancelInvocation,
    Completion,
    HubMessage,
    Invocation,
    StreamInvocation,
    StreamItem,
)
from txsignalr.errors import ProtocolError

__all__ = ["DEFAULT_BUFFER_SIZE", "TRACKED", "TRACKED_TYPES", "MessageBuffer", "is_tracked"]

#: Bytes of unacknowledged messages kept by default before sends wait (TS and .NET).
DEFAULT_BUFFER_SIZE: Final = 100_000

#: The message types stateful reconnect numbers.
TRACKED: Final = frozenset({Invocation, StreamItem, Completion, StreamInvocation, CancelInvocation})


#: Their type numbers (an invalid message of one of these still counts).
TRACKED_TYPES: Final = frozenset({1, 2, 3, 4, 5})


def is_tracked(message: HubMessage) -> bool:
    """Whether ``message`` counts in the sequence (types 1-5)."""
    return type(message) in TRACKED


class MessageBuffer:
    """
    One side's stateful-reconnect bookkeeping.

    :param limit: bytes of unacknowledged sent messages that make the buffer full.
    """

    def __init__(self, limit: int = DEFAULT_BUFFER_SIZE) -> None:
        if limit < 1:
            raise ValueError("the stateful reconnect buffer size must be at least 1 byte")
        self.limit = limit
        #: (sequence id, framed bytes) of every sent, unacknowledged tracked message
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._buffered = 0
        #: how many tracked messages were sent (the last one's sequence id)
        self.sent = 0
        #: the sequence id of the last tracked message received and processed
        self.received = 0
        #: the next incoming tracked message's sequence id, minus one
        self._position = 0
        #: the highest id acknowledged to the peer
        self.acked = 0
        #: while resuming: incoming messages are dropped until the peer's Sequence
        self.awaiting_sequence = False

    def __repr__(self) -> str:
        return (
            f"<MessageBuffer sent={self.sent} unacked={len(self._unacked)} "
            f"({self._buffered} bytes) received={self.received}>"
        )

    # -- sending side

    @property
    def buffered(self) -> int:
        """Bytes of unacknowledged messages held."""
        return self._buffered

    @property
    def unacknowledged(self) -> int:
        """How many sent messages the peer has not acknowledged."""
        return len(self._unacked)

    def has_room(self) -> bool:
        """Whether another message may be sent (an empty buffer always has room)."""
        return self._buffered < self.limit or not self._unacked

    def track(self, payload: bytes) -> int:
        """Number and keep one tracked message being sent; returns its sequence id."""
        self.sent += 1
        self._unacked.append((self.sent, payload))
        self._buffered += len(payload)
        return self.sent

    def ack(self, sequence_id: int) -> int:
        """
        The peer processed everything up to ``sequence_id``: forget those messages.

        :returns: how many messages were released.
        :raises ProtocolError: when it acknowledges a message never sent.
        """
        if sequence_id > self.sent:
            raise ProtocolError(
                f"Ack of message {sequence_id}, but only {self.sent} were sent", sequence_id
            )
        unacked = self._unacked
        released = 0
        while unacked and unacked[0][0] <= sequence_id:
            _, payload = unacked.popleft()
            self._buffered -= len(payload)
            released += 1
        return released

    def replay(self) -> tuple[int, list[bytes]]:
        """
        What to send first on a new socket: the Sequence id (the first replayed
        message's, or the next one's) and the messages to send again, in order.
        """
        if self._unacked:
            return self._unacked[0][0], [payload for _, payload in self._unacked]
        return self.sent + 1, []

    # -- receiving side

    def resuming(self) -> None:
        """A new socket replaces the dropped one: drop input until the peer's Sequence."""
        self.awaiting_sequence = True

    def sequence(self, sequence_id: int) -> None:
        """
        The peer's Sequence: the next tracked message it sends has ``sequence_id``.

        :raises ProtocolError: when it skips messages this side never received, or is
            below 1 (the first message is 1).
        """
        if sequence_id < 1:
            raise ProtocolError("Sequence ID below 1", sequence_id)
        if sequence_id > self.received + 1:
            raise ProtocolError(
                "Sequence ID greater than amount of messages we've received.", sequence_id
            )
        self._position = sequence_id - 1
        # The peer replays from sequence_id because it has no Ack past it: any sent
        # since died with the old socket, so acknowledge again what is replayed.
        self.acked = min(self.acked, sequence_id - 1)
        self.awaiting_sequence = False

    def accept(self) -> bool:
        """
        Count one incoming tracked message.

        :returns: ``False`` for a replayed duplicate that was already processed.
        """
        self._position += 1
        if self._position <= self.received:
            return False
        self.received = self._position
        return True

    def ack_due(self) -> int | None:
        """The id to acknowledge now, or ``None`` when nothing new arrived."""
        if self.received > self.acked:
            self.acked = self.received
            return self.received
        return None

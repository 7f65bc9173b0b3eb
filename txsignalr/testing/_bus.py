"""
Sans-I/O message bus of the test server, modelled on SignalR's in-memory bus.

Messages are published to *topics* (a hub, a group, a connection).  Every topic numbers
its messages 1, 2, 3... and keeps the last ``buffer_size`` of them so that a client
reconnecting with its cursor gets exactly what it missed.  A *cursor* maps each topic a
connection listens to onto the id of the last message it has seen, written like the real
server's ``d-<PREFIX>-key,hexid|key,hexid`` with minified topic keys.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping

import attrs

__all__ = ["Entry", "MessageBus"]

_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _minify(n: int) -> str:
    """Spell a topic's ordinal as a short key, like ``StringMinifier``."""
    base = len(_KEY_ALPHABET)
    out = ""
    n += 1
    while n > 0:
        n -= 1
        out = _KEY_ALPHABET[n % base] + out
        n //= base
    return out


@attrs.frozen
class Entry:
    """
    One stored message.

    :ivar topic: the topic it was published to.
    :ivar message_id: its id within the topic (1, 2, ...).
    :ivar sequence: its position in the whole bus, used to merge topics in order.
    :ivar payload: the raw JSON text of the message.
    """

    topic: str
    message_id: int
    sequence: int
    payload: str


class _Topic:
    def __init__(self, key: str, buffer_size: int) -> None:
        self.key = key
        self.last_id = 0
        self.entries: deque[Entry] = deque(maxlen=buffer_size)


class MessageBus:
    """
    Topics with bounded replay buffers and per-topic message ids.

    :param prefix: the instance prefix of cursors (8 uppercase hex digits); cursors with
        another prefix are from another server instance and are ignored.
    :param buffer_size: how many messages each topic keeps for replay.
    """

    def __init__(self, prefix: str, buffer_size: int = 1000) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.prefix = prefix
        self._buffer_size = buffer_size
        self._topics: dict[str, _Topic] = {}
        self._by_key: dict[str, str] = {}
        self._ordinal = 0
        self._sequence = 0

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = _Topic(_minify(self._ordinal), self._buffer_size)
            self._ordinal += 1
            self._topics[name] = topic
            self._by_key[topic.key] = name
        return topic

    def publish(self, topic: str, payload: str) -> int:
        """
        Append a message to a topic.

        :returns: the message's id within the topic.
        """
        t = self._topic(topic)
        t.last_id += 1
        self._sequence += 1
        t.entries.append(Entry(topic, t.last_id, self._sequence, payload))
        return t.last_id

    def latest(self, topic: str) -> int:
        """:returns: the id of the last message published to ``topic`` (0 if none)."""
        return self._topic(topic).last_id

    def forget(self, topic: str) -> None:
        """Drop a topic and its buffer (its key is never reused)."""
        t = self._topics.pop(topic, None)
        if t is not None:
            del self._by_key[t.key]

    def read(self, positions: Mapping[str, int], limit: int) -> list[Entry]:
        """
        The next messages after ``positions``, oldest first across all its topics.

        :param positions: topic -> id of the last message already delivered.
        :param limit: the most messages to return.
        :returns: up to ``limit`` entries in publication order.
        """
        streams: list[list[Entry]] = []
        for name, seen in positions.items():
            t = self._topics.get(name)
            if t is None or t.last_id <= seen:
                continue
            # Ids in a topic are consecutive: the unseen ones are the last few entries.
            unseen = min(t.last_id - seen, len(t.entries))
            streams.append(list(itertools.islice(t.entries, len(t.entries) - unseen, None)))
        merged = heapq.merge(*streams, key=lambda e: e.sequence)
        out: list[Entry] = []
        for entry in merged:
            if len(out) >= limit:
                break
            out.append(entry)
        return out

    def format_cursor(self, positions: Mapping[str, int]) -> str:
        """:returns: the cursor text (``C``/``messageId``) for these positions."""
        pairs = sorted((self._topic(name).key, seen) for name, seen in positions.items())
        body = "|".join(f"{key},{seen:X}" for key, seen in pairs)
        return f"d-{self.prefix}-{body}"

    def parse_cursor(self, text: str | None) -> dict[str, int] | None:
        """
        Read a cursor written by :meth:`format_cursor`.

        :returns: topic -> last seen id for the topics this bus still knows, or ``None``
            when the cursor is missing, malformed or from another instance (the caller
            then starts fresh, as the real server does).
        """
        if not text or not text.startswith("d-"):
            return None
        prefix, sep, body = text[2:].partition("-")
        if not sep or prefix != self.prefix:
            return None
        positions: dict[str, int] = {}
        if body == "":
            return positions
        for pair in body.split("|"):
            key, comma, hex_id = pair.partition(",")
            if not comma or not key:
                return None
            try:
                seen = int(hex_id, 16)
            except ValueError:
                return None
            if seen < 0:
                return None
            name = self._by_key.get(key)
            if name is not None:
                positions[name] = seen
        return positions

    def positions_for(
        self, topics: Iterable[str], cursor: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """
        Subscription positions for ``topics``: taken from ``cursor`` where it has the
        topic, else the topic's latest id (new subscriptions see only new messages).
        """
        cursor = cursor or {}
        return {name: cursor.get(name, self.latest(name)) for name in topics}

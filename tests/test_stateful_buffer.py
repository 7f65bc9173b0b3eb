"""The stateful-reconnect bookkeeping without I/O (MessageBuffer)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsignalr._core_protocol import PING, Ack, Close, Completion, Invocation, Sequence
from txsignalr._stateful import MessageBuffer, is_tracked
from txsignalr.errors import ProtocolError


def test_tracked_types() -> None:
    assert is_tracked(Invocation("m", ()))
    assert is_tracked(Completion("1"))
    assert not is_tracked(PING)
    assert not is_tracked(Close())
    assert not is_tracked(Ack(1))
    assert not is_tracked(Sequence(1))


def test_numbering_ack_and_replay() -> None:
    buf = MessageBuffer(limit=10)
    assert buf.replay() == (1, [])
    assert [buf.track(p) for p in (b"aaa", b"bbb", b"ccc")] == [1, 2, 3]
    assert buf.buffered == 9 and buf.unacknowledged == 3
    assert buf.has_room()
    buf.track(b"dd")
    assert not buf.has_room()
    assert buf.replay() == (1, [b"aaa", b"bbb", b"ccc", b"dd"])
    assert buf.ack(2) == 2
    assert buf.has_room()
    assert buf.replay() == (3, [b"ccc", b"dd"])
    assert buf.ack(2) == 0  # an old ack again changes nothing
    assert buf.ack(4) == 2
    assert buf.replay() == (5, [])
    with pytest.raises(ProtocolError, match="only 4 were sent"):
        buf.ack(5)


def test_an_empty_buffer_takes_a_message_bigger_than_the_limit() -> None:
    buf = MessageBuffer(limit=2)
    assert buf.has_room()
    buf.track(b"12345")
    assert not buf.has_room()


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MessageBuffer(0)


def test_receiving_counts_and_acks() -> None:
    buf = MessageBuffer()
    assert buf.ack_due() is None
    assert buf.accept() and buf.accept()
    assert buf.ack_due() == 2
    assert buf.ack_due() is None
    assert buf.accept()
    assert buf.ack_due() == 3


def test_replay_duplicates_are_dropped() -> None:
    buf = MessageBuffer()
    for _ in range(5):
        assert buf.accept()
    buf.resuming()
    assert buf.awaiting_sequence
    buf.sequence(4)  # the peer replays 4 and 5, which arrived, then 6
    assert not buf.awaiting_sequence
    assert [buf.accept() for _ in range(3)] == [False, False, True]
    assert buf.received == 6


def test_sequence_past_what_arrived_is_an_error() -> None:
    buf = MessageBuffer()
    buf.accept()
    buf.sequence(2)  # exactly the next one
    with pytest.raises(ProtocolError, match="Sequence ID greater"):
        buf.sequence(3)


@given(
    st.integers(1, 60),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6),
)
def test_any_drops_deliver_each_message_once_in_order(
    total: int, drops: list[tuple[int, int]]
) -> None:
    """
    A sender and a receiver over a lossy link: at each drop the receiver has processed
    some prefix and acknowledged a shorter one; after the resume every message is
    processed exactly once, in order.
    """
    sender, receiver = MessageBuffer(limit=1 << 20), MessageBuffer()
    pending = [str(i).encode() for i in range(total)]
    for payload in pending:
        sender.track(payload)
    processed: list[bytes] = []
    drops = sorted(drops)
    # Replay model: deliver in rounds; each round the link drops after `got` messages.
    rounds = [min(got, len(pending)) for _, got in drops]
    first, replay = 1, pending
    for got in [*rounds, None]:
        receiver.sequence(first)
        delivered = replay if got is None else replay[:got]
        for payload in delivered:
            if receiver.accept():
                processed.append(payload)
        acked = receiver.ack_due()
        if acked is not None:
            sender.ack(acked)
        if got is None:
            break
        receiver.resuming()
        first, replay = sender.replay()
    assert processed == [str(i).encode() for i in range(total)]

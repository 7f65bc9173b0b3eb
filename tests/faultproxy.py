"""
A fault-injecting TCP proxy for the reliability tests: it sits on 127.0.0.1 in front
of a server and forwards bytes both ways until told to fail.

* :meth:`FaultProxy.cut` aborts every proxied connection at once (no FIN, no close
  frame); with :attr:`FaultProxy.cut_next` set, the cut happens when the server next
  sends something, after half of those bytes went through, so a WebSocket frame, an
  SSE event or a long-poll answer is cut in the middle;
* :meth:`FaultProxy.stall` stops forwarding (both ways) until called with ``False``;
* :meth:`FaultProxy.refuse` makes new connections be closed at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol


class _Half(Protocol):
    """One side of a proxied connection; ``peer`` is the other side."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.peer: _Half | None = None
        self.pending: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        peer = self.peer
        if self.proxy.stalled or peer is None or peer.transport is None or peer.pending:
            self.pending.append(data)
            if peer is not None and peer.transport is not None and not self.proxy.stalled:
                self.flush()
            return
        peer.transport.write(data)

    def flush(self) -> None:
        """Forward what was held (while stalled, or before the server side connected)."""
        peer = self.peer
        if peer is None or peer.transport is None or peer.lost or self.proxy.stalled:
            return
        pending, self.pending = self.pending, []
        for data in pending:
            peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.proxy.halves.discard(self)
        if self.peer is not None and not self.peer.lost and self.peer.transport is not None:
            self.peer.flush()
            self.peer.transport.loseConnection()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _Inbound(_Half):
    """The client's side: connects to the server, then forwards."""

    def connectionMade(self) -> None:
        proxy = self.proxy
        if proxy.refusing:
            proxy.refused += 1
            self.abort()
            return
        proxy.halves.add(self)
        proxy.accepted += 1
        out = _Outbound(proxy)
        out.peer, self.peer = self, out
        proxy.halves.add(out)
        d = connectProtocol(TCP4ClientEndpoint(proxy.reactor, "127.0.0.1", proxy.target_port), out)
        d.addCallbacks(lambda _: self.flush(), lambda _: self.abort())


class _Outbound(_Half):
    """The server's side.  A cut "within the next chunk" lets half of it through."""

    def connectionMade(self) -> None:
        if self.peer is not None:
            self.peer.flush()

    def dataReceived(self, data: bytes) -> None:
        proxy = self.proxy
        if proxy.cut_next and len(data) > 1 and self.peer is not None and not self.peer.lost:
            proxy.cut_next = False
            assert self.peer.transport is not None
            self.peer.transport.write(data[: len(data) // 2])
            proxy.cut()
            proxy.mid_frame_cuts += 1
            return
        super().dataReceived(data)


class FaultProxy(Factory):
    def __init__(self, reactor: Any, target_port: int) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.halves: set[_Half] = set()
        #: cut when the server next sends something, after half of it went through
        self.cut_next = False
        self.mid_frame_cuts = 0
        self.stalled = False
        self.refusing = False
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> _Inbound:
        return _Inbound(self)

    def listen(self) -> int:
        self.port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return int(self.port.getHost().port)

    def cut(self) -> int:
        """Abort every proxied connection now; returns how many pairs were cut."""
        halves = list(self.halves)
        for half in halves:
            half.pending = []
            half.abort()
        self.cut_next = False
        self.cuts += 1
        return len(halves) // 2

    def stall(self, stalled: bool = True) -> None:
        self.stalled = stalled
        if not stalled:
            for half in list(self.halves):
                half.flush()

    def refuse(self, refusing: bool = True) -> None:
        self.refusing = refusing

    async def stop(self) -> None:
        self.cut()
        if self.port is not None:
            await self.port.stopListening()

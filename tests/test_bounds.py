"""
Every buffer has a bound: an answer far larger than any SignalR server sends ends
the request early with a clear, typed error instead of being read whole.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from helpers import wait_until, within
from twisted.internet import reactor as _reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from txsignalr import HubConnection, NegotiationError
from txsignalr._http import CONTROL_BODY_LIMIT

reactor: Any = _reactor

CHUNK = b"x" * 65536


class _Huge(Resource):
    """Answers every request with a body of ``size`` bytes, written as the client
    reads it (so a client that stops reading stops the writing), and records how
    much went out before the client hung up."""

    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.written = 0
        self.hung_up = False

    def render(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(self.size).encode())
        huge = self

        class Producer:
            def resumeProducing(self) -> None:
                if huge.hung_up:
                    return
                if huge.written >= huge.size:
                    request.unregisterProducer()
                    request.finish()
                    return
                request.write(CHUNK)
                huge.written += len(CHUNK)

            def pauseProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                huge.hung_up = True

        def gone(_: Any) -> None:
            huge.hung_up = True

        request.notifyFinish().addErrback(gone)
        request.registerProducer(Producer(), False)
        return NOT_DONE_YET


@pytest.mark.parametrize("protocol", ["auto", "classic", "core"])
@pytest_twisted.ensureDeferred
async def test_a_64_mb_negotiate_answer_is_refused_early(protocol: str) -> None:
    """A 64 MB negotiate body: NegotiationError naming the size limit (not "incompatible
    version"), after about 1 MiB was read, not 64 MB."""
    huge = _Huge(64 * 1024 * 1024)
    port = reactor.listenTCP(0, Site(huge), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/signalr"
    conn = HubConnection(reactor, url, protocol=protocol, reconnect_delay=None)
    if protocol == "classic":
        conn.hub("c3")
    try:
        with pytest.raises(NegotiationError) as info:
            await within(conn.start())
        await wait_until(lambda: huge.hung_up, "the client hanging up")
    finally:
        await within(conn.stop())
        await port.stopListening()
    text = str(info.value)
    assert f"negotiate answer is over the {CONTROL_BODY_LIMIT} byte limit" in text, text
    assert "version" not in text
    # the client hung up once over the limit: the server wrote a little more than
    # the limit (socket buffers), far from the 64 MB it meant to
    assert huge.written < 16 * 1024 * 1024, huge.written

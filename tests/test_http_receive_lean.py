"""The lean HTTP client of the receive paths over real loopback sockets: what it sends
(the session's headers, token and cookies), what it keeps (cookies set, one kept-alive
connection for polls), and how it fails (typed errors, timeouts, bounds, cancels)."""

from __future__ import annotations

from http.cookiejar import CookieJar
from typing import Any

import pytest
import pytest_twisted
from helpers import within
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from txsignalr import MessageTooLarge, SignalRError
from txsignalr._http import HttpSession
from txsignalr._httpstream import PollClient, StreamRequest, lean_http


class Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.ports: list[int] = []
        self.held: list[Request] = []
        self.answer = b"hello"
        self.status = 200
        self.hold = False

    def render(self, request: Request) -> Any:
        self.seen.append(
            {
                "method": request.method,
                "uri": request.uri,
                "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
                "body": request.content.read(),
            }
        )
        self.ports.append(request.getClientAddress().port)  # type: ignore[attr-defined]
        request.addCookie(b"affinity", b"server-set")
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.answer


@pytest.fixture
def recorder() -> Any:
    resource = Recorder()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    yield resource
    port.stopListening()


def session(**kw: Any) -> HttpSession:
    return HttpSession(
        reactor, kw.pop("headers", {"X-Key": "user-secret"}), CookieJar(), None, None, 5.0, **kw
    )


def test_lean_only_for_the_sessions_own_client() -> None:
    """A user's treq-like client is used as given; odd URLs go the usual way."""
    http = session()
    assert lean_http(http, "http://h/x?id=1")
    assert not lean_http(http, "http://user:pw@h/x")
    assert not lean_http(http, "http://h/\u00e9")
    assert not lean_http(http, "ftp://h/x")
    other = HttpSession(reactor, {}, CookieJar(), None, object(), 5.0)  # type: ignore[arg-type]
    assert not lean_http(other, "http://h/x")


@pytest_twisted.ensureDeferred
async def test_polls_reuse_one_connection_and_carry_headers_and_cookies(
    recorder: Recorder,
) -> None:
    """Headers, bearer token and cookies are sent; the cookie the server sets is kept
    and sent back; three polls cross one TCP connection."""
    http = session()
    http.set_bearer("bearer-secret")
    client = PollClient(reactor, http)
    url = recorder.url + "/hub?id=tok"  # type: ignore[attr-defined]
    try:
        for _ in range(3):
            status, body = await within(client.request("GET", url, "poll", 5.0, max_size=1024))
            assert (status, body) == (200, b"hello")
        status, body = await within(
            client.request(
                "POST",
                url,
                "poll",
                5.0,
                data=b"",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                max_size=1024,
            )
        )
    finally:
        client.close()
    assert len(set(recorder.ports)) == 1, recorder.ports
    first, second, post = recorder.seen[0], recorder.seen[1], recorder.seen[3]
    assert first["uri"] == b"/hub?id=tok" and first["method"] == b"GET"
    assert first["headers"][b"x-key"] == [b"user-secret"]
    assert first["headers"][b"authorization"] == [b"Bearer bearer-secret"]
    assert b"cookie" not in first["headers"]
    assert second["headers"][b"cookie"] == [b"affinity=server-set"]
    assert post["method"] == b"POST" and post["headers"][b"content-length"] == [b"0"]
    assert post["headers"][b"content-type"] == [b"application/x-www-form-urlencoded"]
    assert [c.value for c in http.cookies] == ["server-set"]


@pytest_twisted.ensureDeferred
async def test_an_error_body_loses_the_requests_secrets(recorder: Recorder) -> None:
    recorder.status = 500
    recorder.answer = b"headers: user-secret; token: tok-secret-value"
    http = session()
    client = PollClient(reactor, http)
    try:
        status, body = await within(
            client.request(
                "GET",
                recorder.url + "/hub?id=tok-secret-value",  # type: ignore[attr-defined]
                "poll",
                5.0,
                max_size=1024,
            )
        )
    finally:
        client.close()
    assert status == 500
    assert body == b"headers: <redacted>; token: <redacted>"


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_bound(recorder: Recorder) -> None:
    recorder.answer = b"x" * 5000
    client = PollClient(reactor, session())
    try:
        with pytest.raises(MessageTooLarge, match="1024 byte limit"):
            await within(
                client.request("GET", recorder.url + "/hub", "poll", 5.0, max_size=1024)  # type: ignore[attr-defined]
            )
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_held_poll_times_out_and_a_cancel_closes_it(recorder: Recorder) -> None:
    """No answer within the timeout: a SignalRError saying so; cancelling a held poll
    fails it with CancelledError and drops its connection (the server sees it go)."""
    recorder.hold = True
    client = PollClient(reactor, session())
    url = recorder.url + "/hub"  # type: ignore[attr-defined]
    try:
        with pytest.raises(SignalRError, match=r"poll request timed out after 0\.2 s"):
            await within(client.request("GET", url, "poll", 0.2, max_size=1024))
        d = client.request("GET", url, "poll", 5.0, max_size=1024)
        while len(recorder.held) < 2:
            await within(_turn())
        gone: Deferred[None] = recorder.held[1].notifyFinish()
        d.cancel()
        with pytest.raises(CancelledError):
            await within(d)
        with pytest.raises(Exception):  # noqa: B017 - the connection lost, not finished
            await within(gone)
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_a_typed_error() -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/hub"
    await port.stopListening()
    client = PollClient(reactor, session())
    with pytest.raises(SignalRError, match="poll request failed: ConnectionRefusedError"):
        await within(client.request("GET", url, "poll", 5.0, max_size=1024))


@pytest_twisted.ensureDeferred
async def test_a_server_that_closes_between_polls_gets_a_new_connection(
    recorder: Recorder,
) -> None:
    """An idle kept connection the server closed is not reused."""
    client = PollClient(reactor, session())
    url = recorder.url + "/hub"  # type: ignore[attr-defined]
    try:
        await within(client.request("GET", url, "poll", 5.0, max_size=1024))
        kept = client._channel
        assert kept is not None and kept.transport is not None
        kept.transport.loseConnection()
        while not kept.lost:
            await within(_turn())
        assert await within(client.request("GET", url, "poll", 5.0, max_size=1024)) == (
            200,
            b"hello",
        )
    finally:
        client.close()
    assert len(set(recorder.ports)) == 2


class StreamSinkRecorder:
    def __init__(self) -> None:
        self.head: tuple[int, bytes] | None = None
        self.data: list[bytes] = []
        self.failed: list[SignalRError] = []
        self.ended: Deferred[None] = Deferred()

    def stream_head(self, status: int, content_type: bytes) -> bool:
        self.head = (status, content_type)
        return True

    def stream_data(self, data: bytes) -> None:
        self.data.append(data)

    def stream_failed(self, error: SignalRError) -> None:
        self.failed.append(error)
        self.ended.callback(None)

    def stream_ended(self) -> None:
        self.ended.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_stream_request_reads_to_the_end(recorder: Recorder) -> None:
    recorder.answer = b"data: x\r\n\r\n"
    sink = StreamSinkRecorder()
    http = session()
    StreamRequest(
        reactor,
        http,
        "GET",
        recorder.url + "/hub",  # type: ignore[attr-defined]
        "event stream",
        sink,
        headers={"Accept": "text/event-stream"},
    )
    await within(sink.ended)
    assert sink.head is not None and sink.head[0] == 200
    assert b"".join(sink.data) == b"data: x\r\n\r\n"
    assert recorder.seen[0]["headers"][b"accept"] == [b"text/event-stream"]
    assert [c.value for c in http.cookies] == ["server-set"]


@pytest_twisted.ensureDeferred
async def test_a_stream_whose_head_never_comes_times_out(recorder: Recorder) -> None:
    recorder.hold = True
    sink = StreamSinkRecorder()
    http = HttpSession(reactor, {}, CookieJar(), None, None, 0.2)
    StreamRequest(reactor, http, "GET", recorder.url + "/hub", "event stream", sink)  # type: ignore[attr-defined]
    await within(sink.ended)
    assert [str(e) for e in sink.failed] == ["event stream request timed out after 0.2 s"]


def _turn() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


@pytest_twisted.ensureDeferred
async def test_a_garbage_answer_is_a_named_request_failure() -> None:
    """Bytes that are not HTTP: the poll fails naming the request and the fault."""

    class Garbage(Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(b"SSH-2.0-OpenSSH_9\r\n\r\n")

    port = reactor.listenTCP(0, Factory.forProtocol(Garbage), interface="127.0.0.1")
    client = PollClient(reactor, session())
    try:
        with pytest.raises(SignalRError, match="poll request failed: HttpProtocolError: not an"):
            await within(
                client.request(
                    "GET", f"http://127.0.0.1:{port.getHost().port}/hub", "poll", 5.0, max_size=64
                )
            )
    finally:
        client.close()
        await port.stopListening()

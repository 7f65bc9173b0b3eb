"""
A lean HTTP/1.1 client for the receive side of the HTTP transports: the event stream
of Server-Sent Events and the polls of long polling.

Twisted's ``Agent`` costs about a microsecond per HTTP chunk of an event stream (its
chunked decoder runs a Python state machine per chunk and hands each one through its
response proxy) and a few hundred microseconds per long poll (URL objects, header
objects, the pool, Deferred chains, treq's wrappers).  These requests need little of
that: one connection of their own (an event stream is never pooled; polls reuse one
kept-alive connection), the session's headers and cookies, a body read whole or
streamed.  So :class:`ResponseParser` reads a response sans-I/O, decoding a chunked
body a whole socket read at a time, and :class:`HttpChannel` runs requests on one
connection, reached the way the session's ``Agent`` reaches it (the proxy's
``CONNECT`` tunnel, TLS with the session's policy).

It is used only when the session runs its own HTTP client (not a user's treq-like
one) and the URL is plain ASCII ``http``/``https`` without credentials; otherwise the
transports go through :class:`~txsignalr._http.HttpSession` as before.
"""

from __future__ import annotations

import email.message
import math
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS

from txsignalr._http import HttpSession
from txsignalr._proxy import TunnelEndpoint
from txsignalr.errors import MessageTooLarge, SignalRError

__all__ = [
    "HttpChannel",
    "HttpProtocolError",
    "PollClient",
    "ResponseHead",
    "ResponseParser",
    "lean_http",
]

#: the most a response's status line and headers may hold together
MAX_HEAD = 64 * 1024
#: the most a chunk-size line (with its extensions) or a trailer line may hold
MAX_CHUNK_LINE = 1024
#: the most trailer bytes after the last chunk
MAX_TRAILER = 16 * 1024
_HEX = b"0123456789abcdefABCDEF"


class HttpProtocolError(SignalRError):
    """The server's bytes are not an HTTP/1.1 response this client can read."""


class ResponseHead:
    """
    A response's status and headers.

    :ivar status: the status code.
    :ivar headers: ``(lower-case name, value)`` pairs, in order.
    """

    __slots__ = ("headers", "status", "version")

    def __init__(self, version: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.version = version
        self.status = status
        self.headers = headers

    def get(self, name: bytes) -> list[bytes]:
        """Every value of the header ``name`` (lower case)."""
        return [v for k, v in self.headers if k == name]

    def first(self, name: bytes, default: bytes = b"") -> bytes:
        """The first value of the header ``name`` (lower case), or ``default``."""
        for k, v in self.headers:
            if k == name:
                return v
        return default


class ResponseSink(TypingProtocol):
    """What a :class:`ResponseParser` tells about the response it reads."""

    def response_head(self, head: ResponseHead) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self, reusable: bool) -> None: ...


# body framings
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _CLOSE, _DONE = range(8)


class ResponseParser:
    """
    Reads one HTTP/1.1 response (sans-I/O): the head, then a body framed by
    ``Content-Length``, chunked or ended by the close of the connection.  The body is
    handed over as it is decoded, one piece per :meth:`feed` at most.

    :param sink: told of the head, each piece of body and the end.
    :param bodyless: the request was a ``HEAD`` (the answer has no body).
    :raises HttpProtocolError: (from :meth:`feed`) for bytes that are not a response.
    """

    def __init__(self, sink: ResponseSink, bodyless: bool = False) -> None:
        self._sink = sink
        self._bodyless = bodyless
        self._state = _HEAD
        self._buf = b""
        self._remaining = 0
        self._reusable = False
        #: the response head, once read
        self.head: ResponseHead | None = None

    @property
    def done(self) -> bool:
        """The whole response was read."""
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        """
        Read more of the response.

        :returns: the bytes past the end of the response (a server's next answer,
            or garbage), ``b""`` while it has not ended.
        """
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._state == _HEAD:
            data = self._read_head(data)
            if self._state == _HEAD:
                return b""
        state = self._state
        if state == _LENGTH:
            n = len(data)
            if n < self._remaining:
                self._remaining -= n
                if n:
                    self._sink.response_body(data)
                return b""
            body, rest = data[: self._remaining], data[self._remaining :]
            self._remaining = 0
            if body:
                self._sink.response_body(body)
            self._finish()
            return rest
        if state == _CLOSE:
            if data:
                self._sink.response_body(data)
            return b""
        if state == _DONE:
            return data
        return self._chunked(data)

    def feed_eof(self) -> None:
        """
        The connection closed.

        :raises HttpProtocolError: when the response was not over.
        """
        if self._state == _CLOSE:
            self._state = _DONE
            self._sink.response_end(False)
        elif self._state == _HEAD and not self._buf:
            raise HttpProtocolError("the connection closed before an answer came")
        elif self._state != _DONE:
            what = "headers" if self._state == _HEAD else "body"
            raise HttpProtocolError(f"the connection closed in the middle of the response {what}")

    def _finish(self) -> None:
        self._state = _DONE
        self._sink.response_end(self._reusable)

    def _read_head(self, data: bytes) -> bytes:
        while True:
            end = data.find(b"\r\n\r\n")
            lf_end = data.find(b"\n\n")
            if end < 0 or 0 <= lf_end < end:
                if lf_end < 0:
                    if len(data) > MAX_HEAD:
                        raise HttpProtocolError(
                            f"the response headers are over the {MAX_HEAD} byte limit"
                        )
                    self._buf = data
                    return b""
                end, skip = lf_end, 2
            else:
                skip = 4
            if end > MAX_HEAD:
                raise HttpProtocolError(f"the response headers are over the {MAX_HEAD} byte limit")
            head = self._parse_head(data[:end])
            data = data[end + skip :]
            if 100 <= head.status < 200 and head.status != 101:
                continue  # an interim answer (100 Continue): the real one follows
            self.head = head
            self._frame(head)
            self._sink.response_head(head)
            if self._state == _DONE:  # an answer without a body
                self._sink.response_end(self._reusable)
            return data

    @staticmethod
    def _parse_head(raw: bytes) -> ResponseHead:
        lines = raw.split(b"\n")
        status_line = lines[0].rstrip(b"\r")
        parts = status_line.split(b" ", 2)
        if (
            len(parts) < 2
            or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            raise HttpProtocolError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            line = line.rstrip(b"\r")
            if line[:1] in (b" ", b"\t") and headers:
                # obsolete line folding: a continuation of the previous value
                name, value = headers[-1]
                headers[-1] = (name, value + b" " + line.strip())
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise HttpProtocolError(f"not an HTTP header line: {line[:80]!r}")
            headers.append((name.lower(), value.strip()))
        return ResponseHead(parts[0], int(parts[1]), headers)

    def _frame(self, head: ResponseHead) -> None:
        status = head.status
        connection = b",".join(head.get(b"connection")).lower()
        keep = (
            b"close" not in connection
            if head.version == b"HTTP/1.1"
            else b"keep-alive" in connection
        )
        self._reusable = keep
        if self._bodyless or status in (204, 304) or 100 <= status < 200:
            self._state = _DONE
            return
        coding = b",".join(head.get(b"transfer-encoding")).lower()
        if coding:
            if coding.rsplit(b",", 1)[-1].strip() == b"chunked":
                self._state = _CHUNK_SIZE
            else:
                self._state = _CLOSE
                self._reusable = False
            return
        lengths = {v.strip() for v in b",".join(head.get(b"content-length")).split(b",")}
        lengths.discard(b"")
        if lengths:
            if len(lengths) != 1:
                raise HttpProtocolError("the response has conflicting Content-Length headers")
            (length,) = lengths
            if not length.isdigit() or len(length) > 18:
                raise HttpProtocolError(f"a bad Content-Length: {length[:40]!r}")
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _DONE
            return
        self._state = _CLOSE
        self._reusable = False

    def _chunked(self, data: bytes) -> bytes:
        pieces: list[bytes] = []
        pos = 0
        end = len(data)
        state = self._state
        remaining = self._remaining
        try:
            while pos < end:
                if state == _CHUNK_SIZE:
                    eol = data.find(b"\r\n", pos)
                    if eol < 0:
                        if end - pos > MAX_CHUNK_LINE:
                            raise HttpProtocolError("a chunk-size line is too long")
                        self._buf = data[pos:]
                        pos = end
                        break
                    line = data[pos:eol]
                    semi = line.find(b";")
                    if semi >= 0:
                        line = line[:semi]
                    line = line.rstrip(b" \t")
                    if not line or len(line) > 15 or line.translate(None, _HEX):
                        raise HttpProtocolError(f"a bad chunk size: {data[pos:eol][:40]!r}")
                    remaining = int(line, 16)
                    pos = eol + 2
                    if remaining == 0:
                        state = _TRAILER
                        self._remaining = 0
                        continue
                    if end - pos >= remaining + 2:
                        # the whole chunk is here: the common case
                        stop = pos + remaining
                        if data[stop : stop + 2] != b"\r\n":
                            raise HttpProtocolError("a chunk does not end in CRLF")
                        pieces.append(data[pos:stop])
                        pos = stop + 2
                        continue
                    state = _CHUNK_DATA
                elif state == _CHUNK_DATA:
                    take = min(remaining, end - pos)
                    pieces.append(data[pos : pos + take])
                    pos += take
                    remaining -= take
                    if remaining == 0:
                        state = _CHUNK_CRLF
                elif state == _CHUNK_CRLF:
                    if end - pos < 2:
                        self._buf = data[pos:]
                        pos = end
                        break
                    if data[pos : pos + 2] != b"\r\n":
                        raise HttpProtocolError("a chunk does not end in CRLF")
                    pos += 2
                    state = _CHUNK_SIZE
                elif state == _TRAILER:
                    eol = data.find(b"\r\n", pos)
                    if eol < 0:
                        if end - pos > MAX_CHUNK_LINE:
                            raise HttpProtocolError("a trailer line is too long")
                        self._buf = data[pos:]
                        pos = end
                        break
                    self._remaining += eol + 2 - pos
                    if self._remaining > MAX_TRAILER:
                        raise HttpProtocolError("the response trailers are too long")
                    line = data[pos:eol]
                    pos = eol + 2
                    if not line:
                        state = _DONE
                        break
                else:  # pragma: no cover - the states above are all there is
                    raise AssertionError(state)
        finally:
            self._state = state
            if state != _TRAILER:
                self._remaining = remaining
        if pieces:
            self._sink.response_body(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if state == _DONE:
            self._sink.response_end(self._reusable)
            return data[pos:]
        return b""


# -- requests ------------------------------------------------------------------------


class _Target:
    """Where a URL's request goes, and its first lines."""

    __slots__ = ("host", "key", "port", "secure", "start")

    def __init__(self, url: str, method: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in ("http", "https") or not host:
            raise ValueError("not an http(s) URL")
        self.secure = scheme == "https"
        default = 443 if self.secure else 80
        self.port = parts.port or default
        self.host = host
        netloc = f"[{host}]" if ":" in host else host
        if self.port != default:
            netloc = f"{netloc}:{self.port}"
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        self.key = (scheme, host, self.port)
        self.start = f"{method} {path} HTTP/1.1\r\nHost: {netloc}\r\n".encode("ascii")


def lean_http(http: HttpSession, url: str) -> bool:
    """
    Whether a request to ``url`` may go through this module: the session runs its
    own client (a user's treq-like client is always used as given), and the URL is
    plain ASCII ``http``/``https`` without credentials.
    """
    if getattr(http, "_pool", None) is None:
        return False
    if not url.isascii():
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme.lower() in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and parts.password is None
        and " " not in url
    )


def _clean(text: str) -> bytes:
    """A header name or value with line breaks replaced, as Twisted's ``Headers`` does."""
    if "\r" in text or "\n" in text:
        text = " ".join(text.splitlines())
    return text.encode("latin-1", "replace")


def request_bytes(
    http: HttpSession,
    method: str,
    url: str,
    target: _Target,
    headers: Mapping[str, str] | None,
    body: bytes | None,
) -> bytes:
    """The whole request: its line, Host, the session's headers and cookies, the body."""
    if len(http.cookies):
        fields = dict(http.handshake_headers(url))  # the custom headers, token, cookies
    else:
        # No cookie to add: what handshake_headers gives without building a
        # urllib Request for the jar (half of a poll's cost in the client).
        fields = dict(http._base(url))
    if headers:
        lower = {k.lower(): k for k in fields}
        for k, v in headers.items():
            old = lower.get(k.lower())
            if old is not None:
                del fields[old]
            fields[k] = v
    lines = [target.start]
    for k, v in fields.items():
        if k.lower() in ("host", "content-length", "transfer-encoding"):
            continue
        lines.append(_clean(k) + b": " + _clean(v) + b"\r\n")
    if body is not None:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    if body:
        lines.append(body)
    return b"".join(lines)


def store_cookies(http: HttpSession, url: str, head: ResponseHead) -> None:
    """Add the cookies the answer sets to the session's jar."""
    values = head.get(b"set-cookie")
    if not values:
        return
    message = email.message.Message()
    for value in values:
        message["Set-Cookie"] = value.decode("latin-1")

    class _Answer:
        def info(self) -> email.message.Message:
            return message

    http.cookies.extract_cookies(_Answer(), urllib.request.Request(url))  # type: ignore[arg-type]


class HttpChannel(Protocol):
    """
    One HTTP/1.1 connection running one request at a time; each answer goes to the
    :class:`ResponseSink` its request named.
    """

    def __init__(self) -> None:
        self._parser: ResponseParser | None = None
        self._sink: ResponseSink | None = None
        self._on_lost: Callable[[Exception], None] | None = None
        self.lost = False
        self.idle = False

    def connectionMade(self) -> None:
        # A request is one write, but a poll's round trip is what long polling waits
        # on: no Nagle delay behind an unacknowledged segment (TLS forwards it too).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass

    def request(
        self, data: bytes, sink: ResponseSink, on_lost: Callable[[Exception], None]
    ) -> None:
        """Send ``data`` (a whole request); its answer goes to ``sink``."""
        assert self.transport is not None
        self.idle = False
        self._sink = sink
        self._on_lost = on_lost
        self._parser = ResponseParser(sink)
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            if data.strip():
                self._fail(HttpProtocolError("the server sent bytes no request asked for"))
            return
        try:
            rest = parser.feed(data)
        except HttpProtocolError as e:
            self._fail(e)
            return
        except Exception as e:
            # the sink's own failure: the connection is of no further use
            self._fail(e)
            return
        if parser.done and self._parser is parser:
            self._parser = None
            self._sink = self._on_lost = None
            if rest.strip():
                self._fail(HttpProtocolError("the server sent bytes past its answer"))

    def _fail(self, error: Exception) -> None:
        on_lost = self._on_lost
        self._parser = None
        self._sink = self._on_lost = None
        self.close()
        if on_lost is not None:
            on_lost(error)

    def close(self) -> None:
        """Drop the connection at once; its request, if any, is told nothing more."""
        self.lost = True
        self.idle = False
        self._parser = None
        self._sink = self._on_lost = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.idle = False
        parser, on_lost = self._parser, self._on_lost
        self._parser = None
        self._sink = self._on_lost = None
        if parser is None or on_lost is None:
            return
        try:
            parser.feed_eof()
        except HttpProtocolError as e:
            on_lost(e)
        except Exception as e:  # the sink's own failure
            on_lost(e)
        else:
            if not parser.done:  # pragma: no cover - feed_eof ends or raises
                on_lost(HttpProtocolError("the connection closed"))


def connect(http: HttpSession, reactor: Any, target: _Target, url: str) -> Deferred[HttpChannel]:
    """Open a connection for ``url`` as the session's Agent would: proxy, TLS."""
    proxy = http.proxy_for(url)
    endpoint: Any
    if proxy is None:
        endpoint = HostnameEndpoint(reactor, target.host, target.port)
    else:
        endpoint = TunnelEndpoint(reactor, proxy, target.host, target.port)
    if target.secure:
        policy = http.tls or BrowserLikePolicyForHTTPS()
        creator = policy.creatorForNetloc(target.host.encode("idna"), target.port)
        endpoint = wrapClientTLS(creator, endpoint)
    d: Deferred[HttpChannel] = endpoint.connect(Factory.forProtocol(HttpChannel))
    return d


def _failure_text(what: str, error: BaseException) -> SignalRError:
    """``error`` as the session reports a failed request: a SignalRError of ours (a
    proxy's, a bound's) as it is, anything else (a bad answer too) named."""
    if isinstance(error, SignalRError) and not isinstance(error, HttpProtocolError):
        return error
    return SignalRError(f"{what} request failed: {type(error).__name__}: {error}")


class _Collect:
    """A :class:`ResponseSink` that reads a whole body within a bound."""

    def __init__(
        self,
        done: Callable[[ResponseHead, bytes, bool], None],
        max_size: int,
        headed: Callable[[], None],
    ) -> None:
        self._done = done
        self._headed = headed
        self._max = max_size
        self._chunks: list[bytes] = []
        self._size = 0
        self.head: ResponseHead | None = None

    def response_head(self, head: ResponseHead) -> None:
        self.head = head
        length = head.first(b"content-length")
        if length.isdigit() and int(length) > self._max:
            raise MessageTooLarge(
                f"a response body is over the {self._max} byte limit (max_receive_size)"
            )
        self._headed()

    def response_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max:
            self._chunks = []
            raise MessageTooLarge(
                f"a response body is over the {self._max} byte limit (max_receive_size)"
            )
        self._chunks.append(data)

    def response_end(self, reusable: bool) -> None:
        assert self.head is not None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._done(self.head, body, reusable)


class PollClient:
    """
    Requests one after the other on one kept-alive connection of their own (the
    polls of one long-polling transport), each read whole.  :meth:`close` drops it.
    """

    def __init__(self, reactor: IReactorTime, http: HttpSession) -> None:
        self._reactor = reactor
        self._http = http
        self._channel: HttpChannel | None = None
        self._key: tuple[str, str, int] | None = None
        self._closed = False

    def request(
        self,
        method: str,
        url: str,
        what: str,
        timeout: float | None,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_size: int,
    ) -> Deferred[tuple[int, bytes]]:
        """
        Send a request and read its whole answer, as
        :meth:`~txsignalr._http.HttpSession.request` does: within ``timeout``
        seconds for the answer's head, and again for its body; an answer other than
        2xx has the request's secrets taken out of its body.

        Cancelling it closes the connection.

        :raises SignalRError: (through the Deferred) when it fails or times out.
        """
        http = self._http
        limit = http.timeout if timeout is None else timeout
        target = _Target(url, method)
        raw = request_bytes(http, method, url, target, headers, data)
        state: dict[str, Any] = {"channel": None, "connecting": None, "timer": None}

        def cancel(d: Deferred[tuple[int, bytes]]) -> None:
            stop_timer()
            connecting = state["connecting"]
            if connecting is not None:
                state["connecting"] = None
                connecting.cancel()
            channel = state["channel"]
            if channel is not None:
                channel.close()

        result: Deferred[tuple[int, bytes]] = Deferred(cancel)

        def stop_timer() -> None:
            timer: IDelayedCall | None = state["timer"]
            state["timer"] = None
            if timer is not None and timer.active():
                timer.cancel()

        def start_timer() -> None:
            stop_timer()
            if limit != math.inf:
                state["timer"] = self._reactor.callLater(limit, timed_out)

        def timed_out() -> None:
            state["timer"] = None
            fail(SignalRError(f"{what} request timed out after {limit:g} s"), close=True)

        def fail(error: BaseException, close: bool = False) -> None:
            stop_timer()
            connecting = state["connecting"]
            state["connecting"] = None
            channel = state["channel"]
            state["channel"] = None
            if close and channel is not None:
                channel.close()
            if connecting is not None:
                connecting.cancel()
            if not result.called:
                result.errback(Failure(_failure_text(what, error)))

        def answered(head: ResponseHead, body: bytes, reusable: bool) -> None:
            stop_timer()
            channel: HttpChannel | None = state["channel"]
            state["channel"] = None
            store_cookies(http, url, head)
            if channel is not None:
                if reusable and not self._closed and not channel.lost:
                    channel.idle = True
                    self._keep(channel, target.key)
                else:
                    channel.close()
            if not 200 <= head.status < 300 and body:
                body = http.redact(body, url)
            if not result.called:
                result.callback((head.status, body))

        def headed() -> None:
            # the body has its own bound, as with the session
            timer: IDelayedCall | None = state["timer"]
            if timer is not None and timer.active():
                timer.reset(limit)

        collector = _Collect(answered, max_size, headed)

        def on_lost(error: Exception) -> None:
            if state["channel"] is not None:
                state["channel"] = None
                fail(error)

        def go(channel: HttpChannel) -> None:
            state["connecting"] = None
            if result.called:
                channel.close()
                return
            state["channel"] = channel
            channel.request(raw, collector, on_lost)

        start_timer()
        channel = self._take(target.key)
        if channel is not None:
            go(channel)
        else:
            connecting = connect(http, self._reactor, target, url)
            state["connecting"] = connecting

            def not_connected(f: Failure) -> None:
                state["connecting"] = None
                if not f.check(CancelledError):
                    fail(f.value or SignalRError("the connection failed"))

            connecting.addCallbacks(go, not_connected)
        return result

    def _take(self, key: tuple[str, str, int]) -> HttpChannel | None:
        channel, self._channel = self._channel, None
        if channel is None:
            return None
        if channel.lost or not channel.idle or self._key != key:
            channel.close()
            return None
        return channel

    def _keep(self, channel: HttpChannel, key: tuple[str, str, int]) -> None:
        old, self._channel = self._channel, channel
        self._key = key
        if old is not None and old is not channel:
            old.close()

    def close(self) -> None:
        """Drop the kept connection; no request is made after this."""
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()


class StreamSink(TypingProtocol):
    """What :func:`open_stream` tells of the streamed answer."""

    def stream_head(self, status: int, content_type: bytes) -> bool:
        """The answer's head; ``False``: do not read the body (the stream is closed)."""
        ...

    def stream_data(self, data: bytes) -> None: ...

    def stream_failed(self, error: SignalRError) -> None:
        """The request failed before its head arrived (timed out, refused...)."""
        ...

    def stream_ended(self) -> None:
        """The body ended, or the connection under it was lost."""
        ...


class StreamRequest:
    """
    One streamed request on a connection of its own (an event stream): the head
    within ``timeout`` seconds, then the body as it comes, until :meth:`close`.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        http: HttpSession,
        method: str,
        url: str,
        what: str,
        sink: StreamSink,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self._reactor = reactor
        self._http = http
        self._url = url
        self._what = what
        self._sink = sink
        self._closed = False
        self._headed = False
        self._channel: HttpChannel | None = None
        self._limit = http.timeout if timeout is None else timeout
        self._timer: IDelayedCall | None = None
        target = _Target(url, method)
        self._raw = request_bytes(http, method, url, target, headers, None)
        if self._limit != math.inf:
            self._timer = reactor.callLater(self._limit, self._timed_out)
        self._connecting: Deferred[HttpChannel] | None = connect(http, reactor, target, url)
        self._connecting.addCallbacks(self._connected, self._not_connected)
        # the sink's body hook, called straight from the parser
        self.response_body = sink.stream_data

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(SignalRError(f"{self._what} request timed out after {self._limit:g} s"))

    def _fail(self, error: BaseException) -> None:
        if self._closed:
            return
        self.close()
        if self._headed:
            self._sink.stream_ended()
        else:
            self._sink.stream_failed(_failure_text(self._what, error))

    def _connected(self, channel: HttpChannel) -> None:
        self._connecting = None
        if self._closed:
            channel.close()
            return
        self._channel = channel
        channel.request(self._raw, self, self._fail)

    def _not_connected(self, failure: Failure) -> None:
        self._connecting = None
        if not failure.check(CancelledError):
            self._fail(failure.value or SignalRError("the connection failed"))

    def response_head(self, head: ResponseHead) -> None:
        self._stop_timer()
        self._headed = True
        store_cookies(self._http, self._url, head)
        if not self._sink.stream_head(head.status, head.first(b"content-type")):
            self.close()

    def response_end(self, reusable: bool) -> None:
        if not self._closed:
            self.close()
            self._sink.stream_ended()

    def close(self) -> None:
        """Stop: cancel the request or drop its connection."""
        self._closed = True
        self._stop_timer()
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

"""
HTTP for a connection: requests with the user's headers and one cookie jar, the
connection's own connection pool, and the handshake headers of a WebSocket upgrade.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import urllib.request
from collections.abc import Callable, Mapping
from http.cookiejar import CookieJar
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlsplit

import twisted.web.client
from twisted.internet import protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    ContentDecoderAgent,
    CookieAgent,
    GzipDecoder,
    HTTPConnectionPool,
    RedirectAgent,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    IAgent,
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from txsignalr._proxy import ProxyURL, TunnelEndpoint, proxy_for
from txsignalr.errors import MessageTooLarge, NegotiationError, SignalRError

__all__ = ["HTTPClientLike", "HttpSession", "read_body", "tcp_endpoint"]

#: query parameters of SignalR's own that are no secret, left in error bodies
_PUBLIC_QUERY = frozenset(
    {"transport", "clientProtocol", "connectionData", "negotiateVersion", "tid", "messageId"}
)
#: shorter values are not looked for in error bodies (too likely to be ordinary text)
_MIN_SECRET = 4
_REDACTED = b"<redacted>"
_PROXY_VARIABLES: tuple[str, ...] = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")
_PROXY_VARIABLES += ("all_proxy", "ALL_PROXY")
#: the most a body may hold when the request names no limit of its own: negotiate,
#: /start, /abort, /ping answer in a few hundred bytes (an Azure redirect with its
#: token in a few KiB), so anything near this is not a SignalR server talking
CONTROL_BODY_LIMIT = 1024 * 1024


def origin_of(url: str) -> tuple[str, str, int | None]:
    """
    The origin of ``url``: (scheme, host, port), ``ws``/``wss`` counted as
    ``http``/``https`` and default ports filled in, so that the WebSocket URL of a
    server is on the same origin as its negotiate URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ("", url, None)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return (scheme, (parts.hostname or "").lower(), port)


def tcp_endpoint(reactor: Any, host: str, port: int) -> Any:
    """
    A client endpoint for ``host``: a plain TCP one for an IP address, which needs no
    name resolution, else a ``HostnameEndpoint``.

    ``HostnameEndpoint`` resolves even an address literal through the reactor's
    resolver, a round trip through the thread pool, and builds a class and a
    happy-eyeballs attempt for every connect (about 0.3 ms of CPU a connect).
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port)
    return HostnameEndpoint(reactor, host, port)


class _BodyReader(protocol.Protocol):
    """Collects a response body; stopping it closes the connection under it."""

    def __init__(
        self,
        finished: Deferred[bytes],
        max_size: int | None = None,
        what: str = "a response body",
        limit: str = "max_receive_size",
    ) -> None:
        self._finished = finished
        self._what = what
        self._limit = limit
        self._chunks: list[bytes] = []
        self._max = max_size
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._chunks.append(data)
        if self._max is not None:
            self._size += len(data)
            if self._size > self._max:
                self._chunks = []
                if self.transport is not None:
                    self.transport.stopProducing()  # type: ignore[attr-defined]
                self._finished.errback(
                    MessageTooLarge(
                        f"{self._what} is over the {self._max} byte limit ({self._limit})"
                    )
                )

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)


def read_body(
    response: IResponse,
    max_size: int | None = None,
    what: str = "a response body",
    limit: str = "max_receive_size",
) -> Deferred[bytes]:
    """
    Read a whole response body.  Unlike ``treq.content``, cancelling the Deferred (or
    its timeout firing) closes the connection, so an abandoned long poll does not keep
    its socket open or go back to the pool.

    :param max_size: the most bytes the body may hold; a larger one closes the
        connection and fails with :class:`~txsignalr.MessageTooLarge`.
    :param what: the body, as the error names it.
    :param limit: where the limit comes from, as the error names it.
    """
    reader: _BodyReader | None = None

    def cancel(d: Deferred[bytes]) -> None:
        transport = None if reader is None else reader.transport
        if transport is not None:
            transport.stopProducing()  # type: ignore[attr-defined]

    finished: Deferred[bytes] = Deferred(cancel)
    reader = _BodyReader(finished, max_size, what, limit)
    response.deliverBody(reader)
    return finished


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    """Endpoints for the Agent: through the proxy's CONNECT tunnel when one applies."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, http: HttpSession) -> None:
        self._reactor = reactor
        self._policy = policy
        self._http = http

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else uri.host
        scheme = uri.scheme.decode() if isinstance(uri.scheme, bytes) else uri.scheme
        proxy = None
        if self._http.may_proxy():
            netloc = f"[{host}]" if ":" in host else host  # an IPv6 address
            proxy = self._http.proxy_for(f"{scheme}://{netloc}:{uri.port}/")
        endpoint: Any
        if proxy is None:
            endpoint = tcp_endpoint(self._reactor, host, uri.port)
        else:
            endpoint = TunnelEndpoint(self._reactor, proxy, host, uri.port)
        if scheme == "https":
            creator = self._policy.creatorForNetloc(host.encode("idna"), uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


#: a URL that is a valid URI as it is: ASCII, nothing treq would percent-encode
_PLAIN_URI = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*\Z")


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory, written at once (treq's FileBodyProducer
    writes it from a cooperator task, on a later reactor turn)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


#: what CookieAgent hands the jar as the request (its name depends on Twisted's version)
_FakeRequest: Any = getattr(twisted.web.client, "_FakeStdlibRequest", None) or getattr(
    twisted.web.client, "_FakeUrllib2Request", None
)


#: whether Twisted's CookieAgent has the private parts the lean path uses; a Twisted
#: without them takes CookieAgent's own path for every request
_LEAN_COOKIES: Any = (
    _FakeRequest is not None
    and hasattr(CookieAgent, "_extractCookies")
    and hasattr(CookieAgent(None, CookieJar()), "_agent")  # type: ignore[arg-type]
)


class _CookieAgent(CookieAgent):
    """
    A ``CookieAgent`` that skips the jar when it has nothing to do: with no cookie in
    the jar there is no ``Cookie`` header to add, and an answer without
    ``Set-Cookie`` has nothing to store (the jar parses the URL for either, whose
    request object Twisted builds by parsing it once more).
    """

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        if len(self.cookieJar) or not _LEAN_COOKIES:
            return super().request(method, uri, headers, bodyProducer)
        if headers is None:
            headers = Headers()
        d = self._agent.request(method, uri, headers, bodyProducer)
        return d.addCallback(self._extract_if_set, uri)

    def _extract_if_set(self, response: IResponse, uri: bytes) -> IResponse:
        has = response.headers.hasHeader
        if has(b"set-cookie") or has(b"set-cookie2"):
            return self._extractCookies(response, _FakeRequest(uri))
        return response


class _AgentClient:
    """
    The session's own HTTP client: what ``treq.HTTPClient.request`` does for the
    requests a connection sends (cookies from and into the session's jar, redirects
    followed, gzip decoded), with its agent stack built once instead of on every
    request, the URL parsed by hyperlink only when it is not a plain URI already, and
    the body written at once.  Responses are not buffered (every caller reads them
    with :func:`read_body` or streams them).
    """

    def __init__(self, agent: IAgent, cookies: CookieJar) -> None:
        self._agent: IAgent = ContentDecoderAgent(
            RedirectAgent(_CookieAgent(agent, cookies)), [(b"gzip", GzipDecoder)]
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[bytes | str, list[bytes | str]] | None = None,
        cookies: object = None,
        data: bytes | None = None,
        unbuffered: bool = False,
    ) -> Deferred[IResponse]:
        if _PLAIN_URI.match(url):
            uri = url.encode("ascii")
        else:
            from hyperlink import EncodedURL

            uri = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
        raw = Headers()
        if headers:
            for k, v in headers.items():
                raw.setRawHeaders(k, v)
        body = None if data is None else _BytesProducer(data)
        return self._agent.request(method.encode("ascii").upper(), uri, raw, body)


class _Deadline:
    """
    One timer for the phases of a request (its answer's headers, then its body), each
    allowed its own ``limit`` seconds from its start: the timer is moved on to the
    next phase instead of a new one being made (``Deferred.addTimeout`` makes a
    timer and two callbacks a phase).
    """

    __slots__ = ("_call", "_clock", "_waiting", "expired")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._call: Any = None
        self._waiting: Deferred[Any] | None = None
        #: the timer fired while a phase was waiting (and cancelled it)
        self.expired = False

    def watch(self, d: Deferred[Any], limit: float) -> None:
        """Cancel ``d`` unless it fires within ``limit`` seconds from now."""
        self._waiting = d
        d.addBoth(self._settled)
        if self._call is None:
            self._call = self._clock.callLater(limit, self._fire)
        else:
            self._call.reset(limit)

    def _settled(self, result: object) -> object:
        self._waiting = None
        return result

    def _fire(self) -> None:
        self._call = None
        d, self._waiting = self._waiting, None
        # _settled clears _waiting once the phase's result has gone by; a Deferred that
        # is called but still waits on another (the agent stack chains them) is still
        # waiting, and cancel() reaches the inner one
        if d is not None:
            self.expired = True
            d.cancel()

    def stop(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None


class HTTPClientLike(Protocol):
    """What the connection needs of an HTTP client: treq's ``request``."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]: ...


class HttpSession:
    """
    The HTTP side of one connection.

    :param reactor: for the pool and the timeouts.
    :param headers: sent on every request (and the WebSocket handshake).
    :param cookies: the cookie jar; cookies the server sets are added to it.
    :param tls: the TLS policy for https.
    :param client: a treq-style client to use instead of the session's own.
    :param timeout: the default seconds allowed for a request and its body.
    """

    #: a timeout that means none: for requests bounded by something else
    no_timeout = math.inf

    def __init__(
        self,
        reactor: IReactorTime,
        headers: Mapping[str, str],
        cookies: CookieJar,
        tls: IPolicyForHTTPS | None,
        client: HTTPClientLike | None,
        timeout: float,
        origin: str | None = None,
        proxy: str | bool | None = None,
    ) -> None:
        self._reactor = reactor
        self.headers = dict(headers)
        #: a bearer token for every request and upgrade (an access token factory's or
        #: a negotiate redirect's); it takes the place of an ``Authorization`` header
        self.bearer: str | None = None
        #: the origin the user's ``Authorization`` header and the factory's tokens
        #: belong to (the connection URL's); ``None``: any origin
        self._origin = origin_of(origin) if origin is not None else None
        #: the origin :attr:`bearer` belongs to: a redirect's token, its URL's
        self._bearer_origin = self._origin
        self.cookies = cookies
        self.tls = tls
        self.timeout = timeout
        self._pool: HTTPConnectionPool | None = None
        #: ``proxy=`` as given: None (the environment), False (never) or a URL
        self.proxy = proxy
        if isinstance(proxy, str):
            ProxyURL.parse(proxy)  # InvalidURL now, not at the first request
        if client is None:
            # The connection owns its pool and closes it on stop, so no idle HTTP
            # connection (or its timer) outlives the connection.
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            # A GET (an ASP.NET Core long poll) whose pooled connection broke is not
            # to be re-sent behind the transport's back: the loss must be seen.
            self._pool.retryAutomatically = False
            policy = tls or BrowserLikePolicyForHTTPS()
            agent = Agent.usingEndpointFactory(
                reactor, _EndpointFactory(reactor, policy, self), pool=self._pool
            )
            own: Any = _AgentClient(agent, cookies)
            client = own
        assert client is not None
        self._client: HTTPClientLike = client
        #: whether responses carry cookies to copy into the jar (a treq client's
        #: do; the session's own client sets them in the jar itself)
        self._copy_cookies = self._pool is None

    def may_proxy(self) -> bool:
        """Whether any request may go through a proxy (``proxy=`` or the environment)."""
        if self.proxy is False:
            return False
        if isinstance(self.proxy, str):
            return True
        return any(os.environ.get(name, "").strip() for name in _PROXY_VARIABLES)

    def proxy_for(self, url: str) -> ProxyURL | None:
        """The proxy a request or WebSocket to ``url`` goes through (None: direct)."""
        if not self.may_proxy():
            return None  # no URL to parse when no proxy can apply
        return proxy_for(url, self.proxy)

    def _headers(
        self, url: str, extra: Mapping[str, str] | None
    ) -> dict[bytes | str, list[bytes | str]]:
        headers: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in self._base(url).items()}
        if extra:
            for k, v in extra.items():
                headers[k] = [v]
        return headers

    async def _bounded(
        self, d: Deferred[Any], limit: float, what: str, deadline: _Deadline | None = None
    ) -> Any:
        """
        Await ``d`` for at most ``limit`` seconds (on ``deadline``'s timer when given);
        every failure as a SignalRError.
        """
        timed_out = False
        if limit != math.inf and deadline is not None:
            deadline.watch(d, limit)
        elif limit != math.inf:

            def on_timeout(result: object, timeout: float) -> object:
                nonlocal timed_out
                timed_out = True
                return result

            d.addTimeout(limit, self._reactor, onTimeoutCancel=on_timeout)
        try:
            return await d
        except SignalRError:
            raise
        except Exception as e:
            # The timeout cancels the request, which treq reports in many ways (a
            # CancelledError, or ResponseNeverReceived wrapping one): say what happened.
            if timed_out or (deadline is not None and deadline.expired):
                raise SignalRError(f"{what} request timed out after {limit:g} s") from None
            if isinstance(e, CancelledError):
                raise
            raise SignalRError(f"{what} request failed: {type(e).__name__}: {e}") from e

    def open(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        unbuffered: bool = False,
        deadline: _Deadline | None = None,
    ) -> Deferred[IResponse]:
        """
        Send a request; the Deferred fires with the response once its headers arrived.

        :param timeout: seconds allowed (the session's default when None;
            :attr:`no_timeout` for none).
        :param unbuffered: do not read the body into memory (for streaming it).
        :param deadline: the timer to bound the wait with (one of its own when None).
        :raises SignalRError: (through the Deferred) when the request fails or times out.
        """
        limit = self.timeout if timeout is None else timeout
        return Deferred.fromCoroutine(
            self._open(method, url, what, data, headers, limit, unbuffered, deadline)
        )

    async def _open(
        self,
        method: str,
        url: str,
        what: str,
        data: bytes | None,
        headers: Mapping[str, str] | None,
        limit: float,
        unbuffered: bool,
        deadline: _Deadline | None,
    ) -> IResponse:
        """:meth:`open` as a coroutine, for :meth:`request` to await without a Deferred."""
        kwargs: dict[str, Any] = {
            "headers": self._headers(url, headers),
            "cookies": self.cookies,
        }
        if data is not None:
            kwargs["data"] = data
        if unbuffered:
            kwargs["unbuffered"] = True
        response: IResponse = await self._bounded(
            self._client.request(method, url, **kwargs), limit, what, deadline
        )
        cookies = getattr(response, "cookies", None) if self._copy_cookies else None
        if cookies is not None:
            for cookie in cookies():
                self.cookies.set_cookie(cookie)
        return response

    async def request(
        self,
        method: str,
        url: str,
        what: str,
        timeout: float | None = None,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_size: int | None = None,
    ) -> tuple[int, bytes]:
        """
        Send a request and read its whole body.

        :param max_size: the most bytes the body may hold (:data:`CONTROL_BODY_LIMIT`
            when None: negotiate, /start, /abort and /ping answers are small).

        :returns: the status and the body.
        :raises SignalRError: when the request fails or times out.
        """
        limit = self.timeout if timeout is None else timeout
        deadline = None if limit == math.inf else _Deadline(self._reactor)
        try:
            response = await self._open(method, url, what, data, headers, limit, True, deadline)
            if max_size is None:
                reading = read_body(
                    response,
                    CONTROL_BODY_LIMIT,
                    f"the {what} answer",
                    "the limit for control requests",
                )
            else:
                reading = read_body(response, max_size)
            body: bytes = await self._bounded(reading, limit, what, deadline)
        finally:
            if deadline is not None:
                deadline.stop()
        if not 200 <= response.code < 300 and body:
            # Only errors are made of such a body: keep the request's secrets out of
            # them, as a server may echo them (ASP.NET's developer error page lists
            # the request's headers and cookies).
            body = self.redact(body, url)
        return response.code, body

    def secrets(self, url: str) -> list[bytes]:
        """
        The values a request to ``url`` carries that must not be shown: header values
        (the bearer token among them), cookie values, and the URL's query values
        (connection tokens, the user's keys) but SignalR's own public ones; each
        also URL-quoted, longest first.
        """
        values: set[str] = set()
        for value in self._base().values():
            values.add(value)
            values.update(value.split()[1:])  # "Bearer TOKEN": the token alone too
        values.update(cookie.value for cookie in self.cookies if cookie.value)
        try:
            query = parse_qsl(urlsplit(url).query, keep_blank_values=False)
        except ValueError:
            query = []
        values.update(v for k, v in query if k not in _PUBLIC_QUERY)
        forms = {form for v in values for form in (v, quote(v, safe=""))}
        found = [f.encode("utf-8") for f in forms if len(f) >= _MIN_SECRET]
        return sorted(found, key=len, reverse=True)

    def redact(self, body: bytes, url: str) -> bytes:
        """``body`` with every one of :meth:`secrets` replaced by ``<redacted>``."""
        for secret in self.secrets(url):
            if secret in body:
                body = body.replace(secret, _REDACTED)
        return body

    async def authorize(self, factory: Callable[[], Any] | None) -> None:
        """
        Start afresh with ``factory``'s token as :attr:`bearer` (none without one).

        :param factory: ``factory() -> str``, or a Deferred or coroutine of one.
        :raises NegotiationError: when the factory fails or its token is unusable.
        """
        self.bearer = None
        self._bearer_origin = self._origin
        if factory is None:
            return
        try:
            token = factory()
            if inspect.isawaitable(token):
                token = await ensureDeferred(token)  # type: ignore[arg-type]
        except CancelledError:
            raise
        except Exception as e:
            raise NegotiationError(f"access_token_factory failed: {type(e).__name__}: {e}") from e
        if token:
            self.set_bearer(str(token))

    def set_bearer(self, token: str, url: str | None = None) -> None:
        """
        Send ``Authorization: Bearer token`` from now on, to the origin of ``url``
        only (a negotiate redirect's URL; ``None``: the connection's own origin).
        """
        if "\r" in token or "\n" in token:
            raise NegotiationError("the access token contains a line break")
        self.bearer = token
        if url is not None:
            self._bearer_origin = origin_of(url)

    def _base(self, url: str | None = None) -> dict[str, str]:
        """
        The custom headers, with the bearer token in ``Authorization`` when set.  A
        request to ``url`` gets ``Authorization`` only when ``url`` is on the origin
        that header belongs to, so a redirect to another origin never carries a
        token that was not given for it.
        """
        if self.bearer is None and not any(k.lower() == "authorization" for k in self.headers):
            return self.headers  # no token to keep from another origin: no URL to parse
        origin = self._origin if self.bearer is None else self._bearer_origin
        foreign = url is not None and origin is not None and origin_of(url) != origin
        if self.bearer is None and not foreign:
            return self.headers
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        if self.bearer is not None and not foreign:
            headers["Authorization"] = f"Bearer {self.bearer}"
        return headers

    def handshake_headers(self, http_url: str) -> dict[str, str]:
        """The custom headers plus the cookies for ``http_url`` (for a WebSocket upgrade)."""
        headers = dict(self._base(http_url))
        if not len(self.cookies):
            return headers  # no cookie to add: no request object to make and parse
        request = urllib.request.Request(http_url)
        self.cookies.add_cookie_header(request)
        cookie = request.get_header("Cookie")
        if cookie:
            existing = headers.pop("Cookie", None) or headers.pop("cookie", None)
            headers["Cookie"] = f"{existing}; {cookie}" if existing else cookie
        return headers

    def close_idle(self) -> Deferred[None]:
        """
        Close the pool's idle connections (none are kept by a user-given client).

        A request whose answer was just read goes back to the pool only after its
        reader has run, so the pool is closed once more on the next reactor turn.
        """
        pool = self._pool
        if pool is None:
            return succeed(None)
        pool.closeCachedConnections()
        d: Deferred[None] = deferLater(self._reactor, 0, pool.closeCachedConnections)
        return d

"""
HTTP proxies: which proxy a URL goes through (the ``proxy=`` argument, or
``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` as curl and requests read them), and a
client endpoint that reaches a server through a proxy's ``CONNECT`` tunnel.

Every request and every WebSocket goes through the tunnel, ``http://`` and ``ws://``
included (a WebSocket can only cross a proxy that way), with TLS to the server inside
it for ``https://`` and ``wss://``: the proxy sees only the host and port.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsignalr.errors import ConnectionClosed, InvalidURL

__all__ = ["ProxyError", "ProxyURL", "TunnelEndpoint", "proxy_for"]

#: the most bytes the proxy's answer to CONNECT may take
_MAX_ANSWER = 64 * 1024


class ProxyError(ConnectionClosed):
    """The proxy refused the tunnel (``.status``: its HTTP status) or broke it."""


@attrs.frozen(repr=False)
class ProxyURL:
    """
    A proxy: ``http://[user:password@]host[:port]`` (port 80 by default); the
    password never appears in ``repr()`` or ``str()``.
    """

    host: str
    port: int
    authorization: str | None = attrs.field(default=None, eq=False)

    @classmethod
    def parse(cls, url: str) -> ProxyURL:
        """
        :raises InvalidURL: for anything but an ``http://`` proxy URL.
        """
        if "://" not in url:
            url = "http://" + url  # "host:port", as curl and requests take it
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise InvalidURL(f"proxy URL {_shown(url)!r}: {e}") from None
        if parts.scheme.lower() != "http":
            raise InvalidURL(
                f"proxy URL {_shown(url)!r}: only http:// proxies are supported (the "
                "tunnel to an https server is end-to-end TLS through them)"
            )
        if not parts.hostname:
            raise InvalidURL(f"proxy URL {_shown(url)!r} names no host")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(parts.hostname, port or 80, authorization)

    def __repr__(self) -> str:
        auth = "<credentials>@" if self.authorization else ""
        return f"ProxyURL(http://{auth}{self.host}:{self.port})"

    __str__ = __repr__


def _shown(url: str) -> str:
    """``url`` without its password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":…@", 1)


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma- or space-separated) lets ``host`` go direct."""
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and not entry_port.isdigit():
            name, entry_port = entry, ""
        if entry_port and int(entry_port) != port:
            continue
        name = name.strip("[]")
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip("*").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_for(
    url: str, proxy: str | bool | None = None, environ: Mapping[str, str] | None = None
) -> ProxyURL | None:
    """
    The proxy a request to ``url`` goes through, or ``None`` for a direct connection.

    :param proxy: ``None`` (the default): from the environment, as curl and requests
        read it: ``https_proxy`` / ``HTTPS_PROXY`` for https and wss URLs,
        ``http_proxy`` / ``HTTP_PROXY`` for http and ws ones, then ``all_proxy`` /
        ``ALL_PROXY``; ``False``: never a proxy; a URL: that proxy for every URL.
        ``no_proxy`` / ``NO_PROXY`` (hosts, ``.domain`` suffixes, IP networks, an
        optional ``:port``, or ``*``) is honoured either way.
    :raises InvalidURL: when the proxy URL cannot be used.
    """
    if proxy is False:
        return None
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    secure = scheme in ("https", "wss")
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)

    def read(*names: str) -> str:
        for name in names:
            value = env.get(name, "").strip()
            if value:
                return value
        return ""

    no_proxy = read("no_proxy", "NO_PROXY")
    if no_proxy and _bypassed(host, port, no_proxy):
        return None
    if isinstance(proxy, str) and proxy:
        return ProxyURL.parse(proxy)
    if proxy is not None and proxy is not True:
        return None
    names = ("https_proxy", "HTTPS_PROXY") if secure else ("http_proxy", "HTTP_PROXY")
    chosen = read(*names, "all_proxy", "ALL_PROXY")
    return ProxyURL.parse(chosen) if chosen else None


_LOST = Failure(ConnectionClosed("the connection to the proxy was lost"))


class _Tunnel(Protocol):
    """Asks the proxy for ``CONNECT host:port``; then hands the socket to ``inner``."""

    def __init__(
        self,
        target: str,
        authorization: str | None,
        factory: IProtocolFactory,
        ready: Deferred[Any],
    ) -> None:
        self._target = target
        self._authorization = authorization
        self._factory = factory
        self._ready = ready
        self._answer = b""
        self.inner: IProtocol | None = None

    def connectionMade(self) -> None:
        request = f"CONNECT {self._target} HTTP/1.1\r\nHost: {self._target}\r\n"
        if self._authorization:
            request += f"Proxy-Authorization: {self._authorization}\r\n"
        assert self.transport is not None
        self.transport.write((request + "\r\n").encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._answer += data
        head, sep, rest = self._answer.partition(b"\r\n\r\n")
        if not sep:
            if len(self._answer) > _MAX_ANSWER:
                self._fail(ProxyError(f"the proxy's answer to CONNECT is over {_MAX_ANSWER} bytes"))
            return
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        if status is None or not 200 <= status < 300:
            why = {407: " (proxy authentication required)"}.get(status or 0, "")
            self._fail(
                ProxyError(
                    f"the proxy refused CONNECT {self._target}: {status_line!r}{why}",
                    status=status,
                )
            )
            return
        inner = self._factory.buildProtocol(self.transport.getPeer())  # type: ignore[union-attr]
        if inner is None:
            self._fail(ProxyError("the protocol factory refused the tunnelled connection"))
            return
        self.inner = inner
        assert self.transport is not None
        inner.makeConnection(self.transport)
        ready, self._ready = self._ready, Deferred()
        ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, error: ProxyError) -> None:
        ready, self._ready = self._ready, Deferred()
        if not ready.called:
            ready.errback(error)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = _LOST) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
            return
        if not self._ready.called:
            self._ready.errback(
                ProxyError(f"the proxy closed the connection before CONNECT {self._target} was up")
            )


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    Connects to ``host:port`` through ``proxy``'s ``CONNECT`` tunnel; the Deferred
    fires with the protocol once the tunnel is up (wrap it with
    :func:`twisted.internet.endpoints.wrapClientTLS` for TLS to the server).
    """

    def __init__(self, reactor: Any, proxy: ProxyURL, host: str, port: int) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        tunnel: _Tunnel | None = None
        connecting: Deferred[Any] | None = None

        def cancel(d: Deferred[Any]) -> None:
            # A timeout or a stop() while the tunnel is being set up: drop the socket.
            if tunnel is not None and tunnel.transport is not None:
                tunnel.transport.abortConnection()  # type: ignore[attr-defined]
            elif connecting is not None:
                connecting.cancel()

        ready: Deferred[Any] = Deferred(cancel)
        proxy = self._proxy
        endpoint = HostnameEndpoint(self._reactor, proxy.host, proxy.port)
        tunnel = _Tunnel(self._target, proxy.authorization, protocolFactory, ready)
        connecting = endpoint.connect(Factory.forProtocol(lambda: tunnel))

        def failed(f: Failure) -> None:
            if not ready.called:
                ready.errback(ProxyError(f"could not connect to the proxy {proxy}", f.value))
            return None

        connecting.addErrback(failed)
        return ready

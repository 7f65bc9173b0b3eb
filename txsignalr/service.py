"""
A service that keeps SignalR subscriptions alive.

:class:`SubscriptionService` is an :class:`~twisted.application.service.IService`, so it
runs under ``twistd`` (see :mod:`txsignalr.tap`), inside a ``.tac`` file or as a child of
any :class:`~twisted.application.service.MultiService`.  Once started it connects, makes
every :class:`Subscription` invocation, and from then on keeps them alive: when the
connection is lost for good (the server's DisconnectTimeout passed, the server
restarted, negotiate keeps failing) or a feed falls silent, it makes a new connection
after a back-off delay and invokes every subscription again.  A subscription whose
result reports failure is logged and retried; nothing is dropped silently.

Both SignalR families work: classic ASP.NET SignalR through hub proxies, ASP.NET Core
(:attr:`ConnectionSettings.protocol`) through the connection to the hub its URL names,
where every reconnect is a new server-side connection and so re-subscribes.

The reconnection logic is modelled on Twisted's
:class:`~twisted.application.internet.ClientService`: a retry policy is a callable
``policy(attempt) -> seconds`` (default :func:`~twisted.application.internet.backoffPolicy`),
:meth:`SubscriptionService.when_subscribed` is the ``whenConnected`` counterpart, and
:meth:`SubscriptionService.stopService` returns a :class:`~twisted.internet.defer.Deferred`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, unquote, urlsplit

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS

from txsignalr._protocol import ALL_TRANSPORTS, Transport, redact_url, transport_order
from txsignalr.errors import (
    ConnectionClosed,
    InvalidStateError,
    InvalidURL,
    NegotiationError,
    SignalRError,
)

__all__ = [
    "ClientCall",
    "ConnectionLike",
    "ConnectionSettings",
    "GaveUpError",
    "Handler",
    "HubProxyLike",
    "MissingAccessToken",
    "Subscription",
    "SubscriptionError",
    "SubscriptionService",
    "core_hub_name",
    "read_access_token",
    "redact",
    "reports_success",
]


# ------------------------------------------------------------------ connection shape


class HubProxyLike(Protocol):
    """What the service needs from a hub proxy (:meth:`txsignalr.HubConnection.hub`)."""

    def on(self, method: str, callback: Callable[..., object]) -> object:
        """Register a client-method handler."""

    def on_any(self, callback: Callable[..., object]) -> object:
        """Register ``callback(method, *args)`` for every client-method call."""

    def invoke(self, method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """Invoke a hub method."""


class ConnectionLike(Protocol):
    """
    What the service needs from a connection (:class:`txsignalr.HubConnection`).

    A classic connection is used through :meth:`hub` proxies; an ASP.NET Core one
    (whose URL names its one hub) through :meth:`on`, :meth:`on_any` and
    :meth:`invoke` of the connection itself.
    """

    @property
    def protocol(self) -> str | None:
        """``"core"`` or ``"classic"`` once started (read only when the service's
        settings say ``protocol="auto"`` and nothing names a hub)."""

    def hub(self, name: str) -> HubProxyLike:
        """Classic: return the proxy for a hub; called before :meth:`start`."""

    def on(self, method: str, callback: Callable[..., object]) -> object:
        """Core: register a client-method handler on the connection's hub."""

    def on_any(self, callback: Callable[..., object]) -> object:
        """Core: register ``callback(method, *args)`` for every client-method call."""

    def invoke(self, method: str, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """Core: invoke a method of the connection's hub."""

    def start(self) -> Deferred[None]:
        """Connect."""

    def stop(self) -> Deferred[None]:
        """Disconnect."""

    def when_closed(self) -> Deferred[None]:
        """Once started: fire ``None`` after :meth:`stop`, fail when lost for good."""

    def on_reconnecting(self, callback: Callable[[ConnectionClosed], object]) -> object:
        """Be told when the transport dropped and the connection tries to resume."""

    def on_reconnected(self, callback: Callable[[], object]) -> object:
        """Be told when the connection resumed."""


#: Builds a new, unstarted connection each time the service (re)connects.
ConnectionFactory = Callable[[IReactorTime], ConnectionLike]

#: ``policy(attempt) -> seconds``: the delay before retry number ``attempt + 1``.
RetryPolicy = Callable[[int], float]

#: Judges a subscription's result: ``True`` when the subscription took effect.
ResultCheck = Callable[[Any], bool]


# ------------------------------------------------------------------ values


_SECRET_QUERY = re.compile(
    r"(?i)\b([\w.-]*(?:token|key|secret|passw(?:or)?d|signature|auth)[\w.-]*)=([^&\s\"']+)"
)
_SECRET_HEADER = re.compile(r"(?i)((?:authorization|cookie|set-cookie|x-api-key)\s*[:=]\s*)[^\n]+")


#: Secret values shorter than this are not searched for verbatim: replacing every
#: occurrence of, say, ``"1"`` would garble log lines without protecting anything.
_MIN_SECRET_LENGTH = 4


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """
    Scrub connection tokens, access tokens, keys and ``Authorization``/``Cookie``
    values out of a message before it is logged.

    :param text: any text, typically an error message that may quote a URL.
    :param secrets: exact values to hide wherever they appear (e.g. the header, cookie
        and query values a service was configured with), longest first.
    :returns: the text with secret values replaced by ``<redacted>``.
    """
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, "<redacted>")
    text = _SECRET_QUERY.sub(r"\1=<redacted>", text)
    return _SECRET_HEADER.sub(r"\1<redacted>", text)


def _secret_values(
    url: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
    tokens: Iterable[str] = (),
) -> tuple[str, ...]:
    """
    The exact values to keep out of logs for these connection settings: every header,
    cookie and query value, the query values and password in ``url``, the access
    ``tokens``, each also as it looks URL-quoted, longest first (so a value is hidden
    before any part of it).
    """
    raw: list[str] = [*headers.values(), *cookies.values(), *query.values(), *tokens]
    for value in headers.values():
        raw.extend(value.split()[1:])  # "Bearer X": a server may echo only "X"
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        parts, password = None, None
    if password:
        raw.extend((password, unquote(password)))
    if parts is not None:
        for pair in parts.query.split("&"):
            value = pair.partition("=")[2]
            raw.extend((value, unquote(value)))
    found: set[str] = set()
    for value in raw:
        value = value.strip()
        if len(value) >= _MIN_SECRET_LENGTH:
            found.update((value, quote(value, safe=""), quote(value), quote_plus(value)))
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


def _redacted_mapping(value: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k!r}: '<redacted>'" for k in value) + "}"


def unique_ignoring_case(names: Iterable[str]) -> list[str]:
    """``names`` without repeats, compared case-insensitively as SignalR compares hub
    names; the first spelling is kept."""
    seen: set[str] = set()
    unique = []
    for name in names:
        if name.lower() not in seen:
            seen.add(name.lower())
            unique.append(name)
    return unique


def reports_success(result: Any) -> bool:
    """
    The default :attr:`Subscription.check`: reject results that say they failed.

    Exchange hubs answer a ``Subscribe`` with ``{"Success": false, "ErrorCode": …}``
    (or a list of those, one per topic) rather than raising; any such entry makes the
    whole subscription a failure.  Any other result counts as success.

    :param result: the hub method's return value.
    :returns: ``False`` when the result, or an item of a list result, is a mapping
        whose ``Success`` (any capitalisation) is ``False``.
    """
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, Mapping):
            for key, value in item.items():
                if isinstance(key, str) and key.lower() == "success" and value is False:
                    return False
    return True


def _values(value: Iterable[Any]) -> tuple[Any, ...]:
    # A typed converter: mypy's attrs plugin cannot type ``converter=tuple``.
    return tuple(value)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen
class Subscription:
    """
    A hub method invocation to make on every new connection.

    :ivar hub: the hub name; ``None`` for the hub an ASP.NET Core URL names (on Core a
        name is accepted too, when it is that hub's: see :func:`core_hub_name`).
    :ivar method: the hub method, e.g. ``"Subscribe"``.
    :ivar args: its arguments (each one JSON value).
    :ivar check: judges the result; a ``False`` verdict is a failure that is logged and
        retried, as is a :class:`~txsignalr.HubError`.
    :ivar stale_after: when set, a watchdog: if no client call listed in :attr:`watch`
        arrives on :attr:`hub` for this many seconds after the subscription succeeded,
        the feed is considered dead and the service makes a fresh connection.
    :ivar watch: the client methods whose calls keep the watchdog quiet; empty means
        every client call on :attr:`hub`.
    """

    hub: str | None
    method: str
    args: tuple[Any, ...] = attrs.field(default=(), converter=_values)
    check: ResultCheck = attrs.field(default=reports_success, repr=False)
    stale_after: float | None = None
    watch: tuple[str, ...] = attrs.field(default=(), converter=_names)

    def __attrs_post_init__(self) -> None:
        if self.stale_after is not None and not self.stale_after > 0:
            raise ValueError(f"stale_after must be positive, not {self.stale_after!r}")

    def describe(self, hub: str | None = None) -> str:
        """
        A short label for logs: ``hub.method``.

        :param hub: the name to show when :attr:`hub` is ``None`` (the service passes
            the Core URL's hub); without one such a subscription is just ``method``.
        """
        name = self.hub if self.hub is not None else hub
        return self.method if name is None else f"{name}.{self.method}"


@attrs.frozen
class ClientCall:
    """
    A server-to-client method call, as handed to a :class:`Handler`.

    :ivar hub: the hub the call came from: as registered on a classic connection;
        on an ASP.NET Core connection the hub its URL names (:func:`core_hub_name`).
    :ivar method: the client method name (as registered, or as the server spelled it
        for catch-all handlers).
    :ivar args: the call's arguments.
    """

    hub: str
    method: str
    args: tuple[Any, ...]


@attrs.frozen
class Handler:
    """
    Routes client-method calls to a callback, on every connection the service makes.

    :ivar hub: the hub name; ``None`` for the hub an ASP.NET Core URL names.
    :ivar method: the client method name, or ``None`` for every call on the hub.
    :ivar callback: called with a :class:`ClientCall`; exceptions are logged.
    """

    hub: str | None
    method: str | None
    callback: Callable[[ClientCall], object] = attrs.field(repr=False)


def _setting(option: str | None, *, hub_connection: bool = True) -> dict[str, Any]:
    """
    The metadata that declares a :class:`ConnectionSettings` field once for every
    place that needs it.

    :param option: the ``twistd signalr`` option that sets the field (without ``--``),
        or ``None`` when no option does; :mod:`txsignalr.tap` takes its defaults and
        the keyword arguments of :meth:`ConnectionSettings` from these.
    :param hub_connection: whether :meth:`ConnectionSettings.connect` passes the field
        to :class:`txsignalr.HubConnection` as the keyword argument of the same name.
    """
    return {_OPTION: option, _HUB_CONNECTION: hub_connection}


_OPTION = "txsignalr.option"
_HUB_CONNECTION = "txsignalr.hub_connection"


def _transport_names(transports: tuple[Transport, ...]) -> str:
    return repr(tuple(t.value for t in transports))


#: The ``protocol`` values of :class:`txsignalr.HubConnection`.
PROTOCOLS = ("auto", "classic", "core")


def _protocol(value: str) -> str:
    protocol = str(value).lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {value!r}")
    return protocol


#: The ``hub_protocol`` values of :class:`txsignalr.HubConnection`.
HUB_PROTOCOLS = ("json", "messagepack")


def _hub_protocol(value: str) -> str:
    name = str(value).lower()
    if name not in HUB_PROTOCOLS:
        raise ValueError(f"hub_protocol must be one of {', '.join(HUB_PROTOCOLS)}, not {value!r}")
    return name


#: What an environment variable's name may be (POSIX's portable names).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(_: object, attribute: object, value: str | None) -> None:
    if value is not None and not ENV_NAME.fullmatch(value):
        # The value is not repeated: it may be the token itself, given by mistake.
        raise ValueError(
            "access_token_env must be the name of an environment variable (letters, "
            "digits and _, not starting with a digit), not the token itself"
        )


class MissingAccessToken(ValueError):
    """The environment variable that should hold the access token is unset or empty."""


def read_access_token(name: str) -> str:
    """
    The token in environment variable ``name``, now (surrounding white space dropped).

    :raises MissingAccessToken: when the variable is unset or empty.
    """
    token = os.environ.get(name, "").strip()
    if not token:
        state = "empty" if name in os.environ else "not set"
        # The name is repeated only when it looks like one: a token given in its
        # place by mistake must not end up in a log.
        shown = name if _looks_like_variable(name) else "named by --access-token-env"
        raise MissingAccessToken(
            f"environment variable {shown}, which should hold the access token, is {state}"
        )
    return token


def _looks_like_variable(name: str) -> bool:
    """An upper-case, shortish environment variable name (``HUB_TOKEN``)."""
    return len(name) <= 40 and name.upper() == name and name.replace("_", "").isalnum()


def _redacted_proxy(proxy: str | None) -> str:
    if proxy is None:
        return "None"
    return repr(redact_url(proxy if "://" in proxy else "http://" + proxy))


def core_hub_name(url: str) -> str:
    """
    The name an ASP.NET Core connection's hub goes by in the service's logs and
    :class:`ClientCall` objects: the last segment of the URL's path (``c3`` for
    ``https://host/hubs/c3``), as the URL is the hub's.

    :param url: the connection URL.
    """
    try:
        path = urlsplit(url).path
    except ValueError:
        path = url.split("?", 1)[0]
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) or "hub"


@attrs.frozen
class ConnectionSettings:
    """
    Where and how to connect; secret values never appear in the repr.

    :ivar url: the SignalR endpoint, e.g. ``https://host/signalr``.
    :ivar hubs: hubs to connect to in addition to those named by subscriptions and
        handlers.
    :ivar headers: HTTP headers for every request (e.g. ``Authorization``).
    :ivar cookies: cookies for every request.
    :ivar query: extra query parameters for every request.
    :ivar tls: the TLS policy for ``https``/``wss`` (see ``txsignalr.tls_policy``).
    :ivar transports: the transports to try, most preferred first: wire names
        (``"webSockets"``, ``"serverSentEvents"``, ``"longPolling"``, any case) or
        :class:`~txsignalr.Transport` values, kept as :class:`~txsignalr.Transport`
        values without repeats; all three by default, in that order.  An unknown name
        or an empty list raises :class:`ValueError`.
    :ivar protocol: ``"auto"`` (the default), ``"classic"`` or ``"core"``, as
        :class:`txsignalr.HubConnection` takes it.  With ``"auto"``, a hub named by a
        subscription, handler or :attr:`hubs` means classic (hub proxies exist only
        there); when nothing names a hub, the server decides, and a classic one is a
        configuration error (classic connections must name their hubs).
    :ivar access_token_env: the name of an environment variable holding a bearer
        token, read each time one is needed: before every ASP.NET Core negotiate (so
        a rotated token is picked up, reconnects included) and, for a classic
        connection (protocol ``"classic"``, or ``"auto"`` with hubs named), when each
        connection is made; sent as ``Authorization: Bearer``.
        Unset or empty, it makes :meth:`connect` raise :class:`MissingAccessToken`.
        Cannot be combined with an ``Authorization`` header.
    :ivar hub_protocol: ASP.NET Core: ``"json"`` (the default) or ``"messagepack"``
        (needs the ``txsignalr[messagepack]`` extra).
    :ivar stateful_reconnect: ASP.NET Core: resume a dropped WebSocket without losing
        or repeating a message when the server allows it (.NET 8+).
    :ivar proxy: the HTTP proxy (``http://[user:password@]host:port``), or ``None``
        for ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` from the environment.
    """

    url: str = attrs.field(repr=redact_url, metadata=_setting(None, hub_connection=False))
    hubs: tuple[str, ...] = attrs.field(
        default=(), converter=_names, metadata=_setting("hub", hub_connection=False)
    )
    headers: Mapping[str, str] = attrs.field(
        factory=dict, repr=_redacted_mapping, metadata=_setting("header")
    )
    cookies: Mapping[str, str] = attrs.field(
        factory=dict, repr=_redacted_mapping, metadata=_setting("cookie")
    )
    query: Mapping[str, str] = attrs.field(
        factory=dict, repr=_redacted_mapping, metadata=_setting("query")
    )
    tls: IPolicyForHTTPS | None = attrs.field(default=None, metadata=_setting(None))
    transports: tuple[Transport, ...] = attrs.field(
        default=ALL_TRANSPORTS,
        converter=transport_order,
        repr=_transport_names,
        metadata=_setting("transport"),
    )
    protocol: str = attrs.field(default="auto", converter=_protocol, metadata=_setting("protocol"))
    access_token_env: str | None = attrs.field(
        default=None,
        validator=_env_name,
        metadata=_setting("access-token-env", hub_connection=False),
    )
    hub_protocol: str = attrs.field(
        default="json", converter=_hub_protocol, metadata=_setting("hub-protocol")
    )
    stateful_reconnect: bool = attrs.field(
        default=False, converter=bool, metadata=_setting("stateful-reconnect")
    )
    proxy: str | None = attrs.field(default=None, repr=_redacted_proxy, metadata=_setting("proxy"))
    #: every token handed out, so that one rotated away still stays out of the logs
    _tokens: set[str] = attrs.field(factory=set, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.access_token_env is not None and any(
            name.lower() == "authorization" for name in self.headers
        ):
            raise ValueError(
                "access_token_env and an Authorization header cannot be combined: the "
                "token is sent as Authorization: Bearer"
            )

    @property
    def core_hub(self) -> str:
        """What an ASP.NET Core connection's hub is called: :func:`core_hub_name`."""
        return core_hub_name(self.url)

    def access_token(self) -> str:
        """
        The bearer token, read from :attr:`access_token_env` now.

        :raises MissingAccessToken: when the variable is unset or empty (or no
            variable was given).
        """
        name = self.access_token_env
        if name is None:
            raise MissingAccessToken("no access_token_env was given")
        token = read_access_token(name)
        self._tokens.add(token)
        return token

    def secret_values(self) -> tuple[str, ...]:
        """
        The exact values to keep out of logs: every header, cookie and query value,
        the query values and password in :attr:`url`, and every access token read so
        far and the current one, each also URL-quoted, longest first.
        """
        tokens = set(self._tokens)
        if self.access_token_env is not None:
            current = os.environ.get(self.access_token_env, "").strip()
            if current:
                tokens.add(current)
        if self.proxy:
            try:
                password = urlsplit(self.proxy if "://" in self.proxy else "//" + self.proxy)
                if password.password:
                    tokens.add(unquote(password.password))
            except ValueError:
                pass
        return _secret_values(self.url, self.headers, self.cookies, self.query, tokens)

    @classmethod
    def options(cls) -> dict[str, str]:
        """
        The fields that ``twistd signalr`` options set.

        :returns: field name -> option name (without ``--``), in field order.
        """
        return {
            f.name: f.metadata[_OPTION]
            for f in attrs.fields(cls)
            if f.metadata.get(_OPTION) is not None
        }

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """
        The defaults of the fields that ``twistd signalr`` options set.

        :returns: field name -> a fresh default value, for each of :meth:`options`.
        """
        defaults: dict[str, Any] = {}
        for f in attrs.fields(cls):
            if f.metadata.get(_OPTION) is None:
                continue
            default = f.default
            # attrs.Factory is a class, though its stubs declare it as a function.
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            defaults[f.name] = default
        return defaults

    def connection_arguments(self) -> dict[str, Any]:
        """
        The keyword arguments :meth:`connect` gives :class:`txsignalr.HubConnection`
        (besides the reactor and :attr:`url`).

        :returns: argument name -> value; the values are secret where the fields are.
            With :attr:`access_token_env`, ``access_token_factory`` is
            :meth:`access_token`, and the headers get ``Authorization: Bearer`` with
            the token read now: a classic connection, which never calls the factory,
            sends that; a Core one replaces it before every negotiate.
        """
        arguments = {
            f.name: getattr(self, f.name)
            for f in attrs.fields(type(self))
            if f.metadata.get(_HUB_CONNECTION)
        }
        if self.access_token_env is not None:
            arguments["access_token_factory"] = self.access_token
            bearer = {"Authorization": f"Bearer {self.access_token()}"}
            arguments["headers"] = {**self.headers, **bearer}
        return arguments

    def connect(self, reactor: IReactorTime) -> ConnectionLike:
        """
        Build a new :class:`txsignalr.HubConnection` with these settings (the service's
        default connection factory).

        :param reactor: the reactor to run it on.
        :returns: an unstarted connection.
        :raises MissingAccessToken: when :attr:`access_token_env` is set but the
            variable is not (a configuration error: the service gives up at once).
        """
        from txsignalr._connection import HubConnection

        if self.access_token_env is not None:
            self.access_token()  # fail now, not in every negotiate
        connection: ConnectionLike = HubConnection(reactor, self.url, **self.connection_arguments())
        return connection


class SubscriptionError(SignalRError):
    """
    A subscription's result did not pass its :attr:`Subscription.check`.

    :ivar subscription: the subscription.
    :ivar result: the result it got.
    """

    def __init__(self, subscription: Subscription, result: Any, hub: str | None = None):
        """
        :param hub: the name to show for a subscription without a hub (the Core URL's).
        """
        super().__init__(f"{subscription.describe(hub)} returned a failure: {result!r}")
        self.subscription = subscription
        self.result = result


class GaveUpError(SignalRError):
    """
    The service used up its ``max_attempts`` and stopped trying.

    :ivar attempts: how many consecutive attempts failed.
    :ivar reason: the last failure.
    """

    def __init__(self, attempts: int, reason: Failure, description: str | None = None):
        """
        :param description: the redacted account of ``reason`` for the message;
            by default it is made with ``redact()``.
        """
        if description is None:
            description = _describe(reason)
        super().__init__(f"gave up after {attempts} failed attempts: {description}")
        self.attempts = attempts
        self.reason = reason


def _describe(reason: Failure, secrets: Iterable[str] = ()) -> str:
    """A one-line, redacted account of a failure for logs."""
    value = reason.value
    return redact(f"{type(value).__name__}: {value}", secrets)


# ------------------------------------------------------------------ the service


class SubscriptionService(Service):
    """
    Keeps a set of SignalR subscriptions alive until stopped.

    Logging (namespace ``txsignalr.service``): *connected*, *subscribed* /
    *resubscribed*, *subscription failed*, *reconnecting*, *connection lost*,
    *stale feed*, *gave up*.  URLs are logged without their query; headers, cookies
    and tokens never are.

    :param reactor: the reactor: all delays and timeouts go through it.
    :param settings: where and how to connect.
    :param subscriptions: invocations to make on every new connection.
    :param handlers: client-method handlers to register on every new connection.
    :param retry_policy: ``policy(attempt) -> seconds``, the delay before retry number
        ``attempt + 1`` (``attempt`` counts from 0).  Default:
        :func:`~twisted.application.internet.backoffPolicy` (1 s, x1.5, capped at 60 s,
        plus up to 1 s of jitter).  Used both for new connections and for retrying a
        failed subscription on a live connection.
    :param max_attempts: give up after this many consecutive failed attempts (a failed
        connect, a connection lost or gone stale before every subscription succeeded,
        or a failed subscription invocation); ``None``, the default, never gives up.
        A connection that got subscribed resets the count, and losing it (or its feed
        going stale) is not a failed attempt: the service reconnects after
        ``policy(0)``.  A configuration error, which no retry can fix, gives up at
        once whatever ``max_attempts`` says: the connection factory raising
        :class:`ValueError` (such as :class:`~txsignalr.errors.InvalidURL`), or
        ``start()`` failing with :class:`~txsignalr.errors.InvalidURL`.
        A feed that goes stale again and again without a single watched call backs
        off: the n-th such reconnect in a row waits ``policy(n - 1)``.  It never counts
        towards giving up, since the server keeps accepting the subscriptions.
    :param invoke_timeout: seconds to wait for a subscription's result before treating
        it as failed; ``None`` waits as long as the connection lives.
    :param connection_factory: ``factory(reactor) -> connection``; defaults to
        :meth:`ConnectionSettings.connect`.
    :param on_gave_up: called with the :class:`GaveUpError` error when the service gives up.

    ASP.NET Core (``settings.protocol`` ``"core"``, or ``"auto"`` with no hub named
    anywhere): subscriptions and handlers address the hub the URL names, through the
    connection itself; their ``hub`` is ``None`` or that hub's name
    (:func:`core_hub_name`, compared ignoring case), and :class:`ClientCall` reports
    that name.  A Core server keeps nothing of a connection across a reconnect (it is
    a new connection, without its groups), so after every reconnect all
    subscriptions are invoked again; until they succeed the service is not
    :attr:`subscribed`.  Invocations cut short by the connection loss are not failed
    attempts.  On classic the server keeps the subscriptions (groups) across a
    reconnect, and nothing is invoked again.

    :raises ValueError: for subscriptions or handlers that cannot work with
        ``settings.protocol``: without a hub on classic, naming another hub than the
        URL's on Core, or (``"auto"``) some with a hub and some without.
    """

    log = Logger(namespace="txsignalr.service")

    def __init__(
        self,
        reactor: IReactorTime,
        settings: ConnectionSettings,
        subscriptions: Iterable[Subscription] = (),
        handlers: Iterable[Handler] = (),
        *,
        retry_policy: RetryPolicy | None = None,
        max_attempts: int | None = None,
        invoke_timeout: float | None = 30.0,
        connection_factory: ConnectionFactory | None = None,
        on_gave_up: Callable[[GaveUpError], object] | None = None,
    ) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts!r}")
        self._reactor = reactor
        self.settings = settings
        self.subscriptions: tuple[Subscription, ...] = tuple(subscriptions)
        self.handlers: tuple[Handler, ...] = tuple(handlers)
        self._policy: RetryPolicy = retry_policy if retry_policy is not None else backoffPolicy()
        self._max_attempts = max_attempts
        self._invoke_timeout = invoke_timeout
        self._factory: ConnectionFactory = (
            connection_factory if connection_factory is not None else settings.connect
        )
        self._on_gave_up = on_gave_up
        self._core_hub = settings.core_hub
        self._mode = self._choose_mode()

        self._connection: ConnectionLike | None = None
        self._family: str | None = None  # of the current connection, once started
        self._resubscribing = False  # Core: subscribed, then reconnected; invoking again
        self._hinted = False  # the "auto went classic" hint was logged
        self._failures = 0  # consecutive failed attempts
        self._generation = 0  # connections made since startService
        self._retry_call: IDelayedCall | None = None
        self._sub_retry: dict[int, IDelayedCall] = {}
        self._sub_failures: dict[int, int] = {}
        self._pending: set[int] = set()
        self._watchdogs: dict[int, IDelayedCall] = {}
        self._subscribed = False
        self._fed = False  # a watched call arrived on the current connection
        self._silent_stales = 0  # consecutive stale connections that got no watched call
        self._gave_up: GaveUpError | None = None
        self._waiters: list[Deferred[ConnectionLike]] = []
        self._closing: set[Deferred[None]] = set()  # connections being closed

    def _choose_mode(self) -> str:
        """
        ``"classic"`` (hub proxies), ``"core"`` (the connection itself) or ``"auto"``
        (the connection itself, and the server must turn out to be Core).
        """
        protocol = self.settings.protocol
        entries: list[Subscription | Handler] = [*self.subscriptions, *self.handlers]
        named = [*self.settings.hubs, *(e.hub for e in entries if e.hub is not None)]
        hubless = [e for e in entries if e.hub is None]
        if protocol == "core":
            other = [n for n in unique_ignoring_case(named) if n.lower() != self._core_hub.lower()]
            if other:
                raise ValueError(
                    f"an ASP.NET Core URL names its one hub ({self._core_hub!r}, the end of "
                    f"its path); hub {other[0]!r} is another: leave the hub out"
                )
            return "core"
        if hubless and (protocol == "classic" or named):
            why = (
                "a classic connection"
                if protocol == "classic"
                else "with hubs named elsewhere, protocol 'auto' connects as classic, which"
            )
            raise ValueError(
                f"{_entry(hubless[0])} names no hub, but {why} needs one for every "
                "subscription and handler (on ASP.NET Core, use protocol 'core')"
            )
        # Nothing without a hub: classic's hub proxies, as before protocols existed.
        return "auto" if hubless else "classic"

    @property
    def _secrets(self) -> tuple[str, ...]:
        return self.settings.secret_values()

    # -------------------------------------------------------------- public API

    @property
    def connection(self) -> ConnectionLike | None:
        """The current connection, or ``None`` between connections."""
        return self._connection

    @property
    def max_attempts(self) -> int | None:
        """How many consecutive failed attempts make the service give up (``None``:
        it never does)."""
        return self._max_attempts

    @property
    def subscribed(self) -> bool:
        """Whether every subscription succeeded on the current connection."""
        return self._subscribed

    def when_subscribed(self) -> Deferred[ConnectionLike]:
        """
        Wait until the service is connected and every subscription has succeeded.

        :returns: a Deferred that fires with the connection (at once when already
            subscribed); fails with :class:`~twisted.internet.defer.CancelledError` when
            the service is stopped first, or with :class:`GaveUpError` when it gave up.
        """
        if self._gave_up is not None:
            return fail(self._gave_up)
        if self._subscribed and self._connection is not None:
            return succeed(self._connection)
        d: Deferred[ConnectionLike] = Deferred(lambda d: self._forget_waiter(d))
        self._waiters.append(d)
        return d

    def startService(self) -> None:
        """Start connecting."""
        super().startService()  # type: ignore[no-untyped-call]
        self._failures = 0
        self._silent_stales = 0
        self._generation = 0
        self._gave_up = None
        self._connect()

    def stopService(self) -> Deferred[None]:
        """
        Stop: cancel pending retries and watchdogs and close the connection.

        Pending :meth:`when_subscribed` Deferreds fail with
        :class:`~twisted.internet.defer.CancelledError`.

        :returns: a Deferred that fires once the connection is closed, and so is every
            earlier connection the service was still closing in the background (a
            stale or failed one, or the one it gave up on); it never fails.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        connection = self._connection
        self._drop_connection_state()
        self._fail_waiters(Failure(CancelledError("the subscription service was stopped")))
        if connection is not None:
            self._close(connection)
        return self._all_closed()

    # -------------------------------------------------------------- connecting

    def _hub_names(self) -> list[str]:
        return unique_ignoring_case(
            [
                *self.settings.hubs,
                *(s.hub for s in self.subscriptions if s.hub is not None),
                *(h.hub for h in self.handlers if h.hub is not None),
            ]
        )

    def _label(self, hub: str | None) -> str:
        """The hub's name in logs and client calls: the Core URL's hub on Core."""
        if hub is None or self._mode != "classic":
            return self._core_hub
        return hub

    def _describe_sub(self, sub: Subscription) -> str:
        return f"{self._label(sub.hub)}.{sub.method}"

    def _connect(self) -> None:
        self._retry_call = None
        self._generation += 1
        try:
            connection = self._factory(self._reactor)
            self._register(connection)
        except ValueError:  # InvalidURL is one: a bad setting, retrying cannot help
            self._connection = None
            self._permanent_failure(Failure(), "could not create the connection")
            return
        except Exception:
            self._connection = None
            self._attempt_failed(Failure(), "could not create the connection")
            return
        self._connection = connection
        self.log.info(
            "connecting to {url} (attempt {attempt})",
            url=redact_url(self.settings.url),
            attempt=self._failures + 1,
        )
        connection.start().addCallbacks(
            self._started,
            self._start_failed,
            callbackArgs=(connection,),
            errbackArgs=(connection,),
        )

    def _proxies(self, connection: ConnectionLike) -> dict[str, HubProxyLike]:
        """The hub proxies of a new connection, by lower-case hub name."""
        return {name.lower(): connection.hub(name) for name in self._hub_names()}

    def _register(self, connection: ConnectionLike) -> None:
        if self._mode == "classic":
            proxies = self._proxies(connection)

            def proxy_for(hub: str | None) -> HubProxyLike:
                assert hub is not None  # _choose_mode saw to it
                return proxies[hub.lower()]
        else:  # Core: the connection is its hub's proxy

            def proxy_for(hub: str | None) -> HubProxyLike:
                return connection

        for handler in self.handlers:
            proxy = proxy_for(handler.hub)
            label = self._label(handler.hub)
            if handler.method is None:
                _on_any(proxy, label, self._dispatcher(connection, handler))
            else:
                proxy.on(handler.method, self._method_dispatcher(connection, handler, label))
        for index, sub in enumerate(self.subscriptions):
            if sub.stale_after is None:
                continue
            proxy = proxy_for(sub.hub)
            feed = self._feed_watcher(connection, index)
            if sub.watch:
                for method in sub.watch:
                    proxy.on(method, _ignoring_args(feed))
            else:
                _on_any(proxy, self._label(sub.hub), _ignoring_args(feed))
        connection.on_reconnecting(lambda reason: self._reconnecting(connection, reason))
        connection.on_reconnected(lambda: self._reconnected(connection))

    def _dispatcher(
        self, connection: ConnectionLike, handler: Handler
    ) -> Callable[[ClientCall], None]:
        def dispatch(call: ClientCall) -> None:
            if connection is not self._connection:
                return
            try:
                handler.callback(call)
            except Exception:
                self.log.failure(
                    "handler for {hub}.{method} failed", hub=call.hub, method=call.method
                )

        return dispatch

    def _method_dispatcher(
        self, connection: ConnectionLike, handler: Handler, hub: str
    ) -> Callable[..., None]:
        dispatch = self._dispatcher(connection, handler)
        method = handler.method
        assert method is not None

        def on_call(*args: Any) -> None:
            dispatch(ClientCall(hub, method, args))

        return on_call

    def _feed_watcher(self, connection: ConnectionLike, index: int) -> Callable[[], None]:
        watchdogs = self._watchdogs

        def fed() -> None:
            if connection is not self._connection:
                return
            self._fed = True
            self._silent_stales = 0
            call = watchdogs.get(index)
            if call is not None and call.active():
                stale_after = self.subscriptions[index].stale_after
                assert stale_after is not None
                call.reset(stale_after)

        return fed

    def _started(self, _: None, connection: ConnectionLike) -> None:
        if connection is not self._connection:
            return
        self.log.info("connected to {url}", url=redact_url(self.settings.url))
        connection.when_closed().addBoth(self._closed, connection)
        if connection is not self._connection:
            return  # it closed already
        if self._mode == "auto":
            self._family = connection.protocol
            if self._family != "core":
                entries: list[Subscription | Handler] = [*self.subscriptions, *self.handlers]
                entry = _entry(entries[0])
                self._permanent_failure(
                    Failure(
                        InvalidStateError(
                            f"{redact_url(self.settings.url)} is a classic ASP.NET SignalR "
                            f"server, whose connections must name their hubs, and {entry} "
                            "names none: give the hub (HUB.METHOD)"
                        )
                    ),
                    "cannot subscribe",
                )
                return
        else:
            self._family = self._mode
        self._subscribe_all(connection)

    def _subscribe_all(self, connection: ConnectionLike) -> None:
        """Invoke every subscription on ``connection`` (new, or reconnected on Core)."""
        self._pending = set(range(len(self.subscriptions)))
        self._sub_failures = {}
        if not self._pending:
            self._all_subscribed(connection)
            return
        for index in range(len(self.subscriptions)):
            if connection is not self._connection:
                break  # dropped meanwhile (gave up, or stopped by a callback)
            self._subscribe(connection, index)

    def _start_failed(self, reason: Failure, connection: ConnectionLike) -> None:
        if connection is not self._connection:
            return
        self._abandon(connection)
        if reason.check(InvalidURL):
            self._permanent_failure(reason, "could not connect")
            return
        if (
            reason.check(NegotiationError)
            and self.settings.protocol == "auto"
            and self._mode == "classic"
            and not self._hinted
        ):
            self._hinted = True
            self.log.warn(
                "hubs are named ({hubs}), so protocol 'auto' connects as classic ASP.NET "
                "SignalR; if {url} is an ASP.NET Core hub, use protocol 'core' (or leave "
                "the hub out)",
                hubs=", ".join(self._hub_names()),
                url=redact_url(self.settings.url),
            )
        self._attempt_failed(reason, "could not connect")

    def _closed(self, result: object, connection: ConnectionLike) -> None:
        if connection is not self._connection:
            return
        reason = result if isinstance(result, Failure) else None
        healthy = self._subscribed or self._resubscribing
        self._drop_connection_state()
        message = "connection lost" if reason is not None else "connection closed"
        self.log.warn(
            "{message}: {reason}",
            message=message,
            reason=self._describe(reason) if reason is not None else "closed by the client",
        )
        if healthy:
            self._reconnect_in(self._policy(0))
        else:
            self._attempt_failed(reason or Failure(SignalRError("connection closed")), None)

    def _reconnecting(self, connection: ConnectionLike, reason: ConnectionClosed) -> None:
        if connection is not self._connection:
            return
        self.log.warn(
            "transport lost ({reason}); reconnecting to {url}",
            reason=redact(str(reason), self._secrets),
            url=redact_url(self.settings.url),
        )
        if self._family == "core":
            # The reconnect makes a new server-side connection: the subscriptions
            # are gone with the old one, and are made again once reconnected.
            self._resubscribing = self._resubscribing or self._subscribed
            self._subscribed = False
            self._pending = set()
            self._cancel_subscription_timers()

    def _reconnected(self, connection: ConnectionLike) -> None:
        if connection is not self._connection:
            return
        self.log.info("reconnected to {url}", url=redact_url(self.settings.url))
        if self._family == "core":
            self.log.info(
                "an ASP.NET Core reconnect is a new connection: subscribing again on {url}",
                url=redact_url(self.settings.url),
            )
            self._subscribe_all(connection)

    # -------------------------------------------------------------- subscribing

    def _subscribe(self, connection: ConnectionLike, index: int) -> None:
        self._sub_retry.pop(index, None)
        sub = self.subscriptions[index]
        try:
            d = self._target(connection, sub.hub).invoke(
                sub.method, *sub.args, timeout=self._invoke_timeout
            )
        except Exception:
            d = fail()
        d.addCallback(self._check_result, sub, self._label(sub.hub))
        d.addCallbacks(
            self._subscription_succeeded,
            self._subscription_failed,
            callbackArgs=(connection, index),
            errbackArgs=(connection, index),
        )

    def _target(self, connection: ConnectionLike, hub: str | None) -> HubProxyLike:
        """What a subscription on ``hub`` is invoked on: Core's connection itself."""
        if self._mode == "classic":
            assert hub is not None
            return connection.hub(hub)
        return connection

    @staticmethod
    def _check_result(result: Any, sub: Subscription, hub: str) -> Any:
        if not sub.check(result):
            raise SubscriptionError(sub, result, hub)
        return result

    def _subscription_succeeded(self, result: Any, connection: ConnectionLike, index: int) -> None:
        if connection is not self._connection or index not in self._pending:
            return
        sub = self.subscriptions[index]
        self.log.debug("{subscription} succeeded", subscription=self._describe_sub(sub))
        self._pending.discard(index)
        if sub.stale_after is not None:
            self._watchdogs[index] = self._reactor.callLater(
                sub.stale_after, self._stale, connection, index
            )
        if not self._pending:
            self._all_subscribed(connection)

    def _subscription_failed(self, reason: Failure, connection: ConnectionLike, index: int) -> None:
        if connection is not self._connection or index not in self._pending:
            return
        sub = self.subscriptions[index]
        if self._family == "core" and reason.check(ConnectionClosed):
            # Cut short by the connection loss: the reconnect (or, should it fail,
            # the next connection) invokes it again.  No failed attempt.
            self.log.info(
                "subscription {subscription} interrupted ({reason}); it is made again "
                "once connected",
                subscription=self._describe_sub(sub),
                reason=self._describe(reason),
            )
            return
        failures = self._sub_failures.get(index, 0)
        self._sub_failures[index] = failures + 1
        if self._max_attempts is not None and failures + 1 >= self._max_attempts:
            self._give_up(failures + 1, reason)
            return
        delay = self._policy(failures)
        self.log.warn(
            "subscription {subscription} failed ({reason}); retrying in {delay:.1f}s",
            subscription=self._describe_sub(sub),
            reason=self._describe(reason),
            delay=delay,
            attempt=failures + 1,
        )
        self._sub_retry[index] = self._reactor.callLater(delay, self._subscribe, connection, index)

    def _all_subscribed(self, connection: ConnectionLike) -> None:
        again = self._generation > 1 or self._resubscribing
        self._subscribed = True
        self._resubscribing = False
        self._failures = 0
        self.log.info(
            "{event} {count} subscriptions on {url}",
            event="resubscribed" if again else "subscribed",
            count=len(self.subscriptions),
            url=redact_url(self.settings.url),
        )
        # One at a time: a waiter's callback may stop the service (or make it give
        # up), and the waiters after it must then fail rather than get a dead
        # connection; stopService() fails those still in self._waiters.
        while self._waiters and self._subscribed and connection is self._connection:
            self._waiters.pop(0).callback(connection)

    def _stale(self, connection: ConnectionLike, index: int) -> None:
        self._watchdogs.pop(index, None)
        if connection is not self._connection:
            return
        sub = self.subscriptions[index]
        self.log.warn(
            "stale feed: no {watched} call on {hub} for {seconds}s after {subscription}; "
            "making a fresh connection",
            watched="/".join(sub.watch) or "client",
            hub=self._label(sub.hub),
            seconds=sub.stale_after,
            subscription=self._describe_sub(sub),
        )
        healthy, fed = self._subscribed, self._fed
        self._abandon(connection)
        if not healthy:
            self._attempt_failed(Failure(SignalRError("stale feed")), None)
            return
        # The server accepted every subscription, so this is no failed attempt; but a
        # feed that never says anything would otherwise reconnect every policy(0)
        # seconds for ever, so silent connections in a row back off.
        self._silent_stales = 0 if fed else self._silent_stales + 1
        self._reconnect_in(self._policy(max(self._silent_stales - 1, 0)))

    # -------------------------------------------------------------- bookkeeping

    def _describe(self, reason: Failure) -> str:
        return _describe(reason, self._secrets)

    def _attempt_failed(self, reason: Failure, what: str | None) -> None:
        """Count a failed attempt and schedule the next one (or give up)."""
        if not self.running:
            return
        self._failures += 1
        if what is not None:
            self.log.warn("{what}: {reason}", what=what, reason=self._describe(reason))
        if self._max_attempts is not None and self._failures >= self._max_attempts:
            self._give_up(self._failures, reason)
            return
        self._reconnect_in(self._policy(self._failures - 1))

    def _permanent_failure(self, reason: Failure, what: str) -> None:
        """Give up at once on an error that retrying cannot fix (a bad URL, say)."""
        if not self.running:
            return
        self._failures += 1
        self.log.error(
            "{what}: {reason}; not retrying, as this is a configuration error",
            what=what,
            reason=self._describe(reason),
        )
        self._give_up(self._failures, reason)

    def _reconnect_in(self, delay: float) -> None:
        if not self.running:
            return
        self.log.info(
            "reconnecting to {url} in {delay:.1f}s (attempt {attempt})",
            url=redact_url(self.settings.url),
            delay=delay,
            attempt=self._failures + 1,
        )
        self._retry_call = self._reactor.callLater(delay, self._connect)

    def _give_up(self, attempts: int, reason: Failure) -> None:
        error = GaveUpError(attempts, reason, self._describe(reason))
        self._gave_up = error
        self.log.critical("gave up: {error}", error=str(error))
        connection = self._connection
        self._drop_connection_state()
        if connection is not None:
            self._close(connection)
        self._fail_waiters(Failure(error))
        if self._on_gave_up is not None:
            try:
                self._on_gave_up(error)
            except Exception:
                self.log.failure("on_gave_up failed")

    def _abandon(self, connection: ConnectionLike) -> None:
        """Forget the current connection and close it in the background."""
        self._drop_connection_state()
        self._close(connection)

    def _close(self, connection: ConnectionLike) -> None:
        """Stop ``connection``; :meth:`stopService` waits until that is done."""
        try:
            d = connection.stop()
        except Exception:
            d = fail()

        def closed(result: object) -> None:
            if isinstance(result, Failure):
                self.log.warn(
                    "error while closing the connection: {reason}",
                    reason=self._describe(result),
                )
            self._closing.discard(d)

        self._closing.add(d)
        d.addBoth(closed)  # at once if it already fired

    def _all_closed(self) -> Deferred[None]:
        """A Deferred that fires once every connection being closed is closed."""
        waits: list[Deferred[None]] = []
        for closing in list(self._closing):
            done: Deferred[None] = Deferred()
            closing.addBoth(_passing_to, done)
            waits.append(done)
        if not waits:
            return succeed(None)
        return gatherResults(waits).addCallback(lambda _: None)

    def _drop_connection_state(self) -> None:
        self._connection = None
        self._family = None
        self._subscribed = False
        self._resubscribing = False
        self._fed = False
        self._pending = set()
        self._cancel_subscription_timers()

    def _cancel_subscription_timers(self) -> None:
        for call in (*self._sub_retry.values(), *self._watchdogs.values()):
            if call.active():
                call.cancel()
        # Emptied in place: the feed watchers of a connection hold these dicts.
        self._sub_retry.clear()
        self._watchdogs.clear()

    def _fail_waiters(self, reason: Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(reason)

    def _forget_waiter(self, d: Deferred[ConnectionLike]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)


def _entry(entry: Subscription | Handler) -> str:
    """A subscription or handler as a user would recognise it in an error."""
    if isinstance(entry, Subscription):
        return f"subscription {entry.describe()!r}"
    return f"handler for {entry.method or 'every call'!r}"


def _passing_to(result: object, waiter: Deferred[None]) -> object:
    """Fire ``waiter`` when a Deferred's chain gets here; leave the chain's result."""
    waiter.callback(None)
    return result


def _on_any(proxy: HubProxyLike, hub: str, callback: Callable[[ClientCall], object]) -> None:
    """Call ``callback`` for every client call on ``proxy``'s hub."""

    def on_call(method: str, *args: Any) -> None:
        callback(ClientCall(hub, method, args))

    proxy.on_any(on_call)


def _ignoring_args(callback: Callable[[], None]) -> Callable[..., None]:
    def call(*args: object) -> None:
        callback()

    return call

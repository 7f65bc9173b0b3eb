"""
The ``twistd signalr`` plugin: command-line options and :func:`makeService`.

``twistd -n signalr --url https://host/signalr --subscribe 'c3.Subscribe:[["tick"]]'``
runs a :class:`~txsignalr.service.SubscriptionService` that keeps the subscriptions
alive and writes every client-method call as a JSON line ``{"time", "hub", "method",
"args"}``.  ``twistd -n signalr --demo`` does the same against the embedded demo server
from :mod:`txsignalr.testing`.

ASP.NET Core: the URL names the hub, so ``--subscribe``/``--on`` need no hub part:
``twistd -n signalr --url https://host/hubs/c3 --protocol core --subscribe
'Subscribe:[["tick"]]'``; ``"hub"`` in the JSON lines is the last segment of the URL's
path.  A ``HUB.`` part is accepted on Core when it is that name.  With ``--protocol
auto`` (the default), a hub named anywhere means classic; with no hub named anywhere
the server decides, and a classic one is an error.

Exit status: 0 after a normal shutdown (by Twisted's convention a SIGTERM/SIGINT
shutdown re-raises the signal); 1 for a usage error, when the ``--demo`` server cannot
listen, and when ``--max-attempts`` made the service give up.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import urlsplit

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from txsignalr._core_codecs import hub_codec
from txsignalr._protocol import Endpoints, Transport, transport_order
from txsignalr._tls import tls_policy_from_files
from txsignalr.errors import InvalidURL, ProtocolError, TLSConfigError
from txsignalr.payloads import decode_deflate_base64
from txsignalr.service import (
    ENV_NAME,
    HUB_PROTOCOLS,
    PROTOCOLS,
    ClientCall,
    ConnectionSettings,
    GaveUpError,
    Handler,
    MissingAccessToken,
    Subscription,
    SubscriptionService,
    core_hub_name,
    read_access_token,
    unique_ignoring_case,
)

__all__ = [
    "DEMO_SUBSCRIPTION",
    "DemoServerError",
    "DemoService",
    "JSONLinesWriter",
    "Options",
    "makeService",
]

log = Logger(namespace="txsignalr.tap")

#: What ``--demo`` subscribes to when no ``--subscribe`` is given.
DEMO_SUBSCRIPTION = Subscription("c3", "Subscribe", (["market_summaries", "tick", "heartbeat"],))

_DECODERS: dict[str, Callable[[Any], Any]] = {"deflate-base64": decode_deflate_base64}


#: The hub the ``--demo`` server's feed comes from (its Core URL ends with it).
DEMO_HUB = "c3"


def _hub_method(option: str, text: str) -> tuple[str | None, str]:
    """``HUB.METHOD`` or, for the hub an ASP.NET Core URL names, ``METHOD``."""
    hub, dot, method = text.rpartition(".")
    if (
        (dot and not hub.strip())
        or not method.strip()
        or "." in hub
        or any(c.isspace() for c in text)
    ):
        raise usage.UsageError(
            f"{option} {text!r}: expected HUB.METHOD, or METHOD on an ASP.NET Core URL "
            "(which names the hub), e.g. c3.Subscribe or Subscribe"
        )
    return (hub if dot else None), method


def _same_hub(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.lower() == b.lower()


def _pair(option: str, text: str, separator: str, example: str) -> tuple[str, str]:
    name, sep, value = text.partition(separator)
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise usage.UsageError(f"{option} {text!r}: expected {example}")
    if any(_is_control(c) for c in text):
        raise usage.UsageError(
            f"{option} {text!r}: control characters (CR, LF, ...) are not allowed"
        )
    return name, value.strip() if separator == ":" else value


def _is_control(char: str) -> bool:
    """CR, LF, NUL and the other ASCII control characters, but not tab."""
    return (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F


#: An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _positive(option: str, text: str, kind: Callable[[str], float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise usage.UsageError(f"{option} {text!r}: not a number") from None
    if not value > 0:
        raise usage.UsageError(f"{option} {text!r}: must be greater than zero")
    return value


class Options(usage.Options):
    """Command-line options of ``twistd signalr``."""

    synopsis = "[--url URL | --demo] [options]"
    longdesc = (
        "Connect to an ASP.NET Core SignalR hub or a classic ASP.NET SignalR 2.x "
        "endpoint, make the --subscribe invocations on every new connection, and write "
        'client-method calls as JSON lines {"time", "hub", "method", "args"}. '
        "Reconnects with back-off and re-subscribes until stopped. On ASP.NET Core the "
        'URL names the hub: give --subscribe/--on as METHOD; "hub" is then the last '
        "segment of the URL's path."
    )
    optFlags = [
        ["demo", None, "Start the embedded demo server (txsignalr.testing) and subscribe to it."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["url"] = None
        # --hub, --header, --cookie, --query, --transport, --protocol, --access-token-env:
        # declared with ConnectionSettings
        self.update(ConnectionSettings.option_defaults())
        self._chose_transports = False
        self._chose_protocol = False
        self["subscriptions"] = []
        self["on"] = []
        self["output"] = "-"
        self["decode"] = None
        self["stale-after"] = None
        self["max-attempts"] = None
        self["invoke-timeout"] = 30.0
        self["demo-port"] = 0
        self["ca"] = self["client-cert"] = self["client-key"] = None
        self["tls"] = None

    def opt_url(self, url: str) -> None:
        """The SignalR endpoint, e.g. https://example.com/signalr."""
        if self["url"] is not None:
            raise usage.UsageError("--url given twice: a service connects to one endpoint")
        scheme, sep, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not rest.split("/")[0]:
            raise usage.UsageError(f"--url {url!r}: expected an http:// or https:// URL")
        if any(c.isspace() or _is_control(c) for c in url):
            raise usage.UsageError(
                f"--url {url!r}: spaces and control characters must be %-encoded"
            )
        if "@" in re.split(r"[/?#]", rest, maxsplit=1)[0]:
            raise usage.UsageError(
                "--url: user:password@ in the URL is not sent; give credentials with "
                "--header 'Authorization: ...' (or --cookie/--query)"
            )
        self["url"] = url

    opt_u = opt_url

    def opt_hub(self, hub: str) -> None:
        """Connect to this hub (repeatable; hubs named by --subscribe/--on are added)."""
        if not hub.strip() or any(c.isspace() or c == "." for c in hub):
            raise usage.UsageError(f"--hub {hub!r}: expected a hub name")
        self["hubs"] = [*self["hubs"], hub]

    def opt_subscribe(self, spec: str) -> None:
        """[HUB.]METHOD[:JSON-ARGS] to invoke on every connection (repeatable); JSON-ARGS is the JSON array of arguments, e.g. c3.Subscribe:'[["tick"]]'; no HUB on an ASP.NET Core URL, which names the hub."""  # noqa: E501
        target, colon, raw = spec.partition(":")
        hub, method = _hub_method("--subscribe", target)
        args: list[Any] = []
        if colon:
            try:
                args = json.loads(raw, parse_constant=_no_constants)
            except ValueError as e:
                raise usage.UsageError(
                    f"--subscribe {spec!r}: JSON-ARGS is not JSON ({e})"
                ) from None
            if not isinstance(args, list):
                raise usage.UsageError(
                    f"--subscribe {spec!r}: JSON-ARGS must be a JSON array of arguments, "
                    f"e.g. {target}:'[[\"tick\"]]'"
                )
        self["subscriptions"].append((hub, method, tuple(args)))

    def opt_on(self, spec: str) -> None:
        """[HUB.]METHOD client calls to output (repeatable; default: every client call); no HUB on an ASP.NET Core URL."""  # noqa: E501
        hub, method = _hub_method("--on", spec)
        self._add_on(hub, method)

    def _add_on(self, hub: str | None, method: str) -> None:
        # Hub and method names are case-insensitive in SignalR: c3.tick and C3.Tick
        # are the same calls, and must be written once.
        if not any(_same_hub(h, hub) and m.lower() == method.lower() for h, m in self["on"]):
            self["on"].append((hub, method))

    def opt_protocol(self, protocol: str) -> None:
        """SignalR family: auto (the default: classic when a hub is named anywhere, else whatever the server is), classic (ASP.NET SignalR 2.x) or core (ASP.NET Core)."""  # noqa: E501
        if protocol.lower() not in PROTOCOLS:
            raise usage.UsageError(
                f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}"
            )
        if self._chose_protocol:
            raise usage.UsageError("--protocol given twice")
        self._chose_protocol = True
        self["protocol"] = protocol.lower()

    def opt_hub_protocol(self, name: str) -> None:
        """ASP.NET Core hub protocol: json (the default) or messagepack (binary; needs pip install 'txsignalr[messagepack]'; never over Server-Sent Events)."""  # noqa: E501
        if name.lower() not in HUB_PROTOCOLS:
            raise usage.UsageError(
                f"--hub-protocol {name!r}: expected one of {', '.join(HUB_PROTOCOLS)}"
            )
        if name.lower() == "messagepack":
            try:
                hub_codec("messagepack")
            except ImportError as e:
                raise usage.UsageError(f"--hub-protocol messagepack: {e}") from None
        self["hub_protocol"] = name.lower()

    def opt_stateful_reconnect(self) -> None:
        """ASP.NET Core (.NET 8+ servers that allow it): when the WebSocket drops, resume the same connection and replay what either side missed, instead of starting over."""  # noqa: E501
        self["stateful_reconnect"] = True

    def opt_access_token_env(self, name: str) -> None:
        """Environment variable holding a bearer token, sent as Authorization: Bearer and read again before each ASP.NET Core negotiate (a rotated token is picked up; classic: when each connection is made); the token itself is never given on the command line."""  # noqa: E501
        if not ENV_NAME.fullmatch(name):
            # Not repeated: it may be the token itself, given here by mistake.
            raise usage.UsageError(
                "--access-token-env: expected the NAME of an environment variable that "
                "holds the token (letters, digits, _), not the token itself"
            )
        if self["access_token_env"] is not None:
            raise usage.UsageError("--access-token-env given twice")
        self["access_token_env"] = name

    def opt_header(self, header: str) -> None:
        """'Name: value' HTTP header for every request (repeatable; each name once)."""
        name, value = _pair("--header", header, ":", "'Name: value'")
        if not _TOKEN.fullmatch(name):
            raise usage.UsageError(f"--header {header!r}: {name!r} is not a header name")
        if any(name.lower() == known.lower() for known in self["headers"]):
            raise usage.UsageError(
                f"--header {name!r} given twice (header names are case-insensitive); "
                "join the values into one --header if the server expects a list"
            )
        self["headers"][name] = value

    def opt_cookie(self, cookie: str) -> None:
        """NAME=VALUE cookie for every request (repeatable; each name once)."""
        name, value = _pair("--cookie", cookie, "=", "NAME=VALUE")
        if name in self["cookies"]:
            raise usage.UsageError(f"--cookie {name!r} given twice")
        self["cookies"][name] = value

    def opt_query(self, item: str) -> None:
        """KEY=VALUE query parameter for every request (repeatable; each key once)."""
        name, value = _pair("--query", item, "=", "KEY=VALUE")
        if name in self["query"]:
            raise usage.UsageError(f"--query {name!r} given twice")
        self["query"][name] = value

    def opt_transport(self, name: str) -> None:
        """Transport to use: webSockets, serverSentEvents or longPolling (repeatable, most preferred first; default: all three in that order)."""  # noqa: E501
        known = ", ".join(t.value for t in Transport)
        try:
            [transport] = transport_order([name])
        except ValueError:
            raise usage.UsageError(
                f"--transport {name!r}: unknown transport (known: {known})"
            ) from None
        chosen: tuple[Transport, ...] = self["transports"] if self._chose_transports else ()
        if transport in chosen:
            raise usage.UsageError(f"--transport {transport.value} given twice")
        self["transports"] = (*chosen, transport)
        self._chose_transports = True

    def opt_output(self, path: str) -> None:
        """Where to write JSON lines: a file to append to, or - for standard output (the default; needs twistd -n, and without -l, twistd's log lines, which start with a timestamp, share it with the bare JSON lines)."""  # noqa: E501
        if path != "-":
            if os.path.isdir(path):
                raise usage.UsageError(f"--output {path!r}: is a directory")
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise usage.UsageError(f"--output {path!r}: directory {parent!r} does not exist")
            try:  # find out now, not after the first call arrives
                open(path, "a", encoding="utf-8").close()
            except OSError as e:
                raise usage.UsageError(f"--output {path!r}: cannot write ({e.strerror})") from None
            path = os.path.abspath(path)  # twistd --rundir changes directory later
        self["output"] = path

    opt_o = opt_output

    def opt_decode(self, codec: str) -> None:
        """Decode string arguments of client calls: deflate-base64 (exchange feeds)."""
        if codec not in _DECODERS:
            raise usage.UsageError(
                f"--decode {codec!r}: unknown codec (known: {', '.join(sorted(_DECODERS))})"
            )
        self["decode"] = codec

    def opt_stale_after(self, seconds: str) -> None:
        """Reconnect afresh when a subscribed hub makes none of its --on calls (without --on: no call at all) for SECONDS."""  # noqa: E501
        self["stale-after"] = _positive("--stale-after", seconds, float)

    def opt_max_attempts(self, count: str) -> None:
        """Give up, and exit with status 1, after COUNT consecutive failed attempts (default: never); losing a subscribed connection is no failed attempt."""  # noqa: E501
        try:
            value = int(count)
        except ValueError:
            raise usage.UsageError(f"--max-attempts {count!r}: not an integer") from None
        if value < 1:
            raise usage.UsageError(f"--max-attempts {count!r}: must be at least 1")
        self["max-attempts"] = value

    def opt_invoke_timeout(self, seconds: str) -> None:
        """Seconds to wait for a subscription's result (default 30)."""
        self["invoke-timeout"] = _positive("--invoke-timeout", seconds, float)

    def opt_demo_port(self, port: str) -> None:
        """TCP port on 127.0.0.1 for the --demo server (default 0: any free port)."""
        try:
            value = int(port)
        except ValueError:
            raise usage.UsageError(f"--demo-port {port!r}: not an integer") from None
        if not 0 <= value <= 65535:
            raise usage.UsageError(f"--demo-port {port!r}: must be between 0 and 65535")
        self["demo-port"] = value

    def opt_proxy(self, url: str) -> None:
        """HTTP proxy for every request and WebSocket, http://[user:password@]host:port (default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment)."""  # noqa: E501
        from txsignalr._proxy import ProxyURL

        try:
            ProxyURL.parse(url)
        except InvalidURL as e:
            raise usage.UsageError(f"--proxy: {e}") from None
        self["proxy"] = url

    def opt_ca(self, path: str) -> None:
        """PEM file of the CA certificate(s) to trust for https/wss instead of the system's."""
        self._tls_file("ca", path)

    def opt_client_cert(self, path: str) -> None:
        """PEM file of a client certificate for TLS client authentication (may hold its key)."""
        self._tls_file("client-cert", path)

    def opt_client_key(self, path: str) -> None:
        """PEM file of the --client-cert's private key, when it is not in that file."""
        self._tls_file("client-key", path)

    def _tls_file(self, option: str, path: str) -> None:
        if self[option] is not None:
            raise usage.UsageError(f"--{option} given twice")
        self[option] = os.path.abspath(path)  # twistd may chdir before the service starts

    def _check_tls(self) -> None:
        """Load --ca/--client-cert/--client-key now, so a bad file is a usage error."""
        if self["client-key"] is not None and self["client-cert"] is None:
            raise usage.UsageError("--client-key needs --client-cert")
        if all(self[o] is None for o in ("ca", "client-cert")):
            return
        if self["demo"]:
            raise usage.UsageError("--ca/--client-cert are for --url https://...; --demo is http")
        try:
            self["tls"] = tls_policy_from_files(self["ca"], self["client-cert"], self["client-key"])
        except TLSConfigError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        """Check the options fit together."""
        if self["demo"]:
            if self["url"] is not None:
                raise usage.UsageError("--demo and --url cannot be combined")
            if self["decode"] is None:
                self["decode"] = "deflate-base64"
        else:
            if self["url"] is None:
                raise usage.UsageError("--url is required (or --demo to try the demo server)")
            if self["demo-port"]:
                raise usage.UsageError("--demo-port needs --demo")
            if not (self["hubs"] or self["subscriptions"] or self["on"]) and (
                self["protocol"] != "core"
            ):
                raise usage.UsageError("nothing to do: give --hub, --subscribe or --on")
        if self["stale-after"] is not None and not (self["subscriptions"] or self["demo"]):
            raise usage.UsageError("--stale-after needs at least one --subscribe")
        if self["url"] is not None:
            self._check_url()
        self._check_hubs()
        self._check_access_token()
        self._check_core_options()
        self._check_tls()
        if self["output"] == "-" and self.parent is not None:
            if not self.parent.get("nodaemon", True):
                raise usage.UsageError(
                    "--output -: a daemon's stdout is /dev/null; use twistd -n or --output PATH"
                )

    def _check_url(self) -> None:
        """Refuse what the connection would refuse on every attempt, for ever."""
        url: str = self["url"]
        try:
            Endpoints.from_url(url, [], None)
        except InvalidURL as e:
            raise usage.UsageError(f"--url: {e}") from None
        try:
            Endpoints.from_url(url, [], self["query"])
        except InvalidURL as e:
            raise usage.UsageError(f"--query: {e}") from None
        if urlsplit(url).port == 0:  # a bad port made from_url fail already
            raise usage.UsageError(f"--url {url!r}: port 0 cannot be connected to")

    def _core_hub(self) -> str:
        """The hub a Core connection reaches: the --url's, or the demo's."""
        return core_hub_name(self["url"]) if self["url"] is not None else DEMO_HUB

    def _check_hubs(self) -> None:
        """
        Core: every hub named must be the URL's, and is then dropped (the URL says
        it).  Classic: everything must name its hub.  Auto: a hub named anywhere
        means classic, so then everything must.
        """
        protocol = self["protocol"]
        subscriptions: list[tuple[str | None, str, tuple[Any, ...]]] = self["subscriptions"]
        on: list[tuple[str | None, str]] = self["on"]
        if protocol == "core":
            own = self._core_hub()
            where = (
                f"the --url ({own!r}, the end of its path)"
                if self["url"]
                else (f"the --demo server's Core URL ({own!r})")
            )
            named = [("--hub", h, h) for h in self["hubs"]]
            named += [("--subscribe", f"{h}.{m}", h) for h, m, _ in subscriptions if h]
            named += [("--on", f"{h}.{m}", h) for h, m in on if h]
            for option, text, hub in named:
                if hub.lower() != own.lower():
                    raise usage.UsageError(
                        f"{option} {text!r}: on ASP.NET Core the hub is the one {where} "
                        f"names; leave the hub out"
                    )
            self["hubs"] = []
            self["subscriptions"] = [(None, m, a) for _, m, a in subscriptions]
            self["on"] = []
            for _, method in on:
                self._add_on(None, method)
            return
        hubless = [("--subscribe", m) for h, m, _ in subscriptions if h is None]
        hubless += [("--on", m) for h, m in on if h is None]
        if not hubless:
            return
        option, method = hubless[0]
        if protocol == "classic":
            raise usage.UsageError(
                f"{option} {method!r} names no hub: a classic ASP.NET SignalR connection "
                "needs HUB.METHOD (METHOD alone is for an ASP.NET Core URL, --protocol core)"
            )
        named_any = self["hubs"] or any(h for h, _, _ in subscriptions) or any(h for h, _ in on)
        if named_any or self["demo"]:
            why = "--demo" if self["demo"] else "a hub named elsewhere"
            raise usage.UsageError(
                f"{option} {method!r} names no hub, but with --protocol auto {why} means "
                "classic ASP.NET SignalR, which needs HUB.METHOD everywhere; for an "
                "ASP.NET Core URL give --protocol core"
            )

    def _check_core_options(self) -> None:
        """--hub-protocol messagepack and --stateful-reconnect are ASP.NET Core's."""
        core_only = [
            option
            for option, given in (
                ("--hub-protocol messagepack", self["hub_protocol"] != "json"),
                ("--stateful-reconnect", self["stateful_reconnect"]),
            )
            if given
        ]
        if not core_only or self["protocol"] == "core":
            return
        hubs_named = (
            self["hubs"]
            or any(h for h, _, _ in self["subscriptions"])
            or any(h for h, _ in self["on"])
        )
        if self["protocol"] == "classic" or hubs_named or self["demo"]:
            raise usage.UsageError(
                f"{core_only[0]} is for ASP.NET Core, but this connects as classic ASP.NET "
                "SignalR; add --protocol core (and name no hubs: the URL names it)"
            )

    def _check_access_token(self) -> None:
        name: str | None = self["access_token_env"]
        if name is None:
            return
        if any(h.lower() == "authorization" for h in self["headers"]):
            raise usage.UsageError(
                "--access-token-env and --header 'Authorization: ...' cannot be combined: "
                "the token is sent as Authorization: Bearer"
            )
        try:
            read_access_token(name)
        except MissingAccessToken as e:
            raise usage.UsageError(f"--access-token-env: {e}") from None

    def subscriptions(self) -> list[Subscription]:
        """The subscriptions these options ask for (with their watchdogs)."""
        specs = [(s.hub, s.method, s.args) for s in self._default_subscriptions()]
        stale_after: float | None = self["stale-after"]
        on: list[tuple[str | None, str]] = self["on"]
        result = []
        for hub, method, args in self["subscriptions"] or specs:
            watch = tuple(m for h, m in on if _same_hub(h, hub))
            result.append(Subscription(hub, method, args, stale_after=stale_after, watch=watch))
        return result

    def _default_subscriptions(self) -> list[Subscription]:
        if not self["demo"]:
            return []
        if self["protocol"] == "core":  # the demo's Core URL names the hub
            return [attrs.evolve(DEMO_SUBSCRIPTION, hub=None)]
        return [DEMO_SUBSCRIPTION]

    def settings(self, url: str) -> ConnectionSettings:
        """The connection settings for ``url`` (the --url, or the demo server's)."""
        return ConnectionSettings(
            url, tls=self["tls"], **{name: self[name] for name in ConnectionSettings.options()}
        )


class JSONLinesWriter:
    """
    Writes client calls as JSON lines ``{"time", "hub", "method", "args"}``, one
    flushed line per call, so a reader (``tail -f``, a pipe) sees each call at once.

    Lines are strict JSON in ASCII (``\\uXXXX`` escapes), so any reader can parse
    them, whatever its encoding.  A value JSON cannot represent (NaN, Infinity,
    which some servers send; a non-JSON object from a decoder) is written as its
    ``repr`` string, and a warning is logged the first time.  A failed write (disk
    full, closed pipe) is logged, not raised: the service keeps running.

    :param clock: the source of ``time`` (seconds since the epoch).
    :param stream: the text stream to write to.
    :param decode: applied to every string argument (e.g. deflate-base64 decoding);
        an argument it cannot decode is written as it came and a warning is logged.
    """

    def __init__(
        self,
        clock: IReactorTime,
        stream: IO[str],
        decode: Callable[[Any], Any] | None = None,
    ) -> None:
        self._clock = clock
        self._stream = stream
        self._decode = decode
        self._warned_unrepresentable = False
        self._lost = 0  # lines lost since writing started failing

    def __call__(self, call: ClientCall) -> None:
        """Write one call."""
        args = list(call.args)
        if self._decode is not None:
            for i, arg in enumerate(args):
                if isinstance(arg, str):
                    try:
                        args[i] = self._decode(arg)
                    except ProtocolError as e:
                        log.warn(
                            "could not decode an argument of {hub}.{method}: {error}",
                            hub=call.hub,
                            method=call.method,
                            error=e.message,
                        )
        record = {"time": self._clock.seconds(), "hub": call.hub, "method": call.method}
        record["args"] = args
        self._write(self._encode(record, call) + "\n", call)

    def _encode(self, record: dict[str, Any], call: ClientCall) -> str:
        try:
            return _dumps(record)
        except (ValueError, TypeError, RecursionError):
            pass
        if not self._warned_unrepresentable:
            self._warned_unrepresentable = True
            log.warn(
                "a call of {hub}.{method} has values JSON cannot represent (NaN, Infinity "
                "or non-JSON objects); they are written as strings (logged once)",
                hub=call.hub,
                method=call.method,
            )
        try:
            return _dumps(_representable(record), default=repr)
        except (ValueError, TypeError, RecursionError):  # e.g. a reference cycle
            return _dumps({**record, "args": None})

    def _write(self, line: str, call: ClientCall) -> None:
        try:
            self._stream.write(line)
            self._stream.flush()
        except (OSError, ValueError) as e:  # ValueError: the stream was closed
            if not self._lost:
                log.error(
                    "could not write a call of {hub}.{method}: {error}; calls are lost "
                    "until writing works again",
                    hub=call.hub,
                    method=call.method,
                    error=str(e),
                )
            self._lost += 1
            return
        if self._lost:
            log.info("writing calls again; {count} were lost", count=self._lost)
            self._lost = 0


def _dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=default
    )


def _representable(value: Any) -> Any:
    """``value`` with NaN and the infinities replaced by their ``repr`` strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _representable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_representable(v) for v in value]
    return value


class _JSONLinesOutput(Service):
    """Owns the output file: opened on start, closed on stop; hands calls to a writer."""

    def __init__(
        self,
        clock: IReactorTime,
        path: str,
        stdout: IO[str],
        decode: Callable[[Any], Any] | None,
    ) -> None:
        self._clock = clock
        self._path = path
        self._stdout = stdout
        self._decode = decode
        self._stream: IO[str] | None = None
        self._writer: JSONLinesWriter | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._path == "-":
            self._stream = self._stdout
        else:
            self._stream = open(self._path, "a", encoding="utf-8")
        self._writer = JSONLinesWriter(self._clock, self._stream, self._decode)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        stream, self._stream, self._writer = self._stream, None, None
        if stream is not None and stream is not self._stdout:
            stream.close()

    def __call__(self, call: ClientCall) -> None:
        if self._writer is not None:
            self._writer(call)


def _stop_reactor(reactor: object) -> None:
    """Stop the process's reactor (now, or as soon as it runs): nothing left to do."""
    if IReactorCore.providedBy(reactor):
        core = IReactorCore(reactor)
        core.callWhenRunning(core.stop)


class DemoServerError(Exception):
    """The ``--demo`` server could not listen; twistd reports it and exits with 1."""


class DemoService(MultiService):
    """
    Runs the embedded demo server (:class:`txsignalr.testing.SignalRServer` with a
    :class:`~txsignalr.testing.C3Hub` pushing every 0.2 s) on 127.0.0.1, and a child
    service made for its URL (the classic one, or with ``core`` the c3 hub's ASP.NET
    Core URL); stopping stops the child, then the server.

    The port is bound in ``privilegedStartService()`` (or ``startService()``,
    when that was not called), so that under ``twistd`` a port in use stops the
    start-up with :class:`DemoServerError` and exit status 1.

    :param reactor: the reactor (``IReactorTCP`` and ``IReactorTime``).
    :param port: the TCP port; 0 picks a free one.
    :param subscription_service: ``make(url) -> IService``, called once listening.
    :param core: hand the child the ASP.NET Core URL of the c3 hub.
    :param access_token: ``token() -> str``: the server's Core side then requires
        ``Authorization: Bearer`` with what it returns (asked on every request).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        port: int,
        subscription_service: Callable[[str], IService],
        *,
        core: bool = False,
        access_token: Callable[[], str] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from txsignalr.testing import C3Hub, SignalRServer

        # Offering stateful reconnect changes nothing for clients that do not ask.
        self._server = SignalRServer(
            reactor, hubs=[C3Hub(interval=0.2)], core_stateful_reconnect=True
        )
        if access_token is not None:
            self._server.core_access_token = lambda token: _token_matches(token, access_token)
        self._core = core
        self._port = port
        self._make = subscription_service
        self._listening = False
        self._child: IService | None = None

    def privilegedStartService(self) -> None:
        self._listen()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        self._listen()
        super().startService()  # type: ignore[no-untyped-call]
        if self._child is None:
            url = self._server.core_url(DEMO_HUB) if self._core else self._server.url
            self._child = self._make(url)
            self._child.setServiceParent(self)  # starts it

    def _listen(self) -> None:
        """Bind the port now (``listenTCP`` is synchronous), or raise."""
        if self._listening:
            return
        failures: list[Failure] = []
        listening = ensureDeferred(self._server.listen(port=self._port, interface="127.0.0.1"))
        listening.addErrback(failures.append)
        if failures:
            error = failures[0].value
            reason = getattr(error, "socketError", None) or failures[0].getErrorMessage()
            message = f"the --demo server could not listen on 127.0.0.1:{self._port}: {reason}"
            log.critical("{message}", message=message)
            raise DemoServerError(message) from None  # the message says it all
        if not listening.called:
            raise DemoServerError("the --demo server did not start listening at once")
        self._listening = True
        log.info("demo server listening on {url}", url=self._server.url)

    def stopService(self) -> Deferred[None]:
        def stop_server(_: object) -> Deferred[None]:
            if not self._listening:
                return succeed(None)
            self._listening = False
            return ensureDeferred(self._server.stop())

        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        return stopped.addCallback(stop_server)


def _token_matches(token: str, expected: Callable[[], str]) -> bool:
    try:
        return token == expected()
    except MissingAccessToken:
        return False


def _exit_status_at_exit(status: int) -> None:
    """
    Make this process exit with ``status`` once twistd is done: after it stopped the
    services, removed its pid file and logged *Server Shut Down*, when the
    interpreter runs its ``atexit`` functions.
    """

    def exit_now() -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    atexit.register(exit_now)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service ``twistd signalr`` runs.

    When the service gives up (``--max-attempts``) it stops the reactor; under
    ``twistd`` (the options have a parent) the process then exits with status 1.

    :param options: parsed :class:`Options`.
    :param reactor: the reactor; the global one when ``None``.
    :returns: a :class:`~twisted.application.service.MultiService` holding the JSON-lines
        output, the subscription service and, for ``--demo``, the demo server.
    """
    if reactor is None:
        from twisted.internet import reactor as _global

        reactor = _global
    decode = _DECODERS[options["decode"]] if options["decode"] else None
    root = MultiService()
    output = _JSONLinesOutput(reactor, options["output"], sys.stdout, decode)
    output.setServiceParent(root)  # type: ignore[no-untyped-call]

    under_twistd = options.parent is not None

    def gave_up(error: GaveUpError) -> None:
        if under_twistd:
            _exit_status_at_exit(1)
        _stop_reactor(reactor)

    def subscription_service(url: str) -> IService:
        settings = options.settings(url)
        subscriptions = options.subscriptions()
        on: list[tuple[str | None, str]] = options["on"]  # already unique, ignoring case
        if on:
            handlers = [Handler(hub, method, output) for hub, method in on]
        elif settings.protocol == "core" or any(s.hub is None for s in subscriptions):
            handlers = [Handler(None, None, output)]  # the hub the URL names
        else:
            hubs = [*settings.hubs, *(s.hub for s in subscriptions if s.hub is not None)]
            handlers = [Handler(hub, None, output) for hub in unique_ignoring_case(hubs)]
        return SubscriptionService(
            reactor,
            settings,
            subscriptions,
            handlers,
            max_attempts=options["max-attempts"],
            invoke_timeout=options["invoke-timeout"],
            on_gave_up=gave_up,
        )

    if options["demo"]:
        token_env = options["access_token_env"]
        demo = DemoService(
            reactor,
            options["demo-port"],
            subscription_service,
            core=options["protocol"] == "core",
            access_token=None
            if token_env is None
            else functools.partial(read_access_token, token_env),
        )
        demo.setServiceParent(root)  # type: ignore[no-untyped-call]
    else:
        subscription_service(options["url"]).setServiceParent(root)
    return root

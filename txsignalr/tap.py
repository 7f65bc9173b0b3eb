"""
The ``twistd signalr`` plugin: command-line options and :func:`makeService`.

``twistd -n signalr --url https://host/signalr --subscribe 'c3.Subscribe:[["tick"]]'``
runs a :class:`~txsignalr.service.SubscriptionService` that keeps the subscriptions
alive and writes every client-method call as a JSON line ``{"time", "hub", "method",
"args"}``.  ``twistd -n signalr --demo`` does the same against the embedded demo server
from :mod:`txsignalr.testing`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from txsignalr.errors import ProtocolError
from txsignalr.payloads import decode_deflate_base64
from txsignalr.service import (
    ClientCall,
    ConnectionSettings,
    GaveUpError,
    Handler,
    Subscription,
    SubscriptionService,
)

__all__ = ["DEMO_SUBSCRIPTION", "DemoService", "JSONLinesWriter", "Options", "makeService"]

log = Logger(namespace="txsignalr.tap")

#: What ``--demo`` subscribes to when no ``--subscribe`` is given.
DEMO_SUBSCRIPTION = Subscription("c3", "Subscribe", (["market_summaries", "tick", "heartbeat"],))

_DECODERS: dict[str, Callable[[Any], Any]] = {"deflate-base64": decode_deflate_base64}


def _hub_method(option: str, text: str) -> tuple[str, str]:
    hub, dot, method = text.partition(".")
    if not dot or not hub.strip() or not method.strip() or any(c.isspace() for c in text):
        raise usage.UsageError(f"{option} {text!r}: expected HUB.METHOD, e.g. c3.Subscribe")
    return hub, method


def _pair(option: str, text: str, separator: str, example: str) -> tuple[str, str]:
    name, sep, value = text.partition(separator)
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise usage.UsageError(f"{option} {text!r}: expected {example}")
    return name, value.strip() if separator == ":" else value


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
        "Connect to a classic ASP.NET SignalR 2.x endpoint, make the --subscribe "
        "invocations on every new connection, and write client-method calls as JSON "
        'lines {"time", "hub", "method", "args"}. Reconnects with back-off and '
        "re-subscribes until stopped."
    )
    optFlags = [
        ["demo", None, "Start the embedded demo server (txsignalr.testing) and subscribe to it."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["url"] = None
        self["hubs"] = []
        self["subscriptions"] = []
        self["on"] = []
        self["headers"] = {}
        self["cookies"] = {}
        self["query"] = {}
        self["output"] = "-"
        self["decode"] = None
        self["stale-after"] = None
        self["max-attempts"] = None
        self["invoke-timeout"] = 30.0
        self["demo-port"] = 0

    def opt_url(self, url: str) -> None:
        """The SignalR endpoint, e.g. https://example.com/signalr."""
        scheme, sep, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not rest.split("/")[0]:
            raise usage.UsageError(f"--url {url!r}: expected an http:// or https:// URL")
        self["url"] = url

    opt_u = opt_url

    def opt_hub(self, hub: str) -> None:
        """Connect to this hub (repeatable; hubs named by --subscribe/--on are added)."""
        if not hub.strip() or any(c.isspace() or c == "." for c in hub):
            raise usage.UsageError(f"--hub {hub!r}: expected a hub name")
        self["hubs"].append(hub)

    def opt_subscribe(self, spec: str) -> None:
        """HUB.METHOD[:JSON-ARGS] to invoke on every connection (repeatable); JSON-ARGS is the JSON array of arguments, e.g. c3.Subscribe:'[["tick"]]'."""  # noqa: E501
        target, colon, raw = spec.partition(":")
        hub, method = _hub_method("--subscribe", target)
        args: list[Any] = []
        if colon:
            try:
                args = json.loads(raw)
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
        """HUB.METHOD client calls to output (repeatable; default: every client call)."""
        self["on"].append(_hub_method("--on", spec))

    def opt_header(self, header: str) -> None:
        """'Name: value' HTTP header for every request (repeatable)."""
        name, value = _pair("--header", header, ":", "'Name: value'")
        self["headers"][name] = value

    def opt_cookie(self, cookie: str) -> None:
        """NAME=VALUE cookie for every request (repeatable)."""
        name, value = _pair("--cookie", cookie, "=", "NAME=VALUE")
        self["cookies"][name] = value

    def opt_query(self, item: str) -> None:
        """KEY=VALUE query parameter for every request (repeatable)."""
        name, value = _pair("--query", item, "=", "KEY=VALUE")
        self["query"][name] = value

    def opt_output(self, path: str) -> None:
        """Where to write JSON lines: - for standard output (default), or a file to append to."""
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
        """Give up (and exit) after COUNT consecutive failed attempts (default: never)."""
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
            if not (self["hubs"] or self["subscriptions"] or self["on"]):
                raise usage.UsageError("nothing to do: give --hub, --subscribe or --on")
        if self["stale-after"] is not None and not (self["subscriptions"] or self["demo"]):
            raise usage.UsageError("--stale-after needs at least one --subscribe")

    def subscriptions(self) -> list[Subscription]:
        """The subscriptions these options ask for (with their watchdogs)."""
        specs = [(s.hub, s.method, s.args) for s in self._default_subscriptions()]
        stale_after: float | None = self["stale-after"]
        on: list[tuple[str, str]] = self["on"]
        result = []
        for hub, method, args in self["subscriptions"] or specs:
            watch = tuple(m for h, m in on if h.lower() == hub.lower())
            result.append(Subscription(hub, method, args, stale_after=stale_after, watch=watch))
        return result

    def _default_subscriptions(self) -> list[Subscription]:
        return [DEMO_SUBSCRIPTION] if self["demo"] else []

    def settings(self, url: str) -> ConnectionSettings:
        """The connection settings for ``url`` (the --url, or the demo server's)."""
        return ConnectionSettings(
            url=url,
            hubs=self["hubs"],
            headers=self["headers"],
            cookies=self["cookies"],
            query=self["query"],
        )


class JSONLinesWriter:
    """
    Writes client calls as JSON lines ``{"time", "hub", "method", "args"}``, one
    flushed line per call, so a reader (``tail -f``, a pipe) sees each call at once.

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
        self._stream.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
        self._stream.flush()


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


class DemoService(MultiService):
    """
    Runs the embedded demo server (:class:`txsignalr.testing.SignalRServer` with a
    :class:`~txsignalr.testing.C3Hub` pushing every 0.2 s) on 127.0.0.1, and once it
    listens, a child service made for its URL; stopping stops the child, then the server.

    :param reactor: the reactor (``IReactorTCP`` and ``IReactorTime``).
    :param port: the TCP port; 0 picks a free one.
    :param subscription_service: ``make(url) -> IService``, called once listening.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        port: int,
        subscription_service: Callable[[str], IService],
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from txsignalr.testing import C3Hub, SignalRServer

        self._reactor = reactor
        self._server = SignalRServer(reactor, hubs=[C3Hub(interval=0.2)])
        self._port = port
        self._make = subscription_service
        self._listening: Deferred[object] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._listening = ensureDeferred(
            self._server.listen(port=self._port, interface="127.0.0.1")
        ).addCallbacks(self._listening_on, self._listen_failed)

    def _listening_on(self, port: object) -> None:
        log.info("demo server listening on {url}", url=self._server.url)
        if self.running:
            self._make(self._server.url).setServiceParent(self)

    def _listen_failed(self, failure: Failure) -> None:
        log.critical("the demo server could not listen: {error}", error=failure.getErrorMessage())
        _stop_reactor(self._reactor)

    def stopService(self) -> Deferred[None]:
        listening = self._listening or succeed(None)
        self._listening = None

        def stop_server(_: object) -> Deferred[None]:
            return ensureDeferred(self._server.stop())

        def children_stopped(_: object) -> Deferred[None]:
            return listening.addCallback(stop_server)

        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        return stopped.addCallback(children_stopped)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service ``twistd signalr`` runs.

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

    def gave_up(error: GaveUpError) -> None:
        _stop_reactor(reactor)

    def subscription_service(url: str) -> IService:
        settings = options.settings(url)
        hubs = [*settings.hubs, *(s.hub for s in options.subscriptions())]
        on: list[tuple[str, str]] = options["on"]
        if on:
            handlers = [Handler(hub, method, output) for hub, method in on]
        else:
            handlers = [Handler(hub, None, output) for hub in dict.fromkeys(hubs)]
        return SubscriptionService(
            reactor,
            settings,
            options.subscriptions(),
            handlers,
            max_attempts=options["max-attempts"],
            invoke_timeout=options["invoke-timeout"],
            on_gave_up=gave_up,
        )

    if options["demo"]:
        demo = DemoService(reactor, options["demo-port"], subscription_service)
        demo.setServiceParent(root)  # type: ignore[no-untyped-call]
    else:
        subscription_service(options["url"]).setServiceParent(root)
    return root

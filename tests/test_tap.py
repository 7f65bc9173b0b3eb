"""Tests for the ``twistd signalr`` plugin: discovery, options and makeService."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IService, IServiceMaker, MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from txsignalr import HubConnection, Transport, encode_deflate_base64, tap
from txsignalr._protocol import ALL_TRANSPORTS
from txsignalr.service import ClientCall, ConnectionSettings, Subscription, SubscriptionService

URL = "https://example.com/signalr"


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


# ------------------------------------------------------------------ the plugin


def test_plugin_is_found() -> None:
    """getPlugins(IServiceMaker) finds the signalr ServiceMaker, pointing at txsignalr.tap."""
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    maker = makers["signalr"]
    assert maker.options is tap.Options
    assert maker.makeService is tap.makeService
    assert "SignalR" in maker.description


def test_twistd_knows_the_subcommand() -> None:
    """twistd's own option parser accepts `signalr` and hands it our Options."""
    config = ServerOptions()
    config.parseOptions(["-n", "signalr", "--url", URL, "--hub", "c3"])
    assert config.subCommand == "signalr"
    assert isinstance(config.subOptions, tap.Options)
    assert config.subOptions["url"] == URL


@pytest.mark.parametrize(
    ("twistd_args", "refused"),
    [
        ([], True),  # a daemon: stdout is /dev/null
        (["-l", "twistd.log"], True),
        (["-n"], False),  # the README's `twistd -n signalr --demo`
        (["-n", "-l", "twistd.log"], False),
    ],
)
def test_output_to_stdout_needs_nodaemon(twistd_args: list[str], refused: bool) -> None:
    """--output - (the default) is refused when twistd would daemonize, since a
    daemon's stdout is /dev/null; with -n it is accepted."""
    for output in ([], ["--output", "-"]):
        config = ServerOptions()
        args = [*twistd_args, "signalr", "--demo", *output]
        if refused:
            with pytest.raises(usage.UsageError, match="a daemon's stdout is /dev/null"):
                config.parseOptions(args)
        else:
            config.parseOptions(args)
            assert config.subOptions["output"] == "-"


def test_daemon_with_an_output_file_is_accepted(tmp_path: Path) -> None:
    """A daemon writing its JSON lines to a file is fine."""
    config = ServerOptions()
    config.parseOptions(["signalr", "--demo", "--output", str(tmp_path / "out.jsonl")])
    assert config.subOptions["output"] == str(tmp_path / "out.jsonl")


def test_twistd_reports_bad_options_as_usage_errors() -> None:
    """A bad signalr option surfaces through twistd as a UsageError naming it."""
    config = ServerOptions()
    with pytest.raises(usage.UsageError, match="--stale-after 'soon': not a number"):
        config.parseOptions(["-n", "signalr", "--url", URL, "--stale-after", "soon"])


# ------------------------------------------------------------------ parsing


def test_full_command_line(tmp_path: Path) -> None:
    """Every option lands where makeService reads it."""
    out = tmp_path / "calls.jsonl"
    options = parse(
        "--url", URL,
        "--hub", "extra",
        "--subscribe", 'c3.Subscribe:[["market_summaries", "tick"]]',
        "--subscribe", "c3.Authenticate",
        "--on", "c3.marketSummaries",
        "--on", "c3.tick",
        "--header", "Authorization: Bearer abc:def",
        "--cookie", "session=s=1",
        "--query", "key=v",
        "--output", str(out),
        "--decode", "deflate-base64",
        "--stale-after", "30",
        "--max-attempts", "5",
        "--invoke-timeout", "7.5",
        "--transport", "longPolling",
    )  # fmt: skip
    assert options["url"] == URL
    assert options["hubs"] == ["extra"]
    assert options["subscriptions"] == [
        ("c3", "Subscribe", (["market_summaries", "tick"],)),
        ("c3", "Authenticate", ()),
    ]
    assert options["on"] == [("c3", "marketSummaries"), ("c3", "tick")]
    assert options["headers"] == {"Authorization": "Bearer abc:def"}
    assert options["cookies"] == {"session": "s=1"}
    assert options["query"] == {"key": "v"}
    assert options["output"] == str(out)
    assert options["decode"] == "deflate-base64"
    assert options["stale-after"] == 30.0
    assert options["max-attempts"] == 5
    assert options["invoke-timeout"] == 7.5
    assert options["transports"] == (Transport.long_polling,)
    subs = options.subscriptions()
    assert [(s.hub, s.method, s.args, s.stale_after, s.watch) for s in subs] == [
        ("c3", "Subscribe", (["market_summaries", "tick"],), 30.0, ("marketSummaries", "tick")),
        ("c3", "Authenticate", (), 30.0, ("marketSummaries", "tick")),
    ]
    settings = options.settings(URL)
    assert settings.hubs == ("extra",)
    assert dict(settings.headers) == {"Authorization": "Bearer abc:def"}
    assert dict(settings.cookies) == {"session": "s=1"}
    assert dict(settings.query) == {"key": "v"}
    assert settings.transports == (Transport.long_polling,)


def test_defaults() -> None:
    """Without options: output to stdout, no decoding, no watchdog, never give up."""
    options = parse("--url", URL, "--hub", "c3")
    assert options["output"] == "-"
    assert options["decode"] is None
    assert options["stale-after"] is None
    assert options["max-attempts"] is None
    assert options["on"] == []
    assert options.subscriptions() == []
    assert options["transports"] == ALL_TRANSPORTS
    assert options.settings(URL).transports == (
        Transport.web_sockets,
        Transport.server_sent_events,
        Transport.long_polling,
    )


def test_transports_keep_the_order_given() -> None:
    """Repeated --transport options are a preference order, most preferred first, and
    replace the default order; names match ignoring case, as in HubConnection."""
    options = parse(
        "--url", URL, "--hub", "c3",
        "--transport", "serverSentEvents", "--transport", "LONGPOLLING",
        "--transport", "webSockets",
    )  # fmt: skip
    expected = (Transport.server_sent_events, Transport.long_polling, Transport.web_sockets)
    assert options["transports"] == expected
    assert options.settings(URL).transports == expected
    assert parse("--demo", "--transport", "longPolling").settings(URL).transports == (
        Transport.long_polling,
    )


def test_every_connection_setting_has_its_option() -> None:
    """Each ConnectionSettings field declared with a twistd option is set by that option,
    listed in --help, and given to the settings under its field name."""
    options_by_field = ConnectionSettings.options()
    assert options_by_field == {
        "hubs": "hub",
        "headers": "header",
        "cookies": "cookie",
        "query": "query",
        "transports": "transport",
        "protocol": "protocol",
        "access_token_env": "access-token-env",
        "hub_protocol": "hub-protocol",
        "stateful_reconnect": "stateful-reconnect",
        "proxy": "proxy",
    }
    flags = {"stateful-reconnect"}
    text = str(tap.Options())
    for option in options_by_field.values():
        assert callable(getattr(tap.Options, f"opt_{option.replace('-', '_')}"))
        assert (f"--{option} " if option in flags else f"--{option}=") in text
    defaults = parse("--url", URL, "--hub", "c3").settings(URL)
    assert defaults == ConnectionSettings(URL, hubs=["c3"])


def test_on_is_deduplicated_ignoring_case() -> None:
    """--on naming the same call twice, in any spelling, keeps the first one only."""
    options = parse(
        "--url", URL, "--subscribe", "c3.Sub", "--stale-after", "3",
        "--on", "c3.tick", "--on", "C3.TICK", "--on", "c3.Tick", "--on", "c3.heartbeat",
    )  # fmt: skip
    assert options["on"] == [("c3", "tick"), ("c3", "heartbeat")]
    assert options.subscriptions()[0].watch == ("tick", "heartbeat")
    [_, service] = _children(tap.makeService(options, reactor=Clock()))
    assert [(h.hub, h.method) for h in service.handlers] == [("c3", "tick"), ("c3", "heartbeat")]


def test_relative_output_is_made_absolute(tmp_path: Path, monkeypatch: Any) -> None:
    """--output with a relative path is resolved now (twistd --rundir changes directory
    before the file is opened)."""
    monkeypatch.chdir(tmp_path)
    options = parse("--url", URL, "--hub", "c3", "--output", "calls.jsonl")
    assert options["output"] == str(tmp_path / "calls.jsonl")


def test_watch_list_is_per_hub() -> None:
    """--stale-after watches only the --on methods of the subscription's own hub."""
    options = parse(
        "--url", URL,
        "--subscribe", "a.Sub", "--subscribe", "b.Sub",
        "--on", "a.feed", "--stale-after", "3",
    )  # fmt: skip
    assert [(s.hub, s.watch) for s in options.subscriptions()] == [("a", ("feed",)), ("b", ())]


def test_demo_defaults() -> None:
    """--demo needs no URL, subscribes to the demo feeds and decodes deflate-base64."""
    options = parse("--demo")
    assert options["demo"]
    assert options["decode"] == "deflate-base64"
    assert options.subscriptions() == [tap.DEMO_SUBSCRIPTION]
    assert tap.DEMO_SUBSCRIPTION == Subscription(
        "c3", "Subscribe", (["market_summaries", "tick", "heartbeat"],)
    )


def test_demo_with_own_subscription_and_port() -> None:
    """--demo accepts its own --subscribe and a --demo-port."""
    options = parse("--demo", "--demo-port", "8089", "--subscribe", 'c3.Subscribe:[["tick"]]')
    assert options["demo-port"] == 8089
    assert [s.args for s in options.subscriptions()] == [(["tick"],)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--url is required"),
        (["--url", URL], "nothing to do"),
        (
            ["--url", "ftp://example.com/signalr", "--hub", "c3"],
            "--url 'ftp://example.com/signalr'",
        ),
        (["--url", "example.com/signalr", "--hub", "c3"], "expected an http:// or https:// URL"),
        (["--url", "http:///signalr", "--hub", "c3"], "expected an http:// or https:// URL"),
        (["--demo", "--url", URL], "--demo and --url cannot be combined"),
        (["--url", URL, "--hub", "c3", "--demo-port", "80"], "--demo-port needs --demo"),
        (["--url", URL, "--hub", "c 3"], "--hub 'c 3': expected a hub name"),
        (["--url", URL, "--hub", "c3.x"], "--hub 'c3.x'"),
        (
            ["--url", URL, "--protocol", "classic", "--subscribe", "Subscribe"],
            "--subscribe 'Subscribe' names no hub: a classic ASP.NET SignalR connection",
        ),
        (["--url", URL, "--subscribe", ".Subscribe"], "expected HUB.METHOD"),
        (["--url", URL, "--subscribe", "c3."], "expected HUB.METHOD"),
        (["--url", URL, "--subscribe", "c3.Sub:[tick]"], "JSON-ARGS is not JSON"),
        (["--url", URL, "--subscribe", 'c3.Sub:"tick"'], "JSON-ARGS must be a JSON array"),
        (["--url", URL, "--protocol", "classic", "--on", "tick"], "--on 'tick' names no hub"),
        (["--url", URL, "--hub", "c3", "--header", "NoColon"], "--header 'NoColon': expected"),
        (["--url", URL, "--hub", "c3", "--header", ": v"], "expected 'Name: value'"),
        (["--url", URL, "--hub", "c3", "--cookie", "novalue"], "--cookie 'novalue': expected"),
        (["--url", URL, "--hub", "c3", "--query", "=v"], "--query '=v': expected KEY=VALUE"),
        (["--url", URL, "--hub", "c3", "--decode", "gzip"], "--decode 'gzip': unknown codec"),
        (["--url", URL, "--hub", "c3", "--stale-after", "soon"], "--stale-after 'soon'"),
        (["--url", URL, "--subscribe", "c3.S", "--stale-after", "0"], "greater than zero"),
        (["--url", URL, "--subscribe", "c3.S", "--stale-after", "-1"], "greater than zero"),
        (["--url", URL, "--subscribe", "c3.S", "--stale-after", "nan"], "greater than zero"),
        (["--url", URL, "--hub", "c3", "--stale-after", "5"], "--stale-after needs"),
        (["--url", URL, "--hub", "c3", "--max-attempts", "x"], "not an integer"),
        (["--url", URL, "--hub", "c3", "--max-attempts", "0"], "must be at least 1"),
        (["--url", URL, "--hub", "c3", "--invoke-timeout", "0"], "--invoke-timeout '0'"),
        (["--demo", "--demo-port", "http"], "--demo-port 'http': not an integer"),
        (["--demo", "--demo-port", "70000"], "between 0 and 65535"),
        (["--url", URL, "--hub", "c3", "--output", "/nonexistent-dir/x"], "does not exist"),
        (["--url", URL, "--hub", "c3", "--bogus"], "bogus"),
        (["--url", "http://127.0.0.1:99999/signalr", "--hub", "c3"], "--url: invalid"),
        (["--url", "http://127.0.0.1:0/signalr", "--hub", "c3"], "port 0"),
        (["--url", "http://[::1/signalr", "--hub", "c3"], "--url: invalid connection URL"),
        (["--url", "http://exa mple.com/signalr", "--hub", "c3"], "must be %-encoded"),
        (["--url", "http://h/signal\tr", "--hub", "c3"], "must be %-encoded"),
        (["--url", "http://u:p@h/signalr", "--hub", "c3"], "user:password@ in the URL"),
        (["--url", "http://h/signalr#x", "--hub", "c3"], "--url: connection URL must not"),
        (["--url", "http://h/signalr?transport=x", "--hub", "c3"], "--url: query parameter"),
        (["--url", URL, "--url", "http://other/signalr", "--hub", "c3"], "--url given twice"),
        (["--url", URL, "--hub", "c3", "--header", "X: a\r\nEvil: b"], "control characters"),
        (["--url", URL, "--hub", "c3", "--header", "X: a\nb"], "control characters"),
        (["--url", URL, "--hub", "c3", "--header", "X: a\x00"], "control characters"),
        (["--url", URL, "--hub", "c3", "--header", "B/d: v"], "'B/d' is not a header name"),
        (
            ["--url", URL, "--hub", "c3", "--header", "X-Key: 1", "--header", "x-key: 2"],
            "--header 'x-key' given twice",
        ),
        (["--url", URL, "--hub", "c3", "--cookie", "a=b\r\nc"], "control characters"),
        (["--url", URL, "--hub", "c3", "--cookie", "a=1", "--cookie", "a=2"], "given twice"),
        (["--url", URL, "--hub", "c3", "--query", "k=1", "--query", "k=2"], "given twice"),
        (["--url", URL, "--subscribe", "c3.Sub:[NaN]"], "JSON-ARGS is not JSON"),
        (["--url", URL, "--subscribe", 'c3.Sub:[{"a": Infinity}]'], "JSON-ARGS is not JSON"),
        (["--url", URL, "--subscribe", "c3.Sub:[-Infinity]"], "JSON-ARGS is not JSON"),
        (
            ["--url", URL, "--hub", "c3", "--transport", "sse"],
            "--transport 'sse': unknown transport "
            "(known: webSockets, serverSentEvents, longPolling)",
        ),
        (["--url", URL, "--hub", "c3", "--transport", ""], "--transport '': unknown transport"),
        (
            ["--url", URL, "--hub", "c3", "--transport", "webSockets", "--transport", "WebSockets"],
            "--transport webSockets given twice",
        ),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    """Each bad option gives a UsageError that names the problem."""
    with pytest.raises(usage.UsageError) as info:
        parse(*args)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "clientProtocol", "transport", "connectionToken", "connectionData", "messageId",
        "groupsToken", "tid",
    ],
)  # fmt: skip
def test_reserved_query_names_are_refused(name: str) -> None:
    """--query may not set a parameter the SignalR protocol itself sends."""
    with pytest.raises(usage.UsageError) as info:
        parse("--url", URL, "--hub", "c3", "--query", f"{name}=1")
    assert str(info.value) == (
        f"--query: query parameter {name!r} is reserved by the SignalR protocol"
    )


def test_output_directory_is_refused(tmp_path: Path) -> None:
    """--output naming a directory is a usage error."""
    with pytest.raises(usage.UsageError, match="is a directory"):
        parse("--url", URL, "--hub", "c3", "--output", str(tmp_path))


def test_output_not_writable(tmp_path: Path) -> None:
    """--output naming a file that cannot be opened for appending is a usage error."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(usage.UsageError, match="does not exist"):
        parse("--url", URL, "--hub", "c3", "--output", str(blocker / "x.jsonl"))
    with pytest.raises(usage.UsageError, match="cannot write"):
        parse("--url", URL, "--hub", "c3", "--output", "/proc/version")


def test_help_lists_options() -> None:
    """--help text documents the repeatable options."""
    text = str(tap.Options())
    for option in ("--url", "--hub", "--subscribe", "--on", "--header", "--cookie", "--query",
                   "--output", "--decode", "--stale-after", "--demo", "--demo-port",
                   "--transport"):  # fmt: skip
        assert option in text


# ------------------------------------------------------------------ makeService


def _children(service: IService) -> list[Any]:
    assert isinstance(service, MultiService)
    return list(service)


def test_make_service_builds_a_subscription_service(tmp_path: Path) -> None:
    """makeService gives a MultiService with the output and a configured SubscriptionService."""
    options = parse(
        "--url", URL,
        "--subscribe", 'c3.Subscribe:[["tick"]]',
        "--on", "c3.tick",
        "--header", "Authorization: Bearer x",
        "--output", str(tmp_path / "out.jsonl"),
        "--max-attempts", "4",
    )  # fmt: skip
    root = tap.makeService(options, reactor=Clock())
    [_output, service] = _children(root)
    assert isinstance(service, SubscriptionService)
    assert service.settings.url == URL
    assert dict(service.settings.headers) == {"Authorization": "Bearer x"}
    assert [(s.hub, s.method, s.args) for s in service.subscriptions] == [
        ("c3", "Subscribe", (["tick"],))
    ]
    assert [(h.hub, h.method) for h in service.handlers] == [("c3", "tick")]
    assert service.max_attempts == 4
    assert service.settings.transports == ALL_TRANSPORTS


def test_make_service_connects_with_the_transports_asked_for() -> None:
    """The connection the service builds (its default factory: the settings) gets the
    --transport order."""
    options = parse(
        "--url", URL, "--hub", "c3",
        "--transport", "longPolling", "--transport", "serverSentEvents",
    )  # fmt: skip
    [_, service] = _children(tap.makeService(options, reactor=MemoryReactorClock()))
    service.startService()
    connection = service.connection
    assert isinstance(connection, HubConnection)
    assert connection.transports == (Transport.long_polling, Transport.server_sent_events)
    service.stopService()


def test_make_service_default_handlers_catch_everything() -> None:
    """Without --on, every hub gets one catch-all handler."""
    options = parse("--url", URL, "--hub", "news", "--subscribe", "c3.Subscribe")
    [_, service] = _children(tap.makeService(options, reactor=Clock()))
    assert [(h.hub, h.method) for h in service.handlers] == [("news", None), ("c3", None)]


def test_make_service_default_handlers_one_per_hub_ignoring_case() -> None:
    """A hub named twice, in two spellings, still gets a single catch-all handler."""
    options = parse(
        "--url", URL, "--hub", "C3", "--hub", "news",
        "--subscribe", "c3.Subscribe", "--subscribe", "NEWS.Follow", "--subscribe", "c3.Other",
    )  # fmt: skip
    [_, service] = _children(tap.makeService(options, reactor=Clock()))
    assert [(h.hub, h.method) for h in service.handlers] == [("C3", None), ("news", None)]


def test_make_service_demo() -> None:
    """--demo puts the demo server service in the tree (the subscription service comes later)."""
    options = parse("--demo")
    [_, demo] = _children(tap.makeService(options, reactor=Clock()))
    assert isinstance(demo, MultiService)
    assert list(demo) == []


class BusyReactor(MemoryReactorClock):
    """A reactor on which every port is taken."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


def test_demo_binds_in_privileged_start_service() -> None:
    """The demo server binds in privilegedStartService (as twistd calls it, before
    startService); startService then adds the subscription service, binding nothing more."""
    reactor = MemoryReactorClock()
    made: list[str] = []

    def make(url: str) -> IService:
        made.append(url)
        return Service()

    demo = tap.DemoService(reactor, 8089, make)
    demo.privilegedStartService()
    assert [(port, interface) for port, _f, _b, interface in reactor.tcpServers] == [
        (8089, "127.0.0.1")
    ]
    assert made == []
    demo.startService()
    assert len(reactor.tcpServers) == 1
    assert len(made) == 1 and len(list(demo)) == 1
    demo.stopService()


@pytest.mark.parametrize("method", ["privilegedStartService", "startService"])
def test_demo_port_in_use_fails_the_start(method: str) -> None:
    """A demo port that cannot be bound raises DemoServerError from the start (so twistd
    exits non-zero) instead of running on without a server; nothing else starts."""
    made: list[str] = []
    demo = tap.DemoService(BusyReactor(), 8089, lambda url: made.append(url) or Service())
    with capturedLogs() as events, pytest.raises(tap.DemoServerError) as info:
        getattr(demo, method)()
    assert str(info.value) == (
        "the --demo server could not listen on 127.0.0.1:8089: [Errno 98] Address already in use"
    )
    assert made == []
    assert any(e["log_level"].name == "critical" for e in events)


# ------------------------------------------------------------------ JSON lines


class RecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[int] = []

    def flush(self) -> None:
        self.flushes.append(len(self.getvalue().splitlines()))
        super().flush()


def test_json_lines_writer() -> None:
    """Each call becomes one flushed JSON line with time, hub, method and args."""
    clock = Clock()
    clock.advance(1700000000.5)
    stream = RecordingStream()
    writer = tap.JSONLinesWriter(clock, stream)
    writer(ClientCall("c3", "tick", ({"Seq": 1},)))
    writer(ClientCall("c3", "heartbeat", ()))
    lines = stream.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"time": 1700000000.5, "hub": "c3", "method": "tick", "args": [{"Seq": 1}]},
        {"time": 1700000000.5, "hub": "c3", "method": "heartbeat", "args": []},
    ]
    assert stream.flushes == [1, 2]


def test_json_lines_writer_decodes() -> None:
    """With deflate-base64 decoding, string arguments are decoded; others pass through."""
    stream = io.StringIO()
    writer = tap.JSONLinesWriter(Clock(), stream, tap._DECODERS["deflate-base64"])
    payload = encode_deflate_base64({"sequence": 7, "deltas": []})
    with capturedLogs() as events:
        writer(ClientCall("c3", "marketSummaries", (payload, 5, "not base64!")))
    record = json.loads(stream.getvalue())
    assert record["args"] == [{"sequence": 7, "deltas": []}, 5, "not base64!"]
    assert "could not decode an argument of c3.marketSummaries" in formatEvent(events[0])


def strict_json(line: str) -> Any:
    """Parse ``line`` as strict JSON: no NaN or Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_json_lines_writer_replaces_nan_and_infinity() -> None:
    """NaN and the infinities (not JSON) are written as strings, with one warning."""
    stream = io.StringIO()
    writer = tap.JSONLinesWriter(Clock(), stream)
    with capturedLogs() as events:
        writer(ClientCall("c3", "tick", ({"Bid": float("nan"), "Ask": [float("inf"), 1.5]},)))
        writer(ClientCall("c3", "tick", (float("-inf"), "ok")))
    records = [strict_json(line) for line in stream.getvalue().splitlines()]
    assert [r["args"] for r in records] == [[{"Bid": "nan", "Ask": ["inf", 1.5]}], ["-inf", "ok"]]
    assert [formatEvent(e) for e in events] == [
        "a call of c3.tick has values JSON cannot represent (NaN, Infinity or non-JSON "
        "objects); they are written as strings (logged once)"
    ]


def test_json_lines_writer_writes_ascii(tmp_path: Path) -> None:
    """Lines are ASCII with \\u escapes, so even a lone surrogate from a server can be
    written to a UTF-8 file and read back exactly."""
    path = tmp_path / "out.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        writer = tap.JSONLinesWriter(Clock(), stream)
        writer(ClientCall("c3", "tick", ("é €", "\ud800")))
    text = path.read_bytes()
    assert text.isascii()
    assert strict_json(text.decode("ascii"))["args"] == ["é €", "\ud800"]


class FailingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def write(self, text: str) -> int:
        if self.failing:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_json_lines_writer_logs_write_errors() -> None:
    """A failing write is logged (once, naming the call) and never raised; when writing
    works again that is logged with the number of lines lost."""
    stream = FailingStream()
    writer = tap.JSONLinesWriter(Clock(), stream)
    with capturedLogs() as events:
        writer(ClientCall("c3", "tick", (1,)))
        writer(ClientCall("c3", "heartbeat", (2,)))
        stream.failing = False
        writer(ClientCall("c3", "tick", (3,)))
    assert [formatEvent(e) for e in events] == [
        "could not write a call of c3.tick: [Errno 28] No space left on device; calls are "
        "lost until writing works again",
        "writing calls again; 2 were lost",
    ]
    assert [json.loads(line)["args"] for line in stream.getvalue().splitlines()] == [[3]]


def test_json_lines_writer_survives_a_closed_stream() -> None:
    """Writing to a stream closed under it is logged, not raised."""
    stream = io.StringIO()
    writer = tap.JSONLinesWriter(Clock(), stream)
    stream.close()
    with capturedLogs() as events:
        writer(ClientCall("c3", "tick", (1,)))
    assert "could not write a call of c3.tick" in formatEvent(events[0])


def test_output_service_appends_to_a_file(tmp_path: Path) -> None:
    """The output service opens the file on start, appends, and closes it on stop."""
    path = tmp_path / "calls.jsonl"
    path.write_text('{"old": true}\n')
    output = tap._JSONLinesOutput(Clock(), str(path), io.StringIO(), None)
    output(ClientCall("c3", "tick", (0,)))  # before start: dropped
    output.startService()
    output(ClientCall("c3", "tick", (1,)))
    output.stopService()
    output(ClientCall("c3", "tick", (2,)))  # after stop: dropped
    lines = path.read_text().splitlines()
    assert lines[0] == '{"old": true}'
    assert [json.loads(line)["args"] for line in lines[1:]] == [[1]]


def test_output_service_stdout_is_not_closed() -> None:
    """With --output -, calls go to the captured stdout, which stays open after stop."""
    stdout = io.StringIO()
    output = tap._JSONLinesOutput(Clock(), "-", stdout, None)
    output.startService()
    output(ClientCall("c3", "tick", (1,)))
    output.stopService()
    assert not stdout.closed
    assert json.loads(stdout.getvalue())["args"] == [1]


# ------------------------------------------------------------------ against the test server


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _wait_for_lines(path: Path, predicate: Any, seconds: float = 15.0) -> list[Any]:
    from twisted.internet.task import deferLater

    reactor = _reactor()
    deadline = reactor.seconds() + seconds
    while True:
        text = path.read_text() if path.exists() else ""
        records = [json.loads(line) for line in text.splitlines()]
        if predicate(records):
            return records
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for JSON lines in {path}: {text[-500:]!r}")
        await deferLater(reactor, 0.05, lambda: None)


async def _stop(service: IService) -> None:
    d = service.stopService()
    if d is not None:
        d.addTimeout(15, _reactor())
        await d


@pytest_twisted.ensureDeferred
async def test_json_lines_from_a_live_server(tmp_path: Path) -> None:
    """makeService against the test server writes decoded JSON lines for the --on calls."""
    from txsignalr.testing import C3Hub, SignalRServer

    server = SignalRServer(_reactor(), hubs=[C3Hub(interval=0.05)])
    await server.listen(port=0, interface="127.0.0.1")
    out = tmp_path / "calls.jsonl"
    options = parse(
        "--url", server.url,
        "--subscribe", 'c3.Subscribe:[["market_summaries", "tick", "heartbeat"]]',
        "--on", "c3.marketSummaries",
        "--on", "c3.tick",
        "--on", "C3.Tick",  # the same calls: must not be written twice
        "--decode", "deflate-base64",
        "--output", str(out),
    )  # fmt: skip
    root = tap.makeService(options)
    root.startService()
    try:
        records = await _wait_for_lines(
            out,
            lambda rs: (
                "marketSummaries" in {r["method"] for r in rs}
                and sum(r["method"] == "tick" for r in rs) >= 3
            ),
        )
    finally:
        await _stop(root)
        await server.stop()
    assert {r["method"] for r in records} <= {"marketSummaries", "tick"}  # only the --on calls
    ticks = [r["args"][0]["Seq"] for r in records if r["method"] == "tick"]
    assert ticks == sorted(set(ticks))  # strictly increasing: none written twice
    summary = next(r for r in records if r["method"] == "marketSummaries")
    assert summary["hub"] == "c3"
    assert isinstance(summary["args"][0]["sequence"], int)  # decoded, not base64 text
    assert isinstance(summary["time"], float)


@pytest_twisted.ensureDeferred
async def test_demo_service_in_process(tmp_path: Path) -> None:
    """--demo starts the embedded server, subscribes, writes every call; stop cleans up."""
    reactor = _reactor()
    baseline = set(reactor.getDelayedCalls())
    out = tmp_path / "demo.jsonl"
    # --hub C3 names the demo's c3 hub again, in another spelling: still one handler.
    root = tap.makeService(parse("--demo", "--hub", "C3", "--output", str(out)))
    root.startService()
    try:
        records = await _wait_for_lines(
            out,
            lambda rs: (
                {r["method"] for r in rs} >= {"heartbeat", "tick", "marketSummaries"}
                and sum(r["method"] == "tick" for r in rs) >= 3
            ),
        )
    finally:
        await _stop(root)
    ticks = [r["args"][0]["Seq"] for r in records if r["method"] == "tick"]
    assert ticks == sorted(set(ticks))  # strictly increasing: none written twice
    leftover = [c for c in reactor.getDelayedCalls() if c not in baseline and c.active()]
    assert leftover == []


# ------------------------------------------------------------------ ASP.NET Core

CORE_URL = "https://example.com/hubs/c3"


def test_core_subscribe_and_on_without_a_hub() -> None:
    """--protocol core: METHOD alone for --subscribe and --on; a HUB. part naming the
    URL's hub (any case) is accepted and dropped; the same --on twice is written once."""
    options = parse(
        "--url", CORE_URL, "--protocol", "core",
        "--subscribe", 'Subscribe:[["tick"]]', "--subscribe", "C3.Authenticate",
        "--on", "tick", "--on", "c3.Tick", "--on", "heartbeat", "--hub", "C3",
        "--stale-after", "5",
    )  # fmt: skip
    assert options["protocol"] == "core"
    assert parse("--url", CORE_URL, "--protocol", "CORE")["protocol"] == "core"  # any case
    assert options["subscriptions"] == [
        (None, "Subscribe", (["tick"],)),
        (None, "Authenticate", ()),
    ]
    assert options["on"] == [(None, "tick"), (None, "heartbeat")]
    assert options["hubs"] == []
    assert [(s.hub, s.method, s.watch) for s in options.subscriptions()] == [
        (None, "Subscribe", ("tick", "heartbeat")),
        (None, "Authenticate", ("tick", "heartbeat")),
    ]
    settings = options.settings(CORE_URL)
    assert settings.protocol == "core"
    assert settings.connection_arguments()["protocol"] == "core"
    [_, service] = _children(tap.makeService(options, reactor=Clock()))
    assert [(h.hub, h.method) for h in service.handlers] == [(None, "tick"), (None, "heartbeat")]


def test_core_without_on_writes_every_call_and_needs_nothing_else() -> None:
    """--protocol core with the URL alone is something to do: write every call."""
    options = parse("--url", CORE_URL, "--protocol", "core")
    [_, service] = _children(tap.makeService(options, reactor=Clock()))
    assert [(h.hub, h.method) for h in service.handlers] == [(None, None)]
    assert service.subscriptions == ()


def test_auto_with_hubless_options_lets_the_server_decide() -> None:
    """--protocol auto (the default) with no hub named anywhere: METHOD forms are taken
    as they are, and one catch-all handler writes the URL's hub's calls."""
    options = parse("--url", CORE_URL, "--subscribe", "Subscribe")
    assert options["protocol"] == "auto"
    assert options["subscriptions"] == [(None, "Subscribe", ())]
    [_, service] = _children(tap.makeService(options, reactor=Clock()))
    assert [(h.hub, h.method) for h in service.handlers] == [(None, None)]


def test_access_token_env_is_read_not_stored(monkeypatch: Any) -> None:
    """--access-token-env keeps the variable's name; the token is read from it."""
    monkeypatch.setenv("TXS_TOKEN", "the-token")
    options = parse("--url", CORE_URL, "--protocol", "core", "--access-token-env", "TXS_TOKEN")
    assert options["access_token_env"] == "TXS_TOKEN"
    assert "the-token" not in repr(dict(options))
    settings = options.settings(CORE_URL)
    assert settings.access_token_env == "TXS_TOKEN"
    assert settings.connection_arguments()["access_token_factory"]() == "the-token"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "signalr"], "--protocol 'signalr': expected one of auto, classic, core"),
        (["--protocol", "", "--hub", "c3"], "--protocol '': expected one of"),
        (["--protocol", "core", "--protocol", "classic"], "--protocol given twice"),
        (["--protocol", "core", "--subscribe", "chat.Send"], "--subscribe 'chat.Send': on ASP"),
        (["--protocol", "core", "--on", "chat.tick"], "the hub is the one the --url ('c3',"),
        (["--protocol", "core", "--hub", "chat"], "--hub 'chat': on ASP.NET Core"),
        (["--subscribe", "a.b.C"], "expected HUB.METHOD, or METHOD on an ASP.NET Core URL"),
        (
            ["--subscribe", "Sub", "--on", "c3.tick"],
            "'Sub' names no hub, but with --protocol auto a hub named elsewhere",
        ),
        (["--subscribe", "Sub", "--hub", "c3"], "means classic ASP.NET SignalR, which needs"),
        (["--access-token-env", "eyJhbGciOiJIUzI1NiJ9.e30.x"], "not the token itself"),
        (
            ["--protocol", "core", "--access-token-env", "TXS_UNSET_VAR"],
            "TXS_UNSET_VAR, which should hold the access",
        ),
        (
            # a token of variable-name characters, given by mistake: never repeated
            ["--protocol", "core", "--access-token-env", "sk_live_4eC39HqLyjWDarjt"],
            "environment variable named by --access-token-env, which should hold",
        ),
        (
            ["--protocol", "core", "--access-token-env", "TXS_EMPTY_VAR"],
            "TXS_EMPTY_VAR, which should hold the access token, is empty",
        ),
        (
            [
                "--protocol",
                "core",
                "--access-token-env",
                "TXS_TOKEN",
                "--header",
                "authorization: Basic x",
            ],
            "--access-token-env and --header 'Authorization: ...' cannot be combined",
        ),
        (
            ["--access-token-env", "TXS_TOKEN", "--access-token-env", "TXS_TOKEN"],
            "--access-token-env given twice",
        ),
    ],
)
def test_bad_core_options(args: list[str], message: str, monkeypatch: Any) -> None:
    """Each bad --protocol / hub / --access-token-env combination is a usage error;
    a token given in place of the variable's name is not repeated."""
    monkeypatch.delenv("TXS_UNSET_VAR", raising=False)
    monkeypatch.setenv("TXS_EMPTY_VAR", "")
    monkeypatch.setenv("TXS_TOKEN", "t0ken")
    with pytest.raises(usage.UsageError) as info:
        parse("--url", CORE_URL, *args)
    assert message in str(info.value)
    assert "eyJ" not in str(info.value)
    assert "sk_live" not in str(info.value)


def test_demo_over_core_subscribes_without_a_hub() -> None:
    """--demo --protocol core: the same default feed, addressed to the Core URL's hub."""
    options = parse("--demo", "--protocol", "core", "--hub", "C3")
    assert [(s.hub, s.method, s.args) for s in options.subscriptions()] == [
        (None, "Subscribe", (["market_summaries", "tick", "heartbeat"],))
    ]
    with pytest.raises(usage.UsageError, match="the --demo server's Core URL \\('c3'\\)"):
        parse("--demo", "--protocol", "core", "--subscribe", "chat.Send")
    with pytest.raises(usage.UsageError, match="with --protocol auto --demo means classic"):
        parse("--demo", "--subscribe", "Subscribe")  # plain --demo is classic


def test_demo_core_hands_the_core_url() -> None:
    """DemoService(core=True) gives its child the c3 hub's Core URL."""
    reactor = MemoryReactorClock()
    made: list[str] = []
    demo = tap.DemoService(reactor, 0, lambda url: made.append(url) or Service(), core=True)
    demo.startService()
    assert len(made) == 1 and made[0].endswith("/hubs/c3")
    demo.stopService()


@pytest_twisted.ensureDeferred
async def test_core_json_lines_from_a_live_server(tmp_path: Path, monkeypatch: Any) -> None:
    """makeService on a Core URL needing a bearer token: --subscribe without a hub, the
    token from --access-token-env; the JSON lines say hub "c3"; after
    drop_all_transports the feed resumes; the token is in no log line or output."""
    from txsignalr.testing import C3Hub, SignalRServer

    server = SignalRServer(_reactor(), hubs=[C3Hub(interval=0.05)])
    server.core_access_token = "live-secret-token"
    await server.listen(port=0, interface="127.0.0.1")
    monkeypatch.setenv("TXS_LIVE_TOKEN", "live-secret-token")
    out = tmp_path / "calls.jsonl"
    options = parse(
        "--url", server.core_url("c3"), "--protocol", "core",
        "--subscribe", 'Subscribe:[["tick"]]', "--on", "tick",
        "--access-token-env", "TXS_LIVE_TOKEN", "--output", str(out),
    )  # fmt: skip
    root = tap.makeService(options)
    with capturedLogs() as events:
        root.startService()
        try:
            records = await _wait_for_lines(out, lambda rs: len(rs) >= 3)
            server.drop_all_transports()
            seen = len(records)
            records = await _wait_for_lines(out, lambda rs: len(rs) >= seen + 3)
        finally:
            await _stop(root)
            await server.stop()
    assert {(r["hub"], r["method"]) for r in records} == {("c3", "tick")}
    ticks = [r["args"][0]["Seq"] for r in records]
    assert ticks == sorted(set(ticks))
    text = "\n".join(formatEvent(e) or "" for e in events) + repr(events) + out.read_text()
    assert "resubscribed 1 subscriptions" in text
    assert "live-secret-token" not in text
    assert server.events("unauthorized") == []


@pytest_twisted.ensureDeferred
async def test_demo_service_over_core_in_process(tmp_path: Path, monkeypatch: Any) -> None:
    """--demo --protocol core --access-token-env: the demo server's Core side requires
    the variable's token; every feed arrives, as "hub": "c3"."""
    monkeypatch.setenv("TXS_DEMO_TOKEN", "demo-secret-token")
    out = tmp_path / "demo.jsonl"
    root = tap.makeService(
        parse("--demo", "--protocol", "core", "--access-token-env", "TXS_DEMO_TOKEN",
              "--output", str(out))
    )  # fmt: skip
    root.startService()
    try:
        records = await _wait_for_lines(
            out,
            lambda rs: (
                {r["method"] for r in rs} >= {"heartbeat", "tick", "marketSummaries"}
                and sum(r["method"] == "tick" for r in rs) >= 3
            ),
        )
    finally:
        await _stop(root)
    assert {r["hub"] for r in records} == {"c3"}
    summary = next(r for r in records if r["method"] == "marketSummaries")
    assert isinstance(summary["args"][0]["sequence"], int)  # deflate-base64 decoded
    assert "demo-secret-token" not in out.read_text()


def test_hub_protocol_and_stateful_reconnect_options() -> None:
    """--hub-protocol and --stateful-reconnect reach HubConnection; both are Core's."""
    core = "http://127.0.0.1:5000/hubs/c3"
    options = parse("--url", core, "--protocol", "core", "--hub-protocol", "MessagePack")
    settings = options.settings(core)
    assert settings.hub_protocol == "messagepack" and settings.stateful_reconnect is False
    assert settings.connection_arguments()["hub_protocol"] == "messagepack"
    options = parse("--url", core, "--protocol", "core", "--stateful-reconnect")
    assert options.settings(core).connection_arguments()["stateful_reconnect"] is True
    # auto with nothing naming a hub: the server decides, so it is allowed
    assert parse("--url", core, "--on", "tick", "--stateful-reconnect")["stateful_reconnect"]
    with pytest.raises(usage.UsageError, match="expected one of json, messagepack"):
        parse("--url", core, "--protocol", "core", "--hub-protocol", "protobuf")
    for args in (
        ("--url", URL, "--hub", "c3", "--hub-protocol", "messagepack"),
        ("--url", URL, "--protocol", "classic", "--hub", "c3", "--stateful-reconnect"),
        ("--demo", "--stateful-reconnect"),
    ):
        with pytest.raises(usage.UsageError, match=r"is for ASP\.NET Core"):
            parse(*args)
    with pytest.raises(ValueError, match="hub_protocol must be one of"):
        ConnectionSettings(core, hub_protocol="xml")

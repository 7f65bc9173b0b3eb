"""
Secrets never leak: one scenario set per family and transport — start, invoke, a
hub error, a client call, a dropped transport and its reconnect, a refused
reconnect, an HTTP error and stop — runs with every log observer capturing
(twisted.logger, the standard library's logging, Deferreds' unhandled errors), and
everything a user could print (the log, ``repr()`` of the connection and of its
negotiate answer, the text of every error and every ``on_error`` / ``on_closed``
reason) is scanned for every secret the scenario used: header, cookie and query
values, the access token, and the connection token the server handed out, each also
URL-quoted.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from helpers import wait_until, within
from twisted.internet import reactor as _reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from txsignalr import ConnectionState, HubConnection, HubError, NegotiationError
from txsignalr.testing import C3Hub, EchoHub, SignalRServer

reactor: Any = _reactor

SECRETS = {
    "header": "hdr-secret-7f3a9c",
    "cookie": "cookie-secret-51be02",
    "query": "query-secret-c0ffee",
    "url_query": "urlq-secret-d15ea5e",
    "token": "bearer-secret-9b1d",
}
TRANSPORTS = ["webSockets", "serverSentEvents", "longPolling"]


class Capture:
    """Everything every log observer saw, as text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def twisted(self, event: dict[str, Any]) -> None:
        self.texts.append(formatEvent(event))
        self.texts.append(repr(event))
        failure = event.get("log_failure")
        if failure is not None:
            self.texts.append(failure.getTraceback())

    def stdlib(self) -> logging.Handler:
        capture = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                capture.texts.append(self.format(record))

        return Handler(level=logging.DEBUG)

    def text(self) -> str:
        return "\n".join(self.texts)


@pytest.fixture
def capture() -> Iterator[Capture]:
    cap = Capture()
    handler = cap.stdlib()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    globalLogPublisher.addObserver(cap.twisted)
    try:
        yield cap
    finally:
        gc.collect()  # unhandled errors in Deferreds are logged when collected
        globalLogPublisher.removeObserver(cap.twisted)
        root.removeHandler(handler)
        root.setLevel(old_level)


def leaks(text: str, secrets: list[str]) -> list[str]:
    found = []
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            if form and form in text:
                found.append(secret)
    return found


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("family", ["classic", "core"])
@pytest_twisted.ensureDeferred
async def test_no_secret_in_logs_reprs_or_errors(
    capture: Capture, family: str, transport: str
) -> None:
    server = SignalRServer(reactor, hubs=[C3Hub(interval=0.05), EchoHub(tick_interval=0.05)])
    await server.listen(port=0, interface="127.0.0.1")
    base = server.url if family == "classic" else server.core_url("echo")
    url = f"{base}?apikey={SECRETS['url_query']}"
    kwargs: dict[str, Any] = {}
    if family == "core":
        kwargs["access_token_factory"] = lambda: SECRETS["token"]
    conn = HubConnection(
        reactor,
        url,
        headers={"X-Api-Key": SECRETS["header"]},
        cookies={"session": SECRETS["cookie"]},
        query={"sig": SECRETS["query"]},
        transports=[transport],
        protocol=family,
        reconnect_delay=[0, 0.05, 0.05, 0.05],
        **kwargs,
    )
    texts: list[str] = []
    conn.on_error(lambda e: texts.append(f"{e!s} {e!r}"))
    conn.on_closed(lambda r: texts.append(f"{r!s} {r!r}"))
    hub: Any = conn.hub("c3") if family == "classic" else conn
    calls: list[Any] = []
    hub.on("tick", lambda *a: calls.append(a))
    connection_tokens: list[str] = []
    states: list[ConnectionState] = []
    conn.on_state_change(lambda old, new: states.append(new))
    try:
        await within(conn.start())
        assert conn.negotiated is not None
        connection_tokens.append(conn.negotiated.connection_token)
        texts += [repr(conn), repr(conn.negotiated), str(conn.negotiated)]
        if family == "classic":
            await within(hub.invoke("Subscribe", ["tick"]))
        assert await within(hub.invoke("Echo", "hello")) == "hello"
        with pytest.raises(HubError) as info:
            await within(hub.invoke("Fail"))
        texts.append(f"{info.value!s} {info.value!r}")
        await wait_until(lambda: len(calls) >= 2, "client calls")

        # a dropped transport and its reconnect
        server.drop_all_transports()
        await wait_until(
            lambda: (
                ConnectionState.reconnecting in states and conn.state is ConnectionState.connected
            ),
            "a reconnect",
        )
        assert conn.negotiated is not None
        connection_tokens.append(conn.negotiated.connection_token)
        texts.append(repr(conn))

        # a refused reconnect, with the server's error body echoing the request
        server.refuse_transport(
            transport, 500, body=f"refused {connection_tokens[-1]} {SECRETS['header']}".encode()
        )
        server.refuse_negotiate(401, body=f"denied {SECRETS['token']} {SECRETS['cookie']}".encode())
        server.drop_all_transports()
        closed = conn.when_closed()
        try:
            await within(closed, seconds=60)
        except Exception as e:  # the connection ends for good: keep what it says
            texts.append(f"{e!s} {e!r}")
            cause = getattr(e, "cause", None)
            texts.append(f"{cause!s} {cause!r}")
        texts.append(repr(conn))
    finally:
        await within(conn.stop())
        await server.stop()

    secrets = [*SECRETS.values(), *connection_tokens]
    assert all(len(t) > 8 for t in connection_tokens), connection_tokens
    logged = capture.text()
    assert "reconnect attempt failed" in logged  # the observers saw the library's log
    assert leaks(logged, secrets) == [], [line for line in capture.texts if leaks(line, secrets)][
        :5
    ]
    shown = "\n".join(texts)
    assert leaks(shown, secrets) == [], [t for t in texts if leaks(t, secrets)][:5]


def test_error_bodies_lose_the_requests_secrets() -> None:
    """HttpSession.redact: header, bearer, cookie and query values (also URL-quoted)
    become <redacted>; SignalR's own public query values and short values stay."""
    from http.cookiejar import CookieJar

    from twisted.internet.task import Clock

    from txsignalr._http import HttpSession

    jar = CookieJar()
    http = HttpSession(Clock(), {"X-Key": "k3y-value", "X-Short": "ab"}, jar, None, None, 5.0)
    http.set_bearer("tok/en+1")
    url = "http://h/signalr/send?transport=longPolling&connectionToken=ct%2Fsecret&tid=7"
    body = (
        b"headers: X-Key=k3y-value Authorization=Bearer tok/en+1 (tok%2Fen%2B1) ab; "
        b"query: connectionToken=ct/secret ct%2Fsecret transport=longPolling"
    )
    assert http.redact(body, url) == (
        b"headers: X-Key=<redacted> Authorization=<redacted> (<redacted>) ab; "
        b"query: connectionToken=<redacted> <redacted> transport=longPolling"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("family", ["classic", "core"])
@pytest_twisted.ensureDeferred
async def test_no_secret_in_the_services_log_or_output(
    capture: Capture, tmp_path: Any, monkeypatch: Any, family: str, transport: str
) -> None:
    """twistd signalr with --header, --cookie, --query, a secret in the --url and (Core)
    --access-token-env: subscribe, a dropped transport and its resubscription, a
    refused reconnect; neither the log nor the JSON lines hold a secret."""
    import json

    from txsignalr import tap

    server = SignalRServer(reactor, hubs=[C3Hub(interval=0.05)])
    await server.listen(port=0, interface="127.0.0.1")
    base = server.url if family == "classic" else server.core_url("c3")
    out = tmp_path / "calls.jsonl"
    args = [
        *("--url", f"{base}?apikey={SECRETS['url_query']}", "--protocol", family),
        *("--header", f"X-Api-Key: {SECRETS['header']}"),
        *("--cookie", f"session={SECRETS['cookie']}", "--query", f"sig={SECRETS['query']}"),
        *("--transport", transport, "--output", str(out)),
    ]
    hub = "c3." if family == "classic" else ""
    args += ["--subscribe", f'{hub}Subscribe:[["tick"]]', "--on", f"{hub}tick"]
    if family == "core":
        server.core_access_token = SECRETS["token"]
        monkeypatch.setenv("TXS_SECRET_TOKEN", SECRETS["token"])
        args += ["--access-token-env", "TXS_SECRET_TOKEN"]
    options = tap.Options()
    options.parseOptions(args)
    root = tap.makeService(options)

    def lines() -> list[Any]:
        text = out.read_text() if out.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    root.startService()
    try:
        await wait_until(lambda: len(lines()) >= 2, "calls written")
        server.drop_all_transports()
        seen = len(lines())
        await wait_until(lambda: len(lines()) >= seen + 2, "calls after the drop")
        server.refuse_transport(transport, 500, body=f"no {SECRETS['cookie']}".encode())
        server.refuse_negotiate(500, body=f"no {SECRETS['header']} {SECRETS['token']}".encode())
        server.drop_all_transports()
        await wait_until(lambda: "reconnect" in capture.text(), "a failed reconnect logged")
    finally:
        d = root.stopService()
        if d is not None:
            await within(d)
        await server.stop()
    logged = capture.text() + out.read_text()
    # Core re-subscribes on its new connection; classic resumes the same one
    assert ("resubscribed" if family == "core" else "reconnected to") in logged
    assert leaks(logged, list(SECRETS.values())) == [], [
        line for line in capture.texts if leaks(line, list(SECRETS.values()))
    ][:5]


class _Recorder(Resource):
    """A tiny HTTP server on its own port (so its own origin): answers negotiate with
    ``answer`` (or 401) and records the Authorization header of every request."""

    isLeaf = True

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.answer = answer
        self.seen: list[tuple[str, str | None]] = []

    def render(self, request: Any) -> bytes:
        import json

        auth = request.getHeader(b"authorization")
        self.seen.append((request.path.decode(), auth.decode() if auth else None))
        if self.answer is None:
            request.setResponseCode(401)
            return b"who are you"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.answer).encode()


async def _listen(resource: Resource) -> tuple[Any, str]:
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}"


@pytest.mark.parametrize("with_token", [False, True])
@pytest.mark.parametrize("family", ["classic", "core"])
@pytest_twisted.ensureDeferred
async def test_a_token_goes_only_to_its_own_origin(family: str, with_token: bool) -> None:
    """A negotiate redirect to another origin: the factory's token (Core) or the
    user's Authorization header (classic) stays behind; the new origin gets only the
    redirect's own token, when it gave one."""
    target = _Recorder()
    target_port, target_url = await _listen(target)
    token = {"accessToken": "redirect-own-token"} if with_token else {}
    if family == "core":
        front = _Recorder({"url": f"{target_url}/client/?hub=echo", **token})
    else:
        classic = {"AccessToken": token["accessToken"]} if with_token else {}
        front = _Recorder({"ProtocolVersion": "2.0", "RedirectUrl": f"{target_url}/signalr"})
        front.answer.update(classic)  # type: ignore[union-attr]
    front_port, front_url = await _listen(front)
    own = "Bearer front-origin-token"
    kwargs: dict[str, Any] = (
        {"access_token_factory": lambda: own.split()[1]}
        if family == "core"
        else {"headers": {"Authorization": own}}
    )
    url = f"{front_url}/hubs/echo" if family == "core" else f"{front_url}/signalr"
    conn = HubConnection(reactor, url, protocol=family, reconnect_delay=None, **kwargs)
    if family == "classic":
        conn.hub("c3")
    try:
        with pytest.raises(NegotiationError):
            await within(conn.start())
    finally:
        await within(conn.stop())
        await target_port.stopListening()
        await front_port.stopListening()
    assert front.seen and {auth for _, auth in front.seen} == {own}
    assert target.seen, "the redirect was not followed"
    expected = "Bearer redirect-own-token" if with_token else None
    assert {auth for _, auth in target.seen} == {expected}

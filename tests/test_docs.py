"""
Every code block of the documentation (docs/) runs, and the reference pages match the code.

Each ``.. code-block::`` in docs/ must follow an rst comment ``.. snippet: KIND ...`` that
says how this module checks it:

* ``run classic`` / ``run core HUB`` / ``run``: the block defines ``async def main``;
  it is called as ``main(reactor, url[, server])`` against a fresh demo
  ``SignalRServer`` on 127.0.0.1 (``url`` is its classic URL or ``core_url(HUB)``), or as
  ``main(reactor)`` when the block brings its own server;
* ``exec [NAME]``: the block runs as a module (and is kept as module NAME);
* ``pytest NAME``: the block is a test module beside module NAME; pytest runs it and
  every test in it must pass;
* ``tac``: the block is a ``.tac`` file; its application's service is started against
  the demo server and must subscribe, then stops;
* ``twistd``: every ``twistd`` line parses with twistd's own options and the real
  ``signalr`` plugin;
* ``systemd``: a unit file whose ``ExecStart`` parses the same way, in the foreground.
"""

from __future__ import annotations

import configparser
import inspect
import os
import re
import shlex
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection
from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred

import txsignalr.errors
import txsignalr.service
from txsignalr.testing import C3Hub, ChatHub, EchoHub, SignalRServer

reactor: Any = _reactor
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_BLOCK = re.compile(
    r"^\.\. snippet: (?P<kind>[^\n]+)\n\n\.\. code-block:: (?P<lang>\w+)\n\n"
    r"(?P<body>(?:   [^\n]*\n|\n)+)",
    re.M,
)


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    kind: list[str]
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}:{' '.join(self.kind)}"


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts)


def snippets() -> list[Snippet]:
    found = []
    for page in pages():
        text = page.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("lang")) + 1
            code = textwrap.dedent(m.group("body"))
            rel = str(page.relative_to(DOCS))
            found.append(Snippet(rel, line, m.group("kind").split(), m.group("lang"), code))
    return found


SNIPPETS = snippets()


def by_kind(kind: str) -> list[Snippet]:
    return [s for s in SNIPPETS if s.kind[0] == kind]


def test_every_code_block_is_checked() -> None:
    """No code block (nor literal block) in docs/ escapes this module."""
    for page in pages():
        text = page.read_text()
        blocks = len(re.findall(r"^\.\. code-block::", text, re.M))
        marked = sum(1 for s in SNIPPETS if s.page == str(page.relative_to(DOCS)))
        assert blocks == marked, f"{page}: {blocks - marked} code blocks without a snippet marker"
        literal = [
            line for line in text.splitlines()
            if line.rstrip().endswith("::") and not line.lstrip().startswith("..")
        ]
        assert not literal, f"{page}: literal blocks are not checked: {literal}"
    kinds = {s.kind[0] for s in SNIPPETS}
    assert kinds <= {"run", "exec", "pytest", "tac", "twistd", "systemd"}, kinds
    assert len(by_kind("run")) >= 10


def _module(snippet: Snippet) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_snippet"}
    exec(compile(snippet.code, str(snippet), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("snippet", by_kind("run"), ids=str)
@pytest_twisted.ensureDeferred
async def test_run_snippet(snippet: Snippet) -> None:
    """The block's main() runs to the end against the demo server."""
    main = _module(snippet)["main"]
    params = list(inspect.signature(main).parameters)
    family = snippet.kind[1:]
    server = None
    if family:
        server = SignalRServer(reactor, hubs=[C3Hub(interval=0.05), ChatHub(), EchoHub()])
        await server.listen(port=0, interface="127.0.0.1")
    try:
        if not family:
            assert params == ["reactor"], snippet
            args: list[Any] = [reactor]
        else:
            assert server is not None
            url = server.url if family == ["classic"] else server.core_url(family[1])
            assert params in (["reactor", "url"], ["reactor", "url", "server"]), snippet
            args = [reactor, url, server][: len(params)]
        d = ensureDeferred(main(*args))
        d.addTimeout(30, reactor)
        await d
    finally:
        if server is not None:
            await server.stop()


@pytest.mark.parametrize("snippet", by_kind("exec"), ids=str)
def test_exec_snippet(snippet: Snippet) -> None:
    """The block runs as a module without raising."""
    namespace = _module(snippet)
    assert len(namespace) > 2


@pytest.mark.parametrize("snippet", by_kind("pytest"), ids=str)
def test_pytest_snippet(snippet: Snippet, tmp_path: Path) -> None:
    """The test module passes under pytest, beside the module it imports."""
    (name,) = snippet.kind[1:]
    (module,) = [s for s in by_kind("exec") if s.kind[1:] == [name]]
    (tmp_path / f"{name}.py").write_text(module.code)
    (tmp_path / f"test_{name}.py").write_text(snippet.code)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = len(re.findall(r"^(?:async )?def test_", snippet.code, re.M))
    assert f"{tests} passed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("snippet", by_kind("tac"), ids=str)
@pytest_twisted.ensureDeferred
async def test_tac_snippet(snippet: Snippet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .tac file's service subscribes to the demo server, and stops cleanly."""
    server = SignalRServer(reactor, hubs=[C3Hub(interval=0.05)])
    await server.listen(port=0, interface="127.0.0.1")
    monkeypatch.setenv("SIGNALR_URL", server.url)
    try:
        namespace = _module(snippet)
        services = list(IServiceCollection(namespace["application"]))
        assert len(services) == 1
        service = services[0]
        assert isinstance(service, txsignalr.service.SubscriptionService)
        service.startService()
        try:
            d = service.when_subscribed()
            d.addTimeout(30, reactor)
            await d
            assert server.events("start")
        finally:
            await service.stopService()
    finally:
        await server.stop()


def _parse_twistd(argv: list[str]) -> Any:
    from twisted.scripts.twistd import ServerOptions

    config = ServerOptions()
    config.parseOptions(argv)
    assert config.subCommand == "signalr", argv
    return config


@pytest.mark.parametrize("snippet", by_kind("twistd"), ids=str)
def test_twistd_snippet(
    snippet: Snippet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every twistd command line of the block parses with the real plugin."""
    monkeypatch.setenv("HUB_TOKEN", "token-for-the-docs-test")
    monkeypatch.chdir(tmp_path)  # relative --output and -l files land here
    lines = [line for line in snippet.code.splitlines() if line.strip()]
    assert lines and all(line.startswith("twistd ") for line in lines), lines
    for line in lines:
        _parse_twistd(shlex.split(line)[1:])


@pytest.mark.parametrize("snippet", by_kind("systemd"), ids=str)
def test_systemd_snippet(
    snippet: Snippet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The unit's ExecStart runs twistd in the foreground with options that parse."""
    monkeypatch.setenv("HUB_TOKEN", "token-for-the-docs-test")
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(snippet.code)
    exec_start = unit["Service"]["ExecStart"]
    # systemd creates /var/lib/<StateDirectory> before it starts the service
    state = unit["Service"].get("StateDirectory")
    if state:
        (tmp_path / state).mkdir()
        exec_start = exec_start.replace(f"/var/lib/{state}", str(tmp_path / state))
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/twistd")
    config = _parse_twistd(argv[1:])
    assert config["nodaemon"]
    assert "multi-user.target" in unit["Install"]["WantedBy"]


def test_error_reference_matches_the_code() -> None:
    """reference/errors.rst lists every error, each with its real base classes."""
    text = (DOCS / "reference" / "errors.rst").read_text()
    rows = re.findall(r"^   \* - :class:`~txsignalr\.([\w.]+)`\n     - ([^\n]+)", text, re.M)
    documented = {name.rpartition(".")[2]: bases for name, bases in rows}
    public = {
        name: getattr(txsignalr.errors, name) for name in txsignalr.errors.__all__
    } | {
        name: getattr(txsignalr.service, name)
        for name in ("GaveUpError", "SubscriptionError", "MissingAccessToken")
    }
    assert set(documented) == set(public)
    for name, cls in public.items():
        bases = [
            "SignalRError" if b.__name__ == "_HTTPAnswerError" else b.__name__
            for b in cls.__bases__
        ]
        stated = documented[name].split(" (")[0]
        assert stated == ", ".join(bases), name


def test_twistd_reference_lists_every_option() -> None:
    """The twistd page is generated from the real Options, and lists all of them."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import twistdhelp
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    from txsignalr.tap import Options

    listed = {row[1] for row in twistdhelp.options_table()}
    every = {name.rstrip("=") for name in Options().longOpt} - {"help", "version"}
    assert listed == every
    assert {"url", "subscribe", "proxy", "ca", "stateful-reconnect"} <= listed


def test_local_inventories_link_twisted_names(tmp_path: Path) -> None:
    """The generated inventories carry the Twisted, treq and autobahn names txsignalr uses."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import localinv
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    written = localinv.write_inventories(ROOT / "txsignalr", tmp_path)
    header, _, packed = written["twisted"].read_bytes().partition(b"compressed using zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2\n")
    entries = {}
    for line in zlib.decompress(packed).decode().splitlines():
        name, role, _priority, uri, _shown = line.split(" ")
        entries[name, role] = uri
    base = "api/twisted.internet.defer.Deferred.html"
    assert entries["twisted.internet.defer.Deferred", "py:class"] == base
    assert ("twisted.internet.interfaces.IReactorTime", "py:class") in entries
    assert entries["twisted.internet.defer.Deferred.addCallback", "py:method"] == (
        "api/twisted.internet.defer.Deferred.html#addCallback"
    )
    for project in ("treq", "autobahn"):
        assert written[project].stat().st_size > 100


@pytest.mark.parametrize(
    ("module", "page"),
    [
        ("txsignalr", "api.rst"),
        ("txsignalr.testing", "testing.rst"),
        ("txsignalr.service", "service.rst"),
    ],
)
def test_every_public_name_is_in_the_api_reference(module: str, page: str) -> None:
    """Each name of the module's __all__ has an autodoc entry on its reference page."""
    import importlib

    names = set(importlib.import_module(module).__all__) - {"__version__"}
    text = (DOCS / "reference" / page).read_text()
    documented = set(re.findall(rf"^\.\. auto\w+:: {re.escape(module)}\.(\w+)", text, re.M))
    assert names <= documented, sorted(names - documented)

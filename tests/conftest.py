"""Shared pytest fixtures.  Each group says who uses it; keep groups separate."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# --------------------------------------------------------------------------------------
# Interop: Node.js and the JavaScript SignalR clients in tests/js
# (tests/test_interop_js.py).  `python -m pytest` must work on a fresh machine, so the
# node packages are installed here, by the test run, from the committed lockfile.
# --------------------------------------------------------------------------------------

JS_DIR = Path(__file__).parent / "js"
_MIN_NODE = (20, 19)  # jsdom 29 needs ^20.19
_LOCK_STAMP = ".txsignalr-package-lock.sha256"


@dataclass(frozen=True)
class JsEnv:
    """Where to run the JavaScript harnesses from."""

    node: str
    directory: Path


def _node_modules_current(digest: str) -> bool:
    modules = JS_DIR / "node_modules"
    stamp = modules / _LOCK_STAMP
    if not stamp.is_file() or stamp.read_text().strip() != digest:
        return False
    wanted = json.loads((JS_DIR / "package.json").read_text())["dependencies"]
    for name, version in wanted.items():
        manifest = modules / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != version:
            return False
    return True


@pytest.fixture(scope="session")
def js_env() -> JsEnv:
    """Node.js on PATH and tests/js/node_modules installed with ``npm ci`` (when stale)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: the interop tests run Microsoft's SignalR JavaScript "
            f"client under Node.js >= {_MIN_NODE[0]}.{_MIN_NODE[1]} (e.g. `apt-get install "
            "nodejs npm`)",
            pytrace=False,
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", version)
    if match is None or (int(match.group(1)), int(match.group(2))) < _MIN_NODE:
        pytest.fail(
            f"node {version or '(no version)'} at {node} is too old: the interop tests "
            f"need Node.js >= {_MIN_NODE[0]}.{_MIN_NODE[1]} (jsdom 29)",
            pytrace=False,
        )
    digest = hashlib.sha256((JS_DIR / "package-lock.json").read_bytes()).hexdigest()
    if not _node_modules_current(digest):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                "npm is not on PATH: it is needed once to install tests/js/node_modules "
                "(`npm ci` from tests/js/package-lock.json)",
                pytrace=False,
            )
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"`npm ci` in {JS_DIR} failed with exit code {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}",
                pytrace=False,
            )
        (JS_DIR / "node_modules" / _LOCK_STAMP).write_text(digest + "\n")
        if not _node_modules_current(digest):
            pytest.fail(f"`npm ci` in {JS_DIR} did not install package.json's versions")
    return JsEnv(node=node, directory=JS_DIR)


# --------------------------------------------------------------------------------------
# Test server: bad input must give the .NET behaviour or a clear close, never a logged
# traceback (tests/test_core_server_msgpack.py, tests/test_core_server_stateful.py).
# --------------------------------------------------------------------------------------


@pytest.fixture
def quiet_log() -> Any:
    """
    Collects what is logged during the test, which must hold no failure (from anywhere:
    an unhandled error in a Deferred, a resource that raised) and no warning of
    txsignalr's own (a test that expects one removes it from the list).
    """
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
    loud = [
        e
        for e in events
        if "log_failure" in e
        or (
            str(e.get("log_namespace", "")).startswith("txsignalr")
            and e.get("log_level", LogLevel.info) >= LogLevel.warn
        )
    ]
    assert loud == []


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback tests connect direct even on a machine whose environment names an
    HTTP proxy (txsignalr honours HTTPS_PROXY/HTTP_PROXY/ALL_PROXY like curl); the
    proxy tests set what they need themselves."""
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)

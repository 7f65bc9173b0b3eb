"""
The Python peers of the benchmarks: which libraries, pinned how and why, and how to run
one of them.

Every peer lives in a virtualenv of its own under ``bench/`` (git-ignored), created
on first use by :func:`ensure_peer`, so none of them, nor their dependencies, come
near txsignalr's environment.  :func:`run_peer` runs a peer's client script in that
venv as a child process pinned to CPU 1 and reads its result with the result line
protocol of ``_common.run_child`` / ``_common.emit_result``.  A peer that cannot be
installed, cannot run, or does not support what is asked gives ``{"error": reason}``,
never a silent gap.

Every peer is pinned to one exact release, the newest on PyPI when this was written
(December 2026), so the figures are about a known version; a dependency is pinned
only where the peer breaks without it, and the reason is next to the pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import venv
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, child_pythonpath, run_child

#: The directory holding one venv per peer (``signalr-async`` keeps its older
#: ``bench/.peer-venv``, which ``peer.py`` has always used).
VENVS_DIR = BENCH_DIR / ".peer-venvs"

#: The scenarios a peer client script runs: ``receive`` counts N ``tick`` calls,
#: ``echo`` times N sequential ``invoke("Echo", x)`` round trips.
SCENARIOS = ("receive", "echo")


@dataclass(frozen=True)
class Peer:
    """One Python SignalR client library benchmarked beside txsignalr."""

    #: its PyPI name
    name: str
    #: pip requirements of its venv, the peer itself first, each pinned
    requirements: tuple[str, ...]
    #: why each pin is what it is
    why: str
    #: SignalR families it speaks: ``classic`` (ASP.NET SignalR 2.x), ``core``
    families: tuple[str, ...]
    #: Core hub protocols it speaks
    hub_protocols: tuple[str, ...]
    #: transports it can use; the benchmarks only use WebSockets, the one every peer has
    transports: tuple[str, ...]
    #: ``invoke`` gives the Completion's result back (needed for ``echo``)
    results: bool
    #: the venv
    venv: Path
    #: a module that must import for the venv to count as installed
    module: str
    #: the client script in ``bench/`` for each family
    scripts: tuple[tuple[str, str], ...]
    #: distributions whose installed versions :func:`ensure_peer` reports
    report: tuple[str, ...]

    def script(self, family: str) -> str | None:
        return dict(self.scripts).get(family)


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            name="signalr-async",
            requirements=("signalr-async==3.0.0", "aiohttp<3.11"),
            why=(
                "signalr-async 3.0.0 is the newest release.  It sends through aiohttp's "
                "private WebSocketWriter.send, renamed send_frame in aiohttp 3.11: with the "
                "aiohttp pip picks by default every send fails (AttributeError: "
                "'WebSocketWriter' object has no attribute 'send'), starting with the "
                "ping (classic) or handshake (Core) sent right after connecting, so "
                "start() itself fails; aiohttp<3.11 is the last it works with."
            ),
            families=("classic", "core"),
            hub_protocols=("json", "messagepack"),
            transports=("webSockets",),
            results=True,
            venv=BENCH_DIR / ".peer-venv",
            module="signalr_async.net, signalr_async.netcore",
            scripts=(("classic", "_peer_client.py"), ("core", "_peer_signalr_async_core.py")),
            report=("signalr-async", "aiohttp"),
        ),
        Peer(
            name="pysignalr",
            requirements=("pysignalr==1.3.3",),
            why=(
                "pysignalr 1.3.3 is the newest release; its own dependency ranges "
                "(websockets>=15.0.1,<18, aiohttp, orjson, msgpack) install and work as pip "
                "resolves them, so nothing else is pinned."
            ),
            families=("core",),
            hub_protocols=("json", "messagepack"),
            transports=("webSockets",),
            results=True,
            venv=VENVS_DIR / "pysignalr",
            module="pysignalr.client, pysignalr.protocol.messagepack",
            scripts=(("core", "_peer_pysignalr.py"),),
            report=("pysignalr", "websockets", "orjson"),
        ),
        Peer(
            name="signalrcore",
            requirements=("signalrcore==1.0.2",),
            why=(
                "signalrcore 1.0.2 is the newest release; it pins its one dependency "
                "itself (msgpack==1.1.2) and ships its own WebSocket client, so nothing "
                "else is pinned."
            ),
            families=("core",),
            hub_protocols=("json", "messagepack"),
            transports=("webSockets", "serverSentEvents", "longPolling"),
            results=True,
            venv=VENVS_DIR / "signalrcore",
            module="signalrcore.hub_connection_builder",
            scripts=(("core", "_peer_signalrcore.py"),),
            report=("signalrcore", "msgpack"),
        ),
        Peer(
            name="aiosignalr",
            requirements=("aiosignalr==0.1.1",),
            why=(
                "aiosignalr 0.1.1 is the newest release (it needs Python >= 3.11); its "
                "dependency ranges (aiohttp>=3.9,<4, msgpack>=1,<2, websockets>=16,<17) "
                "install and work as pip resolves them, so nothing else is pinned."
            ),
            families=("core",),
            hub_protocols=("json", "messagepack"),
            transports=("webSockets", "serverSentEvents", "longPolling"),
            results=True,
            venv=VENVS_DIR / "aiosignalr",
            module="aiosignalr.client",
            scripts=(("core", "_peer_aiosignalr.py"),),
            report=("aiosignalr", "websockets"),
        ),
    )
}


def _stamp(peer: Peer) -> str:
    return "".join(f"{r}\n" for r in peer.requirements if r)


def _check(peer: Peer, python: Path) -> subprocess.CompletedProcess[str]:
    versions = ", ".join(repr(d) for d in peer.report)
    code = (
        f"import importlib.metadata as m, {peer.module}; "
        f"v = [m.version(d) for d in ({versions},)]; "
        "print(v[0] + (' with ' + ', '.join(f'{d} {x}' for d, x in "
        f"zip(({versions},)[1:], v[1:])) if len(v) > 1 else ''))"
    )
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)


def ensure_peer(name: str, requirements: tuple[str, ...] | None = None) -> tuple[str | None, str]:
    """
    Make sure the venv of peer ``name`` has its pinned requirements (or
    ``requirements`` instead, to try another version), creating it when missing.
    When the venv already has them and the peer imports, pip is not run.

    :returns: ``(python, detail)``: the venv's interpreter and the installed versions
        (``"3.0.0 with aiohttp 3.10.11"``), or ``(None, reason)``.
    """
    peer = PEERS.get(name)
    if peer is None:
        return None, f"unknown peer {name!r} (known: {', '.join(PEERS)})"
    if requirements is not None:
        peer = replace(peer, requirements=requirements)
    python = peer.venv / "bin" / "python"
    stamp = peer.venv / "requirements.txt"
    wanted = _stamp(peer)
    if python.exists():
        r = _check(peer, python)
        if r.returncode == 0 and stamp.exists() and stamp.read_text() == wanted:
            return str(python), r.stdout.strip()
    else:
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(peer.venv)
        except Exception as e:
            return None, f"could not create {peer.venv}: {e}"
    reqs = [r for r in peer.requirements if r]
    try:
        r = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *reqs],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return None, f"pip install {' '.join(reqs)} timed out"
    if r.returncode != 0:
        tail = [line for line in r.stderr.splitlines() if "WARNING" not in line][-3:]
        return None, f"pip install {' '.join(reqs)} failed: " + " | ".join(tail)
    r = _check(peer, python)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or ["(no message)"]
        return None, f"{name} installed but does not import: {lines[-1]}"
    stamp.write_text(wanted)
    return str(python), r.stdout.strip()


def unsupported(name: str, family: str, scenario: str, protocol: str) -> str | None:
    """Why peer ``name`` cannot run this, or ``None`` when it can."""
    peer = PEERS.get(name)
    if peer is None:
        return f"unknown peer {name!r}"
    if family not in peer.families or peer.script(family) is None:
        return f"{name} does not speak {family} SignalR"
    if family == "core" and protocol not in peer.hub_protocols:
        return f"{name} has no {protocol} hub protocol"
    if scenario == "echo" and not peer.results:
        return f"{name} gives no invocation results"
    if scenario not in SCENARIOS:
        return f"unknown scenario {scenario!r}"
    return None


async def run_peer(
    name: str,
    scenario: str,
    url: str,
    n: int,
    *,
    family: str = "core",
    protocol: str = "json",
    warmup: int = 0,
    timeout: float = 300.0,
    python: str | None = None,
) -> dict[str, Any]:
    """
    Run peer ``name``'s client for ``scenario`` against ``url`` in its venv (a child
    pinned to CPU 1) and return its result: for ``receive`` ``calls_per_s`` and
    ``cpu_us_per_call``; for ``echo`` ``p50_us``, ``p99_us``...  ``python`` skips
    :func:`ensure_peer` when the caller already ran it.  Every failure is
    ``{"error": reason}``.
    """
    why = unsupported(name, family, scenario, protocol)
    if why is not None:
        return {"error": why}
    peer = PEERS[name]
    detail = ""
    if python is None:
        python, detail = ensure_peer(name)
        if python is None:
            return {"error": detail}
    script = peer.script(family)
    assert script is not None
    argv = [str(BENCH_DIR / script), "--url", url, "--n", str(n)]
    if script != "_peer_client.py":  # the classic script only does receive
        argv += ["--scenario", scenario, "--protocol", protocol, "--warmup", str(warmup)]
        argv += ["--timeout", str(timeout)]
    elif scenario != "receive":
        return {"error": f"bench/{script} only runs the receive scenario"}
    result = await run_child(argv, timeout + 30.0, python=python)
    if "error" in result:
        result["error"] = f"{name}: {result['error']}"
    if detail:
        result.setdefault("version", detail)
    return result


# ------------------------------------------------------------ Core rows


#: The rows of :func:`core_peer_rows`: every Core peer, then txsignalr.
CORE_CLIENTS = ("pysignalr", "signalrcore", "aiosignalr", "signalr-async", "txsignalr")
HUB_PROTOCOLS = ("json", "messagepack")


async def _run_txsignalr(
    scenario: str, url: str, n: int, protocol: str, warmup: int, timeout: float
) -> dict[str, Any]:
    argv = [str(BENCH_DIR / "_peer_txsignalr_core.py"), "--scenario", scenario, "--url", url,
            "--n", str(n), "--protocol", protocol, "--warmup", str(warmup)]  # fmt: skip
    result = await run_child(argv, timeout + 30.0)
    if "error" in result:
        result["error"] = f"txsignalr: {result['error']}"
    return result


def _median_row(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    good = [r for r in runs if all(r.get(k) for k in keys[:1])]
    if not good:
        return {"error": runs[-1].get("error", "no result") if runs else "not run", "runs": runs}
    row: dict[str, Any] = {
        k: statistics.median(r[k] for r in good if r.get(k) is not None)
        for k in keys
        if any(r.get(k) is not None for r in good)
    }
    notes = sorted({w for r in good for w in r.get("workarounds") or []})
    if notes:
        row["workarounds"] = notes
    if len(good) < len(runs):
        row["error"] = next(r["error"] for r in runs if "error" in r)
    row["runs"] = runs
    return row


async def core_peer_rows(
    url: str,
    n: int,
    *,
    scenario: str = "receive",
    protocols: tuple[str, ...] = HUB_PROTOCOLS,
    clients: tuple[str, ...] = CORE_CLIENTS,
    repeat: int = 1,
    warmup: int = 0,
    timeout: float = 300.0,
) -> dict[str, dict[str, Any]]:
    """
    The Core peer rows against the hub at ``url``, which must follow the Core bench
    server's contract: for ``receive``, after the handshake it sends ``n``
    Invocations target ``tick``; for ``echo``, it answers ``Echo(x)`` with ``x``.
    Every client in ``clients`` (peers and ``"txsignalr"``) runs over WebSockets with
    each hub protocol, ``repeat`` times interleaved; the median is reported.

    :returns: ``{"<client> <protocol>": row}``: ``calls_per_s``, ``us_per_call``,
        ``cpu_us_per_call`` (first to N-th call), ``cpu_us_per_call_all`` (from just
        before connecting to the N-th: the fair one for peers that parse ahead of
        their handlers, see ``_peer_common.Meter.starting``) for receive; ``p50_us`` ...
        ``p99_us`` for echo; plus ``version``, the peer's ``workarounds`` and every
        run; ``{"error": reason}`` for a client that could not be installed, run or
        does not support it.
    """
    keys = (
        ("calls_per_s", "us_per_call", "cpu_us_per_call", "cpu_us_per_call_all", "seconds")
        if scenario == "receive"
        else ("p50_us", "p90_us", "p99_us", "mean_us", "cpu_us_per_call")
    )
    installed: dict[str, tuple[str | None, str]] = {}
    for name in clients:
        if name != "txsignalr":
            installed[name] = ensure_peer(name)
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(repeat):
        for name in clients:
            for protocol in protocols:
                key = f"{name} {protocol}"
                if name == "txsignalr":
                    result = await _run_txsignalr(scenario, url, n, protocol, warmup, timeout)
                else:
                    python, detail = installed[name]
                    if python is None:
                        result = {"error": f"{name}: {detail}"}
                    else:
                        result = await run_peer(
                            name, scenario, url, n, protocol=protocol, warmup=warmup,
                            timeout=timeout, python=python,
                        )  # fmt: skip
                runs.setdefault(key, []).append(result)
    rows = {}
    for key, r in runs.items():
        row = _median_row(r, keys)
        name = key.split(" ", 1)[0]
        if name in installed and installed[name][0] is not None:
            row["version"] = installed[name][1]
        rows[key] = row
    return rows


@contextlib.asynccontextmanager
async def testing_core_server(n: int) -> AsyncIterator[tuple[str, str]]:
    """
    Run ``_peer_core_server.py`` (``txsignalr.testing`` with a ``ticks`` hub sending
    ``n`` ticks per connection and an ``echo`` hub) in a child process pinned to CPU 0,
    the stand-in for the Core bench server.  Yields ``(ticks_url, echo_url)``.
    """
    env = dict(os.environ, PYTHONPATH=child_pythonpath())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH_DIR / "_peer_core_server.py"), "--n", str(n),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("CORE-SERVER "):
            err = (await proc.stderr.read()).decode(errors="replace").strip().splitlines()
            raise RuntimeError("the Core test server did not start: " + " | ".join(err[-4:]))
        _, ticks, echo = line.split()
        yield ticks, echo
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

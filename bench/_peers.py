"""
The Python peers of the benchmarks: which libraries, pinned how and why, and how to run
one of them.

Every peer lives in a virtualenv of its own under ``bench/`` (git-ignored), created
on first use by :func:`ensure_peer`, so none of them, nor their dependencies, come
near txsignalr's environment.  A peer that cannot be installed gives a reason, never
a silent gap.

Every peer is pinned to one exact release, the newest on PyPI when this was written
(December 2026), so the figures are about a known version; a dependency is pinned
only where the peer breaks without it, and the reason is next to the pin.
"""

from __future__ import annotations

import subprocess
import venv
from dataclasses import dataclass, replace
from pathlib import Path

from _common import BENCH_DIR

#: The directory holding one venv per peer (``signalr-async`` keeps its older
#: ``bench/.peer-venv``, which ``peer.py`` has always used).
VENVS_DIR = BENCH_DIR / ".peer-venvs"

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
                "{} ping sent right after /start, so "
                "start() itself fails; aiohttp<3.11 is the last it works with."
            ),
            families=("classic",),
            hub_protocols=("json", "messagepack"),
            transports=("webSockets",),
            results=True,
            venv=BENCH_DIR / ".peer-venv",
            module="signalr_async.net",
            scripts=(("classic", "_peer_client.py"),),
            report=("signalr-async", "aiohttp"),
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

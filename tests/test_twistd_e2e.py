"""
End to end: ``twistd -n signalr --demo`` as a real subprocess.

Two ways of finding the plugin are covered: running from the repository root (the
current directory on ``sys.path``, as for a fresh checkout) and the ``twistd`` script
next to this Python with the repository on ``PYTHONPATH`` (what an editable install's
``.pth`` file does).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TWISTD_FROM_CHECKOUT = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]
TWISTD_SCRIPT = [str(Path(sys.executable).parent / "twistd")]


def _env(pythonpath: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = str(ROOT)
    return env


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("command", "pythonpath"),
    [(TWISTD_FROM_CHECKOUT, False), (TWISTD_SCRIPT, True)],
    ids=["from-checkout", "twistd-script"],
)
def test_twistd_demo_writes_json_lines_and_stops_on_sigterm(
    tmp_path: Path, command: list[str], pythonpath: bool
) -> None:
    """`twistd -n signalr --demo` writes JSON lines within seconds and shuts down
    cleanly on SIGTERM."""
    out = tmp_path / "demo.jsonl"
    log = tmp_path / "twistd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "-n", "--pidfile=", "signalr", "--demo", "--output", str(out)],
            cwd=ROOT,
            env=_env(pythonpath),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            wanted = {"heartbeat", "tick", "marketSummaries"}
            records: list[dict[str, Any]] = []
            while {r["method"] for r in records} < wanted or len(records) < 10:
                assert process.poll() is None, f"twistd exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no JSON lines after 30 s:\n{log.read_text()}"
                time.sleep(0.1)
                records = _read_records(out)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    # twistd re-raises the terminating signal once shut down, so a SIGTERM'd twistd
    # reports "killed by SIGTERM" (shell: 143) after a clean shutdown.
    assert process.returncode == -signal.SIGTERM, text
    assert "Server Shut Down." in text
    assert "Traceback" not in text and "Unhandled" not in text, text
    records = _read_records(out)  # every line, including the last ones, parses
    for record in records:
        assert set(record) == {"time", "hub", "method", "args"}
        assert record["hub"] == "c3"
    ticks = [r["args"][0]["Seq"] for r in records if r["method"] == "tick"]
    assert ticks == sorted(set(ticks)) and len(ticks) >= 3  # strictly increasing
    summary = next(r for r in records if r["method"] == "marketSummaries")
    assert isinstance(summary["args"][0]["sequence"], int)  # deflate-base64 decoded
    assert "subscribed 1 subscriptions" in text


def test_twistd_demo_json_lines_on_stdout_stand_apart_from_the_log() -> None:
    """The README's `twistd -n signalr --demo`: JSON lines go to stdout together with
    twistd's log, and tell themselves apart: every line is either a bare JSON record
    or a log line starting with a timestamp."""
    process = subprocess.Popen(
        [*TWISTD_FROM_CHECKOUT, "-n", "--pidfile=", "signalr", "--demo"],
        cwd=ROOT,
        env=_env(False),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while sum(line.startswith("{") for line in lines) < 5:
            assert time.monotonic() < deadline, "no JSON lines after 30 s:\n" + "".join(lines)
            line = process.stdout.readline()
            assert line, "twistd exited early:\n" + "".join(lines)
            lines.append(line)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
        lines.extend(rest.splitlines(keepends=True))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGTERM, "".join(lines)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) >= 5
    assert all(set(r) == {"time", "hub", "method", "args"} for r in records)
    others = [line for line in lines if not line.startswith("{")]
    assert others and all(line[:4].isdigit() and line[4] == "-" for line in others), others


def _twistd(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD_FROM_CHECKOUT, "-n", "--pidfile=", "signalr", *args],
        cwd=ROOT,
        env=_env(False),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_twistd_exits_1_when_it_gives_up(tmp_path: Path) -> None:
    """With --max-attempts, giving up stops twistd with exit status 1, after a clean
    shutdown (the service stopped, "Server Shut Down." logged)."""
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _twistd(
        ["--url", f"http://127.0.0.1:{port}/signalr", "--hub", "c3", "--max-attempts", "2",
         "--output", str(tmp_path / "out.jsonl")]
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "gave up after 2 failed attempts" in output
    assert "Server Shut Down." in output
    assert "Traceback" not in output and "Unhandled" not in output, output


def test_twistd_exits_1_when_the_demo_port_is_taken(tmp_path: Path) -> None:
    """`--demo --demo-port N` with N in use: twistd fails at start-up with a message
    naming the port, and exit status 1, instead of running on without a server."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _twistd(["--demo", "--demo-port", str(port), "--output", str(tmp_path / "o")])
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"the --demo server could not listen on 127.0.0.1:{port}" in output
    assert "Address already in use" in output
    assert "subscribed" not in output


def test_twistd_bad_option_is_a_usage_error() -> None:
    """A bad option makes twistd print the problem and exit 1, without a traceback."""
    done = subprocess.run(
        [*TWISTD_FROM_CHECKOUT, "-n", "--pidfile=", "signalr", "--url", "ftp://x/signalr"],
        cwd=ROOT,
        env=_env(False),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "--url 'ftp://x/signalr': expected an http:// or https:// URL" in output
    assert "Traceback" not in output


def test_example_tac_runs_against_the_demo_server(tmp_path: Path) -> None:
    """`twistd -ny examples/subscriptions.tac` subscribes to the demo server and its
    handler sees consecutive market summaries; SIGTERM shuts it down cleanly."""
    log = tmp_path / "twistd.log"
    process = subprocess.Popen(
        [*TWISTD_FROM_CHECKOUT, "-ny", "examples/subscriptions.tac", "--pidfile=",
         "--logfile", str(log)],
        cwd=ROOT,
        env={k: v for k, v in _env(False).items() if not k.startswith("SIGNALR_")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "market summaries #3:" not in (log.read_text() if log.exists() else ""):
            assert process.poll() is None, f"twistd exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, (
                f"no market summaries after 30 s:\n{log.read_text()}"
            )
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert process.returncode == -signal.SIGTERM, text
    assert "Server Shut Down." in text
    assert "gap in market summaries" not in text
    assert "Traceback" not in text, text


def test_twistd_demo_over_core_with_an_access_token(tmp_path: Path) -> None:
    """`twistd -n signalr --demo --protocol core --access-token-env VAR`: the demo
    server's Core side (/hubs/c3) requires VAR's token; the default feed arrives as
    JSON lines with "hub": "c3"; the token is in neither the output nor the log."""
    token = "e2e-secret-token-6f1c"
    out = tmp_path / "core.jsonl"
    log = tmp_path / "twistd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [*TWISTD_FROM_CHECKOUT, "-n", "--pidfile=", "signalr", "--demo",
             "--protocol", "core", "--access-token-env", "TXS_E2E_TOKEN",
             "--output", str(out)],
            cwd=ROOT,
            env={**_env(False), "TXS_E2E_TOKEN": token},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            wanted = {"heartbeat", "tick", "marketSummaries"}
            records: list[dict[str, Any]] = []
            while {r["method"] for r in records} < wanted or len(records) < 10:
                assert process.poll() is None, f"twistd exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no JSON lines after 30 s:\n{log.read_text()}"
                time.sleep(0.1)
                records = _read_records(out)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    assert process.returncode == -signal.SIGTERM, text
    assert "Server Shut Down." in text
    assert "Traceback" not in text and "Unhandled" not in text, text
    assert "/hubs/c3" in text and "ASP.NET Core" in text
    assert "subscribed 1 subscriptions" in text
    records = _read_records(out)
    assert all(set(r) == {"time", "hub", "method", "args"} for r in records)
    assert {r["hub"] for r in records} == {"c3"}
    ticks = [r["args"][0]["Seq"] for r in records if r["method"] == "tick"]
    assert ticks == sorted(set(ticks)) and len(ticks) >= 3
    assert token not in text and token not in out.read_text()


def test_twistd_access_token_env_unset_is_a_usage_error(tmp_path: Path) -> None:
    """--access-token-env naming an unset variable: exit 1 at once, naming it."""
    env = {k: v for k, v in _env(False).items() if k != "TXS_E2E_UNSET"}
    done = subprocess.run(
        [*TWISTD_FROM_CHECKOUT, "-n", "--pidfile=", "signalr", "--url",
         "http://127.0.0.1:1/hubs/c3", "--protocol", "core", "--access-token-env",
         "TXS_E2E_UNSET", "--output", str(tmp_path / "o")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "--access-token-env: environment variable TXS_E2E_UNSET" in output
    assert "is not set" in output
    assert "Traceback" not in output

"""The quick start, as the README's first command runs it, in a temporary copy:
``missive certs init-dev`` prepares var/, ``check-config`` says OK, ``serve`` starts,
says it accepts no mail yet (and really opens no port), records its start and stop in
the audit trail, and stops cleanly on SIGTERM; ``audit verify`` then passes."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MISSIVE = [sys.executable, "-m", "gateway"]


def missive(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIVE, *args], cwd=site, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of conf/ with var/ prepared exactly as ./run prepares it."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(REPOSITORY / "conf", root / "conf")
    prepared = missive(
        root,
        "certs",
        "init-dev",
        "var/pki",
        "--demo-annuaire",
        "var/annuaire.ldif",
        "--keys-dir",
        "var/keys",
    )
    assert prepared.returncode == 0, prepared.stderr
    yield root


def test_version_and_help() -> None:
    version = subprocess.run([*MISSIVE, "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0
    assert version.stdout.startswith("missive ")
    helptext = subprocess.run([*MISSIVE, "--help"], capture_output=True, text=True, check=False)
    for command in ("serve", "check-config", "certs", "audit"):
        assert command in helptext.stdout


def test_shipped_configuration_checks_ok(site: Path) -> None:
    result = missive(site, "check-config", "conf/missive.toml")
    assert (result.returncode, result.stdout.strip()) == (0, "OK"), result.stderr


def _read_until(proc: subprocess.Popen[str], marker: str, deadline: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.2):
            assert proc.poll() is None, "serve exited early:\n" + "".join(lines)
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in serve's output:\n" + "".join(lines))


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) == 0


def test_serve_starts_accepts_no_mail_and_stops_on_sigterm(site: Path) -> None:
    proc = subprocess.Popen(
        [*MISSIVE, "serve", "--config", "conf/missive.toml"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = _read_until(proc, "event=gateway.ready", time.monotonic() + 30)
        not_started = [line for line in lines if "event=listener.not_started" in line]
        assert len(not_started) == 3  # the three listeners of the shipped configuration
        assert all("no mail is accepted" in line for line in not_started)
        assert "accepting_mail=no" in lines[-1]
        # it says it opens nothing, and it does open nothing
        for address in ("127.0.0.1:2587", "127.0.0.1:2465", "127.0.0.1:2525"):
            assert not _port_open(address)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    rest = proc.stdout.read()
    proc.stdout.close()
    assert "event=gateway.stopped" in rest
    assert (site / "var" / "spool").stat().st_mode & 0o777 == 0o700

    verified = missive(site, "audit", "verify", "--config", "conf/missive.toml")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = missive(
        site, "audit", "export", "--config", "conf/missive.toml", "--format", "jsonl"
    )
    types = [line.split('"type": "')[1].split('"')[0] for line in exported.stdout.splitlines()]
    assert types[-2:] == ["gateway.start", "gateway.stop"]


def test_serve_refuses_a_broken_configuration(site: Path) -> None:
    broken = site / "conf" / "broken.toml"
    text = (site / "conf" / "missive.toml").read_text()
    broken.write_text(text.replace('hostname = "mx.chu-a.test"', 'hostname = "not a name"', 1))
    result = missive(site, "serve", "--config", "conf/broken.toml")
    assert result.returncode == 2
    assert "broken.toml: gateway.hostname:" in result.stderr
    assert "Traceback" not in result.stderr

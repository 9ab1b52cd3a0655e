"""The quick start, as the README's first command runs it, in a temporary copy:
``missive certs init-dev`` prepares var/, ``check-config`` says OK, ``serve`` starts its
listeners and its stage workers, takes a message over STARTTLS into the spool
(``missive queue list`` shows it), records its start and stop in the audit trail, and
stops cleanly on SIGTERM, workers included; ``audit verify`` then passes."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.ports import free_ports

REPOSITORY = Path(__file__).resolve().parents[2]
MISSIVE = [sys.executable, "-m", "gateway"]
FIXED_PORTS = (2587, 2465, 2525)  # the shipped listeners, moved to free ports in the copy


def missive(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIVE, *args], cwd=site, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of conf/ with var/ prepared exactly as ./run prepares it."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(REPOSITORY / "conf", root / "conf")
    toml = root / "conf" / "missive.toml"
    text = toml.read_text()
    for fixed, port in zip(FIXED_PORTS, free_ports(len(FIXED_PORTS)), strict=True):
        text = text.replace(f'address = "127.0.0.1:{fixed}"', f'address = "127.0.0.1:{port}"')
    toml.write_text(text)
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


def _listener_port(site: Path, name: str) -> int:
    text = (site / "conf" / "missive.toml").read_text()
    block = text.split(f'name = "{name}"', 1)[1]
    return int(block.split('address = "127.0.0.1:', 1)[1].split('"', 1)[0])


def _send_through_relay_listener(site: Path) -> None:
    """A hospital MTA (127.0.0.1 is a relay client) hands over one outbound message."""
    context = ssl.create_default_context(cafile=site / "var" / "pki" / "root.crt")
    message = (
        b"From: alice.martin@chu-a.test\r\nTo: claire.durand@clinique-b.test\r\n"
        b"Subject: test\r\nMessage-ID: <quickstart@chu-a.test>\r\n\r\nBonjour.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", _listener_port(site, "mx"), timeout=30) as client:
        client.starttls(context=context)  # verified: the certificate names 127.0.0.1
        refused = client.sendmail(
            "alice.martin@chu-a.test", ["claire.durand@clinique-b.test"], message
        )
        assert refused == {}


def test_serve_accepts_into_the_spool_and_stops_on_sigterm(site: Path) -> None:
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
        assert "listeners_open=3" in lines[-1]
        # crypto_workers = 0: a secure agent and an inbound agent per core, plus the
        # relay (the shipped routes include smtp ones) and local delivery
        cores = len(os.sched_getaffinity(0))
        assert f"workers={2 * cores + 2}" in lines[-1]
        _send_through_relay_listener(site)
        queued = missive(site, "queue", "list", "--config", "conf/missive.toml")
        assert queued.returncode == 0, queued.stderr
        assert "alice.martin@chu-a.test" in queued.stdout
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
    # still in the spool after the stop (the agent may have deferred it: no organisation
    # signing key in this configuration), never lost
    after = missive(site, "queue", "list", "--config", "conf/missive.toml")
    assert "alice.martin@chu-a.test" in after.stdout, after.stdout + after.stderr

    verified = missive(site, "audit", "verify", "--config", "conf/missive.toml")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = missive(
        site, "audit", "export", "--config", "conf/missive.toml", "--format", "jsonl"
    )
    types = [line.split('"type": "')[1].split('"')[0] for line in exported.stdout.splitlines()]
    assert types[0] == "gateway.start"
    assert "spool.added" in types
    assert types[-1] == "gateway.stop"


def test_serve_refuses_a_broken_configuration(site: Path) -> None:
    broken = site / "conf" / "broken.toml"
    text = (site / "conf" / "missive.toml").read_text()
    broken.write_text(text.replace('hostname = "mx.chu-a.test"', 'hostname = "not a name"', 1))
    result = missive(site, "serve", "--config", "conf/broken.toml")
    assert result.returncode == 2
    assert "broken.toml: gateway.hostname:" in result.stderr
    assert "Traceback" not in result.stderr

"""The quick start, as the README's first command runs it, in a temporary copy:
``missive certs init-dev`` prepares var/, ``check-config`` says OK, ``serve`` starts its
listeners and its stage workers, takes a message over STARTTLS into the spool
(``missive queue list`` shows it), records its start and stop in the audit trail, and
stops cleanly on SIGTERM, workers included; ``audit verify`` then passes.

The copy is a demo site (``tests/sites.py``: the listeners moved to free loopback
ports); ``serve`` runs in its own session and is stopped by PID even on failure."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.sites import (
    CONFIG,
    MISSIVE,
    READY,
    SERVE_SECONDS,
    exported_audit,
    kill_process_group,
    missive,
    prepare_demo_site,
    send_as_relay_client,
    serving,
    start_serve,
    wait_for_output,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of conf/ with var/ prepared exactly as ./run prepares it."""
    return prepare_demo_site(tmp_path_factory.mktemp("site"))


def test_version_and_help() -> None:
    version = subprocess.run([*MISSIVE, "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0
    assert version.stdout.startswith("missive ")
    helptext = subprocess.run([*MISSIVE, "--help"], capture_output=True, text=True, check=False)
    for command in ("serve", "check-config", "certs", "audit"):
        assert command in helptext.stdout


def test_shipped_configuration_checks_ok(site: Path) -> None:
    result = missive(site, "check-config", CONFIG)
    assert (result.returncode, result.stdout.strip()) == (0, "OK"), result.stderr


def _send_through_relay_listener(site: Path) -> None:
    """A hospital MTA (127.0.0.1 is a relay client) hands over one outbound message
    (STARTTLS verified: the certificate names 127.0.0.1)."""
    message = (
        b"From: alice.martin@chu-a.test\r\nTo: claire.durand@clinique-b.test\r\n"
        b"Subject: test\r\nMessage-ID: <quickstart@chu-a.test>\r\n\r\nBonjour.\r\n"
    )
    refused = send_as_relay_client(
        site, "alice.martin@chu-a.test", ["claire.durand@clinique-b.test"], message
    )
    assert refused == {}


def test_serve_accepts_into_the_spool_and_stops_on_sigterm(site: Path) -> None:
    with serving(site) as running:  # at the end: SIGTERM, and serve must exit 0
        ready = running.line_with(READY)
        assert "listeners_open=3" in ready
        # crypto_workers = 0: a secure agent and an inbound agent per core, plus the
        # relay (the shipped routes include smtp ones) and local delivery
        cores = len(os.sched_getaffinity(0))
        assert f"workers={2 * cores + 2}" in ready
        _send_through_relay_listener(site)
        queued = missive(site, "queue", "list", "--config", CONFIG)
        assert queued.returncode == 0, queued.stderr
        assert "alice.martin@chu-a.test" in queued.stdout
    assert running.process.returncode == 0
    assert "event=gateway.stopped" in running.output().split(ready, 1)[1]
    assert (site / "var" / "spool").stat().st_mode & 0o777 == 0o700
    # still in the spool after the stop (the agent may have deferred it: no organisation
    # signing key in this configuration), never lost
    after = missive(site, "queue", "list", "--config", CONFIG)
    assert "alice.martin@chu-a.test" in after.stdout, after.stdout + after.stderr

    types = [record["type"] for record in exported_audit(site)]  # audit verify passes first
    assert types[0] == "gateway.start"
    assert "spool.added" in types
    assert types[-1] == "gateway.stop"


def test_serve_refuses_a_broken_configuration(site: Path) -> None:
    broken = site / "conf" / "broken.toml"
    text = (site / CONFIG).read_text()
    broken.write_text(text.replace('hostname = "mx.chu-a.test"', 'hostname = "not a name"', 1))
    result = missive(site, "serve", "--config", "conf/broken.toml")
    assert result.returncode == 2
    assert "broken.toml: gateway.hostname:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_stops_cleanly_on_sighup(site: Path) -> None:
    """The terminal or ssh session serve was started from goes away: SIGHUP is a clean
    stop like SIGTERM (workers stopped, ``gateway.stop`` recorded), not a kill."""
    running = start_serve(site)
    try:
        wait_for_output(running, (READY,), time.monotonic() + SERVE_SECONDS)
        running.process.send_signal(signal.SIGHUP)
        assert running.process.wait(SERVE_SECONDS) == 0, running.output()
    finally:
        kill_process_group(running.process)
    assert "event=gateway.stopped" in running.output()
    assert [record["type"] for record in exported_audit(site)][-1] == "gateway.stop"

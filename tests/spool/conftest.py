"""Fixtures of the spool tests: a recording trail and a spool in a temp dir; for the CLI
and multi-process tests, an on-disk ``site``, the ``missive`` command run in this process,
and the ``workers`` list whose subprocesses are stopped at teardown."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import gateway.cli
from gateway.spool import Spool

from .support import QueueSite, RecordingTrail, Run, make_spool


@pytest.fixture
def trail() -> RecordingTrail:
    return RecordingTrail()


@pytest.fixture
async def spool(tmp_path: Path, trail: RecordingTrail) -> AsyncIterator[Spool]:
    opened = make_spool(tmp_path / "spool", trail)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
def site(tmp_path: Path) -> QueueSite:
    return QueueSite(spool=tmp_path / "spool", trail=tmp_path / "audit.sqlite")


@pytest.fixture
def missive(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """``missive ARGS...`` in this process with only the queue commands registered."""
    monkeypatch.setattr(gateway.cli, "COMMANDS", ("gateway.spool.cli",))

    def run(*argv: str | Path) -> tuple[int, str, str]:
        status = gateway.cli.main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    """Where ``start_stage_worker`` puts the processes it starts; each one still running
    at teardown is killed by PID and reaped, even when the test failed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)

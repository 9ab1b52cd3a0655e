"""How ``serve``'s supervisor (``gateway.workers.WorkerGroup``) reports a worker that
ended, and above all one whose configuration became invalid after ``serve`` started:

- a real ``missive worker delivery`` whose configuration file is broken after start and
  which is then killed: one ``worker.killed signal=SIGKILL`` line, then one
  ``worker.config_error`` line (error level, kind, problems, file, hint) for the whole
  streak of exits 2, however many retries; the problems are in that line, not repeated
  on stderr at each retry; once the file is fixed the next retry runs and
  ``worker.recovered`` is logged, without restarting the group;
- a worker killed by a signal, one that exits 1, one that exits 2 and one that exits 0
  get four different events;
- a supervised worker (``MISSIVE_WORKER_PROBLEMS`` set) writes its problem lines to
  that file and not to stderr, with exit status 2;
- the pure pieces: ``exit_report`` and ``next_streak`` (when a streak is logged again).

Every process is stopped by PID (``aclose``) in a ``finally``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.pki.dev import DevPki
from gateway.worker_exits import PROBLEMS_ENV, ConfigErrorStreak, exit_report, next_streak
from gateway.workers import WorkerCounts, WorkerGroup, worker_commands
from tests.relay.configs import write_site
from tests.together import gone

PROGRAM = (sys.executable, "-m", "gateway")
BROKEN = "\nbroken = = 1\n"  # invalid TOML: "invalid TOML" in the worker's problem line


class Events(logging.Handler):
    """The ``missive.workers`` records, kept in order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, event: str) -> list[logging.LogRecord]:
        return [record for record in self.records if record.getMessage() == event]


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = record.__dict__["fields"]
    return fields


@pytest.fixture
def events() -> Iterator[Events]:
    logger = logging.getLogger("missive.workers")
    handler = Events()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (the test timeout bounds it)."""
    while not condition():
        await asyncio.sleep(0.02)


def replace_text(path: Path, text: str) -> None:
    """Write ``path`` as an editor that saves atomically does (no half-written file for
    a worker starting meanwhile)."""
    temporary = path.with_suffix(".new")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


async def test_a_configuration_broken_after_start_is_logged_once_then_picked_up(
    dev_pki: DevPki, tmp_path: Path, events: Events, capfd: pytest.CaptureFixture[str]
) -> None:
    config = write_site(tmp_path, dev_pki)
    good = config.source.read_text(encoding="utf-8")
    commands = worker_commands(
        config, WorkerCounts(agents=0, relays=0, delivery=1), program=PROGRAM
    )
    group = WorkerGroup(commands)
    # set after construction, as test_workers does: shorter back-offs; a restarted worker
    # that lives 6 s has picked up the configuration (an exit 2 comes within ~1 s)
    group.backoff_first = 0.05
    group.backoff_max = 0.2
    group.recovered_after = 6.0
    await group.start()
    (worker,) = group.workers
    try:
        await group.wait_running("delivery-1")
        victim = worker.pid
        assert victim is not None
        replace_text(config.source, good + BROKEN)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: worker.exits.count(2) >= 3)

        (killed,) = events.named("worker.killed")
        assert fields_of(killed)["signal"] == "SIGKILL" and fields_of(killed)["status"] == -9
        (error,) = events.named("worker.config_error")  # one line for the whole streak
        fields = fields_of(error)
        assert error.levelno == logging.ERROR
        assert (fields["worker"], fields["kind"], fields["status"]) == ("delivery-1", "delivery", 2)
        assert "invalid TOML" in fields["problems"]
        assert fields["config"] == str(config.source)
        assert "retried every 0.2s" in fields["hint"]
        assert events.named("worker.exited") == []
        assert len(events.named("worker.config_error_retry")) >= 2  # debug, one per retry

        replace_text(config.source, good)
        await until(lambda: bool(events.named("worker.recovered")))
        (recovered,) = events.named("worker.recovered")
        assert fields_of(recovered)["retries"] >= 2
        assert fields_of(recovered)["pid"] == worker.pid and worker.pid is not None
        assert not gone(worker.pid)
        assert len(events.named("worker.config_error")) == 1
    finally:
        await group.aclose()
    assert worker.exits[-1] == 0  # the fixed worker stopped cleanly on SIGTERM
    assert "invalid TOML" not in capfd.readouterr().err  # in the log, not on stderr


def fails_once(marker: Path, first_run: str) -> tuple[str, ...]:
    """A worker that runs ``first_run`` the first time (``marker`` absent), then sleeps."""
    code = (
        "import os, pathlib, signal, sys, time\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        f"    {first_run}\n"
        "time.sleep(60)\n"
    )
    return (sys.executable, "-c", code)


async def test_a_signal_an_exit_1_an_exit_2_and_an_exit_0_are_told_apart(
    tmp_path: Path, events: Events
) -> None:
    first_runs = {
        "killed": "os.kill(os.getpid(), signal.SIGKILL)",
        "crashy": "raise RuntimeError('a bug')",
        "misconfigured": "sys.exit(2)",
        "quitter": "sys.exit(0)",
    }
    commands = [(name, fails_once(tmp_path / name, code)) for name, code in first_runs.items()]
    group = WorkerGroup(commands, backoff_first=0.01, backoff_max=0.05)
    await group.start()
    try:
        await until(lambda: all(worker.restarts >= 1 for worker in group.workers))
    finally:
        await group.aclose()
    ends = {
        fields_of(record)["worker"]: (record.getMessage(), record.levelno, fields_of(record))
        for record in events.records
        if "status" in fields_of(record)
    }
    assert {name: (event, level) for name, (event, level, _) in ends.items()} == {
        "killed": ("worker.killed", logging.ERROR),
        "crashy": ("worker.crashed", logging.ERROR),
        "misconfigured": ("worker.config_error", logging.ERROR),
        "quitter": ("worker.exited", logging.WARNING),
    }
    assert ends["killed"][2]["signal"] == "SIGKILL"
    assert ends["crashy"][2]["status"] == 1
    assert ends["misconfigured"][2]["problems"] == "(none reported)"


@pytest.mark.parametrize("supervised", [True, False], ids=["by-serve", "by-hand"])
def test_a_supervised_worker_writes_its_problems_to_the_supervisors_file(
    tmp_path: Path, supervised: bool
) -> None:
    bad = tmp_path / "missive.toml"
    bad.write_text('[gateway]\nhostname = "mx.chu-a.test"' + BROKEN, encoding="utf-8")
    problems = tmp_path / "problems"
    environment = {key: value for key, value in os.environ.items() if key != PROBLEMS_ENV}
    if supervised:
        environment[PROBLEMS_ENV] = str(problems)
    result = subprocess.run(
        [*PROGRAM, "worker", "delivery", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    if supervised:
        assert "invalid TOML" in problems.read_text(encoding="utf-8")
        assert result.stderr == ""
    else:
        assert "invalid TOML" in result.stderr and not problems.exists()


@pytest.mark.parametrize(
    ("status", "event", "detail"),
    [
        (-signal.SIGKILL, "worker.killed", "out-of-memory"),
        (-signal.SIGSEGV, "worker.killed", "native code"),
        (-signal.SIGUSR1, "worker.killed", "does not handle"),
        (1, "worker.crashed", "traceback"),
        (3, "worker.crashed", "traceback"),
        (2, "worker.config_error", "retried every 30.0s"),
        (0, "worker.exited", "SIGTERM"),
    ],
)
def test_exit_report_names_the_cause(status: int, event: str, detail: str) -> None:
    report = exit_report(status)
    assert report.event == event
    assert detail in report.fields["hint"]


def test_a_streak_is_logged_first_on_new_problems_and_as_a_reminder() -> None:
    problems = ("missive.toml: invalid TOML",)
    streak, log = next_streak(None, problems, now=100.0, reminder=3600.0)
    assert log and streak == ConfigErrorStreak(problems, since=100.0, logged_at=100.0)
    streak, log = next_streak(streak, problems, now=130.0, reminder=3600.0)
    assert not log and streak.retries == 1
    other = ("missive.toml: gateway.hostnme: unknown key",)
    streak, log = next_streak(streak, other, now=160.0, reminder=3600.0)
    assert log and streak.problems == other and streak.since == 100.0
    streak, log = next_streak(streak, other, now=3759.0, reminder=3600.0)
    assert not log
    streak, log = next_streak(streak, other, now=3760.0, reminder=3600.0)
    assert log and streak.retries == 4 and streak.logged_at == 3760.0

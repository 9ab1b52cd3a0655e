"""Adversarial checks of ``serve``'s supervision of its workers (``gateway.workers``
``WorkerGroup``, ``gateway.serve.only_serve_on``): what a hostile timing or a broken
host does to the promise "serve stops everything it started, by PID, nothing left
running".

- a worker whose restart is being spawned when ``aclose`` starts (it died just before
  SIGTERM reached serve) must be stopped too, not left running after ``aclose``;
- ``serve`` on a spool path that is a file, not a directory, exits 2 with one line
  and no traceback;
- two SIGTERMs to ``serve`` as soon as it spawned its first worker (before its ready
  line): exit 0, no worker left (found through ``/proc/*/environ``: the workers live in
  sessions of their own, so serve's process group does not hold them);
- a worker restarted on a configuration broken meanwhile exits 2; serve stays up,
  retries with back-off and still stops cleanly;
- a worker ignoring SIGTERM is SIGKILLed after ``stop_timeout``; one exiting 0 on its
  own is restarted.

The ``WorkerGroup`` tests run tiny Python one-liners as workers (no site needed); the
``serve`` ones a copy of the demo site (``tests.sites``). Every process is stopped by
PID in a ``finally``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.pki.dev import DevPki
from gateway.workers import WorkerGroup
from tests.relay.configs import write_site
from tests.together import gone

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


def slow_to_stop(marker: Path) -> tuple[str, ...]:
    """A worker that takes a second to stop on SIGTERM (as a stage finishing its entry)
    and touches ``marker`` once its handler is in place."""
    code = (
        "import signal, sys, time, pathlib\n"
        "def stop(*_):\n"
        "    time.sleep(1.0)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    return (sys.executable, "-c", code)


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (the test timeout bounds it)."""
    while not condition():
        await asyncio.sleep(0.02)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


async def test_a_restart_spawned_while_closing_is_stopped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM reaches serve while the supervisor is spawning a crashed worker's
    replacement: ``aclose`` must not return with that new process still running."""
    marker = tmp_path / "ready"
    group = WorkerGroup(
        [("steady", slow_to_stop(marker)), ("crashy", SLEEPER)],
        backoff_first=0.01,
        stop_timeout=10.0,
    )
    real_exec = asyncio.create_subprocess_exec
    spawned: list[int] = []

    async def spawn_once_closing(*argv: Any, **options: Any) -> asyncio.subprocess.Process:
        if group.workers[1].restarts == 0 and group.workers[1].exits:  # the restart
            await until(lambda: group._closing)  # aclose has begun meanwhile
        process = await real_exec(*argv, **options)
        spawned.append(process.pid)
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn_once_closing)
    await group.start()
    try:
        await until(marker.exists)
        crashy = group.workers[1]
        first = crashy.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: bool(crashy.exits))
        await group.aclose()
        left = [pid for pid in spawned if not gone(pid)]
        assert left == [], f"aclose returned with worker(s) {left} still running"
    finally:
        await group.aclose()
        kill_all(spawned)


def test_serve_on_a_spool_path_that_is_a_file_exits_2(dev_pki: DevPki, tmp_path: Path) -> None:
    config = write_site(tmp_path, dev_pki)
    spool = config.gateway.spool_dir
    if spool.is_dir():
        spool.rmdir()  # write_site may have made it, empty
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_text("not a directory\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config.source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(spool) in result.stderr


def supervised_by(serve_pid: int) -> list[int]:
    """PIDs of live processes started by the ``serve`` of PID ``serve_pid`` (their
    environment names it: ``MISSIVE_SUPERVISOR_PID``); zombies count as gone."""
    tag = f"MISSIVE_SUPERVISOR_PID={serve_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if tag in environment and not gone(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def site_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.sites import prepare_demo_site

    return prepare_demo_site(tmp_path_factory.mktemp("h21") / "site", free_listeners=False)


def test_two_sigterms_while_workers_spawn_leave_nothing_running(
    site_template: Path, tmp_path: Path
) -> None:
    """SIGTERM, twice, as soon as serve spawned its first worker (before its ready
    line): serve exits 0 and no worker it started is left running."""
    from tests.sites import copy_demo_site, start_serve, stop, wait_for_output

    home = copy_demo_site(site_template, tmp_path / "site")
    running = start_serve(home)
    left: list[int] = []
    try:
        wait_for_output(running, ["event=worker.spawned"], time.monotonic() + 30)
        running.process.send_signal(signal.SIGTERM)
        running.process.send_signal(signal.SIGTERM)
        status = running.process.wait(timeout=30)
        left = supervised_by(running.process.pid)
        assert status == 0, running.output()
        assert left == [], f"workers {left} of serve left running:\n{running.output()}"
    finally:
        stop(running.process)
        kill_all(left or supervised_by(running.process.pid))


def test_a_worker_restarted_on_a_broken_configuration_does_not_bring_serve_down(
    site_template: Path, tmp_path: Path
) -> None:
    """The configuration file breaks while serve runs, then a worker dies: its
    restart exits 2 (one line, no traceback); serve stays up, retries with back-off,
    and still stops cleanly (exit 0, nothing left) on SIGTERM."""
    from tests.sites import CONFIG, copy_demo_site, start_serve, stop, wait_for_output

    home = copy_demo_site(site_template, tmp_path / "site")
    running = start_serve(home)
    left: list[int] = []
    try:
        wait_for_output(running, ["event=gateway.ready"], time.monotonic() + 30)
        line = next(x for x in running.output().splitlines() if "worker=delivery-1" in x)
        victim = int(line.split("pid=")[1].split()[0])
        config = home / CONFIG
        config.write_text(config.read_text() + "\nbroken = = 1\n", encoding="utf-8")
        os.kill(victim, signal.SIGKILL)
        wait_for_output(running, ["status=2"], time.monotonic() + 30)
        assert running.process.poll() is None, running.output()
        assert "Traceback" not in running.output()
        running.process.send_signal(signal.SIGTERM)
        status = running.process.wait(timeout=30)
        left = supervised_by(running.process.pid)
        assert status == 0, running.output()
        assert left == [], f"workers {left} of serve left running:\n{running.output()}"
    finally:
        stop(running.process)
        kill_all(left or supervised_by(running.process.pid))


async def test_a_worker_ignoring_sigterm_is_killed_after_stop_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    deaf = (
        sys.executable,
        "-c",
        "import signal, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "time.sleep(60)\n",
    )
    group = WorkerGroup([("deaf", deaf)], stop_timeout=0.2)
    await group.start()
    pid = group.workers[0].pid
    assert pid is not None
    try:
        await until(marker.exists)
        await group.aclose()
        assert gone(pid)
        assert group.workers[0].exits == [-signal.SIGKILL]
    finally:
        await group.aclose()
        kill_all([pid])


async def test_a_worker_exiting_0_on_its_own_is_restarted(tmp_path: Path) -> None:
    """A clean exit while serve runs is still a dead stage: restarted like a crash."""
    runs = tmp_path / "runs"
    once = (
        sys.executable,
        "-c",
        f"import pathlib, time\np = pathlib.Path({str(runs)!r})\n"
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
        "time.sleep(60) if len(p.read_text()) > 1 else None\n",
    )
    group = WorkerGroup([("once", once)], backoff_first=0.01)
    await group.start()
    worker = group.workers[0]
    try:
        await until(lambda: worker.restarts == 1)
        assert worker.exits == [0]
        await group.wait_running("once")
    finally:
        await group.aclose()
        kill_all([pid for pid in (worker.pid,) if pid is not None])

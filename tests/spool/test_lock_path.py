"""A consumer lock path that is not a regular file stops the worker, cleanly.

``ConsumerLock`` opens its lock file ``O_NOFOLLOW``: a symbolic link planted at that
path (someone with write access to the stage directory, or an operator's mistake) used
to kill the worker with an ``OSError(ELOOP)`` traceback, and ``serve`` restarted it
over and over. Now it is ``UnsafeLockFile``: one ``spool.lock_unsafe`` log line, one
line on stderr naming the path and what is there, exit status 2, and whatever is at
the path - and what a link points to - is left exactly as it was.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.spool import RECEIVED, relay_stage
from gateway.spool.layout import Layout, StageDirs
from gateway.spool.stagefiles import ConsumerLock, UnsafeLockFile, requeue_orphaned_slots
from tests.relay.configs import write_site

TARGET_TEXT = "a file of the gateway's user, outside the spool\n"


def received(spool_dir: Path) -> StageDirs:
    dirs = Layout(spool_dir).stage(RECEIVED)
    dirs.create()
    return dirs


def plant_link(dirs: StageDirs, slot: int, target: Path) -> os.stat_result:
    """A symbolic link at slot ``slot``'s lock path to ``target`` (0644, some text)."""
    target.write_text(TARGET_TEXT, encoding="utf-8")
    target.chmod(0o644)
    dirs.consumer_lock(slot).symlink_to(target)
    return os.stat(target)


def assert_untouched(dirs: StageDirs, slot: int, target: Path, before: os.stat_result) -> None:
    lock = dirs.consumer_lock(slot)
    assert lock.is_symlink() and os.readlink(lock) == str(target)
    after = os.stat(target)
    assert target.read_text(encoding="utf-8") == TARGET_TEXT  # not truncated
    assert (after.st_mode, after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


def run_worker_alone(kind: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``python -m gateway.workers worker KIND`` (the same ``register`` as ``missive``),
    not tied to a supervisor; killed after 60 s if it hangs instead of stopping."""
    environment = {k: v for k, v in os.environ.items() if k != "MISSIVE_SUPERVISOR_PID"}
    return subprocess.run(
        [sys.executable, "-m", "gateway.workers", "worker", kind, "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status 2, no traceback, exactly one line on stderr: that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.splitlines()
    return line


def test_a_worker_meeting_a_planted_link_exits_2_with_one_clear_line(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """The real ``missive worker agent`` (run as ``python -m gateway.workers``, the same
    ``register``), on a spool whose ``received/consumer.lock`` is a symbolic link."""
    config = write_site(tmp_path, dev_pki)
    dirs = received(config.gateway.spool_dir)
    target = tmp_path / "elsewhere.txt"
    before = plant_link(dirs, 0, target)
    result = run_worker_alone("agent", config.source)
    line = one_error_line(result)
    assert str(dirs.consumer_lock(0)) in line
    assert f"a symbolic link (to {target})" in line and "not followed" in line
    logged = [row for row in result.stdout.splitlines() if "event=spool.lock_unsafe" in row]
    assert len(logged) == 1 and "level=error" in logged[0]
    assert_untouched(dirs, 0, target, before)


def test_a_dangling_link_is_not_followed_to_create_its_target(tmp_path: Path) -> None:
    dirs = received(tmp_path / "spool")
    target = tmp_path / "would-be-created"
    dirs.consumer_lock(2).symlink_to(target)
    with pytest.raises(UnsafeLockFile, match="a symbolic link") as raised:
        ConsumerLock(dirs, 2).acquire()
    assert raised.value.status == 2 and raised.value.path == dirs.consumer_lock(2)
    assert not os.path.lexists(target) and dirs.consumer_lock(2).is_symlink()


def test_a_directory_or_a_fifo_at_the_lock_path_is_refused_and_left(tmp_path: Path) -> None:
    """A FIFO is not even opened (an open could block or wake a reader); a directory is
    not removed. Each stays what it was."""
    dirs = received(tmp_path / "spool")
    dirs.consumer_lock(0).mkdir()
    os.mkfifo(dirs.consumer_lock(1), 0o600)
    with pytest.raises(UnsafeLockFile, match="a directory"):
        ConsumerLock(dirs, 0).try_acquire()
    with pytest.raises(UnsafeLockFile, match=r"a named pipe \(FIFO\)"):
        ConsumerLock(dirs, 1).try_acquire()
    assert stat.S_ISDIR(os.lstat(dirs.consumer_lock(0)).st_mode)
    assert stat.S_ISFIFO(os.lstat(dirs.consumer_lock(1)).st_mode)


def test_adopting_orphans_of_a_slot_with_a_planted_link_stops_too(tmp_path: Path) -> None:
    """Slot 0 recovering the entries of a dead slot 3 meets slot 3's planted lock: the
    stage is tampered with, so it stops rather than skip it or follow it."""
    dirs = received(tmp_path / "spool")
    dirs.create_active(3)
    (dirs.active(3) / "01M8H4BQW0ZZ5NEQ3BDRMA3DYM").write_bytes(b"claimed by slot 3")
    target = tmp_path / "elsewhere.txt"
    before = plant_link(dirs, 3, target)
    with pytest.raises(UnsafeLockFile, match=r"consumer-3\.lock"):
        requeue_orphaned_slots(dirs, 0)
    assert_untouched(dirs, 3, target, before)
    assert os.listdir(dirs.active(3)) == ["01M8H4BQW0ZZ5NEQ3BDRMA3DYM"]


def test_the_relay_worker_reports_a_planted_link_in_one_line_too(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """The relay takes one lock per route inside a task group: the error reaches the
    command wrapped in an ``ExceptionGroup``, and is still one line and exit 2."""
    config = write_site(tmp_path, dev_pki)
    dirs = Layout(config.gateway.spool_dir).stage(relay_stage("clinique-b"))
    dirs.create()
    target = tmp_path / "elsewhere.txt"
    before = plant_link(dirs, 0, target)
    line = one_error_line(run_worker_alone("relay", config.source))
    assert str(dirs.consumer_lock(0)) in line and "not followed" in line
    assert_untouched(dirs, 0, target, before)

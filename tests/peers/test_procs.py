"""The process and port helpers every peer fixture relies on: a daemon that dies at start
fails at once with its status and log, one that hangs fails at the deadline and is killed,
one that ignores SIGTERM is killed with its children, a missing program skips locally and
fails under CI, and ports handed out are distinct and bindable."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.ports import LOOPBACK, free_ports
from tests.peers.procs import (
    PeerMissingError,
    PeerStartError,
    live_processes,
    make_temp_dir,
    read_greeting,
    remove_temp_dir,
    require_binary,
    spawn_daemon,
    start_process,
    stop_process,
)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    directory = make_temp_dir()
    yield directory
    remove_temp_dir(directory)


def test_temp_dir_is_short_and_enterable_by_daemon_users(work_dir: Path) -> None:
    assert work_dir.parent == Path("/tmp") and work_dir.name.startswith("mv-")
    assert work_dir.stat().st_mode & 0o777 == 0o755


def test_daemon_that_exits_at_start_fails_at_once_with_its_log(work_dir: Path) -> None:
    log = work_dir / "boom.log"
    with pytest.raises(PeerStartError, match=r"exited with status 3[\s\S]*boom on stderr"):
        spawn_daemon("boom", ["sh", "-c", "echo boom on stderr >&2; exit 3"], log, lambda: False)


def test_daemon_that_never_gets_ready_is_killed_at_the_deadline(work_dir: Path) -> None:
    log = work_dir / "hang.log"
    argv = ["sh", "-c", f"echo waiting; exec sleep 300 # {work_dir.name}"]
    with pytest.raises(PeerStartError, match=r"not ready after 0.3 s \(unexpected answer\)"):
        spawn_daemon("hang", argv, log, lambda: False, timeout=0.3)
    assert live_processes(marker=work_dir.name) == []


def test_sigterm_ignoring_daemon_and_children_are_killed(work_dir: Path) -> None:
    script = f"trap '' TERM; sleep 300 & sleep 300 & wait # {work_dir.name}"
    proc = start_process(["sh", "-c", script], work_dir / "stubborn.log")
    try:
        stop_process(proc, timeout=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
    assert live_processes(sessions=[proc.pid], groups=[proc.pid]) == []


def test_read_greeting_returns_the_first_line_and_says_goodbye() -> None:
    received: list[bytes] = []
    with socket.create_server((LOOPBACK, 0)) as server:
        server.settimeout(30)

        def serve_one() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"* OK hello\r\n")
                received.append(conn.recv(100))

        thread = threading.Thread(target=serve_one)
        thread.start()
        port = server.getsockname()[1]
        assert read_greeting(LOOPBACK, port, goodbye=b"a LOGOUT\r\n") == b"* OK hello\r\n"
        thread.join()
    assert received == [b"a LOGOUT\r\n"]


def test_missing_program_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "mv-no-such-program"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(PeerMissingError, match=missing):
        require_binary(missing)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=missing):
        require_binary(missing)
    assert require_binary("slapd").endswith("/slapd")


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    for port in ports:
        with socket.create_server((LOOPBACK, port)):
            pass

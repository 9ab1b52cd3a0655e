"""Start, wait for, and stop the external programs that tests talk to (slapd, Postfix, Dovecot...).

Role: the one place that knows how to run a throwaway daemon safely in a test.

Invariants every helper here keeps:
- A daemon starts in its own session (``start_new_session=True``), so its process group is
  the Popen PID and every child it forks can be killed with one ``killpg``; stdout and
  stderr go to a log file that failure messages quote (``log_tail``).
- "Ready" means the daemon answered in its own protocol (an SMTP/LMTP ``220``, an IMAP
  ``* OK``, an LDAP bind), not merely that the TCP port accepts: Dovecot's imap-login, for
  one, accepts before auth is up. While waiting, ``proc.poll()`` is checked on every try,
  so a daemon that dies at start fails at once with its exit status and log, and the
  deadline only bounds a daemon that hangs. Deadlines are never assertions on speed.
- Stopping is by PID, never by name: SIGTERM to the daemon (its own clean shutdown),
  wait, then SIGKILL to the process group(s) and to any non-zombie process left in the
  session. Zombies are skipped: when a master exits before its children, they become
  zombies of PID 1 until it reaps them, and they hold no port or file.
- Temp dirs come from ``make_temp_dir``: ``/tmp/mv-XXXXXXXX`` with mode 0755, because the
  daemons drop privileges (Dovecot's auth runs as another uid, Postfix daemons as
  ``postfix``) and cannot enter pytest's 0700 ``tmp_path`` chain; the path stays short
  because Dovecot's unix sockets must fit in 108 bytes.
- A missing program is a skip locally and a failure under ``CI=true`` (``require_binary``):
  a CI run never passes by silently skipping a peer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Extra directories searched for daemons (Debian installs them in sbin, not always on PATH).
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/lib/postfix/sbin")

DEFAULT_READY_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02


class PeerMissingError(RuntimeError):
    """A required external program is not installed (raised instead of skipping under CI)."""


class PeerStartError(RuntimeError):
    """A daemon exited or never became ready; the message carries its log tail."""


class PeerStopError(RuntimeError):
    """Processes of a daemon survived SIGKILL (should never happen; reported, not ignored)."""


def running_under_ci() -> bool:
    """True when the CI convention ``CI=true`` is set: missing peers then fail the run."""
    return os.environ.get("CI") == "true"


def find_binary(name: str) -> str | None:
    """Absolute path of ``name`` on PATH or in the sbin directories, or None."""
    search_path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN_DIRS])
    return shutil.which(name, path=search_path)


def require_binary(name: str) -> str:
    """Return the path of ``name``; skip the test if absent, or raise under ``CI=true``."""
    path = find_binary(name)
    if path is not None:
        return path
    reason = f"required program {name!r} is not installed (see scripts/ for the Debian peers)"
    if running_under_ci():
        raise PeerMissingError(reason)
    pytest.skip(reason)


def make_temp_dir(prefix: str = "mv-") -> Path:
    """Create ``/tmp/<prefix>XXXXXXXX`` with mode 0755 (daemons' own users must enter it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def remove_temp_dir(path: Path) -> None:
    """Remove a directory made by ``make_temp_dir`` (files may belong to daemon users)."""
    shutil.rmtree(path, ignore_errors=False)


def log_tail(log_path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file, or a note when there is none yet."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {log_path})"
    return "\n".join(text.splitlines()[-lines:])


def start_process(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, stdout+stderr appended to ``log_path``, stdin closed."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    *,
    name: str,
    log_path: Path,
    timeout: float = DEFAULT_READY_TIMEOUT,
) -> None:
    """Call ``probe`` until it returns True; fail fast if ``proc`` exits, or at the deadline.

    ``probe`` may raise ``OSError`` (connection refused, reset, timeout): that counts as
    "not ready yet" and the last error is quoted if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_problem = "no attempt made"
    while True:
        returncode = proc.poll()
        if returncode is not None:
            raise PeerStartError(
                f"{name} exited with status {returncode} before it was ready; "
                f"log {log_path}:\n{log_tail(log_path)}"
            )
        try:
            if probe():
                return
            last_problem = "unexpected answer"
        except OSError as error:
            last_problem = f"{type(error).__name__}: {error}"
        if time.monotonic() >= deadline:
            raise PeerStartError(
                f"{name} not ready after {timeout:g} s ({last_problem}); "
                f"log {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(POLL_INTERVAL)


def read_greeting(host: str, port: int, *, goodbye: bytes = b"", timeout: float = 2.0) -> bytes:
    """Connect, read the server's first line (CRLF included), send ``goodbye``, close."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        line = conn.makefile("rb").readline(4096)
        if goodbye and line:
            conn.sendall(goodbye)
    return line


def greeting_probe(
    host: str, port: int, expected_prefix: bytes, *, goodbye: bytes = b""
) -> Callable[[], bool]:
    """A ``wait_until_ready`` probe: the first line from ``host:port`` starts with the prefix.

    Examples: ``b"220"`` for SMTP/LMTP (RFC 5321 §4.2, RFC 2033), ``b"* OK"`` for IMAP
    (RFC 9051 §7.1.1). ``goodbye`` (``QUIT``, ``LOGOUT``) makes the probe a polite client.
    """

    def probe() -> bool:
        return read_greeting(host, port, goodbye=goodbye).startswith(expected_prefix)

    return probe


@dataclass(frozen=True)
class ProcInfo:
    """One line of the process table (from /proc/PID/stat and /proc/PID/cmdline)."""

    pid: int
    state: str
    pgid: int
    sid: int
    cmdline: str


def _read_proc(pid: int) -> ProcInfo | None:
    """Parse /proc/PID; None if the process vanished meanwhile."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        raw_cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = raw_cmdline.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()
    return ProcInfo(pid, fields[0], int(fields[2]), int(fields[3]), cmdline)


def process_table() -> list[ProcInfo]:
    """Every process visible in /proc."""
    infos = (_read_proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [info for info in infos if info is not None]


def live_processes(
    *, sessions: Sequence[int] = (), groups: Sequence[int] = (), marker: str | None = None
) -> list[ProcInfo]:
    """Non-zombie processes in one of ``sessions``/``groups``, or whose cmdline has ``marker``."""
    own_pid = os.getpid()
    found = []
    for info in process_table():
        if info.pid == own_pid or info.state in ("Z", "X"):
            continue
        by_marker = marker is not None and marker in info.cmdline
        if info.sid in sessions or info.pgid in groups or by_marker:
            found.append(info)
    return found


def _signal_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_pid_gone(pid: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``pid`` to exit (reaping it if it is ``proc``); True if it did."""
    if pid == proc.pid:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _read_proc(pid)
        if info is None or info.state in ("Z", "X"):
            return True
        time.sleep(POLL_INTERVAL)
    return False


def stop_process(
    proc: subprocess.Popen[bytes],
    *,
    daemon_pid: int | None = None,
    timeout: float = DEFAULT_STOP_TIMEOUT,
) -> None:
    """Stop a daemon started by ``start_process`` and everything it forked.

    SIGTERM goes to ``daemon_pid`` (the master, when the Popen PID is a launcher script)
    or to the Popen PID; after it exits (or ``timeout``), SIGKILL goes to the process
    groups of both and to any non-zombie left in their sessions. The Popen is always
    reaped, so no ResourceWarning escapes (pytest runs with filterwarnings=error).
    """
    target = daemon_pid if daemon_pid is not None else proc.pid
    if proc.poll() is None or target != proc.pid:
        _signal_pid(target, signal.SIGTERM)
        _wait_pid_gone(target, proc, timeout)
    leaders = sorted({proc.pid, target})
    for pgid in leaders:
        _signal_group(pgid, signal.SIGKILL)
    for info in live_processes(sessions=leaders, groups=leaders):
        _signal_pid(info.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=timeout)
    _wait_no_leftovers(leaders, timeout)


def _wait_no_leftovers(leaders: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = live_processes(sessions=leaders, groups=leaders)
        if not left:
            return
        if time.monotonic() >= deadline:
            described = ", ".join(f"{p.pid} {p.cmdline!r}" for p in left)
            raise PeerStopError(f"processes survived SIGKILL: {described}")
        time.sleep(POLL_INTERVAL)


@dataclass
class DaemonProcess:
    """A running daemon: its Popen, the PID to signal, its log. ``stop()`` is idempotent."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    daemon_pid: int | None = None
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        """PID that receives SIGTERM (the master daemon)."""
        return self.daemon_pid if self.daemon_pid is not None else self.proc.pid

    def running(self) -> bool:
        """True while the daemon process has not exited."""
        return not self.stopped and self.proc.poll() is None

    def log(self, lines: int = 40) -> str:
        """Tail of the daemon's log, for assertion and failure messages."""
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM, wait, SIGKILL the group; safe to call twice."""
        if self.stopped:
            return
        try:
            stop_process(self.proc, daemon_pid=self.daemon_pid, timeout=timeout)
        finally:
            self.stopped = True


def spawn_daemon(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    probe: Callable[[], bool],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = DEFAULT_READY_TIMEOUT,
) -> DaemonProcess:
    """Start ``argv`` and wait until ``probe`` succeeds; on failure nothing is left running."""
    proc = start_process(argv, log_path, env=env, cwd=cwd)
    daemon = DaemonProcess(name, proc, log_path)
    try:
        wait_until_ready(proc, probe, name=name, log_path=log_path, timeout=timeout)
    except BaseException:
        daemon.stop()
        raise
    return daemon

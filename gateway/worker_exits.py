"""How ``serve``'s supervisor tells a worker's end: one log event per cause, and the
configuration-error streak (``gateway.workers.WorkerGroup`` uses these).

How a worker ended decides its log line (decision; one event name per cause, each with
``worker``, ``kind``, ``pid``, ``status``, ``restart_in`` and a ``hint``):

- killed by a signal (``returncode`` < 0): ``worker.killed signal=SIGKILL`` (error; the
  hint names the OOM killer for SIGKILL, a native crash for SIGSEGV/SIGBUS/SIGABRT);
- exit 1 or any status but 0 and 2 (a bug's traceback, a negative answer):
  ``worker.crashed`` (error), its problem lines (below) in ``problems`` if it had some;
- exit 0 while the group runs (it was stopped from outside ``serve``): ``worker.exited``
  (warning);
- exit 2 (``gateway.cli`` convention: a usage or configuration error; a configuration
  file edited with a mistake after ``serve`` started, a broken key file that only the
  agents load): ``worker.config_error`` (error) with ``problems`` (the worker's own
  lines), ``config`` (the file) and the hint "fix the configuration (missive
  check-config FILE); the worker is retried every 30.0s, serve needs no restart".

A configuration error does not fix itself by retrying fast, and it stops a stage while
``serve`` still looks up: the worker is retried at the longest back-off (``BACKOFF_MAX``, so a
fixed file is picked up within 30 s without restarting ``serve``), and the *streak* is
logged once, not a line per retry (a ``worker.config_error_retry`` debug line each
time): again only when its problems change (the file was edited, still wrong) or every
``CONFIG_ERROR_REMINDER`` (an hour, with ``failing_for`` and ``retries``), so that a log
rotated or read later still shows that the stage is down. The streak ends once a
restarted worker has run for ``RECOVERED_AFTER`` seconds (a configuration error exits
within a second or two of the start): ``worker.recovered failing_for=… retries=…``
(info), and the back-off starts again from ``BACKOFF_FIRST``; or when the worker ends
in another way (that exit's own line).

Problem lines (``PROBLEMS_ENV``): a worker that ``serve`` started writes the lines of a
``MissiveError`` to a file named by this variable (in a private directory of the
supervisor: ``mkdtemp``, mode 0700, made at ``start`` and removed by ``aclose``) and
exits with its status without printing them on stderr; the supervisor reads at most
``PROBLEMS_MAX_BYTES`` of it into the exit's log line, where ``gateway.log`` quotes
them (no forged line). So a streak's problems are in the log once, not repeated on
stderr every 30 s. A worker started by hand (no variable), or one that cannot write
the file (no directory could be made, a ``/tmp`` cleaner removed it), prints them on
stderr as before. Tracebacks (a bug) still go to the inherited stderr as they happen.
The lines are those ``missive check-config`` prints: paths and key names, no secret.

Trust level: runs in the supervisor (``serve``) and, for ``report_problems``, in the
worker; handles problem lines (paths and key names), never a secret.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from gateway.errors import MissiveError

CONFIG_ERROR_STATUS = 2  # gateway.cli convention: a usage or configuration error
CONFIG_ERROR_REMINDER = 3600.0  # seconds between two log lines of one streak
PROBLEMS_ENV = "MISSIVE_WORKER_PROBLEMS"  # where a supervised worker writes its problems
PROBLEMS_MAX_BYTES = 16384  # the supervisor reads at most this much of a problems file
RETRY_EVERY = 30.0  # the supervisor's longest back-off (``gateway.workers.BACKOFF_MAX``)


def report_problems(path: Path, error: MissiveError) -> bool:
    """Write ``error``'s problem lines to ``path`` for the supervisor; False if it cannot
    be written (the caller then prints them on stderr)."""
    text = "".join(f"{problem}\n" for problem in error.problems)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as output:
            output.write(text)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class ExitReport:
    """The log line of one worker exit (module docstring): event, level, fixed fields."""

    event: str
    level: Literal["warning", "error"]
    fields: dict[str, Any]


_SIGNAL_HINTS = {
    "SIGKILL": "killed by SIGKILL: the kernel's out-of-memory killer (see dmesg) or an operator",
    "SIGSEGV": "a crash in native code (see the kernel log)",
    "SIGBUS": "a crash in native code (see the kernel log)",
    "SIGABRT": "a crash in native code (see the kernel log)",
}


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; the number itself for one Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def exit_report(status: int, *, retry_every: float = RETRY_EVERY) -> ExitReport:
    """How to log a worker's exit ``status`` (``asyncio`` returncode: -N for signal N)."""
    if status < 0:
        name = signal_name(-status)
        hint = _SIGNAL_HINTS.get(name, "killed by a signal it does not handle")
        return ExitReport("worker.killed", "error", {"signal": name, "hint": hint})
    if status == 0:
        hint = "it stopped on its own, as on a SIGTERM that serve did not send"
        return ExitReport("worker.exited", "warning", {"hint": hint})
    if status == CONFIG_ERROR_STATUS:
        hint = (
            "fix the configuration (missive check-config FILE); the worker is retried "
            f"every {retry_every:.1f}s, serve needs no restart"
        )
        return ExitReport("worker.config_error", "error", {"hint": hint})
    hint = "see its problems, or its traceback on stderr just before this line"
    return ExitReport("worker.crashed", "error", {"hint": hint})


@dataclass(frozen=True)
class ConfigErrorStreak:
    """Consecutive configuration-error exits of one worker (module docstring)."""

    problems: tuple[str, ...]
    since: float  # time.monotonic() of the first exit 2
    logged_at: float  # ... of the last one logged
    retries: int = 0


def next_streak(
    streak: ConfigErrorStreak | None,
    problems: tuple[str, ...],
    now: float,
    reminder: float = CONFIG_ERROR_REMINDER,
) -> tuple[ConfigErrorStreak, bool]:
    """The streak after one more exit 2 with ``problems`` at ``now``, and whether to log
    it: the first exit 2, other problems than the last logged ones, or ``reminder``
    seconds since that line."""
    if streak is None:
        return ConfigErrorStreak(problems, since=now, logged_at=now), True
    retried = replace(streak, retries=streak.retries + 1)
    if problems != streak.problems or now - streak.logged_at >= reminder:
        return replace(retried, problems=problems, logged_at=now), True
    return retried, False


def config_file_of(argv: Sequence[str]) -> str | None:
    """The ``--config FILE`` of a worker's command line, if it has one."""
    for option, value in itertools.pairwise(argv):
        if option == "--config":
            return value
    return None


def read_problems(path: Path | None) -> tuple[str, ...]:
    """The problem lines a worker left in ``path`` (then removed), or none."""
    if path is None:
        return ()
    try:
        with path.open("rb") as source:
            data = source.read(PROBLEMS_MAX_BYTES)
        path.unlink()
    except OSError:  # no file: the worker did not report (a bug, a signal, exit 0)
        return ()
    lines = data.decode("utf-8", "replace").splitlines()
    return tuple(line.strip() for line in lines if line.strip())

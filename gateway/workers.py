"""Worker processes: ``missive worker agent|relay|inbound|delivery|imap|front``, and the
one place the worker API is imported from.

Role (ARCHITECTURE "Each stage can run as its own process"; STYLE §9, least privilege by
process): the secure agent, the relay, the inbound agent, local delivery, the IMAP
fetchers and the extra SMTP fronts each run in processes of their own, started by
``missive serve`` through ``start_workers`` and supervised there. This module is the
command that such a process runs: ``missive worker KIND --config FILE [--slot K]``
(``register``, ``run_worker``), also runnable as ``python -m gateway.workers worker ...``
(``main``: the same command without ``gateway.cli``).

The worker code is split by concern (STYLE 11; a pure move, every definition unchanged;
checked by comparing the ``ast.dump`` of each definition and method, old and new)::

    workers (here)   the command: parse, check --slot, load the configuration with or
                     without private keys, report a MissiveError (run_worker,
                     user_errors_of, checked_slot, checked_front_slot, main)
    worker_runtime   inside a worker: the kinds and what each may hold, serve_worker,
                     the orphan check, stop_on_signals
    worker_group     the supervisor in serve: Worker, WorkerGroup (restart back-off,
                     stop in two rounds, problems files)
    worker_plan      which workers serve starts: WorkerCounts, worker_commands,
                     crypto_worker_count, start_workers
    worker_exits     how a worker's end is logged, the configuration-error streak

Every public name defined here before the split still is importable from here
(``__all__``); the module logger and the private helpers moved with the code that uses
them. No test patches a name of this module; one that patches a worker function must
patch it in the module that looks it up (named above), or it silently stops testing.

Invariants: each worker stops cleanly on SIGTERM or SIGINT (``gateway.worker_runtime``)
and exits 0. A ``MissiveError`` (a configuration or usage error: exit 2) ends it with
the error's status and one line per problem (``gateway.cli`` convention), never a
traceback: printed on stderr, or written to the supervisor's problems file when
``serve`` gave one (``PROBLEMS_ENV``, ``gateway.worker_exits``). A ``MissiveError``
raised inside a stage's task group is reported the same way (``user_errors_of``); any
other exception keeps its traceback. ``--slot K`` is 0 to ``CONSUMER_SLOTS`` - 1, only
for a kind that takes a slot, and for ``front`` below ``[gateway] front_workers``.

Trust level: a worker holds what its kind loads (``gateway.worker_runtime``): only
``agent`` and ``inbound`` load S/MIME private keys (``KEY_HOLDERS``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.cli_common import SubParsers, add_config_argument
from gateway.config import Config, load_config
from gateway.errors import MissiveError, UsageError
from gateway.log import setup_logging
from gateway.spool.layout import CONSUMER_SLOTS
from gateway.worker_exits import PROBLEMS_ENV, report_problems
from gateway.worker_group import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    RECOVERED_AFTER,
    STABLE_AFTER,
    STOP_TIMEOUT,
    Worker,
    WorkerGroup,
)
from gateway.worker_plan import (
    DEFAULT_PROGRAM,
    WorkerCounts,
    crypto_worker_count,
    start_workers,
    worker_commands,
)
from gateway.worker_runtime import (
    CRYPTO_KINDS,
    KEY_HOLDERS,
    KINDS,
    ORPHAN_CHECK_EVERY,
    QUEUE_CONSUMERS,
    SLOTTED,
    STOP_SIGNALS,
    SUPERVISOR_ENV,
    WorkerKind,
    serve_worker,
    stop_on_signals,
    stop_when_orphaned,
    supervisor_pid,
)

# -- missive worker KIND ----------------------------------------------------------------


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run one worker process (agent, relay, inbound, delivery, imap, front); "
        "missive serve starts them",
        description=(
            "Run one stage of the gateway in the foreground until SIGTERM or Ctrl-C: "
            "'agent' signs and encrypts queued mail, 'relay' delivers it to the next hops, "
            "'inbound' decrypts and verifies mail for local domains, 'delivery' hands it to "
            "the local mail store, 'imap' fetches partner mailboxes, 'front' is one more SMTP "
            "front process on the listeners ([gateway] front_workers). Only 'agent' and "
            "'inbound' load private keys."
        ),
    )
    parser.add_argument("kind", choices=KINDS, help="which stage to run")
    add_config_argument(parser)
    parser.add_argument(
        "--slot",
        type=int,
        default=0,
        metavar="K",
        help=(
            f"consumer slot (0 to {CONSUMER_SLOTS - 1}; default 0): workers of different "
            "slots share the stage's queue, a second worker of one slot waits as a standby; "
            "for 'front', its share of the listener limits (below [gateway] front_workers)"
        ),
    )
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    """``missive worker KIND``: run the stage; a ``MissiveError`` goes to the supervisor's
    problems file when ``serve`` gave one (``PROBLEMS_ENV``), else to ``gateway.cli``
    (one line per problem on stderr). Either way the exit status is the error's."""
    problems_file = os.environ.pop(PROBLEMS_ENV, "")  # not for the worker's own children
    try:
        return _run_worker(args)
    except MissiveError as error:
        if not problems_file or not report_problems(Path(problems_file), error):
            raise
        return error.status


def _run_worker(args: argparse.Namespace) -> int:
    kind: WorkerKind = args.kind
    slot = checked_slot(kind, args.slot)
    config = load_config(args.config, agent_keys=kind in KEY_HOLDERS)
    if kind == "front":
        checked_front_slot(config, slot)
    setup_logging(config.gateway.log_level)
    try:
        asyncio.run(serve_worker(kind, config, slot=slot))
    except ExceptionGroup as group:  # a stage's task group (the relay's routes)
        reported = user_errors_of(group)
        if reported is None:
            raise
        raise reported from None
    return 0


def user_errors_of(group: BaseExceptionGroup[BaseException]) -> MissiveError | None:
    """The ``MissiveError`` to report for ``group`` when every exception in it is one
    (a planted consumer lock met by the relay's per-route task group, say): one line per
    problem, the first one's exit status, never a traceback. None when any other
    exception is in it: that is a bug, and its traceback is wanted."""
    errors, others = group.split(MissiveError)
    if errors is None or others is not None:
        return None
    leaves = list(_leaves(errors))
    problems = dict.fromkeys(problem for error in leaves for problem in error.problems)
    first = leaves[0]
    reported = MissiveError(tuple(problems))
    reported.status = first.status
    return reported


def _leaves(group: BaseExceptionGroup[MissiveError]) -> list[MissiveError]:
    found: list[MissiveError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found.extend(_leaves(error))
        else:
            found.append(error)
    return found


def checked_slot(kind: WorkerKind, slot: int) -> int:
    """``slot`` if ``kind`` can run in it; ``UsageError`` (exit 2) otherwise."""
    if not 0 <= slot < CONSUMER_SLOTS:
        raise UsageError(f"--slot: expected 0 to {CONSUMER_SLOTS - 1}, got {slot}")
    if slot and kind not in SLOTTED:
        raise UsageError(f"--slot: the {kind} worker consumes no queue; it takes no slot")
    return slot


def checked_front_slot(config: Config, slot: int) -> int:
    """``slot`` if it is one of the ``[gateway] front_workers`` front processes' slots."""
    processes = config.gateway.front_workers
    if slot >= processes:
        raise UsageError(
            f"--slot: front slot {slot} needs [gateway] front_workers > {slot} "
            f"(it is {processes} in {config.source})"
        )
    return slot


# -- python -m gateway.workers (the same command without gateway.cli) ---------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.workers worker KIND --config FILE [--slot K]``."""
    parser = argparse.ArgumentParser(prog="missive")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except MissiveError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return error.status
    return status


__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "CRYPTO_KINDS",
    "DEFAULT_PROGRAM",
    "KEY_HOLDERS",
    "KINDS",
    "ORPHAN_CHECK_EVERY",
    "QUEUE_CONSUMERS",
    "RECOVERED_AFTER",
    "SLOTTED",
    "STABLE_AFTER",
    "STOP_SIGNALS",
    "STOP_TIMEOUT",
    "SUPERVISOR_ENV",
    "Worker",
    "WorkerCounts",
    "WorkerGroup",
    "WorkerKind",
    "checked_front_slot",
    "checked_slot",
    "crypto_worker_count",
    "main",
    "register",
    "run_worker",
    "serve_worker",
    "start_workers",
    "stop_on_signals",
    "stop_when_orphaned",
    "supervisor_pid",
    "user_errors_of",
    "worker_commands",
]


if __name__ == "__main__":
    sys.exit(main())

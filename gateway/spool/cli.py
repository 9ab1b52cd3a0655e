"""``missive queue list|show|retry|hold|release|delete``: the operator's view of the spool.

All actions are safe while the gateway runs: each one is a single ``rename`` (or, for
``delete``, a rename out of the queue followed by an unlink) that happens entirely or
not at all, and an entry in ``active/`` - being processed by a stage right now - is
refused with a clear message and exit status 1 (try again once it has left). Reading
(``list``, ``show``) never changes anything in the spool.

- ``list`` [--stage S] [--state S]: one line per entry: id, stage, state, age (since
  first accepted), content size, sender, number of recipients, next attempt.
  Unreadable files are listed too, with the reason. An entry held by the consumer of
  slot K >= 1 shows the state ``active/K`` (its directory, ``gateway.spool.layout``).
- ``show ID``: envelope, origin, per-recipient state, then the header section only;
  ``--full`` prints the whole message instead of the headers (bytes as stored when
  the output is a file or a pipe). What a peer wrote never drives the operator's
  terminal: the header section, and the whole message when the output is a terminal,
  are shown with every control character escaped (``display.terminal_text``). A file
  whose record names another queue id (copied or renamed) is unreadable, as ``list``
  says, outside ``corrupt/`` (where the queue renames files ``ID.1``...).
  Each ``show`` is recorded in the audit trail (``spool.viewed``) *before* anything
  is printed: headers carry the Subject, which often names a patient, and health-data
  rules ask that access to it be traced.
- ``retry ID``: ``deferred/`` -> ``incoming/`` (try now).
- ``hold ID [--reason T]``: ``incoming/`` or ``deferred/`` -> ``hold/``.
- ``release ID``: ``hold/`` -> ``incoming/``.
- ``delete ID --yes [--reason T]``: removes an entry from ``incoming/``, ``deferred/``,
  ``hold/`` or ``corrupt/`` (there the name ``list`` shows). Decision: no question is
  asked (it would hang a script), but ``--yes`` is required, because the message is
  lost for good; no DSN is sent (``hold`` keeps a message out of the way instead).

Every change (hold, release, retry, delete) is recorded in the audit trail with the
operator (``cli:<user>``) as actor; if the event cannot be recorded, the change is
undone and the command fails (exit 2).

Where: ``--config FILE`` gives ``[gateway] spool_dir`` and ``[audit] path``;
``--spool DIR`` and ``--audit-db PATH`` override them, and the configuration is read
only when a value is still missing (``list`` needs no audit trail). The audit database
must exist already: an action recorded in a new, empty database (a mistyped path) would
be traced nowhere anyone reads, and one created by root would be unwritable for the
gateway's user. Exit status: 0 ok, 1 the entry cannot be acted on in its current
state, 2 usage or configuration error (no such entry, no such spool, no audit
database, missing ``--yes``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from gateway.audit import AuditEvent, AuditSink
from gateway.audit.event import MAX_TEXT_BYTES
from gateway.cli_common import SubParsers, add_config_argument, load_config_from_args
from gateway.errors import UsageError
from gateway.spool.display import TerminalText, describe, list_row, printable, table, terminal_text
from gateway.spool.entry import EntryReader
from gateway.spool.errors import CorruptEntry, EntryNotFound, EntryStateError
from gateway.spool.events import AuditTrail, entry_event
from gateway.spool.layout import STATES, State, check_stage_name
from gateway.spool.queue import Queue, check_entry_name
from gateway.spool.spooldir import Spool
from gateway.spool.stagefiles import EntryInfo

_CLI_IO_THREADS = 2


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``missive queue`` and its actions."""
    queue = subparsers.add_parser(
        "queue",
        help="list, show, retry, hold, release or delete spooled messages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = queue.add_subparsers(dest="queue_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="one line per queued message")
    _add_source_arguments(listing)
    listing.add_argument("--stage", help="only this stage (received, relay/<route>, ...)")
    listing.add_argument("--state", choices=STATES, help="only this state")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="envelope, state and headers of one message")
    _add_source_arguments(show)
    show.add_argument("queue_id", metavar="ID")
    show.add_argument("--full", action="store_true", help="print the whole message")
    show.set_defaults(handler=run_show)

    for name, helptext, handler in (
        ("retry", "deferred -> incoming: try again now", run_retry),
        ("release", "hold -> incoming", run_release),
    ):
        parser = actions.add_parser(name, help=helptext)
        _add_source_arguments(parser)
        parser.add_argument("queue_id", metavar="ID")
        parser.set_defaults(handler=handler)

    hold = actions.add_parser("hold", help="incoming or deferred -> hold")
    _add_source_arguments(hold)
    hold.add_argument("queue_id", metavar="ID")
    hold.add_argument("--reason", default="held by an operator", help="kept in the audit trail")
    hold.set_defaults(handler=run_hold)

    delete = actions.add_parser("delete", help="remove a message for good (needs --yes)")
    _add_source_arguments(delete)
    delete.add_argument("queue_id", metavar="ID")
    delete.add_argument("--yes", action="store_true", help="confirm: the message is lost")
    delete.add_argument("--reason", default="deleted by an operator", help="kept in the trail")
    delete.set_defaults(handler=run_delete)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--spool", type=Path, metavar="DIR", help="spool directory instead of --config's"
    )
    parser.add_argument(
        "--audit-db", type=Path, metavar="PATH", help="audit database instead of --config's"
    )


# -- where the spool and the trail are -------------------------------------------------


def _locations(args: argparse.Namespace, *, audit: bool) -> tuple[Path, Path | None]:
    spool: Path | None = args.spool
    trail: Path | None = args.audit_db
    if spool is None or (audit and trail is None):
        config = load_config_from_args(args)
        spool = spool or config.gateway.spool_dir
        trail = trail or config.audit.path
    if not spool.is_dir():
        raise UsageError(f"spool directory {spool} does not exist (has the gateway run yet?)")
    if audit and trail is not None and not os.path.lexists(trail):
        raise UsageError(
            f"audit database {trail} does not exist (has the gateway run yet?); "
            "missive queue records into the gateway's trail, it never starts a new one"
        )
    return spool, trail if audit else None


def cli_actor() -> str:
    """``cli:<login>`` of the real user id (not of $USER, which anyone can set)."""
    try:
        return f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return f"cli:uid={os.getuid()}"


class _ReadOnlyTrail:
    """For ``list``: nothing may be recorded, because nothing may change."""

    async def record(self, event: AuditEvent) -> object:
        raise RuntimeError(f"queue list must not record {event.type}")


@asynccontextmanager
async def _open_spool(
    args: argparse.Namespace, *, audit: bool, look_only: bool = False
) -> AsyncIterator[Spool]:
    """The spool of ``args``; ``look_only`` (list, show): no directory created or chmod'ed,
    whoever runs the command (a root-owned directory in a spool the gateway's user owns
    would stop the gateway from writing there)."""
    root, trail_path = _locations(args, audit=audit)
    sink = AuditSink(trail_path) if trail_path is not None else None
    trail: AuditTrail = sink if sink is not None else _ReadOnlyTrail()
    if sink is not None:
        sink.start()
    try:
        spool = Spool(
            root,
            audit=trail,
            actor=cli_actor(),
            max_message_size=0,
            io_threads=_CLI_IO_THREADS,
            create=not look_only,
        )
        try:
            yield spool
        finally:
            await spool.aclose()
    finally:
        if sink is not None:
            await sink.aclose()


async def _find(spool: Spool, name: str) -> tuple[Queue, State]:
    found = await spool.find(name)
    if found is None:
        raise EntryNotFound(f"no entry {printable(name)} in {spool.layout.root}")
    return found


# -- list ------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    stage = _checked_stage(args.stage)
    infos = asyncio.run(_list(args, stage, args.state))
    now = datetime.now(UTC)
    rows = [list_row(info, now) for info in infos]
    header = ("QUEUE ID", "STAGE", "STATE", "AGE", "SIZE", "SENDER", "RCPTS", "NEXT ATTEMPT")
    for line in table([header, *rows]):
        print(line)
    print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
    return 0


def _checked_stage(stage: str | None) -> str | None:
    if stage is None:
        return None
    try:
        return check_stage_name(stage)
    except ValueError as error:
        raise UsageError(f"--stage: {error}") from None


async def _list(
    args: argparse.Namespace, stage: str | None, state: State | None
) -> list[EntryInfo]:
    async with _open_spool(args, audit=False, look_only=True) as spool:
        stages = [name for name in spool.stages() if stage is None or name == stage]
        found: list[EntryInfo] = []
        for name in stages:
            queue = spool.queue(name)
            for each in STATES if state is None else (state,):
                found.extend(await queue.scan(each))
        return found


# -- show ------------------------------------------------------------------------------


def run_show(args: argparse.Namespace) -> int:
    name = check_entry_name(args.queue_id)
    return asyncio.run(_show(args, name, full=args.full))


async def _show(args: argparse.Namespace, name: str, *, full: bool) -> int:
    async with _open_spool(args, audit=True, look_only=True) as spool:
        queue, _ = await _find(spool, name)
        found = await queue.locate_path(name)
        if found is None:
            raise EntryStateError(f"{name} moved or was removed meanwhile; try again")
        state, path = found
        try:
            reader = _open_entry(path, name, state)
        except FileNotFoundError:
            raise EntryStateError(f"{name} moved or was removed meanwhile; try again") from None
        except CorruptEntry as error:
            where = f"{name} in {queue.name}/{state}/"
            print(printable(f"{where} is unreadable: {error.reason}"), file=sys.stderr)
            return 1
        with reader:
            event = entry_event(
                "viewed",
                stage=queue.name,
                actor=spool.actor,
                queue_id=name,
                record=reader.record,
                outcome="shown",
                details={"part": "full" if full else "headers", "state": state},
            )
            await spool.audit.record(event)
            for line in describe(reader.record, queue.name, state):
                print(printable(line))
            return _print_content(reader, full=full)


def _open_entry(path: Path, name: str, state: State) -> EntryReader:
    """The open entry ``path``; ``CorruptEntry`` also if its record names another queue
    id than ``name``, except in ``corrupt/`` (module docstring)."""
    reader = EntryReader(path)
    found = reader.record.queue_id
    if state != "corrupt" and found != name:
        reader.close()
        raise CorruptEntry(f"file name {name} differs from the queue id {found} inside")
    return reader


def _print_content(reader: EntryReader, *, full: bool) -> int:
    out: BinaryIO = sys.stdout.buffer
    sys.stdout.flush()
    if not full:
        headers, complete = reader.headers()
        out.write(b"\n--- headers ---\n" + _for_terminal(terminal_text(headers)))
        if not complete:
            out.write(b"\n[header section longer than shown]\n")
        out.flush()
        return 0
    out.write(b"\n--- message ---\n")
    escape = TerminalText().feed if sys.stdout.isatty() else None
    try:
        for chunk in reader.chunks():
            out.write(chunk if escape is None else _for_terminal(escape(chunk)))
        if escape is not None:
            out.write(_for_terminal(escape(b"", final=True)))
    except CorruptEntry as error:
        out.flush()
        print(f"\nstopped: {error.reason}", file=sys.stderr)
        return 1
    out.flush()
    return 0


def _for_terminal(text: str) -> bytes:
    """``text`` in the output's encoding; what it cannot encode as ``\\uXXXX``."""
    return text.encode(sys.stdout.encoding or "utf-8", errors="backslashreplace")


# -- changes ---------------------------------------------------------------------------


Operation = Callable[[Queue, str], Awaitable[None]]


def run_retry(args: argparse.Namespace) -> int:
    return _change(args, lambda queue, name: queue.retry(name), "retried: now in incoming/")


def run_release(args: argparse.Namespace) -> int:
    return _change(args, lambda queue, name: queue.release(name), "released: now in incoming/")


def run_hold(args: argparse.Namespace) -> int:
    reason = _checked_reason(args.reason)
    return _change(args, lambda queue, name: queue.hold(name, reason), "held: now in hold/")


def run_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UsageError(
            f"queue delete {args.queue_id}: the message would be lost for good; "
            "add --yes to confirm (or use `missive queue hold`)"
        )
    reason = _checked_reason(args.reason)
    return _change(args, lambda queue, name: queue.delete(name, reason), "deleted")


def _checked_reason(reason: str) -> str:
    """``--reason`` if the audit trail can keep it (``MAX_TEXT_BYTES`` in UTF-8)."""
    size = len(reason.encode("utf-8", errors="backslashreplace"))
    if size > MAX_TEXT_BYTES:
        raise UsageError(f"--reason: {size} bytes, the audit trail keeps at most {MAX_TEXT_BYTES}")
    return reason


def _change(args: argparse.Namespace, operation: Operation, done: str) -> int:
    name = check_entry_name(args.queue_id)
    stage = asyncio.run(_apply(args, name, operation))
    print(f"{printable(name)} ({stage}): {done}")
    return 0


async def _apply(args: argparse.Namespace, name: str, operation: Operation) -> str:
    async with _open_spool(args, audit=True) as spool:
        queue, _ = await _find(spool, name)
        await operation(queue, name)
        return queue.name

"""``missive audit verify|export|prune``: the operator's and the auditor's commands.

- ``verify`` walks the whole chain and prints ``OK: N records, head seq=S hash=H``
  (exit 0) or ``BROKEN at seq S: why`` (exit 1). Note the head somewhere else (a
  ticket, another host): given back with ``--anchor S:H`` it detects a rewritten or
  truncated history, which a hash chain alone cannot (see ``gateway.audit.chain``).
- ``export`` writes records with ``--since <= time < --until`` as ``csv`` or ``jsonl``
  in UTF-8 to stdout or to a new file (``--output``, created 0600, never overwritten,
  removed again if the export fails: a partial CSV would look complete). Times
  are ISO 8601 dates or date-times, UTC when no offset is given; a date alone as
  ``--until`` includes that whole day. It verifies the chain first, in the same pass
  and read snapshot (``gateway.audit.export.export_verified``: the whole trail, not
  only the range), and takes ``--anchor`` as ``verify`` does. On a break it writes
  nothing and exits 1 with ``verify``'s lines on stderr; ``--allow-broken`` writes the
  export anyway, opened by an ``UNVERIFIED EXPORT`` line saying where the chain broke
  (still exit 1). A sound export is byte-for-byte what it always was, and stderr stays
  empty but for notes: a range reaching before the last prune's cutoff (those records
  are gone), and the anchor's outcome. The export is built in a private temporary
  buffer (memory, then an unnamed 0600 file in the temporary directory) and copied
  out once verified, so stdout never receives records of a trail that then fails.
- ``prune`` applies ``[audit] retention``: deletes the records older than now minus
  the retention and appends a checkpoint record (the chain still verifies). It
  refuses to prune a trail that does not verify (exit 1), and a ``--before`` in the
  future (exit 2: it would delete the records being written, today's evidence).

The database is ``[audit] path`` of ``--config FILE``; ``--db PATH`` names it directly
instead (then ``prune`` needs ``--before``). A missing database is exit 2 with a clear
message: readers never create one. Exit status: 0 ok, 1 broken trail, 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import codecs
import getpass
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO, cast

from gateway.audit.chain import Anchor, VerifyReport
from gateway.audit.export import (
    EXPORT_FORMATS,
    UNVERIFIED_MARK,
    ExportFormat,
    ExportOutcome,
    TimeRange,
    export_verified,
    unverified_notice,
)
from gateway.audit.record import RecordFormatError
from gateway.audit.store import AuditChainBroken, AuditStore, PruneResult
from gateway.cli_common import SubParsers, add_config_argument, load_config_from_args
from gateway.errors import UsageError

_TIME_HELP = "ISO 8601 date or date-time, UTC unless an offset is given"


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``missive audit`` and its actions."""
    audit = subparsers.add_parser(
        "audit", help="verify, export and prune the audit trail", description=__doc__
    )
    actions = audit.add_subparsers(dest="audit_action", metavar="ACTION", required=True)

    verify = actions.add_parser("verify", help="check the hash chain; print the head")
    _add_source_arguments(verify)
    _add_anchor_argument(verify)
    verify.set_defaults(handler=run_verify)

    export = actions.add_parser("export", help="write records as csv or jsonl")
    _add_source_arguments(export)
    export.add_argument("--since", metavar="T", help=f"first time included ({_TIME_HELP})")
    export.add_argument(
        "--until", metavar="T", help=f"end time, excluded; a date includes that day ({_TIME_HELP})"
    )
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="export_format")
    export.add_argument("--output", type=Path, metavar="FILE", help="new file (default: stdout)")
    _add_anchor_argument(export)
    export.add_argument(
        "--allow-broken",
        action="store_true",
        help="export even if the chain does not verify; the file then opens with an "
        "UNVERIFIED EXPORT line saying where it broke (exit status still 1)",
    )
    export.set_defaults(handler=run_export)

    prune = actions.add_parser("prune", help="apply the retention, leaving a checkpoint")
    _add_source_arguments(prune)
    prune.add_argument(
        "--before",
        metavar="T",
        help=f"cutoff instead of now minus [audit] retention ({_TIME_HELP})",
    )
    prune.set_defaults(handler=run_prune)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--db", type=Path, metavar="PATH", help="audit database to use instead of --config's"
    )


def _add_anchor_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--anchor",
        metavar="SEQ:HASH",
        help="a head noted earlier: fail if that record changed or the trail ends before it",
    )


# -- helpers ---------------------------------------------------------------------------


def parse_time_bound(text: str, option: str, *, end_of_day: bool = False) -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (UTC if no offset).

    A date alone is midnight UTC; with ``end_of_day`` the next midnight, so an
    exclusive ``--until 2026-11-30`` still includes the 30th.
    """
    try:
        return _parse_instant(text, end_of_day=end_of_day)
    except (ValueError, OverflowError):
        raise UsageError(
            f"{option}: expected an ISO 8601 date or date-time (2026-11-28, "
            f"2026-11-28T08:00:00+01:00), got {text!r}"
        ) from None


def _parse_instant(text: str, *, end_of_day: bool) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start + timedelta(days=1) if end_of_day else start


def _database_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return cast(Path, args.db)
    path: Path = load_config_from_args(args).audit.path
    return path


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return f"cli:uid={os.getuid()}"


def _anchor_argument(text: str | None) -> Anchor | None:
    if text is None:
        return None
    try:
        return Anchor.parse(text)
    except ValueError as error:
        raise UsageError(f"--anchor: {error}") from None


@contextmanager
def _output_stream(path: Path | None) -> Iterator[TextIO]:
    """Where the export goes: stdout (UTF-8 whatever the locale says) or a new file,
    removed again if the export fails (a CSV has no end marker: a partial file would
    look complete)."""
    if path is None:
        _stdout_in_utf8()
        yield sys.stdout
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--output: {path} already exists (never overwritten)") from None
    except OSError as error:
        raise UsageError(f"--output: {path}: {error.strerror}") from None
    created = os.fstat(descriptor)
    with open(descriptor, "w", encoding="utf-8", newline="") as stream:
        try:
            yield stream
        except BaseException:
            _remove_if_same(path, created)
            raise


def _stdout_in_utf8() -> None:
    """JSON between systems is UTF-8 (RFC 8259 §8.1), and so is our CSV: a Latin-1 or
    ASCII locale (or PYTHONIOENCODING) must not turn an accent into a traceback."""
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper) and codecs.lookup(stdout.encoding).name != "utf-8":
        stdout.reconfigure(encoding="utf-8")


def _remove_if_same(path: Path, created: os.stat_result) -> None:
    """Unlink ``path`` only if it is still the file this export created."""
    with suppress(OSError):
        current = os.lstat(path)
        if (current.st_dev, current.st_ino) == (created.st_dev, created.st_ino):
            path.unlink()


# -- verify ----------------------------------------------------------------------------


def describe_report(report: VerifyReport) -> list[str]:
    """The lines ``verify`` prints for ``report``."""
    if report.problem is not None:
        return [str(report.problem), f"{report.records} records before it verified"]
    if report.head is None:
        return ["OK: 0 records (empty trail)"]
    line = f"OK: {report.records} records, head seq={report.head.seq} hash={report.head.hash}"
    checkpoint = report.checkpoint
    if report.first_seq != 1 and checkpoint is not None:
        line += f" (records before seq {report.first_seq} pruned; last cutoff {checkpoint.cutoff})"
    lines = [line]
    if report.anchor_checked is True and report.anchor_by_checkpoint:
        lines.append(
            "note: the anchored record was pruned; its hash matches the one the checkpoint "
            "kept, which is all that vouches for the records up to it (a checkpoint can be "
            "appended by whoever can write the database: docs/security.md)"
        )
    elif report.anchor_checked is True:
        lines.append("anchor matches")
    elif report.anchor_checked is False:
        lines.append("note: the anchor is older than the retained trail (pruned): not checked")
    return lines


def run_verify(args: argparse.Namespace) -> int:
    anchor = _anchor_argument(args.anchor)
    with AuditStore.open_reader(_database_path(args)) as store:
        report = store.verify(anchor)
    for line in describe_report(report):
        print(line)
    return 0 if report.ok else 1


# -- export ----------------------------------------------------------------------------


_REFUSED = (
    "nothing exported: the trail does not verify (--allow-broken exports it anyway, "
    f"opened by an {UNVERIFIED_MARK} line)"
)
_BUFFER_IN_MEMORY = 8 * 1024 * 1024  # characters of export kept in memory before a temp file


def run_export(args: argparse.Namespace) -> int:
    window = _export_window(args.since, args.until)
    anchor = _anchor_argument(args.anchor)
    export_format: ExportFormat = args.export_format
    allow_broken: bool = args.allow_broken
    with (
        AuditStore.open_reader(_database_path(args)) as store,
        _output_stream(args.output) as stream,
        _export_buffer() as buffer,
    ):
        try:
            outcome = export_verified(
                store.iter_rows(),
                buffer,
                export_format,
                window=window,
                anchor=anchor,
                keep_going=allow_broken,
            )
        except RecordFormatError as error:
            raise AuditChainBroken([_unreadable(error), _REFUSED]) from None
        if not outcome.verified and not allow_broken:
            raise AuditChainBroken([*describe_report(outcome.report), _REFUSED])
        _deliver(outcome, buffer, stream, export_format)
    for line in export_notes(outcome, window, anchor):
        print(line, file=sys.stderr)
    return 0 if outcome.verified else 1


def _export_window(since_text: str | None, until_text: str | None) -> TimeRange:
    since = None if since_text is None else parse_time_bound(since_text, "--since")
    until = None if until_text is None else parse_time_bound(until_text, "--until", end_of_day=True)
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be earlier than --until")
    return TimeRange(since, until)


def _unreadable(error: RecordFormatError) -> str:
    return (
        f"record seq {error.seq} is unreadable ({error.reason}): edited outside "
        "Missive; run `missive audit verify`"
    )


@contextmanager
def _export_buffer() -> Iterator[TextIO]:
    """Where the export waits for the end of the walk: memory, then an unnamed 0600
    temporary file (``O_TMPFILE`` on Linux), gone when closed."""
    with tempfile.SpooledTemporaryFile(
        max_size=_BUFFER_IN_MEMORY, mode="w+", encoding="utf-8", newline=""
    ) as buffer:
        yield cast(TextIO, buffer)


def _deliver(
    outcome: ExportOutcome, buffer: TextIO, stream: TextIO, export_format: ExportFormat
) -> None:
    """Copy the verified (or marked) export out of its buffer."""
    buffer.seek(0)
    try:
        if not outcome.verified:
            stream.write(unverified_notice(outcome, export_format))
        shutil.copyfileobj(buffer, stream)
        stream.flush()
    except BrokenPipeError:  # `missive audit export ... | head`: the reader left
        _silence_stdout()


def export_notes(outcome: ExportOutcome, window: TimeRange, anchor: Anchor | None) -> list[str]:
    """The lines ``export`` prints on stderr once the export is written."""
    report = outcome.report
    if not outcome.verified:
        return [
            *describe_report(report),
            f"exported anyway (--allow-broken): {outcome.exported} records, "
            f"opened by an {UNVERIFIED_MARK} line",
        ]
    notes = []
    checkpoint = report.checkpoint
    since = window.texts()[0]
    if report.first_seq not in (None, 1) and checkpoint is not None and since < checkpoint.cutoff:
        notes.append(
            f"note: the trail was pruned: records before seq {report.first_seq} (older than "
            f"{checkpoint.cutoff}) are no longer in it, nor in this export"
        )
    if anchor is not None:
        notes.extend(describe_report(report)[1:])
    return notes


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the exit-time flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- prune -----------------------------------------------------------------------------


def describe_prune(result: PruneResult) -> str:
    """The line ``prune`` prints for ``result``."""
    if result.checkpoint is None:
        return f"nothing to prune: no record older than {result.cutoff}"
    return (
        f"pruned {result.deleted} records older than {result.cutoff} "
        f"(seq {result.first_deleted_seq}..{result.last_deleted_seq}); "
        f"checkpoint seq={result.checkpoint.seq} hash={result.checkpoint.hash}"
    )


def run_prune(args: argparse.Namespace) -> int:
    if args.before is not None:
        cutoff = parse_time_bound(args.before, "--before")
        if cutoff > datetime.now(UTC):
            raise UsageError(
                f"--before: {args.before} is in the future: it would delete the records "
                "being written now (refused)"
            )
        path = _database_path(args)
    elif args.db is not None:
        raise UsageError("--db needs --before (no configuration to read the retention from)")
    else:
        audit = load_config_from_args(args).audit
        retention: timedelta = audit.retention
        cutoff = datetime.now(UTC) - retention
        path = audit.path
    with AuditStore.open_writer(path, create=False) as store:
        result = store.prune(cutoff, actor=_cli_actor())
    print(describe_prune(result))
    return 0

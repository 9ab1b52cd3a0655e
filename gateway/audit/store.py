"""The audit trail on disk: one SQLite database in WAL mode, append-only by contract.

Role: open (or create) the database, append sealed records in one transaction per
batch, read rows back for verification and export, and prune by retention with a
checkpoint record (see ``gateway.audit.chain``). One ``AuditStore`` wraps one
connection and is used from one thread at a time.

Invariants and decisions:

- Table ``audit_log`` (``STRICT``: SQLite refuses a value of the wrong type), one
  column per field, ``seq INTEGER PRIMARY KEY`` assigned by us (not AUTOINCREMENT: the
  chain decides the next number), an index on ``time`` for export and prune.
  ``PRAGMA application_id`` marks the file as a Missive trail and ``user_version``
  its format, so the CLI never writes into some other database.
- Every append runs in ``BEGIN IMMEDIATE`` and reads the head (last ``seq`` and
  ``hash``) inside that transaction, so the chain stays linear even when a second
  process (``missive audit prune`` while the gateway runs) writes: SQLite's write
  lock serialises the writers, WAL lets readers (verify, export) run alongside.
- ``synchronous = FULL`` by default: in WAL mode, NORMAL may lose the last commits on
  a power failure (it survives a process crash, not an OS crash), and the record of
  an acceptance is written before the SMTP ``250`` (the spool's own rule, "250 means
  on disk", applied to the trail). The cost is one fsync of the WAL per commit, shared
  by every record of a group commit (``gateway.audit.sink``). Measured with
  ``bench/bench_audit.py`` (bench/README.md): with 100 concurrent writers FULL cost
  0.9-1.4x NORMAL in wall time per event (the writer is CPU-bound there) and the same
  event-loop CPU; an isolated record waits for one commit (0.5-1.4 ms on the
  development VM).
- The database file is created 0600 before SQLite opens it (its ``-wal`` and ``-shm``
  files take the same mode), each missing parent directory 0700; an existing file
  readable by others is tightened to 0600.
- Workers starting together on a new trail: the schema is created under the write
  lock and re-checked (``_create_schema``), and the switch to WAL is tried again while
  SQLite answers ``SQLITE_BUSY`` at once instead of waiting (``_switch_to_wal``), both
  within ``busy_timeout``: no writer fails because another one started at its moment.
- Readers open the file read-only (``mode=ro``) and never create it: a missing trail
  is an ``AuditDatabaseError`` (exit 2), not a new empty trail.
- ``prune`` first verifies the chain (outside the write lock: a long walk must not
  stall the gateway) and refuses to prune a broken trail: deleting records would
  destroy the evidence (``AuditChainBroken``, exit 1).

A PostgreSQL backend (same table, same chain per node) is planned in the
architecture; the sans-IO parts (``record``, ``chain``) are shared by design.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

from gateway.audit.chain import Anchor, Checkpoint, VerifyReport, verify_rows
from gateway.audit.errors import AuditDatabaseError
from gateway.audit.event import AuditEvent, format_time, utc_now
from gateway.audit.record import (
    CHECKPOINT_TYPE,
    GENESIS_HASH,
    AuditReceipt,
    AuditRecord,
    Row,
    record_from_row,
    seal_row,
)
from gateway.errors import MissiveError

Synchronous = Literal["NORMAL", "FULL"]

APPLICATION_ID = 0x4D495356  # "MISV"
SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for the other writer's lock
WAL_RETRY_PAUSE = 0.005  # seconds between two tries of the switch to WAL (``_switch_to_wal``)

_SCHEMA = """
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    time         TEXT NOT NULL,
    type         TEXT NOT NULL,
    queue_id     TEXT,
    message_id   TEXT,
    mail_from    TEXT,
    rcpt_to      TEXT NOT NULL,
    actor        TEXT,
    peer         TEXT,
    cert_serials TEXT NOT NULL,
    algorithms   TEXT NOT NULL,
    outcome      TEXT,
    sha256       TEXT,
    details      TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_time ON audit_log(time);
"""
_SCHEMA_STATEMENTS = tuple(part.strip() for part in _SCHEMA.split(";") if part.strip())
_INSERT = """
INSERT INTO audit_log (seq, time, type, queue_id, message_id, mail_from, rcpt_to, actor, peer,
                       cert_serials, algorithms, outcome, sha256, details, prev_hash, hash)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_ALL = """
SELECT seq, time, type, queue_id, message_id, mail_from, rcpt_to, actor, peer,
       cert_serials, algorithms, outcome, sha256, details, prev_hash, hash
FROM audit_log ORDER BY seq
"""
_SELECT_RANGE = """
SELECT seq, time, type, queue_id, message_id, mail_from, rcpt_to, actor, peer,
       cert_serials, algorithms, outcome, sha256, details, prev_hash, hash
FROM audit_log WHERE time >= ? AND time < ? ORDER BY seq
"""
_TIME_MIN, _TIME_MAX = "", "~"  # below and above every trail time (digits sort before "~")
_HEAD = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"


class AuditChainBroken(MissiveError):
    """The trail does not verify, so an operation that would alter it is refused."""

    status = 1


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What ``prune`` did: the deleted range (if any) and the checkpoint it appended."""

    cutoff: str
    deleted: int
    first_deleted_seq: int | None
    last_deleted_seq: int | None
    checkpoint: AuditReceipt | None


def _restrict_modes(path: Path) -> None:
    """Make the database and its WAL companions 0600 if anything looser is found."""
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            candidate.chmod(0o600)


def _missing(path: Path) -> str:
    return (
        f"audit database {path} does not exist (the gateway creates it when it starts; "
        "check [audit] path)"
    )


def _create_file(path: Path) -> None:
    """Create the missing parent directories (each 0700) and an empty database (0600)."""
    missing: list[Path] = []
    ancestor = path.parent
    while not ancestor.exists():
        missing.append(ancestor)
        ancestor = ancestor.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(descriptor)


_UNDECODABLE = "Could not decode to UTF-8"  # sqlite3's message for a non-UTF-8 text value


def _text_or_bytes(value: bytes) -> str | bytes:
    """A text value as ``str``, or as the raw ``bytes`` when it is not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _connect(path: Path, *, readonly: bool, busy_timeout: float) -> sqlite3.Connection:
    if readonly:
        target, uri = f"{path.as_uri()}?mode=ro", True
    else:
        target, uri = str(path), False
    try:
        connection = sqlite3.connect(
            target,
            uri=uri,
            timeout=busy_timeout,
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=False,  # the sink opens here and writes from its thread
        )
    except sqlite3.Error as error:
        raise AuditDatabaseError(f"audit database {path}: cannot open it ({error})") from None
    return connection


def _check_or_create_schema(connection: sqlite3.Connection, path: Path, *, create: bool) -> None:
    if _is_empty(connection):
        if not create:
            raise AuditDatabaseError(f"audit database {path}: empty, not an audit trail yet")
        _create_schema(connection)
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if application_id != APPLICATION_ID:
        raise AuditDatabaseError(f"audit database {path}: not a Missive audit trail")
    if version != SCHEMA_VERSION:
        raise AuditDatabaseError(
            f"audit database {path}: format version {version}, this Missive reads {SCHEMA_VERSION}"
        )


def _is_empty(connection: sqlite3.Connection) -> bool:
    """No application id, no format version, no table: a file nobody has written yet."""
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    return bool(application_id == 0 and version == 0 and tables == 0)


def _create_schema(connection: sqlite3.Connection) -> None:
    """Create the table and mark the file, under SQLite's write lock, unless another
    process did it while this one waited for the lock (two workers starting at the
    same moment on a new trail both find it empty; the second must not fail)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        if _is_empty(connection):
            for statement in _SCHEMA_STATEMENTS:
                connection.execute(statement)
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _switch_to_wal(connection: sqlite3.Connection, busy_timeout: float) -> str:
    """``PRAGMA journal_mode = WAL`` (the journal mode now in force), tried again every
    ``WAL_RETRY_PAUSE`` for up to ``busy_timeout`` seconds while it gets ``SQLITE_BUSY``.

    Switching a new file from its rollback journal to WAL needs the exclusive lock, and
    SQLite answers ``SQLITE_BUSY`` at once, without its busy handler (deadlock
    avoidance), while another connection holds the write lock: a second worker starting
    on the same new trail, in ``_create_schema``'s ``BEGIN IMMEDIATE``. Without the
    retry, about 2 sets in 100 of 4 workers starting at once had one exit 2 with
    "database is locked". A file already in WAL mode answers without a lock wait."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() >= deadline:
                raise
        _pause_before_retry()


def _is_busy(error: sqlite3.Error) -> bool:
    return error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # primary code of extended ones


def _pause_before_retry() -> None:
    time.sleep(WAL_RETRY_PAUSE)


class AuditStore:
    """One connection to the trail. Build it with ``open_writer`` or ``open_reader``."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection = connection
        self.path = path

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open_writer(
        cls,
        path: Path,
        *,
        create: bool = True,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> AuditStore:
        """Open the trail for appending (creating it, 0600, unless ``create`` is False)."""
        path = path.absolute()
        if create:
            try:
                _create_file(path)
            except OSError as error:
                raise AuditDatabaseError(f"audit database {path}: {error.strerror}") from None
        elif not path.is_file():
            raise AuditDatabaseError(_missing(path))
        connection = _connect(path, readonly=False, busy_timeout=busy_timeout)
        try:
            _restrict_modes(path)
            _check_or_create_schema(connection, path, create=create)
            mode = _switch_to_wal(connection, busy_timeout)
            if mode != "wal":
                raise AuditDatabaseError(f"audit database {path}: WAL mode refused ({mode})")
            connection.execute(f"PRAGMA synchronous = {synchronous}")
        except sqlite3.DatabaseError as error:
            connection.close()
            raise AuditDatabaseError(f"audit database {path}: {error}") from None
        except BaseException:
            connection.close()
            raise
        return cls(connection, path)

    @classmethod
    def open_reader(cls, path: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> AuditStore:
        """Open an existing trail read-only; ``AuditDatabaseError`` if it is not one."""
        path = path.absolute()
        if not path.is_file():
            raise AuditDatabaseError(_missing(path))
        connection = _connect(path, readonly=True, busy_timeout=busy_timeout)
        try:
            _check_or_create_schema(connection, path, create=False)
        except sqlite3.DatabaseError as error:
            connection.close()
            raise AuditDatabaseError(f"audit database {path}: {error}") from None
        except BaseException:
            connection.close()
            raise
        return cls(connection, path)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back already (disk full)
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _read_head(self) -> AuditReceipt | None:
        row = self._connection.execute(_HEAD).fetchone()
        return None if row is None else AuditReceipt(row[0], row[1])

    def _insert(
        self, events: Sequence[AuditEvent], head: AuditReceipt | None
    ) -> list[AuditReceipt]:
        """Seal ``events`` after ``head`` and insert them (inside a write transaction)."""
        seq, prev_hash = (0, GENESIS_HASH) if head is None else (head.seq, head.hash)
        rows: list[Row] = []
        for event in events:
            seq += 1
            row = seal_row(seq, event, prev_hash)
            prev_hash = row.hash
            rows.append(row)
        self._connection.executemany(_INSERT, rows)
        return [AuditReceipt(row.seq, row.hash) for row in rows]

    def append(self, events: Sequence[AuditEvent]) -> list[AuditReceipt]:
        """Seal and commit ``events`` in one transaction; returns once committed.

        Events without a time get the current time. ``ValueError`` for the trail's
        own reserved types (``audit.*``).
        """
        now = utc_now()
        stamped: list[AuditEvent] = []
        for event in events:
            if event.reserved:
                raise ValueError(f"audit event type {event.type!r} is reserved for the trail")
            stamped.append(event if event.time is not None else event.at(now))
        with self._write_transaction():
            return self._insert(stamped, self._read_head())

    # -- reading -----------------------------------------------------------------------

    def head(self) -> AuditReceipt | None:
        """The last record's place in the chain, or None for an empty trail."""
        return self._read_head()

    def iter_rows(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[Row]:
        """Rows in ``seq`` order, with ``since <= time < until`` when given.

        A text value that is not UTF-8 (written into the file by something else than
        Missive: SQLite stores what it is given) stops SQLite's own decoding; the rows
        from there on are read again with such values as ``bytes``, which the record
        codec and the chain walk then report as an unreadable record. A damaged file
        is ``AuditDatabaseError``, never a traceback."""
        last_seq = 0
        try:
            for row in map(Row._make, self._select(since, until)):
                last_seq = row.seq
                yield row
        except sqlite3.OperationalError as error:
            if _UNDECODABLE not in str(error):
                raise self._damaged(error) from None
            yield from self._rows_keeping_bytes(since, until, after=last_seq)
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from None

    def _select(self, since: datetime | None, until: datetime | None) -> sqlite3.Cursor:
        if since is None and until is None:
            return self._connection.execute(_SELECT_ALL)
        low = _TIME_MIN if since is None else format_time(since)
        high = _TIME_MAX if until is None else format_time(until)
        return self._connection.execute(_SELECT_RANGE, (low, high))

    def _rows_keeping_bytes(
        self, since: datetime | None, until: datetime | None, *, after: int
    ) -> Iterator[Row]:
        """``iter_rows`` from ``after`` on, a text value that is not UTF-8 kept as bytes."""
        self._connection.text_factory = _text_or_bytes
        try:
            for row in map(Row._make, self._select(since, until)):
                if row.seq > after:
                    yield row
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from None
        finally:
            self._connection.text_factory = str

    def _damaged(self, error: sqlite3.Error) -> AuditDatabaseError:
        return AuditDatabaseError(f"audit database {self.path}: damaged, cannot be read ({error})")

    def iter_records(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[AuditRecord]:
        """Decoded records; ``RecordFormatError`` for a row edited outside Missive."""
        for row in self.iter_rows(since=since, until=until):
            yield record_from_row(row)

    def verify(self, anchor: Anchor | None = None) -> VerifyReport:
        """Walk the whole chain (one read snapshot) and report the first bad record."""
        return verify_rows(self.iter_rows(), anchor)

    # -- retention ---------------------------------------------------------------------

    def prune(self, before: datetime, *, actor: str | None = None) -> PruneResult:
        """Delete the oldest records (up to the first one at or after ``before``) and
        append a checkpoint; refuses (``AuditChainBroken``) if the trail does not verify.

        Only a prefix is deleted, so the chain stays contiguous: a record older than
        the cutoff that follows a newer one (clock stepped back) is kept until the
        prefix passes it.
        """
        report = self.verify()
        if report.problem is not None:
            raise AuditChainBroken(f"refusing to prune a broken audit trail: {report.problem}")
        cutoff = format_time(before)
        with self._write_transaction():
            head = self._read_head()
            deleted = self._delete_prefix(cutoff, head)
            if deleted is None or head is None:
                return PruneResult(cutoff, 0, None, None, None)
            first_seq, last, count = deleted
            checkpoint = Checkpoint.build(before, first_seq, last, count)
            event = AuditEvent(
                type=CHECKPOINT_TYPE,
                time=utc_now(),
                actor=actor,
                outcome="pruned",
                details=checkpoint.details(),
            )
            [receipt] = self._insert([event], head)
        return PruneResult(cutoff, count, first_seq, last.seq, receipt)

    def _delete_prefix(
        self, cutoff: str, head: AuditReceipt | None
    ) -> tuple[int, AuditReceipt, int] | None:
        """Delete records before the first one at/after ``cutoff``; return (first seq,
        last deleted, count), or None when nothing is old enough."""
        if head is None:
            return None
        connection = self._connection
        kept = connection.execute(
            "SELECT seq FROM audit_log NOT INDEXED WHERE time >= ? ORDER BY seq LIMIT 1",
            (cutoff,),
        ).fetchone()
        first_kept = head.seq + 1 if kept is None else kept[0]
        last = connection.execute(
            "SELECT seq, hash FROM audit_log WHERE seq < ? ORDER BY seq DESC LIMIT 1",
            (first_kept,),
        ).fetchone()
        if last is None:
            return None
        first_seq, count = connection.execute(
            "SELECT min(seq), count(*) FROM audit_log WHERE seq < ?", (first_kept,)
        ).fetchone()
        connection.execute("DELETE FROM audit_log WHERE seq < ?", (first_kept,))
        return first_seq, AuditReceipt(last[0], last[1]), count

"""The audit trail on disk: one SQLite database in WAL mode, append-only by contract.

Role: ``AuditStore`` appends sealed records in one transaction per batch, reads rows
back for verification and export, and prunes by retention with a checkpoint record
(see ``gateway.audit.chain``). One ``AuditStore`` wraps one connection and is used from
one thread at a time. Creating and opening the file (modes, schema, format check, the
switch to WAL) moved unchanged to ``gateway.audit.store_file`` when this module passed
500 lines; ``APPLICATION_ID``, ``SCHEMA_VERSION``, ``WAL_RETRY_PAUSE`` and ``_SCHEMA``
are re-exported here for their callers.

Invariants and decisions (those of the file itself are in ``gateway.audit.store_file``):

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
- The head is read again in every append, although the writer knows what it wrote
  last: another process may have appended since, and the alternatives cost as much
  (``PRAGMA data_version`` is a statement too: 2.5-3 µs against 3-4 for the head
  read, per commit; measured in the ninth session). The rows of a batch go in by
  multi-row ``INSERT`` statements of at most 32 rows (one step, so one release of
  the GIL, per statement instead of one per row: about 15 % of the insert's CPU).
- A failed ``COMMIT`` (disk full, I/O error) is rolled back like any other failure of
  the transaction and raised: SQLite may leave the transaction open after it, and then
  every later ``BEGIN`` would fail and the writer would never recover.
- ``prune`` first verifies the chain (outside the write lock: a long walk must not
  stall the gateway) and refuses to prune a broken trail: deleting records would
  destroy the evidence (``AuditChainBroken``, exit 1).

A PostgreSQL backend (same table, same chain per node) is planned in the
architecture; the sans-IO parts (``record``, ``chain``) are shared by design.
"""

from __future__ import annotations

import sqlite3
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
    COLUMNS,
    GENESIS_HASH,
    AuditReceipt,
    AuditRecord,
    Row,
    record_from_row,
    seal_row,
)
from gateway.audit.store_file import _SCHEMA as _SCHEMA  # re-export: bench/bench_audit.py
from gateway.audit.store_file import APPLICATION_ID as APPLICATION_ID
from gateway.audit.store_file import SCHEMA_VERSION as SCHEMA_VERSION
from gateway.audit.store_file import WAL_RETRY_PAUSE as WAL_RETRY_PAUSE
from gateway.audit.store_file import (
    _check_or_create_schema,
    _connect,
    _create_file,
    _missing,
    _restrict_modes,
    _switch_to_wal,
)
from gateway.errors import MissiveError

Synchronous = Literal["NORMAL", "FULL"]
Stamped = Sequence[tuple[AuditEvent, datetime]]  # events paired with their record time

DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for the other writer's lock

_INSERT = """
INSERT INTO audit_log (seq, time, type, queue_id, message_id, mail_from, rcpt_to, actor, peer,
                       cert_serials, algorithms, outcome, sha256, details, prev_hash, hash)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_ROWS_PER_INSERT = 32  # 32 x 16 = 512 parameters; so at most 32 statements to cache
_MANY_ROWS = tuple(
    _INSERT.rstrip() + ",\n(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" * (count - 1)
    for count in range(_ROWS_PER_INSERT + 1)
)  # _MANY_ROWS[n]: one INSERT statement of n rows (n >= 1)
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


_UNDECODABLE = "Could not decode to UTF-8"  # sqlite3's message for a non-UTF-8 text value


def _text_or_bytes(value: bytes) -> str | bytes:
    """A text value as ``str``, or as the raw ``bytes`` when it is not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


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
            connection.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise

    def _roll_back(self) -> None:
        if self._connection.in_transaction:  # SQLite may have rolled back already (disk full)
            self._connection.execute("ROLLBACK")

    def _read_head(self) -> AuditReceipt | None:
        row = self._connection.execute(_HEAD).fetchone()
        return None if row is None else AuditReceipt(row[0], row[1])

    def _insert(self, stamped: Stamped, head: AuditReceipt | None) -> list[AuditReceipt]:
        """Seal ``(event, time)`` pairs after ``head`` and insert them (inside a write
        transaction): one multi-row ``INSERT`` per ``_ROWS_PER_INSERT`` records, which
        costs the writer less than ``executemany`` (one statement step, so one release
        of the GIL, instead of one per row)."""
        seq, prev_hash = (0, GENESIS_HASH) if head is None else (head.seq, head.hash)
        receipts: list[AuditReceipt] = []
        values: list[object] = []
        for event, moment in stamped:
            seq += 1
            row = seal_row(seq, event, prev_hash, moment)
            prev_hash = row.hash
            values += row
            receipts.append(AuditReceipt(seq, prev_hash))
        width = len(COLUMNS) * _ROWS_PER_INSERT
        execute = self._connection.execute
        for start in range(0, len(values), width):
            chunk = values[start : start + width]
            execute(_MANY_ROWS[len(chunk) // len(COLUMNS)], chunk)
        return receipts

    def append(self, events: Sequence[AuditEvent]) -> list[AuditReceipt]:
        """Seal and commit ``events`` in one transaction; returns once committed.

        Events without a time get the current time. ``ValueError`` for the trail's
        own reserved types (``audit.*``).
        """
        now = utc_now()
        return self.append_stamped(
            [(event, now if event.time is None else event.time) for event in events]
        )

    def append_stamped(self, stamped: Stamped) -> list[AuditReceipt]:
        """``append`` of ``(event, time)`` pairs: each record gets the time paired with
        it (the sink's stamp at hand-over, or the event's own time). ``ValueError`` for
        the trail's own reserved types (``audit.*``), before anything is written."""
        for event, _ in stamped:
            if event.reserved:
                raise ValueError(f"audit event type {event.type!r} is reserved for the trail")
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            receipts = self._insert(stamped, self._read_head())
            connection.execute("COMMIT")
        except BaseException:
            self._roll_back()  # a failed COMMIT too: else no later BEGIN could succeed
            raise
        return receipts

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
            now = utc_now()
            event = AuditEvent(
                type=CHECKPOINT_TYPE,
                time=now,
                actor=actor,
                outcome="pruned",
                details=checkpoint.details(),
            )
            [receipt] = self._insert([(event, now)], head)
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

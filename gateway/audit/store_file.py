"""The audit trail's SQLite file: creating it, opening it, checking its schema, WAL.

Role: the module-level helpers behind ``AuditStore.open_writer`` and ``open_reader``
(``gateway.audit.store``): create the file and its parent directories with tight modes,
connect (read-write, or read-only for readers), check that the file is a Missive trail
of the format this version reads or create its schema, and switch it to WAL. They moved
here unchanged when ``gateway.audit.store`` passed 500 lines; that module keeps the
``AuditStore`` class (appending, reading, pruning) and re-exports the public constants.

Invariants and decisions:

- Table ``audit_log`` (``STRICT``: SQLite refuses a value of the wrong type), one
  column per field, ``seq INTEGER PRIMARY KEY`` assigned by us (not AUTOINCREMENT: the
  chain decides the next number), an index on ``time`` for export and prune.
  ``PRAGMA application_id`` marks the file as a Missive trail and ``user_version``
  its format, so the CLI never writes into some other database.
- The database file is created 0600 before SQLite opens it (its ``-wal`` and ``-shm``
  files take the same mode), each missing parent directory 0700; an existing file
  readable by others is tightened to 0600.
- Workers starting together on a new trail: the schema is created under the write
  lock and re-checked (``_create_schema``), and the switch to WAL is tried again while
  SQLite answers ``SQLITE_BUSY`` at once instead of waiting (``_switch_to_wal``), both
  within ``busy_timeout``: no writer fails because another one started at its moment.
- Readers open the file read-only (``mode=ro``) and never create it: a missing trail
  is an ``AuditDatabaseError`` (exit 2), not a new empty trail.

Security: the modes above keep the trail (who sent what to whom, with which
certificates) away from other local users; no message content is ever stored.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

from gateway.audit.errors import AuditDatabaseError

APPLICATION_ID = 0x4D495356  # "MISV"
SCHEMA_VERSION = 1
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

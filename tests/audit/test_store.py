"""The SQLite store: file modes, opening rules, retention with checkpoints, concurrent use."""

from __future__ import annotations

import multiprocessing.synchronize
import os
import sqlite3
import stat
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.app import apply_audit_retention
from gateway.audit import AuditChainBroken, AuditDatabaseError, AuditEvent, AuditStore, store_file
from gateway.audit.event import utc_now
from gateway.audit.record import CHECKPOINT_TYPE, Row, record_from_row, row_of, seal
from gateway.audit.store import _INSERT
from gateway.audit.store_file import _create_schema, _is_empty
from gateway.config import Config
from tests.together import FORK, exit_codes

from .events import T0, make_event


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- files and opening -------------------------------------------------------------------


def test_database_and_wal_files_are_private(db_path: Path, store: AuditStore) -> None:
    assert _mode(db_path.parent) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert _mode(Path(f"{db_path}{suffix}")) == 0o600, suffix
    journal = sqlite3.connect(db_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_every_created_directory_is_private(tmp_path: Path) -> None:
    existing = tmp_path / "srv"
    existing.mkdir(mode=0o755)
    path = existing / "missive" / "var" / "audit.sqlite"
    with AuditStore.open_writer(path):
        pass
    assert (_mode(path.parent), _mode(path.parent.parent)) == (0o700, 0o700)
    assert _mode(existing) == 0o755  # an existing directory is the operator's choice


def test_a_loose_existing_file_is_tightened(db_path: Path) -> None:
    with AuditStore.open_writer(db_path):
        pass
    db_path.chmod(0o644)
    with AuditStore.open_writer(db_path):
        assert _mode(db_path) == 0o600


def test_reader_never_creates_a_trail(db_path: Path) -> None:
    with pytest.raises(AuditDatabaseError, match="does not exist"):
        AuditStore.open_reader(db_path)
    assert not db_path.exists()
    with pytest.raises(AuditDatabaseError, match="does not exist"):
        AuditStore.open_writer(db_path, create=False)
    assert not db_path.exists()


def test_reader_cannot_write(db_path: Path, store: AuditStore) -> None:
    with AuditStore.open_reader(db_path) as reader:
        assert reader.verify().records == 10
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.append([make_event(99)])


def test_files_that_are_not_a_trail_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(AuditDatabaseError, match="not a database"):
        AuditStore.open_reader(junk)
    for opener in (AuditStore.open_reader, AuditStore.open_writer):
        with pytest.raises(AuditDatabaseError, match="not a Missive audit trail"):
            opener(other)
    with pytest.raises(AuditDatabaseError, match="not an audit trail yet"):
        AuditStore.open_reader(empty)


def test_a_newer_format_is_refused(db_path: Path, store: AuditStore) -> None:
    sqlite3.connect(db_path).execute("PRAGMA user_version = 2").connection.close()
    with pytest.raises(AuditDatabaseError, match="format version 2"):
        AuditStore.open_reader(db_path)


def test_an_unusable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AuditDatabaseError, match="audit database"):
        AuditStore.open_writer(blocker / "audit.sqlite")


def test_reserved_types_cannot_be_appended(store: AuditStore) -> None:
    with pytest.raises(ValueError, match="reserved"):
        store.append([AuditEvent(CHECKPOINT_TYPE)])


def test_append_stamps_events_without_time(store: AuditStore) -> None:
    [receipt] = store.append([AuditEvent("queue.deleted", queue_id="Q1")])
    [record] = [r for r in store.iter_records() if r.seq == receipt.seq]
    assert record.event.time is not None and record.event.time > T0


@pytest.mark.parametrize("count", [1, 31, 32, 33, 65, 100])
def test_a_batch_of_any_size_is_stored_row_for_row_in_one_chain(
    store: AuditStore, count: int
) -> None:
    # rows go in by multi-row INSERTs of at most 32 rows: every chunk boundary counts
    events = [make_event(index) for index in range(10, 10 + count)]
    receipts = store.append(events)  # after the fixture's 10 records
    assert [receipt.seq for receipt in receipts] == list(range(11, 11 + count))
    stored = list(store.iter_rows())[10:]
    assert [row.hash for row in stored] == [receipt.hash for receipt in receipts]
    assert [record_from_row(row).event for row in stored] == events
    report = store.verify()
    assert report.ok and report.records == 10 + count


def test_append_stamped_seals_each_event_at_its_paired_time(store: AuditStore) -> None:
    untimed = AuditEvent("queue.deleted", queue_id="Q1")
    timed = make_event(1)
    moment = T0 + timedelta(minutes=5)
    store.append_stamped([(untimed, moment), (timed, timed.time or moment)])
    records = list(store.iter_records())[10:]
    assert [record.event for record in records] == [untimed.at(moment), timed]
    assert store.verify().ok
    with pytest.raises(ValueError, match="reserved"):
        store.append_stamped([(untimed, moment), (AuditEvent(CHECKPOINT_TYPE), moment)])
    assert store.verify().records == 12  # nothing of the refused batch was written


# -- concurrent use ----------------------------------------------------------------------


def test_a_trail_created_while_waiting_for_the_lock_is_used_not_recreated(
    db_path: Path,
) -> None:
    """Two workers start on a new trail: both find it empty, the first creates it; the
    second, once it has the write lock, must find the table there (it used to fail with
    "table audit_log already exists" and exit 2)."""
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db_path.touch(mode=0o600)
    late = sqlite3.connect(db_path, isolation_level=None)
    try:
        assert _is_empty(late)  # what the second worker saw before the first created it
        with AuditStore.open_writer(db_path) as first:
            first.append([make_event(1)])
        _create_schema(late)  # the second worker, now holding the lock
        assert late.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 1
    finally:
        late.close()
    with AuditStore.open_writer(db_path) as second:
        second.append([make_event(2)])
        assert second.verify().ok and second.verify().records == 2


def _open_and_append(path: str, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    with AuditStore.open_writer(Path(path)) as store:
        store.append([make_event(os.getpid())])


def test_writers_opening_a_new_trail_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    for attempt in range(3):
        path = tmp_path / f"audit-{attempt}.sqlite"
        start = FORK.Barrier(4)
        writers = [FORK.Process(target=_open_and_append, args=(str(path), start)) for _ in range(4)]
        assert exit_codes(writers) == [0, 0, 0, 0]
        with AuditStore.open_reader(path) as reader:
            report = reader.verify()
        assert report.ok and report.records == 4


def _rollback_journal_trail(path: Path) -> None:
    """A trail as the first worker on a new file leaves it between its schema and its
    switch to WAL: marked and with its table, journal mode still ``delete``."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        _create_schema(connection)
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        connection.close()


def _open_and_append_three(path: str, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    with AuditStore.open_writer(Path(path)) as store:
        for index in range(3):
            store.append([make_event(index)])


def test_writers_switching_a_new_trail_to_wal_at_the_same_moment_all_succeed(
    tmp_path: Path,
) -> None:
    """One writer's switch to WAL met another's write lock: SQLite answered "database
    is locked" at once, whatever the busy timeout, and that worker exited 2 (before the
    fix, 0 to 8 of 50 rounds like these failed, depending on the load)."""
    for attempt in range(50):
        path = tmp_path / f"audit-{attempt}.sqlite"
        _rollback_journal_trail(path)
        start = FORK.Barrier(4)
        writers = [
            FORK.Process(target=_open_and_append_three, args=(str(path), start)) for _ in range(4)
        ]
        assert exit_codes(writers) == [0, 0, 0, 0]
        with AuditStore.open_reader(path) as reader:
            report = reader.verify()
        assert report.ok and report.records == 12


def test_the_switch_to_wal_waits_for_another_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race, step by step: another connection holds the write lock when the
    writer switches the new trail to WAL; the writer tries again once it is released."""
    path = tmp_path / "audit.sqlite"
    _rollback_journal_trail(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    pauses: list[bool] = []

    def release_the_lock() -> None:
        pauses.append(holder.in_transaction)
        if holder.in_transaction:
            holder.execute("COMMIT")

    monkeypatch.setattr("gateway.audit.store_file._pause_before_retry", release_the_lock)
    try:
        with AuditStore.open_writer(path) as store:
            store.append([make_event(1)])
    finally:
        holder.close()
    assert pauses == [True]
    with AuditStore.open_reader(path) as reader:
        assert reader.verify().records == 1
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        check.close()


def test_the_switch_to_wal_gives_up_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried again and again while the lock is held, then the error, once
    ``busy_timeout`` has passed (here 0.2 s, paused 5 ms at a time)."""
    path = tmp_path / "audit.sqlite"
    _rollback_journal_trail(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    pauses: list[float] = []
    pause = store_file._pause_before_retry

    def counted_pause() -> None:
        pauses.append(time.monotonic())
        pause()

    monkeypatch.setattr(store_file, "_pause_before_retry", counted_pause)
    try:
        with pytest.raises(AuditDatabaseError, match="database is locked"):
            AuditStore.open_writer(path, busy_timeout=0.2)
    finally:
        holder.close()
    assert len(pauses) >= 2 and pauses[-1] - pauses[0] < 0.2


def _retention_of(path: Path) -> Config:
    """The two settings ``apply_audit_retention`` reads, for a trail at ``path``."""
    audit = SimpleNamespace(path=path, retention=timedelta(days=1))
    return cast(Config, SimpleNamespace(audit=audit))


def test_retention_at_start_completes_a_trail_being_created(tmp_path: Path) -> None:
    """``serve``'s retention met a trail file another process had just made (``O_EXCL``,
    empty: its schema not committed yet) and exited 2 ("not an audit trail yet")."""
    path = tmp_path / "audit.sqlite"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    result = apply_audit_retention(_retention_of(path))
    assert result is not None and result.deleted == 0
    with AuditStore.open_reader(path) as reader:
        report = reader.verify()
    assert report.ok and report.records == 0
    assert apply_audit_retention(_retention_of(tmp_path / "none.sqlite")) is None
    assert not (tmp_path / "none.sqlite").exists()


def _apply_retention(path: str, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    apply_audit_retention(_retention_of(Path(path)), now=T0)  # prunes none of the writers'


def test_retention_and_writers_starting_on_a_new_trail_at_once_all_succeed(
    tmp_path: Path,
) -> None:
    """The same with processes: ``serve``'s retention and three writers that start at
    the same moment on a new trail (before the fix, 1 to 5 rounds in 50 failed)."""
    for attempt in range(50):
        path = tmp_path / f"audit-{attempt}.sqlite"
        start = FORK.Barrier(4)
        processes = [FORK.Process(target=_apply_retention, args=(str(path), start))]
        processes += [
            FORK.Process(target=_open_and_append, args=(str(path), start)) for _ in range(3)
        ]
        assert exit_codes(processes) == [0, 0, 0, 0]
        with AuditStore.open_reader(path) as reader:
            report = reader.verify()
        assert report.ok and report.records == 3


def test_two_writers_keep_one_linear_chain(db_path: Path, store: AuditStore) -> None:
    with AuditStore.open_writer(db_path) as second:
        for index in range(10, 20):
            (store if index % 2 else second).append([make_event(index)])
    report = store.verify()
    assert report.ok and report.records == 20


def test_a_reader_sees_one_snapshot_while_the_writer_appends(
    db_path: Path, store: AuditStore
) -> None:
    with AuditStore.open_reader(db_path) as reader:
        rows = reader.iter_rows()
        first = next(rows)
        store.append([make_event(index) for index in range(10, 15)])
        seen = [first, *rows]
        assert len(seen) == 10
        assert reader.verify().records == 15


# -- retention ---------------------------------------------------------------------------


def test_prune_leaves_a_checkpoint_and_the_chain_verifies(store: AuditStore) -> None:
    result = store.prune(T0 + timedelta(hours=4), actor="cli:root")
    assert (result.deleted, result.first_deleted_seq, result.last_deleted_seq) == (4, 1, 4)
    assert result.checkpoint is not None and result.checkpoint.seq == 11
    report = store.verify()
    assert report.ok, report.problem
    assert report.first_seq == 5 and report.records == 7
    assert report.checkpoint is not None
    assert (report.checkpoint.deleted_from_seq, report.checkpoint.deleted_to_seq) == (1, 4)
    records = list(store.iter_records())
    checkpoint = records[-1].event
    assert checkpoint.type == CHECKPOINT_TYPE and checkpoint.actor == "cli:root"
    assert checkpoint.details["deleted_count"] == "4"
    assert checkpoint.details["cutoff"] == "2026-01-01T12:00:00.000000Z"


def test_prune_twice_and_then_everything(store: AuditStore) -> None:
    store.prune(T0 + timedelta(hours=3))
    store.append([make_event(20)])
    second = store.prune(T0 + timedelta(hours=6))
    assert (second.first_deleted_seq, second.last_deleted_seq) == (4, 6)
    assert store.verify().ok
    last = store.prune(utc_now() + timedelta(days=1))  # every record, checkpoints too
    assert last.deleted == 7 and last.checkpoint is not None
    report = store.verify()
    assert report.ok, report.problem
    assert report.records == 1 and report.first_seq == last.checkpoint.seq == 14


def test_prune_with_nothing_old_enough_changes_nothing(store: AuditStore) -> None:
    head = store.head()
    result = store.prune(T0 - timedelta(days=1))
    assert result.deleted == 0 and result.checkpoint is None
    assert store.head() == head


def test_prune_deletes_only_a_prefix(store: AuditStore) -> None:
    late = T0 + timedelta(hours=20)
    store.append([make_event(10, time=late), make_event(11, time=T0)])  # the clock stepped back
    result = store.prune(T0 + timedelta(hours=15))
    assert result.last_deleted_seq == 10  # seq 12 (older time) stays: it follows seq 11
    assert store.verify().ok


def test_prune_refuses_a_broken_trail(store: AuditStore, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE audit_log SET outcome = 'rejected' WHERE seq = 2")
    with pytest.raises(AuditChainBroken, match="BROKEN at seq 2"):
        store.prune(T0 + timedelta(hours=4))
    assert len(list(store.iter_rows())) == 10  # nothing deleted: the evidence is kept


def test_deleting_more_after_a_prune_is_detected(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    store.prune(T0 + timedelta(hours=4))
    raw.execute("DELETE FROM audit_log WHERE seq = 5")
    problem = store.verify().problem
    assert problem is not None and problem.seq == 6
    assert "latest checkpoint accounts for seq 1..4 only" in problem.reason


def test_deleting_more_and_resealing_the_rest_is_detected(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    """Delete seq 5-6 after a prune, renumber and re-seal everything after them so that
    every link and hash is valid again: only the checkpoint's hash betrays it."""
    store.prune(T0 + timedelta(hours=4))
    rows = [Row(*values) for values in raw.execute("SELECT * FROM audit_log ORDER BY seq")]
    survivors = rows[2:]  # seq 7..11 (11 is the checkpoint)
    raw.execute("BEGIN")
    raw.execute("DELETE FROM audit_log")
    prev_hash = survivors[0].prev_hash  # the hash of seq 6, now gone
    for new_seq, row in enumerate(survivors, start=5):
        sealed = seal(new_seq, record_from_row(row).event, prev_hash)
        prev_hash = sealed.hash
        raw.execute(_INSERT, row_of(sealed))
    raw.execute("COMMIT")
    problem = store.verify().problem
    assert problem is not None and problem.seq == 5
    assert "latest checkpoint accounts for seq 1..4 only" in problem.reason


def test_an_edited_checkpoint_is_detected(store: AuditStore, raw: sqlite3.Connection) -> None:
    store.prune(T0 + timedelta(hours=4))
    raw.execute(
        "UPDATE audit_log SET details = json_set(details, '$.deleted_count', '1') WHERE seq = 11"
    )
    problem = store.verify().problem
    assert problem is not None and (problem.seq, problem.reason) == (
        11,
        "hash mismatch (record edited)",
    )


def test_a_deleted_checkpoint_is_detected(store: AuditStore, raw: sqlite3.Connection) -> None:
    store.prune(T0 + timedelta(hours=4))
    raw.execute("DELETE FROM audit_log WHERE type = ?", (CHECKPOINT_TYPE,))
    problem = store.verify().problem
    assert problem is not None and problem.seq == 5 and "no checkpoint" in problem.reason


class _CommitFailsOnce:
    """A connection whose next ``COMMIT`` fails as a full disk would make it fail,
    leaving the transaction open (what SQLite may do); everything else goes through."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.failed = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction


def test_a_failed_commit_is_rolled_back_and_the_next_append_succeeds(store: AuditStore) -> None:
    before = [r.event.queue_id for r in store.iter_records()]
    real = store._connection
    store._connection = _CommitFailsOnce(real)  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.OperationalError):
            store.append([AuditEvent("smtp.accepted", queue_id="lost")])
        assert not real.in_transaction
        [receipt] = store.append([AuditEvent("smtp.accepted", queue_id="kept")])
    finally:
        store._connection = real
    assert receipt.seq == len(before) + 1  # the failed record left nothing behind
    assert [r.event.queue_id for r in store.iter_records()] == [*before, "kept"]

"""A stage's recovery at a consumer's start: requeue ``active/``, remove ``tmp/`` debris.

Role: the blocking file operations behind ``Queue.recover`` and the consumer's debris
sweep (``Queue.sweep_if_due``): move the entries a dead consumer left in its active
directory back to ``incoming/`` (``requeue_active``, ``requeue_orphaned_slots``) and
remove stale files of ``tmp/`` (``remove_stale_temps``). Plain functions over a
``StageDirs``, run in the spool's I/O threads.

Invariants:

- only the holder of slot K's consumer lock (``gateway.spool.consumer_lock``) moves
  entries out of slot K's active directory: a consumer requeues its own slot at its
  start, and adopts another slot's entries only while holding that slot's free lock;
  a live consumer's entries are never taken from it;
- ``tmp/`` debris is a file last changed before the recovery's limit; a parked
  deletion (``.deleting``) is dated by its park (its ctime), not by the entry's mtime,
  so a consumer starting while another process deletes never removes it under that
  deletion (``_last_changed``);
- consumers of several slots may sweep ``tmp/`` at once: each file is reported by the
  one whose ``unlink`` removed it.

Trust level: renames and removes under one stage directory; reads records only (for
the audit events), never content.
"""

from __future__ import annotations

import os

from gateway.spool.atomic import DELETING_SUFFIX, TEMP_SUFFIX, move
from gateway.spool.consumer_lock import ConsumerLock
from gateway.spool.layout import StageDirs
from gateway.spool.model import QueueRecord
from gateway.spool.stage_lookup import _entry_names, read_quietly, slot_dirs


def requeue_active(dirs: StageDirs, slot: int = 0) -> list[tuple[str, QueueRecord | None]]:
    """Move everything in ``slot``'s active directory back to ``incoming/`` (the start of
    that slot's consumer, which holds its lock); the other slots' directories are left
    alone."""
    moved: list[tuple[str, QueueRecord | None]] = []
    directory = dirs.active(slot)
    for name in _entry_names(directory, slot):
        source = directory / name
        record = read_quietly(source)
        move(source, dirs.entry("incoming", name))
        moved.append((name, record))
    return moved


def requeue_orphaned_slots(
    dirs: StageDirs, own_slot: int
) -> list[tuple[int, str, QueueRecord | None]]:
    """For every other slot whose lock is free (its consumer is dead or gone), move its
    active directory back to ``incoming/`` while holding that lock; a slot whose lock is
    held (a live consumer, or one starting right now, which recovers it itself) is
    skipped, and so is an empty directory (its lock is not even tried, so a consumer
    starting meanwhile is not made to wait). Returns ``(slot, name, record)`` of each
    entry moved.

    Decision: adopting orphans here means a slot that is no longer started (fewer
    ``crypto_workers`` after a restart) does not strand its claimed entries."""
    others = [slot for slot, _ in slot_dirs(dirs)]
    if own_slot != 0:
        others.insert(0, 0)
    moved: list[tuple[int, str, QueueRecord | None]] = []
    for slot in others:
        if slot == own_slot or not _entry_names(dirs.active(slot), slot):
            continue  # an empty directory: nothing to adopt, its lock is left alone
        lock = ConsumerLock(dirs, slot)
        if not lock.try_acquire():
            continue
        try:
            moved.extend((slot, name, record) for name, record in requeue_active(dirs, slot))
        finally:
            lock.release()
    return moved


def remove_stale_temps(dirs: StageDirs, older_than: float) -> list[tuple[str, bool]]:
    """Remove files of ``tmp/`` last changed before ``older_than`` (a timestamp): last
    modified, or for a parked deletion, parked (``_last_changed``).

    Each removed name comes with True for an unpublished write (a ``.tmp`` file with a
    single link); a second link to a published entry or a parked deletion is False.
    Consumers of several slots may run this at once: each file is reported by the one
    whose ``unlink`` removed it.
    """
    removed: list[tuple[str, bool]] = []
    for name in sorted(os.listdir(dirs.tmp)):
        path = dirs.tmp / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if _last_changed(name, info) > older_than:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:  # another consumer of the stage, recovering too
            continue
        removed.append((name, name.endswith(TEMP_SUFFIX) and info.st_nlink == 1))
    return removed


def _last_changed(name: str, info: os.stat_result) -> float:
    """When a file of ``tmp/`` was last written, or a parked deletion (``.deleting``)
    parked: the rename into ``tmp/`` keeps the entry's mtime (a held entry's: hours or
    days ago; a deferred entry's: its next attempt, maybe hours ahead) but sets its
    ctime (ext4, XFS, btrfs, tmpfs). By the mtime alone, a consumer starting while a
    ``delete`` (an operator's, the quarantine purge's) records its event took the
    parked entry for a crash's debris and removed it under the deletion. The price: a
    deletion cut short by a crash is finished an hour after it (by the running
    consumer's sweep, ``Queue.sweep_if_due``), not by the next start."""
    if name.endswith(DELETING_SUFFIX):
        return info.st_ctime  # not the mtime: a deferred entry's is its next attempt, ahead
    return info.st_mtime

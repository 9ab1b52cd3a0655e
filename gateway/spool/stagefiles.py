"""Blocking file operations that claim, rewrite and move the entries of one stage.

Role: what ``Queue`` does to an entry's file besides writing a new one (``writer``):
listing the entries to claim (``list_candidates``), claiming one by rename and reading
it (``take``), writing a new version of an owned file (``write_version``), and the
moves between state directories (``move_deferred``, ``move_back``,
``move_to_free_name``). Plain functions over a ``StageDirs``, run in the spool's I/O
threads, so the async ``Queue`` stays an orchestration of steps and these stay testable
without an event loop.

The other file operations on a stage live in their own modules, one concern each:
``stage_lookup`` (locate, inspect, scan, ``EntryInfo``, reading a record under its
name), ``stage_recovery`` (requeue ``active/``, remove ``tmp/`` debris) and
``consumer_lock`` (``ConsumerLock``, ``UnsafeLockFile``). Their names are re-exported
here, where the queue modules, the CLI and the tests import them.

Invariants:

- a claim is one ``rename`` into the claimer's active directory (``active/`` for slot
  0, ``active/<K>/`` for slot K; ``gateway.spool.layout``): of two claimers, exactly
  one succeeds, the other sees ``FileNotFoundError`` and moves on; the claimer then
  reads the record and, for an entry up to ``read_ahead`` bytes, its whole content
  (SHA-256 checked) through the same descriptor, in the same I/O job (``take``);
- a claimed file is trusted only if its record validates *and* its name is the queue
  id inside it (``stage_lookup``'s rule, applied by ``take``);
- a stray file named like a consumer slot is never claimed (``list_candidates``);
- files are never modified in place: ``write_version`` writes a new file (fsynced)
  that replaces the old one atomically;
- a move into ``corrupt/`` never replaces an earlier file there
  (``move_to_free_name``).

Trust level: reads and renames under one stage directory; content only through
``write_version``'s kernel copy and ``take``'s read-ahead (checked against its SHA-256).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.spool.atomic import TempFile, move
from gateway.spool.consumer_lock import ConsumerLock, UnsafeLockFile, open_lock_file
from gateway.spool.entry import read_claimed
from gateway.spool.errors import CorruptEntry
from gateway.spool.layout import StageDirs, State, slot_of_name
from gateway.spool.model import QueueRecord
from gateway.spool.record import PREAMBLE_SIZE, Preamble, encode_record, encode_trailer
from gateway.spool.stage_lookup import (
    LOCATE_PASSES,
    EntryInfo,
    _named,
    find_entry,
    inspect,
    locate,
    read_named,
    read_quietly,
    scan,
    slot_dirs,
)
from gateway.spool.stage_recovery import (
    remove_stale_temps,
    requeue_active,
    requeue_orphaned_slots,
)

__all__ = [
    "CLAIM_BATCH",
    "LOCATE_PASSES",
    "ConsumerLock",
    "EntryInfo",
    "Taken",
    "UnsafeLockFile",
    "find_entry",
    "inspect",
    "list_candidates",
    "locate",
    "move_back",
    "move_deferred",
    "move_to_free_name",
    "open_lock_file",
    "read_named",
    "read_quietly",
    "remove_stale_temps",
    "requeue_active",
    "requeue_orphaned_slots",
    "scan",
    "slot_dirs",
    "take",
    "write_version",
]

CLAIM_BATCH = 1000
_FREE_NAME_TRIES = 1000


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``take`` read of a claimed entry: its record, and its whole content when it
    was small enough to read at once (``CorruptEntry`` if that content failed its
    SHA-256, None if it was not read)."""

    record: QueueRecord
    content: bytes | CorruptEntry | None


def list_candidates(dirs: StageDirs, now: float) -> list[tuple[State, str]]:
    """Entries to claim: ``incoming/`` by name (= age), then due ``deferred/`` by due time
    (mtime <= ``now``), at most ``CLAIM_BATCH`` of each.

    A stray file named like a consumer slot (``1`` .. ``63``: never a queue id) is left
    where it is: claimed, it would be renamed onto that slot's ``active/K/`` directory.
    Any other stray name is claimed and ends in ``corrupt/`` as an unreadable entry."""
    names = (name for name in os.listdir(dirs.state("incoming")) if slot_of_name(name) is None)
    incoming = sorted(names)[:CLAIM_BATCH]
    deferred = dirs.state("deferred")
    due: list[tuple[float, str]] = []
    for name in os.listdir(deferred):
        if slot_of_name(name) is not None:
            continue
        try:
            modified = os.lstat(deferred / name).st_mtime
        except FileNotFoundError:
            continue
        if modified <= now:
            due.append((modified, name))
    due.sort()
    found: list[tuple[State, str]] = [("incoming", name) for name in incoming]
    return found + [("deferred", name) for _, name in due[:CLAIM_BATCH]]


def take(
    source: str,
    active: Path,
    moved: Callable[[str], None],
    read_ahead: int = 0,
) -> Taken | CorruptEntry | None:
    """Claim the entry ``source`` (``<stage>/<state>/<name>``) by renaming it to
    ``active`` (``<its slot's active directory>/<name>``): None if another claimer won,
    the damage if its record is corrupt (it is then at ``active``), else its record and,
    if it has at most ``read_ahead`` bytes of content, that content (one open file).
    ``moved`` is the crash checkpoint. The caller builds both paths (``ConsumerSide``
    keeps their directories: the claim is the one step every entry pays)."""
    try:
        move(source, active)
    except FileNotFoundError:
        return None
    moved("claim.moved")
    try:
        record, content = read_claimed(active, read_ahead)
        return Taken(_named(record, active.name), content)
    except CorruptEntry as error:
        return error


def write_version(dirs: StageDirs, current: Path, record: QueueRecord) -> None:
    """A new file with ``current``'s content (kernel copy) and ``record``, fsynced, then
    atomically in place of ``current`` (which the caller owns, in ``active/``)."""
    payload = encode_record(record)
    preamble = Preamble(record.content_length, len(payload))
    temp = TempFile.create(dirs.tmp, record.queue_id)
    try:
        temp.write(preamble.encode())
        source = os.open(current, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(source).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(current))
            temp.copy_from(source, PREAMBLE_SIZE, record.content_length)
        finally:
            os.close(source)
        temp.write(encode_trailer(preamble, payload))
        temp.finish()
        temp.replace(current)
    except BaseException:
        temp.discard()
        raise


def move_deferred(path: Path, target: Path, due: float) -> None:
    """Set the mtime to the next attempt (what ``ls -l deferred/`` shows and what
    ``list_candidates`` compares), then move into ``deferred/``."""
    os.utime(path, (due, due), follow_symlinks=False)
    move(path, target)


def move_back(current: Path, original: Path) -> None:
    """Undo a move; nothing to undo if a claimer took the entry from its new place."""
    try:
        move(current, original)
    except FileNotFoundError:
        pass


def move_to_free_name(path: Path, directory: Path, name: str) -> Path:
    """Move ``path`` into ``directory`` as ``name`` (``name.1``, ``name.2``... if taken)."""
    for suffix in range(_FREE_NAME_TRIES):
        target = directory / (name if suffix == 0 else f"{name}.{suffix}")
        if os.path.lexists(target):
            continue
        move(path, target)
        return target
    raise OSError(errno.EEXIST, "no free name", str(directory))

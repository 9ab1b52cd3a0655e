"""Hand-off tombstones: a removed child still answers "already handed off" to its parent.

The gap they close: ``Queue.hand_off`` is idempotent because the child id is derived
from the parent's id and the hand-off key (``gateway.spool.ids``), so a re-run finds the
child and writes nothing. But the child can leave its stage (delivered, bounced,
deleted) before the parent is completed: the parent stage crashes after the hand-off,
the next stage delivers the child meanwhile, the parent is processed again after the
restart, finds no child and writes it a second time - a duplicate relay or DSN outside
the one window ARCHITECTURE allows (a crash between the peer's ``250`` and our commit).

The rule: **a child whose parent may still be re-run is never removed before a durable
tombstone says it existed.** The tombstone is an empty file
``<child stage>/handed/<parent id>.<child id>`` (``ls handed/`` groups a parent's
children together), written by whoever removes the child (complete, bounce, delete):

1. if the parent is still in the spool (``parent_alive``: in a state directory of its
   stage, or parked by an operator's ``delete`` in that stage's ``tmp/``), create the
   tombstone and fsync ``handed/`` (group-committed, ``gateway.spool.commit``);
2. only then remove the child (its directory fsynced as before);
3. then, if the parent has left the spool meanwhile, remove the tombstone again (its
   completion may have looked at ``handed/`` before step 1).

``hand_off`` looks for the child in its stage *first* and for the tombstone *second*:
the child disappears only after its tombstone is durable, so a child missed by the
first look has its tombstone found by the second. A tombstone therefore proves that its
child was published; an absent child without one was never published and is written.

Why there and not in the parent: the parent's stage could write a record of its
hand-offs, but only after the child is published (before, a crash would leave a record
of a child that never existed: a loss), which leaves a window where the next stage
removes the child before the record is durable. The remover of the child has no such
window, and on the common path writes nothing at all: the parent is completed right
after its hand-offs, long before the next stage is done with the child, so
``parent_alive`` is false and no tombstone is needed. Tombstones appear only for a
parent deferred after some hand-offs (the secure agent waiting for a certificate) or
re-run after a crash. The cost of a child's removal is one look for its parent in
the parent's stage, which the child's record names (``parent_stage``, written by
``hand_off``; an entry never changes stage, a hand-off writes a new one): a dozen
``lstat`` and a few directory reads. A record without it (written before the field
existed) gets the look in every stage, as before. A parent found absent has left the
spool for good (its id is never reused), so the look may come at any time before the
child's removal; ``Queue`` makes it in the same I/O job as that removal.

Clean-up, bounded: when an entry leaves the spool (complete, bounce, delete), the
tombstones of its children are removed from every stage (``remove_children_of``; not
fsynced: one resurrected by a crash is only stale). To spare a thread hop per entry,
a consumer's complete or bounce looks for them (``has_children``) in the I/O job that
removes the entry, just before the ``unlink``, and removes them after the removal only
if it saw some: never before the removal is durable, or a crash could bring the parent
back without them. A tombstone created between that look and the ``unlink`` (a few
microseconds) is removed by its own writer's step 3, which comes an fsync later and
finds the parent gone, or else stays stale. ``Queue.recover`` removes every
tombstone of its stage whose parent is no longer in the spool (``remove_orphans``), so
whatever a crash leaves behind lives until the next start of that stage's consumer.

A stale tombstone (its parent gone) is harmless: only a hand-off from that parent
reads it, and a parent that has left the spool is never processed again (its removal
was fsynced before the clean-up starts; a parked deletion resurrected by a crash is
``tmp/`` debris, never claimed). That is what lets ``HandedListings`` skip re-reading a
``handed/`` directory whose modification time has not changed since it was listed
(and the list of stages, while the spool directory and ``relay/`` are unchanged):
reading the directory of every stage at each removal was most of the clean-up's cost
(``handed/`` is nearly always empty); a ``stat`` per stage remains. A remembered listing
is used only while the directory's inode and mtime (nanoseconds) are the ones seen by
the ``stat`` made just before it was read, and only when the wall clock read before
that ``stat`` was more than ``QUIET_MARGIN`` past that mtime: any name created or
removed after the ``stat`` then sets an mtime later than the remembered one even on a
file system with coarse (1-2 s) timestamps, so the remembered listing is never used
for a directory that changed since. A clock stepped back by more than the margin could
at worst make the clean-up miss a tombstone, which stays only stale until
``remove_orphans``.

Known limit: a child that failed validation and was deleted from ``corrupt/`` has no
readable parent id, so it gets no tombstone (its parent, if re-run, writes it again).

Blocking functions (the spool's I/O threads). Trust level: names and empty files under
the spool directory; no content.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from gateway.spool.atomic import DELETING_SUFFIX, FILE_MODE
from gateway.spool.ids import is_queue_id
from gateway.spool.layout import Layout, StageDirs
from gateway.spool.stage_lookup import name_exists
from gateway.spool.stagefiles import locate

_SEPARATOR = "."
QUIET_MARGIN = 2.0  # seconds between a directory's mtime and a listing that may be kept


def tombstone_name(parent: str, child: str) -> str:
    """``<parent>.<child>``: the file name of the tombstone of one hand-off."""
    return f"{parent}{_SEPARATOR}{child}"


def parent_of(name: str) -> str | None:
    """The parent id of a tombstone's file name, or None if ``name`` is not one."""
    parent, separator, child = name.partition(_SEPARATOR)
    if separator and is_queue_id(parent) and is_queue_id(child):
        return parent
    return None


def has_tombstone(dirs: StageDirs, parent: str, child: str) -> bool:
    """True when the child ``child`` of ``parent`` was removed from ``dirs``' stage."""
    return name_exists(os.path.join(dirs.handed, tombstone_name(parent, child)))


def write_tombstone(dirs: StageDirs, parent: str, child: str) -> None:
    """Create the (empty, 0600) tombstone; the caller fsyncs ``handed/``. Idempotent."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dirs.handed / tombstone_name(parent, child), flags, FILE_MODE)
    os.close(fd)


def remove_tombstone(dirs: StageDirs, parent: str, child: str) -> None:
    """Remove one tombstone if it is there."""
    _unlink_quietly(dirs.handed / tombstone_name(parent, child))


def parent_alive(layout: Layout, parent: str, stage: str | None = None) -> bool:
    """True while ``parent`` may still be processed: it is in a state directory of its
    stage, or parked in that stage's ``tmp/`` by an operator's ``delete`` (which puts it
    back if the deletion cannot be audited). ``stage``: the parent's stage if known (a
    record's ``parent_stage``); None looks in every stage.

    A named stage is looked at without checking first that it exists: a missing one
    only makes every look miss (``find_entry``, ``_parked``), and it is the rare case;
    the ``stat`` of the stage was one system call more for every removal of a child."""
    for name in layout.stages_on_disk() if stage is None else (stage,):
        dirs = layout.stage(name)
        if locate(dirs, parent) is not None or _parked(dirs, parent):
            return True
    return False


Stamp = tuple[int, int] | None
"""A directory's inode and mtime in nanoseconds; None if it does not exist."""


def _stamp(directory: Path) -> Stamp:
    try:
        info = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_ino, info.st_mtime_ns


class HandedListings:
    """The ``handed/`` directories of the spool and their names, read again only when
    they changed.

    A listing is kept only under the rule of the module docstring (``QUIET_MARGIN``);
    the list of stages likewise, keyed by the stamps of the directories that hold the
    stages (``Layout.stage_containers``). One per consumer ``Queue``, used from the I/O
    threads: a dict read or write and an attribute assignment are atomic in CPython,
    and each kept listing is stored with the stamps it was read under, so two threads
    at worst both read a directory. ``clock`` is the wall clock the file system stamps
    times with (replaced in tests)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._known: dict[Path, tuple[Stamp, tuple[str, ...]]] = {}
        self._stages: tuple[tuple[Stamp, ...], tuple[Path, ...]] | None = None

    def _quiet(self, now: float, stamps: Sequence[Stamp]) -> bool:
        """True if every stamp is older than ``now`` by more than the margin."""
        return all(stamp is None or now - stamp[1] / 1e9 > QUIET_MARGIN for stamp in stamps)

    def handed_dirs(self, layout: Layout) -> tuple[Path, ...]:
        """The ``handed/`` directory of every stage on disk."""
        now = self._clock()  # before the stats: see the module docstring
        stamps = tuple(_stamp(directory) for directory in layout.stage_containers())
        known = self._stages
        if known is not None and known[0] == stamps:
            return known[1]
        found = tuple(layout.stage(stage).handed for stage in layout.stages_on_disk())
        self._stages = (stamps, found) if self._quiet(now, stamps) else None
        return found

    def names(self, directory: Path) -> tuple[str, ...]:
        """The names in ``directory`` (sorted; empty if it does not exist)."""
        now = self._clock()  # before the stat: see the module docstring
        stamp = _stamp(directory)
        if stamp is None:
            return ()
        known = self._known.get(directory)
        if known is not None and known[0] == stamp:
            return known[1]
        names = tuple(_names(directory))
        if self._quiet(now, (stamp,)):
            self._known[directory] = (stamp, names)
        else:
            self._known.pop(directory, None)
        return names


def remove_children_of(
    layout: Layout, parent: str, listings: HandedListings | None = None
) -> list[str]:
    """Remove the tombstones of ``parent``'s children from every stage; their names.

    ``listings`` skips reading a ``handed/`` that has not changed (module docstring)."""
    removed: list[str] = []
    for handed, name in _children(layout, parent, listings):
        _unlink_quietly(handed / name)
        removed.append(name)
    return removed


def has_children(layout: Layout, parent: str, listings: HandedListings | None = None) -> bool:
    """True if a stage holds a tombstone of one of ``parent``'s children."""
    return next(_children(layout, parent, listings), None) is not None


def _children(
    layout: Layout, parent: str, listings: HandedListings | None
) -> Iterator[tuple[Path, str]]:
    prefix = parent + _SEPARATOR
    if listings is None:
        every = tuple(layout.stage(stage).handed for stage in layout.stages_on_disk())
        listed: Callable[[Path], Sequence[str]] = _names
    else:
        every, listed = listings.handed_dirs(layout), listings.names
    for handed in every:
        for name in listed(handed):
            if name.startswith(prefix):
                yield handed, name


def remove_orphans(layout: Layout, dirs: StageDirs) -> list[str]:
    """Remove the tombstones of ``dirs`` whose parent has left the spool; their names.

    A name that is not a tombstone's is left alone (an operator's file is not ours).
    """
    removed: list[str] = []
    for name in _names(dirs.handed):
        parent = parent_of(name)
        if parent is not None and not parent_alive(layout, parent):
            _unlink_quietly(dirs.handed / name)
            removed.append(name)
    return removed


def _parked(dirs: StageDirs, name: str) -> bool:
    """Whether ``name`` is parked in ``tmp/`` by a deletion. A fresh listing each time,
    never one remembered (``HandedListings``): a miss here lets a child go without its
    tombstone, so it may not depend on the wall clock as the clean-up's listings do."""
    prefix = name + _SEPARATOR
    return any(
        each.startswith(prefix) and each.endswith(DELETING_SUFFIX) for each in _names(dirs.tmp)
    )


def _names(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

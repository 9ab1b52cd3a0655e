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

1. if the parent is still in the spool (``parent_alive``: in a state directory of any
   stage, or parked by an operator's ``delete`` in a ``tmp/``), create the tombstone and
   fsync ``handed/`` (group-committed, ``gateway.spool.commit``);
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
every stage (a few dozen ``lstat``).

Clean-up, bounded: when an entry leaves the spool (complete, bounce, delete), the
tombstones of its children are removed from every stage (``remove_children_of``; not
fsynced: one resurrected by a crash is only stale). ``Queue.recover`` removes every
tombstone of its stage whose parent is no longer in the spool (``remove_orphans``), so
whatever a crash leaves behind lives until the next start of that stage's consumer.

Known limit: a child that failed validation and was deleted from ``corrupt/`` has no
readable parent id, so it gets no tombstone (its parent, if re-run, writes it again).

Blocking functions (the spool's I/O threads). Trust level: names and empty files under
the spool directory; no content.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.spool.atomic import DELETING_SUFFIX, FILE_MODE
from gateway.spool.ids import is_queue_id
from gateway.spool.layout import Layout, StageDirs
from gateway.spool.stagefiles import locate

_SEPARATOR = "."


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
    return os.path.lexists(dirs.handed / tombstone_name(parent, child))


def write_tombstone(dirs: StageDirs, parent: str, child: str) -> None:
    """Create the (empty, 0600) tombstone; the caller fsyncs ``handed/``. Idempotent."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dirs.handed / tombstone_name(parent, child), flags, FILE_MODE)
    os.close(fd)


def remove_tombstone(dirs: StageDirs, parent: str, child: str) -> None:
    """Remove one tombstone if it is there."""
    _unlink_quietly(dirs.handed / tombstone_name(parent, child))


def parent_alive(layout: Layout, parent: str) -> bool:
    """True while ``parent`` may still be processed: it is in a state directory of a
    stage, or parked in a ``tmp/`` by an operator's ``delete`` (which puts it back if
    the deletion cannot be audited)."""
    for stage in layout.stages_on_disk():
        dirs = layout.stage(stage)
        if locate(dirs, parent) is not None or _parked(dirs, parent):
            return True
    return False


def remove_children_of(layout: Layout, parent: str) -> list[str]:
    """Remove the tombstones of ``parent``'s children from every stage; their names."""
    prefix = parent + _SEPARATOR
    removed: list[str] = []
    for stage in layout.stages_on_disk():
        handed = layout.stage(stage).handed
        for name in _names(handed):
            if name.startswith(prefix):
                _unlink_quietly(handed / name)
                removed.append(name)
    return removed


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
    prefix = name + _SEPARATOR
    return any(
        each.startswith(prefix) and each.endswith(DELETING_SUFFIX) for each in _names(dirs.tmp)
    )


def _names(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

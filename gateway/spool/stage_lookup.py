"""Where the entries of one stage are, and what their files say (blocking, I/O threads).

Role: the read-only half of ``gateway.spool.stagefiles``: finding an entry by name
(``find_entry``, ``locate``), listing a state directory with each file's record or its
damage (``scan``, ``inspect``, ``EntryInfo``), the slot directories under ``active/``
(``slot_dirs``), and reading a record under the name it must bear (``read_named``,
``read_quietly``). Plain functions over a ``StageDirs``, testable without an event loop;
``Queue`` runs them in the spool's I/O threads.

Invariants:

- a file is trusted only if its record validates *and* its name is the queue id
  inside it (a renamed or copied file would otherwise be processed under another id;
  ``read_named``, and ``stagefiles.take`` through ``_named``);
- ``locate`` declares an entry absent only after several passes (``LOCATE_PASSES``)
  over the state directories miss it, because an entry can move from a directory not
  yet looked at into one already looked at during one pass;
- "in ``active/``" means in any slot's active directory (``active/`` for slot 0,
  ``active/<K>/`` for slot K; ``gateway.spool.layout``): ``locate`` and ``scan`` look in
  each, and a slot directory is never an entry.

Trust level: reads under one stage directory (records only, never content); moves and
removes nothing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.spool.entry import read_record
from gateway.spool.errors import CorruptEntry
from gateway.spool.layout import STATES, StageDirs, State, slot_of_name
from gateway.spool.model import QueueRecord

LOCATE_PASSES = 3
# A directory's link count is 2 plus one per subdirectory (its ".."), on the file systems
# that count them (ext4, XFS, tmpfs). Exactly 2 there means no slot's directory, and one
# ``lstat`` saves listing ``active/`` (measured: bench/README.md, "Fewer listings").
# Others report 1 (btrfs, overlayfs for a merged directory: checked, also after a copy-up)
# or count every entry (ZFS): anything but 2 lists, as before. A slot directory made
# during a lookup raises the count for the next pass (``LOCATE_PASSES``). Not proof on:
# the Linux SMB client without Unix extensions (every directory reports 2) and NFS (a
# count from the attribute cache), both outside docs/spool.md's "local ext4 or XFS"; a
# slot that is a symbolic link (not counted) is refused by ``StageDirs.create_active``.
_NO_SUBDIRECTORY = 2


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """One file found by ``scan``: its record, or why it could not be read."""

    stage: str
    state: State
    name: str
    path: Path
    file_size: int
    modified: datetime
    record: QueueRecord | None
    error: str | None
    slot: int = 0  # in ``active/``: the consumer slot holding it


def read_named(path: Path, name: str) -> QueueRecord:
    """The record of ``path``; ``CorruptEntry`` if it does not validate or names another id."""
    return _named(read_record(path), name)


def _named(record: QueueRecord, name: str) -> QueueRecord:
    if record.queue_id != name:
        raise CorruptEntry(f"file name {name} differs from the queue id {record.queue_id} inside")
    return record


def read_quietly(path: Path) -> QueueRecord | None:
    """The record, or None (for audit events about a file that may be damaged or gone)."""
    try:
        return read_record(path)
    except (CorruptEntry, OSError):
        return None


def slot_dirs(dirs: StageDirs) -> list[tuple[int, Path]]:
    """The active directories of slots >= 1 present under ``active/`` (by name only: a
    file that happens to bear a slot's name holds no entry, and is harmless here)."""
    active = dirs.state("active")
    found = ((slot_of_name(name), name) for name in os.listdir(active))
    return sorted((slot, active / name) for slot, name in found if slot is not None)


def _is_slot_dir(directory: Path, name: str) -> bool:
    return slot_of_name(name) is not None and stat.S_ISDIR(os.lstat(directory / name).st_mode)


def name_exists(path: str) -> bool:
    """Whether ``path`` names a file (not followed if it is a symbolic link), as
    ``os.path.lexists`` says, in one ``faccessat2(F_OK, AT_SYMLINK_NOFOLLOW)``: the same
    one system call, but a miss (the usual answer of ``find_entry``) is a return value
    instead of a ``FileNotFoundError`` built and caught, 0.6 us less CPU each (session
    9). ``F_OK`` checks only that the name resolves, with the real ids, which are the
    gateway's own (no set-uid); any error is "absent", as for ``lexists``."""
    return os.access(path, os.F_OK, follow_symlinks=False)


def _existing_path(root: str, state: State, name: str) -> str | None:
    """``<root>/<state>/<name>`` if it exists; for ``active``, in whichever slot's
    directory. Plain strings: this runs a dozen times per hand-off and per removal of
    a child (``find_entry``), where building ``Path`` objects cost as much as the
    ``lstat`` calls themselves."""
    path = f"{root}/{state}/{name}"
    if name_exists(path):
        return path
    if state != "active":
        return None
    active = f"{root}/active"
    try:
        if os.lstat(active).st_nlink == _NO_SUBDIRECTORY:
            return None  # no slot's directory: the listing below would find none
        names = os.listdir(active)
    except (FileNotFoundError, NotADirectoryError):  # a stage being created, or none: empty
        return None
    slots = sorted(slot for slot in map(slot_of_name, names) if slot is not None)
    in_slots = (f"{active}/{slot}/{name}" for slot in slots)
    return next((path for path in in_slots if name_exists(path)), None)


def find_entry(dirs: StageDirs, name: str) -> tuple[State, Path] | None:
    """The state holding ``name`` and its path, or None after ``LOCATE_PASSES`` misses."""
    root = os.fspath(dirs.root)
    for _ in range(LOCATE_PASSES):
        for state in STATES:
            path = _existing_path(root, state, name)
            if path is not None:
                return state, Path(path)
    return None


def locate(dirs: StageDirs, name: str) -> State | None:
    """The state directory holding ``name`` (any slot's, for ``active``), or None after
    ``LOCATE_PASSES`` misses."""
    found = find_entry(dirs, name)
    return None if found is None else found[0]


def inspect(
    dirs: StageDirs, state: State, name: str, *, slot: int = 0, path: Path | None = None
) -> EntryInfo | None:
    """One file's ``EntryInfo`` (``path`` defaults to ``state/name``); None if it is gone."""
    path = path or dirs.entry(state, name)
    try:
        status = os.lstat(path)
        record, error = read_named(path, name), None
    except FileNotFoundError:
        return None
    except CorruptEntry as corrupt:
        record, error = None, corrupt.reason
    return EntryInfo(
        stage=dirs.name,
        state=state,
        name=name,
        path=path,
        file_size=status.st_size,
        modified=datetime.fromtimestamp(status.st_mtime, UTC),
        record=record,
        error=error,
        slot=slot,
    )


def scan(dirs: StageDirs, state: State) -> list[EntryInfo]:
    """Every file of one state directory, by name; for ``active``, slot 0's then each
    other slot's (the slot directories themselves are not listed)."""
    if state != "active":
        found = (inspect(dirs, state, name) for name in sorted(os.listdir(dirs.state(state))))
        return [info for info in found if info is not None]
    infos: list[EntryInfo] = []
    for slot, directory in [(0, dirs.active(0)), *slot_dirs(dirs)]:
        for name in _entry_names(directory, slot):
            info = inspect(dirs, state, name, slot=slot, path=directory / name)
            if info is not None:
                infos.append(info)
    return infos


def _entry_names(directory: Path, slot: int) -> list[str]:
    """The names of ``directory`` (a slot's active directory) that can be entries."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):  # gone, or a stray file of that name
        return []
    if slot != 0:
        return names
    return [name for name in names if not _is_slot_dir_quietly(directory, name)]


def _is_slot_dir_quietly(directory: Path, name: str) -> bool:
    try:
        return _is_slot_dir(directory, name)
    except FileNotFoundError:
        return False

"""Where every queue lives on disk: one directory per stage, one per state.

The spool is the interface between the stages of the gateway (ARCHITECTURE, "Each stage
reads one queue directory and writes the next"), so its layout is the contract::

    <spool_dir>/                      0700, [gateway] spool_dir; flock(2) by ``serve``
      received/        SMTP front (submission, relay clients), the gateway's own DSN/MDN
                       -> secure agent (route, sign, encrypt)
      relay/<route>/   secure agent -> relay of [[routes]] <route> (retries, DSN)
      inbound/         SMTP front (mail for local_domains from outside), IMAP fetcher
                       -> inbound agent (decrypt, verify)
      local/           inbound agent -> local delivery (LMTP, SMTP, maildir)

and inside every stage the same state directories (Postfix's names, STYLE 5)::

      tmp/             files being written; never an entry (a crash leaves debris here,
                       removed by the stage's recovery once stale)
      incoming/        complete entries waiting for the stage's consumer
      active/          entries the consumer of slot 0 has claimed and is working on
        <K>/           the same for the consumer of slot K (1..63), when several
                       consumers share the stage (``[gateway] crypto_workers``)
      deferred/        entries waiting for a retry; the file's mtime is the next attempt
      hold/            stopped until an operator releases them (``missive queue release``)
      corrupt/         files that failed validation; never deleted by the gateway
      handed/          empty tombstones ``<parent id>.<child id>``: a child of this stage
                       was removed while its parent may still be re-run; not an entry
                       (``gateway.spool.tombstones``)
      consumer.lock    flock(2) held by the stage's consumer of slot 0 while it runs
      consumer-<K>.lock  the same for the consumer of slot K

There is no ``done/``: once every recipient of an entry has its final outcome and the
outcome is in the audit trail, the entry is removed (data minimisation: a delivered
health message is not kept in clear on the relay; the trail keeps its SHA-256). A
"delivered" or "bounced" message is therefore an audit event, not a directory.

Consumer slots (decision): several processes may consume one stage at once, each under
its own *slot* number. Slot K claims into its own active directory and holds its own
lock file, so a consumer that starts can tell which claimed entries belong to a dead
consumer (the lock of their slot is free) and never touches those of a live one.
Slot 0 is exactly the single-consumer layout (``active/``, ``consumer.lock``); the
directory of slot K >= 1 is ``active/<K>/``, inside ``active/`` so that everything
being processed is under ``active/`` and a slot name (1 to 2 digits) can never be a
queue id (26 characters). Slot directories are created by their consumer's first
recovery, never by ``create``.

Invariants: every directory is created 0700 (and an existing one tightened to 0700);
stage names are checked here so that no configuration value can make a path leave the
spool (a route name is ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``, never ``.`` or ``..``).
All of ``tmp/`` and the state directories of a stage are on one file system, so a move
between them is one ``rename(2)``.

Trust level: path arithmetic and ``mkdir``; no entry content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from gateway.errors import MissiveError
from gateway.pki.files import ensure_private_dir

State = Literal["incoming", "active", "deferred", "hold", "corrupt"]
STATES: tuple[State, ...] = get_args(State)

RECEIVED = "received"
INBOUND = "inbound"
LOCAL = "local"
RELAY_PREFIX = "relay/"
FIXED_STAGES = (RECEIVED, INBOUND, LOCAL)

TMP_DIR = "tmp"
HANDED_DIR = "handed"
LOCK_FILE = "consumer.lock"
CONSUMER_SLOTS = 64  # slots 0..63 ([gateway] crypto_workers is at most 64)
_SLOT_RE = re.compile(r"[1-9][0-9]?")
_ROUTE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def relay_stage(route: str) -> str:
    """The stage name of the relay queue of ``route`` (``relay/<route>``)."""
    return check_stage_name(RELAY_PREFIX + route)


def check_slot(slot: int) -> int:
    """``slot`` if it is a consumer slot number (0..63); ``ValueError`` otherwise."""
    if isinstance(slot, bool) or not 0 <= slot < CONSUMER_SLOTS:
        raise ValueError(f"not a consumer slot: {slot!r} (expected 0 to {CONSUMER_SLOTS - 1})")
    return slot


def slot_of_name(name: str) -> int | None:
    """The slot whose directory is ``active/<name>``, or None if ``name`` names none."""
    if _SLOT_RE.fullmatch(name) and int(name) < CONSUMER_SLOTS:
        return int(name)
    return None


def check_stage_name(name: str) -> str:
    """``name`` if it is a stage name; ``ValueError`` otherwise."""
    if name in FIXED_STAGES:
        return name
    route = name.removeprefix(RELAY_PREFIX)
    if route != name and _ROUTE_RE.fullmatch(route):
        return name
    raise ValueError(
        f"not a spool stage: {name!r} (expected received, inbound, local or relay/<route>)"
    )


class UnsafeSlotDirectory(MissiveError):
    """A symbolic link where a consumer slot's active directory belongs (exit status
    2, as ``consumer_lock.UnsafeLockFile``): not followed, not removed; the worker
    stops with one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"consumer slot directory {path} is a symbolic link: not followed, not removed; "
            "find out how it got there, remove it, then start the worker again"
        )


@dataclass(frozen=True, slots=True)
class StageDirs:
    """The directories of one stage (see the module docstring)."""

    name: str
    root: Path

    def state(self, state: State) -> Path:
        return self.root / state

    @property
    def tmp(self) -> Path:
        return self.root / TMP_DIR

    @property
    def handed(self) -> Path:
        return self.root / HANDED_DIR

    @property
    def lock_file(self) -> Path:
        """The lock of slot 0 (the single consumer of a stage)."""
        return self.root / LOCK_FILE

    def consumer_lock(self, slot: int) -> Path:
        """The lock file held by the consumer of ``slot`` while it runs."""
        return self.lock_file if check_slot(slot) == 0 else self.root / f"consumer-{slot}.lock"

    def active(self, slot: int) -> Path:
        """The directory the consumer of ``slot`` claims into."""
        base = self.state("active")
        return base if check_slot(slot) == 0 else base / str(slot)

    def entry(self, state: State, name: str) -> Path:
        """Where ``name`` is in ``state`` (for ``active``: slot 0's directory)."""
        return self.root / state / name

    def create(self) -> None:
        """Create the stage and all its state directories, 0700 (idempotent).

        The spool directory itself (and ``relay/``) are created first, 0700 as well:
        ``mkdir -p`` would give the parents the umask's mode.
        """
        parent = self.root.parent
        if self.name.startswith(RELAY_PREFIX):
            ensure_private_dir(parent.parent)
        ensure_private_dir(parent)
        ensure_private_dir(self.root)
        ensure_private_dir(self.tmp)
        ensure_private_dir(self.handed)
        for state in STATES:
            ensure_private_dir(self.state(state))

    def create_active(self, slot: int) -> None:
        """Create the active directory of ``slot`` (0700; idempotent). A symbolic link
        in its place is refused (``UnsafeSlotDirectory``), never followed: the chmod to
        0700 would change the link's target, and ``stage_lookup`` knows that ``active/``
        holds no slot directory from its link count, which a link does not raise."""
        path = self.active(slot)
        if path.is_symlink():
            raise UnsafeSlotDirectory(path)
        ensure_private_dir(path)


@dataclass(frozen=True, slots=True)
class Layout:
    """The spool directory and the stages under it."""

    root: Path

    def stage(self, name: str) -> StageDirs:
        return StageDirs(check_stage_name(name), self.root / check_stage_name(name))

    def create_root(self) -> None:
        ensure_private_dir(self.root)

    def stage_containers(self) -> tuple[Path, Path]:
        """The directories whose entries are the stages (the spool directory, ``relay/``):
        a stage appears or goes only with a change of one of them."""
        return self.root, self.root / RELAY_PREFIX.rstrip("/")

    def stages_on_disk(self) -> tuple[str, ...]:
        """The stages that exist under the spool directory, in layout order."""
        found = [name for name in FIXED_STAGES if (self.root / name).is_dir()]
        relay = self.root / RELAY_PREFIX.rstrip("/")
        if relay.is_dir():
            found.extend(
                RELAY_PREFIX + child.name
                for child in sorted(relay.iterdir())
                if child.is_dir() and _ROUTE_RE.fullmatch(child.name)
            )
        return tuple(found)

"""The values the queue API hands out: a claimed entry, a recovery report, a checked name.

Role: ``Claimed`` is an entry a consumer holds in its slot's active directory (what
``Queue.claim`` returns and every consumer-side operation takes back);
``RecoveryReport`` is what ``Queue.recover`` did; ``check_entry_name`` refuses, before
any path is built, a name that could not name a file of a state directory.

Invariants: ``Claimed`` is frozen; its ``preloaded`` bytes are the content as checked
against the record's SHA-256 at claim time (or the damage found then), never bytes read
later. No I/O here but ``Claimed.open``, which returns a blocking reader for worker code.

Security: ``check_entry_name`` is the guard of every operator action by name (``missive
queue ...``): no ``/``, no NUL, no leading dot, at most 255 bytes, so a name never walks
out of its state directory or names a temp file of ``tmp/``.

Trust level: any gateway process that owns a stage (``gateway.spool.queue``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.spool.entry import EntryReader
from gateway.spool.errors import CorruptEntry, EntryNotFound
from gateway.spool.ids import QueueId
from gateway.spool.layout import State
from gateway.spool.model import QueueRecord

_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class Claimed:
    """An entry a consumer holds in ``active/``: its record, and its content on demand.

    ``preloaded`` is the whole content when the claim read it (``Queue.read_all`` returns
    it), or its damage (``CorruptEntry``: the SHA-256 did not match); None if not read."""

    stage: str
    queue_id: QueueId
    path: Path
    record: QueueRecord
    claimed_from: State
    preloaded: bytes | CorruptEntry | None = field(default=None, repr=False, compare=False)

    def open(self) -> EntryReader:
        """A blocking reader of the content (for worker code outside the event loop)."""
        return EntryReader(self.path)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What ``recover`` did: entries moved back, debris removed from ``tmp/``, tombstones
    of ``handed/`` removed because their parent has left the spool."""

    requeued: tuple[str, ...]
    removed_temps: tuple[str, ...]
    removed_tombstones: tuple[str, ...] = ()


def check_entry_name(name: str) -> str:
    """``name`` if it can name a file in a state directory; ``UsageError`` if not."""
    if not name or len(name) > _MAX_NAME or "/" in name or "\x00" in name or name.startswith("."):
        raise EntryNotFound(f"not a queue id or entry name: {name!r}")
    return name

"""What the import pipeline hands entries to: the sink protocols and their vocabulary.

- ``EntrySink.put(entry)`` writes one merged entry and says what it did (``Outcome``),
  raises ``EntryRejected`` for an entry it refuses, ``TargetError`` when it cannot go
  on. The LDAP upserter and the LDIF writer implement it.
- ``RenderingSink`` is a sink whose work per entry is pure formatting (the LDIF
  writer): its ``recipe`` (picklable) turns an entry into bytes in a worker process,
  and ``put_rendered`` appends what the workers produced, in order. The pipeline uses
  it to spread pass 2 over several cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from annuaire.model import Entry

Outcome = Literal["added", "updated", "unchanged", "written"]


@dataclass(frozen=True, slots=True)
class EntryFailure:
    """An entry the target refused: its key, the line of its first row, why."""

    key: str
    line: int
    reason: str


class EntrySink(Protocol):
    def put(self, entry: Entry) -> Outcome: ...


class Recipe(Protocol):
    """Turns an entry into the bytes a rendering sink appends (``EntryRejected`` when
    it cannot)."""

    def render(self, entry: Entry) -> bytes: ...


@runtime_checkable
class RenderingSink(Protocol):
    recipe: Recipe

    def put(self, entry: Entry) -> Outcome: ...

    def put_rendered(self, records: bytes) -> None: ...

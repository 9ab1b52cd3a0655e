"""The extract formats the importer knows, by the name ``--format`` takes.

Each format binds a header to a row parser (``bind(header) -> RowParser``, raising
``ExtractFormatError`` for a header that is not its own). ``carries_mailboxes`` says
whether the format is authoritative for an entry's mailboxes: an MSSanté import
replaces the ``mail`` values of an entry it updates (a box gone from the extract is
gone), an RPPS import, which has no mailbox column, leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from annuaire.importers import mssante, rpps
from annuaire.importers.merge import Draft


class RowParser(Protocol):
    """Reads the data rows of one extract. ``width`` is the column count every row must
    have; ``key`` runs every check that can make a row bad (``RowError`` or
    ``EntryError``) and returns the key of its entry (pass 1); calling the parser turns
    a row that passed ``key`` into the draft of its entry (pass 2, ``merge.Draft``)."""

    width: int

    def key(self, fields: Sequence[str]) -> str: ...

    def __call__(self, fields: Sequence[str]) -> Draft: ...


@dataclass(frozen=True)
class ExtractFormat:
    name: str
    label: str
    bind: Callable[[Sequence[str]], RowParser]
    carries_mailboxes: bool


FORMATS: Final[dict[str, ExtractFormat]] = {
    mssante.NAME: ExtractFormat(mssante.NAME, mssante.LABEL, mssante.bind, True),
    rpps.NAME: ExtractFormat(rpps.NAME, rpps.LABEL, rpps.bind, False),
}

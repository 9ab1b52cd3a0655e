"""Import target ``ldif:OUT``: the entries as one LDIF file, replaced atomically.

Role: write each merged entry as an RFC 2849 content record (``annuaire.ldif``'s
formatter and writer, ``annuaire.mapping`` for the DN and attributes), so the result is
what the embedded LDIF backend loads and what ``slapadd``/``ldapadd`` accept.

Invariants:
- Idempotent re-runs: the output is rebuilt from the extract every time, in a temporary
  sibling of ``OUT`` that replaces it by ``rename`` only when the whole import has
  succeeded (write, fsync, chmod 0644, rename, fsync of the directory). A failed or
  interrupted import leaves the previous file untouched, and a reader (the LDIF backend
  reloading on change) never sees half a file.
- The same extract gives a byte-identical file (entry order is deterministic), whether
  the records were formatted here or by worker processes (``LdifRecipe.render`` is the
  one formatting function both use).
- Only entries go in: no parent entries, and no ``version: 1`` line (as
  ``annuaire.ldif`` writes it: ``slapadd`` refuses that line). Loading the file into a
  fresh slapd needs the suffix and ``base_dn`` entries first (``docs/annuaire.md``).

Why not ``annuaire.ldif.atomic_ldif_file``: it yields a record writer only, and the
parallel import appends records that workers formatted; this module opens the
temporary file itself, the same way, and formats every record with
``annuaire.ldif.format_record``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from annuaire.errors import LdifError
from annuaire.importers.errors import EntryRejected, TargetError
from annuaire.importers.sinks import Outcome
from annuaire.ldif import format_record
from annuaire.mapping import entry_dn, entry_to_attributes
from annuaire.model import Entry
from gateway.config import AnnuaireAttributes

OUTPUT_MODE = 0o644  # the annuaire is public directory data
_BUFFER = 1 << 20


@dataclass(frozen=True, slots=True)
class LdifRecipe:
    """How an entry becomes LDIF bytes: picklable, so worker processes can use it."""

    base_dn: str
    attributes: AnnuaireAttributes
    health_schema: bool = True

    def render(self, entry: Entry) -> bytes:
        """The entry's record (ASCII, ending with its blank line); ``EntryRejected``
        when the LDIF formatter refuses it."""
        attributes = entry_to_attributes(entry, self.attributes, health_schema=self.health_schema)
        try:
            return format_record(entry_dn(entry, self.base_dn), attributes).encode("ascii")
        except LdifError as error:
            raise EntryRejected(str(error)) from None


class LdifSink:
    """Appends entries as LDIF records to an open output stream."""

    def __init__(self, stream: BinaryIO, recipe: LdifRecipe) -> None:
        self._stream = stream
        self.recipe = recipe

    def put(self, entry: Entry) -> Outcome:
        self._stream.write(self.recipe.render(entry))
        return "written"

    def put_rendered(self, records: bytes) -> None:
        """Append records a worker formatted with ``self.recipe``."""
        self._stream.write(records)


@contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A temporary sibling of ``path`` that replaces it when the block ends normally."""
    if path.is_dir():
        raise TargetError(f"{path}: is a directory, expected an LDIF file name")
    if not path.parent.is_dir():
        raise TargetError(f"{path}: the directory {path.parent} does not exist")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise TargetError(f"{path}: cannot write in {path.parent} ({error.strerror})") from None
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb", buffering=_BUFFER) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        temporary.chmod(OUTPUT_MODE)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextmanager
def ldif_sink(
    path: Path,
    base_dn: str,
    attributes: AnnuaireAttributes,
    *,
    health_schema: bool = True,
) -> Iterator[LdifSink]:
    """An ``LdifSink`` whose file replaces ``path`` when the ``with`` block ends
    normally; on an exception the temporary file is removed and ``path`` kept."""
    with _replacing(path) as stream:
        yield LdifSink(stream, LdifRecipe(base_dn, attributes, health_schema))

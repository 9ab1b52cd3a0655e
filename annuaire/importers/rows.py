"""Reading an extract line by line: decode, split, count columns, locate columns.

Role: the format-independent part of parsing the public extracts (MSSanté, RPPS), which
are UTF-8 text, one header line, fields separated by ``|``, no quoting (a ``"`` or
``'`` in a field is data). Everything here streams: one line in memory at a time.

Invariants:
- Line numbers are physical lines of the file, 1 being the header, so a sysadmin can
  open the file at the line a report names.
- A line is decoded on its own (strict UTF-8): one bad byte spoils one row, not the
  file. A UTF-8 byte-order mark before the header is ignored; ``\\r\\n`` and ``\\n``
  line ends are both accepted.
- A row must have exactly as many fields as the header (a trailing ``|``, as in the
  RPPS files, is an empty last field on both). Control characters other than TAB are
  refused: they have no place in a name or an address and would only travel into
  LDIF and LDAP as base64 noise. A field longer than the model's limit (1,024
  characters) is refused too, so no model check can fail later on a row accepted here.
- Columns are found by header *name*, compared without case, accents or repeated
  spaces, so a column moved or re-cased by a new extract version still maps; a
  required column missing is an ``ExtractFormatError`` naming it.

Why not the ``csv`` module: these files have no quoting, and ``str.split`` is both
exact for them and several times faster; the benchmark compares the two.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final

from annuaire.importers.errors import ExtractFormatError, RowError
from annuaire.model import MAX_TEXT_LENGTH

SEPARATOR: Final = "|"
_BOM: Final = "\ufeff"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was skipped: its line number and why."""

    line: int
    reason: str


def fold_name(name: str) -> str:
    """A header name compared without case, accents, apostrophe style or extra spaces."""
    decomposed = unicodedata.normalize("NFKD", name.replace("’", "'"))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


def physical_lines(stream: BinaryIO, *, start: int = 1) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes without the line end)`` for each remaining line of
    ``stream``, numbered from ``start`` (2 once the header has been read)."""
    for number, raw in enumerate(stream, start=start):
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        yield number, raw


def decode_line(raw: bytes) -> str:
    """Strict UTF-8 decoding of one line; ``RowError`` names the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.start + 1].hex()
        raise RowError(f"not valid UTF-8 (byte 0x{bad} at offset {error.start})") from None


def split_row(text: str, expected: int) -> list[str]:
    """The fields of a decoded data line, checked for count, control characters and
    length (no field longer than the model's ``MAX_TEXT_LENGTH``)."""
    fields = text.split(SEPARATOR)
    if len(fields) != expected:
        raise RowError(f"{len(fields)} columns, expected {expected}")
    if not text.isprintable():  # fast path: a printable line has no control character
        control = _CONTROL.search(text)
        if control is not None:
            raise RowError(f"control character 0x{ord(control.group()):02x} in the row")
    if len(text) > MAX_TEXT_LENGTH:
        longest = max(range(len(fields)), key=lambda i: len(fields[i]))
        if len(fields[longest]) > MAX_TEXT_LENGTH:
            raise RowError(f"column {longest + 1} longer than {MAX_TEXT_LENGTH} characters")
    return fields


def read_header(stream: BinaryIO, label: str) -> list[str]:
    """The header fields of an extract (first line), or ``ExtractFormatError``."""
    first = stream.readline()
    if not first:
        raise ExtractFormatError(f"empty file: expected the header line of {label}")
    try:
        text = first.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ExtractFormatError(f"line 1: the header of {label} is not UTF-8 text") from None
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    return text.split(SEPARATOR)


@dataclass(frozen=True, slots=True)
class Column:
    """One column a format reads: the names it may carry in the header, and whether an
    extract without it is still usable (an optional column reads as empty)."""

    names: tuple[str, ...]
    required: bool = True


def locate_columns(
    header: Sequence[str], columns: Mapping[str, Column], label: str
) -> dict[str, int]:
    """``{field: index}`` for each column of ``columns`` (-1 for an absent optional
    one), or ``ExtractFormatError`` listing every required column not found."""
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        positions.setdefault(fold_name(name), index)
    found: dict[str, int] = {}
    missing: list[str] = []
    for field, column in columns.items():
        index = next((positions[k] for k in map(fold_name, column.names) if k in positions), -1)
        if index < 0 and column.required:
            missing.append(column.names[0])
        found[field] = index
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        raise ExtractFormatError(
            f"line 1: not {label}: the header lacks the column(s) {listed} "
            f"(found {len(header)} columns)"
        )
    return found


def pick(fields: Sequence[str], indexes: Sequence[int]) -> list[str]:
    """The stripped values at ``indexes`` (an index of -1 gives ``""``)."""
    return [fields[i].strip() if i >= 0 else "" for i in indexes]

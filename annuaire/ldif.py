"""Streaming LDIF (RFC 2849) reader and writer for content records.

Role: the embedded annuaire is an LDIF file; importers write one; the demo data is one.
Both directions stream: the reader yields one record at a time from a binary stream and
the writer appends one record at a time, so memory stays bounded whatever the size.

Writer (RFC 2849 §2-§3):
- one blank line between records; no ``version: 1`` line unless asked for
  (``version=True``): OpenLDAP 2.5's ``slapadd``, the bulk loader, refuses a file that
  has one (measured: with or without a blank line after it), and ``slapcat`` and
  ``ldapsearch`` do not write it either; ``ldapadd`` and this reader accept both;
- a value is written as ``attr: value`` only when it is a SAFE-STRING that is also
  printable ASCII (no control character, not starting with space, ``:`` or ``<``, not
  ending with a space: the RFC's note on trailing spaces); anything else, every
  ``bytes`` value and non-ASCII text included, is ``attr:: <base64>`` of its octets
  (UTF-8 for text). The output is therefore pure ASCII;
- lines are folded at 76 columns (the RFC's SHOULD); a continuation starts with one space;
- attribute descriptions are checked (RFC 4512 §2.5: a descriptor or an OID, then
  ``;options``) so a name can never inject a line.

Reader:
- unfolds continuation lines, skips comments (``#``, folded ones too), accepts LF or
  CRLF, an optional ``version: 1`` (any other version is an error);
- ``attr:: base64`` is decoded strictly; plain values are taken as they are (UTF-8
  bytes are accepted in them, as hand-written files often have);
- every value comes back as ``bytes`` (like ldap3's raw attributes): the mapping decides
  what is text;
- refused with ``LdifError`` and the line number: ``attr:< URL`` values (reading a file
  or a URL named by the data would be a way to exfiltrate local files), change records
  other than ``changetype: add``, ``control:`` lines, a record not starting with ``dn:``,
  an attribute line without ``:``, bad base64, an invalid attribute description.

Why by hand: ldap3 has an LDIF *producer* for change requests but no public content
reader or streaming writer; python-ldap's ``ldif`` module would pull a C extension in for
about 200 lines of well-specified parsing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from annuaire.errors import LdifError

LINE_LIMIT = 76
PUBLIC_FILE_MODE = 0o644

AttributeInput = Mapping[str, Iterable[str | bytes]] | Iterable[tuple[str, str | bytes]]

_SAFE_STRING = re.compile(r"[\x21-\x39\x3b\x3d-\x7e][\x20-\x7e]*")
_ATTRIBUTE_DESCRIPTION = re.compile(rb"([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)*)(;[A-Za-z0-9-]+)*")


# ------------------------------------------------------------------ writing
_UNSAFE_FIRST = " :<"  # the characters SAFE-INIT-CHAR excludes among printable ASCII
_NAME_CACHE_SIZE = 1024  # attribute names are a small fixed set; bounded all the same


def _is_safe(value: str) -> bool:
    # C-level str tests instead of a regex: isascii+isprintable is exactly [\x20-\x7e]*
    return not value or (
        value.isascii()
        and value.isprintable()
        and value[0] not in _UNSAFE_FIRST
        and value[-1] != " "
    )


def _fold(line: str, limit: int) -> str:
    if len(line) <= limit:
        return line
    step = limit - 1
    rest = line[limit:]
    pieces = [line[:limit], *(" " + rest[i : i + step] for i in range(0, len(rest), step))]
    return "\n".join(pieces)


@functools.lru_cache(maxsize=_NAME_CACHE_SIZE)  # the same few names come in every record
def _check_name(name: str) -> None:
    if not name.isascii() or not _ATTRIBUTE_DESCRIPTION.fullmatch(name.encode("ascii")):
        raise LdifError(f"invalid attribute description {name!r}")


def format_line(name: str, value: str | bytes, *, limit: int = LINE_LIMIT) -> str:
    """One folded ``name: value`` or ``name:: base64`` line (no trailing newline)."""
    if isinstance(value, str):
        if _is_safe(value):
            return _fold(f"{name}: {value}" if value else f"{name}:", limit)
        try:
            value = value.encode("utf-8")
        except UnicodeEncodeError:
            raise LdifError(f"{name}: value is not valid Unicode") from None
    return _fold(f"{name}:: {base64.b64encode(value).decode('ascii')}", limit)


def _one_value_groups(
    pairs: Iterable[tuple[str, str | bytes]],
) -> Iterator[tuple[str, Iterable[str | bytes]]]:
    for name, value in pairs:
        yield name, (value,)


def format_record(dn: str, attributes: AttributeInput, *, limit: int = LINE_LIMIT) -> str:
    """One content record, ending with the blank line that separates records."""
    lines = [format_line("dn", dn, limit=limit)]
    append = lines.append
    # a mapping's items are iterated directly: no generator step per attribute
    groups = (
        attributes.items() if isinstance(attributes, Mapping) else _one_value_groups(attributes)
    )
    for name, values in groups:
        if isinstance(values, (str, bytes)):  # a tuple: faster than a union type here
            raise LdifError(f"{name}: give a list of values, not one string")
        unchecked = True  # the name is checked at its first value (none: not checked)
        for value in values:
            if unchecked:
                _check_name(name)
                unchecked = False
            # format_line's plain-value case with _is_safe inlined (the import's hot loop)
            if (
                type(value) is str
                and value
                and value.isascii()
                and value.isprintable()
                and value[0] not in _UNSAFE_FIRST
                and value[-1] != " "
            ):
                line = f"{name}: {value}"
                append(line if len(line) <= limit else _fold(line, limit))
            else:
                append(format_line(name, value, limit=limit))
    return "\n".join(lines) + "\n\n"


class LdifWriter:
    """Append records to a binary stream (``version: 1`` first only when asked)."""

    def __init__(
        self, stream: IO[bytes], *, limit: int = LINE_LIMIT, version: bool = False
    ) -> None:
        if limit < 2:
            raise ValueError("the line limit must be at least 2")
        self._stream = stream
        self._limit = limit
        self.records_written = 0
        if version:
            stream.write(b"version: 1\n")

    def write(self, dn: str, attributes: AttributeInput) -> None:
        """Write one record (``attributes``: a mapping of lists, or (name, value) pairs)."""
        self._stream.write(format_record(dn, attributes, limit=self._limit).encode("ascii"))
        self.records_written += 1

    def comment(self, text: str) -> None:
        """A ``# text`` line per line of ``text`` (control characters replaced)."""
        for line in text.splitlines() or [""]:
            clean = "".join(c if c.isprintable() else "?" for c in line)
            self._stream.write(("# " + clean).encode("utf-8") + b"\n")


@contextmanager
def atomic_ldif_file(path: Path, *, mode: int = PUBLIC_FILE_MODE) -> Iterator[LdifWriter]:
    """Write an LDIF file atomically: a temporary sibling, fsync, rename over ``path``,
    fsync of the directory. On an exception the temporary file is removed and ``path``
    is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as stream:
            yield LdifWriter(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ------------------------------------------------------------------ reading
@dataclass(slots=True)
class LdifRecord:
    """One content record: its DN, its attributes (as written, in order; every value as
    bytes) and the line it starts on."""

    dn: str
    line: int
    attributes: dict[str, list[bytes]] = field(default_factory=dict)

    def values(self, name: str) -> list[bytes]:
        """Values of ``name`` compared case-insensitively (options included)."""
        wanted = name.lower()
        found: list[bytes] = []
        for attribute, values in self.attributes.items():
            if attribute.lower() == wanted:
                found.extend(values)
        return found


class _Reader:
    """State of one pass over a stream (see ``read_ldif``)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.record: LdifRecord | None = None
        self.seen_record = False

    def error(self, problem: str, line: int) -> LdifError:
        return LdifError(problem, source=self.source, line=line)

    def logical_lines(self, stream: Iterable[bytes]) -> Iterator[tuple[int, bytes | None]]:
        """(line number, unfolded line), or (n, None) at a blank line (record end)."""
        parts: list[bytes] = []
        start = 0
        for number, raw in enumerate(stream, 1):
            line = raw.rstrip(b"\n").removesuffix(b"\r")
            if line[:1] == b" " and parts:
                parts.append(line[1:])
                continue
            if line[:1] == b" ":
                raise self.error("continuation line without a line to continue", number)
            if parts:
                yield start, b"".join(parts)
                parts = []
            if not line:
                yield number, None
            else:
                parts, start = [line], number
        if parts:
            yield start, b"".join(parts)

    def parse_value(self, line: bytes, number: int) -> tuple[str, bytes]:
        name, colon, rest = line.partition(b":")
        if not colon:
            raise self.error("expected 'attribute: value'", number)
        if not _ATTRIBUTE_DESCRIPTION.fullmatch(name):
            raise self.error(f"invalid attribute description {name[:64]!r}", number)
        if rest[:1] == b":":
            try:
                value = binascii.a2b_base64(rest[1:].strip(b" "), strict_mode=True)
            except binascii.Error:
                raise self.error(f"{name.decode()}: invalid base64 value", number) from None
        elif rest[:1] == b"<":
            raise self.error(f"{name.decode()}: URL values (attr:< URL) are not supported", number)
        else:
            value = rest.lstrip(b" ")
        return name.decode("ascii"), value

    def feed(self, number: int, line: bytes) -> None:
        """Handle one logical line (records end at blank lines, see ``end_record``)."""
        if line[:1] == b"#":
            return
        name, value = self.parse_value(line, number)
        lowered = name.lower()
        if self.record is None:
            if lowered == "version" and not self.seen_record:
                if value.strip() != b"1":
                    raise self.error("only LDIF version 1 is supported", number)
                return
            if lowered != "dn":
                raise self.error("a record must start with 'dn:'", number)
            try:
                dn = value.decode("utf-8")
            except UnicodeDecodeError:
                raise self.error("dn is not valid UTF-8", number) from None
            self.record = LdifRecord(dn, number)
            self.seen_record = True
            return
        if lowered == "changetype":
            if value.strip().lower() != b"add":
                raise self.error("change records are not supported (content only)", number)
            return
        if lowered == "control":
            raise self.error("control lines are not supported (content only)", number)
        self.record.attributes.setdefault(name, []).append(value)
        return

    def end_record(self) -> LdifRecord | None:
        record, self.record = self.record, None
        return record


def read_ldif(stream: Iterable[bytes], *, source: str = "<ldif>") -> Iterator[LdifRecord]:
    """Yield the content records of an LDIF stream (lines of bytes, e.g. a file opened
    in binary mode), one at a time; ``LdifError`` (with the line) on bad input."""
    reader = _Reader(source)
    for number, line in reader.logical_lines(stream):
        if line is None:
            record = reader.end_record()
            if record is not None:
                yield record
        else:
            reader.feed(number, line)
    record = reader.end_record()
    if record is not None:
        yield record


def read_ldif_file(path: Path) -> Iterator[LdifRecord]:
    """``read_ldif`` over a file, closed when the iteration ends."""
    with path.open("rb") as stream:
        yield from read_ldif(stream, source=str(path))


def read_ldif_text(text: str, *, source: str = "<ldif>") -> list[LdifRecord]:
    """Every record of an LDIF text (for small inputs and tests)."""
    return list(read_ldif(text.encode("utf-8").splitlines(keepends=True), source=source))


def write_records(stream: BinaryIO, records: Iterable[tuple[str, AttributeInput]]) -> int:
    """Write every (dn, attributes) record; returns the count."""
    writer = LdifWriter(stream)
    for dn, attributes in records:
        writer.write(dn, attributes)
    return writer.records_written

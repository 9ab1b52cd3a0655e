"""Bounded-memory grouping of rows by entry key: an on-disk hash partition.

Problem: the MSSanté extract is not sorted by person (one row per mailbox, the rows of
one practitioner scattered through the file), yet the LDIF output needs one record per
entry with all its mailboxes. Holding every entry in memory until the end would grow
with the file; this module bounds it.

Choice (documented here because it is the memory bound of the import):
1. Pass 1 reads the extract once and appends each *valid* row to one of ``n`` bucket
   files chosen by a hash of its entry key (CRC-32, stable across runs and processes,
   unlike ``hash()``), with ``n = ceil(file size / bucket_bytes)`` capped at
   ``MAX_BUCKETS`` open files. All rows of one entry land in the same bucket, in file
   order. A bucket line is ``<line number> TAB <key> TAB <row text>``.
2. Pass 2 takes one bucket at a time; a bucket still larger than twice
   ``bucket_bytes`` (a file bigger than ``MAX_BUCKETS * bucket_bytes``, or an unlucky
   hash) is split again with a differently seeded hash, up to ``MAX_DEPTH`` levels.
   Each final bucket is grouped in a dict in memory, entries come out in the order of
   their first row.

Memory bound: the entries of one bucket, i.e. the rows of about ``bucket_bytes`` of
extract text (4 MiB by default: about 22,000 MSSanté rows), whatever the file size;
plus one row per open bucket in write buffers. Only a single entry with more than
``bucket_bytes`` of rows could exceed it, and then by that entry's own size. Disk: the
valid rows once more (twice while a bucket is being re-split), in a private temporary
directory (``tempfile``, mode 0700) removed at the end, also on failure.

Output order is deterministic (bucket order, then first-row order within a bucket), so
two runs over the same file write byte-identical LDIF.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TextIO

from annuaire.errors import EntryError
from annuaire.importers.errors import RowError
from annuaire.importers.merge import Draft
from annuaire.model import Entry

DEFAULT_BUCKET_BYTES: Final = 4 * 1024 * 1024
MAX_BUCKETS: Final = 256
MAX_DEPTH: Final = 3
_ENCODING: Final = "utf-8"


def bucket_count(size: int, bucket_bytes: int) -> int:
    """How many buckets a file of ``size`` bytes is split into (1..MAX_BUCKETS)."""
    return max(1, min(MAX_BUCKETS, math.ceil(size / bucket_bytes)))


class Partition:
    """Bucket files in ``directory`` that rows are appended to by key hash."""

    def __init__(
        self, directory: Path, count: int, *, depth: int = 0, name: str = "bucket"
    ) -> None:
        self.directory = directory
        self.depth = depth
        self.paths = [directory / f"{name}.{index:03d}" for index in range(count)]
        self._files: list[TextIO] = []
        try:
            for path in self.paths:
                self._files.append(path.open("x", encoding=_ENCODING, newline="\n"))
        except BaseException:
            self.close()
            raise

    def add(self, key: str, line: int, text: str) -> None:
        """Append one valid row (its key, line number and decoded text)."""
        index = zlib.crc32(key.encode(_ENCODING), self.depth) % len(self._files)
        self._files[index].write(f"{line}\t{key}\t{text}\n")

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        self._files.clear()


def _bucket_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """``(line, key, text)`` of each row of a bucket file, in the order written."""
    with path.open(encoding=_ENCODING, newline="\n") as handle:
        for record in handle:
            line, key, text = record.rstrip("\n").split("\t", 2)
            yield int(line), key, text


def _split(path: Path, bucket_bytes: int, depth: int) -> list[Path]:
    """Re-partition one oversized bucket with the hash of ``depth``; removes it."""
    count = max(2, bucket_count(path.stat().st_size, bucket_bytes))
    partition = Partition(path.parent, count, depth=depth, name=path.name)
    try:
        for line, key, text in _bucket_rows(path):
            partition.add(key, line, text)
    finally:
        partition.close()
    path.unlink()
    return [p for p in partition.paths if p.stat().st_size]


def final_buckets(paths: list[Path], bucket_bytes: int, depth: int = 1) -> Iterator[Path]:
    """The bucket files to group, splitting oversized ones (depth-first, in order)."""
    for path in paths:
        if path.stat().st_size > 2 * bucket_bytes and depth <= MAX_DEPTH:
            yield from final_buckets(_split(path, bucket_bytes, depth), bucket_bytes, depth + 1)
        elif path.stat().st_size:
            yield path


def grouped_entries(
    path: Path,
    parse: Callable[[str], Draft],
    skip: Callable[[int, Exception], None],
    refuse: Callable[[str, int, Exception], None],
) -> Iterator[tuple[int, Entry]]:
    """``(first line, merged entry)`` for each key of one bucket, in first-row order.

    ``parse`` reads a row's text into a draft; a row it refuses (``RowError`` or
    ``EntryError``, which pass 1's checks should have caught already) goes to
    ``skip(line, error)`` and the other rows of its entry are still merged. An entry
    the model refuses when it is built goes to ``refuse(key, first line, error)``.
    """
    groups: dict[str, tuple[int, Draft]] = {}
    for line, key, text in _bucket_rows(path):
        try:
            draft = parse(text)
        except (RowError, EntryError) as error:
            skip(line, error)
            continue
        known = groups.get(key)
        if known is None:
            groups[key] = (line, draft)
        else:
            known[1].absorb(draft)
    for key, (line, draft) in groups.items():
        try:
            entry = draft.build()
        except EntryError as error:
            refuse(key, line, error)
            continue
        yield line, entry

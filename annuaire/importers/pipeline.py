"""The import pipeline: extract rows -> checked entries -> merged entries -> a target.

Role: the composition of the importer, independent of the extract format (``formats``)
and of the target (an ``EntrySink``: the LDIF file writer or the LDAP upserter). Sync
code: ``missive annuaire import`` is a batch command that runs no event loop, and its
targets (a local file, a directory server it alone writes to) are used one entry at a
time.

Flow (memory bounded whatever the file size, see ``partition`` for the bound):
1. read the header, bind the format's row parser (``ExtractFormatError`` if the file
   is not of that format: nothing is written);
2. pass 1: each data row is decoded, split and checked (``RowParser.key``: everything
   that can make a row bad, and the key of its entry); a bad row is reported
   (``ImportObserver.bad_row``, with its line number) and skipped; a good one is
   appended to its key's bucket file;
3. pass 2: bucket by bucket, rows are parsed into entries, grouped by key and merged
   (``merge``), and each entry is handed to the sink. An entry the sink refuses
   (``EntryRejected``) is counted as failed and reported with the line of its first
   row; a ``TargetError`` stops the import.

Blank lines are ignored (not rows). The summary counts rows read, rows skipped, entries
built and the sink's outcome for each (added / updated / unchanged / written / failed).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from annuaire.errors import EntryError
from annuaire.importers.errors import EntryRejected, RowError
from annuaire.importers.formats import ExtractFormat, RowParser
from annuaire.importers.merge import Draft
from annuaire.importers.parallel import BucketOutput, render_in_workers
from annuaire.importers.partition import (
    DEFAULT_BUCKET_BYTES,
    Partition,
    bucket_count,
    final_buckets,
    grouped_entries,
)
from annuaire.importers.rows import (
    SEPARATOR,
    BadRow,
    decode_line,
    physical_lines,
    read_header,
    split_row,
)
from annuaire.importers.sinks import EntryFailure, EntrySink, RenderingSink
from annuaire.model import Entry


class ImportObserver(Protocol):
    """What the pipeline reports while it runs (the CLI prints it; tests collect it)."""

    def bad_row(self, row: BadRow) -> None: ...

    def entry_failed(self, failure: EntryFailure) -> None: ...

    def reading(self, bytes_read: int, rows: int) -> None: ...

    def writing(self, entries: int) -> None: ...


class SilentObserver:
    """An observer that ignores everything."""

    def bad_row(self, row: BadRow) -> None:
        pass

    def entry_failed(self, failure: EntryFailure) -> None:
        pass

    def reading(self, bytes_read: int, rows: int) -> None:
        pass

    def writing(self, entries: int) -> None:
        pass


@dataclass
class ImportSummary:
    """Counts of one import run."""

    rows: int = 0
    skipped: int = 0
    entries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.outcomes["failed"]

    @property
    def imported(self) -> int:
        return self.entries - self.failed


REPORT_EVERY = 4096  # rows or entries between two progress reports


def import_extract(
    source: Path,
    extract_format: ExtractFormat,
    sink: EntrySink,
    *,
    observer: ImportObserver | None = None,
    work_dir: Path | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    jobs: int = 1,
) -> ImportSummary:
    """Import ``source`` (an extract of ``extract_format``) into ``sink``.

    ``jobs`` > 1 runs pass 2 in that many worker processes when the sink is a
    ``RenderingSink`` and the file gave more than one bucket (same output).
    """
    watcher = observer or SilentObserver()
    summary = ImportSummary()
    with (
        source.open("rb") as stream,
        tempfile.TemporaryDirectory(prefix="missive-import-", dir=work_dir) as scratch,
    ):
        header = read_header(stream, extract_format.label)
        parser = extract_format.bind(header)
        count = bucket_count(source.stat().st_size, bucket_bytes)
        partition = Partition(Path(scratch), count)
        try:
            _partition_rows(stream, parser, partition, summary, watcher)
        finally:
            partition.close()

        buckets = final_buckets(partition.paths, bucket_bytes)
        if jobs > 1 and count > 1 and isinstance(sink, RenderingSink):
            collect = _collector(sink, summary, watcher)
            render_in_workers(buckets, extract_format.name, header, sink.recipe, jobs, collect)
        else:
            _deliver_buckets(buckets, parser, sink, summary, watcher)
    return summary


def _deliver_buckets(
    buckets: Iterable[Path],
    parser: RowParser,
    sink: EntrySink,
    summary: ImportSummary,
    watcher: ImportObserver,
) -> None:
    """Pass 2 in this process: each bucket's entries, merged, to the sink."""

    def parse(text: str) -> Draft:
        return parser(text.split(SEPARATOR))

    def skip(line: int, error: Exception) -> None:
        summary.skipped += 1
        watcher.bad_row(BadRow(line, str(error)))

    def refuse(key: str, line: int, error: Exception) -> None:
        summary.entries += 1
        summary.outcomes["failed"] += 1
        watcher.entry_failed(EntryFailure(key, line, str(error)))

    for bucket in buckets:
        for line, entry in grouped_entries(bucket, parse, skip, refuse):
            _deliver(sink, entry, line, summary, watcher)
        bucket.unlink()


def _collector(
    sink: RenderingSink, summary: ImportSummary, watcher: ImportObserver
) -> Callable[[Path, BucketOutput], None]:
    """What the parent does with each bucket a worker rendered, in bucket order."""

    def collect(bucket: Path, output: BucketOutput) -> None:
        sink.put_rendered(output.records)
        for row in output.bad_rows:
            summary.skipped += 1
            watcher.bad_row(row)
        for failure in output.failures:
            watcher.entry_failed(failure)
        summary.entries += output.entries
        summary.outcomes["written"] += output.entries - len(output.failures)
        if output.failures:
            summary.outcomes["failed"] += len(output.failures)
        watcher.writing(summary.entries)
        bucket.unlink()

    return collect


def _partition_rows(
    stream: BinaryIO,
    parser: RowParser,
    partition: Partition,
    summary: ImportSummary,
    watcher: ImportObserver,
) -> None:
    """Pass 1: check every data row, report the bad ones, file the good ones by key."""
    width = parser.width
    bytes_read = 0
    for number, raw in physical_lines(stream, start=2):
        bytes_read += len(raw) + 1
        if not raw.strip():
            continue
        summary.rows += 1
        if summary.rows % REPORT_EVERY == 0:
            watcher.reading(bytes_read, summary.rows)
        try:
            text = decode_line(raw)
            key = parser.key(split_row(text, width))
        except (RowError, EntryError) as error:
            summary.skipped += 1
            watcher.bad_row(BadRow(number, str(error)))
            continue
        partition.add(key, number, text)
    watcher.reading(bytes_read, summary.rows)


def _deliver(
    sink: EntrySink, entry: Entry, line: int, summary: ImportSummary, watcher: ImportObserver
) -> None:
    """Pass 2 for one merged entry: hand it to the sink and count the outcome."""
    summary.entries += 1
    try:
        summary.outcomes[sink.put(entry)] += 1
    except EntryRejected as error:
        summary.outcomes["failed"] += 1
        watcher.entry_failed(EntryFailure(entry.key, line, str(error)))
    if summary.entries % REPORT_EVERY == 0:
        watcher.writing(summary.entries)

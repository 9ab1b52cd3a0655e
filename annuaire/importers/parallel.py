"""Pass 2 of an import in worker processes: buckets parsed, merged and formatted.

Role: for a ``RenderingSink`` (the LDIF output), the per-entry work of pass 2 is pure
CPU (parse, merge, map to attributes, format LDIF) and each bucket is independent, so
buckets are handed to a pool of worker processes and their formatted records appended
in bucket order: the output is byte-identical to a one-process run.

Invariants:
- Bounded: at most ``jobs + 1`` buckets are in flight, so memory holds that many
  formatted buckets at most (each about 2.5 times its ``bucket_bytes`` of rows).
- Workers are started with ``spawn`` (a fresh interpreter, no state inherited from a
  possibly multi-threaded parent) and read only the private bucket files; they report
  bad rows and refused entries back, the parent prints them in bucket order.
- An exception in a worker is re-raised in the parent when its bucket's turn comes;
  leaving the pool waits for the buckets still running (at most ``jobs + 1``). A worker
  that dies (killed, or a ``spawn`` that fails because the calling script has no
  ``if __name__ == "__main__"`` guard) is a ``TargetError`` naming the way out
  (``--jobs 1``); the LDIF output then keeps its previous content.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from annuaire.importers.errors import EntryRejected, TargetError
from annuaire.importers.formats import FORMATS
from annuaire.importers.merge import Draft
from annuaire.importers.partition import grouped_entries
from annuaire.importers.rows import SEPARATOR, BadRow
from annuaire.importers.sinks import EntryFailure, Recipe


@dataclass(frozen=True, slots=True)
class BucketJob:
    """One bucket for a worker: its file, how to parse its rows, how to format."""

    path: Path
    format_name: str
    header: tuple[str, ...]
    recipe: Recipe


@dataclass(frozen=True, slots=True)
class BucketOutput:
    """A worker's result for one bucket."""

    records: bytes
    entries: int
    bad_rows: tuple[BadRow, ...]
    failures: tuple[EntryFailure, ...]


def render_bucket(job: BucketJob) -> BucketOutput:
    """Parse, merge and format one bucket (runs in a worker process)."""
    parser = FORMATS[job.format_name].bind(job.header)
    chunks: list[bytes] = []
    bad_rows: list[BadRow] = []
    failures: list[EntryFailure] = []
    entries = 0

    def parse(text: str) -> Draft:
        return parser(text.split(SEPARATOR))

    def skip(line: int, error: Exception) -> None:
        bad_rows.append(BadRow(line, str(error)))

    def refuse(key: str, line: int, error: Exception) -> None:
        nonlocal entries
        entries += 1
        failures.append(EntryFailure(key, line, str(error)))

    for line, entry in grouped_entries(job.path, parse, skip, refuse):
        entries += 1
        try:
            chunks.append(job.recipe.render(entry))
        except EntryRejected as error:
            failures.append(EntryFailure(entry.key, line, str(error)))
    return BucketOutput(b"".join(chunks), entries, tuple(bad_rows), tuple(failures))


def render_in_workers(
    buckets: Iterable[Path],
    format_name: str,
    header: Sequence[str],
    recipe: Recipe,
    jobs: int,
    collect: Callable[[Path, BucketOutput], None],
) -> None:
    """Render every bucket in ``jobs`` worker processes; ``collect(bucket, output)``
    is called in bucket order, in this process."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending: deque[tuple[Path, Future[BucketOutput]]] = deque()
        try:
            for bucket in buckets:
                job = BucketJob(bucket, format_name, tuple(header), recipe)
                pending.append((bucket, pool.submit(render_bucket, job)))
                if len(pending) > jobs:
                    done, future = pending.popleft()
                    collect(done, future.result())
            while pending:
                done, future = pending.popleft()
                collect(done, future.result())
        except BrokenProcessPool as error:
            raise TargetError(
                f"worker processes failed ({error}); re-run with --jobs 1 (a script that "
                "starts the import must guard its entry point with __name__ == '__main__')"
            ) from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise

"""Benchmark of the annuaire import: a synthetic MSSanté extract to LDIF, rows/s and RSS.

Usage: ``python bench/bench_annuaire_import.py [--smoke] [--rows N] [--jobs N,N...]
[--dir DIR]``.

Targets (issue 4): 500,000 MSSanté rows to LDIF at >= 20,000 rows/s with a peak RSS
under 300 MB. The machine is shared and noisy, so every figure comes with a baseline
measured in the same run on the same file: a plain ``csv`` module pass that does nothing
but split the rows (``delimiter="|"``, no quoting), and ``bytes.split`` lines; the
table gives the import's time per row as a multiple of the ``csv`` pass.

Cases:
1. generate: ``annuaire.importers.synthetic`` writes the extract (seed 1, 10 bad rows);
2. baselines: the ``csv`` pass and a ``bytes.split`` pass over the same file;
3. import: ``annuaire.importers.pipeline.import_extract`` into an LDIF file, each run in
   a fresh child process (so its peak RSS, ``ru_maxrss``, is its own and not this
   script's), with the ``--jobs`` counts asked (default 1 and 2). RSS is given for the
   importing process and for its largest worker; "CPU µs/row" is the user + system
   time of the import and its workers per row: what a row costs on an idle core,
   whatever the other jobs on the machine do to the wall time.

``--smoke`` uses about 20,000 rows (a few seconds): CI proves the benchmark runs; it
does not measure anything worth quoting.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TARGET_ROWS_PER_SECOND = 20_000
TARGET_RSS_MB = 300
SEED = 1
BAD_ROWS = 10


@dataclass(frozen=True)
class Result:
    case: str
    seconds: float
    rows: int
    rss_mb: float | None = None
    worker_rss_mb: float | None = None
    cpu_seconds: float | None = None
    note: str = ""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def generate(path: Path, rows: int) -> Result:
    from annuaire.importers.synthetic import write_extract

    started = time.perf_counter()
    with path.open("wb") as stream:
        size = write_extract(stream, "mssante", rows, seed=SEED, bad_rows=BAD_ROWS)
    return Result("generate (synthetic)", time.perf_counter() - started, rows,
                  note=f"{size / 1e6:.1f} MB")  # fmt: skip


def csv_baseline(path: Path) -> Result:
    """Baseline: the csv module splits every row and nothing else."""
    started = time.perf_counter()
    count = -1  # the header
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        for _ in csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE):
            count += 1
    return Result("baseline: csv.reader pass", time.perf_counter() - started, count)


def split_baseline(path: Path) -> Result:
    """Second reference: bytes lines split on '|' (no decoding)."""
    started = time.perf_counter()
    count = -1
    with path.open("rb") as handle:
        for line in handle:
            line.split(b"|")
            count += 1
    return Result("reference: bytes.split pass", time.perf_counter() - started, count)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def child_import(source: Path, output: Path, jobs: int) -> None:
    """Run one import in this (child) process and print its figures as JSON."""
    from annuaire.importers.formats import FORMATS
    from annuaire.importers.ldif_target import ldif_sink
    from annuaire.importers.pipeline import import_extract
    from annuaire.mapping import DEFAULT_ATTRIBUTES

    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    with ldif_sink(output, "ou=people,dc=annuaire,dc=test", DEFAULT_ATTRIBUTES) as sink:
        summary = import_extract(source, FORMATS["mssante"], sink, jobs=jobs)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures = {"seconds": seconds, "rows": summary.rows, "skipped": summary.skipped,
               "entries": summary.entries, "rss_mb": own, "worker_rss_mb": workers,
               "cpu_seconds": cpu}  # fmt: skip
    print(json.dumps(figures))


def import_case(source: Path, output: Path, jobs: int) -> Result:
    script = Path(__file__).resolve()
    argv = [sys.executable, str(script), "--child", str(source), str(output), str(jobs)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"import child failed ({done.returncode}):\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    note = (f"{figures['entries']} entries, {figures['skipped']} bad rows skipped, "
            f"LDIF {output.stat().st_size / 1e6:.0f} MB")  # fmt: skip
    return Result(
        f"import -> LDIF, jobs={jobs}",
        figures["seconds"],
        figures["rows"],
        rss_mb=figures["rss_mb"],
        worker_rss_mb=figures["worker_rss_mb"] if jobs > 1 else None,
        cpu_seconds=figures["cpu_seconds"],
        note=note,
    )


def print_table(results: Sequence[Result], baseline: Result) -> None:
    per_row = baseline.seconds / baseline.rows
    head = f"{'case':<30} {'rows/s':>10} {'µs/row':>8} {'×csv':>6} {'CPU µs/row':>10}"
    print(f"{head} {'RSS MB':>7} {'worker':>7}  note")
    for r in results:
        micros = r.seconds / r.rows * 1e6 if r.rows else 0.0
        ratio = (r.seconds / r.rows) / per_row if r.rows else 0.0
        cpu = f"{r.cpu_seconds / r.rows * 1e6:10.1f}" if r.cpu_seconds and r.rows else " " * 10
        rss = f"{r.rss_mb:7.0f}" if r.rss_mb is not None else " " * 7
        worker = f"{r.worker_rss_mb:7.0f}" if r.worker_rss_mb is not None else " " * 7
        row = f"{r.case:<30} {r.rows_per_second:>10,.0f} {micros:>8.1f} {ratio:>6.1f} {cpu}"
        print(f"{row} {rss} {worker}  {r.note}")


def verdict(results: Sequence[Result]) -> list[str]:
    lines = []
    for r in results:
        if not r.case.startswith("import"):
            continue
        speed = "met" if r.rows_per_second >= TARGET_ROWS_PER_SECOND else "MISSED"
        peak = max(r.rss_mb or 0.0, r.worker_rss_mb or 0.0)
        memory = "met" if peak < TARGET_RSS_MB else "MISSED"
        lines.append(f"{r.case}: speed target {TARGET_ROWS_PER_SECOND:,} rows/s {speed} "
                     f"({r.rows_per_second:,.0f}); RSS target {TARGET_RSS_MB} MB {memory} "
                     f"({peak:.0f} MB per process)")  # fmt: skip
    return lines


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--child"]:
        child_import(Path(argv[1]), Path(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="about 20,000 rows (CI)")
    parser.add_argument("--rows", type=int, help="rows of the extract (default 500,000)")
    parser.add_argument("--jobs", default="1,2", help="worker counts to run (default 1,2)")
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temp dir)")
    args = parser.parse_args(argv)
    rows = args.rows or (20_000 if args.smoke else 500_000)
    jobs = [int(j) for j in args.jobs.split(",") if j]
    directory = Path(tempfile.mkdtemp(prefix="bench-import-", dir=args.dir))
    try:
        source = directory / "Extraction_Correspondance_MSSante_synthetic.txt"
        results = [generate(source, rows)]
        baseline = csv_baseline(source)
        results += [baseline, split_baseline(source)]
        results += [import_case(source, directory / "annuaire.ldif", n) for n in jobs]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"annuaire import benchmark: {rows:,} synthetic MSSanté rows, files under "
          f"{args.dir or tempfile.gettempdir()}")  # fmt: skip
    print_table(results, baseline)
    for line in verdict(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

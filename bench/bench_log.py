"""Benchmark of a log line (``gateway.log``): what every stage pays per event it logs.

Usage: ``python bench/bench_log.py [--smoke] [--lines N]``.

Every stage writes a few ``logfmt`` lines per message; this measures one line, in one
process, against baselines run at the same moment (the machine is shared and noisy, so
read the ratios):

1. ``info, enabled``: ``get_logger("smtp").info("smtp.accepted", ...)`` with seven
   envelope-level fields, through the handler that ``setup_logging`` installs, into a
   text stream opened on ``/dev/null`` (as stdout redirected to a file or a pipe);
   baseline: writing and flushing the same finished line to the same stream (the I/O a
   line cannot avoid);
2. ``info, quoting``: the same with two values that need quoting (a peer's EHLO name
   with a space and a quote, a non-ASCII address); baseline: writing that line;
3. ``formatter only``: ``LogfmtFormatter.format`` of a prepared record (no handler, no
   I/O); baseline: ``" ".join`` of the finished ``k=v`` pairs;
4. ``debug, disabled``: ``log.debug(...)`` while the level is ``info`` (what a debug
   line costs in production); baseline: calling an empty function with the same
   keyword arguments.

``--smoke`` runs each case briefly (well under a second) so CI proves the benchmark
runs; it does not measure anything worth quoting.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import log

FIELDS: dict[str, Any] = {
    "queue_id": "Q00001234",
    "mail_from": "alice.martin@chu-a.test",
    "rcpt": 2,
    "peer": "127.0.0.1:41234",
    "size": 48213,
    "tls": "TLSv1.3",
    "outcome": "accepted",
}
QUOTED_FIELDS: dict[str, Any] = {
    **FIELDS,
    "ehlo": 'mx "one".example net',
    "mail_from": "élodie.münch@chu-a.test",
}


@dataclass(frozen=True)
class Result:
    case: str
    micros: float
    baseline: float


def best_of(repeats: int, count: int, step: Callable[[], object]) -> float:
    """The fastest of ``repeats`` runs of ``count`` calls, in µs per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            step()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def _noop(event: str, **fields: Any) -> None:
    del event, fields


def run(count: int, repeats: int) -> list[Result]:
    stream = open("/dev/null", "w", encoding="utf-8")
    saved = sys.stdout
    try:
        sys.stdout = stream  # setup_logging binds the handler to the current stdout
        log.setup_logging("info")
    finally:
        sys.stdout = saved
    logger = log.get_logger("smtp")
    formatter = log.LogfmtFormatter()
    record = logging.getLogger("missive.smtp").makeRecord(
        "missive.smtp", logging.INFO, "", 0, "smtp.accepted", (), None
    )
    record.fields = QUOTED_FIELDS
    quoted_line = formatter.format(record)
    record.fields = FIELDS
    line = formatter.format(record)
    pairs = line.split(" ")

    def writer(text: str) -> Callable[[], None]:
        def write_line() -> None:
            stream.write(text + "\n")
            stream.flush()

        return write_line

    try:
        cases = [
            ("info, enabled", lambda: logger.info("smtp.accepted", **FIELDS), writer(line)),
            (
                "info, quoting",
                lambda: logger.info("smtp.accepted", **QUOTED_FIELDS),
                writer(quoted_line),
            ),
            ("formatter only", lambda: formatter.format(record), lambda: " ".join(pairs)),
            (
                "debug, disabled",
                lambda: logger.debug("smtp.accepted", **FIELDS),
                lambda: _noop("smtp.accepted", **FIELDS),
            ),
        ]
        return [
            Result(name, best_of(repeats, count, step), best_of(repeats, count, base))
            for name, step, base in cases
        ]
    finally:
        logging.getLogger("missive").handlers.clear()
        stream.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run briefly (CI)")
    parser.add_argument("--lines", type=int, help="lines per timed run (5 runs, best kept)")
    args = parser.parse_args(argv)
    count = args.lines or (2_000 if args.smoke else 50_000)
    results = run(count, repeats=2 if args.smoke else 5)
    print(f"log line benchmark: best of runs of {count} lines")
    width = max(len(result.case) for result in results)
    print(f"{'case':<{width}}  {'µs/line':>8}  {'baseline':>8}  {'ratio':>6}")
    for result in results:
        ratio = result.micros / result.baseline
        print(
            f"{result.case:<{width}}  {result.micros:>8.2f}  {result.baseline:>8.2f}  {ratio:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

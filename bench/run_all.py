"""Run every benchmark in ``bench/`` (files ``bench_*.py``), each in its own process.

Usage: ``python bench/run_all.py [--smoke]``. ``--smoke`` is passed on to each benchmark,
which then runs for a few seconds only: CI uses it to prove the benchmarks still work,
not to measure (the machine is shared and noisy; each benchmark reports ratios to a
baseline it runs in the same process). Exits non-zero when a benchmark fails.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    extra = ["--smoke"] if "--smoke" in argv else []
    failed: list[str] = []
    for script in sorted(BENCH_DIR.glob("bench_*.py")):
        started = time.monotonic()
        print(f"-- {script.name} {' '.join(extra)}", flush=True)
        result = subprocess.run([sys.executable, str(script), *extra], check=False)
        elapsed = time.monotonic() - started
        print(f"-- {script.name}: exit {result.returncode} in {elapsed:.1f}s", flush=True)
        if result.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

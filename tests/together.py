"""Processes that do one step at the same instant (the race tests' runner), and whether
a process has exited.

A race test builds ``FORK.Process`` objects whose targets wait on one ``FORK.Barrier``
before the step under test, then asserts on ``exit_codes(processes)``. Every process is
stopped by its handle (PID) even when the test fails: one that is still running after
``timeout`` (a peer died before the barrier, say) is killed.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

FORK = multiprocessing.get_context("fork")


def exit_codes(processes: Sequence[BaseProcess], timeout: float = 60) -> list[int | None]:
    """Start ``processes``, wait for each, kill what is left; their exit codes in order."""
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=timeout)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    return [process.exitcode for process in processes]


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"

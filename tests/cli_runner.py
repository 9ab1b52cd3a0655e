"""The ``missive`` fixture: the command line run in this process, as a user types it.

``missive("audit", "verify", "--db", path, stdin="...")`` calls the real
``gateway.cli.main`` with the arguments (paths turned to text) and ``stdin`` as the
standard input (not a terminal), and returns (exit status, stdout, stderr). A test
package may override it (``tests/spool/conftest.py`` registers only the queue
commands).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import gateway.cli

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def missive(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``missive ARGS...`` (module docstring)."""

    def run(*argv: str | Path, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        status = gateway.cli.main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run

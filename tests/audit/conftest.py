"""Fixtures of the audit tests: a trail of 10 records in a temp dir, a raw SQL handle."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit import AuditStore

from .events import make_event


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "audit.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[AuditStore]:
    """A writer store holding 10 records, seq 1..10, one hour apart from T0."""
    with AuditStore.open_writer(db_path) as opened:
        opened.append([make_event(index) for index in range(10)])
        yield opened


@pytest.fixture
def raw(db_path: Path, store: AuditStore) -> Iterator[sqlite3.Connection]:
    """A second, plain SQLite connection: the attacker's (or a careless admin's)."""
    connection = sqlite3.connect(db_path, isolation_level=None)
    yield connection
    connection.close()

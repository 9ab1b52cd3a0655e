"""Fixtures of the spool tests: a recording trail and a spool in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.spool import Spool

from .support import RecordingTrail, make_spool


@pytest.fixture
def trail() -> RecordingTrail:
    return RecordingTrail()


@pytest.fixture
async def spool(tmp_path: Path, trail: RecordingTrail) -> AsyncIterator[Spool]:
    opened = make_spool(tmp_path / "spool", trail)
    try:
        yield opened
    finally:
        await opened.aclose()

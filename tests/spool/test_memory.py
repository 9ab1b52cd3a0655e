"""Bounded memory: a 50 MB message is never held whole, written or read; size limit."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.spool import MessageTooLarge, Spool

from .support import MB, RecordingTrail, envelope, make_spool, origin

CHUNK = 64 * 1024
PEAK_LIMIT = 4 * MB  # what the spool may hold at once, against a 50 MB message


async def fresh_chunks(total: int) -> AsyncIterator[bytes]:
    """Distinct chunks, as a socket would give them (each one a new object)."""
    for index in range(total // CHUNK):
        yield index.to_bytes(4, "big") * (CHUNK // 4)


async def test_a_50_mb_message_is_streamed_in_and_out_in_bounded_memory(
    tmp_path: Path, trail: RecordingTrail
) -> None:
    size = 50 * MB
    spool = make_spool(tmp_path / "spool", trail, limit=size)
    queue = spool.queue("received")
    expected = hashlib.sha256()
    async for chunk in fresh_chunks(size):
        expected.update(chunk)
    try:
        tracemalloc.start()
        queue_id = await queue.add(envelope(), origin(), fresh_chunks(size))
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        claimed = await queue.claim()
        assert claimed is not None
        digest = hashlib.sha256()
        async for chunk in queue.content(claimed):
            digest.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await spool.aclose()
    assert claimed.queue_id == queue_id
    assert claimed.record.content_length == size
    assert digest.hexdigest() == expected.hexdigest() == claimed.record.content_sha256
    assert write_peak < PEAK_LIMIT, f"add held {write_peak} bytes at once"
    assert read_peak < PEAK_LIMIT, f"reading held {read_peak} bytes at once"


async def test_a_message_over_the_limit_is_refused_at_once(
    tmp_path: Path, trail: RecordingTrail
) -> None:
    spool: Spool = make_spool(tmp_path / "spool", trail, limit=1 * MB)
    queue = spool.queue("received")
    consumed = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal consumed
        async for chunk in fresh_chunks(4 * MB):
            consumed += len(chunk)
            yield chunk

    try:
        with pytest.raises(MessageTooLarge) as caught:
            await queue.add(envelope(), origin(), source())
    finally:
        await spool.aclose()
    assert (caught.value.reply_code, caught.value.enhanced_code) == (552, "5.3.4")
    assert consumed == 1 * MB + CHUNK  # stopped at the first chunk past the limit
    assert os.listdir(queue.dirs.tmp) == [] and os.listdir(queue.dirs.state("incoming")) == []
    (refused,) = trail.of("spool.refused")
    assert refused.details["reason"] == f"message larger than {1 * MB} bytes"


async def test_a_message_of_exactly_the_limit_is_accepted(
    tmp_path: Path, trail: RecordingTrail
) -> None:
    spool = make_spool(tmp_path / "spool", trail, limit=1 * MB)
    try:
        queue_id = await spool.queue("received").add(envelope(), origin(), fresh_chunks(1 * MB))
    finally:
        await spool.aclose()
    assert queue_id

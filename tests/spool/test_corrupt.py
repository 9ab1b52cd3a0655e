"""Damaged queue files go to corrupt/, byte for byte, with an audit event; never deleted."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.spool import CorruptEntry, Queue, Spool
from gateway.spool.entry import WHOLE_READ_LIMIT
from gateway.spool.queue import READ_AHEAD
from gateway.spool.record import PREAMBLE_SIZE

from .support import RecordingTrail, envelope, message, origin


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def flip_record_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01  # inside the JSON record, before the digest
    path.write_bytes(bytes(data))


def newer_version(path: Path) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(">H", data, 8, 2)
    struct.pack_into(">I", data, 28, zlib.crc32(bytes(data[:28])))
    path.write_bytes(bytes(data))


def garbage(path: Path) -> None:
    path.write_bytes(b"HELO this is not a queue file\r\n" * 3)


def empty(path: Path) -> None:
    path.write_bytes(b"")


def appended(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"\x00")


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate, "truncated or appended to"),
    "appended": (appended, "truncated or appended to"),
    "bad checksum": (flip_record_byte, "record checksum mismatch"),
    "wrong version": (newer_version, "format version 2"),
    "garbage": (garbage, "bad magic"),
    "empty": (empty, "shorter than the preamble"),
}


async def _one_entry(queue: Queue) -> Path:
    queue_id = await queue.add(envelope(), origin(), message())
    return queue.dirs.entry("incoming", queue_id)


async def _spoiled_entry(queue: Queue, damage: str) -> tuple[Path, str]:
    """One entry given ``damage``, and the reason its quarantine must give."""
    path = await _one_entry(queue)
    spoil, reason = DAMAGES[damage]
    spoil(path)
    return path, reason


@pytest.mark.parametrize("damage", sorted(DAMAGES))
async def test_a_damaged_entry_is_moved_to_corrupt_intact(
    spool: Spool, trail: RecordingTrail, damage: str
) -> None:
    queue = spool.queue("received")
    path, reason = await _spoiled_entry(queue, damage)
    kept = path.read_bytes()
    good = await queue.add(envelope(), origin(), message(2))
    claimed = await queue.claim()
    assert claimed is not None and claimed.queue_id == good  # the queue goes on
    moved = queue.dirs.entry("corrupt", path.name)
    assert moved.read_bytes() == kept
    (event,) = trail.of("spool.corrupt")
    assert event.queue_id == path.name
    assert reason in event.details["reason"]
    await queue.recover(stale_after=timedelta(0))
    assert moved.read_bytes() == kept  # recovery never deletes a corrupt file


async def test_a_file_renamed_to_another_id_is_corrupt(spool: Spool, trail: RecordingTrail) -> None:
    queue = spool.queue("received")
    path = await _one_entry(queue)
    other = path.with_name("01M8H4BQW0ZZ5NEQ3BDRMA3DYM")
    path.rename(other)
    assert await queue.claim() is None
    assert os.listdir(queue.dirs.state("corrupt")) == [other.name]
    assert "differs from the queue id" in trail.of("spool.corrupt")[0].details["reason"]


async def test_links_directories_and_stray_names_are_never_followed(
    tmp_path: Path, spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    victim = tmp_path / "victim"
    victim.write_bytes(b"not for the spool")
    incoming = queue.dirs.state("incoming")
    (incoming / "01M8H4BQW0ZZ5NEQ3BDRMA3DYM").symlink_to(victim)
    (incoming / "01M8H4BQW0ZZ5NEQ3BDRMA3DYN").mkdir()
    (incoming / "notes.txt").write_text("an admin's note")
    assert await queue.claim() is None
    assert sorted(os.listdir(queue.dirs.state("corrupt"))) == [
        "01M8H4BQW0ZZ5NEQ3BDRMA3DYM",
        "01M8H4BQW0ZZ5NEQ3BDRMA3DYN",
        "notes.txt",
    ]
    assert victim.read_bytes() == b"not for the spool"
    assert len(trail.of("spool.corrupt")) == 3


async def test_a_name_taken_in_corrupt_gets_a_suffix(spool: Spool) -> None:
    queue = spool.queue("received")
    for _ in range(2):
        (queue.dirs.state("incoming") / "junk").write_bytes(b"junk")
        assert await queue.claim() is None
    assert sorted(os.listdir(queue.dirs.state("corrupt"))) == ["junk", "junk.1"]


async def test_damaged_content_is_caught_before_its_end_is_handed_out(
    spool: Spool, trail: RecordingTrail
) -> None:
    queue = spool.queue("received")
    body = os.urandom(700 * 1024)
    queue_id = await queue.add(envelope(), origin(), message(body=body))
    path = queue.dirs.entry("incoming", queue_id)
    data = bytearray(path.read_bytes())
    data[PREAMBLE_SIZE + 1000] ^= 0xFF
    path.write_bytes(bytes(data))
    claimed = await queue.claim()
    assert claimed is not None  # the record itself is fine
    received = bytearray()
    with pytest.raises(CorruptEntry, match="SHA-256"):
        async for chunk in queue.content(claimed):
            received += chunk
    assert len(received) < claimed.record.content_length  # the end was withheld
    await queue.quarantine(claimed, "content SHA-256 mismatch")
    assert os.listdir(queue.dirs.state("corrupt")) == [queue_id]
    assert trail.of("spool.corrupt")[0].details["reason"] == "content SHA-256 mismatch"


@pytest.mark.parametrize("damage", sorted(DAMAGES))
async def test_a_claim_reading_ahead_finds_the_same_damage(
    spool: Spool, trail: RecordingTrail, damage: str
) -> None:
    queue = spool.queue("received")
    path, reason = await _spoiled_entry(queue, damage)
    assert path.stat().st_size <= WHOLE_READ_LIMIT  # read in one go (entry.read_claimed)
    assert await queue.claim(read_ahead=READ_AHEAD) is None
    (event,) = trail.of("spool.corrupt")
    assert reason in event.details["reason"]
    assert os.listdir(queue.dirs.state("corrupt")) == [path.name]


@pytest.mark.parametrize("lines", [10, WHOLE_READ_LIMIT // 10])  # one read, then three
@pytest.mark.parametrize("spoilt", [False, True])
async def test_content_read_ahead_is_checked_on_either_path(
    spool: Spool, lines: int, spoilt: bool
) -> None:
    queue = spool.queue("received")
    content = message(body=b"12345678\r\n" * lines)
    queue_id = await queue.add(envelope(), origin(), content)
    path = queue.dirs.entry("incoming", queue_id)
    assert (path.stat().st_size > WHOLE_READ_LIMIT) == (lines > 10)
    if spoilt:
        with path.open("r+b") as file:  # the last content byte: only the SHA-256 sees it
            file.seek(PREAMBLE_SIZE + len(content) - 1)
            file.write(b"\x00")
    claimed = await queue.claim(read_ahead=READ_AHEAD)
    assert claimed is not None
    if spoilt:
        assert isinstance(claimed.preloaded, CorruptEntry)
        assert "SHA-256" in claimed.preloaded.reason
    else:
        assert claimed.preloaded == content

"""``EntryWriter._publish``: a failure is told apart by where it was raised.

The link into ``incoming/`` and the fsync of ``incoming/`` run in one group-committed
batch. A name already taken in ``incoming/`` (an id collision, another writer of the
same id) is a failed link: our file is discarded, ``spool.discarded`` recorded, and the
entry that holds the name - not ours - is left untouched. Before, the writer looked at
``incoming/`` after the failure, saw the name and reported "syncing the incoming
directory: File exists", leaving its own file unpublished and unrecorded. A failed
directory fsync is still "syncing the incoming directory", with the entry kept.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gateway.spool import RECEIVED, Spool, SpoolWriteError
from gateway.spool.writer import FLUSH_SIZE

from .support import RecordingTrail, envelope, message, origin

PLANTED = b"an entry of another writer, not ours\n"
SIZES = {"small": message(), "large": message(body=b"x" * (FLUSH_SIZE + 1))}


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("size", SIZES)
async def test_a_taken_id_discards_our_file_and_leaves_the_other_entry(
    spool: Spool, trail: RecordingTrail, size: str
) -> None:
    """Small messages are unnamed temp files (``O_TMPFILE``), large ones named ones in
    ``tmp/``: both are discarded, neither is reported as a directory fsync failure."""
    queue = spool.queue(RECEIVED)
    writer = await queue.open_writer(envelope(), origin())
    planted = queue.dirs.state("incoming") / writer.queue_id
    planted.write_bytes(PLANTED)
    planted.chmod(0o640)
    before = os.lstat(planted)
    await writer.write(SIZES[size])
    with pytest.raises(SpoolWriteError) as raised:
        await writer.commit()
    message_text = str(raised.value)
    assert "already holds an entry of that id" in message_text
    assert writer.queue_id in message_text and "syncing" not in message_text
    assert planted.read_bytes() == PLANTED
    after = os.lstat(planted)
    assert (after.st_ino, after.st_mode, after.st_nlink) == (
        before.st_ino,
        before.st_mode,
        before.st_nlink,
    )
    assert names(queue.dirs.tmp) == []
    assert names(queue.dirs.state("incoming")) == [writer.queue_id]
    assert trail.types()[-2:] == ["spool.added", "spool.discarded"]
    (discarded,) = trail.of("spool.discarded")
    assert discarded.queue_id == writer.queue_id
    assert "another entry already has this queue id" in str(discarded.details)


async def test_a_failed_directory_fsync_keeps_the_linked_entry_unacknowledged(
    spool: Spool, trail: RecordingTrail, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = spool.queue(RECEIVED)
    incoming = str(queue.dirs.state("incoming"))
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == incoming:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    writer = await queue.open_writer(envelope(), origin())
    await writer.write(message())
    with pytest.raises(SpoolWriteError, match="syncing the incoming directory: Input/output"):
        await writer.commit()
    monkeypatch.undo()
    assert names(queue.dirs.state("incoming")) == [writer.queue_id]  # visible, not durable
    assert trail.of("spool.discarded") == []
    assert [(i.name, i.error) for i in await queue.scan("incoming")] == [(writer.queue_id, None)]


async def test_a_link_made_before_its_temp_name_could_be_removed_is_kept(
    spool: Spool, trail: RecordingTrail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named temp file is linked, then its temp name removed: if only the removal
    fails, the entry is ours and in ``incoming/`` - not discarded, and not reported as
    a link failure or as a directory fsync failure."""
    queue = spool.queue(RECEIVED)
    tmp = str(queue.dirs.tmp)
    real_unlink = os.unlink
    failed: list[str] = []

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if not failed and os.path.dirname(os.fspath(path)) == tmp:
            failed.append(os.fspath(path))
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    writer = await queue.open_writer(envelope(), origin())
    await writer.write(SIZES["large"])
    with pytest.raises(SpoolWriteError, match="removing the temp name") as raised:
        await writer.commit()
    monkeypatch.undo()
    assert "syncing" not in str(raised.value)
    assert len(failed) == 1
    assert names(queue.dirs.state("incoming")) == [writer.queue_id]
    assert [(i.name, i.error) for i in await queue.scan("incoming")] == [(writer.queue_id, None)]
    assert trail.of("spool.discarded") == []


@pytest.mark.parametrize("size", SIZES)
async def test_an_added_event_the_trail_refuses_leaves_no_file(
    spool: Spool, trail: RecordingTrail, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building ``spool.added`` can refuse a field (an audit value is at most 4 KiB of
    UTF-8): the commit fails, its file is discarded and nothing is published (the event
    was built outside the guard before, while the file's fsync ran: the file stayed)."""
    from gateway.spool.entry_file import EntryFile

    def refuse(self: EntryFile, record: object, actor: str) -> None:
        raise ValueError("audit field details.client_dn: 4200 bytes, more than 4096")

    monkeypatch.setattr(EntryFile, "added_event", refuse)
    queue = spool.queue(RECEIVED)
    before = len(os.listdir("/proc/self/fd"))
    writer = await queue.open_writer(envelope(), origin())
    await writer.write(SIZES[size])
    with pytest.raises(ValueError):
        await writer.commit()
    assert names(queue.dirs.tmp) == []
    assert names(queue.dirs.state("incoming")) == []
    assert len(os.listdir("/proc/self/fd")) == before
    assert trail.types() == []

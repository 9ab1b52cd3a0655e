"""The spool scribe: the child process that writes an SMTP front's messages durably.

Role: an SMTP front (``missive serve`` and each ``missive worker front``) does not write
``received/`` itself. It starts one scribe (``gateway.spool.scribe_client``) and streams
each message to it over a private ``socketpair`` (``gateway.spool.scribe_protocol``);
the scribe writes it with the spool's own ``EntryWriter`` (temp file, fsync, link into
``incoming/``, group-committed directory fsync, ``spool.added`` in the audit trail) and
answers ``DONE`` only when ``commit`` has returned. The front answers ``250`` on that.

Why a process (issue 5, measured in ``bench/README.md``, "The spool scribe"): in one
CPython process, the spool's I/O threads and the audit writer thread take the GIL back
after each of their system calls, and the event loop, which is the front's serial part,
waits for it after each of its own (48 context switches per message, ``socket.send``
86 µs instead of 15). In a process of its own, the same writes cost the loop one
``write`` to a socket per chunk and one read per reply.

I/O threads: 4 (``SCRIBE_IO_THREADS``, set by the client), not the spool's default 16.
The scribe's thread hand-offs cost it CPU on the cores the front needs: measured over 6
alternated rounds, 16 threads made 28-30 context switches per message in the scribe, 4
made 22-24 and 2 made 18-20, and the front's accept rate was 803, 860 and 862 msg/s
(means). Four still lets four files' fsyncs run at once, which a journalled file system
commits together; the directory fsync is group-committed whatever the count.

Invariants: the durability and audit contract is ``EntryWriter``'s, unchanged; each
entry is served in order by a task of its own (``DATA`` chunks, then one ``COMMIT`` or
``ABORT``), entries concurrently, so group commit still gathers them. At the end of the
link (the front stopped or died) every entry not yet committed is aborted (its client
got no ``250``; that abort is answered to nobody), a commit already under way completes
and is still answered (the front's ``aclose`` shuts only its half of the link and reads
on, so a graceful stop gives that message its ``250``; a dead front makes it a duplicate
at most, if its client retries), then the link, the spool and the trail are closed and
the process exits 0. A protocol error ends the link the same way. It ignores SIGINT,
SIGHUP and SIGTERM (decision, session 6): it is in its front's process group, which
``serve``'s ``WorkerGroup`` stops with SIGTERM (and a Ctrl-C in a terminal reaches with
SIGINT) while the front still drains its DATA transfers into it; it lives exactly as
long as its link (SIGKILL, e.g. the group's after ``stop_timeout``, still ends it).

Memory (decision, session 6): ``DATA`` read from the link waits in its entry's queue
until that entry's ``EntryWriter`` takes it; at most ``BUFFER_LIMIT`` (1 MiB) bytes, over
all entries, wait so. Past it the scribe stops reading the link until they are written,
so the front's ``drain`` waits and a disk slower than the socket slows the front's
readers instead of filling the scribe (measured: one 50 MB message raised the scribe's
peak RSS by 37-44 MiB before, 2.4 MiB after; same transfer time).

Command line (started by the client, not by people)::

    python -m gateway.spool.scribe --fd N --spool DIR --audit FILE --actor NAME
                                   --max-message-size BYTES [--log-level LEVEL]
                                   [--io-threads N]

Trust level: holds no key at all (not even the front's TLS key: it is started with a
fresh interpreter, not forked, and with ``-P``, so the directory ``serve`` was started
from is not on its module path); sees the content of what it writes, logs only sizes and
ids, like the in-process writer.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.audit.sink import AuditSink
from gateway.log import get_logger, setup_logging
from gateway.spool.errors import SpoolError
from gateway.spool.layout import RECEIVED
from gateway.spool.model import RecordError
from gateway.spool.queue import Queue
from gateway.spool.runtime import DEFAULT_IO_THREADS
from gateway.spool.scribe_protocol import (
    Frame,
    Kind,
    ProtocolError,
    decode_open,
    encode_failure,
    frame,
    read_frame,
)
from gateway.spool.spooldir import Spool
from gateway.spool.writer import EntryWriter

_log = get_logger("spool.scribe")

BUFFER_LIMIT = 1 << 20  # DATA bytes read from the link and not yet written (docstring)
_LINK_ENDED = Frame(Kind.ABORT, 0, b"the SMTP front went away")  # answered to nobody


@dataclass
class _Entry:
    """One entry being written: its operations in order, served by ``task``."""

    operations: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class Scribe:
    """Serve one link: ``OPEN``/``DATA``/``COMMIT``/``ABORT`` into ``queue``."""

    def __init__(self, queue: Queue, writer: asyncio.StreamWriter) -> None:
        self._queue = queue
        self._writer = writer
        self._entries: dict[int, _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffered = 0  # DATA bytes queued in entries, not yet given to their writer
        self._room = asyncio.Event()
        self._room.set()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Until the end of the link; then abort what is unfinished and wait for it."""
        self._writer.write(frame(Kind.READY, 0))
        try:
            while (received := await read_frame(reader)) is not None:
                await self._dispatch(received)
        except ProtocolError as error:
            _log.error("scribe.protocol_error", error=str(error))
        except ConnectionError:
            pass
        finally:
            await self._abort_unfinished()  # commits under way are still answered
            self._writer.close()  # then the front sees the end

    async def _dispatch(self, received: Frame) -> None:
        if received.kind is Kind.OPEN:
            await self._open(received)
            return
        entry = self._entries.get(received.handle)
        if entry is None or received.kind not in (Kind.DATA, Kind.COMMIT, Kind.ABORT):
            raise ProtocolError(f"{received.kind.name} for no open entry {received.handle}")
        if received.kind is not Kind.DATA:
            del self._entries[received.handle]  # nothing may follow COMMIT or ABORT
        entry.operations.put_nowait(received)
        if received.kind is Kind.DATA:
            await self._hold(len(received.payload))

    async def _hold(self, size: int) -> None:
        """Count ``size`` queued bytes; past ``BUFFER_LIMIT``, stop reading the link until
        the entries' writers have taken enough (the front's ``drain`` then waits)."""
        self._buffered += size
        if self._buffered > BUFFER_LIMIT:
            self._room.clear()
            await self._room.wait()

    def _release(self, size: int) -> None:
        self._buffered -= size
        if self._buffered <= BUFFER_LIMIT:
            self._room.set()

    async def _open(self, received: Frame) -> None:
        if received.handle in self._entries:
            raise ProtocolError(f"entry {received.handle} opened twice")
        try:
            new = decode_open(received.payload)
        except RecordError as error:
            raise ProtocolError(f"unreadable OPEN record: {error}") from error
        writer = await self._queue.open_writer(
            new.envelope, new.origin, queue_id=new.queue_id, received=new.received
        )
        entry = _Entry()
        entry.task = asyncio.create_task(self._serve_entry(received.handle, writer, entry))
        self._tasks.add(entry.task)
        entry.task.add_done_callback(self._tasks.discard)
        self._entries[received.handle] = entry

    async def _serve_entry(self, handle: int, writer: EntryWriter, entry: _Entry) -> None:
        """``DATA`` until a ``COMMIT`` or an ``ABORT``, then its one answer. Whatever goes
        wrong, the answer is sent (an unexpected error is a ``FAILED``: the front answers
        451 instead of waiting), and only once the ``COMMIT`` or ``ABORT`` has come."""
        failure: BaseException | None = None
        while (operation := await entry.operations.get()).kind is Kind.DATA:
            if failure is None:
                failure = await _write(writer, operation.payload)
            self._release(len(operation.payload))
        if operation.kind is Kind.ABORT:
            await _quietly(writer.abort(operation.payload.decode("utf-8", "replace")), writer)
            if operation is not _LINK_ENDED:
                self._answer(handle, None, "")
        elif failure is not None:
            self._answer(handle, failure, "")
        else:
            try:
                queue_id = await writer.commit()
            except Exception as error:  # noqa: BLE001 - answered as FAILED (see above)
                _log_unexpected(error, writer)
                self._answer(handle, error, "")
            else:
                self._answer(handle, None, queue_id)

    def _answer(self, handle: int, error: BaseException | None, queue_id: str) -> None:
        if self._writer.is_closing():
            return
        if error is None:
            self._writer.write(frame(Kind.DONE, handle, queue_id.encode("ascii")))
        else:
            self._writer.write(frame(Kind.FAILED, handle, encode_failure(error)))

    async def _abort_unfinished(self) -> None:
        """The link is gone: no ``250`` can follow; drop what was not committed."""
        for entry in self._entries.values():
            entry.operations.put_nowait(_LINK_ENDED)
        self._entries.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _write(writer: EntryWriter, chunk: bytes) -> BaseException | None:
    """Append ``chunk``; the error instead of raising it (the writer is then closed and
    the refusal recorded: the rest of the entry is read and dropped)."""
    try:
        await writer.write(chunk)
    except Exception as error:  # noqa: BLE001 - becomes the entry's FAILED answer
        _log_unexpected(error, writer)
        await _quietly(writer.abort("error in the spool scribe"), writer)
        return error
    return None


async def _quietly(step: Awaitable[None], writer: EntryWriter) -> None:
    try:
        await step
    except Exception as error:  # noqa: BLE001 - logged; the entry is answered anyway
        _log_unexpected(error, writer)


def _log_unexpected(error: Exception, writer: EntryWriter) -> None:
    """A spool error is the entry's outcome (the spool logged and audited it); anything
    else is a bug or an unforeseen failure, logged here by type (never its text: it may
    quote content)."""
    if not isinstance(error, (SpoolError, OSError, RecordError)):
        _log.error("scribe.error", queue_id=writer.queue_id, error=type(error).__name__)


async def run_scribe(
    link: socket.socket,
    *,
    spool_dir: Path,
    audit_path: Path,
    actor: str,
    max_message_size: int,
    io_threads: int = DEFAULT_IO_THREADS,
) -> None:
    """Serve ``link`` until it ends, writing into ``spool_dir``'s ``received/``."""
    audit = AuditSink(audit_path)
    audit.start()
    try:
        spool = Spool(
            spool_dir,
            audit=audit,
            actor=actor,
            max_message_size=max_message_size,
            io_threads=io_threads,
        )
        try:
            reader, writer = await asyncio.open_unix_connection(sock=link)
            try:
                await Scribe(spool.queue(RECEIVED), writer).serve(reader)
            finally:
                writer.close()
        finally:
            await spool.aclose()
    finally:
        await audit.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.spool.scribe")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--audit", type=Path, required=True)
    parser.add_argument("--actor", required=True)
    parser.add_argument("--max-message-size", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--io-threads", type=int, default=DEFAULT_IO_THREADS)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # it ends with its link (module docstring)
    link = socket.socket(fileno=args.fd)
    asyncio.run(
        run_scribe(
            link,
            spool_dir=args.spool,
            audit_path=args.audit,
            actor=args.actor,
            max_message_size=args.max_message_size,
            io_threads=args.io_threads,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

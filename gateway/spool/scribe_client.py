"""The SMTP front's side of its spool scribe: a ``MessageQueue`` whose writes happen in a child.

Role: ``ScribeQueue`` is what ``missive serve`` and each ``missive worker front`` give
their listeners as the queue of ``received/``. It has the interface the front uses of
``gateway.spool.Queue`` (``open_writer``, then ``write`` / ``commit`` / ``abort``), and
forwards each entry to the scribe process it started (``gateway.spool.scribe``; why a
process: that module's docstring and ``bench/README.md``).

Invariants (the front's ``250`` rests on them):

- ``commit`` returns a queue id only when the scribe answered ``DONE`` for it, i.e. it
  ended the entry's steps: file fsynced, ``spool.added`` committed, file linked into
  ``incoming/`` and ``incoming/`` fsynced. Anything else raises a ``SpoolError`` (the
  front answers ``451``/``452``, or ``552`` for ``MessageTooLarge``).
- If the link ends (the scribe crashed, was killed, or sent a bad frame), every entry in
  flight fails with ``SpoolWriteError``: its client gets no ``250`` and will retry. A
  ``COMMIT`` whose ``DONE`` was lost may have been written: a duplicate, never a loss (the
  spool's own contract). The next ``open_writer`` starts a new scribe, at most one start
  per ``restart_interval`` seconds; in between, ``open_writer`` raises ``SpoolWriteError``.
- A scribe that stops answering (stopped by SIGSTOP, blocked on a dead disk) is killed
  (decision, session 6): an answer not come ``ANSWER_TIMEOUT`` (60 s) after its
  ``COMMIT``/``ABORT``, or a ``drain`` that waits as long, ends the link as a crash does
  (``451`` for what is in flight, a new scribe on the next ``open_writer``). 60 s is far
  above a commit's fsyncs on a working disk and below the session's own command
  timeout (5 min), so a stuck scribe never holds every session of its front until its
  clients give up.
- ``commit`` is shielded from cancellation like ``EntryWriter.commit``: a client that
  goes away during the commit does not stop it (and its answer, which nobody reads
  then, is marked read so that asyncio does not report it).
- ``aclose`` shuts the front's half of the link and reads the answers until the scribe
  closes its own (at most ``STOP_TIMEOUT``): a commit under way at a graceful stop gets
  its ``DONE``.
- The size limit is checked here too, as the chunks are sent: past it the entry is
  aborted and ``MessageTooLarge`` raised at once, as ``EntryWriter.write`` does.

Memory: a writer keeps at most ``SEND_SIZE`` bytes of content (plus one chunk) before
it writes them to the socket, and then waits for the socket to drain
(``StreamWriter.drain``), so a slow scribe slows the front's readers rather than filling
memory.

Trust level: runs in the front; the scribe is its own child, reached only through a
``socketpair``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.log import get_logger
from gateway.spool.errors import MessageTooLarge, SpoolError, SpoolWriteError
from gateway.spool.ids import QueueId, new_queue_id
from gateway.spool.model import Envelope, Origin
from gateway.spool.scribe_protocol import (
    MAX_PAYLOAD,
    Kind,
    NewEntry,
    ProtocolError,
    decode_failure,
    encode_open,
    frame,
    read_frame,
)

START_TIMEOUT = 60.0  # seconds for a new scribe to open the spool and the trail
STOP_TIMEOUT = 30.0  # seconds for the scribe to finish and exit at ``aclose``
RESTART_INTERVAL = 1.0  # seconds between two starts of a scribe
ANSWER_TIMEOUT = 60.0  # seconds for an answer or a drain before the scribe is killed
SEND_SIZE = 64 * 1024  # content bytes a writer gathers before it sends them

_log = get_logger("spool.scribe")


class _Link:
    """One running scribe: its process, its socket and the answers awaited."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self.process = process
        self._reader = reader
        self._writer = writer
        self._answer_timeout = answer_timeout
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._handles = itertools.cycle(range(1, 1 << 32))  # in flight: far fewer
        self._reading: asyncio.Task[None] | None = None
        self._ended = False
        self._closing = False
        self.alive = True

    async def wait_ready(self, timeout: float) -> None:
        """Until the scribe's ``READY``; ``SpoolWriteError`` if it ends or takes too long."""
        try:
            ready = await asyncio.wait_for(read_frame(self._reader), timeout)
        except (TimeoutError, ProtocolError, ConnectionError) as error:
            raise SpoolWriteError(f"the spool scribe did not start: {error}") from error
        if ready is None or ready.kind is not Kind.READY:
            status = await _exit_status(self.process)
            raise SpoolWriteError(f"the spool scribe did not start (exit status {status})")

    def start_reading(self) -> None:
        self._reading = asyncio.get_running_loop().create_task(self._read_answers())

    def new_handle(self) -> int:
        return next(self._handles)

    def send(self, data: bytes) -> None:
        if not self.alive:
            raise SpoolWriteError("the spool scribe stopped")
        self._writer.write(data)

    async def drain(self) -> None:
        try:
            await asyncio.wait_for(self._writer.drain(), self._answer_timeout)
        except TimeoutError:
            self._give_up(f"the spool scribe read nothing for {self._answer_timeout} s")
            raise SpoolWriteError("the spool scribe stopped") from None
        except ConnectionError as error:
            raise SpoolWriteError("the spool scribe stopped") from error

    def request(self, data: bytes, handle: int) -> asyncio.Future[str]:
        """Send ``data`` (a ``COMMIT`` or an ``ABORT``) and the future of its answer; past
        ``answer_timeout`` without it, the scribe is killed (module docstring)."""
        self.send(data)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        self._waiting[handle] = answer
        timer = loop.call_later(self._answer_timeout, self._overdue, answer)
        answer.add_done_callback(lambda _: _settled(answer, timer))
        return answer

    def _overdue(self, answer: asyncio.Future[str]) -> None:
        if not answer.done():
            self._give_up(f"no answer from the spool scribe in {self._answer_timeout} s")

    def _give_up(self, reason: str) -> None:
        """The scribe is stuck (stopped, or blocked on a dead disk): kill it, fail what
        is in flight; the next ``open_writer`` starts another."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self._writer.transport.abort()  # what it did not read is dropped, not flushed
        self._end(reason)

    async def _read_answers(self) -> None:
        reason = "end of link"
        try:
            while (answer := await read_frame(self._reader)) is not None:
                waiting = self._waiting.pop(answer.handle, None)
                if waiting is None or answer.kind not in (Kind.DONE, Kind.FAILED):
                    raise ProtocolError(f"unexpected {answer.kind.name} for {answer.handle}")
                if waiting.done():
                    continue
                if answer.kind is Kind.DONE:
                    waiting.set_result(answer.payload.decode("ascii"))
                else:
                    waiting.set_exception(decode_failure(answer.payload))
        except (ProtocolError, ConnectionError, UnicodeDecodeError) as error:
            reason = str(error)
        finally:
            self._end(reason)

    def _end(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.alive = False
        self._writer.close()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(SpoolWriteError("the spool scribe stopped"))
        in_flight = len(self._waiting)
        self._waiting.clear()
        if self._closing:
            _log.info("scribe.link_ended", pid=self.process.pid, reason=reason)
        else:
            _log.error("scribe.died", pid=self.process.pid, reason=reason, in_flight=in_flight)

    async def close(self, timeout: float) -> int | None:
        """End the link and wait for the process (killed after ``timeout``): the front's
        half is shut first and the answers read until the scribe closes its own, so a
        commit it completes is answered ``DONE``, not lost to a needless ``451``."""
        self.alive = False  # nothing more is sent
        self._closing = True
        if self._reading is not None and not self._writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write_eof()
            await asyncio.wait({self._reading}, timeout=timeout)
        self._writer.close()
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return await self.process.wait()


class ScribeWriter:
    """One message on its way to the scribe (the front's ``MessageWriter``).

    Frames are gathered here and sent once ``SEND_SIZE`` bytes of content wait, or with
    the ``COMMIT`` or ``ABORT``: a message of ordinary size costs the front one ``write``
    to the socket and the scribe one read."""

    def __init__(self, link: _Link, entry: NewEntry, limit: int | None) -> None:
        self._link = link
        self._handle = link.new_handle()
        self.queue_id = entry.queue_id
        self._limit = limit
        self._size = 0
        self._open = True
        self._frames = [frame(Kind.OPEN, self._handle, encode_open(entry))]
        self._waiting = 0  # content bytes in ``_frames``

    async def write(self, chunk: bytes) -> None:
        """Add ``chunk``; ``MessageTooLarge`` past the limit (the entry is then aborted)."""
        self._check_open()
        if not chunk:
            return
        self._size += len(chunk)
        if self._limit is not None and self._size > self._limit:
            await self.abort(f"message larger than {self._limit} bytes")
            raise MessageTooLarge(self._limit)
        for start in range(0, len(chunk), MAX_PAYLOAD):
            self._frames.append(frame(Kind.DATA, self._handle, chunk[start : start + MAX_PAYLOAD]))
        self._waiting += len(chunk)
        if self._waiting >= SEND_SIZE:
            self._link.send(self._take_frames())
            await self._link.drain()

    async def commit(self) -> QueueId:
        """The queue id, once the scribe has made the entry durable (module docstring)."""
        self._check_open()
        self._open = False
        answer = self._link.request(
            self._take_frames(frame(Kind.COMMIT, self._handle)), self._handle
        )
        queue_id = await asyncio.shield(answer)
        if queue_id != self.queue_id:
            raise SpoolWriteError(f"the spool scribe committed {queue_id!r}, not {self.queue_id}")
        return self.queue_id

    async def abort(self, reason: str) -> None:
        """Drop the entry (``spool.refused`` with ``reason``); never raises for a lost link."""
        if not self._open:
            return
        self._open = False
        payload = reason.encode("utf-8", "replace")[:1000]
        try:
            last = frame(Kind.ABORT, self._handle, payload)
            await self._link.request(self._take_frames(last), self._handle)
        except SpoolError:
            pass  # the link is gone: the scribe aborted it itself

    def _take_frames(self, last: bytes = b"") -> bytes:
        self._frames.append(last)
        data = b"".join(self._frames)
        self._frames.clear()
        self._waiting = 0
        return data

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this entry writer is closed (committed or aborted)")


class ScribeQueue:
    """``received/`` as the front sees it, written by a scribe process (module docstring)."""

    def __init__(
        self,
        *,
        spool_dir: Path,
        audit_path: Path,
        actor: str,
        max_message_size: int,
        log_level: str = "info",
        restart_interval: float = RESTART_INTERVAL,
    ) -> None:
        self._command = [
            sys.executable, "-P", "-m", "gateway.spool.scribe",
            "--spool", str(spool_dir), "--audit", str(audit_path), "--actor", actor,
            "--max-message-size", str(max_message_size), "--log-level", log_level,
        ]  # fmt: skip
        self._limit = max_message_size
        self._restart_interval = restart_interval
        self._link: _Link | None = None
        self._last_start = float("-inf")
        self._starting = asyncio.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running scribe's process id (None when there is none)."""
        return self._link.process.pid if self._link is not None and self._link.alive else None

    async def start(self) -> None:
        """Start the scribe and wait until it is ready (``SpoolWriteError`` if it is not)."""
        async with self._starting:
            if self._link is None or not self._link.alive:
                await self._start()

    async def _start(self) -> None:
        """One attempt; the restart throttle counts from its end (a start that takes
        longer than ``restart_interval`` to fail must not be retried by every session
        queued behind it)."""
        try:
            await self._launch()
        finally:
            self._last_start = time.monotonic()

    async def _launch(self) -> None:
        if self._link is not None:
            await self._link.close(STOP_TIMEOUT)  # reap the one that ended
            self._link = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            command = [*self._command, "--fd", str(theirs.fileno())]
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        link = _Link(process, reader, writer, ANSWER_TIMEOUT)
        try:
            await link.wait_ready(START_TIMEOUT)
        except BaseException:
            await link.close(STOP_TIMEOUT)
            raise
        link.start_reading()
        self._link = link
        _log.info("scribe.started", pid=process.pid)

    async def _running_link(self) -> _Link:
        if self._closed:
            raise SpoolWriteError("the spool is closing")
        link = self._link
        if link is not None and link.alive:
            return link
        async with self._starting:
            if self._link is not None and self._link.alive:
                return self._link
            if time.monotonic() - self._last_start < self._restart_interval:
                raise SpoolWriteError("the spool scribe stopped; restarting it shortly")
            await self._start()
            assert self._link is not None
            return self._link

    async def open_writer(self, envelope: Envelope, origin: Origin) -> ScribeWriter:
        """A new entry, written by the scribe (``SpoolWriteError`` if it cannot run)."""
        link = await self._running_link()
        received = datetime.now(UTC)
        entry = NewEntry(new_queue_id(received.timestamp()), received, envelope, origin)
        return ScribeWriter(link, entry, self._limit)

    async def aclose(self) -> None:
        """End the link; the scribe finishes what it was doing and exits."""
        self._closed = True
        async with self._starting:
            link, self._link = self._link, None
        if link is not None:
            status = await link.close(STOP_TIMEOUT)
            _log.info("scribe.stopped", pid=link.process.pid, status=status)


def _settled(answer: asyncio.Future[str], timer: asyncio.TimerHandle) -> None:
    """The answer came: no deadline any more; its error counts as read even when its
    commit was cancelled (the session went away), so asyncio does not report it."""
    timer.cancel()
    if not answer.cancelled():
        answer.exception()


async def _exit_status(process: asyncio.subprocess.Process) -> int | None:
    try:
        return await asyncio.wait_for(process.wait(), 5)
    except TimeoutError:
        return None

"""The spool scribe: the child process that writes an SMTP front's messages durably.

Role: an SMTP front (``missive serve`` and each ``missive worker front``) does not write
``received/`` itself. It starts one scribe (``gateway.spool.scribe_client``) and streams
each message to it over a private ``socketpair`` (``gateway.spool.scribe_protocol``);
the scribe writes it with the spool's own blocking steps (``gateway.spool.entry_file``:
temp file, fsync, ``spool.added`` in the audit trail, link into ``incoming/``, fsync of
``incoming/``) and answers ``DONE`` only when all of them have ended. The front answers
``250`` on that.

Why a process (issue 5, measured in ``bench/README.md``, "The spool scribe"): in one
CPython process, the spool's I/O threads and the audit writer thread take the GIL back
after each of their system calls, and the event loop, which is the front's serial part,
waits for it after each of its own (48 context switches per message, ``socket.send``
86 µs instead of 15). In a process of its own, the same writes cost the loop one
``write`` to a socket per chunk and one read per reply.

Why one thread and batches (decision, session 7): the first scribe ran the asyncio
``EntryWriter`` with its I/O threads and the audit sink's writer thread; its CPU went
to handing each message from thread to thread (22-30 context switches per message),
on the two cores the front needs. This one has no event loop and no thread. It reads
whatever the link holds, carries out every frame in it in order (``OPEN``; ``DATA``,
kept in memory up to ``FLUSH_SIZE`` per entry, then written), and then ends the
batch's ``COMMIT`` and ``ABORT`` frames together (group commit, STYLE 4):

1. for each ``COMMIT``: write the end of the file (record, preamble) and start its
   writeback (``EntryFile.start_writeback``); then ``fsync`` each file in turn;
2. one audit transaction for the whole batch: ``spool.added`` of each file written,
   ``spool.refused`` of each abort or failure (``AuditStore.append``, as the sink's
   writer thread does it);
3. ``link`` each recorded file into ``incoming/``, then one ``fsync`` of ``incoming/``;
4. one ``send`` of every answer.

While a batch is written, the front's frames wait in the socket: the next batch holds
what came meanwhile, so a busier front gets larger batches, not more fsyncs per
message. The order is stricter than ``EntryWriter``'s (which commits ``spool.added``
while the file's fsync runs): an ``added`` record always follows its file's fsync.

Invariants:

- ``DONE`` for a ``COMMIT`` is sent only after steps 1-3 ended well for that entry:
  a ``250`` never precedes its fsyncs or its audit record. A failure at a step fails
  the entries it concerns (``FAILED``: the front answers 451/452/552) and is audited:
  a file not yet recorded is discarded with ``spool.refused``; one recorded whose link
  failed is discarded with ``spool.discarded``; linked but not known durable (the
  directory fsync failed) stays in ``incoming/`` and is answered ``FAILED`` (a
  duplicate at most, if its client retries).
- Every ``COMMIT`` and ``ABORT`` gets exactly one answer, whatever goes wrong inside
  (an unexpected error is a ``FAILED``, logged by type).
- Nothing outlives a failure (decision, session 7 review): an entry that fails, for
  whatever reason and at whatever step, has its descriptor closed and its temp name
  removed, and its end is recorded: ``spool.refused`` before its ``spool.added`` was
  committed, ``spool.discarded`` after (the trail never claims an entry that is not
  in ``incoming/``). An unexpected error (a bug) fails only the entries not yet
  ``DONE`` of its batch and ends them that way (``Scribe._end_after_error``); the
  steps of one entry, building its ``spool.added`` included, are guarded one entry at
  a time, so an entry the trail refuses to describe (a client certificate DN over
  4 KiB of UTF-8, which the record's 4,096-character limit lets through) fails alone,
  not its whole batch. A refusal's reason is cut to ``MAX_REASON`` characters (the
  protocol does not bound an ``ABORT``'s; the trail takes 4 KiB).
- At the end of the link (the front stopped or died, or sent a bad frame) the frames
  already read, up to a bad one, are still carried out and answered (the front's
  ``aclose`` shuts only its half of the link and reads on, so a graceful stop gives
  those messages their ``250``; frames after a bad one are not carried out, and the
  front fails what it still waits for when the link ends), every entry still open is
  dropped with ``spool.refused`` ("the SMTP front went away": its client got no
  ``250``), then the trail is closed and the process exits 0.
- It ignores SIGINT, SIGHUP and SIGTERM (decision, session 6): it is in its front's
  process group, which ``serve``'s ``WorkerGroup`` stops with SIGTERM (and a Ctrl-C in
  a terminal reaches with SIGINT) while the front still drains its DATA transfers into
  it; it lives exactly as long as its link (SIGKILL, e.g. the group's after
  ``stop_timeout``, still ends it).

Memory: the scribe reads at most ``READ_SIZE`` bytes from the link at a time and writes
them before it reads more, so a disk slower than the socket fills the socket and the
front's ``drain`` waits: its readers slow down, nothing piles up here. Each open entry
keeps at most ``FLUSH_SIZE`` bytes plus one frame, as with ``EntryWriter``.

Command line (started by the client, not by people)::

    python -m gateway.spool.scribe --fd N --spool DIR --audit FILE --actor NAME
                                   --max-message-size BYTES [--log-level LEVEL]

Layout (session 7 split, pure move): this module reads the link, carries out ``OPEN``
and ``DATA``, answers each batch (``Scribe._end``, step 4) and drops what is unfinished
at the end of the link; steps 1-3 of a batch's ending (``BatchSteps``: ``_end_steps``,
``_end_after_error``, ``_write_end``, ``_sync``, ``_guarded``, ``_record``, ``_publish``,
``_sync_linked``, ``_link_one``, ``_refused``, ``_discarded``), the entry records
(``_Open``, ``_Ending``, ``_Batch``), ``MAX_REASON`` and the answer and
log helpers moved to ``gateway.spool.scribe_batch``; ``MAX_REASON`` is still importable
from here. The checkpoint is the spool's own (``gateway.spool.runtime``).

Trust level: holds no key at all (not even the front's TLS key: it is started with a
fresh interpreter, not forked, and with ``-P``, so the directory ``serve`` was started
from is not on its module path); sees the content of what it writes, logs only sizes and
ids, like the in-process writer.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from gateway.audit.event import AuditEvent, utc_now
from gateway.audit.store import AuditStore
from gateway.log import get_logger, setup_logging
from gateway.spool.atomic import as_spool_error
from gateway.spool.entry_file import EntryFile
from gateway.spool.errors import MessageTooLarge, SpoolError, SpoolWriteError
from gateway.spool.layout import RECEIVED, Layout, StageDirs
from gateway.spool.model import RecordError
from gateway.spool.runtime import Checkpoint, no_checkpoint
from gateway.spool.scribe_batch import MAX_REASON as MAX_REASON  # re-export
from gateway.spool.scribe_batch import (
    BatchSteps,
    _answer,
    _Batch,
    _Ending,
    _log_unexpected,
    _Open,
)
from gateway.spool.scribe_protocol import (
    Frame,
    FrameDecoder,
    Kind,
    ProtocolError,
    decode_open,
    frame,
)

_log = get_logger("spool.scribe")

READ_SIZE = 256 * 1024  # bytes read from the link at a time (module docstring, Memory)
LINK_ENDED = "the SMTP front went away"


class Scribe(BatchSteps):
    """Serve one link into ``dirs`` (``received/``), recording to ``store``."""

    def __init__(
        self,
        link: socket.socket,
        dirs: StageDirs,
        store: AuditStore,
        *,
        actor: str,
        max_message_size: int,
        clock: Callable[[], datetime] = utc_now,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self._link = link
        self._dirs = dirs
        self._store = store
        self._actor = actor
        self._limit = max_message_size
        self._clock = clock
        self._checkpoint = checkpoint
        self._decoder = FrameDecoder()
        self._entries: dict[int, _Open] = {}
        self._refusals: list[AuditEvent] = []  # failures during DATA, for the next batch
        self._link_open = True

    def serve(self) -> None:
        """Until the end of the link; then drop what is unfinished (module docstring)."""
        self._send([frame(Kind.READY, 0)])
        try:
            while self._serve_batch():
                pass
        finally:
            self._drop_unfinished()
            self._link.close()  # then the front sees the end

    def _serve_batch(self) -> bool:
        """Read what the link holds, carry it out, end its commits; False at the end."""
        batch = _Batch()
        going_on = True
        try:
            going_on = self._read()
            while (received := self._decoder.next_frame()) is not None:
                if (ending := self._dispatch(received)) is not None:
                    batch.endings.append(ending)
            if not going_on and not self._decoder.between_frames:
                raise ProtocolError("end of stream inside a frame")
        except ProtocolError as error:
            _log.error("scribe.protocol_error", error=str(error))
            going_on = False
        except ConnectionError:
            going_on = False
        finally:
            self._end(batch)  # what was read is still committed and answered
        return going_on

    def _read(self) -> bool:
        """Feed what the link holds (blocking until something comes); False at its end."""
        data = self._link.recv(READ_SIZE)
        if not data:
            return False
        self._decoder.feed(data)
        return True

    # -- frames ------------------------------------------------------------------------

    def _dispatch(self, received: Frame) -> _Ending | None:
        if received.kind is Kind.OPEN:
            self._open(received)
            return None
        opened = self._entries.get(received.handle)
        if opened is None or received.kind not in (Kind.DATA, Kind.COMMIT, Kind.ABORT):
            raise ProtocolError(f"{received.kind.name} for no open entry {received.handle}")
        if received.kind is Kind.DATA:
            self._write(opened, received.payload)
            return None
        del self._entries[received.handle]  # nothing may follow COMMIT or ABORT
        reason = None
        if received.kind is Kind.ABORT:
            reason = received.payload.decode("utf-8", "replace")
        return _Ending(received.handle, opened, reason)

    def _open(self, received: Frame) -> None:
        if received.handle in self._entries:
            raise ProtocolError(f"entry {received.handle} opened twice")
        try:
            new = decode_open(received.payload)
        except RecordError as error:
            raise ProtocolError(f"unreadable OPEN record: {error}") from error
        entry = EntryFile(
            self._dirs,
            queue_id=new.queue_id,
            envelope=new.envelope,
            origin=new.origin,
            received=new.received,
            limit=self._limit,
        )
        self._entries[received.handle] = _Open(entry)

    def _write(self, opened: _Open, chunk: bytes) -> None:
        """Keep or write ``chunk``; a failure ends the entry here (``_Open.failure``)."""
        if opened.failure is not None or not chunk:
            return
        entry = opened.entry
        try:
            data = entry.add(chunk)
            if data is not None:
                entry.write_content(data)
        except MessageTooLarge as error:
            self._fail(opened, error, f"message larger than {error.limit} bytes")
        except OSError as error:
            failure = as_spool_error(error, "writing a queue file")
            self._fail(opened, failure, str(failure))
        except Exception as error:  # noqa: BLE001 - answered as FAILED, never left waiting
            _log_unexpected(error, entry)
            self._fail(opened, SpoolWriteError("the spool scribe failed"), "error in the scribe")

    def _fail(self, opened: _Open, failure: SpoolError, reason: str) -> None:
        opened.failure = failure
        opened.entry.discard()
        self._refusals.append(self._refused(opened.entry, reason))

    # -- ending a batch ----------------------------------------------------------------

    def _end(self, batch: _Batch) -> None:
        """Steps 1-4 of the module docstring for the endings read in this batch. Each
        ending is answered, ``DONE`` only if it was marked done; an unexpected error
        fails those not yet done (and the scribe goes on with the next batch)."""
        batch.events, self._refusals = self._refusals, []
        if not batch.endings and not batch.events:
            return
        try:
            self._end_steps(batch)
        except Exception as error:  # noqa: BLE001 - every COMMIT and ABORT hears back
            _log.error("scribe.error", error=type(error).__name__, entries=len(batch.endings))
            self._end_after_error(batch, error)
        finally:
            self._send([_answer(ending) for ending in batch.endings])

    def _send(self, frames: list[bytes]) -> None:
        """Answers in one ``send``; none once the front has gone (nobody reads them)."""
        if not self._link_open or not frames:
            return
        try:
            self._link.sendall(b"".join(frames))
        except OSError:
            self._link_open = False

    def _drop_unfinished(self) -> None:
        """The link is gone: no ``250`` can follow; drop what was not committed."""
        for opened in self._entries.values():
            if opened.failure is None:
                opened.entry.discard()
                self._refusals.append(self._refused(opened.entry, LINK_ENDED))
        self._entries.clear()
        if self._refusals:
            self._record(self._refusals)
            self._refusals = []


def run_scribe(
    link: socket.socket,
    *,
    spool_dir: Path,
    audit_path: Path,
    actor: str,
    max_message_size: int,
) -> None:
    """Serve ``link`` until it ends, writing into ``spool_dir``'s ``received/``."""
    layout = Layout(spool_dir)
    layout.create_root()
    dirs = layout.stage(RECEIVED)
    dirs.create()
    with AuditStore.open_writer(audit_path) as store:
        Scribe(link, dirs, store, actor=actor, max_message_size=max_message_size).serve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.spool.scribe")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--audit", type=Path, required=True)
    parser.add_argument("--actor", required=True)
    parser.add_argument("--max-message-size", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # it ends with its link (module docstring)
    run_scribe(
        socket.socket(fileno=args.fd),
        spool_dir=args.spool,
        audit_path=args.audit,
        actor=args.actor,
        max_message_size=args.max_message_size,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

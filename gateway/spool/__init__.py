"""The durable spool: the queues between the stages of the gateway.

"250 means on disk" (STYLE 4): a message is acknowledged only once its file and the
directory entry naming it are fsynced, and every later stage reads one queue and
writes the next, so a crash at any moment loses nothing that was acknowledged and can
at most make a stage do its step twice (ARCHITECTURE, quality bar).

Layout (``gateway.spool.layout``; a sysadmin's page is ``docs/spool.md``)::

    <spool_dir>/received/        SMTP front, own DSN/MDN   -> secure agent
                relay/<route>/   secure agent              -> relay of that route
                inbound/         SMTP front, IMAP fetcher  -> inbound agent
                local/           inbound agent             -> local delivery
      each with tmp/ incoming/ active/ deferred/ hold/ corrupt/ handed/ and consumer.lock

Modules, each small and named by concern:

- ``ids``: queue ids (time-sortable, random, file-name safe) and child ids of hand-offs;
- ``model``: the envelope, origin and per-recipient state types, checked when built;
- ``record``: the sans-IO codec of one queue file (preamble, content, JSON record,
  SHA-256);
- ``atomic``: the one writer of queue files (O_EXCL temp, write, fsync, link/rename);
- ``commit``: group commit of directory fsyncs, and the table of what is fsynced when;
- ``entry``: reading a queue file (record, streamed and checked content, headers);
- ``writer``: streaming a new entry (bounded memory, size limit, audit, publish);
- ``scribe``, ``scribe_client``, ``scribe_protocol``: the SMTP front's spool scribe, the
  child process that runs ``writer`` for it, the front's side of the link, and the
  frames between the two (why a process: ``scribe``);
- ``queue``: ``Queue`` (add, claim, defer, complete, bounce, hold, release, retry,
  delete, hand_off, recover, scan), the async orchestration of each operation, one
  module per concern: ``queue_values`` (``Claimed``, ``RecoveryReport``), ``queue_core``
  (its state, looking, shared steps), ``queue_writing`` (add, hand_off),
  ``queue_claims`` (claim, read, defer), ``queue_operator`` (hold, release, retry), and
  ``queue`` itself (complete, bounce, delete, recover);
- ``stagefiles``: the blocking file operations behind it (claim by rename, rewrite a
  version, moves), with ``stage_lookup`` (locate, inspect, scan), ``stage_recovery``
  (requeue ``active/``, ``tmp/`` debris) and ``consumer_lock`` (the consumer lock);
- ``tombstones``: ``handed/``, what keeps a hand-off idempotent after its child has
  left the next stage while the parent may still be re-run;
- ``spooldir``: ``Spool``, which owns the I/O threads and builds the queues;
- ``runtime``: what the queues of one ``Spool`` share;
- ``schedule``: the retry schedule of ``[delivery]``;
- ``consumer``: the claim loop, standby and error guard every stage worker shares;
- ``events``: the ``spool.*`` audit events; ``errors``: typed errors with SMTP meaning;
- ``cli`` and ``display``: ``missive queue list|show|retry|delete|hold|release`` and
  its text output.

Building it (the composition root)::

    spool = Spool(config.gateway.spool_dir, audit=audit_sink, actor="smtp",
                  max_message_size=config.delivery.max_message_size)
    received = spool.queue(RECEIVED)           # the SMTP front adds here
    ...
    await received.recover()                   # in the stage's consumer, before claiming

Trust level: the spool holds messages in clear before the secure agent and after the
inbound agent; directories are 0700 and files 0600, owned by the gateway's user.
"""

from gateway.spool.entry import EntryReader
from gateway.spool.errors import (
    CorruptEntry,
    EntryNotFound,
    EntryStateError,
    MessageTooLarge,
    SpoolBusy,
    SpoolError,
    SpoolFull,
    SpoolWriteError,
)
from gateway.spool.events import AuditTrail
from gateway.spool.ids import QueueId, child_queue_id, new_queue_id
from gateway.spool.layout import INBOUND, LOCAL, RECEIVED, STATES, State, relay_stage
from gateway.spool.model import (
    Envelope,
    MailParams,
    Origin,
    QueueRecord,
    Recipient,
    RecipientState,
    RecipientStatus,
)
from gateway.spool.queue import Claimed, Queue, RecoveryReport
from gateway.spool.schedule import RetryPolicy
from gateway.spool.spooldir import Spool
from gateway.spool.stagefiles import EntryInfo
from gateway.spool.writer import EntryWriter

__all__ = [
    "INBOUND",
    "LOCAL",
    "RECEIVED",
    "STATES",
    "AuditTrail",
    "Claimed",
    "CorruptEntry",
    "EntryInfo",
    "EntryNotFound",
    "EntryReader",
    "EntryStateError",
    "EntryWriter",
    "Envelope",
    "MailParams",
    "MessageTooLarge",
    "Origin",
    "Queue",
    "QueueId",
    "QueueRecord",
    "Recipient",
    "RecipientState",
    "RecipientStatus",
    "RecoveryReport",
    "RetryPolicy",
    "Spool",
    "SpoolBusy",
    "SpoolError",
    "SpoolFull",
    "SpoolWriteError",
    "State",
    "child_queue_id",
    "new_queue_id",
    "relay_stage",
]

"""The audit trail: tamper-evident, append-only, never any message content.

French health-data rules ask for traceability of every action on a message
(who, when, what, with which certificates, with what outcome) without the content
itself. Every stage of the gateway writes ``AuditEvent``s to one ``AuditSink`` (a
single writer thread doing group commits into SQLite in WAL mode); each stored
record carries the SHA-256 of the previous one, so ``missive audit verify`` finds any
edited, deleted, inserted or reordered record; ``missive audit export`` gives the
auditor CSV or JSON Lines; ``missive audit prune`` applies the retention and leaves a
checkpoint record so the chain still verifies.

Modules: ``event`` (the typed record a caller builds), ``record`` (canonical bytes,
hashes, row codec), ``chain`` (verification, checkpoints), ``store`` (SQLite),
``sink`` (the writer thread and ``await sink.record``), ``export``, ``cli``.

Typical use in a stage::

    sink = AuditSink(config.audit.path)
    sink.start()
    receipt = await sink.record(AuditEvent("smtp.accepted", queue_id=qid, ...))
    # only now answer 250; AuditWriteError -> 451
"""

from gateway.audit.chain import Anchor, ChainBreak, Checkpoint, VerifyReport
from gateway.audit.errors import AuditDatabaseError, AuditSinkClosed, AuditWriteError
from gateway.audit.event import AuditEvent
from gateway.audit.record import AuditReceipt, AuditRecord
from gateway.audit.sink import STAGE_GATHER_WINDOW, AuditSink
from gateway.audit.store import AuditChainBroken, AuditStore, PruneResult

__all__ = [
    "STAGE_GATHER_WINDOW",
    "Anchor",
    "AuditChainBroken",
    "AuditDatabaseError",
    "AuditEvent",
    "AuditReceipt",
    "AuditRecord",
    "AuditSink",
    "AuditSinkClosed",
    "AuditStore",
    "AuditWriteError",
    "ChainBreak",
    "Checkpoint",
    "PruneResult",
    "VerifyReport",
]

"""One pass of the secure agent stage over an entry: bookkeeping, outcomes, codes, keys.

Role: the sans-IO part of ``gateway.relay.agent_stage`` (which imports this module and
re-exports its public names): ``Pass`` (what one pass decided, per recipient index of
the envelope: its states, the failure and ``relayed`` reports of its DSNs),
``EntryOutcome`` (the end of one pass, for logs and tests), the RFC 3463 status codes
of the stage's own failures and ``failure_code`` (the status and DSN reason of an agent
``failed`` outcome), ``postal_event`` (the ``agent.postal`` audit event of a letter
sent), and ``handoff_key`` (also used by ``gateway.inbound``).

Invariants (ARCHITECTURE quality bar, "no accepted message is ever lost"):

- hand-offs are keyed deterministically (``handoff_key``: the kind, the route and a
  digest of the recipient addresses, case-folded and sorted), so a repeated pass finds
  its children already written and writes nothing (the child keeps the first
  encryption);
- ``Pass.set`` counts one attempt per decision and keeps at most 4000 characters of the
  reason; ``Pass.unfinished`` is true while any recipient of the envelope (not only
  those of this pass) has no final status;
- **one mailbox, one decision** (session 8). New entries list each mailbox once
  (``gateway.spool.queue_writing``), but a record written by an older gateway may list
  one twice (``mailbox_key``: local part exact, domain without case). ``Pass.of``
  therefore maps each mailbox to *all* its indexes: ``work_envelope`` gives the agent
  the first unfinished occurrence of each mailbox only (one copy, one letter), and
  ``Pass.put``/``set`` write the same state to every occurrence, so the entry ends
  completed. An occurrence still pending while another one of its mailbox is already
  final (a record a former gateway left held this way) takes that final state before
  the pass and is not served again; an occurrence that is final keeps its own state
  (session 8 review: one failed and one delivered stay so, never both failed). Keyed
  by exact address (the former ``index_of``), one index won and the other state
  stayed pending: two letters or copies over two passes, and the entry held;
- a hand-off key counts each mailbox once (session 8 review): the child lists each
  mailbox once (``Envelope.distinct``), so its key must not depend on a repetition
  either. An older agent handed off one message for both occurrences of a repeated
  mailbox, keyed with both; after a stop before the entry was updated, the next pass
  serves one occurrence and must find that child, not write a second copy.

Security notes: nothing here reads a message; the ``agent.postal`` event names the
queue id, the envelope sender and the one recipient, never a Subject nor a body.

Trust level: pure data and functions; no I/O, no keys, no logging.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.audit import AuditEvent
from gateway.relay.agent import RecipientOutcome
from gateway.relay.dsn_recipients import Reason, RecipientReport
from gateway.spool import Claimed, Envelope, QueueRecord, Recipient, RecipientState, RecipientStatus
from gateway.spool.model import mailbox_key

_DIGEST_CHARS = 20

# RFC 3463 codes of this stage's own failures
STATUS_NO_ROUTE = "5.1.2"  # bad destination system address
STATUS_REFUSED = "5.7.1"  # delivery not authorized
STATUS_NO_CERTIFICATE = "5.7.4"  # security features not supported
STATUS_EXPIRED = "5.4.7"  # delivery time expired
STATUS_POSTAL_FAILED = "5.3.0"  # other or undefined mail system status
STATUS_POSTED = "2.0.0"


def handoff_key(kind: str, route: str | None, addresses: Iterable[str]) -> str:
    """A deterministic hand-off key: ``kind:route:digest`` of the recipient addresses.

    The same recipients on the same route give the same key in a repeated pass, so
    ``Queue.hand_off`` writes the child once (``gateway.spool.ids.child_queue_id``).
    Addresses compare as mailboxes do (RFC 5321 §2.4): the domain without case, the
    local part exactly. Two recipients whose local parts differ only by case are two
    mailboxes, each handed its own message: folding them to one key made the second
    hand-off find the first one's child and write nothing (a silent loss). A mailbox
    given twice counts once, as in the child's envelope (module docstring).
    """
    joined = "\n".join(sorted(set(map(mailbox_key, addresses))))
    digest = hashlib.sha256(joined.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    return f"{kind}:{route}:{digest}" if route else f"{kind}:{digest}"


@dataclass
class Pass:
    """What one pass over an entry decided, per recipient index of the envelope."""

    recipients: tuple[Recipient, ...]  # the whole envelope, RCPT order
    states: list[RecipientState]  # aligned with ``recipients``
    indexes_of: dict[str, tuple[int, ...]]  # mailbox_key -> every index, RCPT order
    failures: list[RecipientReport] = field(default_factory=list)
    posted: list[RecipientReport] = field(default_factory=list)

    @classmethod
    def of(cls, record: QueueRecord) -> Pass:
        """The pass over ``record``: every mailbox with all its indexes, and each
        unfinished occurrence of a mailbox already final elsewhere settled to the first
        such final state; final states are kept (module docstring: one mailbox, one
        decision)."""
        recipients = record.envelope.recipients
        grouped: dict[str, list[int]] = {}
        for index, recipient in enumerate(recipients):
            grouped.setdefault(mailbox_key(recipient.address), []).append(index)
        indexes_of = {key: tuple(indexes) for key, indexes in grouped.items()}
        work = cls(recipients, list(record.state.recipients), indexes_of)
        for indexes in work.indexes_of.values():
            final = next((work.states[i] for i in indexes if work._final(i)), None)
            if final is not None:  # the unfinished ones only: a final state is kept
                work._put_all([i for i in indexes if not work._final(i)], final)
        return work

    def work_envelope(self, envelope: Envelope) -> Envelope | None:
        """What the agent must process: the first unfinished occurrence of each mailbox
        (``envelope`` itself when that is every recipient); None when nothing is left."""
        pending = sorted(
            indexes[0] for indexes in self.indexes_of.values() if not self._final(indexes[0])
        )
        if not pending:
            return None
        if len(pending) == len(self.recipients):
            return envelope
        return Envelope(
            envelope.mail_from, tuple(self.recipients[i] for i in pending), envelope.params
        )

    def state(self, address: str) -> RecipientState:
        """The state of ``address`` (the same for every occurrence of its mailbox)."""
        return self.states[self._indexes(address)[0]]

    def recipient(self, address: str) -> Recipient:
        """The first RCPT of ``address``'s mailbox (its NOTIFY and ORCPT)."""
        return self.recipients[self._indexes(address)[0]]

    def put(self, address: str, state: RecipientState) -> None:
        """Give every occurrence of ``address``'s mailbox the state ``state``."""
        self._put_all(self._indexes(address), state)

    def set(self, address: str, status: RecipientStatus, error: str | None = None) -> None:
        attempts = self.state(address).attempts + 1
        self.put(address, RecipientState(status, attempts, error[:4000] if error else None))

    def _indexes(self, address: str) -> tuple[int, ...]:
        return self.indexes_of[mailbox_key(address)]

    def _put_all(self, indexes: Iterable[int], state: RecipientState) -> None:
        for index in indexes:
            self.states[index] = state

    def _final(self, index: int) -> bool:
        return self.states[index].status.final

    @property
    def unfinished(self) -> bool:
        return any(not state.status.final for state in self.states)

    @property
    def delivered_any(self) -> bool:
        return any(state.status is RecipientStatus.DELIVERED for state in self.states)


@dataclass(frozen=True)
class EntryOutcome:
    """The end of one pass over one entry (for logs and tests)."""

    queue_id: str
    disposition: str  # "completed" | "bounced" | "deferred" | "held" | "corrupt"
    handoffs: tuple[str, ...] = ()
    dsns: tuple[str, ...] = ()


def failure_code(outcome: RecipientOutcome) -> tuple[str, Reason]:
    """The RFC 3463 status and the DSN reason of an agent ``failed`` outcome."""
    if outcome.route is None:
        return STATUS_NO_ROUTE, Reason.ROUTE_REJECTED
    if outcome.reason == "refused by route":
        return STATUS_REFUSED, Reason.ROUTE_REJECTED
    return STATUS_REFUSED, Reason.OTHER


def postal_event(entry: Claimed, address: str) -> AuditEvent:
    return AuditEvent(
        type="agent.postal",
        queue_id=entry.queue_id,
        mail_from=entry.record.envelope.mail_from,
        rcpt_to=(address,),
        outcome="posted",
    )

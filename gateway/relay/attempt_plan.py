"""What one relay attempt decides, sans-IO: the new state of each recipient, the delivery
status notifications to queue, and when the entry is tried again.

Role: the decision half of the relay stage (``gateway.relay.relay_stage`` claims the
entries, calls the client and does every I/O; it imports this module, never the
reverse). ``delivery_groups`` says which recipients are delivered together (one group
for a static next hop, one per recipient domain for an MX route); after the attempt,
``plan_attempt`` decides per recipient:

- a 2xx after the end of DATA: ``delivered``. No "delivered" DSN of our own: when the
  peer took the DSN parameters the NOTIFY went on with the message and a success DSN is
  the final MTA's to send (RFC 3461 §5.2.1); when it did not, and NOTIFY has SUCCESS, a
  ``relayed`` DSN (RFC 3461 §5.2.2);
- a 5xx: ``failed`` and a failure DSN (unless NOTIFY says otherwise);
- anything else (4xx, no host reachable, a TLS failure, an unknown error - STYLE 6:
  unknown is temporary): ``deferred`` to ``RetryPolicy.next_attempt`` (with jitter);
  once ``max_lifetime`` is over (counted from the first acceptance, RFC 5321 §4.5.4.1),
  ``failed`` with status 5.4.7 and a failure DSN;
- a ``delayed`` DSN (RFC 3461 §5.2.5, RFC 3464 §2.3.3: status 4.x.x, Will-Retry-Until)
  once per entry, at the first failed attempt that comes after ``delay_warning``
  (counted from the first acceptance, as Postfix's ``delay_warning_time``); that it was
  sent is kept in the entry's note (``DELAY_WARNED_NOTE``), which every later defer
  carries on (the spool offers no per-recipient flag; every recipient still deferred
  is reported in that one DSN, and a recipient cannot become deferred later).

No DSN ever goes to the null reverse-path (``should_send_dsn``).

Invariant (crash safety, ``docs/spool.md``): each DSN is handed off under a key made of
the entry's revision, the action and the recipients it reports (``Notice.key``): after
a crash the entry is claimed again with the same revision, and a repeated DSN finds its
child already queued.

Trust level: pure functions over a queue record and the client's results; no I/O, no
keys, no logging. A peer's reply is kept at most ``MAX_DETAIL`` characters long, its
control characters (a TAB, an ESC, a bare CR: ``ReplyParser`` keeps any octet but the
final CRLF) turned into spaces: the spool refuses them in ``last_error``, and a plan
that raised would send the entry round again unchanged, for ever.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.config.model import Route
from gateway.relay.dsn import should_send_dsn
from gateway.relay.dsn_recipients import Action, Reason, RecipientReport
from gateway.relay.smtp_reply import DeliveryResult, Outcome
from gateway.spool import (
    QueueRecord,
    Recipient,
    RecipientState,
    RecipientStatus,
    RetryPolicy,
)

DELAY_WARNED_NOTE = "delay-warned"
EXPIRED_STATUS = "5.4.7"  # RFC 3463: delivery time expired
MAX_DETAIL = 300  # characters of a peer's reply kept in the trail or a record
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")  # what the spool refuses in a record


@dataclass(frozen=True, slots=True)
class Attempted:
    """One recipient's result in this attempt, with the delivery that produced it."""

    outcome: Outcome
    result: DeliveryResult


@dataclass(frozen=True, slots=True)
class Notice:
    """One DSN to queue: an action and the recipients (by RCPT index) it reports."""

    action: Action
    indexes: tuple[int, ...]
    reports: tuple[RecipientReport, ...]

    def key(self, revision: int) -> str:
        """The hand-off key: the same outcome of the same revision -> the same child."""
        listed = ",".join(map(str, self.indexes)).encode("ascii")
        digest = hashlib.sha256(listed).hexdigest()[:16]
        return f"dsn-{self.action.value}-r{revision}-{digest}"


@dataclass(frozen=True, slots=True)
class AttemptPlan:
    """The new per-recipient states, the DSNs to queue, and where the entry goes next."""

    states: tuple[RecipientState, ...]
    notices: tuple[Notice, ...]
    next_attempt: datetime | None  # None: every recipient is final
    note: str | None

    @property
    def any_delivered(self) -> bool:
        return any(state.status is RecipientStatus.DELIVERED for state in self.states)


@dataclass(frozen=True, slots=True)
class Timing:
    """The clock and rules one decision needs."""

    now: datetime
    policy: RetryPolicy
    delay_warning: timedelta
    rng: random.Random | None = None


def reply_text(outcome: Outcome) -> str:
    """``550 5.1.1 text``: the reply as kept in a record, a DSN and the trail (bounded,
    control characters as spaces)."""
    words = _CONTROL_RE.sub(" ", outcome.text)
    if not words.startswith(outcome.enhanced):  # the peer's reply text carries its code
        words = f"{outcome.enhanced} {words}"
    return f"{outcome.code} {words}".strip()[:MAX_DETAIL]


def _status_of_class(enhanced: str, klass: str) -> str:
    """``enhanced`` with its class digit forced (a peer may answer 550 4.x.x)."""
    return klass + enhanced[1:]


def _delay_warned(record: QueueRecord) -> bool:
    return record.state.note == DELAY_WARNED_NOTE


def plan_attempt(
    record: QueueRecord, attempted: Mapping[int, Attempted], timing: Timing
) -> AttemptPlan:
    """Decide the outcome of one attempt (see the module docstring); no I/O.

    ``attempted`` maps RCPT indexes to their result; recipients not in it keep their
    state (already final, or not tried this time).
    """
    builder = _PlanBuilder(record, timing)
    for index, (recipient, state) in enumerate(record.recipients):
        tried = attempted.get(index)
        builder.states.append(
            state if tried is None else builder.decide(index, recipient, state, tried)
        )
    return builder.finish()


@dataclass
class _PlanBuilder:
    record: QueueRecord
    timing: Timing
    states: list[RecipientState] = field(default_factory=list)
    reports: dict[Action, list[tuple[int, RecipientReport]]] = field(default_factory=dict)
    last_outcome: dict[int, Attempted] = field(default_factory=dict)

    def decide(
        self, index: int, recipient: Recipient, state: RecipientState, tried: Attempted
    ) -> RecipientState:
        outcome, attempts = tried.outcome, state.attempts + 1
        self.last_outcome[index] = tried
        if outcome.delivered:
            if not tried.result.dsn_passed:
                self._report(index, recipient, Action.RELAYED, "2.0.0", tried)
            return RecipientState(RecipientStatus.DELIVERED, attempts, None, None)
        error = reply_text(outcome)
        if outcome.permanent:
            status = _status_of_class(outcome.enhanced, "5")
            self._report(index, recipient, Action.FAILED, status, tried)
            return RecipientState(RecipientStatus.FAILED, attempts, error, None)
        timing = self.timing
        until = timing.policy.next_attempt(attempts, self.record.received, timing.now, timing.rng)
        if until is None:
            self._report(index, recipient, Action.FAILED, EXPIRED_STATUS, tried, Reason.EXPIRED)
            expired = f"{error} (gave up: max_lifetime reached)"[:MAX_DETAIL]
            return RecipientState(RecipientStatus.FAILED, attempts, expired, None)
        return RecipientState(RecipientStatus.DEFERRED, attempts, error, until)

    def _report(
        self,
        index: int,
        recipient: Recipient,
        action: Action,
        status: str,
        tried: Attempted,
        reason: Reason | None = None,
    ) -> None:
        if not should_send_dsn(action, recipient.notify, self.record.envelope.mail_from):
            return
        report = RecipientReport(
            final_recipient=recipient.address,
            action=action,
            status=status,
            original_recipient=recipient.orcpt,
            remote_mta=tried.result.mx_host,
            diagnostic=reply_text(tried.outcome) if tried.result.mx_host else None,
            last_attempt=self.timing.now,
            reason=reason or _reason_without_peer(tried),
        )
        self.reports.setdefault(action, []).append((index, report))

    def _delay_notice(self) -> bool:
        """Add the ``delayed`` reports when due; True if the warning is now given."""
        record, timing = self.record, self.timing
        deferred = [i for i, s in enumerate(self.states) if s.status is RecipientStatus.DEFERRED]
        if not deferred or _delay_warned(record):
            return _delay_warned(record)
        if timing.now - record.received < timing.delay_warning:
            return False
        until = timing.policy.expires(record.received)
        for index in deferred:
            recipient = record.envelope.recipients[index]
            tried = self.last_outcome.get(index)
            if tried is None or not should_send_dsn(
                Action.DELAYED, recipient.notify, record.envelope.mail_from
            ):
                continue
            report = RecipientReport(
                final_recipient=recipient.address,
                action=Action.DELAYED,
                status=_status_of_class(tried.outcome.enhanced, "4"),
                original_recipient=recipient.orcpt,
                remote_mta=tried.result.mx_host,
                diagnostic=reply_text(tried.outcome) if tried.result.mx_host else None,
                last_attempt=timing.now,
                will_retry_until=until,
                reason=_reason_without_peer(tried) or Reason.REMOTE_TEMPORARY,
            )
            self.reports.setdefault(Action.DELAYED, []).append((index, report))
        return True

    def finish(self) -> AttemptPlan:
        warned = self._delay_notice()
        notices = tuple(
            Notice(action, tuple(i for i, _ in items), tuple(r for _, r in items))
            for action, items in self.reports.items()
        )
        pending = [s.next_attempt for s in self.states if not s.status.final]
        next_attempt = min((t for t in pending if t is not None), default=None)
        if pending and next_attempt is None:  # a recipient never tried: try it now
            next_attempt = self.timing.now
        return AttemptPlan(
            tuple(self.states), notices, next_attempt, DELAY_WARNED_NOTE if warned else None
        )


def _reason_without_peer(tried: Attempted) -> Reason | None:
    """No peer answered: say whether the secure connection was the cause (x.7.x)."""
    if tried.result.mx_host is None and tried.outcome.enhanced[2:4] == "7.":
        return Reason.SECURE_CONNECTION
    return None


def delivery_groups(route: Route, record: QueueRecord) -> list[tuple[int, ...]]:
    """RCPT indexes still to deliver, grouped: one group for a static next hop, one per
    recipient domain for an MX route (the client delivers one domain at a time)."""
    groups: dict[str, list[int]] = {}
    for index, (recipient, state) in enumerate(record.recipients):
        if state.status.final:
            continue
        domain = "" if route.next_hop is not None else recipient.address.rpartition("@")[2].lower()
        groups.setdefault(domain, []).append(index)
    return [tuple(indexes) for _, indexes in sorted(groups.items())]

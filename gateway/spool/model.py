"""The values of a queue record: envelope, origin, per-recipient state (checked when built).

Role: the typed, frozen dataclasses every stage reads and writes through the queue -
``Envelope`` (MAIL FROM and its parameters, each RCPT with its RFC 3461 NOTIFY and
ORCPT), ``Origin`` (listener, client, TLS, client certificate DN, AUTH login),
``RecipientState`` and ``EntryState`` (status, attempts, last error, next attempt per
recipient), and ``QueueRecord`` which holds them all - plus the checks their
constructors run. ``gateway.spool.record`` turns a ``QueueRecord`` into bytes and back.

Invariants, enforced with ``RecordError`` (a ``ValueError``) when a value is built or
read: no CR, LF, NUL or other control character in any text (they would become header
injection in a DSN built from the record); bounded lengths (an address 1024
characters, a reply or a DN 4096, an ENVID 100 as RFC 3461 §4.4 says); only RFC 3461
keywords for NOTIFY (NEVER alone, or SUCCESS/FAILURE/DELAY without repeats) and RET,
only RFC 6152/3030 values for BODY; timezone-aware times, kept in UTC; one state per
recipient.

Duplicate recipients (decision, session 8): two recipients are the same mailbox when
their local parts are equal exactly and their domains equal without case (RFC 5321
§2.4; the SMTP front's ``Address`` compares so, its parser lower-casing the domain);
``mailbox_key`` is that rule, the one copy every stage uses. ``Envelope`` itself still
accepts duplicates, because records written by an older gateway may hold them and must
stay readable (their states are aligned with the listed recipients). New entries never
do: ``Envelope.distinct`` keeps the first occurrence of each mailbox, as the front keeps
the first RCPT of a repeated one (RFC 5321 §3.3 lets a server drop duplicates), and
``gateway.spool.queue_writing`` applies it to every entry it writes (``add``,
``open_writer``, ``hand_off``), whatever the producer. A stage that maps an address to
a recipient index must still treat duplicates of old records safely
(``gateway.relay.agent_pass.Pass``: one delivery per mailbox, the same state for every
occurrence).

Trust level: pure data; no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from gateway.audit.event import parse_time
from gateway.spool.ids import QueueId, is_queue_id
from gateway.spool.layout import check_stage_name

MAX_RECIPIENTS = 10_000  # far above any listener's max_recipients
MAX_ADDRESS = 1024  # RFC 5321 §4.5.3.1.3 says 256 octets; leave room, refuse absurd
MAX_TEXT = 4096  # a joined multi-line SMTP reply, a certificate DN
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ATTEMPTS = 1_000_000

NOTIFY_KEYWORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})  # RFC 3461 §4.1
BODY_VALUES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})  # RFC 6152, RFC 3030
RET_VALUES = frozenset({"FULL", "HDRS"})  # RFC 3461 §4.3
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class RecordError(ValueError):
    """A queue file or a value for one is not valid; the text says what and where."""


class RecipientStatus(StrEnum):
    """Where one recipient stands in the entry's stage.

    ``delivered`` means this stage is done with it successfully (accepted by the next
    hop, handed to the next stage, posted); ``failed`` is final (a DSN is due unless
    NOTIFY says otherwise); ``deferred`` waits for ``next_attempt``.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (RecipientStatus.DELIVERED, RecipientStatus.FAILED)


STATUS_VALUES = frozenset(status.value for status in RecipientStatus)


# -- value checks ----------------------------------------------------------------------


def check_text(where: str, value: object, *, limit: int = MAX_TEXT, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: expected a string, got {type(value).__name__}")
    if not value and not empty:
        raise RecordError(f"{where}: empty")
    if len(value) > limit:
        raise RecordError(f"{where}: {len(value)} characters, more than {limit}")
    if _CONTROL_RE.search(value):
        raise RecordError(f"{where}: control character (CR, LF, NUL, ...) not allowed")
    return value


def check_optional_text(where: str, value: object, *, limit: int = MAX_TEXT) -> str | None:
    return None if value is None else check_text(where, value, limit=limit)


def check_integer(where: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise RecordError(f"{where}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def check_time(where: str, value: object) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise RecordError(f"{where}: naive datetime (need UTC)")
        return value.astimezone(UTC)
    if not isinstance(value, str):
        raise RecordError(f"{where}: expected a time, got {type(value).__name__}")
    try:
        return parse_time(value)
    except ValueError as error:
        raise RecordError(f"{where}: {error}") from None


def check_optional_time(where: str, value: object) -> datetime | None:
    return None if value is None else check_time(where, value)


def check_keyword(where: str, value: object, allowed: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise RecordError(f"{where}: expected one of {'|'.join(sorted(allowed))}, got {value!r}")
    return value


def check_queue_id(where: str, value: object) -> QueueId:
    if not isinstance(value, str) or not is_queue_id(value):
        raise RecordError(f"{where}: not a queue id: {value!r}")
    return QueueId(value)


def check_stage(where: str, value: object) -> str:
    """A stage name (``gateway.spool.layout``): it becomes a path under the spool."""
    if not isinstance(value, str):
        raise RecordError(f"{where}: expected a stage name, got {type(value).__name__}")
    try:
        return check_stage_name(value)
    except ValueError as error:
        raise RecordError(f"{where}: {error}") from None


def check_notify(where: str, value: object) -> tuple[str, ...] | None:
    """RFC 3461 §4.1: NEVER alone, or a non-empty set of SUCCESS/FAILURE/DELAY."""
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value:
        raise RecordError(f"{where}: expected a non-empty list of NOTIFY keywords")
    items = tuple(value)
    if items == ("NEVER",):
        return items
    for item in items:
        check_keyword(where, item, NOTIFY_KEYWORDS)
    if len(set(items)) != len(items):
        raise RecordError(f"{where}: repeated NOTIFY keyword")
    return items


# -- the values ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailParams:
    """The MAIL FROM parameters kept for later stages (RFC 1870, 6152, 6531, 3461, 4954).

    ``envid`` and ``auth`` are stored xtext-decoded; ``size`` is the declared SIZE.
    """

    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None

    def __post_init__(self) -> None:
        if self.size is not None:
            check_integer("mail.size", self.size, 0, 1 << 62)
        if self.body is not None:
            check_keyword("mail.body", self.body, BODY_VALUES)
        if type(self.smtputf8) is not bool:
            raise RecordError("mail.smtputf8: expected true or false")
        if self.ret is not None:
            check_keyword("mail.ret", self.ret, RET_VALUES)
        if self.envid is not None:
            check_text("mail.envid", self.envid, limit=MAX_ENVID)
            if not self.envid.isascii():
                raise RecordError("mail.envid: not ASCII (RFC 3461 §4.4)")
        check_optional_text("mail.auth", self.auth, limit=MAX_ADDRESS)


@dataclass(frozen=True, slots=True)
class Recipient:
    """One RCPT TO: the address and its RFC 3461 parameters (ORCPT as ``type;address``)."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None

    def __post_init__(self) -> None:
        check_text("rcpt.address", self.address, limit=MAX_ADDRESS)
        object.__setattr__(self, "notify", check_notify("rcpt.notify", self.notify))
        if self.orcpt is not None:
            check_text("rcpt.orcpt", self.orcpt, limit=MAX_ADDRESS)
            if ";" not in self.orcpt:
                raise RecordError("rcpt.orcpt: expected addr-type;address (RFC 3461 §4.2)")


@dataclass(frozen=True, slots=True)
class Envelope:
    """MAIL FROM (``""`` for the null reverse-path) and the recipients, in RCPT order."""

    mail_from: str
    recipients: tuple[Recipient, ...]
    params: MailParams = field(default_factory=MailParams)

    def __post_init__(self) -> None:
        check_text("mail.from", self.mail_from, limit=MAX_ADDRESS, empty=True)
        object.__setattr__(self, "recipients", tuple(self.recipients))
        if not 1 <= len(self.recipients) <= MAX_RECIPIENTS:
            raise RecordError(f"rcpt: {len(self.recipients)} recipients (1 to {MAX_RECIPIENTS})")

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(recipient.address for recipient in self.recipients)

    def distinct(self) -> Envelope:
        """This envelope with each mailbox once (its first RCPT kept, with its NOTIFY
        and ORCPT; ``mailbox_key`` decides), or itself when nothing repeats."""
        seen: set[str] = set()
        kept: list[Recipient] = []
        for recipient in self.recipients:
            key = mailbox_key(recipient.address)
            if key not in seen:
                seen.add(key)
                kept.append(recipient)
        if len(kept) == len(self.recipients):
            return self
        return dataclasses.replace(self, recipients=tuple(kept))


def mailbox_key(address: str) -> str:
    """The key two addresses of one mailbox share: the local part as written, the domain
    lower-cased (RFC 5321 §2.4: only the domain is case-insensitive; the SMTP front's
    ``gateway.smtp.envelope.Address`` compares the same way). An address without ``@``
    is its own key."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the message came from: facts for routing, signing policy and the audit.

    ``listener`` is the ``[[listeners]]`` name, or ``imap:<user>`` for the IMAP fetcher
    and ``internal`` for messages the gateway writes itself (DSN, MDN).
    """

    listener: str
    client_address: str | None = None
    helo: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    client_cert_dn: str | None = None
    auth_login: str | None = None

    def __post_init__(self) -> None:
        check_text("origin.listener", self.listener, limit=128)
        for name in ("client_address", "helo", "tls_version", "tls_cipher", "auth_login"):
            check_optional_text(f"origin.{name}", getattr(self, name), limit=MAX_ADDRESS)
        check_optional_text("origin.client_cert_dn", self.client_cert_dn)


@dataclass(frozen=True, slots=True)
class RecipientState:
    """The stage's progress with one recipient (STYLE 6: per-recipient outcomes)."""

    status: RecipientStatus = RecipientStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    next_attempt: datetime | None = None

    def __post_init__(self) -> None:
        status = check_keyword("state.status", self.status, STATUS_VALUES)
        object.__setattr__(self, "status", RecipientStatus(status))
        check_integer("state.attempts", self.attempts, 0, MAX_ATTEMPTS)
        check_optional_text("state.last_error", self.last_error)
        object.__setattr__(
            self, "next_attempt", check_optional_time("state.next_attempt", self.next_attempt)
        )


@dataclass(frozen=True, slots=True)
class EntryState:
    """The mutable part of a record: per-recipient states (aligned with the envelope's
    recipients), the entry's next attempt (``deferred/``), a short note (why held)."""

    revision: int
    updated: datetime
    recipients: tuple[RecipientState, ...]
    next_attempt: datetime | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        check_integer("state.revision", self.revision, 0, 1 << 31)
        object.__setattr__(self, "updated", check_time("state.updated", self.updated))
        object.__setattr__(self, "recipients", tuple(self.recipients))
        object.__setattr__(
            self, "next_attempt", check_optional_time("state.next_attempt", self.next_attempt)
        )
        check_optional_text("state.note", self.note, limit=1000)


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """Everything about one entry except its content (which the file holds before it).

    ``received`` is when the first ancestor was accepted (max_lifetime counts from
    it); ``created`` is when this entry was written; ``parent`` is the entry it was
    handed off from, if any, and ``parent_stage`` the stage that parent is in (written
    by ``Queue.hand_off`` so that the tombstone check of a removal looks in that stage
    only; None in records written before it existed, and then every stage is looked
    at, ``gateway.spool.tombstones``).
    """

    queue_id: QueueId
    parent: QueueId | None
    received: datetime
    created: datetime
    content_length: int
    content_sha256: str
    envelope: Envelope
    origin: Origin
    state: EntryState
    parent_stage: str | None = None

    def __post_init__(self) -> None:
        check_queue_id("queue_id", self.queue_id)
        if self.parent is not None:
            check_queue_id("parent", self.parent)
        if self.parent_stage is not None:
            check_stage("parent_stage", self.parent_stage)
            if self.parent is None:
                raise RecordError("parent_stage: set without a parent")
        object.__setattr__(self, "received", check_time("received", self.received))
        object.__setattr__(self, "created", check_time("created", self.created))
        check_integer("content.length", self.content_length, 0, 1 << 62)
        if not isinstance(self.content_sha256, str) or not SHA256_RE.fullmatch(self.content_sha256):
            raise RecordError("content.sha256: expected 64 lower-case hex digits")
        if len(self.state.recipients) != len(self.envelope.recipients):
            raise RecordError(
                f"state.recipients: {len(self.state.recipients)} states for "
                f"{len(self.envelope.recipients)} recipients"
            )

    @property
    def recipients(self) -> tuple[tuple[Recipient, RecipientState], ...]:
        """Each recipient with its state, in RCPT order."""
        return tuple(zip(self.envelope.recipients, self.state.recipients, strict=True))

    @property
    def unfinished(self) -> tuple[int, ...]:
        """Indexes of the recipients without a final status."""
        return tuple(i for i, s in enumerate(self.state.recipients) if not s.status.final)

    def with_state(
        self,
        now: datetime,
        recipients: Sequence[RecipientState] | None = None,
        *,
        next_attempt: datetime | None = None,
        note: str | None = None,
    ) -> QueueRecord:
        """This record with a new state (revision + 1); recipients unchanged if None."""
        state = EntryState(
            revision=self.state.revision + 1,
            updated=now,
            recipients=tuple(self.state.recipients if recipients is None else recipients),
            next_attempt=next_attempt,
            note=note,
        )
        return dataclasses.replace(self, state=state)


def initial_state(envelope: Envelope, now: datetime) -> EntryState:
    """Revision 0: every recipient pending, no attempt yet."""
    pending = tuple(RecipientState() for _ in envelope.recipients)
    return EntryState(revision=0, updated=now, recipients=pending)

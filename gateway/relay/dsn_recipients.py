"""What happened to each recipient of a DSN (RFC 3464 §2.3, RFC 3463): sans-IO.

Role: the vocabulary of a delivery status notification, shared by its builder
(``gateway.relay.dsn``), its human text (``gateway.relay.dsn_texts``) and the stages
that report outcomes (relay, inbound agent): ``Action`` (RFC 3464 §2.3.3 action-value),
``Reason`` (why, in words the sender understands: it picks the human sentence and the
advice), ``RecipientReport`` (one per-recipient block, RFC 3464 §2.3) and ``DsnRefused``
(the error the relay catches when a DSN cannot or must not be built). It imports neither
``gateway.relay.dsn`` nor ``gateway.relay.dsn_texts``.

Invariants: a ``RecipientReport`` checks itself when built: the final recipient is an
address, the status an RFC 3463 code whose class fits the action (``failed`` 5.x.x,
``delayed`` 4.x.x, any other 2.x.x), the original recipient ``addr-type;address``, dates
timezone-aware, Will-Retry-Until only for ``delayed`` (RFC 3464 §2.3.9).

Security notes (fail closed): every value that comes from the envelope or a remote reply
is checked or cleaned: no CR, LF or other control character reaches a header field
(header injection); a bad value raises ``DsnRefused``.

Trust level: pure data; no I/O, no keys, no logging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.relay.report import NotificationRefused, check_address, check_text

_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")  # RFC 3463 §2


DsnRefused = NotificationRefused  # the name the relay catches


class Action(StrEnum):
    """RFC 3464 §2.3.3 action-value."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


class Reason(StrEnum):
    """Why, in words the sender understands; picks the human sentence and the advice."""

    REMOTE_REJECTED = "remote-rejected"  # 5xx from the next hop
    REMOTE_TEMPORARY = "remote-temporary"  # 4xx or no answer, still retrying
    EXPIRED = "expired"  # max_lifetime reached
    NO_VALID_CERTIFICATE = "no-valid-certificate"  # never sent in clear
    NO_POSTAL_ADDRESS = "no-postal-address"  # postal fallback without an address
    POSTAL = "postal"  # went by post (Action relayed)
    SECURE_CONNECTION = "secure-connection"  # TLS/peer DN check failed
    ROUTE_REJECTED = "route-rejected"  # a route with transport "reject"
    TOO_BIG = "too-big"
    UNDECRYPTABLE = "undecryptable"  # inbound: held in quarantine
    DELIVERED = "delivered"
    RELAYED = "relayed"  # handed to a network that sends no DSN
    OTHER = "other"


_DEFAULT_REASON = {
    Action.FAILED: Reason.OTHER,
    Action.DELAYED: Reason.REMOTE_TEMPORARY,
    Action.DELIVERED: Reason.DELIVERED,
    Action.RELAYED: Reason.RELAYED,
    Action.EXPANDED: Reason.DELIVERED,
}


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What happened to one recipient (one per-recipient block, RFC 3464 §2.3).

    ``original_recipient`` is the ORCPT as received (``rfc822;addr``); ``status`` an
    RFC 3463 code (``5.1.1``); ``diagnostic`` the remote SMTP reply as received
    (``550 5.1.1 no such user``); ``remote_mta`` the host that answered.
    """

    final_recipient: str
    action: Action
    status: str
    original_recipient: str | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None
    reason: Reason | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        check_address("final recipient", self.final_recipient)
        if not _STATUS_RE.fullmatch(self.status):
            raise DsnRefused(f"status {self.status!r} is not an RFC 3463 code")
        expected_class = {Action.FAILED: "5", Action.DELAYED: "4"}.get(self.action, "2")
        if self.status[0] != expected_class:
            raise DsnRefused(f"status {self.status} does not fit action {self.action}")
        if self.original_recipient is not None:
            check_text("original recipient", self.original_recipient)
            if ";" not in self.original_recipient:
                raise DsnRefused("original recipient: expected addr-type;address")
        if self.remote_mta is not None:
            check_text("remote MTA", self.remote_mta)
        for name in ("last_attempt", "will_retry_until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise DsnRefused(f"{name.replace('_', ' ')}: naive datetime")
        if self.will_retry_until is not None and self.action is not Action.DELAYED:
            raise DsnRefused("will-retry-until is only for action delayed (RFC 3464 §2.3.9)")

    @property
    def effective_reason(self) -> Reason:
        """The reason given, else one that fits the action (a remote 5xx: rejected)."""
        if self.reason is not None:
            return self.reason
        if self.action is Action.FAILED and self.remote_mta is not None:
            return Reason.REMOTE_REJECTED
        return _DEFAULT_REASON[self.action]

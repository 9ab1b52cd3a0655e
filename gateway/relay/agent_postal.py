"""The postal part of the secure agent stage (moved from ``gateway.relay.agent_stage``).

Role: ``PostalDelivery``, a mixin of ``gateway.relay.agent_stage.AgentStage``: who gets a
letter (``_postal_recipients``, ``_final_fallback``), their annuaire entries looked up,
their letters rendered in a sandboxed child and written to the outbox (``_post_all``,
``_post_batch``, ``_deliver_letter``), a postal error deferring or failing its recipient
(``_postal_failed``); and the per-recipient decisions the postal part and the rest of
the pass share (``_report``, ``_fail``, ``_defer_all``, ``_defer``: a failure report, a
retry per ``[delivery]``, ``expired`` past ``max_lifetime``). A pure move (session 7):
the methods are those of ``AgentStage`` before, unchanged; they use the stage's
attributes, declared below. This module does not import ``agent_stage`` (it stands
below it).

What moved (from the stage's docstring):

- a recipient of a ``transport = "postal"`` route, or whose fallback resolves to
  ``postal`` -> its annuaire entry looked up, then the letters of all such recipients
  of the pass rendered together in one limited child process
  (``letter_sandbox.render_letters_isolated``: one child per message, not per
  recipient; each recipient still has its own outcome), each letter
  ``write_to_outbox``, then a ``relayed`` DSN (``postal=True``). Decision (session 7
  review, R2): the letters of one child (``letters_per_child``) are written before the
  next child starts, so the agent holds one child's letters at most, never every
  letter of a message with many postal recipients (100 recipients of a 10 MB message
  would be of the order of 1 GB beside the keys). A child killed by its limits fails its own
  recipients only; the letters of earlier children are written and ``relayed`` (the
  outbox and the DSNs agree). A pass that stops between children (a crash, a bug) has
  written some letters: the next pass writes them again under the same names
  (at-least-once, ``gateway.relay.postal``), as before this batching;
- a fallback ``route:<name>``: the chain of fallbacks is followed here
  (``resolve_fallback``) until it ends in ``postal`` or ``bounce``, a loop ending as
  ``bounce`` (fail closed: never sent in clear). The target route (an S/MIME route: the
  configuration refuses a weaker one) would look the recipient up again; it could find
  another answer only if it had ``anchors`` of its own that the first route lacks
  (``gateway.relay.route_trust``): that second lookup is not tried (decision: the
  recipient gets the final fallback, never a weaker protection).

Invariants: every letter is written before the entry leaves ``active/`` (the stage
completes or defers it afterwards); a letter is named by queue id and address
(``postal.letter_stem``) and replaces itself, so a repeated pass writes nothing new;
each recipient has its own outcome, even inside one child; one letter per mailbox, its
outcome written to every occurrence of that mailbox (``Pass.put``: an old record may list
one twice, ``gateway.relay.agent_pass``).

Security: the letters are rendered away from the private keys
(``letter_sandbox.render_letters_isolated``: a limited child process, hostile PDFs);
the outbox is written with the modes of ``gateway.relay.postal``; a fallback never ends
in clear (``bounce`` when the chain loops). RFC 3464 (the ``relayed`` DSN action).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from annuaire.errors import DirectoryUnavailable
from annuaire.lookup import CertificateLookup
from annuaire.model import Entry
from gateway.config import Config
from gateway.relay import routing
from gateway.relay.agent import AgentResult, RecipientOutcome
from gateway.relay.agent_pass import (
    STATUS_EXPIRED,
    STATUS_NO_CERTIFICATE,
    STATUS_POSTAL_FAILED,
    STATUS_POSTED,
    Pass,
    postal_event,
)
from gateway.relay.dsn_recipients import Action, Reason, RecipientReport
from gateway.relay.letter import Letter
from gateway.relay.letter_sandbox import letters_per_child, render_letters_isolated
from gateway.relay.postal import PostalError, write_to_outbox
from gateway.spool import AuditTrail, Claimed, RecipientState, RecipientStatus, RetryPolicy


class PostalDelivery:
    """The postal methods and per-recipient decisions of ``AgentStage`` (module docstring)."""

    config: Config
    lookup: CertificateLookup
    audit: AuditTrail
    policy: RetryPolicy
    clock: Callable[[], datetime]

    def _postal_recipients(self, result: AgentResult, work: Pass) -> list[str]:
        """Who gets a letter: the recipients of a ``transport = "postal"`` route and
        those whose fallback ends in ``postal``; a fallback ending in ``bounce`` fails."""
        addresses = [
            recipient.address
            for outgoing in result.messages
            if outgoing.protection == "postal"
            for recipient in outgoing.recipients
        ]
        for outcome in result.fallback:
            if self._final_fallback(outcome) == "postal":
                addresses.append(outcome.address)
            else:
                self._fail(
                    work,
                    outcome.address,
                    outcome.reason,
                    STATUS_NO_CERTIFICATE,
                    Reason.NO_VALID_CERTIFICATE,
                )
        return addresses

    def _final_fallback(self, outcome: RecipientOutcome) -> str:
        """``postal`` or ``bounce``: ``route:<name>`` links followed (module docstring)."""
        route = self.config.route_named(outcome.route) if outcome.route else None
        seen: set[str] = set()
        while route is not None and route.name not in seen:
            seen.add(route.name)
            target = routing.resolve_fallback(self.config, route)
            if target.kind != "route":
                return target.kind
            route = target.route
        return "bounce"

    async def _post_all(
        self, entry: Claimed, content: bytes, addresses: Sequence[str], work: Pass
    ) -> None:
        """The postal fallback of ``addresses``: their entries looked up, their letters
        rendered in one sandboxed child (``render_letters_isolated``), each written to
        the outbox with its ``relayed`` report, or its own failure or deferral."""
        found: list[tuple[str, Entry]] = []
        for address in addresses:
            try:
                looked_up = await self.lookup.lookup(address)
            except DirectoryUnavailable as error:
                self._defer(entry, work, address, str(error))
                continue
            if looked_up.entry is None:
                missing = PostalError("no entry in the annuaire, hence no postal address")
                self._postal_failed(entry, work, address, missing)
            else:
                found.append((address, looked_up.entry))
        batch = letters_per_child(len(content))
        for start in range(0, len(found), batch):  # one child's letters written, then the next
            await self._post_batch(entry, content, found[start : start + batch], work)

    async def _post_batch(
        self, entry: Claimed, content: bytes, found: Sequence[tuple[str, Entry]], work: Pass
    ) -> None:
        """The letters of one sandboxed child (``found``: at most ``letters_per_child``
        recipients), rendered, then each written with its own outcome."""
        outcomes = await render_letters_isolated(  # hostile PDFs: away from the keys
            content,
            [recipient for _, recipient in found],
            entry.record.envelope.mail_from or self.config.gateway.hostname,
            now=self.clock(),
            language=self.config.gateway.language,
        )
        for (address, _), outcome in zip(found, outcomes, strict=True):
            await self._deliver_letter(entry, address, outcome, work)

    async def _deliver_letter(
        self, entry: Claimed, address: str, outcome: Letter | PostalError, work: Pass
    ) -> None:
        """One recipient's letter to the outbox, then its ``relayed`` report and audit."""
        if isinstance(outcome, PostalError):
            self._postal_failed(entry, work, address, outcome)
            return
        try:
            await asyncio.to_thread(
                write_to_outbox, self.config.postal.outbox, entry.queue_id, address, outcome
            )
        except PostalError as error:  # OutboxError: temporary
            self._postal_failed(entry, work, address, error)
            return
        work.set(address, RecipientStatus.DELIVERED, "sent by post")
        work.posted.append(
            self._report(work, address, Action.RELAYED, STATUS_POSTED, Reason.POSTAL)
        )
        await self.audit.record(postal_event(entry, address))

    def _postal_failed(self, entry: Claimed, work: Pass, address: str, error: PostalError) -> None:
        """A temporary postal error defers the recipient; a permanent one fails it."""
        if not error.permanent:
            self._defer(entry, work, address, error.reason)
            return
        reason = Reason.NO_POSTAL_ADDRESS if "postal address" in error.reason else Reason.OTHER
        self._fail(work, address, f"postal: {error.reason}", STATUS_POSTAL_FAILED, reason)

    # -- per-recipient decisions -------------------------------------------------------

    def _report(
        self, work: Pass, address: str, action: Action, status: str, reason: Reason
    ) -> RecipientReport:
        recipient = work.recipient(address)
        return RecipientReport(
            address,
            action,
            status,
            original_recipient=recipient.orcpt,
            last_attempt=self.clock(),
            reason=reason,
        )

    def _fail(self, work: Pass, address: str, why: str, status: str, reason: Reason) -> None:
        work.set(address, RecipientStatus.FAILED, why)
        work.failures.append(self._report(work, address, Action.FAILED, status, reason))

    def _defer_all(self, entry: Claimed, outcomes: Sequence[RecipientOutcome], work: Pass) -> None:
        for outcome in outcomes:
            self._defer(entry, work, outcome.address, outcome.reason)

    def _defer(self, entry: Claimed, work: Pass, address: str, why: str) -> None:
        """Retry later, per ``[delivery]``; past ``max_lifetime``: failed, ``expired``."""
        attempts = work.state(address).attempts + 1
        now = self.clock()
        when = self.policy.next_attempt(attempts, entry.record.received, now)
        if when is None:
            self._fail(work, address, f"expired: {why}", STATUS_EXPIRED, Reason.EXPIRED)
            return
        work.put(address, RecipientState(RecipientStatus.DEFERRED, attempts, why[:4000], when))

"""The secure agent's core: one queued outbound message in, the messages to relay out.

Role (ARCHITECTURE, outbound step 3; issue 6 item 1): for each recipient the route
(``gateway.relay.routing``); for a ``security = "smime"`` route the recipient's
encryption certificate from the annuaire (``CertificateLookup``, validated for
``Purpose.SMIME_ENCRYPT`` and bound to the address; against ``[trust]`` plus the route's
own ``anchors`` when it has some, ``gateway.relay.route_trust``), then **one** message for the
recipients of the route shown in To/Cc (plus the sender's own certificate when
``smime.copy_to_sender``) and **one message per hidden (Bcc) recipient**, each signed
then encrypted (RFC 8551 §3.5 then §3.3: sign-then-encrypt). ``tls-only`` and local
routes get the message unchanged (their protection is the relay's TLS and liste
blanche, or local delivery). Pure orchestration: no spool I/O, no socket; the caller
(the stage runner) writes ``AgentResult.messages`` back to the queue for the relay.

Signing (RFC 8551 §2.5): with the sender's personal key (``KeyStore.signing_key``) when
the message came through authenticated submission (``origin.auth_login``) and the login
may send as the MAIL FROM address; otherwise, or when that address has no valid signing
key, with ``keys.organisation_signing`` (``OrganisationSigner``). Neither: the smime
recipients are *deferred* with "no signing key" (fail closed, and a sysadmin can install
a key before the message expires).

Encryption: per message, ``plan_recipients`` with each recipient's
``RecipientCapabilities`` from the ``CapabilitiesStore`` (the engine's ``auto`` rule:
GCM/OAEP only when known to be supported, for all recipients of that message).

Outcomes, per recipient: in one outgoing message; ``fallback`` (no valid certificate:
the route's ``fallback`` resolved, with the reason — *never* sent in clear); ``failed``
(no route, a ``reject`` route, the Direct tamper rule: on a ``wrap`` route a To/Cc
recipient must be in To or Cc, a Bcc recipient in the Bcc field of the original, and
its own copy wraps the message without any Bcc field, ``gateway.relay.protect``);
``deferred`` (the directory is down, ``DirectoryUnavailable``: retry later, never a
fallback; or no signing key).

Audit: one ``AuditEvent`` per decision (route, certificate serials and issuers,
algorithms, SHA-256 of what is sent; never a Subject nor a body).

Trust level: runs in the secure agent worker, which alone loads private keys and never
listens on a socket (STYLE §9). Crypto runs through ``gateway.crypto_calls.run_crypto``:
on the loop for an ordinary message, in a thread for a large one.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from annuaire.errors import DirectoryUnavailable
from annuaire.lookup import CertificateLookup, LookupResult
from gateway.audit.event import AuditEvent
from gateway.config import Config, material
from gateway.config.model import Route
from gateway.crypto_calls import run_crypto
from gateway.errors import ConfigError
from gateway.log import get_logger
from gateway.relay import protect, routing
from gateway.relay.route_trust import RouteTrust
from gateway.smime.capabilities import CapabilitiesStore
from gateway.smime.encrypt import encrypt_entity, plan_recipients
from gateway.smime.keystore import KeyStore, NoUsableKey
from gateway.smime.sign import sign
from gateway.smime.types import ChainValidator, SmimeError
from gateway.spool.model import Envelope, Origin, Recipient

log = get_logger("relay.agent")

Protection = Literal["smime", "tls-only", "local", "postal"]
_UNCHANGED: dict[str, Protection] = {"local": "local", "postal": "postal"}


class SendAsChecker(Protocol):
    """Who may send as whom (``gateway.smtp.users.Authenticator`` fits)."""

    def may_send_as(self, login: str, address: str) -> bool: ...


@dataclass(frozen=True)
class OrganisationSigner:
    """``keys.organisation_signing``: the organisation's key, certificate and chain."""

    certificate: x509.Certificate
    private_key: object
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def load(cls, path: Path) -> OrganisationSigner:
        """Read the PEM (key + certificate first, then its chain); ``ConfigError``."""
        try:
            material.check_private_mode(path, "organisation signing key")
            data = material.read_file(path)
            certificates = material.certificates_in(data, path)
            key = material.private_key_in(data, path)
        except material.Unusable as problem:
            raise ConfigError(f"keys.organisation_signing: {problem}") from None
        if not certificates or not material.key_matches(key, certificates[0]):
            raise ConfigError(f"keys.organisation_signing: {path}: key and certificate differ")
        return cls(certificates[0], key, tuple(certificates[1:]))


@dataclass(frozen=True)
class _Signer:
    certificate: x509.Certificate
    private_key: object
    chain: tuple[x509.Certificate, ...]
    kind: str  # "personal" | "organisation"


@dataclass(frozen=True)
class OutgoingMessage:
    """One message for the relay: its route, its own envelope and its bytes."""

    route: str
    mail_from: str
    recipients: tuple[Recipient, ...]
    content: bytes
    protection: Protection
    cert_serials: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ()

    @functools.cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of ``content`` (computed once; ``_protect`` does it in its thread)."""
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class RecipientOutcome:
    """A recipient that is not in an outgoing message, and why."""

    address: str
    route: str | None
    reason: str
    action: str = ""  # for a fallback: "bounce" | "postal" | "route:<name>"


@dataclass(frozen=True)
class AgentResult:
    """Everything ``process`` decided for one message."""

    messages: tuple[OutgoingMessage, ...] = ()
    fallback: tuple[RecipientOutcome, ...] = ()
    failed: tuple[RecipientOutcome, ...] = ()
    deferred: tuple[RecipientOutcome, ...] = ()
    audit: tuple[AuditEvent, ...] = field(default=(), repr=False)

    @property
    def temporary_failure(self) -> bool:
        return bool(self.deferred)


def certificate_label(certificate: x509.Certificate) -> str:
    """``<issuer CN>:<serial hex>`` for the audit trail."""
    names = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(names[0].value) if names else certificate.issuer.rfc4514_string()
    return f"{issuer}:{certificate.serial_number:x}"


class _Collector:
    """The result being built."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []
        self.fallback: list[RecipientOutcome] = []
        self.failed: list[RecipientOutcome] = []
        self.deferred: list[RecipientOutcome] = []
        self.audit: list[AuditEvent] = []

    def result(self) -> AgentResult:
        return AgentResult(
            tuple(self.messages),
            tuple(self.fallback),
            tuple(self.failed),
            tuple(self.deferred),
            tuple(self.audit),
        )


class SecureAgent:
    """See the module docstring. One instance per worker; ``process`` is reentrant."""

    def __init__(
        self,
        config: Config,
        lookup: CertificateLookup,
        keystore: KeyStore,
        validator: ChainValidator,
        capabilities: CapabilitiesStore,
        organisation_signer: OrganisationSigner | None,
        *,
        send_as: SendAsChecker | None = None,
        route_trust: RouteTrust | None = None,
    ) -> None:
        self.config = config
        self.lookup = lookup
        self.keystore = keystore
        self.validator = validator
        self.capabilities = capabilities
        self.organisation_signer = organisation_signer
        self.send_as = send_as
        self.route_trust = route_trust
        self._route_lookups: dict[tuple[Path, ...], CertificateLookup] = {}

    async def process(
        self, envelope: Envelope, message: bytes, origin: Origin, *, queue_id: str | None = None
    ) -> AgentResult:
        """Route, sign and encrypt one message (see the module docstring)."""
        split = protect.SplitMessage.of(message)  # the one header scan of this message
        by_address = {r.address: r for r in envelope.recipients}
        plan = routing.plan_routes(self.config, envelope.addresses, split.shown)
        out = _Collector()
        for address in plan.unrouted:
            out.failed.append(RecipientOutcome(address, None, "no route for this domain"))
        for group in plan.groups:
            await self._route_group(group, envelope, message, split, origin, by_address, out)
        self._audit_outcomes(out, envelope, queue_id)
        return out.result()

    # -- one route ---------------------------------------------------------------------

    async def _route_group(
        self,
        group: routing.RouteGroup,
        envelope: Envelope,
        message: bytes,
        split: protect.SplitMessage,
        origin: Origin,
        by_address: dict[str, Recipient],
        out: _Collector,
    ) -> None:
        route = group.route
        recipients = tuple(by_address[a] for a in group.recipients)
        if route.transport == "reject":
            for address in group.recipients:
                out.failed.append(RecipientOutcome(address, route.name, "refused by route"))
            return
        if route.transport in ("local", "postal") or route.security == "tls-only":
            protection = _UNCHANGED.get(route.transport, "tls-only")
            shared = protect.without_hidden_fields(message)  # hidden ones share this copy
            out.messages.append(
                OutgoingMessage(route.name, envelope.mail_from, recipients, shared, protection)
            )
            return
        await self._smime_group(group, envelope, split, origin, by_address, out)

    async def _smime_group(
        self,
        group: routing.RouteGroup,
        envelope: Envelope,
        split: protect.SplitMessage,
        origin: Origin,
        by_address: dict[str, Recipient],
        out: _Collector,
    ) -> None:
        route = group.route
        candidates = group.recipients
        if route.wrap:
            candidates = self._tamper_checked(group, envelope, split, out)
        certificates = await self._certificates(route, candidates, out)
        if not certificates:
            return
        signer = await self._choose_signer(envelope.mail_from, origin)
        if signer is None:
            for address in certificates:
                out.deferred.append(RecipientOutcome(address, route.name, "no signing key"))
            return
        payload = protect.cryptographic_payload(
            split, protect=self.config.smime.protect_headers, wrap=route.wrap
        )
        outer = protect.outer_header(split, protect=self.config.smime.protect_headers)
        sender_copy = await self._sender_certificate(envelope.mail_from)
        batches = [[a for a in group.shown if a in certificates]]
        batches += [[a] for a in group.hidden if a in certificates]
        for batch in (b for b in batches if b):
            targets = [(address, certificates[address]) for address in batch]
            try:
                outgoing = await run_crypto(
                    len(payload),
                    self._protect,
                    route,
                    envelope.mail_from,
                    payload,
                    outer,
                    signer,
                    targets,
                    sender_copy,
                    tuple(by_address[a] for a in batch),
                )
            except SmimeError as error:  # fail closed: nothing leaves, retry later
                for address in batch:
                    out.deferred.append(RecipientOutcome(address, route.name, str(error)))
                continue
            out.messages.append(outgoing)

    def _tamper_checked(
        self,
        group: routing.RouteGroup,
        envelope: Envelope,
        split: protect.SplitMessage,
        out: _Collector,
    ) -> tuple[str, ...]:
        """The recipients the Direct tamper rule allows; the others are failed. A shown
        recipient is checked against To/Cc, a hidden one (its own Bcc copy) against the
        Bcc addresses of the original (``gateway.relay.protect``, module docstring)."""
        allowed: list[str] = []
        checks = [(a, False) for a in group.shown] + [(a, True) for a in group.hidden]
        for address, blind in checks:
            try:
                protect.check_tamper(split, envelope.mail_from, [address], blind=blind)
            except protect.TamperError as error:
                out.failed.append(RecipientOutcome(address, group.route.name, str(error)))
            else:
                allowed.append(address)
        return tuple(allowed)

    async def _certificates(
        self, route: Route, addresses: Sequence[str], out: _Collector
    ) -> dict[str, x509.Certificate]:
        """The newest valid certificate of each address; others to fallback/deferred."""
        found: dict[str, x509.Certificate] = {}
        for address in addresses:
            try:
                result = await (await self._lookup_for(route)).lookup(address)
            except DirectoryUnavailable as error:
                out.deferred.append(RecipientOutcome(address, route.name, str(error)))
                continue
            if result.found:
                found[address] = result.certificates[0]
                continue
            target = routing.resolve_fallback(self.config, route)
            reason = _why_no_certificate(result)
            out.fallback.append(RecipientOutcome(address, route.name, reason, target.action))
        return found

    async def _lookup_for(self, route: Route) -> CertificateLookup:
        """The lookup whose validator also trusts ``route.anchors`` (``RouteTrust``; one
        per anchor set, each with its own cache); the shared one for other routes."""
        if not route.anchors or self.route_trust is None:
            return self.lookup
        key = tuple(route.anchors)
        lookup = self._route_lookups.get(key)
        if lookup is None:
            validator = await asyncio.to_thread(self.route_trust.validator_for, route)
            lookup = self._route_lookups.setdefault(key, self.lookup.with_validator(validator))
        return lookup

    async def _choose_signer(self, mail_from: str, origin: Origin) -> _Signer | None:
        """``_signer``; in a worker thread only when a personal key is to be validated
        (the organisation's signer needs no I/O nor validation: no thread hop)."""
        if origin.auth_login and mail_from:
            return await asyncio.to_thread(self._signer, mail_from, origin)
        return self._signer(mail_from, origin)

    def _signer(self, mail_from: str, origin: Origin) -> _Signer | None:
        """The personal key of an authenticated sender, else the organisation's."""
        if origin.auth_login and mail_from and self._may_send_as(origin.auth_login, mail_from):
            try:
                key = self.keystore.signing_key(mail_from, self.validator)
            except NoUsableKey:
                log.info("agent.signer.no-personal-key", sender=mail_from)
            else:
                return _Signer(key.certificate, key.private_key, key.chain, "personal")
        organisation = self.organisation_signer
        if organisation is None:
            return None
        return _Signer(
            organisation.certificate, organisation.private_key, organisation.chain, "organisation"
        )

    def _may_send_as(self, login: str, address: str) -> bool:
        if self.send_as is not None:
            return self.send_as.may_send_as(login, address)
        return login.casefold() == address.casefold()

    async def _sender_certificate(self, mail_from: str) -> x509.Certificate | None:
        """The sender's own encryption certificate for the sent copy, if configured."""
        if not self.config.smime.copy_to_sender or not mail_from:
            return None
        if not routing.is_local(self.config, mail_from):
            return None
        try:
            key = await asyncio.to_thread(self.keystore.encryption_key, mail_from, self.validator)
        except NoUsableKey:
            return None
        return key.certificate

    def _protect(
        self,
        route: Route,
        mail_from: str,
        payload: bytes,
        outer: bytes,
        signer: _Signer,
        targets: Sequence[tuple[str, x509.Certificate]],
        sender_copy: x509.Certificate | None,
        recipients: tuple[Recipient, ...],
    ) -> OutgoingMessage:
        """Sign, then encrypt to the targets (and the sender copy); in a worker thread."""
        signed = sign(payload, signer.certificate, signer.private_key, signer.chain)
        plan = [(cert, self.capabilities.get(address)) for address, cert in targets]
        if sender_copy is not None:
            plan.append((sender_copy, self.capabilities.get(mail_from)))
        cipher, cms_recipients = plan_recipients(
            plan,
            content_cipher=self.config.smime.content_cipher,
            key_transport=self.config.smime.key_transport,
        )
        entity = encrypt_entity(signed, cms_recipients, cipher=cipher)
        content = b"".join((outer, b"MIME-Version: 1.0\r\n", entity))  # one copy
        certificates = [signer.certificate, *(r.certificate for r in cms_recipients)]
        algorithms = (
            cipher,
            *sorted({r.key_transport for r in cms_recipients}),
            f"sign:{signer.kind}",
        )
        outgoing = OutgoingMessage(
            route.name,
            mail_from,
            recipients,
            content,
            "smime",
            tuple(certificate_label(c) for c in certificates),
            algorithms,
        )
        _ = outgoing.sha256  # hashed here, in the worker thread, not on the event loop
        return outgoing

    # -- audit -------------------------------------------------------------------------

    def _audit_outcomes(self, out: _Collector, envelope: Envelope, queue_id: str | None) -> None:
        for outgoing in out.messages:
            out.audit.append(
                AuditEvent(
                    type=f"agent.{outgoing.protection}",
                    queue_id=queue_id,
                    mail_from=envelope.mail_from,
                    rcpt_to=tuple(r.address for r in outgoing.recipients),
                    actor=outgoing.route,
                    cert_serials=outgoing.cert_serials,
                    algorithms=outgoing.algorithms,
                    outcome="protected" if outgoing.protection == "smime" else "unchanged",
                    sha256=outgoing.sha256,
                )
            )
        for kind, outcomes in (
            ("fallback", out.fallback),
            ("failed", out.failed),
            ("deferred", out.deferred),
        ):
            for outcome in outcomes:
                details = {"reason": outcome.reason}
                if outcome.action:
                    details["action"] = outcome.action
                out.audit.append(
                    AuditEvent(
                        type=f"agent.{kind}",
                        queue_id=queue_id,
                        mail_from=envelope.mail_from,
                        rcpt_to=(outcome.address,),
                        actor=outcome.route,
                        outcome=kind,
                        details=details,
                    )
                )


def _why_no_certificate(result: LookupResult) -> str:
    """A short reason from the lookup's candidates (status and reason of the best)."""
    if not result.candidates:
        return "no encryption certificate in the annuaire"
    first = result.candidates[0].validation
    return f"certificate {first.status.value}: {first.reason}"[:300]


__all__ = [
    "AgentResult",
    "OrganisationSigner",
    "OutgoingMessage",
    "RecipientOutcome",
    "SecureAgent",
    "SendAsChecker",
    "certificate_label",
]

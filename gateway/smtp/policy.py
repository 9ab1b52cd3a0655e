"""Relay and acceptance decisions of the SMTP front (sans-IO): who may send what to whom.

Role: the session asks ``Policy`` at MAIL, at RCPT and after DATA; each check returns
nothing or raises ``SmtpReply``. No socket, no clock, no file: every fact is passed in,
so the whole open-relay battery is a unit test.

Rules (issue 5, item 1):

- ``submission`` listener: AUTH is required before MAIL (RFC 6409 §4.3); the envelope
  sender and every ``From:`` address (and sender field, below) must be addresses the
  login may use (no spoofing of a colleague); recipients may be anywhere.
- ``relay`` listener, *relay client* (its IP in a ``relay_clients`` network, or its
  validated client certificate DN equal to a ``dn:`` entry): may send to any domain, but
  a message going outside ``local_domains`` must have every ``From:`` (and sender
  field) domain in ``local_domains``.
- ``relay`` listener, anyone else: recipients only in ``local_domains`` (else 554 5.7.1,
  "never an open relay"); a sender (MAIL FROM, ``From:`` or a sender field) in a local
  domain is refused; and per ``[inbound] accept``: ``trust-space`` = the validated client
  certificate DN must be an operator DN that the liste blanche gives for the domain of
  MAIL FROM and for the domain of ``From:``; ``signed`` = the message must be S/MIME
  signed or encrypted (RFC 8551 §3.5, §3.3: multipart/signed or application/pkcs7-mime);
  ``any`` = no further check.
- Everywhere: ``%`` and ``!`` in a recipient local part are refused (the ``%``-hack and
  UUCP routing are open-relay probes), and at most ``max_recipients`` per message.
- ``From:``: exactly one field with at least one address (RFC 5322 §3.6), else 550 5.6.0;
  also 550 5.6.0 for a control character in it (``NonPrintableDefect``: a reader may
  drop a NUL and show a local domain). Every other address written in the field - in a
  display name or a comment (``"chef@local.test" <x@out.test>``: most message lists
  show the name), or in a part the stdlib parser skips (``x@out.test
  <chef@local.test>`` gives only ``x@out.test``, a reader may show the other) - is a
  *named* address: from outside, a named local address is a local sender (refused);
  on submission, a named local address must be the login's. Named addresses of other
  domains are not judged (a display name may quote the sender's other address).
- ``Sender:``, ``Resent-From:``, ``Resent-Sender:`` (RFC 5322 §3.6.2, §3.6.6) are bound
  like ``From:``: mail readers show "Sender on behalf of From", and the Direct tamper
  rule (``gateway.relay.protect.check_tamper``) accepts a MAIL FROM equal to Sender.
  Their mailboxes and named addresses go through the same checks with the same replies
  (``FROM_NOT_OWNED`` on submission, ``LOCAL_SENDER_FROM_OUTSIDE`` from outside,
  ``OUTBOUND_FROM_NOT_LOCAL`` for a relay client sending out); the refusal detail names
  the field. Only From: domains go to the trust-space check (the liste blanche names the
  author's domain). Decisions (each a 550 5.6.0, as for From:): at most one ``Sender:``
  field (RFC 5322 §3.6: 0 or 1), while ``Resent-*`` fields may repeat, one set per
  resending, each judged; a ``Sender:`` or ``Resent-Sender:`` holds exactly one mailbox
  (RFC 5322 grammar ``mailbox``); an empty field, or one with an address without a
  domain or with a control character, is refused (it cannot be judged, and a reader may
  still show something). Group syntax (allowed in none of these fields, nor in From:) is
  read as the stdlib reads it in From: - its members are judged as mailboxes, its
  display name is searched for named addresses, and a group without a member is a field
  without an address.

Domains compare exactly (lower-case); a subdomain of a local domain is not local. One
exception, on the refusing side only: a sender (MAIL FROM, ``From:`` or a sender field)
whose domain IDNA maps to a local domain (RFC 3490 ToASCII with nameprep, Python's
``idna`` codec: fullwidth letters, a soft hyphen, the ideographic full stop, the U-label
of an ``xn--`` local domain) counts as a local sender, since mail software that applies
IDNA reads it as that domain; recipients and the outbound From: check still compare
exactly.
Certificate DNs compare as the liste blanche does (``gateway.smtp.dnmatch.same_dn``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError, NonPrintableDefect
from email.header import decode_header, make_header
from email.headerregistry import Address as HeaderAddress
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Protocol

from cryptography import x509

from gateway.config import Config
from gateway.config.model import InboundAccept, Listener, ListenerKind
from gateway.mailtext import addresses_in
from gateway.smtp import replies as r
from gateway.smtp.dnmatch import same_dn
from gateway.smtp.envelope import Address
from gateway.smtp.replies import SmtpReply

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_ROUTING_CHARACTERS = frozenset("%!")
_SIGNED_PROTOCOLS = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_ENVELOPED_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})


class SendAsChecker(Protocol):
    """The part of ``gateway.smtp.users.Authenticator`` the policy needs."""

    def may_send_as(self, login: str, address: str) -> bool: ...


class ListeBlancheLookup(Protocol):
    """The part of ``gateway.smtp.listeblanche.ListeBlanche`` the policy needs."""

    def allows(self, domain: str, peer_dn: x509.Name) -> bool: ...


@dataclass(frozen=True)
class ClientFacts:
    """What the session knows of its client when it asks: IP, validated certificate, login."""

    ip: str
    certificate_dn: x509.Name | None = None
    login: str | None = None


@dataclass(frozen=True)
class OriginatorField:
    """One field that says who sent the message (``From:``, ``Sender:``, ``Resent-From:``,
    ``Resent-Sender:``): its ``name`` as RFC 5322 spells it, its ``mailboxes`` and its
    ``named`` addresses (written elsewhere in the field, module docstring)."""

    name: str
    mailboxes: tuple[Address, ...]
    named: tuple[Address, ...] = ()


@dataclass(frozen=True)
class MessageFacts:
    """What the after-DATA checks read from the header section."""

    from_addresses: tuple[Address, ...]
    smime: bool
    named_addresses: tuple[Address, ...] = ()  # written elsewhere in From: (module doc)
    sender_fields: tuple[OriginatorField, ...] = ()  # Sender:, Resent-From:, Resent-Sender:

    @classmethod
    def from_headers(cls, headers: bytes) -> MessageFacts:
        """Parse the header section; a missing, repeated or unparsable From: is 550 5.6.0,
        and so is a sender field the module docstring refuses."""
        fields = _policy_fields(headers)
        if len(fields.from_fields) != 1:
            raise SmtpReply(r.BAD_HEADER, f"{len(fields.from_fields)} From: fields")
        addresses = _simple_from(fields.from_fields[0])  # a plain form names nothing else
        named: tuple[Address, ...] = ()
        smime = _simple_smime(fields.content_types)
        if addresses is None or smime is None:
            message = BytesHeaderParser(policy=default_policy).parsebytes(fields.joined())
            if addresses is None:
                addresses = _parsed_from(message.get_all("From") or [])
                named = _named_addresses(fields.from_fields[0], addresses)
            if smime is None:
                smime = _is_smime(message.get_content_type(), message.get_param("protocol"))
        senders = _sender_fields(fields.sender_fields) if fields.sender_fields else ()
        return cls(addresses, smime, named, senders)

    def originator_fields(self) -> tuple[OriginatorField, ...]:
        """``From:`` first, then the sender fields in their order: every field to bind."""
        from_field = OriginatorField("From", self.from_addresses, self.named_addresses)
        return (from_field, *self.sender_fields)


_FIELD_NAME = re.compile(rb"[!-9;-~]+:")  # RFC 5322 §3.6.8: printable, no space, no colon


_SENDER_FIELD_NAMES = {
    b"sender": "Sender",
    b"resent-from": "Resent-From",
    b"resent-sender": "Resent-Sender",
}
_SINGLE_MAILBOX_FIELDS = frozenset({"Sender", "Resent-Sender"})  # RFC 5322: ``mailbox``
_KEPT_FIELD_NAMES = frozenset({b"from", b"content-type", *_SENDER_FIELD_NAMES})


@dataclass(frozen=True)
class _PolicyFields:
    """The raw From:, Content-Type: and sender fields (with their continuation lines,
    in order); each sender field with its RFC 5322 name."""

    from_fields: tuple[bytes, ...]
    content_types: tuple[bytes, ...]
    in_order: tuple[bytes, ...]  # the From: and Content-Type: fields
    sender_fields: tuple[tuple[str, bytes], ...] = ()

    def joined(self) -> bytes:
        """A header section of the From: and Content-Type: fields, for the stdlib parser."""
        return b"".join(self.in_order) + b"\r\n"


def _policy_fields(headers: bytes) -> _PolicyFields:
    """Pick the From:, Content-Type: and sender fields by RFC 5322's own rules, refusing
    any line that is neither a field nor a continuation. The stdlib parser skips what it
    cannot read (e.g. the obsolete ``From :`` form, RFC 5322 §4.5.1), and a mail reader
    may still show it: the policy must never judge fewer fields than a reader could
    see. Only these fields are parsed (the others cost time and decide nothing)."""
    kept: list[tuple[bytes, list[bytes]]] = []
    current: list[bytes] | None = None
    for line in headers.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line + b"\r\n")
            continue
        match = _FIELD_NAME.match(line)
        if match is None:
            raise SmtpReply(r.BAD_HEADER, "malformed header field")
        current = None
        name = match.group()[:-1].lower()
        if name in _KEPT_FIELD_NAMES:
            current = [line + b"\r\n"]
            kept.append((name, current))
    from_fields: list[bytes] = []
    content_types: list[bytes] = []
    in_order: list[bytes] = []
    sender_fields: list[tuple[str, bytes]] = []
    for name, lines in kept:
        field = b"".join(lines)
        if name in _SENDER_FIELD_NAMES:
            sender_fields.append((_SENDER_FIELD_NAMES[name], field))
            continue
        in_order.append(field)
        (from_fields if name == b"from" else content_types).append(field)
    return _PolicyFields(
        tuple(from_fields), tuple(content_types), tuple(in_order), tuple(sender_fields)
    )


# Fast paths, each for a form the stdlib parser reads the same way (a differential test
# checks it, tests/smtp/test_policy_fast_path.py); anything else goes to the stdlib.
_DOT_ATOM_LOCAL = rb"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
_DOMAIN = rb"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_ADDRESS = rb"(?P<local>" + _DOT_ATOM_LOCAL + rb")@(?P<domain>" + _DOMAIN + rb")"
_SIMPLE_FROM = re.compile(  # the field name is not read: any address field
    rb"[!-9;-~]+:[ \t]*"
    rb"(?:" + _ADDRESS + rb"|(?:[A-Za-z0-9_-]+(?: [A-Za-z0-9_-]+)* ?"
    rb'|"[A-Za-z0-9 ._-]*" ?)?<' + _ADDRESS.replace(b"?P<", b"?P<a_") + rb">)"
    rb"[ \t]*\r\n"
)
_SIMPLE_CONTENT_TYPE = re.compile(
    rb"[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Tt][Yy][Pp][Ee]:[ \t]*"
    rb"(?P<type>[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+)[ \t]*(?:;[^\r\n]*)?\r\n"
)


def _simple_from(field: bytes) -> tuple[Address, ...] | None:
    """The address of a one-line From: (or sender field) of the plain forms ``a@b``,
    ``<a@b>``, ``Name <a@b>``, ``"Name" <a@b>`` (ASCII dot-atoms); None for anything
    else. The header parser reads these fields with the same address-list grammar."""
    match = _SIMPLE_FROM.fullmatch(field)
    if match is None:
        return None
    local = match.group("local") or match.group("a_local")
    domain = match.group("domain") or match.group("a_domain")
    return (Address(local.decode("ascii"), domain.decode("ascii").lower()),)


def _simple_smime(content_types: tuple[bytes, ...]) -> bool | None:
    """False when the content type is plainly neither S/MIME signed nor enveloped (no
    Content-Type: is text/plain, RFC 2045 §5.2); None when the stdlib must decide."""
    if not content_types:
        return False
    if len(content_types) > 1:
        return None
    match = _SIMPLE_CONTENT_TYPE.fullmatch(content_types[0])
    if match is None:
        return None
    content_type = match.group("type").decode("ascii").lower()
    if content_type == "multipart/signed" or content_type in _ENVELOPED_TYPES:
        return None
    return False


def _parsed_from(fields: list[object]) -> tuple[Address, ...]:
    return _parsed_mailboxes("From", fields)


def _parsed_mailboxes(name: str, fields: list[object]) -> tuple[Address, ...]:
    """The mailboxes of the one parsed field ``name`` in ``fields`` (group members
    included, as the stdlib flattens them); 550 5.6.0 for anything else."""
    if len(fields) != 1:
        raise SmtpReply(r.BAD_HEADER, f"{len(fields)} {name}: fields")
    defects = getattr(fields[0], "defects", ())
    if any(isinstance(defect, NonPrintableDefect) for defect in defects):
        raise SmtpReply(r.BAD_HEADER, f"{name}: with a control character")
    parsed = getattr(fields[0], "addresses", ())
    addresses = tuple(_header_address(name, item) for item in parsed)
    if not addresses:
        raise SmtpReply(r.BAD_HEADER, f"{name}: without an address")
    return addresses


def _sender_fields(raw_fields: tuple[tuple[str, bytes], ...]) -> tuple[OriginatorField, ...]:
    """Each raw sender field parsed (module docstring: at most one Sender:)."""
    senders = sum(1 for name, _ in raw_fields if name == "Sender")
    if senders > 1:
        raise SmtpReply(r.BAD_HEADER, f"{senders} Sender: fields")
    return tuple(_sender_field(name, raw) for name, raw in raw_fields)


def _sender_field(name: str, raw: bytes) -> OriginatorField:
    """One sender field: the fast path for a plain form, else the stdlib parser on this
    field alone (rare: most messages have no sender field, most that do a plain one)."""
    simple = _simple_from(raw)
    if simple is not None:
        return OriginatorField(name, simple)
    message = BytesHeaderParser(policy=default_policy).parsebytes(raw + b"\r\n")
    mailboxes = _parsed_mailboxes(name, message.get_all(name) or [])
    if name in _SINGLE_MAILBOX_FIELDS and len(mailboxes) != 1:
        raise SmtpReply(r.BAD_HEADER, f"{name}: with {len(mailboxes)} mailboxes")
    return OriginatorField(name, mailboxes, _named_addresses(raw, mailboxes))


def _named_addresses(raw_field: bytes, mailboxes: tuple[Address, ...]) -> tuple[Address, ...]:
    """The addresses written in the raw From: (or sender) field (RFC 2047 words decoded) other than
    its ``mailboxes``: in a display name, a comment, or a part the parser skipped (module
    docstring). Read from the raw bytes: the parsed value drops what the parser could
    not read."""
    text = raw_field.decode("utf-8", "surrogateescape").split(":", 1)[1]
    try:
        text = str(make_header(decode_header(text)))
    except (HeaderParseError, UnicodeError, ValueError, LookupError):
        pass  # the encoded words stay as they are: their addresses are not seen
    found = (Address(local, domain.lower()) for local, domain in addresses_in(text))
    return tuple(dict.fromkeys(a for a in found if a not in mailboxes))


def _header_address(name: str, address: HeaderAddress) -> Address:
    if not address.username or not address.domain or "@" in address.domain:
        raise SmtpReply(r.BAD_HEADER, f"{name}: address without a domain")
    return Address(address.username, address.domain.lower())


def _idna_form(domain: str) -> str | None:
    """``domain`` as IDNA software reads it (lower-case A-labels), None if it cannot.
    Header domains may hold raw UTF-8 as surrogate escapes (``BytesHeaderParser``)."""
    try:
        text = domain.encode("utf-8", "surrogateescape").decode("utf-8")
        return text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def _is_smime(content_type: str, protocol: object) -> bool:
    if content_type == "multipart/signed":
        return isinstance(protocol, str) and protocol.lower() in _SIGNED_PROTOCOLS
    return content_type in _ENVELOPED_TYPES


@dataclass(frozen=True)
class RelayRules:
    """The configuration facts of one listener's policy."""

    kind: ListenerKind
    local_domains: frozenset[str]
    relay_networks: tuple[IPNetwork, ...] = ()
    relay_dns: tuple[x509.Name, ...] = ()
    inbound_accept: InboundAccept = "signed"
    max_recipients: int = 100

    @classmethod
    def from_config(cls, config: Config, listener: Listener) -> RelayRules:
        clients = listener.relay_clients
        return cls(
            kind=listener.kind,
            local_domains=frozenset(d.lower() for d in config.gateway.local_domains),
            relay_networks=tuple(c for c in clients if not isinstance(c, x509.Name)),
            relay_dns=tuple(c for c in clients if isinstance(c, x509.Name)),
            inbound_accept=config.inbound.accept,
            max_recipients=listener.max_recipients,
        )


class Policy:
    """The decisions of one listener; see the module docstring."""

    def __init__(
        self,
        rules: RelayRules,
        *,
        send_as: SendAsChecker | None = None,
        liste_blanche: ListeBlancheLookup | None = None,
    ) -> None:
        self.rules = rules
        self._send_as = send_as
        self._liste_blanche = liste_blanche

    # -- facts ---------------------------------------------------------------------------

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self.rules.local_domains

    def is_local_sender(self, domain: str) -> bool:
        """``is_local``, or a form of a local domain that IDNA maps to it (module doc)."""
        if self.is_local(domain):
            return True
        mapped = _idna_form(domain) if not domain.isascii() else None
        return mapped is not None and mapped in self.rules.local_domains

    def is_relay_client(self, client: ClientFacts) -> bool:
        if self.rules.kind != "relay":
            return False
        try:
            ip = ipaddress.ip_address(client.ip)
        except ValueError:
            ip = None
        if ip is not None and any(ip in network for network in self.rules.relay_networks):
            return True
        dn = client.certificate_dn
        return dn is not None and any(same_dn(dn, allowed) for allowed in self.rules.relay_dns)

    # -- MAIL, RCPT, after DATA ----------------------------------------------------------

    def check_mail(self, client: ClientFacts, sender: Address) -> None:
        if self.rules.kind == "submission":
            self._check_owned(client, sender, r.SENDER_NOT_OWNED)
        elif not self.is_relay_client(client) and not sender.is_null:
            if self.is_local_sender(sender.domain):
                raise SmtpReply(r.LOCAL_SENDER_FROM_OUTSIDE, f"MAIL FROM {sender}")
            self._check_trust_space(client, sender.domain)

    def check_rcpt(self, client: ClientFacts, recipient: Address, accepted: int) -> None:
        if accepted >= self.rules.max_recipients:
            raise SmtpReply(r.TOO_MANY_RECIPIENTS, f"over {self.rules.max_recipients}")
        if _ROUTING_CHARACTERS & set(recipient.local):
            raise SmtpReply(r.RELAY_DENIED, f"routing character in {recipient}")
        if self.rules.kind == "relay" and not self.is_relay_client(client):
            if not self.is_local(recipient.domain):
                raise SmtpReply(r.RELAY_DENIED, f"non-local recipient {recipient}")

    def check_message(
        self, client: ClientFacts, recipients: Sequence[Address], message: MessageFacts
    ) -> None:
        """From: and the sender fields alike (module docstring), then inbound rules."""
        fields = message.originator_fields()
        if self.rules.kind == "submission":
            for field in fields:
                self._check_owned_field(client, field)
        elif self.is_relay_client(client):
            if not all(self.is_local(rcpt.domain) for rcpt in recipients):
                for field in fields:
                    self._check_outbound_field(field)
        else:
            for field in fields:
                self._check_inbound_field(field)
            self._check_inbound_message(client, message)

    # -- helpers -------------------------------------------------------------------------

    def _check_owned_field(self, client: ClientFacts, field: OriginatorField) -> None:
        """Submission: every mailbox, and every named local address, is the login's."""
        for address in field.mailboxes:
            self._check_owned(client, address, r.FROM_NOT_OWNED, field.name)
        for address in field.named:
            if self.is_local_sender(address.domain):
                self._check_owned(client, address, r.FROM_NOT_OWNED, field.name)

    def _check_outbound_field(self, field: OriginatorField) -> None:
        """Relay client sending out: every mailbox is in a local domain (exactly)."""
        for address in field.mailboxes:
            if not self.is_local(address.domain):
                raise SmtpReply(r.OUTBOUND_FROM_NOT_LOCAL, f"{field.name}: {address}")

    def _check_inbound_field(self, field: OriginatorField) -> None:
        """From outside: no mailbox and no named address is a local sender."""
        for address in field.named:
            if self.is_local_sender(address.domain):
                raise SmtpReply(r.LOCAL_SENDER_FROM_OUTSIDE, f"{field.name}: names {address}")
        for address in field.mailboxes:
            if self.is_local_sender(address.domain):
                raise SmtpReply(r.LOCAL_SENDER_FROM_OUTSIDE, f"{field.name}: {address}")

    def _check_inbound_message(self, client: ClientFacts, message: MessageFacts) -> None:
        for address in message.from_addresses:
            self._check_trust_space(client, address.domain)
        if self.rules.inbound_accept == "signed" and not message.smime:
            raise SmtpReply(r.NOT_SIGNED, "neither signed nor encrypted")

    def _check_owned(
        self, client: ClientFacts, address: Address, refusal: r.Reply, where: str = "MAIL FROM"
    ) -> None:
        if client.login is None:
            raise SmtpReply(r.AUTH_REQUIRED, "MAIL before AUTH")
        if self._send_as is None or not self._send_as.may_send_as(client.login, str(address)):
            raise SmtpReply(refusal, f"{where}: {client.login} may not send as {address}")

    def _check_trust_space(self, client: ClientFacts, domain: str) -> None:
        if self.rules.inbound_accept != "trust-space":
            return
        if client.certificate_dn is None:
            raise SmtpReply(r.CERTIFICATE_NEEDED, "trust-space without a client certificate")
        if self._liste_blanche is None or not self._liste_blanche.allows(
            domain, client.certificate_dn
        ):
            raise SmtpReply(r.NOT_TRUST_SPACE, f"{domain} not allowed for this certificate")

"""The annuaire's data model: a practitioner or a structure, with its mailboxes.

Role: pure data shared by the importers, the LDIF and LDAP backends, the search and the
certificate lookup. No I/O. An ``Entry`` is what the MSSanté extract and the RPPS file
describe (identification nationale PP, names, profession and *savoir-faire*,
organisation, postal address, mailboxes with their type) plus the certificates an LDAP
directory holds for it.

Invariants (checked when an object is built; a violation raises ``EntryError``):
- ``Entry.key`` is the stable identity used for upserts and as the LDAP RDN value
  (``uid=<key>``): the national id for a person, else a mailbox address (structures,
  application boxes); ``entry_key`` computes it that way.
- ``kind`` is ``"person"`` or ``"structure"``; a mailbox type is one of PER, ORG, APP,
  CAB (MSSanté TRE_R257: personal, organisational, application, *cabinet*).
- Text fields hold no control character (no NUL, CR, LF, ...): they go into LDIF lines,
  LDAP attributes and ``$``-joined postal addresses, and a raw newline there could forge
  a line. Tuples are tuples (the dataclasses are frozen and hashable).
- Mailbox addresses are syntactically valid (RFC 5321 §4.1.2 dot-atom local part, or
  UTF-8 for RFC 6531; a DNS domain of LDH labels, RFC 1035 §2.3.1; lengths of RFC 5321
  §4.5.3.1) and their domain is lower-cased; the local part keeps its case (RFC 5321
  §2.4) but every comparison in the annuaire is case-insensitive, as LDAP's
  ``caseIgnoreIA5Match`` on ``mail`` is.
- ``certificates`` are DER bytes as stored; they are parsed (and a malformed one skipped
  with a warning) only by the certificate lookup.

Identification nationale PP (ANS): ``"8"`` + the 11-digit RPPS number, or ``"0"`` + the
ADELI number; structures carry their FINESS or SIRET based id. The model does not
enforce those shapes (the importers check what they read); it only keeps ids clean.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal, get_args

from annuaire.errors import EntryError

MailboxType = Literal["PER", "ORG", "APP", "CAB"]
EntryKind = Literal["person", "structure"]
MAILBOX_TYPES: tuple[MailboxType, ...] = get_args(MailboxType)
ENTRY_KINDS: tuple[EntryKind, ...] = get_args(EntryKind)

MAX_ADDRESS_LENGTH = 254  # RFC 5321 §4.5.3.1.3 path limit (256) minus the angle brackets
MAX_LOCAL_PART_LENGTH = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN_LENGTH = 253  # RFC 1035 §2.3.4 (255 octets on the wire)
MAX_TEXT_LENGTH = 1024  # a name, label or address line longer than this is junk

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# dot-atom (RFC 5322 §3.2.3 atext) with UTF-8 allowed (RFC 6531 §3.3 extends atext)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+"
_LOCAL_PART = re.compile(rf"{_ATEXT}(\.{_ATEXT})*")
_LABEL_TEXT = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL = re.compile(_LABEL_TEXT)
# one-regex fast path of normalise_address for an ASCII address already in normal form
# (local part of at most 64 characters, lower-case domain of 2+ labels, no final dot)
_ASCII_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_NORMAL_ASCII_ADDRESS = re.compile(
    rf"(?=[^@]{{1,{MAX_LOCAL_PART_LENGTH}}}@){_ASCII_ATEXT}(?:\.{_ASCII_ATEXT})*"
    rf"@{_LABEL_TEXT}(?:\.{_LABEL_TEXT})+"
)


def _is_encodable(text: str) -> bool:
    """False for strings with lone surrogates (non-UTF-8 bytes decoded with
    ``surrogateescape``, e.g. from a command line)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(value: str, what: str) -> str:
    """``value`` if it is a safe directory string, else ``EntryError`` naming ``what``."""
    if not isinstance(value, str):
        raise EntryError(f"{what}: expected text, got {type(value).__name__}")
    # fast path: printable text has no control character and no lone surrogate
    if value.isprintable():
        if len(value) > MAX_TEXT_LENGTH:
            raise EntryError(f"{what}: longer than {MAX_TEXT_LENGTH} characters")
        return value
    if _CONTROL.search(value):
        raise EntryError(f"{what}: control characters are not allowed")
    if len(value) > MAX_TEXT_LENGTH:
        raise EntryError(f"{what}: longer than {MAX_TEXT_LENGTH} characters")
    if not _is_encodable(value):
        raise EntryError(f"{what}: not valid Unicode")
    return value


def normalise_address(address: str) -> str:
    """The address with its domain lower-cased; ``EntryError`` if it is not a valid
    mailbox (see the module docstring for the rules)."""
    if (  # the common case, checked at once (same rules; the general path below)
        isinstance(address, str)
        and len(address) <= MAX_ADDRESS_LENGTH
        and address.isascii()
        and _NORMAL_ASCII_ADDRESS.fullmatch(address)
    ):
        return address
    if not isinstance(address, str) or not _is_encodable(address):
        raise EntryError("invalid address: not valid Unicode text")
    if len(address.encode("utf-8")) > MAX_ADDRESS_LENGTH:
        raise EntryError(f"invalid address: longer than {MAX_ADDRESS_LENGTH} octets")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise EntryError(f"invalid address {address!r}: expected local-part@domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_LENGTH or not _LOCAL_PART.fullmatch(local):
        raise EntryError(f"invalid address {address!r}: bad local part")
    domain = normalise_domain(domain, what=f"invalid address {address!r}")
    return f"{local}@{domain}"


def normalise_domain(domain: str, *, what: str = "invalid domain") -> str:
    """A lower-case DNS domain of at least two LDH labels, or ``EntryError``."""
    domain = domain.lower().rstrip(".")
    labels = domain.split(".")
    if (
        len(domain) > MAX_DOMAIN_LENGTH
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise EntryError(f"{what}: bad domain")
    return domain


def is_valid_address(address: str) -> bool:
    try:
        normalise_address(address)
    except EntryError:
        return False
    return True


def strip_tag(address: str) -> str:
    """``alice+cardio@chu-a.test`` -> ``alice@chu-a.test`` (sub-addressing, RFC 5233 §1:
    the detail after ``+`` is not part of the mailbox the directory knows)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    base, plus, _detail = local.partition("+")
    return f"{base}@{domain}" if plus and base else address


def address_domain(address: str) -> str:
    """The part after the last ``@`` (lower-cased)."""
    return address.rpartition("@")[2].lower()


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def address_key(address: str) -> str:
    """The form used to compare and index addresses: ASCII letters lower-cased, every
    other character kept - LDAP's caseIgnoreIA5Match on ``mail``, so the LDIF and LDAP
    backends agree. Not ``str.casefold``: it makes distinct RFC 6531 mailboxes one
    (``straße`` and ``strasse``, the Kelvin sign and ``k``, the ``ﬁ`` ligature and
    ``fi``), and a lookup would give one person's certificate to another."""
    return address.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One MSSanté-style mailbox: an address and its type (PER, ORG, APP, CAB)."""

    address: str
    type: MailboxType = "PER"

    def __post_init__(self) -> None:
        if self.type not in MAILBOX_TYPES:
            raise EntryError(f"mailbox type must be one of {', '.join(MAILBOX_TYPES)}")
        object.__setattr__(self, "address", normalise_address(self.address))


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A practitioner (``kind="person"``) or a structure / application box.

    Keyword-only: build it with field names. Optional text fields are ``None`` when
    unknown (never ``""``); ``postal_address`` holds the address lines without the
    postcode and city, which are ``postal_code`` and ``city``.
    """

    key: str
    kind: EntryKind
    display_name: str
    national_id: str | None = None
    given_name: str | None = None
    surname: str | None = None
    profession_code: str | None = None
    profession_label: str | None = None
    specialty_code: str | None = None
    specialty_label: str | None = None
    organisation: str | None = None
    postal_address: tuple[str, ...] = ()
    postal_code: str | None = None
    city: str | None = None
    department: str | None = None
    region: str | None = None
    mailboxes: tuple[Mailbox, ...] = ()
    certificates: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not clean_text(self.key, "key").strip():
            raise EntryError("key: must not be empty")
        if self.kind not in ENTRY_KINDS:
            raise EntryError(f"kind must be one of {', '.join(ENTRY_KINDS)}")
        if not clean_text(self.display_name, "display_name").strip():
            raise EntryError("display_name: must not be empty")
        for name in _OPTIONAL_TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:  # tested here, not in a helper: one call less per field
                clean_text(value, name)
        self._check_tuples()

    def _check_tuples(self) -> None:
        if not isinstance(self.postal_address, tuple):
            raise EntryError("postal_address: expected a tuple of lines")
        for line in self.postal_address:
            clean_text(line, "postal_address")
        if not isinstance(self.mailboxes, tuple) or not all(
            isinstance(m, Mailbox) for m in self.mailboxes
        ):
            raise EntryError("mailboxes: expected a tuple of Mailbox")
        if not isinstance(self.certificates, tuple) or not all(
            isinstance(c, bytes) for c in self.certificates
        ):
            raise EntryError("certificates: expected a tuple of DER bytes")

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every mailbox address, in order."""
        return tuple(mailbox.address for mailbox in self.mailboxes)

    def mailbox(self, address: str) -> Mailbox | None:
        """The mailbox with this address (case-insensitive), if the entry has it."""
        wanted = address_key(address)
        for mailbox in self.mailboxes:
            if address_key(mailbox.address) == wanted:
                return mailbox
        return None


_OPTIONAL_TEXT_FIELDS = (
    "national_id",
    "given_name",
    "surname",
    "profession_code",
    "profession_label",
    "specialty_code",
    "specialty_label",
    "organisation",
    "postal_code",
    "city",
    "department",
    "region",
)


def entry_key(kind: EntryKind, national_id: str | None, mailboxes: tuple[Mailbox, ...]) -> str:
    """The upsert identity: the national id of a person, else the first mailbox address
    (case-folded, so two spellings of one address are one entry)."""
    if kind == "person" and national_id:
        return national_id
    if not mailboxes:
        raise EntryError("an entry without national id needs a mailbox to be identified")
    return address_key(mailboxes[0].address)

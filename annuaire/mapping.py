"""Entry <-> LDAP attributes, with the attribute names of ``[annuaire.attributes]``.

Role: the one place that knows how an ``Entry`` is stored in a directory, used by the
LDIF writer, the importers (ldap3 add/modify), the LDIF backend and the LDAP backend.
Pure functions, no I/O.

Layout of an entry (``docs/annuaire.md`` has an example):
- DN ``uid=<key>,<base_dn>`` (RFC 4514 §2.4 escaping of the key); structural class
  ``inetOrgPerson`` (RFC 2798) for persons *and* structures, so Thunderbird's LDAP
  address book and any stock tool see every mailbox; auxiliary class
  ``missiveHealthEntry`` (``annuaire/schema``) for the health attributes.
- inetOrgPerson attributes: ``uid`` (the key), ``cn`` and ``displayName`` (display
  name), ``sn`` (surname; the display name when there is none, ``sn`` is mandatory),
  ``givenName``, ``o`` (organisation), ``postalAddress`` (RFC 4517 §3.3.28: lines joined
  by ``$``, ``\\`` and ``$`` escaped as ``\\5C`` and ``\\24``), ``postalCode``, ``l``
  (city), ``st`` (region); the mail attribute (configured, default ``mail``) holds every
  mailbox address; certificates go to the *first* configured certificate attribute
  (default ``userCertificate;binary``) and are read from *all* of them.
- ``missiveHealthEntry`` attributes: ``missiveEntryKind``, ``missiveNationalId``,
  ``missiveProfessionCode``/``Label``, ``missiveSpecialtyCode``/``Label``,
  ``missiveDepartment``, ``missiveMailbox`` (``TYPE:address``, e.g.
  ``PER:alice.martin@chu-a.test``) and ``missiveSearchKey`` (see ``searchkeys``).
  ``health_schema=False`` leaves them out, for a stock directory without our schema.

Reading is lenient, because a directory may have been filled by other tools: attribute
names match case-insensitively, certificate attributes match with or without their
``;binary`` option, text values are UTF-8 (invalid bytes replaced), a mailbox value that
cannot be parsed is skipped with a warning, and defaults fill what is missing (kind
``person``, mailbox type PER for a person and ORG for a structure, display name from
``cn`` or the names). A value that breaks a model invariant (a control character) makes
``attributes_to_entry`` raise ``EntryError``; the backends skip such an entry with a
warning instead of failing a whole search.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from ldap3.utils.dn import escape_rdn, parse_dn

from annuaire.errors import EntryError
from annuaire.model import (
    ENTRY_KINDS,
    MAILBOX_TYPES,
    Entry,
    EntryKind,
    Mailbox,
    MailboxType,
    address_key,
)
from annuaire.searchkeys import search_keys
from gateway.config import AnnuaireAttributes
from gateway.log import get_logger

log = get_logger("annuaire")

AttributeValues = list[str | bytes]
Attributes = dict[str, AttributeValues]

HEALTH_OBJECT_CLASS: Final = "missiveHealthEntry"
STRUCTURAL_CLASSES: Final = ("top", "person", "organizationalPerson", "inetOrgPerson")
_OBJECT_CLASSES: Final = (*STRUCTURAL_CLASSES, HEALTH_OBJECT_CLASS)

UID: Final = "uid"
CN: Final = "cn"
DISPLAY_NAME: Final = "displayName"
SN: Final = "sn"
GIVEN_NAME: Final = "givenName"
ORGANISATION: Final = "o"
POSTAL_ADDRESS: Final = "postalAddress"
POSTAL_CODE: Final = "postalCode"
CITY: Final = "l"
REGION: Final = "st"

KIND: Final = "missiveEntryKind"
NATIONAL_ID: Final = "missiveNationalId"
PROFESSION_CODE: Final = "missiveProfessionCode"
PROFESSION_LABEL: Final = "missiveProfessionLabel"
SPECIALTY_CODE: Final = "missiveSpecialtyCode"
SPECIALTY_LABEL: Final = "missiveSpecialtyLabel"
DEPARTMENT: Final = "missiveDepartment"
MAILBOX: Final = "missiveMailbox"
SEARCH_KEY: Final = "missiveSearchKey"

HEALTH_ATTRIBUTES: Final = (
    KIND,
    NATIONAL_ID,
    PROFESSION_CODE,
    PROFESSION_LABEL,
    SPECIALTY_CODE,
    SPECIALTY_LABEL,
    DEPARTMENT,
    MAILBOX,
    SEARCH_KEY,
)
_PERSON_ATTRIBUTES: Final = (
    UID,
    CN,
    DISPLAY_NAME,
    SN,
    GIVEN_NAME,
    ORGANISATION,
    POSTAL_ADDRESS,
    POSTAL_CODE,
    CITY,
    REGION,
)
#: ``[annuaire.attributes]`` as the contract's defaults (inetOrgPerson's names).
DEFAULT_ATTRIBUTES: Final = AnnuaireAttributes(
    mail="mail", certificate=("userCertificate;binary", "userSMIMECertificate")
)
_DEFAULT_MAILBOX_TYPE: Final[dict[EntryKind, MailboxType]] = {"person": "PER", "structure": "ORG"}
_MAILBOX_TYPES: Final[dict[str, MailboxType]] = {name: name for name in MAILBOX_TYPES}
_POSTAL_ESCAPE = re.compile(r"\\(5[cC]|24)")
_DN_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)")


# ------------------------------------------------------------------ writing
def entry_dn(entry: Entry, base_dn: str) -> str:
    """``uid=<key>,<base_dn>`` with the key escaped (RFC 4514 §2.4)."""
    return f"{UID}={escape_rdn(entry.key)},{base_dn}"


def encode_postal_address(lines: Sequence[str]) -> str:
    """RFC 4517 §3.3.28 PostalAddress: ``$`` between lines, ``\\`` and ``$`` escaped;
    empty lines are dropped (a line is ``1*line-char``)."""
    return "$".join(
        line.replace("\\", "\\5C").replace("$", "\\24") for line in lines if line.strip()
    )


def decode_postal_address(value: str) -> tuple[str, ...]:
    """Inverse of ``encode_postal_address``."""
    replacements = {"5c": "\\", "24": "$"}
    return tuple(
        _POSTAL_ESCAPE.sub(lambda m: replacements[m.group(1).lower()], line).strip()
        for line in value.split("$")
        if line.strip()
    )


def entry_to_attributes(
    entry: Entry, attributes: AnnuaireAttributes, *, health_schema: bool = True
) -> Attributes:
    """The LDAP attributes of ``entry`` (names as configured), absent values omitted."""
    result: Attributes = {
        "objectClass": list(_OBJECT_CLASSES if health_schema else STRUCTURAL_CLASSES),
        UID: [entry.key],
        CN: [entry.display_name],
        DISPLAY_NAME: [entry.display_name],
        SN: [entry.surname or entry.display_name],
    }
    # (name, value) pairs filled straight into ``result``: no intermediate dicts per entry
    optional: list[tuple[str, str | None]] = [
        (GIVEN_NAME, entry.given_name),
        (ORGANISATION, entry.organisation),
        (POSTAL_ADDRESS, encode_postal_address(entry.postal_address) or None),
        (POSTAL_CODE, entry.postal_code),
        (CITY, entry.city),
        (REGION, entry.region),
    ]
    if health_schema:
        optional += _health_values(entry)
    for name, value in optional:
        if value:
            result[name] = [value]
    if entry.mailboxes:
        result[attributes.mail] = list(entry.addresses)
    if entry.certificates:
        result[attributes.certificate[0]] = list(entry.certificates)
    if health_schema:
        result[MAILBOX] = [f"{m.type}:{m.address}" for m in entry.mailboxes]
        result[SEARCH_KEY] = list(search_keys(entry))
    return {name: values for name, values in result.items() if values}


def _health_values(entry: Entry) -> list[tuple[str, str | None]]:
    return [
        (KIND, entry.kind),
        (NATIONAL_ID, entry.national_id),
        (PROFESSION_CODE, entry.profession_code),
        (PROFESSION_LABEL, entry.profession_label),
        (SPECIALTY_CODE, entry.specialty_code),
        (SPECIALTY_LABEL, entry.specialty_label),
        (DEPARTMENT, entry.department),
    ]


def managed_attributes(attributes: AnnuaireAttributes, *, health_schema: bool = True) -> list[str]:
    """Every attribute ``entry_to_attributes`` may write (for an upsert that must also
    remove values an entry no longer has: replace each of these, empty when absent)."""
    names = [*_PERSON_ATTRIBUTES, attributes.mail, attributes.certificate[0]]
    return names + (list(HEALTH_ATTRIBUTES) if health_schema else [])


def requested_attributes(attributes: AnnuaireAttributes) -> list[str]:
    """The attributes to ask a directory for to rebuild an entry (no search keys)."""
    names = ["objectClass", *_PERSON_ATTRIBUTES, attributes.mail, *attributes.certificate]
    return names + [name for name in HEALTH_ATTRIBUTES if name != SEARCH_KEY]


# ------------------------------------------------------------------ reading
class _Values:
    """Case-insensitive view of an attribute mapping (names compared without options
    when asked)."""

    def __init__(self, attributes: Mapping[str, Iterable[str | bytes]]) -> None:
        self._exact: dict[str, list[str | bytes]] = {}
        self._by_base: dict[str, list[str | bytes]] = {}
        for name, values in attributes.items():
            listed = list(values)
            self._exact.setdefault(name.lower(), []).extend(listed)
            self._by_base.setdefault(name.split(";", 1)[0].lower(), []).extend(listed)

    def raw(self, name: str, *, any_option: bool = False) -> list[str | bytes]:
        if any_option:
            return self._by_base.get(name.split(";", 1)[0].lower(), [])
        return self._exact.get(name.lower(), [])

    def texts(self, name: str) -> list[str]:
        texts = (_as_text(value) for value in self.raw(name))
        return [text for text in texts if text.strip()]

    def first(self, name: str) -> str | None:
        texts = self.texts(name)
        return texts[0].strip() if texts else None


def _as_text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def rdn_value(dn: str) -> str | None:
    """The unescaped value of the first RDN of ``dn`` (RFC 4514 §3), or None."""
    try:
        parts = parse_dn(dn)
    except Exception:  # noqa: BLE001 - ldap3 raises several types for a malformed DN
        return None
    if not parts:
        return None
    raw: str = parts[0][1]
    return _DN_ESCAPE.sub(_unescape_dn_pair, raw)


def _unescape_dn_pair(match: re.Match[str]) -> str:
    pair = match.group(1)
    if len(pair) == 2:
        return bytes.fromhex(pair).decode("latin-1")
    return pair


def attributes_to_entry(
    dn: str,
    attributes: Mapping[str, Iterable[str | bytes]],
    attributes_config: AnnuaireAttributes,
) -> Entry:
    """Rebuild an ``Entry`` from directory attributes (see the module docstring for the
    defaults); ``EntryError`` when no usable identity or name is found."""
    return _entry(dn, _Values(attributes), attributes_config)


def entry_and_mail_values(
    dn: str,
    attributes: Mapping[str, Iterable[str | bytes]],
    attributes_config: AnnuaireAttributes,
) -> tuple[Entry, list[str]]:
    """``attributes_to_entry`` and ``mail_values`` in one pass over the attributes."""
    values = _Values(attributes)
    return _entry(dn, values, attributes_config), _mail_values(values, attributes_config)


def _entry(dn: str, values: _Values, attributes_config: AnnuaireAttributes) -> Entry:
    kind = _kind(values.first(KIND))
    mailboxes = _mailboxes(values, attributes_config.mail, kind, dn)
    surname = values.first(SN)
    given_name = values.first(GIVEN_NAME)
    display_name = (
        values.first(DISPLAY_NAME)
        or values.first(CN)
        or " ".join(n for n in (given_name, surname) if n)
        or None
    )
    if kind == "structure" and surname == display_name:
        surname = None  # written only because inetOrgPerson requires sn
    key = values.first(UID) or rdn_value(dn) or (mailboxes[0].address if mailboxes else None)
    if not key:
        raise EntryError(f"{dn}: no uid, RDN or mail to identify the entry")
    return Entry(
        key=key,
        kind=kind,
        display_name=display_name or key,
        national_id=values.first(NATIONAL_ID),
        given_name=given_name,
        surname=surname,
        profession_code=values.first(PROFESSION_CODE),
        profession_label=values.first(PROFESSION_LABEL),
        specialty_code=values.first(SPECIALTY_CODE),
        specialty_label=values.first(SPECIALTY_LABEL),
        organisation=values.first(ORGANISATION),
        postal_address=decode_postal_address(values.first(POSTAL_ADDRESS) or ""),
        postal_code=values.first(POSTAL_CODE),
        city=values.first(CITY),
        department=values.first(DEPARTMENT),
        region=values.first(REGION),
        mailboxes=mailboxes,
        certificates=_certificates(values, attributes_config.certificate),
    )


def mail_values(
    attributes: Mapping[str, Iterable[str | bytes]], attributes_config: AnnuaireAttributes
) -> list[str]:
    """The raw values of the mail attribute (and of ``missiveMailbox`` without their
    type), stripped: what a directory's ``find_by_mail`` compares with. Unlike
    ``Entry.addresses`` this keeps values that are not mailboxes, such as the bare
    domain of an organisation entry (Direct's domain-bound certificates)."""
    return _mail_values(_Values(attributes), attributes_config)


def _mail_values(values: _Values, attributes_config: AnnuaireAttributes) -> list[str]:
    found = [text.strip() for text in values.texts(attributes_config.mail)]
    found += [text.partition(":")[2].strip() for text in values.texts(MAILBOX)]
    return [value for value in found if value]


def _kind(value: str | None) -> EntryKind:
    for kind in ENTRY_KINDS:
        if value is not None and value.lower() == kind:
            return kind
    return "person"


def _mailboxes(
    values: _Values, mail_attribute: str, kind: EntryKind, dn: str
) -> tuple[Mailbox, ...]:
    """Typed mailboxes from ``missiveMailbox``, then the other ``mail`` values with the
    default type of the kind; unparsable values are skipped with a warning."""
    found: dict[str, Mailbox] = {}
    for text in values.texts(MAILBOX):
        type_name, _, address = text.strip().partition(":")
        mailbox = _mailbox(address, type_name.upper(), dn)
        if mailbox is not None:
            found.setdefault(address_key(mailbox.address), mailbox)
    for text in values.texts(mail_attribute):
        key = address_key(text.strip())
        if "@" not in key:
            continue  # a bare domain: an organisation entry (see mail_values), no mailbox
        if key not in found:
            mailbox = _mailbox(text.strip(), _DEFAULT_MAILBOX_TYPE[kind], dn)
            if mailbox is not None:
                found[key] = mailbox
    return tuple(found.values())


def _mailbox(address: str, type_name: str, dn: str) -> Mailbox | None:
    mailbox_type = _MAILBOX_TYPES.get(type_name)
    if mailbox_type is None:
        log.warning("annuaire.mailbox.skipped", dn=dn, reason="unknown mailbox type")
        return None
    try:
        return Mailbox(address, mailbox_type)
    except EntryError as error:
        log.warning("annuaire.mailbox.skipped", dn=dn, reason=str(error))
        return None


def _certificates(values: _Values, names: Sequence[str]) -> tuple[bytes, ...]:
    """Binary values of every configured certificate attribute, without duplicates."""
    found: list[bytes] = []
    for name in names:
        for value in values.raw(name, any_option=True):
            if isinstance(value, bytes) and value and value not in found:
                found.append(value)
    return tuple(found)

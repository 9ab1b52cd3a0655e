"""Checks of the values an extract row carries: mailbox addresses, national ids, types.

Role: turn a raw field into the normalised value stored in the annuaire, or raise
``RowError`` saying why the row is unusable. Pure functions, no I/O.

Mailbox addresses: the model's rules (``annuaire.model.normalise_address``: RFC 5321
§4.1.2 dot-atom local part, LDH domain of two labels or more, RFC 5321 §4.5.3.1
lengths) plus one of the importer's own: the address must be ASCII. MSSanté addresses
are plain ASCII, and an RFC 6531 UTF-8 address in an extract is far likelier to be a
typing accident than a box the trust space can route; it is reported, not imported.
The address is lower-cased whole: the annuaire's ``mail`` attribute matches
case-insensitively (``caseIgnoreIA5Match``, RFC 4524 §2.16), so two rows that differ
by case are one box and one entry key.

National ids of persons (``Identification nationale PP``, ANS): ``8`` + RPPS (11
digits, the last a Luhn check digit over the 11), ``0`` + ADELI (9 characters: a
two-digit department code or ``2A``/``2B``, then 7 digits), or ``3`` + a structure
identifier + ``/`` + the structure's own id for staff without RPPS/ADELI (checked
loosely: printable ASCII without spaces, one ``/``, at most 80 characters).
"""

from __future__ import annotations

import re

from annuaire.errors import EntryError
from annuaire.importers.errors import RowError
from annuaire.model import MAILBOX_TYPES, MailboxType, normalise_address

_RPPS = re.compile(r"8[0-9]{11}")
_ADELI = re.compile(r"0(?:[0-9]{2}|2[AB])[0-9]{7}")
_STRUCTURE_STAFF = re.compile(r"3[\x21-\x7e]{1,78}")
_STRUCTURE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z/._-]{0,63}")


def mailbox_address(value: str) -> str:
    """The lower-cased address, or ``RowError`` when it is not a plain ASCII mailbox."""
    address = value.strip().lower()
    if not address:
        raise RowError("empty mailbox address")
    if not address.isascii():
        raise RowError(f"invalid mailbox address {value.strip()[:80]!r}: not ASCII")
    try:
        return normalise_address(address)
    except EntryError as error:
        raise RowError(str(error)[:200]) from None


def mailbox_type(value: str) -> MailboxType:
    """``PER``, ``ORG``, ``APP`` or ``CAB`` (case-insensitive), else ``RowError``."""
    kind = value.strip().upper()
    if kind not in MAILBOX_TYPES:
        raise RowError(f"unknown mailbox type {value.strip()[:20]!r} (PER, ORG, APP or CAB)")
    return kind


def luhn_valid(digits: str) -> bool:
    """True when the last digit of ``digits`` is its Luhn check digit (ISO/IEC 7812-1)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def national_id(value: str) -> str:
    """A checked ``Identification nationale PP``, else ``RowError``."""
    ident = value.strip()
    if _RPPS.fullmatch(ident):
        if not luhn_valid(ident[1:]):
            raise RowError(f"invalid national id {ident!r}: RPPS check digit (Luhn) is wrong")
        return ident
    if _ADELI.fullmatch(ident):
        return ident
    if _STRUCTURE_STAFF.fullmatch(ident) and ident.count("/") == 1:
        return ident
    raise RowError(
        f"invalid national id {ident[:40]!r} (expected 8+RPPS, 0+ADELI or 3+structure/id)"
    )


def optional_national_id(value: str) -> str | None:
    """``national_id`` of a non-empty field, None for an empty one."""
    return national_id(value) if value.strip() else None


def structure_id(value: str) -> str | None:
    """A structure identifier (type prefix + FINESS/SIRET/...), None when empty."""
    ident = value.strip()
    if not ident:
        return None
    if not _STRUCTURE_ID.fullmatch(ident):
        raise RowError(f"invalid structure id {ident[:40]!r}")
    return ident

"""Value parsers of the configuration: distinguished names, relay clients and names.

Role: LDAP DNs, certificate subject DNs, relay clients (a network or a subject DN),
LDAP attribute descriptions, listener and route names and remote logins, parsed by
small pure functions that raise ``BadValue`` (``gateway.config.value_errors``) with a
message a sysadmin can act on.

Decisions:

- Distinguished names: RFC 4514 strings. LDAP DNs (``annuaire.base_dn``) are checked
  with ldap3's parser; certificate subject DNs (``dn:...`` relay clients) become
  ``cryptography.x509.Name`` objects, attribute types matched case-insensitively.
- Names of listeners and routes: 1-64 of letters, digits, ``_ . -`` (safe in logs).

Security notes: a bad value is never echoed whole (``show`` truncates it). Pure, no I/O.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier
from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from gateway.config.hosts import IPNetwork, parse_network
from gateway.config.value_errors import BadValue, show

RelayClient = IPNetwork | x509.Name

# Attribute types of certificate subjects by upper-cased name (RFC 4514 §3 plus the
# usual extras); types are matched case-insensitively (RFC 4512 §2.5).
_DN_TYPES: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "COMMONNAME": NameOID.COMMON_NAME,
    "L": NameOID.LOCALITY_NAME,
    "LOCALITYNAME": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "ORGANIZATIONNAME": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "ORGANIZATIONALUNITNAME": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "COUNTRYNAME": NameOID.COUNTRY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "E": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "GIVENNAME": NameOID.GIVEN_NAME,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "SURNAME": NameOID.SURNAME,
    "TITLE": NameOID.TITLE,
    "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
}
_TYPE_BEFORE_EQUALS = re.compile(r"[A-Za-z][A-Za-z0-9-]*(?=\s*=)")


def parse_ldap_dn(text: str) -> str:
    """An LDAP DN (RFC 4514), checked with ldap3's parser and returned as written."""
    if not text.strip():
        raise BadValue("expected a distinguished name, got an empty string")
    try:
        parse_dn(text)
    except LDAPInvalidDnError as error:
        raise BadValue(f"{show(text)} is not an RFC 4514 distinguished name: {error}") from None
    return text.strip()


def parse_subject_dn(text: str) -> x509.Name:
    """A certificate subject DN (RFC 4514) -> ``x509.Name``, parsed by cryptography.

    cryptography matches attribute type names case-sensitively, so every spelling the
    text uses of a known type is passed as an override (extra entries are harmless).
    """
    if not text.strip():
        raise BadValue("expected a distinguished name, got an empty string")
    overrides = {
        kind: _DN_TYPES[kind.upper()]
        for kind in _TYPE_BEFORE_EQUALS.findall(text)
        if kind.upper() in _DN_TYPES
    }
    try:
        return x509.Name.from_rfc4514_string(text.strip(), overrides)
    except ValueError:
        raise BadValue(
            f"{show(text)} is not an RFC 4514 subject DN (types: CN, O, OU, C, L, ST,"
            " DC, UID, emailAddress, serialNumber, organizationIdentifier or an OID)"
        ) from None


def parse_relay_client(text: str) -> RelayClient:
    """A relay client: a CIDR/address, or ``dn:<subject DN>`` of a client certificate."""
    if text[:3].lower() == "dn:":
        return parse_subject_dn(text[3:])
    return parse_network(text)


_ATTRIBUTE = re.compile(r"([A-Za-z][A-Za-z0-9-]*|\d+(\.\d+)+)(;[A-Za-z0-9-]+)*")


def parse_ldap_attribute(text: str) -> str:
    """An LDAP attribute description (RFC 4512 §2.5): ``mail``, ``userCertificate;binary``."""
    if not _ATTRIBUTE.fullmatch(text):
        raise BadValue(f"{show(text)} is not an LDAP attribute name")
    return text


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_name(text: str) -> str:
    """A listener or route name: 1-64 of letters, digits, ``_ . -`` (safe in logs)."""
    if not _NAME.fullmatch(text):
        raise BadValue(f"{show(text)} is not a valid name (letters, digits, '_', '.', '-')")
    return text


def parse_login(text: str) -> str:
    """A login for a remote server: non-empty, printable, no spaces."""
    if not text or not all(c.isprintable() and not c.isspace() for c in text):
        raise BadValue(f"{show(text)} is not a valid login (printable, no spaces)")
    return text

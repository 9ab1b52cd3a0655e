"""Value parsers of the configuration: domains, host names, route patterns, addresses.

Role: DNS names, route domain patterns (and how they match and cover each other) and
mail addresses of the configuration, parsed by small pure functions that raise
``BadValue`` (``gateway.config.value_errors``) with a message a sysadmin can act on.

Decisions (also documented in ``conf/missive.toml``):

- Domains and host names: ASCII only, lower-cased, one trailing dot dropped, LDH labels
  of 1-63 octets, 253 octets at most (RFC 1035 §2.3.4, RFC 5890 A-labels). An
  internationalised name must be written in its A-label form (``xn--...``): the
  gateway never maps Unicode names itself, so what is configured is what is compared.
  The last label may not be all digits (RFC 3696 §2), so an IP literal is never
  mistaken for a domain.
- Mail addresses: ``local@domain``; the local part is a dot-atom (RFC 5322 §3.2.3)
  that may contain UTF-8 (RFC 6531); quoted local parts are refused. The domain is
  lower-cased; the local part is kept as written (RFC 5321 §2.4: it may be
  case-sensitive), as the development PKI does.

Security notes: a bad value is never echoed whole (``show`` truncates it). Pure, no I/O.
"""

from __future__ import annotations

import re

from gateway.config.value_errors import BadValue, show

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def parse_domain(text: str, *, what: str = "domain") -> str:
    """A DNS name (see module doc): lower-case A-labels, no trailing dot."""
    if not text:
        raise BadValue(f"expected a {what}, got an empty string")
    if not text.isascii():
        raise BadValue(f"{what} {show(text)} is not ASCII: write it in A-label form (xn--...)")
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadValue(f"{show(text)} is not a valid {what} (letters, digits, '-' and dots)")
    if labels[-1].isdigit():
        raise BadValue(f"{show(text)} is not a valid {what} (the last label is all digits)")
    return name


def parse_hostname(text: str, *, fully_qualified: bool = False) -> str:
    """A host name; ``fully_qualified`` demands at least one dot (RFC 5321 §4.1.1.1 EHLO)."""
    name = parse_domain(text, what="host name")
    if fully_qualified and "." not in name:
        raise BadValue(f"{show(text)} is not a fully qualified domain name")
    return name


def parse_domain_pattern(text: str) -> str:
    """A route pattern: ``"*"`` (any domain), ``"*.x.test"`` (subdomains only), ``"x.test"``."""
    if text == "*":
        return text
    if text.startswith("*."):
        return "*." + parse_domain(text[2:])
    if "*" in text:
        raise BadValue(f'expected "*", "*.domain" or "domain", got {show(text)}')
    return parse_domain(text)


def domain_matches(pattern: str, domain: str) -> bool:
    """True if ``domain`` (already normalised) matches a normalised route ``pattern``."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


def pattern_covers(earlier: str, later: str) -> bool:
    """True if every domain ``later`` matches is already matched by ``earlier``."""
    if earlier == "*":
        return True
    if not earlier.startswith("*."):
        return earlier == later
    suffix = earlier[1:]  # ".x.test"
    return later.endswith(suffix) or later == earlier


_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+")


def parse_email(text: str) -> str:
    """``local@domain`` -> the address with its domain lower-cased (see module doc)."""
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise BadValue(f"expected a mail address like name@domain, got {show(text)}")
    atoms = local.split(".")
    if not all(_ATEXT.fullmatch(atom) for atom in atoms) or len(local.encode()) > 64:
        raise BadValue(f"{show(text)} is not a valid mail address (local part)")
    return f"{local}@{parse_domain(domain)}"

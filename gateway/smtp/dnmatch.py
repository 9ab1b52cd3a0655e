"""Distinguished names compared as X.500 compares them: parse (RFC 4514), prepare (RFC 4518).

Role: decide whether the subject of a peer's TLS certificate *is* a DN written in
text elsewhere (the liste blanche's ``DNCertificatOperateur``, a ``dn:`` relay
client). Pure functions, no I/O.

Parsing (``parse_dn``): cryptography's ``x509.Name.from_rfc4514_string`` does the
RFC 4514 work (escapes ``\\,`` ``\\+`` ``\\C3\\A9``, multi-valued RDNs with ``+``, the
reversed string order), through ``gateway.config.names.parse_subject_dn`` which makes
attribute type names case-insensitive (``cn=`` = ``CN=``, RFC 4512 §2.5) and knows the
usual names (CN, O, OU, C, L, ST, DC, UID, emailAddress, serialNumber, ...) or a
dotted OID. Before that, one tolerance, written here by hand because no library does
it: unescaped spaces around the ``,`` ``+`` and ``=`` separators and at both ends are
dropped (``cn = X , o=Y`` is read as ``cn=X,o=Y``, as RFC 4514 §3 invites readers to be
liberal; RFC 2253 §4 listed it); an escaped space (``\\ ``) is always kept. Refused,
with a reason: an empty DN, ``;`` separators, quoted values, an unknown type name, a
country that is not two letters, and values in ``#hex`` BER form (rare, and not
decoded by cryptography: refusing is the fail-closed choice).

Comparison (``normalise_dn`` -> a hashable key; two DNs match when keys are equal):

- RDNs in order (a DN is a sequence), each RDN as a *set* of (type OID, value), so a
  multi-valued RDN matches whatever order its parts were written in;
- types by OID, never by name (``2.5.4.3`` = ``CN`` = ``commonName``);
- every string value by caseIgnoreMatch with its RFC 4518 string preparation: §2.2
  map (soft hyphen, U+1806, U+034F, variation selectors, U+FFFC, U+200B and other
  Cc/Cf characters to nothing; TAB, LF, VT, FF, CR, NEL and every Zs/Zl/Zp character
  to a space), case folding (Python ``casefold``, Unicode full case folding, with NFKC
  before and after it: Unicode's compatibility caseless match), §2.6.1 insignificant
  space handling (leading and trailing spaces dropped, inner runs become one space).
  The §2.4 prohibit and §2.5 bidi steps are not applied: values are only compared,
  and a prohibited character compares as itself. All types in use in certificate
  subjects are caseIgnoreMatch or caseIgnoreIA5Match (X.520, RFC 4519: cn, o, ou, l,
  st, c, serialNumber, uid, dc, emailAddress), so all strings are compared that way;
- the ASN.1 string type (PrintableString, UTF8String...) is ignored (RFC 5280 §7.1);
  a value that is not a string (a BIT STRING uniqueIdentifier) compares byte for byte.

Security note: no partial or CN-only match exists here; the whole DN must match.
"""

from __future__ import annotations

import unicodedata

from cryptography import x509

from gateway.config.names import parse_subject_dn
from gateway.config.value_errors import BadValue

NormalisedDN = tuple[frozenset[tuple[str, str]], ...]

_MAP_TO_SPACE = frozenset({0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85})
_MAP_TO_NOTHING = frozenset(
    {0x00AD, 0x1806, 0x034F, 0x180B, 0x180C, 0x180D, 0xFFFC, 0x200B, *range(0xFE00, 0xFE10)}
)
_SEPARATORS = ",+"


def _map_character(char: str) -> str:
    """RFC 4518 §2.2 mapping of one character."""
    code = ord(char)
    if code in _MAP_TO_SPACE:
        return " "
    if code in _MAP_TO_NOTHING:
        return ""
    category = unicodedata.category(char)
    if category in ("Cc", "Cf"):
        return ""
    if category in ("Zs", "Zl", "Zp"):
        return " "
    return char


def prepare_value(value: str) -> str:
    """The caseIgnoreMatch form of an attribute value (see module doc)."""
    mapped = "".join(_map_character(char) for char in value)
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", mapped).casefold())
    return " ".join(part for part in folded.split(" ") if part)


def normalise_dn(name: x509.Name) -> NormalisedDN:
    """The comparison key of ``name`` (see module doc)."""
    return tuple(
        frozenset(
            (
                attribute.oid.dotted_string,
                prepare_value(attribute.value)
                if isinstance(attribute.value, str)
                else "#" + attribute.value.hex(),
            )
            for attribute in rdn
        )
        for rdn in name.rdns
    )


def same_dn(first: x509.Name, second: x509.Name) -> bool:
    return normalise_dn(first) == normalise_dn(second)


def _tidy(text: str) -> str:
    """``text`` without the insignificant unescaped spaces of the module doc."""
    out: list[str] = []
    pending = ""  # unescaped spaces that matter only if a value character follows
    in_type, at_start = True, True
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index : index + 2]
            # "\ " as "\20" (same value, RFC 4514 §3): survives a later strip()
            out.append(pending + ("\\20" if escaped == "\\ " else escaped))
            pending, at_start = "", False
            index += 2
            continue
        index += 1
        if char == " ":
            pending += "" if at_start else char
        elif char in _SEPARATORS or (char == "=" and in_type):
            out.append(char)
            pending, at_start, in_type = "", True, char != "="
        else:
            if char == "#" and at_start and not in_type:
                raise ValueError("values in #hex (BER) form are not supported")
            out.append(pending + char)
            pending, at_start = "", False
    return "".join(out)


def parse_dn(text: str) -> x509.Name:
    """A DN string -> ``x509.Name``; ``ValueError`` with a short reason if it is not one."""
    tidy = _tidy(text)
    if not tidy:
        raise ValueError("empty distinguished name")
    try:
        return parse_subject_dn(tidy)
    except BadValue:
        raise ValueError(
            "not an RFC 4514 distinguished name (separators , and +; types CN, O, OU, C,"
            " L, ST, DC, UID, emailAddress, serialNumber, organizationIdentifier or an OID;"
            " C is two letters)"
        ) from None

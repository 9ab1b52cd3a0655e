"""Header protection (RFC 9788) in the S/MIME engine: the Cryptographic Payload with
the protected header fields added to its header block and ``hp`` on its Content-Type
(§2), and, on receipt, the ``hp`` mode and the protected fields of a payload (§2.2).

Role: pure functions over ``bytes`` (no I/O); used when sending (``gateway.relay.protect``)
and when verifying (``gateway.smime.verify``, ``gateway.inbound.process``). Built on
``mime``; imports no other MIME module.

Invariants:
- every entity this module returns is CRLF-canonical (RFC 5322 §2.3, RFC 8551 §3.1.1).

Security notes: a protected field whose name is not RFC 5322 ftext or whose value holds a
line break raises ``ValueError``: no caller can inject a header line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.smime.mime import (
    CRLF,
    MimeEntity,
    canonicalize_crlf,
    parse_entity,
    raw_field_value,
    replace_header_field,
)

_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_FOLD = re.compile(r"\r?\n[ \t]+")  # a line break of a folded field (RFC 5322 §2.2.3)


def with_protected_headers(
    entity: bytes,
    headers: Iterable[tuple[str, str]] | bytes,
    hp: str = "clear",
    *,
    canonical_entity: bool = False,
) -> bytes:
    """RFC 9788 §2: the entity with the protected header fields added to its header block
    and ``hp="clear"`` (signed only) or ``hp="cipher"`` (to be encrypted) on its
    Content-Type, ready to be signed (and encrypted) as the Cryptographic Payload.

    ``canonical_entity=True``: the caller vouches that ``entity`` is CRLF-canonical (the
    entity ``split_message`` returns is), which spares three passes over the body."""
    if hp not in ("clear", "cipher"):
        raise ValueError(f"hp must be 'clear' or 'cipher', not {hp!r}")
    canonical = entity if canonical_entity else canonicalize_crlf(entity)
    parsed = parse_entity(canonical)
    if isinstance(headers, bytes):
        protected = canonicalize_crlf(headers)
        if protected and not protected.endswith(CRLF):
            protected += CRLF
    else:
        protected = b"".join(_header_line(name, value) for name, value in headers)
    content_type = raw_field_value(parsed.header, "Content-Type")  # 8-bit octets kept
    base = _unfold(content_type) if content_type is not None else "text/plain"
    base = re.sub(r';\s*hp\s*=\s*("[^"]*"|[^;\s]*)', "", base, flags=re.IGNORECASE)
    new_header = replace_header_field(parsed.header, "Content-Type", f'{base}; hp="{hp}"')
    return b"".join((protected, new_header, CRLF, canonical[parsed.body_start :]))


def _header_line(name: str, value: str) -> bytes:
    if not _HEADER_NAME.fullmatch(name.encode("ascii", "replace")):
        raise ValueError(f"bad header field name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"line break in the value of {name}")
    return f"{name}: {value}\r\n".encode()


def header_protection_mode(entity: MimeEntity) -> str | None:
    """The RFC 9788 ``hp`` parameter of the Cryptographic Payload ("clear" or "cipher"),
    ``None`` when the sender did not use header protection."""
    value = entity.param("hp")
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in ("clear", "cipher") else None


def protected_header_fields(entity: MimeEntity) -> list[tuple[str, str]]:
    """The header fields of a Cryptographic Payload or a wrapped message other than its
    MIME fields (RFC 9788 §2.2: these are the protected ones; HP-Outer fields included)."""
    return [
        (name, value)
        for name, value in header_fields(entity)
        if not name.lower().startswith("content-") and name.lower() != "mime-version"
    ]


def header_fields(entity: MimeEntity) -> list[tuple[str, str]]:
    """Every header field of the entity, in order, as (name, unfolded value)."""
    return [(name, _unfold(str(value))) for name, value in entity.fields.items()]


def _unfold(value: str) -> str:
    """Folds replaced by one space, then stripped (an unfolded value is only stripped:
    ``_FOLD`` needs a LF)."""
    if "\n" not in value:
        return value.strip()
    return _FOLD.sub(" ", value).strip()

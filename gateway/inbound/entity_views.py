"""How the inbound agent reads an opened entity: protected fields, MIME fields only.

Role: sans-IO helpers of ``gateway.inbound.process`` (its step 3 and 4: which header
fields a decrypted or signed entity shows), moved out of it so that module keeps the
decisions. ``protected``: the protected header fields of an RFC 9788 Cryptographic
Payload (``hp`` parameter removed, ``HP-Outer`` fields dropped) or of a wrapped
``message/rfc822`` (RFC 8551 §3.1); ``mime_fields_only``: an entity that is neither
keeps its MIME fields only; ``is_orphan_continuation``: a folded line with no field
before it (RFC 5322 §2.2.3); ``with_mime_version``.

Invariants: bytes in, bytes out; an 8-bit octet in a Content-Type (an RFC 6532 file
name) is kept as it came (``mime.raw_field_value``).

Trust level: reads content that came out of a decryption or a signature; no I/O, no log.
"""

from __future__ import annotations

import re

from gateway.relay.protect import HeaderField, SplitMessage, header_fields
from gateway.smime import header_protection, mime, smime_parts

_HP_PARAMETER = re.compile(r';\s*hp\s*=\s*("[^"]*"|[^;\s]*)', re.IGNORECASE)


def protected_fields(entity: bytes) -> tuple[list[HeaderField], bytes, str] | None:
    """(protected fields, the entity to deliver, source) for a wrapped message or an
    RFC 9788 Cryptographic Payload; None for anything else."""
    parsed = mime.parse_entity(entity)
    if smime_parts.smime_kind(parsed) is smime_parts.SmimeKind.RFC822:
        inner = SplitMessage.of(parsed.body)
        return list(inner.fields), inner.entity, "wrapped"
    mode = header_protection.header_protection_mode(parsed)
    if mode is None:
        return None
    block, payload = mime.split_message(entity)
    fields = [field for field in header_fields(block) if field.key != "hp-outer"]
    return fields, without_hp_parameter(payload), f"hp-{mode}"


def without_hp_parameter(entity: bytes) -> bytes:
    """The entity with ``hp`` removed from its Content-Type: once unwrapped, it is no
    longer a Cryptographic Payload (RFC 9788 §2)."""
    parsed = mime.parse_entity(entity)
    raw = mime.raw_field_value(parsed.header, "Content-Type") or ""  # 8-bit octets kept
    value = _HP_PARAMETER.sub("", " ".join(raw.split()))
    header = mime.replace_header_field(parsed.header, "Content-Type", value)
    return header + mime.CRLF + entity[parsed.body_start :]


def mime_fields_only(entity: bytes) -> bytes:
    """The entity with only its MIME fields (module docstring, step 3), cut as
    ``mime.split_message`` cuts a message; the entity itself when it has no other line
    in its header block (the usual case: the body is not copied)."""
    header = mime.parse_entity(entity).header
    lines = header.split(mime.CRLF)[:-1] if header else []
    if lines and lines[0][:1] in (b" ", b"\t"):
        return mime.split_message(entity)[1]
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            continue
        name = line.split(b":", 1)[0].strip().lower()
        if not (name.startswith(b"content-") or name == b"mime-version"):
            return mime.split_message(entity)[1]
    return entity


def is_orphan_continuation(field: HeaderField) -> bool:
    """A folded line with no field before it in its block (module docstring, step 4)."""
    return field.raw[:1] in (b" ", b"\t")


def with_mime_version(entity: bytes) -> bytes:
    parsed = mime.parse_entity(entity)
    if parsed.header_values("MIME-Version"):
        return entity
    return b"MIME-Version: 1.0\r\n" + entity

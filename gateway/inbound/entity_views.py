"""How the inbound agent reads an opened entity: protected fields, MIME fields only.

Role: sans-IO helpers of ``gateway.inbound.process`` (its step 3 and 4: which header
fields a decrypted or signed entity shows), moved out of it so that module keeps the
decisions. ``protected``: the protected header fields of an RFC 9788 Cryptographic
Payload (``hp`` parameter removed, ``HP-Outer`` fields dropped) or of a wrapped
``message/rfc822`` (RFC 8551 §3.1); ``mime_fields_only``: an entity that is neither
keeps its MIME fields only; ``is_orphan_continuation``: a folded line with no field
before it (RFC 5322 §2.2.3); ``with_mime_version``.

Invariants: a parse in (``mime.parse_entity`` of the whole entity: the caller's, never
made twice), bytes out; an 8-bit octet in a Content-Type (an RFC 6532 file name) is kept
as it came (``mime.raw_field_value``). For a CRLF-canonical entity the header block of
that parse is split by hand in one pass (``_split_header``: what ``mime.split_message``
and ``header_fields`` give, without checking and copying the body again); any other goes
through ``mime.split_message`` as before. Both give the same bytes
(``tests/inbound/test_process_views.py`` compares them on generated blocks).

Trust level: reads content that came out of a decryption or a signature; no I/O, no log.
"""

from __future__ import annotations

import re

from gateway.relay.protect import HeaderField, SplitMessage, header_fields
from gateway.smime import header_protection, mime, smime_parts

_HP_PARAMETER = re.compile(r';\s*hp\s*=\s*("[^"]*"|[^;\s]*)', re.IGNORECASE)


def protected_fields(
    parsed: mime.MimeEntity, *, canonical: bool
) -> tuple[list[HeaderField], bytes, str] | None:
    """(protected fields, the entity to deliver, source) for a wrapped message or an
    RFC 9788 Cryptographic Payload; None for anything else.

    ``parsed``: the entity, parsed whole (``mime.parse_entity(entity)``). ``canonical``:
    the entity is known to be CRLF-canonical (the caller canonicalised it, or it is the
    part a detached signature covers in a canonicalised entity). Its parse then already
    cut the header block ``mime.split_message`` would cut, so only that block is split
    and the body is copied once, not checked, cut and copied again (session 9, ~40 us
    CPU a message; the same bytes out, ``tests/inbound/test_process_views.py``)."""
    if smime_parts.smime_kind(parsed) is smime_parts.SmimeKind.RFC822:
        inner = SplitMessage.of(parsed.body)
        return list(inner.fields), inner.entity, "wrapped"
    mode = header_protection.header_protection_mode(parsed)
    if mode is None:
        return None
    if canonical:
        fields, mime_block = _split_header(parsed.header)
        payload = _hp_removed(mime_block) + mime.CRLF + parsed.data[parsed.body_start :]
    else:
        block, whole_payload = mime.split_message(parsed.data)
        fields, payload = header_fields(block), without_hp_parameter(whole_payload)
    return [field for field in fields if field.name.lower() != "hp-outer"], payload, f"hp-{mode}"


def _split_header(header: bytes) -> tuple[list[HeaderField], bytes]:
    """(``header_fields`` of the non-MIME block, the MIME block) that
    ``mime.split_message`` cuts from a CRLF-canonical header block, in one pass over its
    lines: a continuation line goes with the field before it, a first line that is a
    continuation is a field of the non-MIME block (as there)."""
    outer: list[tuple[bytes, list[bytes]]] = []
    mime_lines: list[bytes] = []
    in_mime = False
    for line in header.split(mime.CRLF)[:-1] if header else []:
        name = line.split(b":", 1)[0].strip()
        if line[:1] in (b" ", b"\t"):
            if in_mime or outer:
                (mime_lines if in_mime else outer[-1][1]).append(line)
            else:
                outer.append((name, [line]))
            continue
        lowered = name.lower()
        in_mime = lowered.startswith(b"content-") or lowered == b"mime-version"
        if in_mime:
            mime_lines.append(line)
        else:
            outer.append((name, [line]))
    fields = [
        HeaderField(name.decode("ascii", "replace"), mime.CRLF.join(lines) + mime.CRLF)
        for name, lines in outer
    ]
    return fields, b"".join(line + mime.CRLF for line in mime_lines)


def without_hp_parameter(entity: bytes) -> bytes:
    """The entity with ``hp`` removed from its Content-Type: once unwrapped, it is no
    longer a Cryptographic Payload (RFC 9788 §2)."""
    parsed = mime.parse_entity(entity)
    return _hp_removed(parsed.header) + mime.CRLF + entity[parsed.body_start :]


def _hp_removed(header: bytes) -> bytes:
    """The header block with ``hp`` removed from its Content-Type."""
    raw = mime.raw_field_value(header, "Content-Type") or ""  # 8-bit octets kept
    value = _HP_PARAMETER.sub("", " ".join(raw.split()))
    return mime.replace_header_field(header, "Content-Type", value)


def mime_fields_only(parsed: mime.MimeEntity) -> bytes:
    """The entity (``parsed``: parsed whole) with only its MIME fields (module
    docstring, step 3), cut as ``mime.split_message`` cuts a message; the entity itself
    when it has no other line in its header block (the usual case: the body is not
    copied)."""
    header = parsed.header
    lines = header.split(mime.CRLF)[:-1] if header else []
    if lines and lines[0][:1] in (b" ", b"\t"):
        return mime.split_message(parsed.data)[1]
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            continue
        name = line.split(b":", 1)[0].strip().lower()
        if not (name.startswith(b"content-") or name == b"mime-version"):
            return mime.split_message(parsed.data)[1]
    return parsed.data


def is_orphan_continuation(field: HeaderField) -> bool:
    """A folded line with no field before it in its block (module docstring, step 4)."""
    return field.raw[:1] in (b" ", b"\t")


def with_mime_version(entity: bytes, parsed: mime.MimeEntity | None = None) -> bytes:
    """``entity`` with a MIME-Version field in front when it has none; ``parsed``: its
    parse when the caller has it (not parsed again)."""
    if parsed is None or parsed.data is not entity:
        parsed = mime.parse_entity(entity)
    if parsed.header_values("MIME-Version"):
        return entity
    return b"MIME-Version: 1.0\r\n" + entity

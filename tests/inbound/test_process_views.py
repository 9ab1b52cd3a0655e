"""``gateway.inbound.entity_views`` on a parse the caller already has (session 9, CPU per
message): the fast path for a CRLF-canonical entity gives the same bytes as the general
one (``canonical=False``: ``mime.split_message`` over the whole entity, as before).

Generated header blocks mix outer fields, HP-Outer fields, MIME fields (folded, 8-bit
file names, MIME-Version or not, ``hp`` anywhere in the Content-Type) and odd lines (a
field without a colon, a continuation first); each block is checked with both paths,
and ``mime_fields_only`` / ``with_mime_version`` on a parse against a fresh one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.inbound.entity_views import (
    mime_fields_only,
    protected_fields,
    with_mime_version,
)
from gateway.smime import mime

OUTER = [
    b"From: Claire <claire.durand@clinique-b.test>",
    b"To: Alice <alice.martin@chu-a.test>",
    b"Subject: =?utf-8?q?Compte_rendu?=",
    b"Subject: folded\r\n\tover two lines",
    b"HP-Outer: Subject: [...]",
    b"hp-outer: From: Claire <claire.durand@clinique-b.test>",
    b"Message-ID: <v1@clinique-b.test>",
    b"X-Odd : spaced name",
    b"a line without a colon",
]
MIME = [
    b"MIME-Version: 1.0",
    b"mime-version: 1.0",
    b'Content-Type: text/plain; charset=utf-8; hp="cipher"',
    b"Content-Type: text/plain; hp=clear; charset=utf-8",
    b'Content-Type: text/plain;\r\n hp="cipher";\r\n\tcharset=utf-8',
    b'Content-Type: text/plain; name="r\xc3\xa9sum\xc3\xa9.txt"; hp="clear"',
    b"Content-Transfer-Encoding: 8bit",
    b"Content-Disposition: inline",
]
BODIES = [b"", b"Bonjour.\r\n", b"line\r\n\r\nafter an empty line\r\nFrom: not a field\r\n"]


def entity_of(lines: list[bytes], body: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(OUTER + MIME), max_size=10),
    st.sampled_from(BODIES),
    st.sampled_from([b"", b" a continuation first", b"\tContent-Type: text/plain; hp=clear"]),
)
def test_the_canonical_path_gives_the_same_bytes(
    lines: list[bytes], body: bytes, first: bytes
) -> None:
    if first:
        lines = [first, *lines]
    entity = entity_of(lines, body)
    assert mime.is_crlf_canonical(entity)
    parsed = mime.parse_entity(entity)
    fast = protected_fields(parsed, canonical=True)
    general = protected_fields(parsed, canonical=False)
    if general is None:
        assert fast is None
        return
    assert fast is not None
    assert [f.raw for f in fast[0]] == [f.raw for f in general[0]]
    assert fast[1:] == general[1:]
    assert with_mime_version(fast[1], parsed) == with_mime_version(fast[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(OUTER + MIME), max_size=8), st.sampled_from(BODIES))
def test_mime_fields_only_and_mime_version_on_a_parse(lines: list[bytes], body: bytes) -> None:
    entity = entity_of(lines, body)
    parsed = mime.parse_entity(entity)
    kept = mime_fields_only(parsed)
    again = mime.parse_entity(kept)
    assert with_mime_version(kept, parsed) == with_mime_version(kept, again)
    assert with_mime_version(kept, None) == with_mime_version(kept, again)


def test_a_payload_keeps_its_body_and_loses_hp_and_outer_fields() -> None:
    entity = entity_of([OUTER[0], OUTER[4], MIME[2]], b"Bonjour.\r\n")
    found = protected_fields(mime.parse_entity(entity), canonical=True)
    assert found is not None
    fields, payload, source = found
    assert [f.raw for f in fields] == [OUTER[0] + b"\r\n"]
    assert payload == b"Content-Type: text/plain; charset=utf-8\r\n\r\nBonjour.\r\n"
    assert source == "hp-cipher"


def test_a_parse_of_other_bytes_is_not_trusted_for_mime_version() -> None:
    with_version = entity_of([MIME[0], b"Content-Type: text/plain"], b"x\r\n")
    without = entity_of([b"Content-Type: text/plain"], b"x\r\n")
    assert with_mime_version(without, mime.parse_entity(with_version)).startswith(
        b"MIME-Version: 1.0\r\n"
    )

"""Unit tests of gateway.smime.mime, transfer, smime_parts and header_protection: canonical
form, 7-bit encoding, base64, wrappers."""

from __future__ import annotations

import base64
import binascii
import os

import pytest

from gateway.smime import header_protection, mime, smime_parts, transfer
from gateway.smime.types import MalformedMessage

MIXED = (
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"h\xc3\xa9las, trailing space \r\n"
    b"From the start\r\n"
    b"--b1 \t\r\n"  # transport padding after the delimiter (RFC 2046 5.1.1)
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"\x00\x01\xff\r\n\x80"
    b"\r\n--b1\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"--b1x is not a delimiter\r\n"
    b"ascii only\r\n"
    b"--b1--\r\n"
    b"epilogue\r\n"
)


def _parts(entity: bytes) -> list[mime.MimeEntity]:
    top = mime.parse_entity(entity)
    boundary = top.param("boundary")
    assert boundary
    spans = mime.split_multipart(entity, boundary, top.body_start, top.body_end)
    return [mime.parse_entity(entity, start, end) for start, end in spans.parts]


def test_canonicalize_handles_every_line_end() -> None:
    assert mime.canonicalize_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"
    assert mime.canonicalize_crlf(b"a\nb\n") == b"a\r\nb\r\n"
    canonical = b"a\r\nb\r\n"
    assert mime.canonicalize_crlf(canonical) is canonical  # no copy when already canonical


def test_base64_lines_are_76_characters_with_crlf() -> None:
    data = os.urandom(10_000)
    encoded = transfer.base64_lines(data)
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == 76 for line in lines[:-2])
    assert 0 < len(lines[-2]) <= 76
    assert base64.b64decode(encoded) == data
    assert transfer.base64_decode(encoded) == data
    assert transfer.base64_lines(b"") == b""


def test_base64_decode_rejects_bad_padding() -> None:
    with pytest.raises(MalformedMessage):
        transfer.base64_decode(b"QUJD\r\nR")


def test_make_7bit_reencodes_only_what_a_relay_would_break() -> None:
    out = transfer.make_7bit(MIXED)
    assert out.isascii()
    assert mime.is_crlf_canonical(out)
    text, binary, ascii_part = _parts(out)
    assert text.transfer_encoding == "quoted-printable"
    assert transfer.body_bytes(text) == b"h\xc3\xa9las, trailing space \r\nFrom the start"
    assert b"\r\n=46rom the start" in text.body  # mbox "From " protection
    assert b"space=20" in text.body  # trailing white space survives relays
    assert binary.transfer_encoding == "base64"
    assert transfer.body_bytes(binary) == b"\x00\x01\xff\r\n\x80"
    # the 7-bit part, the preamble, the padded delimiter and the epilogue keep their bytes
    original_ascii = _parts(MIXED)[2]
    assert ascii_part.header + b"\r\n" + ascii_part.body == (
        original_ascii.header + b"\r\n" + original_ascii.body
    )
    assert out.startswith(MIXED[: MIXED.index(b"--b1\r\n")])
    assert out.endswith(b"--b1--\r\nepilogue\r\n")
    assert b"--b1 \t\r\n" in out


def test_make_7bit_returns_a_7bit_entity_unchanged() -> None:
    entity = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    assert transfer.make_7bit(entity) is entity
    declared_8bit = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\nhi\r\n"
    assert transfer.make_7bit(declared_8bit) == declared_8bit


def test_make_7bit_long_lines_are_encoded() -> None:
    long_line = b"x" * 1500
    entity = b"Content-Type: text/plain\r\n\r\n" + long_line + b"\r\n"
    out = transfer.make_7bit(entity)
    assert b"Content-Transfer-Encoding: quoted-printable" in out
    assert max(len(line) for line in out.split(b"\r\n")) <= 76
    assert binascii.a2b_qp(mime.parse_entity(out).body) == long_line + b"\r\n"
    exactly_998 = b"Content-Type: text/plain\r\n\r\n" + b"y" * 998 + b"\r\n"
    assert transfer.make_7bit(exactly_998) is exactly_998


def test_make_7bit_recurses_into_wrapped_messages() -> None:
    inner = b"From: a@b.test\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n"
    entity = (
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + inner
        + b"\r\ncaf\xc3\xa9\r\n"
    )
    out = transfer.make_7bit(entity)
    assert out.isascii()
    outer = mime.parse_entity(out)
    assert outer.transfer_encoding == "7bit"
    wrapped = mime.parse_entity(out, outer.body_start, outer.body_end)
    assert wrapped.transfer_encoding == "quoted-printable"
    assert transfer.body_bytes(wrapped) == b"caf\xc3\xa9\r\n"


def test_make_7bit_refuses_an_8bit_multipart_without_boundary() -> None:
    with pytest.raises(MalformedMessage):
        transfer.make_7bit(b"Content-Type: multipart/mixed\r\n\r\n\xff\r\n")


def test_split_multipart_without_delimiter_is_malformed() -> None:
    data = b"no delimiter here\r\n"
    with pytest.raises(MalformedMessage):
        mime.split_multipart(data, "zz", 0, len(data))


def test_split_multipart_empty_part_and_missing_close() -> None:
    body = b"--b\r\n--b\r\nContent-Type: text/plain\r\n\r\nx"
    spans = mime.split_multipart(body, "b", 0, len(body))
    assert not spans.closed
    assert [body[s:e] for s, e in spans.parts] == [b"", b"Content-Type: text/plain\r\n\r\nx"]


def test_pkcs7_mime_entity() -> None:
    der = os.urandom(300)
    entity = smime_parts.pkcs7_mime_entity(der, "authEnveloped-data")
    parsed = mime.parse_entity(entity)
    assert parsed.content_type == "application/pkcs7-mime"
    assert smime_parts.smime_type(parsed) == "authEnveloped-data"
    assert parsed.param("name") == "smime.p7m"
    assert smime_parts.smime_kind(parsed) is smime_parts.SmimeKind.PKCS7_MIME
    assert transfer.body_bytes(parsed) == der
    with pytest.raises(ValueError, match="smime-type"):
        smime_parts.pkcs7_mime_entity(der, "bogus")
    with pytest.raises(ValueError, match="file name"):
        smime_parts.pkcs7_mime_entity(der, "signed-data", name='x"\r\nBcc: evil')


def test_multipart_signed_round_trip() -> None:
    content = b"Content-Type: text/plain\r\n\r\nsigned text\r\n"
    entity = smime_parts.multipart_signed(content, b"\x30\x00", "sha-256")
    parsed = mime.parse_entity(entity)
    assert smime_parts.smime_kind(parsed) is smime_parts.SmimeKind.MULTIPART_SIGNED
    parts = smime_parts.parse_multipart_signed(parsed)
    assert parts.content == content
    assert parts.signature == b"\x30\x00"
    assert parts.micalgs == ("sha-256",)
    assert parts.protocol == "application/pkcs7-signature"
    with pytest.raises(ValueError, match="boundary"):
        smime_parts.multipart_signed(b"--fixed in content", b"", boundary="fixed")


def test_multipart_signed_needs_two_parts() -> None:
    entity = (
        b'Content-Type: multipart/signed; boundary="q"; protocol="application/pkcs7-signature"'
        b"\r\n\r\n--q\r\nContent-Type: text/plain\r\n\r\nonly one\r\n--q--\r\n"
    )
    with pytest.raises(MalformedMessage, match="1 parts"):
        smime_parts.parse_multipart_signed(mime.parse_entity(entity))


def test_legacy_octet_stream_p7m_is_recognised() -> None:
    entity = b'Content-Type: application/octet-stream; name="smime.p7m"\r\n\r\nAAAA\r\n'
    assert smime_parts.smime_kind(mime.parse_entity(entity)) is smime_parts.SmimeKind.PKCS7_MIME


def test_split_message_moves_content_fields_into_the_entity() -> None:
    message = (
        b"From: a@b.test\nSubject: long\n folded\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain;\n charset=utf-8\n\nbody\n"
    )
    outer, entity = mime.split_message(message)
    assert outer == b"From: a@b.test\r\nSubject: long\r\n folded\r\n"
    assert entity == (
        b"MIME-Version: 1.0\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody\r\n"
    )


def test_with_protected_headers() -> None:
    entity = b'Content-Type: text/plain; charset=us-ascii; hp="clear"\r\n\r\nbody\r\n'
    out = header_protection.with_protected_headers(
        entity, [("Subject", "Patient X"), ("From", "a@b")], "cipher"
    )
    parsed = mime.parse_entity(out)
    assert header_protection.header_protection_mode(parsed) == "cipher"
    assert header_protection.protected_header_fields(parsed) == [
        ("Subject", "Patient X"),
        ("From", "a@b"),
    ]
    assert parsed.body == b"body\r\n"
    assert out.count(b"hp=") == 1
    with pytest.raises(ValueError, match="line break"):
        header_protection.with_protected_headers(entity, [("Subject", "x\r\nBcc: y")])
    with pytest.raises(ValueError, match="hp"):
        header_protection.with_protected_headers(entity, [], "other")


def test_hostile_rfc2231_parameter_does_not_raise() -> None:
    entity = b"Content-Type: text/plain; name*0*=x''%ff%fe; name*1*=%zz\r\n\r\nx"
    parsed = mime.parse_entity(entity)
    assert parsed.content_type == "text/plain"
    parsed.param("name")  # any value or None, never an exception


@pytest.mark.parametrize("size", [0, 1, 57, 58, 57 * 2048, 57 * 2048 + 5, 300_001])
def test_base64_lines_with_and_without_pybase64(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    data = os.urandom(size)
    expected = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert transfer.base64_lines(data) == expected
    monkeypatch.setattr(transfer, "_HAVE_PYBASE64", False)
    assert transfer.base64_lines(data) == expected
    assert transfer.base64_decode(expected) == data

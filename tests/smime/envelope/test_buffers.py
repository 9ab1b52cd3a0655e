"""Streaming output helpers: base64 lines identical to transfer.base64_lines, buffers that
come back as bytes, and large messages crossing the chunk boundaries."""

from __future__ import annotations

import base64
import os

import pytest

from gateway.smime import buffers
from gateway.smime.decrypt import decrypt, decrypt_entity
from gateway.smime.encrypt import Recipient, encrypt, encrypt_entity
from gateway.smime.transfer import base64_lines
from tests.smime.envelope.identities import ALICE, ERIN, EnvelopePki


@pytest.mark.parametrize(
    "pieces",
    [
        [b""],
        [b"a"],
        [b"x" * 57],
        [b"x" * 56, b"y", b"z" * 58],
        [os.urandom(10), os.urandom(100_000), os.urandom(3), os.urandom(57 * 16384 + 5)],
    ],
)
def test_base64_stream_equals_one_shot(pieces: list[bytes]) -> None:
    whole = b"".join(pieces)
    out = buffers.presized(buffers.base64_lines_length(len(whole)))
    sink = buffers.Base64Lines(out)
    for piece in pieces:
        sink.write(piece)
    sink.close()
    result = buffers.finish(out)
    assert result == base64_lines(whole)
    assert len(result) == buffers.base64_lines_length(len(whole))


def test_presized_buffer_and_finish() -> None:
    out = buffers.presized(10)
    out.write(b"abc")
    assert buffers.finish(out) == b"abc"
    out = buffers.presized(10)
    out.write(b"0123456789")
    assert buffers.finish(out, 4) == b"0123"
    assert buffers.finish(buffers.presized(0)) == b""


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "aes-128-gcm"])
def test_large_message_crosses_chunks(envelope_pki: EnvelopePki, cipher: str) -> None:
    content = os.urandom(buffers.CHUNK * 2 + 12_345)
    recipients = [Recipient(envelope_pki.cert(ALICE)), Recipient(envelope_pki.cert(ERIN), "ecdh")]
    message = encrypt(content, recipients, cipher=cipher)
    assert decrypt(message, [envelope_pki.key(ERIN)]).content == content
    entity = encrypt_entity(content, recipients, cipher=cipher)
    body = entity.split(b"\r\n\r\n", 1)[1]
    assert decrypt(base64.b64decode(body), [envelope_pki.key(ALICE)]).content == content
    assert decrypt_entity(entity, [envelope_pki.key(ALICE)]).content == content

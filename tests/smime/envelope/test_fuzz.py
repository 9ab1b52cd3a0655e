"""Property: decrypting any mutation of a valid message either succeeds or raises
DecryptError with the public text, never another exception (hypothesis).

``FUZZ_EXAMPLES=5000`` runs a longer campaign (default 300, a couple of seconds)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.smime.decrypt import decrypt
from gateway.smime.encrypt import Recipient, encrypt
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.types import PUBLIC_DECRYPT_ERROR, DecryptError
from tests.smime.envelope.identities import ALICE, ERIN, EnvelopePki

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
CONTENT = b"Content-Type: text/plain\r\n\r\nfuzz me\r\n"


@pytest.fixture(scope="module")
def corpus(envelope_pki: EnvelopePki) -> tuple[list[bytes], list[DecryptionKey]]:
    messages = [
        encrypt(CONTENT, [Recipient(envelope_pki.cert(ALICE), kt, idt)], cipher=cipher)
        for cipher in ("aes-256-cbc", "aes-128-gcm")
        for kt, idt in (("rsa-pkcs1v15", "issuer-serial"), ("rsa-oaep", "ski"))
    ]
    messages.append(
        encrypt(
            CONTENT,
            [Recipient(envelope_pki.cert(ERIN), "ecdh"), Recipient(envelope_pki.cert(ALICE))],
            cipher="aes-256-gcm",
        )
    )
    return messages, [envelope_pki.key(ALICE), envelope_pki.key(ERIN)]


@st.composite
def mutated(draw: st.DrawFn, size: int) -> tuple[int, list[tuple[str, int, bytes]]]:
    """An index into the corpus and a few edits (flip, cut, insert, delete, overwrite)."""
    index = draw(st.integers(0, size - 1))
    edits = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["flip", "cut", "insert", "delete", "overwrite"]),
                st.integers(0, 4000),
                st.binary(min_size=1, max_size=8),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return index, edits


def _apply(message: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(message)
    for kind, position, payload in edits:
        at = position % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] ^= payload[0] or 1
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = payload
        elif kind == "delete":
            del data[at : at + len(payload)]
        elif kind == "overwrite":
            data[at : at + len(payload)] = payload
    return bytes(data)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=mutated(5))
def test_mutations_never_escape_the_contract(
    corpus: tuple[list[bytes], list[DecryptionKey]], case: tuple[int, list[tuple[str, int, bytes]]]
) -> None:
    messages, keys = corpus
    index, edits = case
    data = _apply(messages[index], edits)
    try:
        result = decrypt(data, keys, accept_3des=True)
    except DecryptError as error:
        assert str(error) == PUBLIC_DECRYPT_ERROR
        return
    # success is possible (an edit in a field that does not matter, or CBC garbage that
    # happens to pad correctly); an authenticated result must be the real content
    if result.authenticated:
        assert result.content == CONTENT


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(DecryptError):
        decrypt(data, [])

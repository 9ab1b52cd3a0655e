"""Property tests: ``verify`` never raises, whatever the bytes (hypothesis)."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.smime import smime_parts
from gateway.smime.sign import sign_der
from gateway.smime.verify import verify
from tests.smime.signverify.identities import ALICE, AcceptAll, SignPki

TEXT = b"Content-Type: text/plain\r\n\r\nfuzz\r\n"
_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis directory in the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    result = verify(data, validator=AcceptAll(), from_address=ALICE)
    assert not result.valid


@_SETTINGS
@given(st.data())
def test_mutated_signature(sv_pki: SignPki, data: st.DataObject) -> None:
    cms_der = _signature(sv_pki)
    position = data.draw(st.integers(0, len(cms_der) - 1))
    replacement = data.draw(st.binary(min_size=0, max_size=8))
    mutated = cms_der[:position] + replacement + cms_der[position + 1 :]
    entity = smime_parts.multipart_signed(TEXT, mutated)
    result = verify(entity, validator=AcceptAll(), from_address=ALICE)
    assert result.valid or result.reason  # never an exception; a reason whenever invalid


@_SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["signed-data", "enveloped-data"]))
def test_random_pkcs7_mime_bodies(body: bytes, smime_type: str) -> None:
    entity = (
        f"Content-Type: application/pkcs7-mime; smime-type={smime_type}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(b"\x30\x82" + body)
    assert not verify(entity, validator=AcceptAll(), from_address=ALICE).valid


@_SETTINGS
@given(st.lists(st.sampled_from([b"--b", b"\r\n", b"--", b"Content-Type: x", b"\r\n\r\n", b"a"])))
def test_multipart_structure_soup(pieces: list[bytes]) -> None:
    entity = (
        b'Content-Type: multipart/signed; boundary="b"; micalg=sha-256;'
        b' protocol="application/pkcs7-signature"\r\n\r\n' + b"".join(pieces)
    )
    assert not verify(entity, validator=AcceptAll(), from_address=ALICE).valid


_CACHE: dict[int, bytes] = {}


def _signature(pki: SignPki) -> bytes:
    if id(pki) not in _CACHE:
        alice = pki[ALICE]
        _CACHE[id(pki)] = sign_der(TEXT, alice.cert, alice.key, pki.intermediates)
    return _CACHE[id(pki)]

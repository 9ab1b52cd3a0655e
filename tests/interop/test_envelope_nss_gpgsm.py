"""Envelope interop with NSS ``cmsutil`` (Thunderbird's CMS library, 3.87) and GnuPG
``gpgsm`` 2.2: both speak AES-CBC with RSA PKCS#1 v1.5 only (no OAEP, GCM or ECDH in
these versions); NSS writes BER with indefinite lengths and split content."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.smime.decrypt import decrypt
from gateway.smime.encrypt import Recipient, encrypt
from tests.peers.cms_tools import Gpgsm, NssCmsutil
from tests.smime.envelope.identities import (
    ALICE,
    BOB,
    CLAIRE,
    EnvelopePki,
    shared_envelope_pki,
)

pytestmark = pytest.mark.peer

CONTENT = b"Content-Type: text/plain\r\n\r\n" + b"Ordonnance: 1 boite.\r\n" * 400


@pytest.fixture(scope="session")
def envelope_pki(tmp_path_factory: pytest.TempPathFactory) -> EnvelopePki:
    return shared_envelope_pki(tmp_path_factory)


@pytest.fixture
def nss(envelope_pki: EnvelopePki) -> Iterator[NssCmsutil]:
    """NSS holding ALICE's encryption identity and knowing BOB's certificate."""
    pki = envelope_pki.pki
    with NssCmsutil() as tool:
        tool.trust_root(pki.root_cert)
        tool.import_certificate(pki.ca_cert("personnes"), "personnes")
        tool.import_identity(
            envelope_pki.cert_paths[ALICE],
            envelope_pki.key_path(ALICE),
            nickname=ALICE,
            chain=pki.intermediates,
        )
        tool.import_certificate(envelope_pki.cert_paths[BOB], BOB)
        yield tool


@pytest.fixture
def gpgsm(envelope_pki: EnvelopePki) -> Iterator[Gpgsm]:
    """gpgsm holding CLAIRE's encryption identity and knowing BOB's certificate."""
    pki = envelope_pki.pki
    with Gpgsm() as tool:
        tool.trust_root(pki.root_cert)
        tool.import_certificate(pki.intermediates)
        tool.import_identity(
            envelope_pki.cert_paths[CLAIRE], envelope_pki.key_path(CLAIRE), chain=pki.intermediates
        )
        tool.import_certificate(envelope_pki.cert_paths[BOB])
        yield tool


def test_nss_to_us(nss: NssCmsutil, envelope_pki: EnvelopePki) -> None:
    message = nss.encrypt(CONTENT, [ALICE, BOB])
    assert message[1] == 0x80  # BER, indefinite length: what NSS writes
    for who in (ALICE, BOB):
        result = decrypt(message, [envelope_pki.key(who)])
        assert result.content == CONTENT
        assert result.key_transport == "rsa-pkcs1v15"
        assert result.cipher.endswith("-cbc")


@pytest.mark.parametrize("cipher", ["aes-128-cbc", "aes-256-cbc"])
@pytest.mark.parametrize("id_type", ["issuer-serial", "ski"])
def test_us_to_nss(nss: NssCmsutil, envelope_pki: EnvelopePki, cipher: str, id_type: str) -> None:
    recipients = [
        Recipient(envelope_pki.cert(BOB)),
        Recipient(envelope_pki.cert(ALICE), id_type=id_type),
    ]
    assert nss.decrypt(encrypt(CONTENT, recipients, cipher=cipher)) == CONTENT


def test_gpgsm_to_us(gpgsm: Gpgsm, envelope_pki: EnvelopePki) -> None:
    message = gpgsm.encrypt(CONTENT, [CLAIRE, BOB])
    for who in (CLAIRE, BOB):
        result = decrypt(message, [envelope_pki.key(who)])
        assert result.content == CONTENT
        assert (result.key_transport, result.recipient_id.kind) == (
            "rsa-pkcs1v15",
            "issuer-serial",
        )


@pytest.mark.parametrize("cipher", ["aes-128-cbc", "aes-256-cbc"])
def test_us_to_gpgsm(gpgsm: Gpgsm, envelope_pki: EnvelopePki, cipher: str) -> None:
    """gpgsm 2.2 finds its key by issuerAndSerialNumber only; another recipient it does
    not hold is present too (its exit status 2 case)."""
    recipients = [Recipient(envelope_pki.cert(ALICE)), Recipient(envelope_pki.cert(CLAIRE))]
    assert gpgsm.decrypt(encrypt(CONTENT, recipients, cipher=cipher)) == CONTENT

"""The choice of content cipher and key transport (issue §2's auto rule)."""

from __future__ import annotations

import pytest

from gateway.smime.algorithms import choose_algorithms, choose_for_recipients
from gateway.smime.types import EncryptError, RecipientCapabilities
from tests.smime.envelope.identities import ALICE, BOB, ERIN, EnvelopePki

GCM_OAEP = RecipientCapabilities(aes_gcm=True, rsa_oaep=True, source="signed-message")
AES128_GCM_ONLY = RecipientCapabilities(
    aes_gcm=True, ciphers=("2.16.840.1.101.3.4.1.6", "2.16.840.1.101.3.4.1.2")
)


def test_unknown_recipient_gets_the_safe_default(envelope_pki: EnvelopePki) -> None:
    assert choose_algorithms(envelope_pki.cert(ALICE), None) == ("aes-256-cbc", "rsa-pkcs1v15")
    empty = RecipientCapabilities()
    assert choose_algorithms(envelope_pki.cert(ALICE), empty) == ("aes-256-cbc", "rsa-pkcs1v15")


def test_known_capabilities_enable_gcm_and_oaep(envelope_pki: EnvelopePki) -> None:
    assert choose_algorithms(envelope_pki.cert(ALICE), GCM_OAEP) == ("aes-256-gcm", "rsa-oaep")
    only_oaep = RecipientCapabilities(rsa_oaep=True)
    assert choose_algorithms(envelope_pki.cert(ALICE), only_oaep) == ("aes-256-cbc", "rsa-oaep")
    assert choose_algorithms(envelope_pki.cert(ALICE), AES128_GCM_ONLY)[0] == "aes-128-gcm"


def test_ec_recipients_always_use_ecdh(envelope_pki: EnvelopePki) -> None:
    assert choose_algorithms(envelope_pki.cert(ERIN), None) == ("aes-256-cbc", "ecdh")
    assert choose_algorithms(envelope_pki.cert(ERIN), None, key_transport="rsa-oaep") == (
        "aes-256-cbc",
        "ecdh",
    )


def test_explicit_configuration_is_honoured(envelope_pki: EnvelopePki) -> None:
    cert = envelope_pki.cert(ALICE)
    assert choose_algorithms(cert, None, "aes-128-gcm", "rsa-oaep") == ("aes-128-gcm", "rsa-oaep")
    assert choose_algorithms(cert, GCM_OAEP, "aes-256-cbc", "rsa-pkcs1v15") == (
        "aes-256-cbc",
        "rsa-pkcs1v15",
    )
    for bad_cipher in ("des-ede3-cbc", "aes-192-cbc", "nope"):
        with pytest.raises(EncryptError):
            choose_algorithms(cert, None, bad_cipher)
    with pytest.raises(EncryptError):
        choose_algorithms(cert, None, key_transport="ecdh")


def test_several_recipients_share_one_cipher(envelope_pki: EnvelopePki) -> None:
    alice, bob, erin = (envelope_pki.cert(n) for n in (ALICE, BOB, ERIN))
    all_modern = choose_for_recipients([(alice, GCM_OAEP), (erin, GCM_OAEP)])
    assert all_modern.cipher == "aes-256-gcm"
    assert all_modern.key_transports == ("rsa-oaep", "ecdh")
    one_legacy = choose_for_recipients([(alice, GCM_OAEP), (bob, None), (erin, GCM_OAEP)])
    assert one_legacy.cipher == "aes-256-cbc"
    assert one_legacy.key_transports == ("rsa-oaep", "rsa-pkcs1v15", "ecdh")
    narrowest = choose_for_recipients([(alice, GCM_OAEP), (bob, AES128_GCM_ONLY)])
    assert narrowest.cipher == "aes-128-gcm"
    with pytest.raises(EncryptError):
        choose_for_recipients([])

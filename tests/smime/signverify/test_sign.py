"""Signing: structure and attributes of what ``gateway.smime.sign`` produces, read back
with asn1crypto (independently of our verifier)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.smime import mime, smime_parts, transfer
from gateway.smime.capabilities import (
    AES128_CBC,
    AES128_GCM,
    AES256_CBC,
    AES256_GCM,
    RSAES_OAEP,
    parse_capabilities,
)
from gateway.smime.sign import sign, sign_der
from gateway.smime.types import SignError
from tests.smime.signverify.identities import ALICE, EDDIE, SignPki

ENTITY = (
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    b"\r\n\xc3\xa9\r\n"
)


def _signer_info(cms_der: bytes) -> tuple[cms.SignedData, cms.SignerInfo]:
    signed_data = cms.ContentInfo.load(cms_der)["content"]
    return signed_data, signed_data["signer_infos"][0]


def _attributes(signer_info: cms.SignerInfo) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for attribute in signer_info["signed_attrs"]:
        found.setdefault(attribute["type"].dotted, []).append(attribute["values"].dump())
    return found


def test_detached_signature_has_every_attribute(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    enc = sv_pki.enc[ALICE]
    when = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
    content = transfer.make_7bit(ENTITY)
    der = sign_der(
        content,
        alice.cert,
        alice.key,
        sv_pki.intermediates,
        encryption_cert=enc,
        signing_time=when,
    )
    signed_data, signer_info = _signer_info(der)
    assert signed_data["version"].native == "v1"
    assert signed_data["encap_content_info"]["content"].native is None  # detached
    assert signer_info["digest_algorithm"]["algorithm"].native == "sha256"
    attrs = _attributes(signer_info)
    assert all(len(values) == 1 for values in attrs.values())  # no duplicate
    assert set(attrs) == {
        "1.2.840.113549.1.9.3",
        "1.2.840.113549.1.9.4",
        "1.2.840.113549.1.9.5",
        "1.2.840.113549.1.9.15",
        "1.2.840.113549.1.9.16.2.11",
        "1.2.840.113549.1.9.16.2.47",
        "1.3.6.1.4.1.311.16.4",
    }
    by_name = {
        a["type"].native: a["values"]
        for a in signer_info["signed_attrs"]
        if a["type"].dotted != "1.3.6.1.4.1.311.16.4"
    }
    assert by_name["content_type"][0].native == "data"
    assert by_name["message_digest"][0].native == hashlib.sha256(content).digest()
    assert by_name["signing_time"][0].native == when
    pref = by_name["encrypt_key_pref"][0]
    assert pref.name == "issuer_and_serial_number"
    assert pref.chosen["serial_number"].native == enc.serial_number
    ess = by_name["signing_certificate_v2"][0]
    cert_der = alice.cert.public_bytes(serialization.Encoding.DER)
    assert ess["certs"][0]["cert_hash"].native == hashlib.sha256(cert_der).digest()
    assert ess["certs"][0]["issuer_serial"]["serial_number"].native == alice.cert.serial_number
    caps = parse_capabilities(by_name["smime_capabilities"][0].dump())
    assert caps.ciphers == (AES256_GCM, AES128_GCM, AES256_CBC, AES128_CBC, RSAES_OAEP)
    assert caps.aes_gcm and caps.rsa_oaep
    # the signed attributes are DER: SET OF sorted by encoding
    encodings = [a.dump() for a in signer_info["signed_attrs"]]
    assert encodings == sorted(encodings)
    # certificates: signer, both intermediates and the encryption certificate, each once
    carried = {
        c.chosen["tbs_certificate"]["serial_number"].native for c in signed_data["certificates"]
    }
    expected = {
        alice.cert.serial_number,
        enc.serial_number,
        *(c.serial_number for c in sv_pki.intermediates),
    }
    assert carried == expected
    # the signature covers the SET re-tagging of the attributes (RFC 5652 5.4)
    signed_bytes = b"\x31" + signer_info["signed_attrs"].dump()[1:]
    assert isinstance(alice.cert.public_key(), rsa.RSAPublicKey)
    alice.cert.public_key().verify(  # type: ignore[union-attr]
        signer_info["signature"].native, signed_bytes, padding.PKCS1v15(), hashes.SHA256()
    )


def test_opaque_signature_carries_the_content(sv_ec_pki: SignPki) -> None:
    alice = sv_ec_pki[ALICE]
    out = sign(ENTITY, alice.cert, alice.key, sv_ec_pki.intermediates, detached=False)
    entity = mime.parse_entity(out)
    assert smime_parts.smime_type(entity) == "signed-data"
    signed_data, signer_info = _signer_info(transfer.body_bytes(entity))
    content = signed_data["encap_content_info"]["content"].native
    assert content == transfer.make_7bit(ENTITY)
    assert signer_info["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
    signed_bytes = b"\x31" + signer_info["signed_attrs"].dump()[1:]
    key = alice.cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signer_info["signature"].native, signed_bytes, ec.ECDSA(hashes.SHA256()))


def test_detached_entity_headers(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    out = sign(ENTITY, alice.cert, alice.key)
    assert out.isascii() and mime.is_crlf_canonical(out)
    entity = mime.parse_entity(out)
    assert entity.content_type == "multipart/signed"
    assert entity.param("protocol") == "application/pkcs7-signature"
    assert entity.param("micalg") == "sha-256"
    parts = smime_parts.parse_multipart_signed(entity)
    assert parts.content == transfer.make_7bit(ENTITY)


def test_ed25519_uses_sha512_and_micalg(sv_pki: SignPki) -> None:
    eddie = sv_pki[EDDIE]
    out = sign(ENTITY, eddie.cert, eddie.key)
    entity = mime.parse_entity(out)
    assert entity.param("micalg") == "sha-512"
    _, signer_info = _signer_info(smime_parts.parse_multipart_signed(entity).signature)
    assert signer_info["digest_algorithm"]["algorithm"].native == "sha512"
    assert signer_info["signature_algorithm"]["algorithm"].native == "ed25519"


def test_no_capabilities_and_no_encryption_preference(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]  # a signature certificate: digitalSignature only
    _, signer_info = _signer_info(sign_der(b"x", alice.cert, alice.key, capabilities=None))
    attrs = _attributes(signer_info)
    assert "1.2.840.113549.1.9.15" not in attrs
    assert "1.2.840.113549.1.9.16.2.11" not in attrs  # cannot receive encrypted mail


def test_rsa_pss_parameters(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    _, signer_info = _signer_info(sign_der(b"x", alice.cert, alice.key, rsa_pss=True))
    algorithm = signer_info["signature_algorithm"]
    assert algorithm["algorithm"].native == "rsassa_pss"
    params = algorithm["parameters"]
    assert params["hash_algorithm"]["algorithm"].native == "sha256"
    assert params["mask_gen_algorithm"]["parameters"]["algorithm"].native == "sha256"
    assert params["salt_length"].native == 32


def test_key_must_match_certificate(sv_pki: SignPki) -> None:
    from tests.smime.signverify.identities import BOB

    with pytest.raises(SignError, match="does not match"):
        sign(ENTITY, sv_pki[ALICE].cert, sv_pki[BOB].key)


def test_small_rsa_key_refused(sv_pki: SignPki) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    with pytest.raises(SignError, match="1024"):
        sign(ENTITY, sv_pki[ALICE].cert, weak)


def test_unsupported_key_type_refused(sv_pki: SignPki) -> None:
    with pytest.raises(SignError, match="unsupported"):
        sign(ENTITY, sv_pki[ALICE].cert, object())


def test_signing_time_after_2049_is_generalized_time(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    when = datetime(2051, 1, 1, tzinfo=UTC)
    _, signer_info = _signer_info(sign_der(b"x", alice.cert, alice.key, signing_time=when))
    for attribute in signer_info["signed_attrs"]:
        if attribute["type"].native == "signing_time":
            assert attribute["values"][0].name == "generalized_time"
            assert attribute["values"][0].native == when


def test_ess_issuer_serial_names_the_issuer(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    _, signer_info = _signer_info(sign_der(b"x", alice.cert, alice.key))
    for attribute in signer_info["signed_attrs"]:
        if attribute["type"].native == "signing_certificate_v2":
            value = tsp.SigningCertificateV2.load(attribute["values"][0].dump())
            names = value["certs"][0]["issuer_serial"]["issuer"]
            assert names[0].name == "directory_name"
            assert names[0].chosen == asn1_x509.Name.load(alice.cert.issuer.public_bytes())
            # hashAlgorithm is the DEFAULT (SHA-256), so DER leaves it out
            cert_id = value["certs"][0].dump()
            assert b"\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01" not in cert_id

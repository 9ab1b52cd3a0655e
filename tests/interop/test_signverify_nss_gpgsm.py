"""Sign/verify interop with NSS ``cmsutil`` (Thunderbird's CMS library, 3.87) and GnuPG
``gpgsm`` 2.2, both ways, with the shared peer fixtures (``nss`` holds NSS_USER's two
identities, ``gpgsm`` GPGSM_USER's, both from the session ``dev_pki``). NSS adds the
Microsoft attribute 1.3.6.1.4.1.311.16.4 when it writes an encryption key preference:
our verifier must not trip on it."""

from __future__ import annotations

import pytest
from asn1crypto import cms
from cryptography import x509

from gateway.pki.dev import DevPki, load_first_certificate, load_private_key
from gateway.smime import mime, smime_parts, transfer
from gateway.smime.sign import sign, sign_der
from gateway.smime.verify import verify
from tests.peers.cms_tools import Gpgsm, NssCmsutil
from tests.peers.small_fixtures import GPGSM_USER, NSS_USER
from tests.smime.signverify.identities import AcceptAll

pytestmark = pytest.mark.peer

CONTENT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + b"Ordonnance: 1 boite.\r\n" * 50
MS_KEY_PREFERENCE = "1.3.6.1.4.1.311.16.4"


def _attribute_types(cms_der: bytes) -> set[str]:
    signer_info = cms.ContentInfo.load(cms_der)["content"]["signer_infos"][0]
    return {attribute["type"].dotted for attribute in signer_info["signed_attrs"]}


def _our_signer(
    pki: DevPki, address: str
) -> tuple[x509.Certificate, object, list[x509.Certificate]]:
    chain = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
    return (
        load_first_certificate(pki.user_cert(address, "sign")),
        load_private_key(pki.user_key(address, "sign")),
        chain,
    )


@pytest.mark.parametrize("preference", [False, True], ids=["Y-NONE", "Y-enc"])
def test_nss_opaque_signature_verified_by_us(nss: NssCmsutil, preference: bool) -> None:
    # NSS gives both of a person's certificates one nickname; -Y picks the encryption one
    cms_der = nss.sign(
        CONTENT, NSS_USER, encryption_key_preference=NSS_USER if preference else None
    )
    assert (MS_KEY_PREFERENCE in _attribute_types(cms_der)) is preference
    result = verify(
        smime_parts.pkcs7_mime_entity(cms_der, "signed-data"),
        validator=AcceptAll(),
        from_address=NSS_USER,
    )
    assert result.valid, result.reason
    assert result.content == CONTENT
    assert result.detached is False
    assert result.signers[0].capabilities is not None


def test_nss_detached_signature_verified_by_us(nss: NssCmsutil) -> None:
    cms_der = nss.sign(CONTENT, NSS_USER, detached=True)
    entity = smime_parts.multipart_signed(CONTENT, cms_der, "sha-256")
    result = verify(entity, validator=AcceptAll(), from_address=NSS_USER)
    assert result.valid, result.reason
    tampered = smime_parts.multipart_signed(CONTENT.replace(b"1 boite", b"9 boite"), cms_der)
    assert not verify(tampered, validator=AcceptAll(), from_address=NSS_USER).valid


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_ours_verified_by_nss(nss: NssCmsutil, dev_pki: DevPki, detached: bool) -> None:
    cert, key, chain = _our_signer(dev_pki, NSS_USER)
    encryption = load_first_certificate(dev_pki.user_cert(NSS_USER, "enc"))
    cms_der = sign_der(CONTENT, cert, key, chain, detached=detached, encryption_cert=encryption)
    assert nss.verify(cms_der, content=CONTENT if detached else None) == CONTENT
    if detached:
        altered = CONTENT.replace(b"1 boite", b"2 boite")
        assert nss.signer_statuses(cms_der, content=altered) == ["DigestMismatch"]


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_gpgsm_signature_verified_by_us(gpgsm: Gpgsm, detached: bool) -> None:
    cms_der = gpgsm.sign(CONTENT, GPGSM_USER, detached=detached)
    entity = (
        smime_parts.multipart_signed(CONTENT, cms_der, "sha-256")
        if detached
        else smime_parts.pkcs7_mime_entity(cms_der, "signed-data")
    )
    result = verify(entity, validator=AcceptAll(), from_address=GPGSM_USER)
    assert result.valid, result.reason
    assert result.content == CONTENT


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_ours_verified_by_gpgsm(gpgsm: Gpgsm, dev_pki: DevPki, detached: bool) -> None:
    cert, key, chain = _our_signer(dev_pki, GPGSM_USER)
    signed = sign(CONTENT, cert, key, chain, detached=detached)
    parsed = mime.parse_entity(signed)
    if detached:
        parts = smime_parts.parse_multipart_signed(parsed)
        assert gpgsm.verify(parts.signature, content=parts.content) == CONTENT
    else:
        assert gpgsm.verify(transfer.body_bytes(parsed)) == CONTENT

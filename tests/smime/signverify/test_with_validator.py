"""Verification wired to the real ``CertificateValidator`` (dev PKI, local CRLs,
hard-fail revocation): the chain carried in the message is used, a revoked signer or an
unknown root makes the message invalid."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from gateway.pki.dev import DevPki, init_dev_pki, load_first_certificate, load_private_key
from gateway.smime.sign import sign
from gateway.smime.validate import CertificateValidator
from gateway.smime.verify import verify
from tests.smime.signverify.identities import ALICE

TEXT = b"Content-Type: text/plain\r\n\r\nRendez-vous confirme.\r\n"


def _validator(pki: DevPki, anchor: Path | None = None) -> CertificateValidator:
    return CertificateValidator(
        [load_first_certificate(anchor or pki.root_cert)],
        crls=[pki.crl("personnes"), pki.crl("root")],
        revocation="hard-fail",
    )


def _signed(pki: DevPki) -> bytes:
    chain = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
    return sign(
        TEXT,
        load_first_certificate(pki.user_cert(ALICE, "sign")),
        load_private_key(pki.user_key(ALICE, "sign")),
        chain,
    )


def test_valid_then_revoked(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "pki", users=[ALICE])
    signed = _signed(pki)
    result = verify(signed, validator=_validator(pki), from_address=ALICE)
    assert result.valid, result.reason
    validation = result.signers[0].certificate_validation
    assert validation is not None and validation.revocation_checked
    assert len(validation.chain) == 3  # leaf, intermediate from the message, root
    pki.revoke(pki.user_cert(ALICE, "sign"))
    revoked = verify(signed, validator=_validator(pki), from_address=ALICE)
    assert not revoked.valid
    assert revoked.reason.startswith("signer certificate revoked")


def test_other_root_is_untrusted(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path / "pki", users=[ALICE])
    other = init_dev_pki(tmp_path / "other", users=[ALICE])
    result = verify(_signed(pki), validator=_validator(other), from_address=ALICE)
    assert not result.valid
    assert result.reason.startswith("signer certificate untrusted")

"""The validator's result cache is keyed by (the certificate's whole DER, the purpose):
another object of the same DER is answered from it, another purpose or certificate is
validated on its own."""

from __future__ import annotations

from gateway.pki.dev import DevPki
from gateway.smime.types import CertStatus, Purpose
from tests.smime.validate.support import USERS, load_cert, make_validator

ALICE = USERS[0]


def test_results_are_kept_per_certificate_and_purpose(pki: DevPki) -> None:
    validator = make_validator(pki)
    sign = load_cert(pki.user_cert(ALICE, "sign"))
    first = validator.validate(sign, purpose=Purpose.SMIME_SIGN)
    assert first.status is CertStatus.VALID, first.reason
    assert validator.validate(sign, purpose=Purpose.SMIME_SIGN) is first
    same_der = load_cert(pki.user_cert(ALICE, "sign"))
    assert same_der is not sign
    assert validator.validate(same_der, purpose=Purpose.SMIME_SIGN) is first
    other_purpose = validator.validate(sign, purpose=Purpose.SMIME_ENCRYPT)
    assert other_purpose.status is CertStatus.WRONG_USAGE
    enc = load_cert(pki.user_cert(ALICE, "enc"))
    assert validator.validate(enc, purpose=Purpose.SMIME_SIGN).status is CertStatus.WRONG_USAGE
    assert validator.validate(enc, purpose=Purpose.SMIME_ENCRYPT).status is CertStatus.VALID
    assert validator.validate(sign, purpose=Purpose.SMIME_SIGN) is first

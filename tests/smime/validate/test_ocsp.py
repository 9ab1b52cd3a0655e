"""Revocation by OCSP (RFC 6960) against a loopback responder built with cryptography.

OCSP is asked when no CRL answers (CRL first, see gateway/smime/revocation.py), so each
test makes the persons' CRL distribution point fail first; the root CRL stays served for
the intermediate. Every misbehaving response must count as "no answer".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.pki.dev import DevPki, load_private_key
from gateway.smime.types import CertStatus, ValidationResult
from tests.smime.validate.responder import OcspResponder, delegate_certificate
from tests.smime.validate.support import USERS, FakeClock, Site, load_cert, make_validator

ALICE = USERS[0]
OCSP = "/ocsp"


@pytest.fixture
def responder(site: Site) -> OcspResponder:
    """The persons CA's responder, with the CRL route closed so OCSP is used."""
    site.server.fail("/crl/personnes.crl", 404)
    return site.responders["personnes"]


def _validate(pki: DevPki, tmp_path: Path, mode: str = "hard-fail") -> ValidationResult:
    validator = make_validator(pki, revocation=mode, cache_dir=tmp_path / mode)
    return validator.validate(load_cert(pki.user_cert(ALICE, "sign")))


def test_a_good_answer_validates(
    responder: OcspResponder, site: Site, pki: DevPki, tmp_path: Path
) -> None:
    before = site.hits(OCSP)
    result = _validate(pki, tmp_path)
    assert result.status is CertStatus.VALID, result.reason
    assert result.revocation_checked
    assert site.hits(OCSP) == before + 1
    request = responder.requests[-1]
    assert request.serial_number == load_cert(pki.user_cert(ALICE, "sign")).serial_number
    assert request.hash_algorithm.name == "sha1"  # RFC 6960 §4.1.1 / RFC 5019 CertID
    assert request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce


def test_a_revoked_answer_revokes_even_in_soft_fail(
    responder: OcspResponder, pki: DevPki, tmp_path: Path
) -> None:
    leaf = load_cert(pki.user_cert(ALICE, "sign"))
    responder.revoked[leaf.serial_number] = leaf.not_valid_before_utc + timedelta(hours=2)
    for mode in ("hard-fail", "soft-fail"):
        result = _validate(pki, tmp_path, mode)
        assert result.status is CertStatus.REVOKED, (mode, result.reason)
        assert "OCSP" in result.reason


def test_an_answer_is_cached_until_reuse_is_no_longer_allowed(
    responder: OcspResponder, site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    validator = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path, clock=clock)
    leaf = load_cert(pki.user_cert(ALICE, "sign"))
    before = site.hits(OCSP)
    assert validator.validate(leaf).valid
    assert validator.validate(leaf, at=clock()).valid  # bypasses result cache, not OCSP's
    assert site.hits(OCSP) == before + 1
    clock.advance(timedelta(hours=1, minutes=1))  # ocsp_cache_max
    assert validator.validate(leaf).valid
    assert site.hits(OCSP) == before + 2


def _forged(responder: OcspResponder, pki: DevPki) -> None:
    responder.forge_with = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _stale(responder: OcspResponder, pki: DevPki) -> None:
    responder.this_update_shift = -timedelta(days=3)
    responder.validity = timedelta(days=1)


def _stale_without_next_update(responder: OcspResponder, pki: DevPki) -> None:
    responder.this_update_shift = -timedelta(days=2)
    responder.validity = None


def _from_the_future(responder: OcspResponder, pki: DevPki) -> None:
    responder.this_update_shift = timedelta(hours=1)


def _other_serial(responder: OcspResponder, pki: DevPki) -> None:
    responder.serial_shift = 1


def _unknown(responder: OcspResponder, pki: DevPki) -> None:
    responder.unknown.add(load_cert(pki.user_cert(ALICE, "sign")).serial_number)


def _wrong_nonce(responder: OcspResponder, pki: DevPki) -> None:
    responder.nonce_override = b"\x00" * 16


def _delegate_without_eku(responder: OcspResponder, pki: DevPki) -> None:
    responder.signer, responder.signer_key = delegate_certificate(
        responder.issuer, responder.issuer_key, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)
    )


def _delegate_of_another_ca(responder: OcspResponder, pki: DevPki) -> None:
    other = load_cert(pki.ca_cert("serveurs"))
    responder.signer, responder.signer_key = delegate_certificate(
        other, load_private_key(pki.ca_key("serveurs"))
    )


def _forged_delegate(responder: OcspResponder, pki: DevPki) -> None:
    """A delegate naming the right CA as issuer, but signed by the forger's key."""
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    responder.signer, responder.signer_key = delegate_certificate(responder.issuer, forger)


def _try_later(responder: OcspResponder, pki: DevPki) -> None:
    responder.status = ocsp.OCSPResponseStatus.TRY_LATER


@pytest.mark.parametrize(
    ("misbehave", "reason"),
    [
        (_forged, "signature does not verify"),
        (_stale, "stale"),
        (_stale_without_next_update, "stale"),
        (_from_the_future, "future"),
        (_other_serial, "CertID"),
        (_unknown, "does not know"),
        (_wrong_nonce, "nonce"),
        (_delegate_without_eku, "OCSPSigning"),
        (_delegate_of_another_ca, "not issued by"),
        (_forged_delegate, "not signed by the CA"),
        (_try_later, "try_later"),
    ],
)
def test_a_misbehaving_responder_is_no_answer(
    responder: OcspResponder,
    pki: DevPki,
    tmp_path: Path,
    misbehave: Callable[[OcspResponder, DevPki], None],
    reason: str,
) -> None:
    misbehave(responder, pki)
    hard = _validate(pki, tmp_path, "hard-fail")
    assert hard.status is CertStatus.REVOCATION_UNKNOWN
    assert reason in hard.reason
    soft = _validate(pki, tmp_path, "soft-fail")
    assert soft.status is CertStatus.VALID
    assert not soft.revocation_checked


def test_a_revoked_answer_from_a_forger_does_not_revoke(
    responder: OcspResponder, pki: DevPki, tmp_path: Path
) -> None:
    leaf = load_cert(pki.user_cert(ALICE, "sign"))
    responder.revoked[leaf.serial_number] = leaf.not_valid_before_utc
    _forged(responder, pki)
    assert _validate(pki, tmp_path, "soft-fail").status is CertStatus.VALID


def test_a_delegated_responder_with_ocsp_signing_is_trusted(
    responder: OcspResponder, pki: DevPki, tmp_path: Path
) -> None:
    responder.signer, responder.signer_key = delegate_certificate(
        responder.issuer, responder.issuer_key
    )
    leaf = load_cert(pki.user_cert(ALICE, "sign"))
    assert _validate(pki, tmp_path / "good").status is CertStatus.VALID
    responder.revoked[leaf.serial_number] = leaf.not_valid_before_utc
    assert _validate(pki, tmp_path / "revoked").status is CertStatus.REVOKED


def test_a_response_without_nonce_is_accepted(
    responder: OcspResponder, pki: DevPki, tmp_path: Path
) -> None:
    responder.echo_nonce = False  # pre-produced responses (RFC 5019) carry none
    assert _validate(pki, tmp_path).status is CertStatus.VALID


def test_an_unreachable_responder_gives_no_answer(
    responder: OcspResponder, site: Site, pki: DevPki, tmp_path: Path
) -> None:
    site.server.fail(OCSP, 503)
    result = _validate(pki, tmp_path)
    assert result.status is CertStatus.REVOCATION_UNKNOWN
    assert "HTTP status 503" in result.reason

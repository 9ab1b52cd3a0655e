"""Revocation by CRL: distribution points on a loopback HTTP server, cache, modes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from gateway.pki.dev import DevPki
from gateway.smime.revocation import RevocationSettings
from gateway.smime.types import CertStatus, Purpose
from tests.smime.validate.responder import build_crl
from tests.smime.validate.support import USERS, FakeClock, Site, load_cert, make_validator

ALICE, CLAIRE = USERS
PERSONNES_CRL = "/crl/personnes.crl"
ROOT_CRL = "/crl/root.crl"


def _fresh_user(pki: DevPki, directory: Path, name: str = "fresh") -> x509.Certificate:
    return load_cert(pki.issue_user(ALICE, path=directory / f"{name}.crt"))


def test_a_good_certificate_is_checked_against_the_leaf_and_intermediate_crls(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    before = site.hits(PERSONNES_CRL), site.hits(ROOT_CRL), site.hits("/ocsp")
    validator = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path)
    result = validator.validate(load_cert(pki.user_cert(ALICE, "sign")))
    assert result.status is CertStatus.VALID, result.reason
    assert result.revocation_checked
    after = site.hits(PERSONNES_CRL), site.hits(ROOT_CRL), site.hits("/ocsp")
    assert after[0] == before[0] + 1
    assert after[1] == before[1] + 1
    assert after[2] == before[2]  # CRL first: OCSP is not asked when the CRL answers


def test_a_revoked_certificate_is_revoked_in_every_mode_that_checks(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    revoked_path = pki.issue_user(ALICE, path=tmp_path / "revoked.crt")
    pki.revoke(revoked_path, reason=x509.ReasonFlags.key_compromise)
    site.publish_crls()
    revoked = load_cert(revoked_path)
    for mode in ("hard-fail", "soft-fail"):
        result = make_validator(pki, revocation=mode, cache_dir=tmp_path / mode).validate(revoked)
        assert result.status is CertStatus.REVOKED, (mode, result.reason)
        assert "keyCompromise" in result.reason
    assert make_validator(pki, revocation="off").validate(revoked).status is CertStatus.VALID


def test_a_revoked_intermediate_revokes_what_it_issued(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    personnes = load_cert(pki.ca_cert("personnes"))
    root, root_key = site.ca("root")
    site.server.serve(ROOT_CRL, build_crl(root, root_key, [personnes.serial_number], number=9))
    result = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path).validate(
        load_cert(pki.user_cert(ALICE, "sign"))
    )
    assert result.status is CertStatus.REVOKED
    assert "intermediate" in result.reason


def test_the_last_valid_crl_is_kept_when_the_server_fails(
    site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    revoked_path = pki.issue_user(ALICE, path=tmp_path / "kept-revoked.crt")
    pki.revoke(revoked_path)
    site.publish_crls()
    good, revoked = load_cert(pki.user_cert(ALICE, "sign")), load_cert(revoked_path)
    validator = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path, clock=clock)
    assert validator.validate(good).status is CertStatus.VALID
    site.server.fail(PERSONNES_CRL, 500)
    site.server.fail(ROOT_CRL, 503)
    clock.advance(timedelta(hours=2))  # past the refresh interval and the result TTL
    before = site.hits(PERSONNES_CRL)
    result = validator.validate(good)
    assert result.status is CertStatus.VALID, result.reason
    assert result.revocation_checked
    assert site.hits(PERSONNES_CRL) == before + 1  # it did try to refresh
    assert validator.validate(revoked).status is CertStatus.REVOKED  # from the kept CRL


def test_the_kept_crl_survives_a_restart_through_the_disk_cache(
    site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    good = load_cert(pki.user_cert(ALICE, "sign"))
    assert make_validator(pki, revocation="hard-fail", cache_dir=tmp_path).validate(good).valid
    cached = list((tmp_path / "crl").glob("*.crl"))
    assert len(cached) == 2  # personnes and root
    site.server.fail(PERSONNES_CRL, 500)
    site.server.fail(ROOT_CRL, 500)
    clock.advance(timedelta(hours=2))
    restarted = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path, clock=clock)
    assert restarted.validate(good).status is CertStatus.VALID
    without_cache = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path / "empty")
    assert without_cache.validate(good).status is CertStatus.REVOCATION_UNKNOWN


def test_a_kept_crl_past_its_next_update_is_unavailable(
    site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    good = load_cert(pki.user_cert(ALICE, "sign"))
    hard = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path, clock=clock)
    assert hard.validate(good).valid
    site.server.fail(PERSONNES_CRL, 500)
    site.responders[
        "personnes"
    ].status = ocsp.OCSPResponseStatus.UNAUTHORIZED  # OCSP cannot help either
    clock.advance(timedelta(days=8))  # dev CRLs have nextUpdate = thisUpdate + 7 days
    result = hard.validate(good, at=clock())
    assert result.status is CertStatus.REVOCATION_UNKNOWN
    assert "expired" in result.reason
    soft = make_validator(pki, revocation="soft-fail", cache_dir=tmp_path, clock=clock)
    result = soft.validate(good, at=clock())
    assert result.status is CertStatus.VALID
    assert not result.revocation_checked
    assert "soft-fail" in result.reason


def test_a_kept_crl_past_its_next_update_still_proves_a_revocation(
    site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    personnes, key = site.ca("personnes")
    victim, held = _fresh_user(pki, tmp_path, "victim"), _fresh_user(pki, tmp_path, "held")
    site.server.serve(PERSONNES_CRL, build_crl(personnes, key, [victim.serial_number], number=70))
    validator = make_validator(pki, revocation="soft-fail", cache_dir=tmp_path, clock=clock)
    assert validator.validate(victim).status is CertStatus.REVOKED
    site.server.fail(PERSONNES_CRL, 500)
    site.server.fail("/ocsp", 500)
    clock.advance(timedelta(days=8))
    assert validator.validate(victim, at=clock()).status is CertStatus.REVOKED
    # a certificate on hold is only revoked while a current CRL lists it
    site.server.recover(PERSONNES_CRL)
    site.server.serve(
        PERSONNES_CRL,
        build_crl(
            personnes,
            key,
            [held.serial_number],
            number=71,
            reason=x509.ReasonFlags.certificate_hold,
        ),
    )
    clock.advance(timedelta(minutes=2))  # past the retry delay
    fresh = make_validator(pki, revocation="soft-fail", cache_dir=tmp_path / "2", clock=clock)
    result = fresh.validate(held, at=clock())
    assert result.status is CertStatus.VALID, result.reason  # the held entry's CRL is stale
    assert not result.revocation_checked


def test_a_grace_period_extends_the_use_of_a_kept_crl(
    site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    good = load_cert(pki.user_cert(ALICE, "sign"))
    settings = RevocationSettings(crl_grace=timedelta(days=2), use_ocsp=False)
    validator = make_validator(
        pki, revocation="hard-fail", cache_dir=tmp_path, clock=clock, settings=settings
    )
    assert validator.validate(good).valid
    site.server.fail(PERSONNES_CRL, 500)
    site.server.fail(ROOT_CRL, 500)
    clock.advance(timedelta(days=8))
    assert validator.validate(good, at=clock()).valid
    clock.advance(timedelta(days=2))
    assert validator.validate(good, at=clock()).status is CertStatus.REVOCATION_UNKNOWN


def test_a_failed_fetch_is_not_retried_at_once(
    site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    site.server.fail(PERSONNES_CRL, 500)
    site.server.fail("/ocsp", 500)
    validator = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path, clock=clock)
    good = load_cert(pki.user_cert(ALICE, "sign"))
    before = site.hits(PERSONNES_CRL)
    assert validator.validate(good).status is CertStatus.REVOCATION_UNKNOWN
    assert validator.validate(good).status is CertStatus.REVOCATION_UNKNOWN
    assert site.hits(PERSONNES_CRL) == before + 1
    clock.advance(timedelta(seconds=61))
    site.server.recover(PERSONNES_CRL)
    assert validator.validate(good).status is CertStatus.VALID
    assert site.hits(PERSONNES_CRL) == before + 2


def test_a_crl_signed_by_another_key_is_not_used(site: Site, pki: DevPki, tmp_path: Path) -> None:
    personnes = load_cert(pki.ca_cert("personnes"))
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    site.server.serve(PERSONNES_CRL, build_crl(personnes, impostor, number=99))
    site.server.fail("/ocsp", 500)
    result = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path).validate(
        load_cert(pki.user_cert(ALICE, "sign"))
    )
    assert result.status is CertStatus.REVOCATION_UNKNOWN
    assert "signature" in result.reason


def test_an_older_crl_does_not_replace_a_newer_one(
    site: Site, pki: DevPki, tmp_path: Path, clock: FakeClock
) -> None:
    """A replayed CRL from before a revocation must not un-revoke a certificate."""
    personnes, key = site.ca("personnes")
    victim = _fresh_user(pki, tmp_path, "victim")
    newer = build_crl(personnes, key, [victim.serial_number], number=50)
    older = build_crl(personnes, key, [], number=49, this_update=clock() - timedelta(hours=3))
    site.server.serve(PERSONNES_CRL, newer)
    validator = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path, clock=clock)
    assert validator.validate(victim).status is CertStatus.REVOKED
    site.server.serve(PERSONNES_CRL, older)
    clock.advance(timedelta(hours=2))
    before = site.hits(PERSONNES_CRL)
    assert validator.validate(victim).status is CertStatus.REVOKED
    assert site.hits(PERSONNES_CRL) == before + 1  # fetched, and refused


def test_configured_crl_files_answer_without_the_network(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    before = site.hits(PERSONNES_CRL), site.hits(ROOT_CRL)
    crl_file = tmp_path / "personnes.crl"
    crl_file.write_bytes(pki.crl("personnes").read_bytes())
    validator = make_validator(
        pki, revocation="hard-fail", crls=(crl_file, pki.crl("root").read_bytes())
    )
    good = load_cert(pki.user_cert(ALICE, "sign"))
    assert validator.validate(good).status is CertStatus.VALID
    assert (site.hits(PERSONNES_CRL), site.hits(ROOT_CRL)) == before
    # the file is re-read when it changes: a revocation written there is seen
    victim_path = pki.issue_user(ALICE, path=tmp_path / "file-victim.crt")
    victim = load_cert(victim_path)
    assert validator.validate(victim).valid
    pki.revoke(victim_path)
    crl_file.write_bytes(pki.crl("personnes").read_bytes())
    assert validator.validate(victim).valid  # the result cached "now" is kept (TTL)
    assert validator.validate(victim, at=datetime.now(UTC)).status is CertStatus.REVOKED
    assert (site.hits(PERSONNES_CRL), site.hits(ROOT_CRL)) == before


def test_hard_fail_soft_fail_and_off_without_any_revocation_data(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    for path in (PERSONNES_CRL, ROOT_CRL, "/ocsp"):
        site.server.fail(path, 404)
    good = load_cert(pki.user_cert(ALICE, "sign"))
    hard = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path / "h").validate(good)
    assert hard.status is CertStatus.REVOCATION_UNKNOWN
    assert "HTTP status 404" in hard.reason
    soft = make_validator(pki, revocation="soft-fail", cache_dir=tmp_path / "s").validate(good)
    assert soft.status is CertStatus.VALID
    assert not soft.revocation_checked
    before = site.hits(PERSONNES_CRL)
    off = make_validator(pki, revocation="off").validate(good)
    assert off.status is CertStatus.VALID
    assert site.hits(PERSONNES_CRL) == before


def test_server_certificates_are_checked_for_tls_too(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    server_cert = load_cert(pki.server_cert("mx.chu-a.test"))
    before = site.hits("/crl/serveurs.crl")
    result = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path).validate(
        server_cert, purpose=Purpose.TLS_SERVER
    )
    assert result.status is CertStatus.VALID, result.reason
    assert site.hits("/crl/serveurs.crl") == before + 1


def test_concurrent_validations_fetch_each_crl_once(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    validator = make_validator(pki, revocation="hard-fail", cache_dir=tmp_path)
    certificates = [load_cert(pki.user_cert(user, "sign")) for user in USERS]
    before = site.hits(PERSONNES_CRL)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(validator.validate, certificates * 16))
    assert all(r.status is CertStatus.VALID for r in results), results[0].reason
    assert site.hits(PERSONNES_CRL) == before + 1


def test_a_broken_crl_file_keeps_its_last_readable_content(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    site.server.fail(PERSONNES_CRL, 500)  # only the configured file can answer
    crl_file = tmp_path / "personnes.crl"
    crl_file.write_bytes(pki.crl("personnes").read_bytes())
    settings = RevocationSettings(use_ocsp=False)
    crls = (crl_file, pki.crl("root").read_bytes())
    validator = make_validator(pki, revocation="hard-fail", crls=crls, settings=settings)
    good = load_cert(pki.user_cert(ALICE, "sign"))
    assert validator.validate(good, at=datetime.now(UTC)).valid
    crl_file.write_bytes(b"half-written garbage")
    assert validator.validate(good, at=datetime.now(UTC)).valid
    crl_file.unlink()
    assert validator.validate(good, at=datetime.now(UTC)).valid
    never_read = make_validator(pki, revocation="hard-fail", crls=crls, settings=settings)
    result = never_read.validate(good)
    assert result.status is CertStatus.REVOCATION_UNKNOWN
    assert "CRL file" in result.reason

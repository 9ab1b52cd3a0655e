"""Path validation, usages and algorithms (revocation off: no network in this file)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.errors import ConfigError
from gateway.pki.dev import DevPki, load_private_key
from gateway.smime.types import CertStatus, ChainValidator, Purpose
from gateway.smime.validate import CertificateValidator
from tests.peers.procs import require_binary
from tests.smime.validate.support import (
    SERVER,
    USERS,
    anchors_of,
    intermediates_of,
    load_cert,
    make_validator,
)

ALICE, CLAIRE = USERS
NOW = datetime.now(UTC)


@pytest.fixture
def validator(pki: DevPki) -> CertificateValidator:
    return make_validator(pki)


def _user(pki: DevPki, purpose: str = "sign") -> x509.Certificate:
    return load_cert(pki.user_cert(ALICE, purpose))


def test_it_implements_the_chain_validator_protocol(validator: CertificateValidator) -> None:
    checker: ChainValidator = validator
    assert callable(checker.validate)


def test_a_regular_signature_certificate_is_valid_with_its_full_chain(
    validator: CertificateValidator, pki: DevPki
) -> None:
    leaf = _user(pki)
    result = validator.validate(leaf, purpose=Purpose.SMIME_SIGN)
    assert result.status is CertStatus.VALID, result.reason
    assert result.valid
    assert [c.subject for c in result.chain] == [
        leaf.subject,
        load_cert(pki.ca_cert("personnes")).subject,
        load_cert(pki.root_cert).subject,
    ]
    assert result.revocation_checked is False  # revocation "off"


def test_signature_and_encryption_certificates_are_each_good_for_their_own_purpose(
    validator: CertificateValidator, pki: DevPki
) -> None:
    sign, enc = _user(pki, "sign"), _user(pki, "enc")
    assert validator.validate(enc, purpose=Purpose.SMIME_ENCRYPT).status is CertStatus.VALID
    wrong_for_sign = validator.validate(enc, purpose=Purpose.SMIME_SIGN)
    assert wrong_for_sign.status is CertStatus.WRONG_USAGE
    assert "key usage" in wrong_for_sign.reason
    assert validator.validate(sign, purpose=Purpose.SMIME_ENCRYPT).status is (
        CertStatus.WRONG_USAGE
    )


def test_expired_and_not_yet_valid_certificates_are_expired(
    validator: CertificateValidator, pki: DevPki, tmp_path: Path
) -> None:
    expired = load_cert(
        pki.issue_user(
            ALICE,
            not_before=NOW - timedelta(days=30),
            not_after=NOW - timedelta(days=1),
            path=tmp_path / "expired.crt",
        )
    )
    future = load_cert(
        pki.issue_user(
            ALICE,
            not_before=NOW + timedelta(days=1),
            not_after=NOW + timedelta(days=30),
            path=tmp_path / "future.crt",
        )
    )
    assert validator.validate(expired).status is CertStatus.EXPIRED
    result = validator.validate(future)
    assert result.status is CertStatus.EXPIRED
    assert "not valid before" in result.reason


def test_validity_is_judged_at_the_time_asked(validator: CertificateValidator, pki: DevPki) -> None:
    leaf = _user(pki)
    assert validator.validate(leaf, at=NOW + timedelta(days=3 * 365)).status is (CertStatus.EXPIRED)
    assert validator.validate(leaf, at=NOW - timedelta(days=2)).status is CertStatus.EXPIRED
    assert validator.validate(leaf, at=NOW + timedelta(days=30)).status is CertStatus.VALID


@pytest.mark.parametrize(
    ("key_usage", "eku", "purpose", "expected"),
    [
        (("keyAgreement",), None, Purpose.SMIME_SIGN, CertStatus.WRONG_USAGE),
        (("digitalSignature",), ("serverAuth",), Purpose.SMIME_SIGN, CertStatus.WRONG_USAGE),
        (("nonRepudiation",), (), Purpose.SMIME_SIGN, CertStatus.VALID),  # no EKU: any use
        ((), (), Purpose.SMIME_ENCRYPT, CertStatus.VALID),  # no KU, no EKU
        (
            ("digitalSignature",),
            ("anyExtendedKeyUsage",),
            Purpose.SMIME_SIGN,
            CertStatus.WRONG_USAGE,
        ),
        (
            ("keyEncipherment",),
            ("emailProtection", "clientAuth"),
            Purpose.SMIME_ENCRYPT,
            CertStatus.VALID,
        ),
    ],
)
def test_key_usage_and_extended_key_usage_by_purpose(
    validator: CertificateValidator,
    pki: DevPki,
    tmp_path: Path,
    key_usage: tuple[str, ...],
    eku: tuple[str, ...] | None,
    purpose: Purpose,
    expected: CertStatus,
) -> None:
    leaf = load_cert(pki.issue_user(ALICE, key_usage=key_usage, eku=eku, path=tmp_path / "odd.crt"))
    result = validator.validate(leaf, purpose=purpose)
    assert result.status is expected, result.reason


def test_an_ec_encryption_certificate_needs_key_agreement(
    validator: CertificateValidator, pki: DevPki, tmp_path: Path
) -> None:
    agreement = load_cert(
        pki.issue_user(ALICE, "enc", key_usage=("keyAgreement",), ec=True, path=tmp_path / "a.crt")
    )
    encipherment = load_cert(
        pki.issue_user(
            ALICE, "enc", key_usage=("keyEncipherment",), ec=True, path=tmp_path / "b.crt"
        )
    )
    assert validator.validate(agreement, purpose=Purpose.SMIME_ENCRYPT).valid
    assert validator.validate(encipherment, purpose=Purpose.SMIME_ENCRYPT).status is (
        CertStatus.WRONG_USAGE
    )


def test_rsa_1024_is_weak(validator: CertificateValidator, pki: DevPki, tmp_path: Path) -> None:
    leaf = load_cert(pki.issue_user(ALICE, rsa_bits=1024, path=tmp_path / "small.crt"))
    result = validator.validate(leaf)
    assert result.status is CertStatus.WEAK
    assert "1024" in result.reason


LEAF_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,nonRepudiation\n"
    "extendedKeyUsage=emailProtection\n"
    f"subjectAltName=email:{ALICE}\n"
)
CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
)


def _sha1_signed(
    pki: DevPki, directory: Path, *, ca: str = "personnes", extensions_text: str = LEAF_EXTENSIONS
) -> x509.Certificate:
    """cryptography 50 refuses to sign with SHA-1 (measured): openssl does it, in the test.
    The new key is left in ``directory / "sha1.key"``."""
    openssl = require_binary("openssl")
    extensions = directory / "ext.cnf"
    extensions.write_text(extensions_text)
    commands = [
        [
            openssl,
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=SHA1 TEST",
            "-keyout",
            str(directory / "sha1.key"),
            "-out",
            str(directory / "sha1.csr"),
        ],
        [
            openssl,
            "x509",
            "-req",
            "-sha1",
            "-days",
            "30",
            "-set_serial",
            "0x51a1",
            "-in",
            str(directory / "sha1.csr"),
            "-CA",
            str(pki.ca_cert(ca)),
            "-CAkey",
            str(pki.ca_key(ca)),
            "-extfile",
            str(extensions),
            "-out",
            str(directory / "sha1.crt"),
        ],
    ]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    return load_cert(directory / "sha1.crt")


def test_a_sha1_signed_certificate_is_weak(
    validator: CertificateValidator, pki: DevPki, tmp_path: Path
) -> None:
    leaf = _sha1_signed(pki, tmp_path)
    assert leaf.signature_hash_algorithm is not None
    assert leaf.signature_hash_algorithm.name == "sha1"
    result = validator.validate(leaf)
    assert result.status is CertStatus.WEAK
    assert "SHA1" in result.reason


def _self_signed(common_name: str, *, ca: bool) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def test_an_untrusted_self_signed_certificate_is_untrusted(
    validator: CertificateValidator,
) -> None:
    stranger, _ = _self_signed("stranger@elsewhere.test", ca=False)
    result = validator.validate(stranger)
    assert result.status is CertStatus.UNTRUSTED
    assert result.chain == ()


def test_certificates_from_the_message_serve_as_intermediates_never_as_anchors(
    pki: DevPki,
) -> None:
    leaf = _user(pki)
    no_intermediates = CertificateValidator(anchors_of(pki), revocation="off")
    assert no_intermediates.validate(leaf).status is CertStatus.UNTRUSTED
    carried = intermediates_of(pki)
    assert no_intermediates.validate(leaf, untrusted=carried).status is CertStatus.VALID
    # a self-made root carried in the message does not become trusted
    fake_root, fake_key = _self_signed("AC PIRATE", ca=True)
    forged_leaf = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(fake_root.subject)
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(fake_key, hashes.SHA256())
    )
    result = no_intermediates.validate(forged_leaf, untrusted=[fake_root, *carried])
    assert result.status is CertStatus.UNTRUSTED


def test_a_leaf_signed_by_another_key_under_a_trusted_name_is_untrusted(
    validator: CertificateValidator, pki: DevPki
) -> None:
    leaf = _user(pki)
    impostor_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)  # claims the real intermediate
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(impostor_key, hashes.SHA256())
    )
    result = validator.validate(forged)
    assert result.status is CertStatus.UNTRUSTED
    assert "signature" in result.reason


def test_tls_purposes_accept_the_server_certificate_and_refuse_a_person_certificate(
    validator: CertificateValidator, pki: DevPki
) -> None:
    chain = x509.load_pem_x509_certificates(pki.server_cert(SERVER).read_bytes())
    server_leaf, carried = chain[0], chain[1:]
    for purpose in (Purpose.TLS_SERVER, Purpose.TLS_CLIENT):
        assert validator.validate(server_leaf, carried, purpose).status is CertStatus.VALID
        person = validator.validate(_user(pki), purpose=purpose)
        assert person.status is CertStatus.WRONG_USAGE
    assert validator.validate(server_leaf, purpose=Purpose.SMIME_SIGN).status is (
        CertStatus.WRONG_USAGE
    )


def _intermediate(
    pki: DevPki,
    *,
    with_aki: bool,
    key_usage: x509.KeyUsage | None,
    not_after: datetime,
    bits: int = 2048,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    root = load_cert(pki.root_cert)
    root_key = load_private_key(pki.ca_key("root"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AC LEGACY DEV")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=400))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    if with_aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(root_key, hashes.SHA256()), key


def _leaf_under(issuer: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy User")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("legacy@chu-a.test")]), False)
        .sign(issuer_key, hashes.SHA256())
    )


CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
SIGN_ONLY = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


def test_a_legacy_ca_without_aki_or_key_usage_is_accepted(
    validator: CertificateValidator, pki: DevPki
) -> None:
    """The library's WebPKI CA profile would refuse it; ours follows RFC 5280."""
    ca, ca_key = _intermediate(
        pki, with_aki=False, key_usage=None, not_after=NOW + timedelta(days=90)
    )
    result = validator.validate(_leaf_under(ca, ca_key), untrusted=[ca])
    assert result.status is CertStatus.VALID, result.reason


def test_problems_of_an_intermediate_are_named(
    validator: CertificateValidator, pki: DevPki
) -> None:
    expired_ca, key = _intermediate(
        pki, with_aki=True, key_usage=CA_USAGE, not_after=NOW - timedelta(days=1)
    )
    result = validator.validate(_leaf_under(expired_ca, key), untrusted=[expired_ca])
    assert result.status is CertStatus.EXPIRED
    assert "AC LEGACY DEV" in result.reason
    no_cert_sign, key = _intermediate(
        pki, with_aki=True, key_usage=SIGN_ONLY, not_after=NOW + timedelta(days=90)
    )
    result = validator.validate(_leaf_under(no_cert_sign, key), untrusted=[no_cert_sign])
    assert result.status is CertStatus.WRONG_USAGE
    assert "keyCertSign" in result.reason


def test_a_weak_intermediate_is_weak(validator: CertificateValidator, pki: DevPki) -> None:
    small_ca, key = _intermediate(
        pki, with_aki=True, key_usage=CA_USAGE, not_after=NOW + timedelta(days=90), bits=1024
    )
    result = validator.validate(_leaf_under(small_ca, key), untrusted=[small_ca])
    assert result.status is CertStatus.WEAK
    assert "1024" in result.reason


def test_a_sha1_signed_intermediate_is_weak(
    validator: CertificateValidator, pki: DevPki, tmp_path: Path
) -> None:
    sha1_ca = _sha1_signed(pki, tmp_path, ca="root", extensions_text=CA_EXTENSIONS)
    ca_key = load_private_key(tmp_path / "sha1.key")
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    result = validator.validate(_leaf_under(sha1_ca, ca_key), untrusted=[sha1_ca])
    assert result.status is CertStatus.WEAK
    assert "SHA1" in result.reason


def test_a_ca_certificate_is_not_an_end_entity(
    validator: CertificateValidator, pki: DevPki
) -> None:
    intermediate = load_cert(pki.ca_cert("personnes"))
    assert validator.validate(intermediate).status is CertStatus.WRONG_USAGE


def _with_duplicate_extension(certificate: x509.Certificate) -> x509.Certificate:
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    tbs = parsed["tbs_certificate"]
    extensions = list(tbs["extensions"])
    tbs["extensions"] = asn1_x509.Extensions([*extensions, extensions[0]])
    return x509.load_der_x509_certificate(parsed.dump(force=True))


def test_a_malformed_certificate_is_invalid(validator: CertificateValidator, pki: DevPki) -> None:
    result = validator.validate(_with_duplicate_extension(_user(pki)))
    assert result.status is CertStatus.INVALID
    assert "malformed" in result.reason


def test_a_route_may_add_its_own_anchor(validator: CertificateValidator) -> None:
    root, key = _self_signed("AC PARTENAIRE", ca=True)
    partner = _leaf_under(root, key)
    assert validator.validate(partner).status is CertStatus.UNTRUSTED
    widened = validator.with_extra_anchors([root])
    assert widened.validate(partner).status is CertStatus.VALID
    assert validator.validate(partner).status is CertStatus.UNTRUSTED  # original unchanged


def test_valid_results_are_cached_and_at_bypasses_the_cache(
    validator: CertificateValidator, pki: DevPki
) -> None:
    leaf = _user(pki)
    first = validator.validate(leaf)
    assert validator.validate(leaf) is first
    assert validator.validate(leaf, at=NOW + timedelta(days=1)) is not first
    # the purpose is part of the key
    assert validator.validate(leaf, purpose=Purpose.SMIME_ENCRYPT).status is (
        CertStatus.WRONG_USAGE
    )


def test_from_files_builds_a_validator(pki: DevPki, tmp_path: Path) -> None:
    validator = CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes")], "soft-fail", tmp_path
    )
    assert validator.validate(_user(pki)).valid


def test_from_files_reports_every_problem(pki: DevPki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        CertificateValidator.from_files(
            [tmp_path / "missing.crt"],
            [garbage],
            [garbage],
            "sometimes",
            None,
        )
    problems = caught.value.problems
    assert any("missing.crt" in p and "cannot read" in p for p in problems)
    assert any("garbage.pem" in p and "intermediate" in p for p in problems)
    assert any("garbage.pem" in p and "CRL" in p for p in problems)
    assert any("hard-fail|soft-fail|off" in p for p in problems)

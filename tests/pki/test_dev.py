"""The development PKI: chain, profiles, CRLs, revocation, odd certificates, EC variant."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.pki.dev import DEMO_USERS, DevPki, DevPkiError, init_dev_pki, load_dev_pki
from tests.pki.conftest import CRL_BASE_URL, OCSP_URL, SERVERS, openssl, openssl_verify, purposes

ALICE = "alice.martin@chu-a.test"


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def key_usages(cert: x509.Certificate) -> set[str]:
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    value = usage.value
    assert isinstance(value, x509.KeyUsage)
    names = {
        "digitalSignature": value.digital_signature,
        "nonRepudiation": value.content_commitment,
        "keyEncipherment": value.key_encipherment,
        "dataEncipherment": value.data_encipherment,
        "keyAgreement": value.key_agreement,
        "keyCertSign": value.key_cert_sign,
        "cRLSign": value.crl_sign,
    }
    return {name for name, present in names.items() if present}


def ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    value = ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(value, x509.ExtendedKeyUsage)
    return list(value)


def all_leaves(pki: DevPki) -> list[Path]:
    users = [pki.user_cert(a, p) for a in DEMO_USERS for p in ("sign", "enc")]
    return users + [pki.server_cert(h) for h in SERVERS]


# ------------------------------------------------------------------- chain
def test_every_leaf_verifies_with_openssl_including_crls(rsa_pki: DevPki) -> None:
    result = openssl_verify(rsa_pki, *all_leaves(rsa_pki), crl_check=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": OK") == len(all_leaves(rsa_pki))


def test_a_leaf_does_not_verify_under_another_root(rsa_pki: DevPki, ec_pki: DevPki) -> None:
    result = openssl(
        "verify",
        "-CAfile",
        ec_pki.root_cert,
        "-untrusted",
        rsa_pki.intermediates,
        rsa_pki.user_cert(ALICE, "enc"),
        check=False,
    )
    assert result.returncode != 0


def test_openssl_purposes_match_each_profile(rsa_pki: DevPki) -> None:
    sign = purposes(rsa_pki.user_cert(ALICE, "sign"))
    enc = purposes(rsa_pki.user_cert(ALICE, "enc"))
    server = purposes(rsa_pki.server_cert("mx.chu-a.test"))
    assert (sign["S/MIME signing"], sign["S/MIME encryption"]) == (True, False)
    assert (sign["SSL server"], sign["SSL client"]) == (False, False)
    assert (enc["S/MIME signing"], enc["S/MIME encryption"]) == (False, True)
    assert (enc["SSL server"], enc["SSL client"]) == (False, False)
    assert (server["SSL server"], server["SSL client"]) == (True, True)
    assert (server["S/MIME signing"], server["S/MIME encryption"]) == (False, False)


# -------------------------------------------------------------- profiles
def test_ca_certificates(rsa_pki: DevPki) -> None:
    root = load_cert(rsa_pki.root_cert)
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "AC RACINE MISSIVE DEV"
    )
    assert [a.value for a in root.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)] == ["FR"]
    for name, path_length in (("root", 1), ("personnes", 0), ("serveurs", 0)):
        cert = load_cert(rsa_pki.ca_cert(name))
        constraints = ext(cert, x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value == x509.BasicConstraints(ca=True, path_length=path_length)
        assert key_usages(cert) == {"keyCertSign", "cRLSign"}
        assert cert.not_valid_after_utc - cert.not_valid_before_utc >= timedelta(days=3650)
    persons = load_cert(rsa_pki.ca_cert("personnes"))
    assert "PERSONNES" in persons.subject.rfc4514_string()
    assert persons.issuer == root.subject
    points = ext(persons, x509.CRLDistributionPoints).value
    assert isinstance(points, x509.CRLDistributionPoints)
    assert points[0].full_name == [x509.UniformResourceIdentifier(f"{CRL_BASE_URL}/root.crl")]


def test_intermediates_bundle_holds_both_intermediates(rsa_pki: DevPki) -> None:
    bundle = x509.load_pem_x509_certificates(rsa_pki.intermediates.read_bytes())
    assert bundle == [
        load_cert(rsa_pki.ca_cert("personnes")),
        load_cert(rsa_pki.ca_cert("serveurs")),
    ]


def test_signature_certificate_profile(rsa_pki: DevPki) -> None:
    cert = load_cert(rsa_pki.user_cert(ALICE, "sign"))
    assert key_usages(cert) == {"digitalSignature", "nonRepudiation"}
    assert ekus(cert) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert list(san) == [x509.RFC822Name(ALICE)]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Alice Martin"
    assert not cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)  # RFC 8550: SAN only


def test_encryption_certificate_profile(rsa_pki: DevPki) -> None:
    cert = load_cert(rsa_pki.user_cert(ALICE, "enc"))
    assert key_usages(cert) == {"keyEncipherment"}
    assert ekus(cert) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    signing_key = load_cert(rsa_pki.user_cert(ALICE, "sign")).public_key()
    assert signing_key != key  # two keys, not one key certified twice


def test_server_certificate_profile_and_chain_file(rsa_pki: DevPki) -> None:
    chain = x509.load_pem_x509_certificates(rsa_pki.server_cert("mx.clinique-b.test").read_bytes())
    leaf, issuer = chain
    assert issuer == load_cert(rsa_pki.ca_cert("serveurs"))
    assert key_usages(leaf) == {"digitalSignature", "keyEncipherment"}
    assert ekus(leaf) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["mx.clinique-b.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "mx.clinique-b.test"
    )
    key = openssl("pkey", "-in", rsa_pki.server_key("mx.clinique-b.test"), "-pubout").stdout
    assert (
        openssl(
            "x509", "-in", rsa_pki.server_cert("mx.clinique-b.test"), "-noout", "-pubkey"
        ).stdout
        == key
    )


def test_common_leaf_extensions(rsa_pki: DevPki) -> None:
    for path in all_leaves(rsa_pki):
        cert = load_cert(path)
        issuer_name = "serveurs" if path.parent == rsa_pki.directory else "personnes"
        issuer = load_cert(rsa_pki.ca_cert(issuer_name))
        constraints = ext(cert, x509.BasicConstraints)
        assert constraints.critical and constraints.value == x509.BasicConstraints(False, None)
        aki = ext(cert, x509.AuthorityKeyIdentifier).value
        ski = ext(issuer, x509.SubjectKeyIdentifier).value
        assert isinstance(aki, x509.AuthorityKeyIdentifier)
        assert isinstance(ski, x509.SubjectKeyIdentifier)
        assert aki.key_identifier == ski.digest
        points = ext(cert, x509.CRLDistributionPoints).value
        assert isinstance(points, x509.CRLDistributionPoints)
        assert points[0].full_name == [
            x509.UniformResourceIdentifier(f"{CRL_BASE_URL}/{issuer_name}.crl")
        ]
        access = ext(cert, x509.AuthorityInformationAccess).value
        assert isinstance(access, x509.AuthorityInformationAccess)
        assert [a.access_location for a in access] == [x509.UniformResourceIdentifier(OCSP_URL)]
        assert 0 < cert.serial_number < 2**159
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=730) <= lifetime <= timedelta(days=731)
        assert cert.not_valid_before_utc < datetime.now(UTC) - timedelta(minutes=30)


def test_no_revocation_pointers_unless_asked(ec_pki: DevPki) -> None:
    cert = load_cert(ec_pki.user_cert(ALICE, "sign"))
    for kind in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(kind)


# ------------------------------------------------------------------- CRLs
def test_crls_are_signed_by_their_intermediate(rsa_pki: DevPki) -> None:
    for name in ("personnes", "serveurs"):
        good = openssl("crl", "-in", rsa_pki.crl(name), "-noout", "-CAfile", rsa_pki.ca_cert(name))
        assert "verify OK" in good.stdout + good.stderr
        crl = x509.load_pem_x509_crl(rsa_pki.crl(name).read_bytes())
        ca = load_cert(rsa_pki.ca_cert(name))
        assert crl.issuer == ca.subject
        assert crl.is_signature_valid(ca.public_key())
        assert crl.next_update_utc is not None
        assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value
        assert isinstance(number, x509.CRLNumber) and number.crl_number >= 1
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ext(ca, x509.SubjectKeyIdentifier).value
        assert isinstance(aki, x509.AuthorityKeyIdentifier)
        assert isinstance(ski, x509.SubjectKeyIdentifier)
        assert aki.key_identifier == ski.digest
    wrong = openssl(
        "crl",
        "-in",
        rsa_pki.crl("personnes"),
        "-noout",
        "-CAfile",
        rsa_pki.ca_cert("serveurs"),
        check=False,
    )
    assert wrong.returncode != 0


def test_revoke_puts_the_serial_in_the_crl(rsa_pki: DevPki, tmp_path: Path) -> None:
    victim = rsa_pki.issue_user(ALICE, "sign", path=tmp_path / "victim.crt")
    bystander = rsa_pki.issue_user(ALICE, "sign", path=tmp_path / "bystander.crt")
    assert openssl_verify(rsa_pki, victim, crl_check=True).returncode == 0
    before = x509.load_pem_x509_crl(rsa_pki.crl("personnes").read_bytes())

    rsa_pki.revoke(victim, reason=x509.ReasonFlags.key_compromise)
    rsa_pki.revoke(victim)  # twice: harmless

    refused = openssl_verify(rsa_pki, victim, crl_check=True)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr
    assert openssl_verify(rsa_pki, bystander, crl_check=True).returncode == 0
    crl = x509.load_pem_x509_crl(rsa_pki.crl("personnes").read_bytes())
    serial = load_cert(victim).serial_number
    entries = [r for r in crl if r.serial_number == serial]
    assert len(entries) == 1
    reason = entries[0].extensions.get_extension_for_class(x509.CRLReason).value
    assert isinstance(reason, x509.CRLReason)
    assert reason.reason == x509.ReasonFlags.key_compromise
    text = openssl("crl", "-in", rsa_pki.crl("personnes"), "-noout", "-text").stdout
    assert format(serial, "X") in text.replace(":", "").upper()
    old_number = before.extensions.get_extension_for_class(x509.CRLNumber).value
    new_number = crl.extensions.get_extension_for_class(x509.CRLNumber).value
    assert isinstance(old_number, x509.CRLNumber) and isinstance(new_number, x509.CRLNumber)
    assert new_number.crl_number > old_number.crl_number
    index = json.loads((rsa_pki.directory / "personnes.index.json").read_text())
    assert [r["serial"] for r in index["revoked"]].count(format(serial, "x")) == 1


def test_revoke_a_server_certificate_goes_to_the_servers_crl(
    rsa_pki: DevPki, tmp_path: Path
) -> None:
    victim = rsa_pki.issue_server("mx.chu-a.test", path=tmp_path / "old-mx.crt")
    rsa_pki.revoke(victim)
    serials = {
        r.serial_number for r in x509.load_pem_x509_crl(rsa_pki.crl("serveurs").read_bytes())
    }
    assert load_cert(victim).serial_number in serials
    persons = x509.load_pem_x509_crl(rsa_pki.crl("personnes").read_bytes())
    assert load_cert(victim).serial_number not in {r.serial_number for r in persons}


def test_revoking_a_foreign_certificate_is_an_error(rsa_pki: DevPki, ec_pki: DevPki) -> None:
    with pytest.raises(DevPkiError, match="not issued by a CA"):
        rsa_pki.revoke(ec_pki.user_cert(ALICE, "sign"))
    with pytest.raises(DevPkiError, match="not issued by a CA"):
        rsa_pki.revoke(rsa_pki.root_cert)


# -------------------------------------------------------- odd certificates
def test_expired_certificate(rsa_pki: DevPki, tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    expired = rsa_pki.issue_user(ALICE, "enc", not_after=past, path=tmp_path / "expired.crt")
    cert = load_cert(expired)
    assert cert.not_valid_after_utc == past.replace(microsecond=0)
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    result = openssl_verify(rsa_pki, expired)
    assert "certificate has expired" in result.stdout + result.stderr


def test_weak_key_no_eku_and_wrong_usages(rsa_pki: DevPki, tmp_path: Path) -> None:
    weak = load_cert(rsa_pki.issue_user(ALICE, "enc", rsa_bits=1024, path=tmp_path / "weak.crt"))
    weak_key = weak.public_key()
    assert isinstance(weak_key, rsa.RSAPublicKey) and weak_key.key_size == 1024

    no_eku = load_cert(rsa_pki.issue_user(ALICE, "enc", eku=(), path=tmp_path / "no-eku.crt"))
    with pytest.raises(x509.ExtensionNotFound):
        no_eku.extensions.get_extension_for_class(x509.ExtendedKeyUsage)

    server_only = rsa_pki.issue_user(ALICE, "sign", eku=("serverAuth",), path=tmp_path / "s.crt")
    assert ekus(load_cert(server_only)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert purposes(server_only)["S/MIME signing"] is False

    signing_only = rsa_pki.issue_user(
        ALICE, "enc", key_usage=("digitalSignature",), path=tmp_path / "wrong-ku.crt"
    )
    assert key_usages(load_cert(signing_only)) == {"digitalSignature"}
    assert purposes(signing_only)["S/MIME encryption"] is False

    other_address = rsa_pki.issue_user(
        ALICE, "enc", emails=("mallory@evil.test",), path=tmp_path / "other.crt"
    )
    san = ext(load_cert(other_address), x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.RFC822Name) == ["mallory@evil.test"]


def test_an_ec_certificate_in_an_rsa_pki_gets_key_agreement(
    rsa_pki: DevPki, tmp_path: Path
) -> None:
    cert = load_cert(rsa_pki.issue_user(ALICE, "enc", ec=True, path=tmp_path / "ec.crt"))
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert key_usages(cert) == {"keyAgreement"}
    assert openssl_verify(rsa_pki, tmp_path / "ec.crt").returncode == 0


def test_issue_reuses_an_existing_key_and_refuses_another_kind(
    rsa_pki: DevPki, tmp_path: Path
) -> None:
    first = load_cert(rsa_pki.issue_user(ALICE, "enc", path=tmp_path / "a.crt"))
    key_bytes = (tmp_path / "a.key").read_bytes()
    second = load_cert(rsa_pki.issue_user(ALICE, "enc", path=tmp_path / "a.crt"))
    assert (tmp_path / "a.key").read_bytes() == key_bytes
    assert first.public_key() == second.public_key()
    assert first.serial_number != second.serial_number
    with pytest.raises(DevPkiError, match="never replaced"):
        rsa_pki.issue_user(ALICE, "enc", rsa_bits=1024, path=tmp_path / "a.crt")
    assert (tmp_path / "a.key").read_bytes() == key_bytes


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.issue_user("not-an-address", "sign"), "not a usable mail address"),
        (lambda p: p.issue_user("../../etc@x.test", "sign"), "not a usable mail address"),
        (lambda p: p.issue_user("a b@x.test", "sign"), "not a usable mail address"),
        (lambda p: p.issue_user("élise@x.test", "sign"), "not a usable mail address"),
        (lambda p: p.issue_user(ALICE, "both"), "purpose must be one of"),
        (lambda p: p.issue_user(ALICE, "x", path=Path("/nonexistent/x.crt")), "purpose must"),
        (lambda p: p.issue_user(ALICE, "enc", ec=True, rsa_bits=1024), "contradict"),
        (lambda p: p.issue_user(ALICE, "enc", path=Path("/nonexistent/x.key")), "end in .key"),
        (lambda p: p.issue_user(ALICE, "sign", key_usage=("sign",)), "unknown key usage"),
        (lambda p: p.issue_user(ALICE, "sign", eku=("mail",)), "unknown extended key usage"),
        (lambda p: p.issue_server("localhost"), "not a usable host name"),
        (lambda p: p.issue_server("mx/../x.test"), "not a usable host name"),
        (lambda p: p.ca_cert("other"), "unknown CA"),
        (lambda p: p.user_cert("nobody@chu-a.test", "sign"), "does not exist"),
    ],
)
def test_bad_requests_are_typed_errors(rsa_pki: DevPki, call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(DevPkiError, match=message):
        call(rsa_pki)


# ---------------------------------------------------------------- variants
def test_ec_variant(ec_pki: DevPki) -> None:
    for path in [
        ec_pki.root_cert,
        ec_pki.user_cert(ALICE, "sign"),
        ec_pki.user_cert(ALICE, "enc"),
        ec_pki.server_cert("mx.chu-a.test"),
    ]:
        key = load_cert(path).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert key_usages(load_cert(ec_pki.user_cert(ALICE, "enc"))) == {"keyAgreement"}
    assert key_usages(load_cert(ec_pki.server_cert("mx.chu-a.test"))) == {"digitalSignature"}
    leaves = [ec_pki.user_cert(a, p) for a in DEMO_USERS for p in ("sign", "enc")]
    result = openssl_verify(ec_pki, *leaves, ec_pki.server_cert("mx.chu-a.test"), crl_check=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert purposes(ec_pki.user_cert(ALICE, "sign"))["S/MIME signing"] is True
    # OpenSSL's smimeencrypt purpose demands keyEncipherment; RFC 5753 / RFC 8550 §4.4.2 want
    # keyAgreement on an ECDH recipient, and RFC 5480 §3 forbids keyEncipherment on EC keys.
    assert purposes(ec_pki.user_cert(ALICE, "enc"))["S/MIME encryption"] is False
    assert purposes(ec_pki.server_cert("mx.chu-a.test"))["SSL server"] is True


def test_settings_are_fixed_per_directory(rsa_pki: DevPki, ec_pki: DevPki) -> None:
    with pytest.raises(DevPkiError, match="holds RSA keys"):
        init_dev_pki(rsa_pki.directory, users=(), servers=(), ec=True)
    with pytest.raises(DevPkiError, match="holds EC P-256 keys"):
        init_dev_pki(ec_pki.directory, users=(), servers=(), ec=False)
    with pytest.raises(DevPkiError, match="CRL base URL"):
        init_dev_pki(rsa_pki.directory, users=(), servers=(), crl_base_url="http://other.test")
    reopened = load_dev_pki(ec_pki.directory)
    assert reopened.ec and reopened.settings.crl_base_url is None
    assert set(DEMO_USERS) <= set(reopened.users())


def test_load_dev_pki_of_a_plain_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DevPkiError, match="not a development PKI"):
        load_dev_pki(tmp_path)


def test_modes(rsa_pki: DevPki) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(rsa_pki.directory) == 0o700
    assert mode(rsa_pki.directory / "users") == 0o700
    keys = list(rsa_pki.directory.rglob("*.key"))
    assert len(keys) == 3 + 2 * len(DEMO_USERS) + len(SERVERS)
    assert {mode(k) for k in keys} == {0o600}
    public = [p for p in rsa_pki.directory.rglob("*") if p.is_file() and p.suffix != ".key"]
    assert {mode(p) for p in public} == {0o644}

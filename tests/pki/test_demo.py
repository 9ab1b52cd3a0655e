"""Demo annuaire (LDIF, written through the annuaire model) and key store built from the
development PKI."""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from annuaire.ldif import read_ldif_file
from annuaire.ldif_backend import LdifDirectory
from annuaire.mapping import DEFAULT_ATTRIBUTES
from annuaire.search import SearchQuery, search
from gateway.pki.demo import (
    DEMO_PRACTITIONERS,
    ORGANISATION_KEY_FILE,
    PEOPLE_DN,
    install_demo_keys,
    install_organisation_key,
    local_addresses,
    practitioner_dn,
    practitioner_for,
    write_demo_annuaire,
)
from gateway.pki.dev import DEMO_USERS, DevPki, DevPkiError, load_dev_pki
from gateway.relay.agent import OrganisationSigner
from gateway.smime.keystore import KeyStore
from tests.peers.procs import require_binary
from tests.peers.slapd import SlapdInstance
from tests.pki.conftest import openssl_verify, purposes

SCHEMA = Path(__file__).resolve().parents[2] / "annuaire" / "schema" / "missive-sante.schema"


@pytest.fixture(scope="module")
def annuaire(rsa_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "var" / "annuaire.ldif"
    assert write_demo_annuaire(rsa_pki, path)
    return path


def test_demo_practitioners_are_the_demo_users() -> None:
    assert tuple(p.address for p in DEMO_PRACTITIONERS) == DEMO_USERS


def test_ldif_entries_hold_the_encryption_certificate(rsa_pki: DevPki, annuaire: Path) -> None:
    text = annuaire.read_text(encoding="ascii")  # the writer base64-encodes non-ASCII
    assert all(len(line) <= 76 for line in text.splitlines())
    records = {record.dn: record for record in read_ldif_file(annuaire)}
    assert list(records)[:2] == ["dc=annuaire,dc=test", PEOPLE_DN]
    for practitioner in DEMO_PRACTITIONERS:
        record = records[f"uid={practitioner.national_id},{PEOPLE_DN}"]
        assert practitioner_dn(practitioner) == record.dn
        assert {b"inetOrgPerson", b"missiveHealthEntry"} <= set(record.values("objectClass"))
        assert record.values("mail") == [practitioner.address.encode()]
        assert record.values("cn") == [practitioner.common_name.encode()]
        assert record.values("missiveNationalId") == [str(practitioner.national_id).encode()]
        assert record.values("postalCode") == [practitioner.postal_code.encode()]
        enc = x509.load_pem_x509_certificate(
            rsa_pki.user_cert(practitioner.address, "enc").read_bytes()
        )
        assert record.values("userCertificate;binary") == [
            enc.public_bytes(serialization.Encoding.DER)
        ]
    bruno = records[f"uid=899900000002,{PEOPLE_DN}"]
    assert "Service de pédiatrie".encode() in bruno.values("postalAddress")[0]


async def test_the_ldif_backend_serves_the_demo(annuaire: Path) -> None:
    directory = LdifDirectory(annuaire, DEFAULT_ATTRIBUTES)
    (alice,) = await directory.find_by_mail("alice.martin@chu-a.test")
    assert (alice.specialty_label, alice.organisation, alice.city) == (
        "Cardiologie et maladies vasculaires",
        "CHU A (fictif)",
        "Ville-A",
    )
    assert alice.postal_address == ("Service de cardiologie", "1 rue de l'Exemple")
    assert len(alice.certificates) == 1
    page = await search(directory, SearchQuery(specialty="pediatrie"))
    assert [e.display_name for e in page.entries] == ["Bruno Petit"]


def test_openldap_parses_the_ldif(annuaire: Path) -> None:
    """``ldapadd -n`` parses the file and stops before connecting (nothing listens)."""
    ldapadd = require_binary("ldapadd")
    result = subprocess.run(
        [ldapadd, "-n", "-x", "-H", "ldap://127.0.0.1:9", "-f", str(annuaire)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("adding new entry") == 2 + len(DEMO_PRACTITIONERS)


@pytest.mark.peer
def test_slapd_with_the_health_schema_loads_the_demo(
    annuaire: Path, slapd_factory: Callable[..., SlapdInstance]
) -> None:
    """slapadd (offline bulk load) accepts the file as written, schema checks included."""
    slapd = slapd_factory(extra_schemas=[SCHEMA], base_entries=False, ldif=[annuaire])
    out = slapd.ldapsearch("(missiveSearchKey=s:cardio*)", "mail", base=PEOPLE_DN)
    assert "mail: alice.martin@chu-a.test" in out


def test_existing_annuaire_is_kept_unless_overwrite(rsa_pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "annuaire.ldif"
    path.write_text("# edited by hand\n")
    assert not write_demo_annuaire(rsa_pki, path, overwrite=False)
    assert path.read_text() == "# edited by hand\n"
    assert write_demo_annuaire(rsa_pki, path, base_entries=False)
    dns = [record.dn for record in read_ldif_file(path)]
    assert len(dns) == len(DEMO_PRACTITIONERS)
    assert all(dn.startswith("uid=8999") for dn in dns)


def test_annuaire_of_an_unknown_user_is_an_error(rsa_pki: DevPki, tmp_path: Path) -> None:
    with pytest.raises(DevPkiError, match="does not exist"):
        write_demo_annuaire(rsa_pki, tmp_path / "a.ldif", [practitioner_for("zoe@chu-a.test")])
    assert not (tmp_path / "a.ldif").exists()


def test_practitioner_for_a_non_demo_address() -> None:
    other = practitioner_for("jean-paul.roux@chu-a.test")
    assert (other.given_name, other.surname, other.postal_lines) == ("Jean-Paul", "Roux", ())
    assert practitioner_dn(other) == f"uid=jean-paul.roux@chu-a.test,{PEOPLE_DN}"
    assert practitioner_for("secretariat@chu-a.test").surname == "Secretariat"
    assert practitioner_for("claire.durand@CLINIQUE-B.test") == DEMO_PRACTITIONERS[2]


# -------------------------------------------------------------- key store
def test_install_demo_keys_for_local_users_only(rsa_pki: DevPki, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    local = local_addresses(DEMO_USERS, ["CHU-A.test"])
    assert local == ["alice.martin@chu-a.test", "bruno.petit@chu-a.test"]
    changes = install_demo_keys(rsa_pki, keys_dir, local)
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    files = sorted(p.name for p in keys_dir.iterdir())
    assert files == sorted(f"{a}.{p}.pem" for a in local for p in ("sign", "enc"))
    assert {c.action for c in changes} == {"created"}
    for address in local:
        for purpose in ("sign", "enc"):
            pem = (keys_dir / f"{address}.{purpose}.pem").read_bytes()
            assert stat.S_IMODE((keys_dir / f"{address}.{purpose}.pem").stat().st_mode) == 0o600
            key = serialization.load_pem_private_key(pem, password=None)
            cert = x509.load_pem_x509_certificate(pem)
            assert [cert] == x509.load_pem_x509_certificates(pem)  # one certificate: the leaf
            assert cert.public_key() == key.public_key()
            assert cert == x509.load_pem_x509_certificate(
                rsa_pki.user_cert(address, purpose).read_bytes()
            )


def test_install_demo_keys_never_overwrites(rsa_pki: DevPki, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    mine = keys_dir / "alice.martin@chu-a.test.enc.pem"
    mine.write_bytes(b"my own key")
    changes = install_demo_keys(rsa_pki, keys_dir, ["alice.martin@chu-a.test"])
    assert mine.read_bytes() == b"my own key"
    assert {(c.action, c.path.name) for c in changes} == {
        ("kept", "alice.martin@chu-a.test.enc.pem"),
        ("created", "alice.martin@chu-a.test.sign.pem"),
    }


@pytest.fixture
def pki_copy(rsa_pki: DevPki, tmp_path: Path) -> DevPki:
    """A private copy of the session PKI: issuing the organisation certificate adds files
    that other tests count."""
    shutil.copytree(rsa_pki.directory, tmp_path / "pki")
    return load_dev_pki(tmp_path / "pki")


def test_organisation_key_is_a_signature_certificate_of_postmaster(
    pki_copy: DevPki, tmp_path: Path
) -> None:
    rsa_pki = pki_copy
    keys_dir = tmp_path / "keys"
    install_demo_keys(rsa_pki, keys_dir, ["alice.martin@chu-a.test"])
    changes = install_organisation_key(rsa_pki, keys_dir, "CHU-A.test")
    target = keys_dir / ORGANISATION_KEY_FILE
    assert ("created", target) in {(c.action, c.path) for c in changes}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    signer = OrganisationSigner.load(target)  # what the secure agent reads
    cert = signer.certificate
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "CHU A (fictif)"
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["postmaster@chu-a.test"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_encipherment
    assert [c.subject for c in signer.chain] == [
        x509.load_pem_x509_certificate(rsa_pki.ca_cert("personnes").read_bytes()).subject
    ]
    leaf = tmp_path / "org.crt"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert openssl_verify(rsa_pki, leaf).returncode == 0
    assert purposes(leaf)["S/MIME signing"]
    # the key store next to it still loads: the subdirectory is not a key file
    store, problems = KeyStore.scan(keys_dir)
    assert problems == []
    assert {k.address for k in store.keys} == {"alice.martin@chu-a.test"}


def test_organisation_key_is_never_overwritten(pki_copy: DevPki, tmp_path: Path) -> None:
    rsa_pki = pki_copy
    keys_dir = tmp_path / "keys"
    install_organisation_key(rsa_pki, keys_dir, "chu-a.test")
    target = keys_dir / ORGANISATION_KEY_FILE
    before = target.read_bytes()
    changes = install_organisation_key(rsa_pki, keys_dir, "chu-a.test")
    assert target.read_bytes() == before
    assert [(c.action, c.path) for c in changes] == [("kept", target)]

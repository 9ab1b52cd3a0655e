"""Demo annuaire (LDIF) and key store built from the development PKI."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.pki.demo import (
    DEMO_PRACTITIONERS,
    PEOPLE_DN,
    install_demo_keys,
    ldif_line,
    local_addresses,
    practitioner_for,
    write_demo_annuaire,
)
from gateway.pki.dev import DEMO_USERS, DevPki, DevPkiError
from tests.peers.procs import require_binary

Entry = dict[str, list[str | bytes]]


def parse_ldif(text: str) -> list[tuple[str, Entry]]:
    """A tiny RFC 2849 content reader: unfolds lines, decodes ``::`` base64 values
    (attributes ending in ``;binary`` stay bytes, others are UTF-8), skips ``version``."""
    records: list[tuple[str, Entry]] = []
    for block in text.split("\n\n"):
        unfolded = block.replace("\n ", "")
        lines = [line for line in unfolded.split("\n") if line and not line.startswith("#")]
        if not lines or lines[0].startswith("version:"):
            continue
        pairs: list[tuple[str, str | bytes]] = []
        for line in lines:
            name, _, rest = line.partition(":")
            if rest.startswith(":"):
                raw = base64.b64decode(rest[1:].strip(), validate=True)
                pairs.append((name, raw if name.endswith(";binary") else raw.decode("utf-8")))
            else:
                pairs.append((name, rest[1:] if rest.startswith(" ") else rest))
        (first, dn), *attributes = pairs
        assert first == "dn" and isinstance(dn, str)
        entry: Entry = {}
        for name, value in attributes:
            entry.setdefault(name, []).append(value)
        records.append((dn, entry))
    return records


@pytest.fixture(scope="module")
def annuaire(rsa_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "var" / "annuaire.ldif"
    assert write_demo_annuaire(rsa_pki, path)
    return path


def test_demo_practitioners_are_the_demo_users() -> None:
    assert tuple(p.address for p in DEMO_PRACTITIONERS) == DEMO_USERS


def test_ldif_entries_hold_the_encryption_certificate(rsa_pki: DevPki, annuaire: Path) -> None:
    text = annuaire.read_text(encoding="utf-8")
    assert text.startswith("version: 1\n")
    assert all(len(line) <= 76 for line in text.splitlines())
    records = dict(parse_ldif(text))
    assert list(records)[:2] == ["dc=annuaire,dc=test", PEOPLE_DN]
    for practitioner in DEMO_PRACTITIONERS:
        entry = records[f"uid={practitioner.address},{PEOPLE_DN}"]
        assert "inetOrgPerson" in entry["objectClass"]
        assert entry["mail"] == [practitioner.address]
        assert entry["cn"] == [f"{practitioner.given_name} {practitioner.surname}"]
        assert entry["sn"] == [practitioner.surname]
        assert entry["givenName"] == [practitioner.given_name]
        assert entry["postalAddress"] == ["$".join(practitioner.postal_lines)]
        assert entry["postalCode"] == [practitioner.postal_code]
        assert entry["l"] == [practitioner.locality]
        enc = x509.load_pem_x509_certificate(
            rsa_pki.user_cert(practitioner.address, "enc").read_bytes()
        )
        assert entry["userCertificate;binary"] == [enc.public_bytes(serialization.Encoding.DER)]
    bruno = records[f"uid=bruno.petit@chu-a.test,{PEOPLE_DN}"]
    assert "Service de pédiatrie" in str(bruno["postalAddress"][0])  # non-ASCII went base64


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


def test_existing_annuaire_is_kept_unless_overwrite(rsa_pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "annuaire.ldif"
    path.write_text("# edited by hand\n")
    assert not write_demo_annuaire(rsa_pki, path, overwrite=False)
    assert path.read_text() == "# edited by hand\n"
    assert write_demo_annuaire(rsa_pki, path, base_entries=False)
    dns = [dn for dn, _ in parse_ldif(path.read_text())]
    assert len(dns) == len(DEMO_PRACTITIONERS)
    assert all(dn.startswith("uid=") for dn in dns)


def test_annuaire_of_an_unknown_user_is_an_error(rsa_pki: DevPki, tmp_path: Path) -> None:
    with pytest.raises(DevPkiError, match="does not exist"):
        write_demo_annuaire(rsa_pki, tmp_path / "a.ldif", [practitioner_for("zoe@chu-a.test")])


def test_practitioner_for_a_non_demo_address() -> None:
    other = practitioner_for("jean-paul.roux@chu-a.test")
    assert (other.given_name, other.surname, other.postal_lines) == ("Jean-Paul", "Roux", ())
    assert practitioner_for("secretariat@chu-a.test").surname == "Secretariat"
    assert practitioner_for("claire.durand@CLINIQUE-B.test") == DEMO_PRACTITIONERS[2]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "cn: plain"),
        (" leading space", "cn:: IGxlYWRpbmcgc3BhY2U="),
        (":colon", "cn:: OmNvbG9u"),
        ("<angle", "cn:: PGFuZ2xl"),
        ("trailing ", "cn:: dHJhaWxpbmcg"),
        ("é", "cn:: w6k="),
        ("two\nlines", "cn:: dHdvCmxpbmVz"),
    ],
)
def test_ldif_line_encodes_unsafe_values(value: str, expected: str) -> None:
    assert ldif_line("cn", value) == expected


def test_ldif_line_folds_at_76_columns() -> None:
    folded = ldif_line("description", "x" * 200)
    lines = folded.split("\n")
    assert all(len(line) <= 76 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    assert folded.replace("\n ", "") == "description: " + "x" * 200


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

"""The files a configuration names: presence, PEM content, key/certificate match, modes."""

from __future__ import annotations

import os
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.config import material
from tests.config.support import (
    BASE,
    LOCAL_USER,
    REPOSITORY,
    Site,
    cert_pem,
    crl_of,
    ec_key,
    key_pem,
    replace,
    self_signed,
)


def assert_line(lines: list[str], expected: str) -> None:
    assert any(line.startswith(expected) for line in lines), lines


def test_missing_certificate_file(site: Site) -> None:
    os.remove(site.path("var/pki/mx.chu-a.test.crt"))
    lines = site.problems(BASE)
    path = site.path("var/pki/mx.chu-a.test.crt")
    assert lines == [f"tls.certificate: file {path} does not exist"]


def test_directory_instead_of_file(site: Site) -> None:
    site.path("var/pki/mx.chu-a.test.crt").unlink()
    site.path("var/pki/mx.chu-a.test.crt").mkdir()
    assert_line(site.problems(BASE), "tls.certificate: ")
    assert "is a directory, not a file" in site.problems(BASE)[0]


def test_key_certificate_mismatch(site: Site) -> None:
    site.write_private("var/pki/mx.chu-a.test.key", key_pem(ec_key()))
    key = site.path("var/pki/mx.chu-a.test.key")
    crt = site.path("var/pki/mx.chu-a.test.crt")
    assert site.problems(BASE) == [
        f"tls.private_key: {key} does not match the certificate in {crt} (its first one)"
    ]


def test_certificate_chain_order_matters(site: Site) -> None:
    """The leaf must come first: a chain written CA-first does not match the key."""
    crt = site.path("var/pki/mx.chu-a.test.crt")
    blocks = crt.read_bytes().split(b"-----END CERTIFICATE-----\n")
    assert len(blocks) == 3  # leaf, intermediate, "" after the last END
    crt.write_bytes(
        blocks[1] + b"-----END CERTIFICATE-----\n" + blocks[0] + b"-----END CERTIFICATE-----\n"
    )
    assert_line(site.problems(BASE), "tls.private_key: ")


@pytest.mark.parametrize(
    ("mode", "exposure"),
    [
        (0o644, "readable by group and others"),
        (0o640, "readable by its group"),
        (0o604, "readable by others"),
        (0o660, "readable by its group"),
    ],
)
def test_key_readable_by_others(site: Site, mode: int, exposure: str) -> None:
    key = site.path("var/pki/mx.chu-a.test.key")
    os.chmod(key, mode)
    assert site.problems(BASE) == [
        f"tls.private_key: key file {key} is {exposure} (mode {mode:04o}); chmod 600"
    ]


def test_key_mode_and_mismatch_both_reported(site: Site) -> None:
    key = site.write_private("var/pki/mx.chu-a.test.key", key_pem(ec_key()), mode=0o644)
    lines = site.problems(BASE)
    assert len(lines) == 2
    assert "readable by group and others" in lines[0] and "does not match" in lines[1]
    assert str(key) in lines[0]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello", "is not a PEM file"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "malformed PEM"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "is not valid X.509"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "no certificate in"),
    ],
)
def test_bad_certificate_pem(site: Site, content: bytes, reason: str) -> None:
    site.path("var/pki/mx.chu-a.test.crt").write_bytes(content)
    (line,) = site.problems(BASE)
    assert line.startswith("tls.certificate: ") and reason in line


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"garbage", "is not a PEM file"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "cannot be parsed"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "no private key in"),
    ],
)
def test_bad_private_key_pem(site: Site, content: bytes, reason: str) -> None:
    site.write_private("var/pki/mx.chu-a.test.key", content)
    (line,) = site.problems(BASE)
    assert line.startswith("tls.private_key: ") and reason in line


def test_encrypted_and_double_keys_are_refused(site: Site) -> None:
    key = ec_key()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    site.write_private("var/pki/mx.chu-a.test.key", encrypted)
    assert_line(site.problems(BASE), "tls.private_key: the key in ")
    assert "is encrypted" in site.problems(BASE)[0]
    site.write_private("var/pki/mx.chu-a.test.key", key_pem(key) + key_pem(key))
    assert "holds more than one private key" in site.problems(BASE)[0]


def test_listener_own_certificate(site: Site) -> None:
    shutil.copy(site.path("var/pki/mx.chu-a.test.crt"), site.path("var/pki/own.crt"))
    site.write_private("var/pki/own.key", key_pem(ec_key()))
    text = replace(
        BASE,
        'kind = "submission"',
        'kind = "submission"\ncertificate = "var/pki/own.crt"\nprivate_key = "var/pki/own.key"',
    )
    assert_line(site.problems(text), "listeners[0].private_key: ")
    shutil.copy(site.path("var/pki/mx.chu-a.test.key"), site.path("var/pki/own.key"))
    config = site.load(text)
    assert config.listeners[0].certificate == site.path("var/pki/own.crt")


def test_anchor_without_ca_certificate(site: Site) -> None:
    key = ec_key()
    site.path("var/pki/root.crt").write_bytes(cert_pem(self_signed(key, "leaf", ca=False)))
    lines = site.problems(BASE)
    assert f"trust.anchors[0]: {site.path('var/pki/root.crt')} holds no CA certificate" in lines


def test_intermediates_must_be_cas(site: Site) -> None:
    leaf = self_signed(ec_key(), "not a ca", ca=False)
    site.path("var/pki/intermediates.pem").write_bytes(cert_pem(leaf))
    assert_line(site.problems(BASE), "trust.intermediates[0]: certificate 1 in ")


def test_missing_anchor_second_entry(site: Site) -> None:
    text = replace(
        BASE, 'anchors = ["var/pki/root.crt"]', 'anchors = ["var/pki/root.crt", "var/none.crt"]'
    )
    assert site.problems(text) == [
        f"trust.anchors[1]: file {site.path('var/none.crt')} does not exist"
    ]


def test_crl_pem_der_and_bad(site: Site) -> None:
    # DER is accepted as well as PEM
    crl = site.path("var/pki/personnes.crl")
    pem_data = crl.read_bytes()
    der = material.read_crls(crl)[0].public_bytes(serialization.Encoding.DER)
    crl.write_bytes(der)
    site.load()
    crl.write_bytes(b"not a crl")
    assert site.problems(BASE) == [f"trust.crls[0]: {crl} is neither a PEM nor a DER CRL"]
    crl.write_bytes(pem_data.replace(b"X509 CRL", b"CERTIFICATE"))
    assert_line(site.problems(BASE), "trust.crls[0]: ")


def test_crl_of_an_unknown_issuer(site: Site) -> None:
    key = ec_key()
    stranger = self_signed(key, "Other CA", ca=True)
    crl = crl_of(key, stranger)
    site.path("var/pki/serveurs.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    (line,) = site.problems(BASE)
    assert (
        line.startswith("trust.crls[1]: ")
        and "is issued by CN=Other CA, which is not among" in line
    )


def test_liste_blanche(site: Site) -> None:
    text = replace(BASE, "[trust]\n", '[trust]\nliste_blanche = "var/liste-blanche.xml"\n')
    blanche = site.path("var/liste-blanche.xml")
    assert site.problems(text) == [f"trust.liste_blanche: file {blanche} does not exist"]
    blanche.write_text("<domaines><domaine nom='x.test'/>")
    assert_line(site.problems(text), "trust.liste_blanche: ")
    blanche.write_text(
        '<!DOCTYPE x [<!ENTITY a "aaaa">]><domaines>&a;</domaines>'
    )  # entities are refused (defusedxml)
    assert_line(site.problems(text), "trust.liste_blanche: ")
    blanche.write_text("<domaines><domaine nom='x.test'/></domaines>")  # not the ANS format
    assert_line(site.problems(text), "trust.liste_blanche: ")
    blanche.write_bytes((REPOSITORY / "tests/data/listeblanche-sample.xml").read_bytes())
    assert site.load(text).trust.liste_blanche == blanche


@pytest.mark.parametrize(("mode", "data", "reason"), [
    (0o644, b"pw\n", "secret file {path} is readable by group and others (mode 0644); chmod 600"),
    (0o600, b"\n", "secret file {path} is empty"),
])  # fmt: skip
def test_secret_files(site: Site, mode: int, data: bytes, reason: str) -> None:
    path = site.write_private("conf/ldap.secret", data, mode=mode)
    text = (
        BASE
        + '\n[annuaire]\nbind_dn = "cn=gw,dc=annuaire,dc=test"\n'
        + 'bind_password_file = "conf/ldap.secret"\n'
    )
    assert site.problems(text) == [f"annuaire.bind_password_file: {reason.format(path=path)}"]


def test_secret_files_of_routes_and_imap(site: Site) -> None:
    text = BASE + (
        '\n[[routes]]\nname = "a"\ndomains = ["a.test"]\nnext_hop = "mx.a.test"\n'
        'auth_user = "gw"\nauth_password_file = "conf/a.secret"\n'
        '\n[[inbound.imap_fetch]]\nurl = "imaps://imap.partner.test/INBOX"\nuser = "alice"\n'
        'password_file = "conf/imap.secret"\ndeliver_to_address = "alice@chu-a.test"\n'
    )
    lines = site.problems(text)
    assert (
        f"routes[0].auth_password_file: file {site.path('conf/a.secret')} does not exist" in lines
    )
    assert_line(lines, "inbound.imap_fetch[0].password_file: file ")


def test_annuaire_files(site: Site) -> None:
    os.remove(site.path("var/annuaire.ldif"))
    ldif = site.path("var/annuaire.ldif")
    assert site.problems(BASE) == [f"annuaire.ldif: file {ldif} does not exist"]
    site.load(BASE + '\n[annuaire]\nbackend = "ldap"\n')  # the LDIF file is not needed then
    text = BASE + '\n[annuaire]\nbackend = "ldap"\nca_file = "var/pki/mx.chu-a.test.key"\n'
    assert_line(site.problems(text), "annuaire.ca_file: ")
    site.load(BASE + '\n[annuaire]\nbackend = "ldap"\nca_file = "var/pki/root.crt"\n')


def test_users_file(site: Site) -> None:
    users = site.path("conf/users.toml")
    users.write_text("[[users]\n")
    assert_line(site.problems(BASE), f"auth.users_file: {users} is not valid TOML: ")
    users.write_text("users = 3\n")
    assert_line(site.problems(BASE), "auth.users_file: ")
    users.write_text('[[users]]\nlogin = "a@chu-a.test"\n')
    site.load()
    users.unlink()
    assert site.problems(BASE) == [f"auth.users_file: file {users} does not exist"]


def test_organisation_signing(site: Site, pki_user_files: tuple[bytes, bytes]) -> None:
    key, certificate = pki_user_files
    text = BASE + '\n[keys]\norganisation_signing = "var/org.pem"\n'
    site.write_private("var/org.pem", key + certificate)
    assert site.load(text).keys.organisation_signing == site.path("var/org.pem")
    site.write_private("var/org.pem", key_pem(ec_key()) + certificate)
    assert_line(site.problems(text), "keys.organisation_signing: the key in ")
    site.write_private("var/org.pem", key)
    assert_line(site.problems(text), "keys.organisation_signing: no certificate in ")
    os.chmod(site.path("var/org.pem"), 0o640)
    assert any("readable by its group (mode 0640)" in line for line in site.problems(text))


@pytest.fixture
def pki_user_files(site: Site) -> tuple[bytes, bytes]:
    """The PEM key and certificate of the local user's signature pair (from the site PKI)."""
    users = site.path("var/pki/users")
    return (
        (users / f"{LOCAL_USER}.sign.key").read_bytes(),
        (users / f"{LOCAL_USER}.sign.crt").read_bytes(),
    )


def test_key_store_scan(site: Site) -> None:
    """check-config also checks every key file of keys.dir (what ./run installs there)."""
    keys = site.path("var/keys")
    assert sorted(p.name for p in keys.iterdir()) == [
        f"{LOCAL_USER}.enc.pem",
        f"{LOCAL_USER}.sign.pem",
    ]
    site.load()
    os.chmod(keys / f"{LOCAL_USER}.enc.pem", 0o644)
    (keys / "stray.pem").write_bytes(b"x")
    site.write_private(f"var/keys/{LOCAL_USER}.2024.enc.pem", key_pem(ec_key()))
    lines = site.problems(BASE)
    assert (
        f"keys.dir: key file {keys}/{LOCAL_USER}.enc.pem is readable by group and others"
        " (mode 0644); chmod 600" in lines
    )
    assert f"keys.dir: no certificate in {keys}/{LOCAL_USER}.2024.enc.pem" in lines
    assert (
        "keys.dir: stray.pem is not named <address>.sign.pem or <address>[.<tag>].enc.pem" in lines
    )


def test_directory_targets(site: Site) -> None:
    site.path("var/spool-file").write_text("")
    site.path("var/open").mkdir()
    os.chmod(site.path("var/open"), 0o777)  # noqa: S103 - the mistake under test
    text = replace(
        BASE, "[gateway]\n", '[gateway]\nspool_dir = "var/spool-file/q"\ndata_dir = "var/open"\n'
    )
    text += '\n[audit]\npath = "var/pki"\n[postal]\noutbox = "var/spool-file"\n'
    lines = site.problems(text)
    spool = site.path("var/spool-file")
    assert f"gateway.spool_dir: {spool}/q cannot be created: {spool} is not a directory" in lines
    assert (
        f"gateway.data_dir: directory {site.path('var/open')} is writable by group and"
        " others (mode 0777); chmod 700" in lines
    )
    assert f"audit.path: {site.path('var/pki')} exists and is not a regular file" in lines
    assert f"postal.outbox: {spool} exists and is not a directory" in lines
    # none of them has to exist: they are created at start
    text = replace(BASE, "[gateway]\n", '[gateway]\nspool_dir = "var/a/b/c"\n')
    text += '\n[inbound]\ndeliver_to = "maildir:var/x/mail"\n[audit]\npath = "var/y/audit.db"\n'
    assert site.load(text).gateway.spool_dir == site.path("var/a/b/c")


def test_home_must_be_a_directory(site: Site) -> None:
    text = replace(BASE, 'home = ".."', 'home = "../nowhere"')
    lines = site.problems(text)
    assert f"gateway.home: {site.path('nowhere')} is not an existing directory" in lines

"""Reading the key store (``gateway.smime.keystore``): names, modes, the choice of the
signing key and of the encryption certificate, decryption across renewed keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki.dev import DevPki
from gateway.smime.decrypt import decrypt
from gateway.smime.encrypt import Recipient, encrypt
from gateway.smime.keyimport import import_identity, read_identity
from gateway.smime.keystore import KeyStore, KeyStoreError, NoUsableKey, split_file_name
from gateway.smime.validate import CertificateValidator
from tests.smime.keystore.support import ALICE, BRUNO, CONTENT, certificate, renewed, write_pem


def _store_with(pki: DevPki, keys: Path, *cert_paths: Path, address: str = ALICE) -> KeyStore:
    for number, cert_path in enumerate(cert_paths):
        pem = write_pem(cert_path, keys.parent / f"in-{number}-{cert_path.name}.pem")
        import_identity(keys, address, read_identity(pem, lambda: b""))
    return KeyStore.load(keys)


def test_file_names_are_parsed_against_the_certificate(ks_pki: DevPki) -> None:
    cert = certificate(ks_pki.user_cert(ALICE, "enc"))
    assert split_file_name(f"{ALICE}.enc.pem", cert) == (ALICE, "", "enc")
    assert split_file_name(f"{ALICE}.20260101-abc.enc.pem", cert) == (ALICE, "20260101-abc", "enc")
    assert split_file_name(f"{ALICE}.old.2025.sign.pem", cert) == (ALICE, "old.2025", "sign")
    for bad in (f"{BRUNO}.enc.pem", f"{ALICE}.pem", "alice.enc.pem", f"{ALICE}.enc.key"):
        with pytest.raises(ValueError):
            split_file_name(bad, cert)


def test_group_readable_or_broken_files_are_refused(ks_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _store_with(ks_pki, keys, ks_pki.user_cert(ALICE, "enc"))
    (keys / f"{ALICE}.enc.pem").chmod(0o640)
    (keys / f"{BRUNO}.sign.pem").write_bytes(b"not pem")
    (keys / f"{BRUNO}.sign.pem").chmod(0o600)
    with pytest.raises(KeyStoreError) as caught:
        KeyStore.load(keys)
    problems = caught.value.problems
    assert len(problems) == 2
    assert any("readable by its group (mode 0640); chmod 600" in line for line in problems)
    assert any(f"{BRUNO}.sign.pem is not a PEM file" in line for line in problems)
    store, lines = KeyStore.scan(keys)
    assert (store.keys, len(lines)) == ((), 2)


def test_a_misnamed_file_is_a_problem_not_a_guess(ks_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _store_with(ks_pki, keys, ks_pki.user_cert(ALICE, "enc"))
    shutil.move(keys / f"{ALICE}.enc.pem", keys / f"{BRUNO}.enc.pem")
    _, problems = KeyStore.scan(keys)
    assert problems == [
        f"{BRUNO}.enc.pem: its name names no address of its certificate's subjectAltName"
    ]


def test_rollover_old_mail_still_decrypts(ks_pki: DevPki, tmp_path: Path) -> None:
    """A message encrypted to the old certificate decrypts after the renewed one is
    imported; the RecipientIdentifier (issuer-serial or SKI) picks the key."""
    old_cert_path = ks_pki.user_cert(ALICE, "enc")
    keys = tmp_path / "keys"
    store = _store_with(ks_pki, keys, old_cert_path)
    old_cert = certificate(old_cert_path)
    queued = encrypt(CONTENT, [Recipient(old_cert)], cipher="aes-256-gcm")
    queued_ski = encrypt(CONTENT, [Recipient(old_cert, id_type="ski")])
    new_cert_path = renewed(ks_pki, ALICE, "enc", tmp_path / "renewal")
    store = _store_with(ks_pki, keys, new_cert_path)
    assert len(store.decryption_keys(ALICE)) == 2
    for message in (queued, queued_ski):
        result = decrypt(message, store.decryption_keys(ALICE))
        assert result.content == CONTENT
        assert result.certificate == old_cert
    fresh = encrypt(CONTENT, [Recipient(certificate(new_cert_path))])
    assert decrypt(fresh, store.decryption_keys(ALICE)).certificate == certificate(new_cert_path)
    (by_serial,) = store.keys_for_recipient(issuer=old_cert.issuer, serial=old_cert.serial_number)
    assert by_serial.path.name == f"{ALICE}.enc.pem"
    ski = old_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert store.keys_for_recipient(ski=ski) == [by_serial]
    assert store.keys_for_recipient(issuer=old_cert.issuer, serial=1) == []


def test_newest_valid_key_signs_and_encrypts(
    ks_pki: DevPki, tmp_path: Path, validator: CertificateValidator
) -> None:
    keys = tmp_path / "keys"
    _store_with(ks_pki, keys, ks_pki.user_cert(BRUNO, "sign"), address=BRUNO)
    newer = renewed(ks_pki, BRUNO, "sign", tmp_path / "renewal")
    store = _store_with(ks_pki, keys, newer, address=BRUNO)
    assert store.signing_key(BRUNO, validator).certificate == certificate(newer)
    with pytest.raises(NoUsableKey, match="no encryption key for"):
        store.encryption_key(BRUNO, validator)
    ks_pki.revoke(newer)  # the newest is revoked: the older one signs again
    fresh_validator = CertificateValidator.from_files(
        [ks_pki.root_cert], [ks_pki.intermediates], [ks_pki.crl("personnes")], "hard-fail"
    )
    chosen = store.signing_key(BRUNO, fresh_validator)
    assert chosen.certificate == certificate(ks_pki.user_cert(BRUNO, "sign"))


def test_no_valid_key_says_why_for_each(ks_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    store = _store_with(ks_pki, keys, ks_pki.user_cert(ALICE, "sign"))
    stranger = CertificateValidator([certificate(ks_pki.ca_cert("serveurs"))], revocation="off")
    with pytest.raises(NoUsableKey) as caught:
        store.signing_key(ALICE, stranger)
    assert caught.value.problems[0] == f"no valid signing key for {ALICE}:"
    assert caught.value.problems[1].startswith(f"{ALICE}.sign.pem: untrusted")


def test_missing_directory_is_an_empty_store(tmp_path: Path) -> None:
    store = KeyStore.load(tmp_path / "absent")
    assert store.keys == () and store.decryption_keys() == []


def test_keys_are_found_by_mailbox_and_cached_only_for_mailboxes_with_keys(
    ks_pki: DevPki, tmp_path: Path
) -> None:
    """The mailbox index compares as ``addresses_match`` does (domain in any case, local
    part exact); the decryption keys of a mailbox are built once, while addresses
    without keys (chosen by strangers) and non-addresses leave no cache entry."""
    keys = tmp_path / "keys"
    store = _store_with(ks_pki, keys, ks_pki.user_cert(ALICE, "enc"))
    local, domain = ALICE.split("@")
    assert [k.address for k in store.keys_of(f"{local}@{domain.upper()}.")] == [ALICE]
    assert store.keys_of(f"{local.upper()}@{domain}") == []
    assert store.keys_of("not an address") == [] and store.decryption_keys("nobody") == []
    first = store.decryption_keys(f"{local}@{domain.upper()}")
    again = store.decryption_keys(ALICE)
    assert len(first) == 1 and first[0] is again[0]  # built once, then reused
    assert store.decryption_keys(f"{local.upper()}@{domain}") == []
    for stranger in (f"x{n}@{domain}" for n in range(50)):
        assert store.decryption_keys(stranger) == []
    assert len(store.decryption_keys()) == 1
    assert len(store._decryption) == 2  # Alice's mailbox and the whole store only

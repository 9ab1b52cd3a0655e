"""Import into the key store (``gateway.smime.keyimport``): PKCS#12 and PEM, the checks
that refuse a file, the file layout (0600, never overwritten), passwords."""

from __future__ import annotations

import io
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.errors import UsageError
from gateway.pki.dev import DevPki
from gateway.smime import keyimport
from gateway.smime.keyimport import import_identity, read_identity
from gateway.smime.keystore import KeyStore
from tests.smime.keystore.support import (
    ALICE,
    BRUNO,
    PASSWORD,
    certificate,
    renewed,
    write_p12,
    write_pem,
)


def _password(value: bytes = PASSWORD) -> keyimport.PasswordSource:
    return lambda: value


def _refuse() -> bytes:
    raise AssertionError("no password should be asked")


def test_pkcs12_with_password_lands_0600_with_its_chain(ks_pki: DevPki, tmp_path: Path) -> None:
    p12 = write_p12(ks_pki, ks_pki.user_cert(ALICE, "enc"), tmp_path / "alice.p12")
    identity = read_identity(p12, _password())
    assert identity.certificate == certificate(ks_pki.user_cert(ALICE, "enc"))
    assert len(identity.chain) == 2  # both intermediates came along
    keys = tmp_path / "keys"
    (outcome,) = import_identity(keys, ALICE, identity)
    assert (outcome.action, outcome.purpose) == ("created", "enc")
    assert outcome.path == keys / f"{ALICE}.enc.pem"
    assert stat.S_IMODE(outcome.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    text = outcome.path.read_bytes()
    assert text.startswith(b"-----BEGIN PRIVATE KEY-----")  # unencrypted PKCS#8 first
    assert text.count(b"BEGIN CERTIFICATE") == 3  # leaf, then its chain
    (stored,) = KeyStore.load(keys).keys
    assert (stored.address, stored.purpose, stored.tag) == (ALICE, "enc", "")


def test_unprotected_pkcs12_needs_no_password(ks_pki: DevPki, tmp_path: Path) -> None:
    p12 = write_p12(ks_pki, ks_pki.user_cert(ALICE, "sign"), tmp_path / "a.p12", password=None)
    assert read_identity(p12, _refuse).certificate.subject.rfc4514_string().startswith("CN=Alice")


def test_wrong_password_and_garbage_are_told_apart(ks_pki: DevPki, tmp_path: Path) -> None:
    p12 = write_p12(ks_pki, ks_pki.user_cert(ALICE, "enc"), tmp_path / "alice.p12")
    with pytest.raises(UsageError, match="wrong password for this PKCS#12"):
        read_identity(p12, _password(b"not it"))
    garbage = tmp_path / "garbage.p12"
    garbage.write_bytes(b"\x30\x03\x02\x01\x03" + b"x" * 40)
    with pytest.raises(UsageError, match="neither a PEM nor a PKCS#12"):
        read_identity(garbage, _password())


def test_password_file_and_stdin(
    ks_pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p12 = write_p12(ks_pki, ks_pki.user_cert(ALICE, "enc"), tmp_path / "alice.p12")
    secret = tmp_path / "secret"
    secret.write_bytes(PASSWORD + b"\n")
    secret.chmod(0o600)
    assert read_identity(p12, keyimport.password_from_file(secret)).chain
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(PASSWORD + b"\r\n")))
    source = keyimport.password_from_terminal_or_stdin("Password: ")
    assert read_identity(p12, source).chain


def test_encrypted_pem_key(ks_pki: DevPki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from gateway.pki.dev import load_private_key

    key = load_private_key(ks_pki.user_key(BRUNO, "sign"))
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD),
    )
    pem = tmp_path / "bruno.pem"
    pem.write_bytes(ks_pki.user_cert(BRUNO, "sign").read_bytes() + encrypted)  # any order
    assert read_identity(pem, _password()).certificate == certificate(
        ks_pki.user_cert(BRUNO, "sign")
    )
    with pytest.raises(UsageError, match="wrong password for its private key"):
        read_identity(pem, _password(b"nope"))


def test_key_must_match_certificate(ks_pki: DevPki, tmp_path: Path) -> None:
    mixed = write_pem(
        ks_pki.user_cert(ALICE, "sign"), tmp_path / "mixed.pem", ks_pki.user_key(BRUNO, "sign")
    )
    with pytest.raises(UsageError, match="does not match any certificate"):
        read_identity(mixed, _refuse)


def test_address_must_be_in_the_san(ks_pki: DevPki, tmp_path: Path) -> None:
    identity = read_identity(
        write_pem(ks_pki.user_cert(ALICE, "sign"), tmp_path / "a.pem"), _refuse
    )
    with pytest.raises(UsageError, match="not in the certificate's subjectAltName"):
        import_identity(tmp_path / "keys", BRUNO, identity)
    with pytest.raises(UsageError, match="not a usable mail address"):
        import_identity(tmp_path / "keys", "../../etc/passwd", identity)
    assert not (tmp_path / "keys").exists()  # nothing written on refusal


def test_purpose_must_be_allowed_and_auto_takes_every_allowed(
    ks_pki: DevPki, tmp_path: Path
) -> None:
    signing = read_identity(write_pem(ks_pki.user_cert(ALICE, "sign"), tmp_path / "s.pem"), _refuse)
    with pytest.raises(UsageError, match="cannot be used for enc: key usage"):
        import_identity(tmp_path / "keys", ALICE, signing, "enc")
    dual_path = ks_pki.issue_user(
        ALICE,
        "sign",
        key_usage=("digitalSignature", "keyEncipherment"),
        path=tmp_path / "dual" / "alice.dual.crt",
    )
    dual = read_identity(write_pem(dual_path, tmp_path / "dual.pem"), _refuse)
    outcomes = import_identity(tmp_path / "keys", ALICE, dual, "auto")
    assert sorted(o.purpose for o in outcomes) == ["enc", "sign"]
    assert {o.path.name for o in outcomes} == {f"{ALICE}.sign.pem", f"{ALICE}.enc.pem"}


def test_expired_refused_unless_allowed_for_decryption(ks_pki: DevPki, tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=400)
    old_enc = ks_pki.issue_user(
        ALICE,
        "enc",
        not_before=past,
        not_after=past + timedelta(days=365),
        path=tmp_path / "old" / "enc.crt",
    )
    identity = read_identity(write_pem(old_enc, tmp_path / "old.pem"), _refuse)
    with pytest.raises(UsageError, match=r"is not valid now .*--allow-expired"):
        import_identity(tmp_path / "keys", ALICE, identity)
    (outcome,) = import_identity(tmp_path / "keys", ALICE, identity, allow_expired=True)
    assert outcome.purpose == "enc"
    old_sign = ks_pki.issue_user(
        ALICE,
        "sign",
        not_before=past,
        not_after=past + timedelta(days=365),
        path=tmp_path / "old" / "sign.crt",
    )
    signing = read_identity(write_pem(old_sign, tmp_path / "olds.pem"), _refuse)
    with pytest.raises(UsageError, match="it cannot sign"):
        import_identity(tmp_path / "keys", ALICE, signing, allow_expired=True)


def test_renewal_gets_a_new_file_and_reimport_keeps(ks_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = read_identity(write_pem(ks_pki.user_cert(BRUNO, "enc"), tmp_path / "1.pem"), _refuse)
    import_identity(keys, BRUNO, first)
    original = (keys / f"{BRUNO}.enc.pem").read_bytes()
    new_cert = renewed(ks_pki, BRUNO, "enc", tmp_path / "renewal")
    second = read_identity(write_pem(new_cert, tmp_path / "2.pem"), _refuse)
    (outcome,) = import_identity(keys, BRUNO, second)
    tag = keyimport.renewal_tag(second.certificate)
    assert outcome.path.name == f"{BRUNO}.{tag}.enc.pem"
    assert tag[:8] == f"{second.certificate.not_valid_before_utc:%Y%m%d}" and len(tag) == 17
    assert (keys / f"{BRUNO}.enc.pem").read_bytes() == original  # never overwritten
    (again,) = import_identity(keys, BRUNO, second)
    assert (again.action, again.path) == ("kept", outcome.path)
    assert len(list(keys.glob("*.pem"))) == 2

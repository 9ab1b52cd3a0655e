"""Envelope interop with OpenSSL ``cms`` (Debian 12's 3.0): what it encrypts we decrypt,
what we encrypt it decrypts, for every cipher, key transport and identifier type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.smime.decrypt import decrypt, decrypt_entity
from gateway.smime.encrypt import Recipient, encrypt, encrypt_entity
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.types import DecryptError
from tests.peers.cms_tools import OpenSSLCms, run_tool
from tests.smime.envelope.identities import (
    ALICE,
    BOB,
    ERIN,
    FRANK,
    EnvelopePki,
    self_signed,
    shared_envelope_pki,
)

pytestmark = pytest.mark.peer

CONTENT = (
    b"Content-Type: text/plain; charset=us-ascii\r\n\r\nLettre de liaison: voir piece jointe.\r\n"
)


@pytest.fixture(scope="session")
def envelope_pki(tmp_path_factory: pytest.TempPathFactory) -> EnvelopePki:
    return shared_envelope_pki(tmp_path_factory)


@pytest.fixture
def openssl() -> Iterator[OpenSSLCms]:
    """``openssl cms`` in its own temp dir (removed at teardown, also on failure)."""
    with OpenSSLCms() as tool:
        yield tool


def openssl_encrypt(
    tool: OpenSSLCms,
    tmp_path: Path,
    recipients: list[tuple[Path, list[str]]],
    options: list[str],
    outform: str = "DER",
) -> bytes:
    """``openssl cms -encrypt`` with per-recipient ``-keyopt``s and global options."""
    source, out = tmp_path / "content", tmp_path / "enveloped"
    source.write_bytes(CONTENT)
    argv: list[str | Path] = [tool.openssl, "cms", "-encrypt", "-binary", "-in", source]
    argv += ["-outform", outform, "-out", out, *options]
    for cert, keyopts in recipients:
        argv += ["-recip", cert]
        for keyopt in keyopts:
            argv += ["-keyopt", keyopt]
    run_tool(argv)
    return out.read_bytes()


# --------------------------------------------------------------------------- openssl -> us

OAEP = "rsa_padding_mode:oaep"


@pytest.mark.parametrize(
    ("options", "keyopts", "cipher", "transport"),
    [
        (["-aes-128-cbc"], [], "aes-128-cbc", "rsa-pkcs1v15"),
        (["-aes-192-cbc"], [], "aes-192-cbc", "rsa-pkcs1v15"),
        (["-aes-256-cbc"], [], "aes-256-cbc", "rsa-pkcs1v15"),
        (["-aes-128-gcm"], [], "aes-128-gcm", "rsa-pkcs1v15"),
        (["-aes-256-gcm"], [], "aes-256-gcm", "rsa-pkcs1v15"),
        (["-aes-256-gcm"], [OAEP], "aes-256-gcm", "rsa-oaep"),  # OAEP SHA-1 default
        (["-aes-256-cbc"], [OAEP, "rsa_oaep_md:sha256"], "aes-256-cbc", "rsa-oaep"),
        (["-aes-256-cbc"], [OAEP, "rsa_oaep_md:sha384"], "aes-256-cbc", "rsa-oaep"),
        (["-aes-128-gcm"], [OAEP, "rsa_oaep_md:sha512"], "aes-128-gcm", "rsa-oaep"),
        (
            ["-aes-256-gcm"],
            [OAEP, "rsa_oaep_md:sha256", "rsa_mgf1_md:sha384", "rsa_oaep_label:6d697373697665"],
            "aes-256-gcm",
            "rsa-oaep",
        ),
        (["-aes-256-cbc", "-keyid"], [], "aes-256-cbc", "rsa-pkcs1v15"),
        (["-aes-256-gcm", "-keyid"], [OAEP], "aes-256-gcm", "rsa-oaep"),
    ],
)
def test_openssl_rsa_to_us(
    openssl: OpenSSLCms,
    tmp_path: Path,
    envelope_pki: EnvelopePki,
    options: list[str],
    keyopts: list[str],
    cipher: str,
    transport: str,
) -> None:
    message = openssl_encrypt(
        openssl, tmp_path, [(envelope_pki.cert_paths[ALICE], keyopts)], options
    )
    result = decrypt(message, [envelope_pki.key(BOB), envelope_pki.key(ALICE)])
    assert result.content == CONTENT
    assert (result.cipher, result.key_transport) == (cipher, transport)
    assert result.recipient_id.kind == ("ski" if "-keyid" in options else "issuer-serial")


def test_openssl_oaep_label_must_match(
    openssl: OpenSSLCms, tmp_path: Path, envelope_pki: EnvelopePki
) -> None:
    """The label is really used: the message opens, the same one with another label
    (same length) does not."""
    keyopts = [OAEP, "rsa_oaep_md:sha256", "rsa_oaep_label:6d697373697665"]
    message = openssl_encrypt(
        openssl, tmp_path, [(envelope_pki.cert_paths[ALICE], keyopts)], ["-aes-256-gcm"]
    )
    label = bytes.fromhex("04076d697373697665")
    assert message.count(label) == 1
    assert decrypt(message, [envelope_pki.key(ALICE)]).content == CONTENT
    tampered = message.replace(label, bytes.fromhex("04076d69737369766f"))  # other label
    with pytest.raises(DecryptError):
        decrypt(tampered, [envelope_pki.key(ALICE)])


def test_openssl_3des(openssl: OpenSSLCms, tmp_path: Path, envelope_pki: EnvelopePki) -> None:
    message = openssl_encrypt(openssl, tmp_path, [(envelope_pki.cert_paths[ALICE], [])], ["-des3"])
    with pytest.raises(DecryptError):
        decrypt(message, [envelope_pki.key(ALICE)], accept_3des=False)
    result = decrypt(message, [envelope_pki.key(ALICE)], accept_3des=True)
    assert result.content == CONTENT
    assert result.weak and result.cipher == "des-ede3-cbc"


@pytest.mark.parametrize(
    ("options", "keyopts", "cipher"),
    [
        (["-aes-256-cbc"], [], "aes-256-cbc"),
        (["-aes-128-gcm"], [], "aes-128-gcm"),
        (["-aes-256-gcm", "-keyid"], [], "aes-256-gcm"),
        (["-aes-192-cbc"], ["ecdh_kdf_md:sha512"], "aes-192-cbc"),
        (["-aes-256-cbc"], ["ecdh_kdf_md:sha1"], "aes-256-cbc"),
    ],
)
def test_openssl_ec_to_us(
    openssl: OpenSSLCms,
    tmp_path: Path,
    envelope_pki: EnvelopePki,
    options: list[str],
    keyopts: list[str],
    cipher: str,
) -> None:
    message = openssl_encrypt(
        openssl, tmp_path, [(envelope_pki.cert_paths[ERIN], keyopts)], options
    )
    result = decrypt(message, [envelope_pki.key(ERIN)])
    assert (result.content, result.cipher, result.key_transport) == (CONTENT, cipher, "ecdh")


def test_openssl_mixed_recipients_smime_form(
    openssl: OpenSSLCms, tmp_path: Path, envelope_pki: EnvelopePki
) -> None:
    """RSA and EC recipients in one message (cryptography's own pkcs7 fails on this), in
    OpenSSL's S/MIME output (application/pkcs7-mime with LF or CRLF)."""
    recipients = [
        (envelope_pki.cert_paths[ALICE], [OAEP]),
        (envelope_pki.cert_paths[ERIN], []),
        (envelope_pki.cert_paths[BOB], []),
    ]
    entity = openssl_encrypt(openssl, tmp_path, recipients, ["-aes-256-gcm"], outform="SMIME")
    for who in (ALICE, ERIN, BOB):
        result = decrypt_entity(entity, [envelope_pki.key(who)])
        assert result.content == CONTENT
        assert result.authenticated


# --------------------------------------------------------------------------- us -> openssl


@pytest.mark.parametrize("cipher", ["aes-128-cbc", "aes-256-cbc", "aes-128-gcm", "aes-256-gcm"])
@pytest.mark.parametrize(
    ("key_transport", "who"), [("rsa-pkcs1v15", ALICE), ("rsa-oaep", ALICE), ("ecdh", ERIN)]
)
@pytest.mark.parametrize("id_type", ["issuer-serial", "ski"])
def test_us_to_openssl(
    openssl: OpenSSLCms,
    envelope_pki: EnvelopePki,
    cipher: str,
    key_transport: str,
    who: str,
    id_type: str,
) -> None:
    message = encrypt(
        CONTENT, [Recipient(envelope_pki.cert(who), key_transport, id_type)], cipher=cipher
    )
    decrypted = openssl.decrypt(message, envelope_pki.cert_paths[who], envelope_pki.key_path(who))
    assert decrypted == CONTENT


def test_us_to_openssl_several_recipients_smime(
    openssl: OpenSSLCms, envelope_pki: EnvelopePki
) -> None:
    recipients = [
        Recipient(envelope_pki.cert(ALICE), "rsa-oaep"),
        Recipient(envelope_pki.cert(ERIN), "ecdh", "ski"),
        Recipient(envelope_pki.cert(FRANK), "ecdh"),
        Recipient(envelope_pki.cert(BOB), "rsa-pkcs1v15", "ski"),
    ]
    entity = encrypt_entity(CONTENT, recipients, cipher="aes-256-gcm")
    for who in (ALICE, ERIN, FRANK, BOB):
        decrypted = openssl.decrypt(
            entity, envelope_pki.cert_paths[who], envelope_pki.key_path(who), inform="SMIME"
        )
        assert decrypted == CONTENT


def test_p384_both_ways(openssl: OpenSSLCms, tmp_path: Path) -> None:
    """An EC P-384 recipient (the dev PKI makes P-256 only): our sha384kdf ECDH opens in
    OpenSSL, and OpenSSL's ECDH to that key opens here."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = self_signed(key)
    cert_path, key_path = tmp_path / "p384.crt", tmp_path / "p384.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ours = encrypt(CONTENT, [Recipient(cert, "ecdh")], cipher="aes-256-gcm")
    assert openssl.decrypt(ours, cert_path, key_path) == CONTENT
    theirs = openssl_encrypt(openssl, tmp_path, [(cert_path, [])], ["-aes-256-gcm"])
    assert decrypt(theirs, [DecryptionKey(cert, key)]).content == CONTENT

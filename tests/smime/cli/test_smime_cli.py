"""``missive smime sign|encrypt|decrypt|verify`` through ``gateway.cli.main``: round
trips, what ``verify`` prints and its exit status, the one public decryption error,
key rollover through the key store, bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.smime.types import PUBLIC_DECRYPT_ERROR
from tests.smime.cli.conftest import Cli, trust_args
from tests.smime.keystore.support import ALICE, BRUNO, CONTENT, renewed, write_pem

LF_CONTENT = CONTENT.replace(b"\r\n", b"\n")


def _key_args(pki: DevPki, address: str, purpose: str) -> list[str]:
    return [
        "--key",
        str(pki.user_key(address, purpose)),
        "--cert",
        str(pki.user_cert(address, purpose)),
    ]


@pytest.mark.parametrize("opaque", [False, True], ids=["detached", "opaque"])
def test_sign_then_verify(cli: Cli, cli_pki: DevPki, tmp_path: Path, opaque: bool) -> None:
    signed = cli(
        "smime",
        "sign",
        *_key_args(cli_pki, ALICE, "sign"),
        "--chain",
        cli_pki.intermediates,
        *(["--opaque"] if opaque else []),
        stdin=LF_CONTENT,
    )
    assert signed.status == 0, signed.err
    assert (b"smime-type=signed-data" in signed.out) is opaque
    message = tmp_path / "signed.eml"
    message.write_bytes(signed.out)
    out = tmp_path / "content"
    run = cli("smime", "verify", message, "--from", ALICE, "--output", out, *trust_args(cli_pki))
    assert run.status == 0, run.out
    text = run.out.decode()
    assert text.startswith("valid: yes\n")
    for expected in (
        f"form: {'opaque' if opaque else 'detached'}",
        "from bound to signer: yes",
        f"addresses: {ALICE}",
        "validity: 20",
        "certificate: valid",
        "chain: CN=Alice Martin",
        "algorithms: sha256 / rsassa_pkcs1v15",
        "signing time: 20",
        "capabilities: aes-gcm yes, rsa-oaep yes",
    ):
        assert expected in text, expected
    assert out.read_bytes() == CONTENT  # canonical CRLF, as signed


def test_sign_keeps_a_whole_message_s_headers_outside(
    cli: Cli, cli_pki: DevPki, tmp_path: Path
) -> None:
    """A whole message in: From/To/Subject stay outside the signature, so the verifier
    binds the signer to that From with no --from."""
    message = (
        f"From: {ALICE}\r\nTo: {BRUNO}\r\nSubject: essai\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nBonjour\r\n"
    ).encode()
    signed = cli("smime", "sign", *_key_args(cli_pki, ALICE, "sign"), stdin=message)
    assert signed.status == 0, signed.err
    header = signed.out.split(b"\r\n\r\n", 1)[0]
    assert header.startswith(f"From: {ALICE}\r\nTo: {BRUNO}\r\nSubject: essai\r\n".encode())
    assert b"multipart/signed" in header
    path = tmp_path / "signed.eml"
    path.write_bytes(signed.out)
    run = cli("smime", "verify", path, *trust_args(cli_pki))
    assert run.status == 0, run.out
    assert b"from bound to signer: yes" in run.out
    spoofed = tmp_path / "spoofed.eml"
    spoofed.write_bytes(signed.out.replace(f"From: {ALICE}".encode(), f"From: {BRUNO}".encode(), 1))
    assert cli("smime", "verify", spoofed, *trust_args(cli_pki)).status == 1


def test_verify_exits_1_when_invalid(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    signed = cli(
        "smime",
        "sign",
        *_key_args(cli_pki, ALICE, "sign"),
        "--chain",
        cli_pki.intermediates,
        stdin=CONTENT,
    ).out
    message = tmp_path / "signed.eml"
    message.write_bytes(signed.replace(b"RAS.", b"R.A.S"))
    tampered = cli("smime", "verify", message, "--from", ALICE, *trust_args(cli_pki))
    assert tampered.status == 1
    assert tampered.out.decode().splitlines()[:2] == [
        "valid: no",
        "reason: message digest mismatch: the content was altered",
    ]
    message.write_bytes(signed)
    wrong_from = cli("smime", "verify", message, "--from", BRUNO, *trust_args(cli_pki))
    assert wrong_from.status == 1 and b"from bound to signer: no" in wrong_from.out
    untrusted = cli(
        "smime",
        "verify",
        message,
        "--from",
        ALICE,
        "--anchors",
        cli_pki.ca_cert("serveurs"),
        "--revocation",
        "off",
    )
    assert untrusted.status == 1 and b"certificate: untrusted" in untrusted.out
    garbage = cli("smime", "verify", "--from", ALICE, *trust_args(cli_pki), stdin=b"hello\r\n")
    assert garbage.status == 1 and garbage.out.startswith(b"valid: no\nreason: ")


def test_revoked_signer_is_invalid(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    cert = renewed(cli_pki, BRUNO, "sign", tmp_path / "revoked")
    signed = cli(
        "smime",
        "sign",
        "--key",
        cert.with_suffix(".key"),
        "--cert",
        cert,
        "--chain",
        cli_pki.intermediates,
        stdin=CONTENT,
    ).out
    cli_pki.revoke(cert)
    message = tmp_path / "signed.eml"
    message.write_bytes(signed)
    run = cli("smime", "verify", message, "--from", BRUNO, *trust_args(cli_pki))
    assert run.status == 1 and b"certificate: revoked" in run.out


@pytest.mark.parametrize(
    ("cipher", "transport", "smime_type"),
    [
        ("auto", "auto", b"enveloped-data"),
        ("aes-128-gcm", "rsa-oaep", b"authEnveloped-data"),
    ],
)
def test_encrypt_then_decrypt(
    cli: Cli, cli_pki: DevPki, cipher: str, transport: str, smime_type: bytes
) -> None:
    recipients = [
        "--recipient-cert",
        cli_pki.user_cert(ALICE, "enc"),
        "--recipient-cert",
        cli_pki.user_cert(BRUNO, "enc"),
    ]
    encrypted = cli(
        "smime",
        "encrypt",
        *recipients,
        "--cipher",
        cipher,
        "--key-transport",
        transport,
        *trust_args(cli_pki),
        stdin=LF_CONTENT,
    )
    assert encrypted.status == 0, encrypted.err
    assert b"smime-type=" + smime_type in encrypted.out
    for who in (ALICE, BRUNO):
        run = cli("smime", "decrypt", *_key_args(cli_pki, who, "enc"), stdin=encrypted.out)
        assert (run.status, run.out) == (0, CONTENT)


def test_decrypt_failure_is_the_public_text(cli: Cli, cli_pki: DevPki) -> None:
    encrypted = cli(
        "smime",
        "encrypt",
        "--recipient-cert",
        cli_pki.user_cert(ALICE, "enc"),
        *trust_args(cli_pki),
        stdin=CONTENT,
    ).out
    wrong_key = cli("smime", "decrypt", *_key_args(cli_pki, BRUNO, "enc"), stdin=encrypted)
    assert (wrong_key.status, wrong_key.out, wrong_key.err_lines) == (
        1,
        b"",
        [PUBLIC_DECRYPT_ERROR],
    )
    damaged = cli(
        "smime", "decrypt", *_key_args(cli_pki, ALICE, "enc"), stdin=encrypted[:-200] + b"\r\n"
    )
    assert (damaged.status, damaged.out, damaged.err_lines) == (1, b"", [PUBLIC_DECRYPT_ERROR])


def test_encrypt_refuses_an_unusable_recipient(cli: Cli, cli_pki: DevPki) -> None:
    run = cli(
        "smime",
        "encrypt",
        "--recipient-cert",
        cli_pki.user_cert(ALICE, "sign"),
        *trust_args(cli_pki),
        stdin=CONTENT,
    )
    assert run.status == 2 and run.out == b""
    assert run.err_lines == [
        "recipient CN=Alice Martin,2.5.4.4=Martin,2.5.4.42=Alice,OU=chu-a.test,"
        "O=MISSIVE DEV (TEST ONLY),C=FR: wrong-usage (key usage does not allow smime-encrypt)"
    ]


def test_rollover_through_the_key_store(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    """Mail encrypted to the old certificate still decrypts after the renewed one is
    imported; new mail to the renewed one decrypts too; --address signs with the newest."""
    keys = tmp_path / "keys"
    old_pem = write_pem(cli_pki.user_cert(BRUNO, "enc"), tmp_path / "old.pem")
    assert cli("keys", "import", BRUNO, old_pem, "--keys-dir", keys).status == 0
    queued = cli(
        "smime",
        "encrypt",
        "--recipient-cert",
        cli_pki.user_cert(BRUNO, "enc"),
        *trust_args(cli_pki),
        stdin=CONTENT,
    ).out
    new_cert = renewed(cli_pki, BRUNO, "enc", tmp_path / "renewal")
    imported = cli(
        "keys", "import", BRUNO, write_pem(new_cert, tmp_path / "new.pem"), "--keys-dir", keys
    )
    assert imported.status == 0 and b".enc.pem" in imported.out and b"20" in imported.out
    old_mail = cli("smime", "decrypt", "--address", BRUNO, "--keys-dir", keys, stdin=queued)
    assert (old_mail.status, old_mail.out) == (0, CONTENT)
    new_mail = cli(
        "smime", "encrypt", "--recipient-cert", new_cert, *trust_args(cli_pki), stdin=CONTENT
    ).out
    assert (
        cli("smime", "decrypt", "--address", BRUNO, "--keys-dir", keys, stdin=new_mail).out
        == CONTENT
    )


def test_sign_with_the_key_store(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for purpose in ("sign", "enc"):
        pem = write_pem(cli_pki.user_cert(ALICE, purpose), tmp_path / f"{purpose}.pem")
        assert cli("keys", "import", ALICE, pem, "--keys-dir", keys).status == 0
    signed = cli(
        "smime", "sign", "--address", ALICE, "--keys-dir", keys, *trust_args(cli_pki), stdin=CONTENT
    )
    assert signed.status == 0, signed.err
    message = tmp_path / "signed.eml"
    message.write_bytes(signed.out)
    # the chain travelled in the message: only the root is given to verify
    run = cli(
        "smime",
        "verify",
        message,
        "--from",
        ALICE,
        "--anchors",
        cli_pki.root_cert,
        "--crl",
        cli_pki.crl("personnes"),
        "--crl",
        cli_pki.crl("root"),
    )
    assert run.status == 0, run.out


def test_bad_inputs_exit_2_with_one_line(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    key = tmp_path / "alice.key"
    key.write_bytes(cli_pki.user_key(ALICE, "sign").read_bytes())
    key.chmod(0o640)
    readable = cli(
        "smime", "sign", "--key", key, "--cert", cli_pki.user_cert(ALICE, "sign"), stdin=CONTENT
    )
    assert (readable.status, readable.err_lines) == (
        2,
        [f"key file {key} is readable by its group (mode 0640); chmod 600"],
    )
    mismatch = cli(
        "smime",
        "sign",
        *_key_args(cli_pki, ALICE, "sign")[:2],
        "--cert",
        cli_pki.user_cert(BRUNO, "sign"),
        stdin=CONTENT,
    )
    assert mismatch.status == 2 and len(mismatch.err_lines) == 1
    assert "does not match the certificate" in mismatch.err
    both = cli(
        "smime", "decrypt", "--address", ALICE, *_key_args(cli_pki, ALICE, "enc"), stdin=b"x"
    )
    assert both.status == 2 and both.err_lines == [
        "give either --key FILE (with --cert) or --address ADDRESS"
    ]
    empty = cli("smime", "verify", "--anchors", cli_pki.root_cert, stdin=b"")
    assert (empty.status, empty.err_lines) == (2, ["standard input is empty"])
    no_trust = cli("smime", "verify", "--config", tmp_path / "none.toml", stdin=b"x")
    assert no_trust.status == 2 and len(no_trust.err_lines) == 1
    bad_cert = tmp_path / "bad.crt"
    bad_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    bad = cli("smime", "encrypt", "--recipient-cert", bad_cert, *trust_args(cli_pki), stdin=b"x")
    assert (bad.status, bad.err_lines) == (
        2,
        [f"--recipient-cert: certificate 1 in {bad_cert} is not valid X.509"],
    )

"""The ``missive smime`` commands against OpenSSL ``cms`` (Debian 12's 3.0), both ways:
what ``missive smime encrypt`` writes, ``openssl cms -decrypt`` opens; what ``openssl cms
-sign`` writes, ``missive smime verify`` accepts (exit 0); and the reverse of each."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.smime.types import PUBLIC_DECRYPT_ERROR
from tests.peers.cms_tools import OpenSSLCms, run_tool
from tests.smime.cli.conftest import Cli, trust_args
from tests.smime.keystore.support import ALICE, CONTENT

pytestmark = pytest.mark.peer


@pytest.mark.parametrize(
    ("cipher", "transport"),
    [("auto", "auto"), ("aes-256-gcm", "rsa-oaep"), ("aes-128-cbc", "rsa-oaep")],
)
def test_our_encrypt_opened_by_openssl(
    cli: Cli, cli_pki: DevPki, openssl_cms: OpenSSLCms, cipher: str, transport: str
) -> None:
    run = cli(
        "smime", "encrypt", "--recipient-cert", cli_pki.user_cert(ALICE, "enc"),
        "--cipher", cipher, "--key-transport", transport, *trust_args(cli_pki), stdin=CONTENT,
    )  # fmt: skip
    assert run.status == 0, run.err
    opened = openssl_cms.decrypt(
        run.out, cli_pki.user_cert(ALICE, "enc"), cli_pki.user_key(ALICE, "enc"), inform="SMIME"
    )
    assert opened == CONTENT


def _openssl_sign(tool: OpenSSLCms, pki: DevPki, workdir: Path, *, detached: bool) -> bytes:
    source, out = workdir / "content.txt", workdir / "signed.eml"
    source.write_bytes(CONTENT.replace(b"\r\n", b"\n"))  # text mode: OpenSSL makes it CRLF
    argv: list[str | Path] = [
        tool.openssl, "cms", "-sign", "-in", source, "-signer", pki.user_cert(ALICE, "sign"),
        "-inkey", pki.user_key(ALICE, "sign"), "-certfile", pki.intermediates, "-md", "sha256",
        "-outform", "SMIME", "-out", out,
    ]  # fmt: skip
    if not detached:
        argv.append("-nodetach")
    run_tool(argv)
    return out.read_bytes()


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_openssl_signature_verified_by_our_cli(
    cli: Cli, cli_pki: DevPki, openssl_cms: OpenSSLCms, tmp_path: Path, detached: bool
) -> None:
    message = tmp_path / "from-openssl.eml"
    message.write_bytes(_openssl_sign(openssl_cms, cli_pki, tmp_path, detached=detached))
    out = tmp_path / "content"
    run = cli("smime", "verify", message, "--from", ALICE, "--output", out, *trust_args(cli_pki))
    assert run.status == 0, run.out.decode()
    assert b"capabilities: aes-gcm no, rsa-oaep no" in run.out  # OpenSSL advertises CBC only
    assert out.read_bytes() == CONTENT
    message.write_bytes(message.read_bytes().replace(b"Compte rendu", b"Compte-rendu"))
    if detached:  # the opaque form's content is inside the base64 DER
        assert cli("smime", "verify", message, "--from", ALICE, *trust_args(cli_pki)).status == 1


def test_our_signature_verified_by_openssl(
    cli: Cli, cli_pki: DevPki, openssl_cms: OpenSSLCms
) -> None:
    run = cli(
        "smime", "sign", "--key", cli_pki.user_key(ALICE, "sign"),
        "--cert", cli_pki.user_cert(ALICE, "sign"), "--chain", cli_pki.intermediates,
        stdin=CONTENT,
    )  # fmt: skip
    assert run.status == 0, run.err
    content = openssl_cms.verify(run.out, cli_pki.root_cert, inform="SMIME", binary=False)
    assert content.replace(b"\r\n", b"\n") == CONTENT.replace(b"\r\n", b"\n")


def test_openssl_encrypt_opened_by_our_cli(
    cli: Cli, cli_pki: DevPki, openssl_cms: OpenSSLCms
) -> None:
    message = openssl_cms.encrypt(
        CONTENT, [cli_pki.user_cert(ALICE, "enc")], cipher="aes-256-gcm", oaep=True,
        outform="SMIME",
    )  # fmt: skip
    run = cli(
        "smime", "decrypt", "--key", cli_pki.user_key(ALICE, "enc"),
        "--cert", cli_pki.user_cert(ALICE, "enc"), stdin=message,
    )  # fmt: skip
    assert (run.status, run.out) == (0, CONTENT)


def test_3des_only_when_accepted(cli: Cli, cli_pki: DevPki, openssl_cms: OpenSSLCms) -> None:
    """What NSS sends to a recipient it knows nothing about: refused unless --accept-3des,
    then opened with a warning."""
    message = openssl_cms.encrypt(
        CONTENT, [cli_pki.user_cert(ALICE, "enc")], cipher="des3", outform="SMIME"
    )
    key = ["--key", cli_pki.user_key(ALICE, "enc"), "--cert", cli_pki.user_cert(ALICE, "enc")]
    refused = cli("smime", "decrypt", *key, stdin=message)
    assert (refused.status, refused.out, refused.err_lines) == (1, b"", [PUBLIC_DECRYPT_ERROR])
    accepted = cli("smime", "decrypt", *key, "--accept-3des", stdin=message)
    assert (accepted.status, accepted.out) == (0, CONTENT)
    assert accepted.err_lines == ["warning: decrypted with des-ede3-cbc, a weak cipher"]

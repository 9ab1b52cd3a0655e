"""Sign/verify interop with OpenSSL ``cms`` (3.0): our signatures verified by OpenSSL with
path validation for S/MIME signing; OpenSSL's signatures (RSA PKCS#1 v1.5, RSA-PSS,
ECDSA; detached and opaque, in its own S/MIME output) verified by us."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.smime import mime, smime_parts, transfer
from gateway.smime.sign import sign
from gateway.smime.verify import verify
from tests.peers.cms_tools import OpenSSLCms, PeerToolError, run_tool
from tests.smime.signverify.identities import (
    ALICE,
    AcceptAll,
    SignPki,
    make_ec_pki,
    make_rsa_pki,
)

pytestmark = pytest.mark.peer

ENTITY = (
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Compte rendu op\xc3\xa9ratoire.\r\nFrom the surgeon.\r\n"
)


@pytest.fixture(scope="module")
def sv_pki(tmp_path_factory: pytest.TempPathFactory) -> SignPki:
    return make_rsa_pki(tmp_path_factory.mktemp("sv-rsa"))


@pytest.fixture(scope="module")
def sv_ec_pki(tmp_path_factory: pytest.TempPathFactory) -> SignPki:
    return make_ec_pki(tmp_path_factory.mktemp("sv-ec"))


@pytest.fixture
def openssl(openssl_cms: OpenSSLCms) -> OpenSSLCms:
    return openssl_cms


def _pki(sv_pki: SignPki, sv_ec_pki: SignPki, kind: str) -> SignPki:
    return sv_pki if kind == "rsa" else sv_ec_pki


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_ours_verified_by_openssl(
    openssl: OpenSSLCms, sv_pki: SignPki, sv_ec_pki: SignPki, kind: str, detached: bool
) -> None:
    pki = _pki(sv_pki, sv_ec_pki, kind)
    alice = pki[ALICE]
    signed = sign(
        ENTITY,
        alice.cert,
        alice.key,
        pki.intermediates,
        detached=detached,
        encryption_cert=pki.enc[ALICE],
    )
    # Text mode (no -binary). With -binary, OpenSSL 3.0's multipart reader keeps the CR
    # of the CRLF that precedes the boundary when the whole message has CRLF line ends
    # (as mail on the wire has; OpenSSL's own output uses LF outside the signed part), so
    # the content it hashes ends in a stray CR (measured: "\r\n\r" at the end).
    # The chain travels in the message: no -certfile is needed for the path to the root.
    content = openssl.verify(signed, pki.pki.root_cert, inform="SMIME", binary=False)
    assert mime.canonicalize_crlf(content) == transfer.make_7bit(ENTITY)
    # and with the intermediates offered as untrusted, as the brief's command line does
    openssl.verify(
        signed, pki.pki.root_cert, inform="SMIME", untrusted=pki.pki.intermediates, binary=False
    )


def test_openssl_rejects_our_signature_when_tampered(openssl: OpenSSLCms, sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(ENTITY, alice.cert, alice.key, sv_pki.intermediates)
    with pytest.raises(PeerToolError):
        openssl.verify(
            signed.replace(b"op=C3=A9ratoire", b"op=C3=A8ratoire"),
            sv_pki.pki.root_cert,
            inform="SMIME",
            binary=False,
        )


def test_openssl_prints_every_attribute(openssl: OpenSSLCms, sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(
        ENTITY, alice.cert, alice.key, sv_pki.intermediates, encryption_cert=sv_pki.enc[ALICE]
    )
    signature = smime_parts.parse_multipart_signed(mime.parse_entity(signed)).signature
    source = openssl.workdir / "signature.der"
    source.write_bytes(signature)
    printed = run_tool(
        [openssl.openssl, "cms", "-cmsout", "-print", "-inform", "DER", "-in", source]
    ).stdout.decode()
    for expected in (
        "contentType (1.2.840.113549.1.9.3)",
        "messageDigest (1.2.840.113549.1.9.4)",
        "signingTime (1.2.840.113549.1.9.5)",
        "S/MIME Capabilities (1.2.840.113549.1.9.15)",
        "id-smime-aa-encrypKeyPref (1.2.840.113549.1.9.16.2.11)",
        "id-smime-aa-signingCertificateV2 (1.2.840.113549.1.9.16.2.47)",
        ":aes-256-gcm",
        ":aes-128-gcm",
        ":aes-256-cbc",
        ":rsaesOaep",
    ):
        assert expected in printed, expected


def _openssl_smime_sign(
    openssl: OpenSSLCms, pki: SignPki, *, detached: bool, pss: bool, workdir: Path
) -> bytes:
    alice = pki[ALICE]
    source = workdir / "content.eml"
    source.write_bytes(ENTITY.replace(b"\r\n", b"\n"))  # text mode: OpenSSL makes it CRLF
    out = workdir / "signed.eml"
    argv: list[str | Path] = [
        openssl.openssl,
        "cms",
        "-sign",
        "-in",
        source,
        "-signer",
        alice.cert_path,
        "-inkey",
        alice.key_path,
        "-certfile",
        pki.pki.intermediates,
        "-md",
        "sha256",
        "-outform",
        "SMIME",
        "-out",
        out,
    ]
    if pss:
        argv += ["-keyopt", "rsa_padding_mode:pss"]
    if not detached:
        argv.append("-nodetach")
    run_tool(argv)
    return out.read_bytes()


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("algorithm", ["rsa", "rsa-pss", "ecdsa"])
def test_openssl_signature_verified_by_us(
    openssl: OpenSSLCms,
    sv_pki: SignPki,
    sv_ec_pki: SignPki,
    algorithm: str,
    detached: bool,
    tmp_path: Path,
) -> None:
    pki = sv_ec_pki if algorithm == "ecdsa" else sv_pki
    signed = _openssl_smime_sign(
        openssl, pki, detached=detached, pss=algorithm == "rsa-pss", workdir=tmp_path
    )
    result = verify(signed, validator=AcceptAll(), from_address=ALICE)
    assert result.valid, result.reason
    assert result.detached is detached
    assert mime.canonicalize_crlf(result.content) == ENTITY
    (signer,) = result.signers
    expected_family = {"rsa": "rsassa_pkcs1v15", "rsa-pss": "rsassa_pss", "ecdsa": "ecdsa"}
    assert signer.signature_algorithm == expected_family[algorithm]
    assert signer.capabilities is not None  # OpenSSL's own list (CBC ciphers)
    assert not signer.capabilities.aes_gcm
    tampered = signed.replace(b"From the surgeon", b"From the nurse!")
    if detached:
        assert not verify(tampered, validator=AcceptAll(), from_address=ALICE).valid

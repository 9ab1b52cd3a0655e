"""Benchmark of S/MIME signing and verification against cryptography's pkcs7 signer.

Usage: ``python bench/bench_smime_signverify.py [--smoke] [--seconds S] [--big-mb N]``.

The machine is shared and noisy, so each figure comes with its baseline measured in the
same run and the table gives the ratio (ours / baseline, operations per second):

1. sign, 10 KB and 10 MB, one RSA-2048 signer with a CA certificate in the chain:
   ``gateway.smime.sign.sign`` (detached multipart/signed, 7 signed attributes) vs
   ``PKCS7SignatureBuilder`` (same key, SHA-256, detached, SMIME output: 4 attributes);
   the bare CMS too (``sign_der`` vs the builder's DER output);
2. sign + encrypt, 10 KB and 10 MB, one recipient: ``sign`` then ``encrypt_entity`` with
   AES-256-GCM + RSA-OAEP (what the issue asks to produce) vs the builder's SMIME
   signature then ``PKCS7EnvelopeBuilder`` (AES-256-CBC + PKCS#1 v1.5) SMIME output: the
   issue's targets are >= 0.9x at 10 KB and >= 4x at 10 MB;
3. verify, 10 KB and 10 MB (``verify`` with an accept-all validator, so path validation
   is not measured) vs a floor: SHA-256 of the content plus one RSA verification, i.e.
   the cryptographic work any verifier must do (cryptography has no public verifier);
4. the MIME path at 10 MB: ``canonicalize_crlf`` + ``base64_lines`` of LF input vs the
   stdlib (``replace`` + ``base64.encodebytes`` + CRLF), and ``make_7bit`` of an 8-bit
   text (quoted-printable) as an absolute figure;
5. memory: peak traced allocation (``tracemalloc``) of sign + encrypt and of decrypt +
   verify of a ``--big-mb`` (default 50) MB message, as a multiple of the message size
   (the issue asks for < 4x).

``--smoke`` runs each case briefly with 2 MB "big" messages (a few seconds in all) so CI
proves the benchmark runs; its figures are not worth quoting.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from gateway.smime import mime, transfer
from gateway.smime.decrypt import decrypt_entity
from gateway.smime.encrypt import Recipient, encrypt_entity
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.sign import sign, sign_der
from gateway.smime.types import CertStatus, Purpose, ValidationResult
from gateway.smime.verify import verify

SIGNER = "bench.signer@chu-a.test"


@dataclass(frozen=True)
class Row:
    case: str
    ops_per_second: float
    baseline: float | None = None


@dataclass(frozen=True)
class Identities:
    ca: x509.Certificate
    signer: x509.Certificate
    signer_key: rsa.RSAPrivateKey
    recipient: x509.Certificate
    recipient_key: rsa.RSAPrivateKey


class AcceptAll:
    """Validator that accepts everything: path validation is benchmarked elsewhere."""

    def validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        purpose: Purpose = Purpose.SMIME_SIGN,
        at: datetime | None = None,
    ) -> ValidationResult:
        return ValidationResult(CertStatus.VALID)


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None,
    email: str | None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if email is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    return builder.sign(issuer_key, hashes.SHA256())


def identities() -> Identities:
    def new_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    ca_key, signer_key, recipient_key = new_key(), new_key(), new_key()
    ca = _certificate("bench CA", ca_key, None, None)
    signer = _certificate("bench signer", signer_key, (ca.subject, ca_key), SIGNER)
    recipient = _certificate("bench rcpt", recipient_key, (ca.subject, ca_key), "r@x.test")
    return Identities(ca, signer, signer_key, recipient, recipient_key)


def message(size: int) -> bytes:
    """A CRLF-canonical, 7-bit MIME entity of about ``size`` bytes (76-char lines)."""
    line = b"QmVuY2ggbGluZSBvZiBhIHNpZ25lZCBhbmQgZW5jcnlwdGVkIG1lc3NhZ2UgZm9yIE1pc3NpdmU=\r\n"
    head = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def rate(operation: Callable[[], object], seconds: float, min_rounds: int = 2) -> float:
    """Operations per second over about ``seconds`` (at least ``min_rounds`` calls)."""
    operation()  # warm up
    rounds = 0
    started = time.perf_counter()
    while True:
        operation()
        rounds += 1
        elapsed = time.perf_counter() - started
        if rounds >= min_rounds and elapsed >= seconds:
            return rounds / elapsed


def _builder_sign(ids: Identities, data: bytes, encoding: serialization.Encoding) -> bytes:
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(ids.signer, ids.signer_key, hashes.SHA256())
        .add_certificate(ids.ca)
        .sign(encoding, [pkcs7.PKCS7Options.DetachedSignature])
    )


def _builder_sign_encrypt(ids: Identities, data: bytes) -> bytes:
    signed = _builder_sign(ids, data, serialization.Encoding.SMIME)
    return (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(signed)
        .add_recipient(ids.recipient)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.SMIME, [])
    )


def _ours_sign_encrypt(ids: Identities, data: bytes) -> bytes:
    signed = sign(data, ids.signer, ids.signer_key, [ids.ca])
    return encrypt_entity(
        signed, [Recipient(ids.recipient, key_transport="rsa-oaep")], cipher="aes-256-gcm"
    )


def sign_rows(label: str, ids: Identities, data: bytes, seconds: float) -> list[Row]:
    baseline = rate(lambda: _builder_sign(ids, data, serialization.Encoding.SMIME), seconds)
    der_baseline = rate(lambda: _builder_sign(ids, data, serialization.Encoding.DER), seconds)
    return [
        Row(f"sign {label}: PKCS7SignatureBuilder SMIME (baseline)", baseline),
        Row(
            f"sign {label}: ours multipart/signed",
            rate(lambda: sign(data, ids.signer, ids.signer_key, [ids.ca]), seconds),
            baseline,
        ),
        Row(f"sign {label}: PKCS7SignatureBuilder DER (baseline)", der_baseline),
        Row(
            f"sign {label}: ours sign_der",
            rate(lambda: sign_der(data, ids.signer, ids.signer_key, [ids.ca]), seconds),
            der_baseline,
        ),
    ]


def sign_encrypt_rows(label: str, ids: Identities, data: bytes, seconds: float) -> list[Row]:
    baseline = rate(lambda: _builder_sign_encrypt(ids, data), seconds)
    ours = rate(lambda: _ours_sign_encrypt(ids, data), seconds)
    return [
        Row(f"sign+encrypt {label}: cryptography CBC+v1.5 (baseline)", baseline),
        Row(f"sign+encrypt {label}: ours GCM+OAEP", ours, baseline),
    ]


def verify_rows(label: str, ids: Identities, data: bytes, seconds: float) -> list[Row]:
    signed = sign(data, ids.signer, ids.signer_key, [ids.ca])
    validator = AcceptAll()
    assert verify(signed, validator=validator, from_address=SIGNER).valid
    signature = ids.signer_key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
    public = ids.signer.public_key()
    assert isinstance(public, rsa.RSAPublicKey)

    def floor() -> None:
        hashlib.sha256(data).digest()
        public.verify(signature, b"x", padding.PKCS1v15(), hashes.SHA256())

    baseline = rate(floor, seconds)
    return [
        Row(f"verify {label}: floor SHA-256 + RSA verify (baseline)", baseline),
        Row(
            f"verify {label}: ours",
            rate(lambda: verify(signed, validator=validator, from_address=SIGNER), seconds),
            baseline,
        ),
    ]


def mime_rows(size: int, seconds: float) -> list[Row]:
    lf_text = b"Ligne de compte rendu, 7 bits, termin\x65e par LF.\n" * (size // 48)

    def stdlib() -> bytes:
        return base64.encodebytes(lf_text.replace(b"\n", b"\r\n")).replace(b"\n", b"\r\n")

    def ours() -> bytes:
        return transfer.base64_lines(mime.canonicalize_crlf(lf_text))

    assert stdlib() == ours()
    eight_bit = (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "Résultat: très bien, à revoir.\r\n".encode() * (size // 34)
    )
    baseline = rate(stdlib, seconds)
    mb = size // 1_000_000
    return [
        Row(f"canonicalise+base64 {mb} MB: stdlib (baseline)", baseline),
        Row(f"canonicalise+base64 {mb} MB: ours", rate(ours, seconds), baseline),
        Row(
            f"make_7bit {mb} MB 8-bit text -> quoted-printable",
            rate(lambda: transfer.make_7bit(eight_bit), seconds),
        ),
    ]


def _peak_above_baseline(operation: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = operation()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak - before


def memory_rows(size: int, ids: Identities) -> list[str]:
    data = message(size)
    key = DecryptionKey(ids.recipient, ids.recipient_key)
    sign_encrypt_peak = _peak_above_baseline(lambda: _ours_sign_encrypt(ids, data))
    encrypted = _ours_sign_encrypt(ids, data)

    def decrypt_verify() -> object:
        opened = decrypt_entity(encrypted, [key])
        result = verify(opened.content, validator=AcceptAll(), from_address=SIGNER)
        assert result.valid, result.reason
        return result

    decrypt_verify_peak = _peak_above_baseline(decrypt_verify)
    return [
        f"memory {size / 1e6:.0f} MB sign+encrypt: peak {sign_encrypt_peak / 1e6:.0f} MB "
        f"= {sign_encrypt_peak / size:.2f}x the message",
        f"memory {size / 1e6:.0f} MB decrypt+verify: peak {decrypt_verify_peak / 1e6:.0f} MB "
        f"= {decrypt_verify_peak / size:.2f}x the message",
    ]


def print_rows(rows: list[Row]) -> None:
    for row in rows:
        ratio = f"  ratio {row.ops_per_second / row.baseline:6.2f}x" if row.baseline else ""
        print(f"{row.case:<58} {row.ops_per_second:10.1f} ops/s{ratio}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, CI only")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case")
    parser.add_argument("--big-mb", type=int, default=50, help="size of the memory case")
    args = parser.parse_args(argv)
    seconds = 0.1 if args.smoke else args.seconds
    big = 2_000_000 if args.smoke else 10_000_000
    memory_size = 2_000_000 if args.smoke else args.big_mb * 1_000_000
    ids = identities()
    small = message(10_000)
    large = message(big)
    label = f"{big // 1_000_000} MB"
    print_rows(sign_rows("10 KB", ids, small, seconds))
    print_rows(sign_rows(label, ids, large, seconds))
    print_rows(sign_encrypt_rows("10 KB", ids, small, seconds))
    print_rows(sign_encrypt_rows(label, ids, large, seconds))
    print_rows(verify_rows("10 KB", ids, small, seconds))
    print_rows(verify_rows(label, ids, large, seconds))
    print_rows(mime_rows(big, seconds))
    for line in memory_rows(memory_size, ids):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
